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

/// A container that forks 30 sleeps, saying how many it has, then exits.
const FORKER: &str = "apiVersion: v1
kind: Pod
metadata: {name: forker}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'i=0; while [ $i -lt 30 ]; do sleep 3600 & i=$((i+1)); echo forked $i; done; echo all forked']
";

/// The forker's log once it has terminated.
fn forker_log(env: &Env) -> String {
    env.wait_state("forker", "c", "terminated", Duration::from_secs(60));
    String::from_utf8_lossy(&env.podrun(&["logs", "forker"]).stdout).into_owned()
}

#[test]
fn pod_max_pids_limits_the_processes_of_a_pod() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let file = env.manifest("forker.yaml", FORKER);
    let file = file.to_str().unwrap();

    // Without a limit all 30 run.
    env.ok(&["run", "-d", file]);
    let log = forker_log(&env);
    assert!(log.contains("all forked"), "{log}");
    env.rm(&["forker"]);

    env.ok(&["--pod-max-pids", "10", "run", "-d", file]);
    let pod_cgroup = env.pod_cgroup("pids").expect("the pod's pids cgroup");
    assert_eq!(
        std::fs::read_to_string(pod_cgroup.join("pids.max"))
            .unwrap()
            .trim(),
        "10"
    );
    let log = forker_log(&env);
    assert!(!log.contains("all forked"), "{log}");
    let forked = log
        .lines()
        .filter_map(|l| l.strip_prefix("forked ")?.trim().parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    assert!(forked < 10, "at most 10 processes in the pod: {log}");
    env.rm(&["forker"]);

    // Only -1 or a positive number.
    let (_, _, stderr) = env.fail(&["--pod-max-pids", "0", "run", "-d", file]);
    assert!(stderr.contains("--pod-max-pids"), "{stderr}");
    env.assert_no_leaks();
}

/// A pod with annotations of `n` bytes of value, and an optional extra document.
fn annotated_pod(n: usize, extra: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: big
  annotations: {{a: \"{}\"}}
spec:
  containers:
  - name: c
    image: busybox
    command: [sleep, '3600']
{extra}",
        "x".repeat(n)
    )
}

#[test]
fn objects_beyond_the_api_size_limits_are_refused() {
    require_root!();
    let env = Env::new(&["busybox"]);
    for (what, yaml, want) in [
        (
            "10 MB manifest",
            annotated_pod(10 << 20, ""),
            "a manifest may have at most 3145728 bytes (3 MiB)".to_owned(),
        ),
        (
            "300 KiB of annotations",
            annotated_pod(300 << 10, ""),
            "document 1 (Pod big): metadata.annotations: too long: 307201 bytes".to_owned(),
        ),
        (
            "a ConfigMap over 1 MiB",
            annotated_pod(
                1,
                &format!(
                    "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg}}\ndata: {{k: \"{}\"}}\n",
                    "x".repeat((1 << 20) + 1)
                ),
            ),
            "document 2 (ConfigMap cfg): data: too long: 1048577 bytes".to_owned(),
        ),
        (
            "a Secret over 1 MiB",
            annotated_pod(
                1,
                &format!(
                    "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData: {{k: \"{}\"}}\n",
                    "x".repeat((1 << 20) + 1)
                ),
            ),
            "document 2 (Secret s): data: too long: 1048577 bytes".to_owned(),
        ),
    ] {
        let file = env.manifest("big.yaml", &yaml);
        let (_, _, stderr) = env.fail(&["run", "-d", file.to_str().unwrap()]);
        assert!(stderr.contains(&want), "{what}: {stderr}");
    }
    // Within the limits the same pod runs.
    let file = env.manifest("big.yaml", &annotated_pod(200 << 10, ""));
    env.ok(&["run", "-d", file.to_str().unwrap()]);
    env.rm(&["big"]);
    assert!(env.pods_json().as_array().unwrap().is_empty());
    env.assert_no_leaks();
}
