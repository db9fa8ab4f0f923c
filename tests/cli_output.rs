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
