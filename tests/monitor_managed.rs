//! The pod monitor in CRI-managed mode, driven over its socket the way the CRI agent
//! drives it: a sandbox with no containers, then containers created, started, attached
//! to, stopped and removed one by one, and the sandbox stopped and removed at the end.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Env;
use podrun_runtime::monitor::protocol::{Client, ProtocolError, Request, Response};
use podrun_runtime::network::NetworkMode;
use podrun_runtime::plan::{ContainerPlan, PodPlan};
use podrun_runtime::pod::{PodRuntime, PullMode, RuntimeConfig};
use podrun_runtime::sandbox::{ContainerSpec, SandboxSpec};
use podrun_runtime::state::Paths;
use podrun_runtime::status::{ContainerState, ContainerStatus, PodStatus};

const T: Option<Duration> = Some(Duration::from_secs(30));

fn runtime(env: &Env) -> PodRuntime {
    let mut config = RuntimeConfig::new(Paths::new(&env.root, &env.state, &env.logs));
    config.cgroup_root = env.cgroup_root.clone();
    config.monitor_exe = PathBuf::from(env!("CARGO_BIN_EXE_podrun"));
    config.network = NetworkMode::None;
    config.pull = PullMode::Never;
    PodRuntime::new(config).unwrap()
}

fn call(socket: &Path, req: Request) -> Result<Response, ProtocolError> {
    Client::request(socket, &req, T)
}

fn ok(socket: &Path, req: Request) {
    let what = format!("{req:?}");
    match call(socket, req) {
        Ok(Response::Ok) => {}
        other => panic!("{what}: {other:?}"),
    }
}

fn status(socket: &Path) -> PodStatus {
    match call(socket, Request::Status).unwrap() {
        Response::Status(s) => s,
        other => panic!("status: {other:?}"),
    }
}

fn container_status(socket: &Path, id: &str) -> Option<ContainerStatus> {
    status(socket).containers.into_iter().find(|c| c.id == id)
}

fn state_of(socket: &Path, id: &str) -> Option<ContainerState> {
    container_status(socket, id).map(|c| c.state)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (r.into(), w.into())
}

fn read_all(mut f: std::fs::File) -> String {
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

fn container(
    rt: &PodRuntime,
    sandbox: &PodPlan,
    env: &Env,
    id: &str,
    name: &str,
    script: &str,
    tune: impl FnOnce(&mut ContainerSpec),
) -> ContainerPlan {
    let mut spec = ContainerSpec {
        name: name.into(),
        image: "busybox".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: Some(env.logs.join("sandbox").join(format!("{name}_0.log"))),
        ..Default::default()
    };
    tune(&mut spec);
    let mut plan = rt.plan_container(sandbox, id, &spec).unwrap();
    // The CRI agent passes the absolute log path.
    plan.log_path = spec.log_path.clone();
    plan
}

fn log_text(env: &Env, name: &str) -> String {
    std::fs::read_to_string(env.logs.join("sandbox").join(format!("{name}_0.log")))
        .unwrap_or_default()
}

#[test]
fn managed_pod_drives_containers_one_by_one() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let rt = runtime(&env);
    let sandbox = rt
        .run_sandbox(
            "sb1",
            &SandboxSpec {
                name: "managed".into(),
                namespace: "default".into(),
                uid: "uid-managed".into(),
                hostname: "managed".into(),
                log_directory: Some(env.logs.join("sandbox")),
                sysctls: [("net.ipv4.ip_unprivileged_port_start".into(), "7".into())].into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(sandbox.managed);
    let sock = sandbox.state_dir.join("monitor.sock");
    assert!(status(&sock).containers.is_empty());

    // ---- a container with stdin, attached: output copied, stdin_once closes stdin.
    let echo = container(
        &rt,
        &sandbox,
        &env,
        "c-echo",
        "echo",
        // Attached output starts at the attach: wait for input before writing.
        "read first; echo hello-$first; cat; echo bye >&2",
        |s| {
            s.stdin = true;
            s.stdin_once = true;
        },
    );
    ok(
        &sock,
        Request::CreateContainer {
            plan: Box::new(echo.clone()),
        },
    );
    assert!(matches!(
        state_of(&sock, "c-echo"),
        Some(ContainerState::Waiting { reason, .. }) if reason == "ContainerCreated"
    ));
    let plan_file: PodPlan =
        serde_json::from_slice(&std::fs::read(sandbox.state_dir.join("plan.json")).unwrap())
            .unwrap();
    assert_eq!(
        plan_file.containers.len(),
        1,
        "plan.json lists the container"
    );
    let dup = call(
        &sock,
        Request::CreateContainer {
            plan: Box::new(echo.clone()),
        },
    );
    assert!(matches!(dup, Err(ProtocolError::Remote(m)) if m.contains("already exists")));
    // Attaching needs a running container.
    let early = call(
        &sock,
        Request::Attach {
            id: "c-echo".into(),
            stdin: false,
            stdout: true,
            stderr: false,
        },
    );
    assert!(matches!(early, Err(ProtocolError::Remote(m)) if m.contains("not running")));
    ok(
        &sock,
        Request::StartContainer {
            id: "c-echo".into(),
        },
    );
    let again = call(
        &sock,
        Request::StartContainer {
            id: "c-echo".into(),
        },
    );
    assert!(
        matches!(&again, Err(ProtocolError::Remote(m)) if m == "container c-echo is not in created state"),
        "{again:?}"
    );
    let (in_r, mut in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let mut attach = Client::connect(&sock).unwrap();
    attach.set_timeout(T).unwrap();
    let resp = attach
        .call_with_fds(
            &Request::Attach {
                id: "c-echo".into(),
                stdin: true,
                stdout: true,
                stderr: true,
            },
            &[in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
        )
        .unwrap();
    assert_eq!(resp, Response::Ok);
    drop((in_r, out_w, err_w));
    in_w.write_all(b"one\nfrom-stdin\n").unwrap();
    drop(in_w); // stdin_once: the container's cat sees EOF
    assert_eq!(attach.recv().unwrap(), Response::Exited { exit_code: 0 });
    let out = read_all(out_r);
    assert!(out == "hello-one\nfrom-stdin\n", "attached stdout: {out:?}");
    assert_eq!(read_all(err_r), "bye\n");
    let log = log_text(&env, "echo");
    assert!(log.contains(" stdout F from-stdin"), "log: {log}");
    assert!(log.contains(" stderr F bye"), "log: {log}");
    // The state after an exit is the monitor's restart decision: a container it would
    // restart waits, one that is done is Terminated. In managed mode the agent restarts
    // containers, never the monitor, whatever the restart policy.
    let echo_ended = container_status(&sock, "c-echo").unwrap();
    assert!(
        matches!(
            &echo_ended.state,
            ContainerState::Terminated { exit_code: 0, reason, .. } if reason == "Completed"
        ),
        "{echo_ended:?}"
    );
    assert_eq!(echo_ended.restart_count, 0);

    // ---- a long-running container: exec, kill exec, sysctl, resources, log reopen, stop.
    let svc = container(
        &rt,
        &sandbox,
        &env,
        "c-svc",
        "svc",
        "trap 'echo term; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
        |_| {},
    );
    ok(
        &sock,
        Request::CreateContainer {
            plan: Box::new(svc),
        },
    );
    ok(&sock, Request::StartContainer { id: "c-svc".into() });
    wait_until("svc ready", || log_text(&env, "svc").contains("ready"));

    let null = std::fs::File::open("/dev/null").unwrap();
    let (xo_r, xo_w) = pipe();
    let mut exec = Client::connect(&sock).unwrap();
    exec.set_timeout(T).unwrap();
    exec.send_with_fds(
        &Request::Exec {
            container: "c-svc".into(),
            args: vec![
                "cat".into(),
                "/proc/sys/net/ipv4/ip_unprivileged_port_start".into(),
            ],
            tty: false,
        },
        &[null.as_raw_fd(), xo_w.as_raw_fd(), xo_w.as_raw_fd()],
    )
    .unwrap();
    drop(xo_w);
    assert!(matches!(exec.recv().unwrap(), Response::Started { .. }));
    assert_eq!(exec.recv().unwrap(), Response::Exited { exit_code: 0 });
    assert_eq!(read_all(xo_r).trim(), "7", "the pod's sysctl applies");

    let mut exec = Client::connect(&sock).unwrap();
    exec.set_timeout(T).unwrap();
    exec.send_with_fds(
        &Request::Exec {
            container: "svc".into(), // by name works too
            args: vec!["sleep".into(), "1000".into()],
            tty: false,
        },
        &[null.as_raw_fd(); 3],
    )
    .unwrap();
    let Response::Started { pid } = exec.recv().unwrap() else {
        panic!("exec did not start")
    };
    ok(&sock, Request::KillExec { pid });
    assert_eq!(exec.recv().unwrap(), Response::Exited { exit_code: 137 });

    let resources = podrun_runtime::cgroups::Resources {
        memory_limit: Some(256 << 20),
        ..Default::default()
    };
    ok(
        &sock,
        Request::UpdateResources {
            id: "c-svc".into(),
            resources: resources.clone(),
        },
    );
    let plan_file: PodPlan =
        serde_json::from_slice(&std::fs::read(sandbox.state_dir.join("plan.json")).unwrap())
            .unwrap();
    assert_eq!(
        plan_file
            .containers
            .iter()
            .find(|c| c.id == "c-svc")
            .unwrap()
            .resources,
        resources
    );

    // Rotation renames the file; after ReopenLog the monitor writes a new one.
    let log_path = env.logs.join("sandbox").join("svc_0.log");
    std::fs::rename(&log_path, log_path.with_extension("log.1")).unwrap();
    ok(&sock, Request::ReopenLog { id: "c-svc".into() });
    assert!(log_path.exists());
    ok(
        &sock,
        Request::StopContainer {
            id: "c-svc".into(),
            timeout_secs: 20,
        },
    );
    assert!(matches!(
        state_of(&sock, "c-svc"),
        Some(ContainerState::Terminated { exit_code: 3, .. })
    ));
    assert!(log_text(&env, "svc").contains(" stdout F term"));
    // Through the whole life of c-svc, c-echo stayed as it ended: the same run, no
    // restart counted.
    assert_eq!(container_status(&sock, "c-echo").unwrap(), echo_ended);
    // Stopping what is not running, and reopening its log, are answered at once.
    ok(
        &sock,
        Request::StopContainer {
            id: "c-svc".into(),
            timeout_secs: 20,
        },
    );
    ok(
        &sock,
        Request::StopContainer {
            id: "nope".into(),
            timeout_secs: 0,
        },
    );
    assert!(call(&sock, Request::ReopenLog { id: "c-svc".into() }).is_err());

    // ---- a tty container: one output stream, input through the pty, resize.
    let tty = container(
        &rt,
        &sandbox,
        &env,
        "c-tty",
        "tty",
        "read x; stty size; echo got-$x",
        |s| {
            s.tty = true;
            s.stdin = true;
        },
    );
    ok(
        &sock,
        Request::CreateContainer {
            plan: Box::new(tty),
        },
    );
    ok(&sock, Request::StartContainer { id: "c-tty".into() });
    let (tin_r, mut tin_w) = pipe();
    let (tout_r, tout_w) = pipe();
    let mut attach = Client::connect(&sock).unwrap();
    attach.set_timeout(T).unwrap();
    let resp = attach
        .call_with_fds(
            &Request::Attach {
                id: "c-tty".into(),
                stdin: true,
                stdout: true,
                stderr: false,
            },
            &[tin_r.as_raw_fd(), tout_w.as_raw_fd()],
        )
        .unwrap();
    assert_eq!(resp, Response::Ok);
    drop((tin_r, tout_w));
    ok(
        &sock,
        Request::Resize {
            id: "c-tty".into(),
            width: 100,
            height: 40,
        },
    );
    tin_w.write_all(b"abc\n").unwrap();
    assert_eq!(attach.recv().unwrap(), Response::Exited { exit_code: 0 });
    drop(tin_w);
    let out = read_all(tout_r);
    assert!(out.contains("40 100"), "tty output: {out:?}");
    assert!(out.contains("got-abc"), "tty output: {out:?}");

    // ---- removal: a running container is killed, its dirs and cgroup go.
    let doomed = container(
        &rt,
        &sandbox,
        &env,
        "c-doomed",
        "doomed",
        "sleep 1000",
        |_| {},
    );
    let doomed_dir = doomed.rootfs.upper.parent().unwrap().to_path_buf();
    ok(
        &sock,
        Request::CreateContainer {
            plan: Box::new(doomed),
        },
    );
    ok(
        &sock,
        Request::StartContainer {
            id: "c-doomed".into(),
        },
    );
    assert!(doomed_dir.exists());
    ok(
        &sock,
        Request::RemoveContainer {
            id: "c-doomed".into(),
        },
    );
    assert!(state_of(&sock, "c-doomed").is_none());
    assert!(!doomed_dir.exists(), "container dir removed");
    ok(&sock, Request::RemoveContainer { id: "nope".into() });
    for id in ["c-echo", "c-tty"] {
        ok(&sock, Request::RemoveContainer { id: id.into() });
    }
    let plan_file: PodPlan =
        serde_json::from_slice(&std::fs::read(sandbox.state_dir.join("plan.json")).unwrap())
            .unwrap();
    assert_eq!(
        plan_file
            .containers
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["c-svc"]
    );

    // ---- stopping the sandbox keeps it; its containers are stopped, still listed.
    let last = container(&rt, &sandbox, &env, "c-last", "last", "sleep 1000", |_| {});
    ok(
        &sock,
        Request::CreateContainer {
            plan: Box::new(last),
        },
    );
    ok(
        &sock,
        Request::StartContainer {
            id: "c-last".into(),
        },
    );
    ok(
        &sock,
        Request::Stop {
            grace_secs: Some(1),
            remove: false,
        },
    );
    let st = status(&sock);
    assert_eq!(st.containers.len(), 2);
    assert!(st
        .containers
        .iter()
        .all(|c| matches!(c.state, ContainerState::Terminated { .. })));
    let late = call(
        &sock,
        Request::CreateContainer {
            plan: Box::new(echo),
        },
    );
    assert!(matches!(late, Err(ProtocolError::Remote(m)) if m.contains("stopping")));

    // ---- removing the sandbox removes everything, created containers included.
    let pid = st.monitor_pid;
    let _ = call(
        &sock,
        Request::Stop {
            grace_secs: Some(0),
            remove: true,
        },
    );
    wait_until("monitor exit", || {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        !podrun_runtime::pod::pid_alive(pid)
    });
    // kubelet removes container logs itself; the sandbox's log directory goes with it.
    let _ = std::fs::remove_dir_all(env.logs.join("sandbox"));
    env.assert_no_leaks();
}

#[test]
fn stop_container_kills_after_its_timeout() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let rt = runtime(&env);
    let sandbox = rt
        .run_sandbox(
            "sb2",
            &SandboxSpec {
                name: "own-pid".into(),
                namespace: "default".into(),
                uid: "uid-own-pid".into(),
                hostname: "own-pid".into(),
                log_directory: Some(env.logs.join("sandbox")),
                pid: podrun_runtime::sandbox::NamespaceMode::Container,
                ..Default::default()
            },
        )
        .unwrap();
    let sock = sandbox.state_dir.join("monitor.sock");
    // PID 1 of its own namespace without a handler: SIGTERM does nothing.
    let c = container(
        &rt,
        &sandbox,
        &env,
        "c-stubborn",
        "stubborn",
        "sleep 1000",
        |_| {},
    );
    ok(&sock, Request::CreateContainer { plan: Box::new(c) });
    ok(
        &sock,
        Request::StartContainer {
            id: "c-stubborn".into(),
        },
    );
    // SIGTERM is ignored, so only the SIGKILL after the grace period ends it: exit 137.
    ok(
        &sock,
        Request::StopContainer {
            id: "c-stubborn".into(),
            timeout_secs: 1,
        },
    );
    assert!(matches!(
        state_of(&sock, "c-stubborn"),
        Some(ContainerState::Terminated { exit_code: 137, .. })
    ));
    // A container that is only created goes with the sandbox.
    let c = container(&rt, &sandbox, &env, "c-idle", "idle", "true", |_| {});
    let idle_dir = c.rootfs.upper.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&idle_dir).unwrap();
    ok(&sock, Request::CreateContainer { plan: Box::new(c) });
    let pid = status(&sock).monitor_pid;
    ok(
        &sock,
        Request::Stop {
            grace_secs: Some(0),
            remove: true,
        },
    );
    wait_until("monitor exit", || {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        !podrun_runtime::pod::pid_alive(pid)
    });
    assert!(!idle_dir.exists());
    let _ = std::fs::remove_dir_all(env.logs.join("sandbox"));
    env.assert_no_leaks();
}
