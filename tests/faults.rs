//! Crashes at each step of a pod's life, injected with `PODRUN_FAULT` (runtime/src/fault.rs):
//! `podrun run` killed while it creates a pod, the pod monitor killed (or panicking)
//! while it sets the pod up, runs it and tears it down, and a container's child killed or
//! panicking before its execve. After each, what a user would do next (any podrun
//! command, which reaps what crashed; `podrun rm`) leaves nothing behind: no process,
//! mount, cgroup, state, veth, IP reservation or pinned netns, and the pod's name can be
//! used again at once. Every test has its own podrun instance and CNI network.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Output;
use std::time::Duration;

use common::{detail, state_of, text, Env, TestNet};

/// A podrun instance on a network of its own; the bridge goes with it.
struct Case {
    env: Env,
    net: TestNet,
}

impl Case {
    fn new() -> Case {
        let mut env = Env::new(&["busybox"]);
        let net = common::test_network(&mut env, "pft", 245);
        Case { env, net }
    }

    /// Write the manifest of pod `name`: one container that sleeps, with an emptyDir.
    fn manifest(&self, name: &str) -> std::path::PathBuf {
        self.env.manifest(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  volumes:\n  - name: scratch\n    emptyDir: {{}}\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, \"3600\"]\n    volumeMounts:\n    - {{name: scratch, mountPath: /scratch}}\n"
            ),
        )
    }

    /// `run -d` of pod `name` with `PODRUN_FAULT=fault`.
    fn run_with_fault(&self, name: &str, fault: &str) -> Output {
        let path = self.manifest(name);
        self.env
            .cmd(&["run", "-d", path.to_str().unwrap()])
            .env("PODRUN_FAULT", fault)
            .output()
            .unwrap()
    }

    /// Whether `podrun pods` lists pod `name` (running it reaps what crashed first).
    fn listed(&self, name: &str) -> bool {
        self.env.pod_json(name).is_some()
    }

    /// Nothing of any pod is left on the host or the network.
    fn assert_clean(&self, what: &str) {
        self.env.assert_no_leaks();
        let left = self.net.leftovers(&self.env);
        assert!(left.is_empty(), "{what}: left behind: {left:?}");
    }

    /// The name is free: the pod runs again, and goes again without a trace.
    fn assert_name_reusable(&self, name: &str) {
        let path = self.manifest(name);
        self.env.ok(&["run", "-d", path.to_str().unwrap()]);
        self.env
            .wait_state(name, "c", "running", Duration::from_secs(60));
        self.env.rm(&[name]);
        self.assert_clean(&format!("{name} run again and removed"));
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        self.net.remove();
    }
}

fn describe(out: &Output) -> String {
    let (code, stdout, stderr) = text(out);
    format!(
        "exit {code}, signal {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status.signal()
    )
}

/// What is left of a pod whose `podrun run` was killed at a point, as the next podrun
/// command finds it.
#[derive(Debug, Clone, Copy)]
enum Left {
    /// Nothing: the pod never existed as far as anyone can tell (reaped if need be).
    Nothing,
    /// Its plan, with no monitor: listed, not running, until `podrun rm`.
    Plan,
    /// A complete pod whose monitor runs: it runs its containers until `podrun rm`.
    Pod,
}

#[test]
fn run_killed_at_each_step_leaves_nothing_once_reaped_or_removed() {
    require_root!();
    let case = Case::new();
    for (i, (point, left)) in [
        ("run:name", Left::Nothing),
        ("sandbox:state", Left::Nothing),
        ("sandbox:network", Left::Nothing),
        ("sandbox:files", Left::Nothing),
        ("run:prepared", Left::Nothing),
        ("run:plan", Left::Plan),
        ("run:monitor", Left::Pod),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("run-{i}");
        let out = case.run_with_fault(&name, point);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{point}: {}",
            describe(&out)
        );
        // From the network on, the crash left a netns, a veth and an address behind.
        let network_left = !case.net.leftovers(&case.env).is_empty();
        let attached = !matches!(point, "run:name" | "sandbox:state");
        assert_eq!(network_left, attached, "{point}: network left behind");
        match left {
            Left::Nothing => assert!(!case.listed(&name), "{point}: the pod is listed"),
            Left::Plan => {
                let pod = case.env.pod_json(&name).expect("listed");
                // No monitor answers for it.
                assert!(pod["status_detail"].is_null(), "{point}: {pod}");
                case.env.rm(&[&name]);
            }
            Left::Pod => {
                case.env
                    .wait_state(&name, "c", "running", Duration::from_secs(60));
                case.env.rm(&[&name]);
            }
        }
        case.assert_clean(point);
        case.assert_name_reusable(&name);
    }
}

#[test]
fn run_panicking_rolls_back_before_it_exits() {
    require_root!();
    let case = Case::new();
    for (i, point) in ["sandbox:network", "run:prepared", "run:plan"]
        .into_iter()
        .enumerate()
    {
        let name = format!("unwind-{i}");
        let out = case.run_with_fault(&name, &format!("panic:{point}"));
        let (code, _, stderr) = text(&out);
        assert_eq!(code, 101, "{point}: {}", describe(&out));
        assert!(
            stderr.contains(&format!("fault injection at {point}")),
            "{point}: {stderr}"
        );
        // No podrun command ran since: the rollback of the panicking run did it all.
        case.assert_clean(point);
        case.assert_name_reusable(&name);
    }
}

#[test]
fn monitor_dying_during_setup_fails_the_run_and_leaves_nothing() {
    require_root!();
    let case = Case::new();
    for (i, fault) in [
        "monitor:namespaces",
        "monitor:cgroup",
        "monitor:socket",
        "panic:monitor:cgroup",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("setup-{i}");
        let out = case.run_with_fault(&name, fault);
        assert_eq!(
            (out.status.code(), out.status.signal()),
            (Some(1), None),
            "{fault}: {}",
            describe(&out)
        );
        // `podrun run` undid the pod itself: nothing to reap.
        case.assert_clean(fault);
        assert!(!case.listed(&name), "{fault}: the pod is listed");
        case.assert_name_reusable(&name);
    }
}

#[test]
fn monitor_dying_with_a_container_running_is_reaped_by_the_next_command() {
    require_root!();
    let case = Case::new();
    for (i, fault) in [
        "monitor:container-started",
        "panic:monitor:container-started",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("orphan-{i}");
        let out = case.run_with_fault(&name, fault);
        let (code, _, stderr) = text(&out);
        assert_eq!(code, 1, "{fault}: {}", describe(&out));
        assert!(
            stderr.contains(&format!("pod default/{name}: the pod monitor exited")),
            "{fault}: {stderr}"
        );
        // Each `podrun pods` reaps the pod once its monitor is gone, container and all.
        case.env.wait_for(
            &format!("{fault}: pod reaped"),
            Duration::from_secs(60),
            || (!case.listed(&name)).then_some(()),
        );
        case.assert_clean(fault);
        case.assert_name_reusable(&name);
    }
}

#[test]
fn monitor_dying_while_it_stops_the_pod_is_finished_by_rm() {
    require_root!();
    let case = Case::new();
    for (i, fault) in [
        "monitor:stopping",
        "monitor:teardown",
        "panic:monitor:teardown",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("stop-{i}");
        let out = case.run_with_fault(&name, fault);
        assert!(out.status.success(), "{fault}: {}", describe(&out));
        case.env
            .wait_state(&name, "c", "running", Duration::from_secs(60));
        case.env.rm(&[&name]);
        case.assert_clean(fault);
        assert!(!case.listed(&name), "{fault}: the pod is listed");
        case.assert_name_reusable(&name);
    }
}

/// The terminated state of container c of pod `name`, once it has one.
fn terminated(env: &Env, name: &str) -> serde_json::Value {
    let c = env.wait_state(name, "c", "terminated", Duration::from_secs(60));
    state_of(&c).1
}

#[test]
fn a_child_panicking_before_exec_fails_the_run_naming_the_panic() {
    require_root!();
    let case = Case::new();
    let out = case.run_with_fault("panics", "panic:child:setup");
    let (code, _, stderr) = text(&out);
    assert_eq!(code, 1, "{}", describe(&out));
    assert!(
        stderr.contains(
            "failed to start: container c: container setup panicked: \
             fault injection at child:setup at "
        ),
        "{stderr}"
    );
    // `run -d` removed the pod it could not start.
    case.assert_clean("panic:child:setup");
    assert!(!case.listed("panics"));
}

/// A child killed before its execve closes its error pipe as an execve would: the monitor
/// takes it for a container that started and was killed, and reports exactly that.
#[test]
fn a_child_killed_before_exec_is_a_container_killed_by_that_signal() {
    require_root!();
    let case = Case::new();
    let out = case.run_with_fault("killed", "child:setup");
    assert!(out.status.success(), "{}", describe(&out));
    let t = terminated(&case.env, "killed");
    // The child is its PID namespace's init, which cannot SIGKILL itself: the fault
    // point traps instead (SIGSEGV or SIGILL, by architecture).
    let code = detail(&t, "exitCode").as_i64().unwrap_or_default();
    assert!(
        [libc::SIGKILL, libc::SIGSEGV, libc::SIGILL]
            .iter()
            .any(|s| code == 128 + i64::from(*s)),
        "{t}"
    );
    assert_eq!(detail(&t, "reason"), "Error", "{t}");
    // The monitor lives on and serves the pod.
    assert!(!case.env.pod_json("killed").unwrap()["status_detail"].is_null());
    case.env.rm(&["killed"]);
    case.assert_clean("child:setup");
}
