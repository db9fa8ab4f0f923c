//! Container and pod lifecycle: exit codes and reasons, restart policies and back-off,
//! OOM kills, graceful stop with preStop hooks, foreground runs and crash recovery.

mod common;

use std::io::BufRead;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{detail, state_of, Env};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 3600 & wait $!; done";

fn restart_count(env: &Env, pod: &str, c: &str) -> u64 {
    env.container_status(pod, c)
        .and_then(|s| s["restartCount"].as_u64())
        .unwrap_or(0)
}

/// Whether a process is gone (a zombie counts as gone: it runs nothing any more).
fn process_gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn exec_exit_code_is_podruns_exit_code() {
    require_root!();
    let env = Env::new(&["busybox"]);
    env.run_pod(
        "execcode.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: execcode}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, \"{IDLE}\"]\n"),
    );
    let out = env.exec("execcode", "c", &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = env.exec(
        "execcode",
        "c",
        &["sh", "-c", "echo out; echo err >&2; exit 0"],
    );
    assert_eq!(common::text(&out), (0, "out\n".into(), "err\n".into()));
    // A command that does not exist: non-zero, the container keeps running.
    let out = env.exec("execcode", "c", &["/no/such/binary"]);
    assert!(!out.status.success());
    assert_eq!(
        state_of(&env.container_status("execcode", "c").unwrap()).0,
        "running"
    );
    env.rm(&["execcode"]);
    env.assert_no_leaks();
}

/// Run podrun with a terminal of the test's own as its stdio; returns its exit status and
/// everything it wrote to that terminal.
fn podrun_on_a_terminal(env: &Env, args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut child = env
        .cmd(args)
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    // Read until the terminal reports EIO: podrun, and every copy of the slave, is gone.
    let reader = std::thread::spawn(move || {
        let mut master = std::fs::File::from(pty.master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = wait_exit(&mut child, Duration::from_secs(60));
    (status, reader.join().unwrap())
}

#[test]
fn exec_with_a_terminal_gets_one_of_the_container() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let pod = format!("exectty-{}", std::process::id());
    env.run_pod(
        "exectty.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    tty: true\n    command: [sh, -c, \"tty; {IDLE}\"]\n"),
    );
    // A tty container's own terminal is the first of its devpts.
    let logs = env.wait_for(
        "the container's tty in its log",
        Duration::from_secs(30),
        || {
            let l = env.ok(&["logs", "-c", "c", &pod]);
            (!l.trim().is_empty()).then_some(l)
        },
    );
    assert_eq!(logs.trim_end(), "/dev/pts/0", "{logs:?}");
    // `exec -t`: the terminal is made in the container, so the process can name it.
    let (status, out) = podrun_on_a_terminal(
        &env,
        &[
            "exec",
            "-t",
            "-c",
            "c",
            &pod,
            "--",
            "sh",
            "-c",
            "tty; test -e $(tty) && echo exists; exit 4",
        ],
    );
    assert_eq!(status.code(), Some(4), "{out:?}");
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("/dev/pts/") && *l != "/dev/pts/0"),
        "{out:?}"
    );
    assert!(lines.contains(&"exists"), "{out:?}");
    env.rm(&[&pod]);
    env.assert_no_leaks();
}

#[test]
fn terminated_reasons_and_restart_policies() {
    require_root!();
    let env = Env::new(&["busybox"]);
    env.run_pod(
        "never.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: never}
spec:
  restartPolicy: Never
  containers:
  - name: fails
    image: busybox
    command: [sh, -c, "echo failing; exit 3"]
  - name: succeeds
    image: busybox
    command: [sh, -c, "echo done"]
"#,
    );
    env.run_pod(
        "onfailure.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: onfailure}
spec:
  restartPolicy: OnFailure
  containers:
  - name: retry
    image: busybox
    command: [sh, -c, "if [ -e /w/ran ]; then echo second; exit 0; fi; touch /w/ran; echo first; exit 1"]
    volumeMounts: [{name: w, mountPath: /w}]
  - name: once
    image: busybox
    command: [sh, -c, "echo once"]
  volumes: [{name: w, emptyDir: {}}]
"#,
    );

    env.wait_for("never to finish", Duration::from_secs(20), || {
        (env.phase("never").as_deref() == Some("Failed")).then_some(())
    });
    let fails = env.container_status("never", "fails").unwrap();
    let (kind, d) = state_of(&fails);
    assert_eq!(kind, "terminated", "{fails}");
    assert_eq!(detail(&d, "exitCode"), 3, "{fails}");
    assert_eq!(detail(&d, "reason"), "Error", "{fails}");
    assert_eq!(fails["restartCount"], 0);
    let ok = env.container_status("never", "succeeds").unwrap();
    let (kind, d) = state_of(&ok);
    assert_eq!(kind, "terminated", "{ok}");
    assert_eq!(detail(&d, "exitCode"), 0, "{ok}");
    assert_eq!(detail(&d, "reason"), "Completed", "{ok}");
    assert_eq!(env.ok(&["logs", "-c", "fails", "never"]), "failing\n");

    // OnFailure restarts the failed container once (its second run succeeds), never the
    // one that exited 0.
    env.wait_for("onfailure to succeed", Duration::from_secs(30), || {
        (env.phase("onfailure").as_deref() == Some("Succeeded")).then_some(())
    });
    let retry = env.container_status("onfailure", "retry").unwrap();
    assert_eq!(retry["restartCount"], 1, "{retry}");
    let (kind, d) = state_of(&retry);
    assert_eq!(
        (kind.as_str(), detail(&d, "reason").as_str()),
        ("terminated", Some("Completed")),
        "{retry}"
    );
    let last = &retry["lastState"]["terminated"];
    assert_eq!(detail(last, "exitCode"), 1, "{retry}");
    assert_eq!(env.ok(&["logs", "-c", "retry", "onfailure"]), "second\n");
    assert_eq!(
        env.ok(&["logs", "-p", "-c", "retry", "onfailure"]),
        "first\n"
    );
    assert_eq!(
        env.container_status("onfailure", "once").unwrap()["restartCount"],
        0
    );

    env.rm(&["never", "onfailure"]);
    env.assert_no_leaks();
}

const CRASH: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "n=$(cat /w/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /w/n; echo run $n; exit 1"]
    volumeMounts: [{name: w, mountPath: /w}]
  volumes: [{name: w, emptyDir: {}}]
"#;

/// A timestamp of a container status (RFC 3339).
fn timestamp(v: &serde_json::Value) -> chrono::DateTime<chrono::FixedOffset> {
    let text = v.as_str().unwrap_or_else(|| panic!("no timestamp: {v}"));
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// When the latest run a container status shows started: the running one, or the one
/// that ended last.
fn latest_run_start(c: &serde_json::Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let (kind, d) = state_of(c);
    let started = match kind.as_str() {
        "running" | "terminated" => detail(&d, "startedAt"),
        _ => detail(&c["lastState"]["terminated"], "startedAt"),
    };
    (!started.is_null()).then(|| timestamp(started))
}

/// How many times the container has been started: the CRI log files of its runs
/// (<log root>/<ns>_<pod>_<uid>/<container>/<restart>.log, as kubelet lays them out).
fn runs(env: &Env, container: &str) -> usize {
    let mut n = 0;
    for pod in std::fs::read_dir(&env.logs).into_iter().flatten().flatten() {
        let dir = pod.path().join(container);
        n += std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .count();
    }
    n
}

#[test]
fn crash_loop_back_off_delays_restarts() {
    require_root!();
    let env = Env::new(&["busybox"]);
    env.run_pod("crash.yaml", CRASH);
    // The first restart is immediate.
    env.wait_for("the second run", Duration::from_secs(10), || {
        (runs(&env, "c") >= 2).then_some(())
    });
    // Then the container waits in CrashLoopBackOff (10 s before the next start).
    let waiting = env.wait_for("CrashLoopBackOff", Duration::from_secs(10), || {
        let c = env.container_status("crash", "c")?;
        let (kind, d) = state_of(&c);
        (kind == "waiting" && d["reason"] == "CrashLoopBackOff").then_some(c)
    });
    assert_eq!(
        detail(&waiting["lastState"]["terminated"], "exitCode"),
        1,
        "{waiting}"
    );
    assert_eq!(
        detail(&waiting["lastState"]["terminated"], "reason"),
        "Error",
        "{waiting}"
    );
    let pods = env.ok(&["pods"]);
    assert!(pods.contains("CrashLoopBackOff"), "{pods}");
    assert_eq!(runs(&env, "c"), 2);
    // The status announces the back-off, as kubelet words it.
    let (_, state) = state_of(&waiting);
    let message = state["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("back-off 10s restarting failed container=c pod=crash"),
        "{waiting}"
    );
    let second_ended = timestamp(detail(&waiting["lastState"]["terminated"], "finishedAt"));

    // The third run starts once the back-off has passed: by the runtime's own clock, not
    // before 10 s after the second run ended.
    let third = env.wait_for("the third run", Duration::from_secs(40), || {
        let c = env.container_status("crash", "c")?;
        (c["restartCount"] == 2).then_some(c)
    });
    let third_started = latest_run_start(&third).expect("the third run's start");
    assert!(
        third_started >= second_ended + chrono::TimeDelta::seconds(10),
        "the third run started at {third_started}, within the back-off after the second \
         ended at {second_ended}: {third}"
    );
    assert_eq!(runs(&env, "c"), 3);
    // `logs -p` shows the output of one earlier run.
    env.wait_for("back-off again", Duration::from_secs(10), || {
        let c = env.container_status("crash", "c")?;
        (state_of(&c).0 == "waiting").then_some(())
    });
    let prev = env.ok(&["logs", "-p", "crash"]);
    assert!(
        ["run 1\n", "run 2\n", "run 3\n"].contains(&prev.as_str()),
        "{prev:?}"
    );

    env.rm(&["crash"]);
    env.assert_no_leaks();
}

#[test]
fn restart_count_counts_restarts_not_exits() {
    require_root!();
    let env = Env::new(&["busybox"]);
    env.run_pod("crash.yaml", CRASH);
    // The first restart is immediate.
    env.wait_for("first restart", Duration::from_secs(10), || {
        (restart_count(&env, "crash", "c") >= 1).then_some(())
    });
    // Then the container waits in CrashLoopBackOff, restarted once so far.
    let waiting = env.wait_for("CrashLoopBackOff", Duration::from_secs(10), || {
        let c = env.container_status("crash", "c")?;
        let (kind, d) = state_of(&c);
        (kind == "waiting" && d["reason"] == "CrashLoopBackOff").then_some(c)
    });
    assert_eq!(waiting["restartCount"], 1, "{waiting}");
    // The current container is the last run (it exited); -p is the one before.
    assert_eq!(env.ok(&["logs", "crash"]), "run 2\n");
    assert_eq!(env.ok(&["logs", "-p", "crash"]), "run 1\n");
    // Every status until the second restart, through the whole back-off, still shows the
    // second run as the latest and counts 1; the count becomes 2 with a run that started
    // later.
    let second_started = latest_run_start(&waiting).expect("the second run's start");
    let restarted = env.wait_for("second restart", Duration::from_secs(40), || {
        let c = env.container_status("crash", "c")?;
        if c["restartCount"] == 2 {
            return Some(c);
        }
        assert_eq!(c["restartCount"], 1, "{c}");
        assert_eq!(latest_run_start(&c), Some(second_started), "{c}");
        None
    });
    let third_started = latest_run_start(&restarted).expect("the third run's start");
    assert!(third_started > second_started, "{restarted}");
    env.rm(&["crash"]);
    env.assert_no_leaks();
}

/// The memory limit the container's cgroup got, from cgroup v1 or v2 files.
fn memory_limit(env: &Env, container_id: &str) -> Option<String> {
    for (hierarchy, file) in [("memory", "memory.limit_in_bytes"), ("", "memory.max")] {
        let dirs = env.cgroup_dirs(hierarchy);
        if let Some(d) = dirs.iter().find(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(container_id))
        }) {
            if let Ok(v) = std::fs::read_to_string(d.join(file)) {
                return Some(v.trim().to_owned());
            }
        }
    }
    None
}

#[test]
fn oom_killed() {
    require_root!();
    let env = Env::new(&["busybox"]);
    env.run_pod(
        "oom.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: oom}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: busybox
    # tail keeps the whole (newline-free) input in memory.
    command: [tail, /dev/zero]
    resources:
      limits: {memory: 32Mi}
"#,
    );
    let c = env.wait_state("oom", "hog", "terminated", Duration::from_secs(30));
    let (_, d) = state_of(&c);
    assert_eq!(detail(&d, "reason"), "OOMKilled", "{c}");
    assert_eq!(detail(&d, "exitCode"), 137, "{c}");
    assert_eq!(env.phase("oom").as_deref(), Some("Failed"));
    let id = c["id"].as_str().unwrap();
    assert_eq!(
        memory_limit(&env, id).as_deref(),
        Some("33554432"),
        "memory limit of container {id}"
    );
    env.rm(&["oom"]);
    env.assert_no_leaks();
}

#[test]
fn graceful_stop_waits_for_a_trapping_container() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let host = env.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    env.run_pod(
        "slowstop.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: slowstop}}
spec:
  terminationGracePeriodSeconds: 30
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "trap 'echo term >> /host/events; sleep 2; echo done >> /host/events; exit 0' TERM; echo up; while true; do sleep 3600 & wait $!; done"]
    volumeMounts: [{{name: host, mountPath: /host}}]
  volumes:
  - name: host
    hostPath: {{path: {}, type: Directory}}
"#,
            host.display()
        ),
    );
    env.wait_for("the trap to be set", Duration::from_secs(20), || {
        env.ok(&["logs", "slowstop"]).contains("up").then_some(())
    });
    env.ok(&["rm", "slowstop"]);
    let events = std::fs::read_to_string(host.join("events")).unwrap();
    assert_eq!(
        events, "term\ndone\n",
        "rm returns only after the TERM handler ran to its end, unkilled"
    );
    env.assert_no_leaks();
}

#[test]
fn graceful_stop_kills_after_the_grace_period() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let host = env.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    env.run_pod(
        "stubborn.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: c
    image: busybox
    # Notes SIGTERM, lives on well inside the grace period, and never exits by itself.
    command: [sh, -c, "trap 'echo term >> /host/events; sleep 1; echo alive >> /host/events' TERM; echo up; while true; do sleep 3600 & wait $!; done"]
    volumeMounts: [{{name: host, mountPath: /host}}]
  volumes:
  - name: host
    hostPath: {{path: {}, type: Directory}}
"#,
            host.display()
        ),
    );
    env.wait_for("the trap to be set", Duration::from_secs(20), || {
        env.ok(&["logs", "stubborn"]).contains("up").then_some(())
    });
    // rm returns: only SIGKILL can have ended a container that ignores TERM.
    env.ok(&["rm", "stubborn"]);
    let events = std::fs::read_to_string(host.join("events")).unwrap();
    assert_eq!(
        events, "term\nalive\n",
        "TERM comes first and the kill waits for the grace period"
    );
    env.assert_no_leaks();
}

#[test]
fn pre_stop_hook_runs_before_the_stop_signal() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let host = env.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    env.run_pod(
        "prestop.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: prestop}}
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "trap 'echo term >> /host/events; exit 0' TERM; echo up; while true; do sleep 3600 & wait $!; done"]
    lifecycle:
      preStop:
        exec:
          command: [sh, -c, "echo prestop >> /host/events; sleep 1"]
    volumeMounts: [{{name: host, mountPath: /host}}]
  volumes:
  - name: host
    hostPath: {{path: {}, type: Directory}}
"#,
            host.display()
        ),
    );
    env.wait_for("the trap to be set", Duration::from_secs(20), || {
        env.ok(&["logs", "prestop"]).contains("up").then_some(())
    });
    env.ok(&["rm", "prestop"]);
    let events = std::fs::read_to_string(host.join("events")).unwrap();
    assert_eq!(
        events, "prestop\nterm\n",
        "preStop runs to completion, then TERM"
    );
    env.assert_no_leaks();
    // The hostPath directory itself is the test's, and stays.
    assert!(host.join("events").exists());
}

/// Collect a child's stdout (or stderr) lines on a channel.
fn lines_of(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, want: &str, timeout: Duration) -> Vec<String> {
    let end = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = l == want;
                seen.push(l);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("no line {want:?} within {timeout:?}; got {seen:?}"),
        }
    }
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("podrun run did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `podrun run FILE` in the foreground, its stdout piped.
fn run_in_foreground(env: &Env, f: &std::path::Path, stderr: Stdio) -> std::process::Child {
    env.cmd(&["run", f.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

fn fg_manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: main\n    image: busybox\n    command: [sh, -c, \"echo hello from $HOSTNAME; {IDLE}\"]\n"
    )
}

#[test]
fn foreground_run_stops_on_sigint() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let f = env.manifest("fg.yaml", &fg_manifest("fg"));
    let mut child = run_in_foreground(&env, &f, Stdio::piped());
    let rx = lines_of(child.stdout.take().unwrap());
    wait_line(&rx, "[main] hello from fg", Duration::from_secs(20));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("stopping pod"), "{stderr}");
    assert!(env.pods_json().as_array().unwrap().is_empty());
    env.assert_no_leaks();
}

/// Start `podrun run` in the foreground, wait for the container's first line, kill -9
/// it; returns the pids of the monitor and of the container's process.
fn run_and_kill_foreground(env: &Env, name: &str) -> (i64, i64) {
    let f = env.manifest(&format!("{name}.yaml"), &fg_manifest(name));
    let mut child = run_in_foreground(env, &f, Stdio::null());
    let rx = lines_of(child.stdout.take().unwrap());
    wait_line(
        &rx,
        &format!("[main] hello from {name}"),
        Duration::from_secs(20),
    );
    let pod = env.pod_json(name).unwrap();
    let monitor = pod["status_detail"]["monitorPid"].as_i64().unwrap();
    let container = pod["status_detail"]["containers"][0]["state"]["running"]["pid"]
        .as_i64()
        .unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    (monitor, container)
}

#[test]
fn foreground_run_killed_hard_stops_the_pod() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let (monitor, container) = run_and_kill_foreground(&env, "fgkill");
    // The monitor notices its holder is gone, stops the pod and exits by itself.
    env.wait_for("the container to stop", Duration::from_secs(40), || {
        process_gone(container).then_some(())
    });
    env.wait_for("the monitor to exit", Duration::from_secs(40), || {
        (!std::path::Path::new(&format!("/proc/{monitor}")).exists()).then_some(())
    });
    assert!(env.pods_json().as_array().unwrap().is_empty());
    env.assert_no_leaks();
}

#[test]
fn foreground_run_killed_hard_is_removed_by_the_monitor_alone() {
    require_root!();
    let env = Env::new(&["busybox"]);
    run_and_kill_foreground(&env, "fgalone");
    // Look at the state directory directly so no podrun command does the cleanup.
    let pods_dir = env.state.join("pods");
    env.wait_for(
        "the monitor to remove the pod",
        Duration::from_secs(40),
        || {
            std::fs::read_dir(&pods_dir)
                .map(|d| d.count() == 0)
                .unwrap_or(true)
                .then_some(())
        },
    );
    env.assert_no_leaks();
}

#[test]
fn killed_monitor_is_reaped_by_the_next_command() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let manifest = format!(
        "{}  - name: second\n    image: busybox\n    command: [sleep, \"3600\"]\n",
        fg_manifest("orphan")
    );
    let f = env.manifest("orphan.yaml", &manifest);
    env.ok(&["run", "-d", f.to_str().unwrap()]);
    let pod = env.wait_for("both containers running", Duration::from_secs(20), || {
        let p = env.pod_json("orphan")?;
        let cs = p["status_detail"]["containers"].as_array()?;
        (cs.len() == 2 && cs.iter().all(|c| state_of(c).0 == "running")).then_some(p)
    });
    let monitor = pod["status_detail"]["monitorPid"].as_i64().unwrap();
    let pids: Vec<i64> = pod["status_detail"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"]["running"]["pid"].as_i64().unwrap())
        .collect();
    kill(Pid::from_raw(monitor as i32), Signal::SIGKILL).unwrap();
    // Gone for good (reaped by whoever inherited it), as after a crash.
    env.wait_for("the monitor to die", Duration::from_secs(10), || {
        (!std::path::Path::new(&format!("/proc/{monitor}")).exists()).then_some(())
    });

    let out = env.podrun(&["pods"]);
    let (code, _, stderr) = common::text(&out);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("removed leftovers of pod default/orphan"),
        "{stderr}"
    );
    for pid in &pids {
        env.wait_for(
            &format!("container process {pid} to go"),
            Duration::from_secs(10),
            || process_gone(*pid).then_some(()),
        );
    }
    assert!(env.pods_json().as_array().unwrap().is_empty());
    env.assert_no_leaks();
}

/// A pipe whose reading end is already closed: whatever writes to it gets EPIPE, or dies
/// of SIGPIPE.
fn closed_pipe() -> Stdio {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    Stdio::from(write)
}

#[test]
fn closed_stdout_ends_commands_quietly_as_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    require_root!();
    let env = Env::new(&["busybox"]);
    env.run_pod(
        "pipe.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: pipe}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, \"echo up; {IDLE}\"]\n"),
    );
    env.wait_for(
        "the container's first line",
        Duration::from_secs(20),
        || env.ok(&["logs", "pipe"]).contains("up").then_some(()),
    );
    // `podrun pods | head -0` and the like.
    for args in [
        &["pods"][..],
        &["pods", "-o", "yaml"],
        &["ps", "-a"],
        &["images"],
        &["logs", "pipe"],
        &["logs", "-f", "pipe"],
    ] {
        let out = env
            .cmd(args)
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?}, stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    env.rm(&["pipe"]);
    env.assert_no_leaks();
}

#[test]
fn foreground_run_with_a_closed_stdout_removes_the_pod_and_ends_as_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    require_root!();
    let env = Env::new(&["busybox"]);
    let f = env.manifest(
        "fgpipe.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: fgpipe}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: main\n    image: busybox\n    command: [sh, -c, \"echo hello; trap 'exit 0' TERM; while true; do echo tick; sleep 1 & wait $!; done\"]\n",
    );
    // `podrun run pod.yaml | head -1`.
    let mut child = run_in_foreground(&env, &f, Stdio::piped());
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "[main] hello\n");
    drop(out);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGPIPE),
        "{status:?}, stderr: {stderr}"
    );
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    // podrun itself removed the pod before it ended.
    assert!(env.pods_json().as_array().unwrap().is_empty());
    env.assert_no_leaks();
}

#[test]
fn second_sigint_kills_the_pod_and_says_so() {
    require_root!();
    let env = Env::new(&["busybox"]);
    // A container that ignores SIGTERM, with a grace period far longer than the test.
    let f = env.manifest(
        "fgforce.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: fgforce}\nspec:\n  terminationGracePeriodSeconds: 300\n  containers:\n  - name: main\n    image: busybox\n    command: [sh, -c, \"trap '' TERM; echo up; while true; do sleep 3600 & wait $!; done\"]\n",
    );
    let mut child = run_in_foreground(&env, &f, Stdio::piped());
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    wait_line(&out, "[main] up", Duration::from_secs(20));
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    wait_line(
        &err,
        "podrun: stopping pod default/fgforce (grace period 300s)",
        Duration::from_secs(20),
    );
    kill(pid, Signal::SIGINT).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let rest: Vec<String> = err.iter().collect();
    assert_eq!(rest, ["podrun: pod default/fgforce killed"], "{status:?}");
    assert_eq!(status.code(), Some(137));
    assert!(env.pods_json().as_array().unwrap().is_empty());
    env.assert_no_leaks();
}

/// Set a terminal's window size (on its master: the kernel signals SIGWINCH to the
/// terminal's foreground process group).
fn set_window_size(fd: &impl std::os::fd::AsRawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct.
    assert_eq!(
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
}

#[test]
fn exec_with_a_terminal_passes_window_resizes_on() {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};
    require_root!();
    let env = Env::new(&["busybox"]);
    let pod = format!("execwinch-{}", std::process::id());
    env.run_pod(
        "execwinch.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, \"{IDLE}\"]\n"),
    );
    env.wait_state(&pod, "c", "running", Duration::from_secs(20));
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    // Each line of input prints the size of the container's terminal; "q" ends it.
    let mut cmd = env.cmd(&[
        "exec",
        "-i",
        "-t",
        "-c",
        "c",
        &pod,
        "--",
        "sh",
        "-c",
        "stty size; while read x; do [ \"$x\" = q ] && exit 3; stty size; done",
    ]);
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave));
    // SAFETY: setsid and TIOCSCTTY only, between fork and exec: the test's terminal is
    // podrun's controlling terminal, as a user's is, so a resize signals podrun.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let output = Arc::new(Mutex::new(String::new()));
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let seen = output.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let has_line = |want: &str| output.lock().unwrap().lines().any(|l| l.trim_end() == want);
    env.wait_for("the first size", Duration::from_secs(20), || {
        has_line("24 80").then_some(())
    });
    for (rows, cols) in [(30u16, 100u16), (40, 120)] {
        set_window_size(&master, rows, cols);
        let want = format!("{rows} {cols}");
        // Ask again until the new size shows: the resize and the input are relayed
        // independently.
        env.wait_for(&format!("the size {want}"), Duration::from_secs(20), || {
            master.write_all(b"\n").unwrap();
            has_line(&want).then_some(())
        });
    }
    master.write_all(b"q\n").unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{}", output.lock().unwrap());
    env.rm(&[&pod]);
    env.assert_no_leaks();
}

#[test]
fn foreground_run_whose_monitor_is_killed_cleans_up_and_fails() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let f = env.manifest("fgmon.yaml", &fg_manifest("fgmon"));
    let mut child = run_in_foreground(&env, &f, Stdio::piped());
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    wait_line(&out, "[main] hello from fgmon", Duration::from_secs(20));
    let pod = env.pod_json("fgmon").unwrap();
    let monitor = pod["status_detail"]["monitorPid"].as_i64().unwrap();
    let container = pod["status_detail"]["containers"][0]["state"]["running"]["pid"]
        .as_i64()
        .unwrap();
    kill(Pid::from_raw(monitor as i32), Signal::SIGKILL).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let stderr: Vec<String> = err.iter().collect();
    assert_eq!(status.code(), Some(1), "{stderr:?}");
    assert!(
        stderr.iter().any(|l| l.contains(&format!(
            "the monitor of pod default/fgmon (pid {monitor}) exited"
        ))),
        "{stderr:?}"
    );
    // podrun itself cleaned up: before any other podrun command could reap the pod.
    env.assert_no_leaks();
    env.wait_for(
        "the container to be killed",
        Duration::from_secs(10),
        || process_gone(container).then_some(()),
    );
    assert!(env.pods_json().as_array().unwrap().is_empty());
}
