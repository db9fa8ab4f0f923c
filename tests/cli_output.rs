//! What the podrun binary prints and how it exits: error messages, exit codes of exec,
//! and the shapes of `pods` and `ps` output.

mod common;

use std::time::Duration;

use common::Env;

#[test]
fn error_causes_are_printed_once() {
    require_root!();
    let env = Env::new(&[]);
    let missing = env.dir.path().join("missing.yaml");
    let missing = missing.to_str().unwrap();
    for args in [
        &["run", "-d", missing][..],
        &["down", missing],
        &["image", "load", missing],
    ] {
        let (code, _, stderr) = env.fail(args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches("No such file or directory").count(),
            1,
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(missing), "{args:?}: {stderr}");
    }
    env.assert_no_leaks();
}

#[test]
fn exec_of_a_missing_command_exits_127_and_of_a_non_executable_one_126() {
    require_root!();
    let env = Env::new(&["busybox"]);
    env.run_pod(
        "execfail.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: execfail}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, \"touch /noexec; echo up; trap 'exit 0' TERM; while true; do sleep 3600 & wait $!; done\"]\n",
    );
    env.wait_for("the container to be up", Duration::from_secs(20), || {
        env.ok(&["logs", "execfail"]).contains("up").then_some(())
    });
    for (cmd, code, words) in [
        ("no-such-command", 127, "executable file not found"),
        ("/no/such/binary", 127, "No such file or directory"),
        ("/noexec", 126, "Permission denied"),
    ] {
        for tty in [false, true] {
            let mut args = vec!["exec"];
            if tty {
                args.push("-t");
            }
            args.extend(["-c", "c", "execfail", "--", cmd]);
            let (code_got, _, stderr) = common::text(&env.podrun(&args));
            assert_eq!(code_got, code, "{args:?}: {stderr}");
            assert_eq!(stderr.matches(words).count(), 1, "{args:?}: {stderr}");
        }
    }
    env.rm(&["execfail"]);
    env.assert_no_leaks();
}

/// A pod whose container exits 3 on its first run and keeps running on its second.
const RESTARTED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: again}
spec:
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "test -e /data/ran && { trap 'exit 0' TERM; while true; do sleep 3600 & wait $!; done; }; touch /data/ran; exit 3"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    emptyDir: {}
"#;

/// Run [`RESTARTED`] and wait for its second run.
fn run_restarted(env: &Env) {
    env.run_pod("again.yaml", RESTARTED);
    env.wait_for("the second run", Duration::from_secs(30), || {
        let c = env.container_status("again", "c")?;
        (c["restartCount"] == 1 && common::state_of(&c).0 == "running").then_some(())
    });
}

#[test]
fn pods_yaml_is_shaped_as_kubectl_prints() {
    require_root!();
    let env = Env::new(&["busybox"]);
    run_restarted(&env);
    let yaml = env.ok(&["pods", "-o", "yaml"]);
    assert!(!yaml.contains('!'), "no YAML tags:\n{yaml}");
    assert!(
        yaml.lines().any(|l| l.trim() == "restarts: 1"),
        "a number:\n{yaml}"
    );
    assert!(
        yaml.lines().any(|l| l.trim() == "running:"),
        "a state is a map:\n{yaml}"
    );
    assert!(
        yaml.lines().any(|l| l.trim() == "exitCode: 3"),
        "the last state's exit code:\n{yaml}"
    );
    let json = env.pods_json();
    assert_eq!(json[0]["restarts"], 1, "{json}");
    env.rm(&["again"]);
    env.assert_no_leaks();
}

#[test]
fn ps_shows_no_exit_code_for_a_container_running_again() {
    require_root!();
    let env = Env::new(&["busybox"]);
    run_restarted(&env);
    let ps = env.ok(&["ps", "-a"]);
    let row: Vec<&str> = ps
        .lines()
        .find(|l| l.contains(" again "))
        .unwrap_or_else(|| panic!("{ps}"))
        .split_whitespace()
        .collect();
    // STATE, EXIT, RESTARTS
    assert_eq!(row[4..], ["Running", "-", "1"], "{ps}");
    env.rm(&["again"]);
    env.assert_no_leaks();
}
