//! Several podrun processes acting on one state dir at once.

mod common;

use std::process::Stdio;

use common::Env;

const POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: conc}
spec:
  containers:
  - name: c
    image: busybox
    command: [sh, -c, \"trap 'exit 0' TERM; while true; do sleep 3600 & wait $!; done\"]
";

/// Parallel `podrun run -d` of one manifest: exactly one creates the pod, the others
/// say it already exists and fail; nothing is left once it is removed.
#[test]
fn parallel_runs_of_one_pod_create_it_once() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let file = env.manifest("conc.yaml", POD);
    let file = file.to_str().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            env.cmd(&["run", "-d", file])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| common::text(&c.wait_with_output().unwrap()))
        .collect();
    let winners = outs.iter().filter(|(code, _, _)| *code == 0).count();
    assert_eq!(winners, 1, "exactly one run succeeds: {outs:#?}");
    for (code, _, stderr) in outs.iter().filter(|(code, _, _)| *code != 0) {
        assert!(
            stderr.contains("already exists"),
            "a losing run says so (exit {code}): {stderr}"
        );
    }
    let pods = env.pods_json();
    let pods = pods.as_array().unwrap();
    assert_eq!(pods.len(), 1, "one pod: {pods:#?}");
    let names: Vec<_> = std::fs::read_dir(env.state.join("names"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["default_conc"], "one name reservation");
    env.rm(&["conc"]);
    // The name is free again.
    env.ok(&["run", "-d", file]);
    env.rm(&["conc"]);
    env.assert_no_leaks();
}
