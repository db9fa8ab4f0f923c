//! What the API server refuses is refused here too: resource names it does not know,
//! objects beyond its size limits; and the pod PID limit kubelet offers.

mod common;

use std::time::Duration;

use common::Env;

fn pod_with_resources(resources: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: res}}
spec:
  containers:
  - name: c
    image: busybox
    command: [sleep, '3600']
    resources: {resources}
"
    )
}

#[test]
fn unknown_resource_names_are_refused_naming_the_field() {
    require_root!();
    let env = Env::new(&["busybox"]);
    for (resources, field) in [
        (
            "{limits: {pids: \"10\"}}",
            "spec.containers[0].resources.limits[pids]",
        ),
        (
            "{limits: {bogus: \"1\"}}",
            "spec.containers[0].resources.limits[bogus]",
        ),
        (
            "{requests: {example.com/gpu: \"1\"}, limits: {example.com/gpu: \"2\"}}",
            "spec.containers[0].resources.requests[example.com/gpu]",
        ),
    ] {
        let file = env.manifest("res.yaml", &pod_with_resources(resources));
        let (code, _, stderr) = env.fail(&["run", "-d", file.to_str().unwrap()]);
        assert_ne!(code, 0);
        assert!(stderr.contains(field), "{resources}: {stderr}");
    }
    assert!(env.pods_json().as_array().unwrap().is_empty());
    env.assert_no_leaks();
}
