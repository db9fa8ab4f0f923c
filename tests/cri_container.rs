//! CRI container behaviour of `podrun agent`, after critest's "Container" specs: the
//! create/start/stop/remove lifecycle with status and list filters, exit codes and
//! reasons, stop grace periods, ExecSync (output, exit codes, timeout), CRI-format logs
//! and their reopening, host-path mounts (read-only, symlinked, propagation), and stats.

mod common;
mod cri_common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cri_common::{Agent, BUSYBOX};
use podrun_cri_proto::v1;
use v1::ContainerState::{ContainerCreated, ContainerExited, ContainerRunning};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_status_and_list_filters() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("life").await;
    let c1 = a
        .create_container(&sb, &cfg, a.container_config("one", &["sleep", "3600"]))
        .await;
    let c2 = a
        .create_container(&sb, &cfg, a.container_config("two", &["sleep", "3600"]))
        .await;

    let st = a.container_status(&c1).await.unwrap();
    assert_eq!(st.id, c1);
    assert_eq!(st.state, ContainerCreated as i32);
    assert_eq!(st.metadata.as_ref().unwrap().name, "one");
    assert!(st.created_at > 0);
    assert_eq!(st.started_at, 0);
    assert_eq!(st.finished_at, 0);
    assert!(!st.image_ref.is_empty(), "{st:?}");
    assert_eq!(st.labels["container"], "one");
    assert_eq!(st.annotations["podrun.test/c"], "one");
    assert_eq!(
        Path::new(&st.log_path),
        Path::new(&cfg.log_directory).join("one.log")
    );

    a.start_container(&c1).await;
    let st = a.wait_container_state(&c1, ContainerRunning).await;
    assert!(st.started_at >= st.created_at, "{st:?}");

    // Starting a running container again is an error, not a second process.
    assert!(a.try_start_container(&c1).await.is_err());

    let list = |state: Option<v1::ContainerState>, id: &str, sandbox: &str, label: Option<&str>| {
        v1::ContainerFilter {
            id: id.to_string(),
            state: state.map(|s| v1::ContainerStateValue { state: s as i32 }),
            pod_sandbox_id: sandbox.to_string(),
            label_selector: label
                .map(|l| HashMap::from([("container".to_string(), l.to_string())]))
                .unwrap_or_default(),
        }
    };
    let ids = |v: Vec<v1::Container>| {
        let mut v: Vec<String> = v.into_iter().map(|c| c.id).collect();
        v.sort();
        v
    };
    let mut both = vec![c1.clone(), c2.clone()];
    both.sort();
    assert_eq!(ids(a.containers(None).await), both);
    assert_eq!(
        ids(a.containers(Some(list(None, &c1, "", None))).await),
        vec![c1.clone()]
    );
    assert_eq!(
        ids(a
            .containers(Some(list(Some(ContainerRunning), "", "", None)))
            .await),
        vec![c1.clone()]
    );
    assert_eq!(
        ids(a
            .containers(Some(list(Some(ContainerCreated), "", "", None)))
            .await),
        vec![c2.clone()]
    );
    assert_eq!(
        ids(a.containers(Some(list(None, "", &sb, None))).await),
        both
    );
    assert!(a
        .containers(Some(list(None, "", "no-such-sandbox", None)))
        .await
        .is_empty());
    assert_eq!(
        ids(a.containers(Some(list(None, "", "", Some("two")))).await),
        vec![c2.clone()]
    );
    let listed = a.containers(Some(list(None, &c1, "", None))).await;
    assert_eq!(listed[0].pod_sandbox_id, sb);
    assert_eq!(listed[0].metadata.as_ref().unwrap().name, "one");
    assert!(!listed[0].image.as_ref().unwrap().image.is_empty());
    assert_eq!(listed[0].labels["container"], "one");

    // The sandbox status carries the container statuses too.
    let full =
        a.rt.pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: sb.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut states: Vec<(String, i32)> = full
        .containers_statuses
        .iter()
        .map(|s| (s.id.clone(), s.state))
        .collect();
    states.sort();
    let mut want = vec![
        (c1.clone(), ContainerRunning as i32),
        (c2.clone(), ContainerCreated as i32),
    ];
    want.sort();
    assert_eq!(states, want, "{:?}", full.containers_statuses);

    // Stop: exited, with a finish time; stopping again is fine.
    a.stop_container(&c1, 10).await;
    let st = a.wait_container_state(&c1, ContainerExited).await;
    assert!(
        st.finished_at >= st.started_at && st.finished_at > 0,
        "{st:?}"
    );
    a.stop_container(&c1, 10).await;
    assert_eq!(
        ids(a
            .containers(Some(list(Some(ContainerExited), "", "", None)))
            .await),
        vec![c1.clone()]
    );

    // Remove: gone; removing again is fine; a created container can be removed too.
    a.remove_container(&c1).await;
    a.remove_container(&c1).await;
    assert_eq!(
        a.container_status(&c1).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    a.remove_container(&c2).await;
    assert!(a.containers(None).await.is_empty());
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_reasons_and_stop_grace_period() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("exit").await;

    let ok = a
        .create_container(&sb, &cfg, a.container_config("ok", &["true"]))
        .await;
    a.start_container(&ok).await;
    let st = a.wait_container_state(&ok, ContainerExited).await;
    assert_eq!(st.exit_code, 0);
    assert_eq!(st.reason, "Completed");

    let bad = a
        .create_container(
            &sb,
            &cfg,
            a.container_config("bad", &["sh", "-c", "exit 3"]),
        )
        .await;
    a.start_container(&bad).await;
    let st = a.wait_container_state(&bad, ContainerExited).await;
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.reason, "Error");

    // A process that ignores SIGTERM is killed once the grace period ends.
    let stubborn = a
        .run_container(
            &sb,
            &cfg,
            a.container_config(
                "stubborn",
                &[
                    "sh",
                    "-c",
                    "trap '' TERM; touch /tmp/trapped; while true; do sleep 1; done",
                ],
            ),
        )
        .await;
    // A SIGTERM that comes before the shell has set its trap would end it with 143.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while a
        .exec_any(&stubborn, &["test", "-e", "/tmp/trapped"])
        .await
        .0
        != 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never set its TERM trap"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop_container(&stubborn, 1).await;
    let st = a.wait_container_state(&stubborn, ContainerExited).await;
    assert_eq!(st.exit_code, 137, "{st:?}");

    // One that handles SIGTERM exits with its own code.
    let polite = a
        .run_container(
            &sb,
            &cfg,
            a.container_config(
                "polite",
                &[
                    "sh",
                    "-c",
                    "trap 'exit 42' TERM; while true; do sleep 0.1; done",
                ],
            ),
        )
        .await;
    // Give the shell a moment to install its trap.
    a.exec(&polite, &["true"]).await;
    a.stop_container(&polite, 30).await;
    let st = a.wait_container_state(&polite, ContainerExited).await;
    assert_eq!(st.exit_code, 42, "{st:?}");

    // Timeout 0 kills at once.
    let now = a
        .run_container(&sb, &cfg, a.container_config("now", &["sleep", "3600"]))
        .await;
    a.stop_container(&now, 0).await;
    let st = a.wait_container_state(&now, ContainerExited).await;
    assert_eq!(st.exit_code, 137, "{st:?}");

    // Stopping the sandbox stops its running containers.
    let last = a
        .run_container(&sb, &cfg, a.container_config("last", &["sleep", "3600"]))
        .await;
    a.stop_sandbox(&sb).await;
    let st = a.container_status(&last).await.unwrap();
    assert_eq!(st.state, ContainerExited as i32);
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_output_exit_codes_and_timeout() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("exec").await;
    let mut c = a.container_config("c", &["sleep", "3600"]);
    c.envs = vec![v1::KeyValue {
        key: "GREETING".into(),
        value: "hello from env".into(),
    }];
    c.working_dir = "/tmp".into();
    let c = a.run_container(&sb, &cfg, c).await;

    assert_eq!(a.exec(&c, &["echo", "hello"]).await, "hello\n");
    let r = a
        .try_exec(&c, &["sh", "-c", "echo out; echo err >&2; exit 7"], 30)
        .await
        .unwrap();
    assert_eq!(r.exit_code, 7);
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(
        a.exec(&c, &["sh", "-c", "echo $GREETING"]).await,
        "hello from env\n"
    );
    assert_eq!(a.exec(&c, &["pwd"]).await, "/tmp\n");
    // A command that does not exist fails the exec itself, naming the command and errno.
    let e = a
        .try_exec(&c, &["/no/such/binary"], 30)
        .await
        .expect_err("exec of a missing binary succeeded");
    assert_eq!(e.code(), tonic::Code::Unknown, "{e}");
    assert!(
        e.message()
            .contains("exec \"/no/such/binary\": ENOENT: No such file or directory"),
        "{e}"
    );
    // Large output comes back whole.
    let big = a
        .exec(
            &c,
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 20000 ]; do echo 0123456789abcdef; i=$((i+1)); done",
            ],
        )
        .await;
    assert_eq!(big.len(), 20000 * 17);

    // Timeout: the call fails, and the command is gone afterwards.
    let err = a
        .try_exec(&c, &["sleep", "4321"], 1)
        .await
        .expect_err("ExecSync past its timeout fails");
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Internal
        ),
        "{err}"
    );
    let left = cri_common::eventually(
        "the timed-out exec to be killed",
        Duration::from_secs(10),
        || {
            let mut a2 = a.rt.clone();
            let c = c.clone();
            async move {
                let r = a2
                    .exec_sync(v1::ExecSyncRequest {
                        container_id: c,
                        cmd: vec![
                            "sh".into(),
                            "-c".into(),
                            "ps | grep 'sleep 4321' | grep -v grep".into(),
                        ],
                        timeout: 10,
                    })
                    .await
                    .ok()?
                    .into_inner();
                r.stdout.is_empty().then_some(r)
            }
        },
    )
    .await;
    assert!(left.stdout.is_empty());

    // ExecSync in a stopped container fails.
    a.stop_container(&c, 0).await;
    a.wait_container_state(&c, ContainerExited).await;
    assert!(a.try_exec(&c, &["true"], 5).await.is_err());
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_cri_format_and_reopen() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("logs").await;
    let log_dir = Path::new(&cfg.log_directory).to_path_buf();

    let mut once = a.container_config(
        "once",
        &[
            "sh",
            "-c",
            "echo 'hello World'; echo oops >&2; printf partial",
        ],
    );
    once.log_path = "once/0.log".into();
    std::fs::create_dir_all(log_dir.join("once")).unwrap();
    let once = a.create_container(&sb, &cfg, once).await;
    a.start_container(&once).await;
    a.wait_container_state(&once, ContainerExited).await;
    let lines = cri_common::parse_cri_log(&log_dir.join("once/0.log"));
    assert!(
        lines
            .iter()
            .any(|(_, s, t, c)| s == "stdout" && t == "F" && c == "hello World"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(_, s, t, c)| s == "stderr" && t == "F" && c == "oops"),
        "{lines:?}"
    );
    // Output without a newline is a partial line at the end.
    assert!(
        lines
            .iter()
            .any(|(_, s, t, c)| s == "stdout" && t == "P" && c == "partial"),
        "{lines:?}"
    );
    for (ts, ..) in &lines {
        assert!(
            chrono_like_rfc3339(ts),
            "timestamp {ts:?} is not RFC 3339 with nanoseconds"
        );
    }

    // Reopen after rotation: the agent writes a new file, the old one stops growing.
    let looping = a
        .run_container(
            &sb,
            &cfg,
            a.container_config(
                "loop",
                &["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
            ),
        )
        .await;
    let path = log_dir.join("loop.log");
    cri_common::eventually("log lines", Duration::from_secs(30), || async {
        (!cri_common::parse_cri_log(&path).is_empty()).then_some(())
    })
    .await;
    let rotated = log_dir.join("loop.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    a.rt.reopen_container_log(v1::ReopenContainerLogRequest {
        container_id: looping.clone(),
    })
    .await
    .unwrap();
    assert!(
        path.exists(),
        "ReopenContainerLog did not create a new file"
    );
    cri_common::eventually("lines in the new log", Duration::from_secs(30), || async {
        (!cri_common::parse_cri_log(&path).is_empty()).then_some(())
    })
    .await;
    let old = cri_common::parse_cri_log(&rotated).len();
    // The container keeps writing: wait for more lines in the new file, none of them
    // in the rotated one.
    let now = cri_common::parse_cri_log(&path).len();
    cri_common::eventually(
        "more lines in the new log",
        Duration::from_secs(30),
        || async { (cri_common::parse_cri_log(&path).len() >= now + 3).then_some(()) },
    )
    .await;
    assert_eq!(
        cri_common::parse_cri_log(&rotated).len(),
        old,
        "the rotated file still grows"
    );

    // Reopen on a stopped container is an error and creates nothing.
    a.stop_container(&looping, 0).await;
    a.wait_container_state(&looping, ContainerExited).await;
    std::fs::remove_file(&path).unwrap();
    assert!(a
        .rt
        .reopen_container_log(v1::ReopenContainerLogRequest {
            container_id: looping.clone(),
        })
        .await
        .is_err());
    assert!(!path.exists());
    a.finish().await;
}

/// `2006-01-02T15:04:05.999999999Z07:00`-like: date, 'T', time with a fraction, a zone.
fn chrono_like_rfc3339(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (ts.ends_with('Z') || ts[19..].contains('+') || ts[19..].contains('-'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_mounts_readonly_and_symlinked() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("mounts").await;
    let host = a.env.dir.path().join("vol");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("flag"), "from the host\n").unwrap();
    let link = a.env.dir.path().join("vol-link");
    std::os::unix::fs::symlink(&host, &link).unwrap();
    let file = a.env.dir.path().join("single-file");
    std::fs::write(&file, "one file\n").unwrap();

    let mut c = a.container_config("c", &["sleep", "3600"]);
    c.mounts = vec![
        v1::Mount {
            container_path: "/data".into(),
            host_path: host.to_string_lossy().into_owned(),
            ..Default::default()
        },
        v1::Mount {
            container_path: "/ro".into(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        },
        v1::Mount {
            container_path: "/linked".into(),
            host_path: link.to_string_lossy().into_owned(),
            ..Default::default()
        },
        v1::Mount {
            container_path: "/etc/one-file".into(),
            host_path: file.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        },
    ];
    let c = a.run_container(&sb, &cfg, c).await;
    assert_eq!(a.exec(&c, &["cat", "/data/flag"]).await, "from the host\n");
    assert_eq!(
        a.exec(&c, &["cat", "/linked/flag"]).await,
        "from the host\n"
    );
    assert_eq!(a.exec(&c, &["cat", "/etc/one-file"]).await, "one file\n");
    // The symlinked path is mounted as the directory it points to, not as a link.
    let (code, _, _) = a.exec_any(&c, &["test", "-L", "/linked"]).await;
    assert_ne!(code, 0);
    a.exec(&c, &["sh", "-c", "echo back > /data/written"]).await;
    assert_eq!(
        std::fs::read_to_string(host.join("written")).unwrap(),
        "back\n"
    );
    let (code, _, _) = a.exec_any(&c, &["touch", "/ro/nope"]).await;
    assert_ne!(code, 0, "a read-only mount took a write");
    assert!(!host.join("nope").exists());
    let st = a.container_status(&c).await.unwrap();
    assert!(
        st.mounts
            .iter()
            .any(|m| m.container_path == "/ro" && m.readonly),
        "{:?}",
        st.mounts
    );

    // A missing host path fails creation cleanly.
    let mut bad = a.container_config("bad", &["sleep", "3600"]);
    bad.mounts = vec![v1::Mount {
        container_path: "/x".into(),
        host_path: a
            .env
            .dir
            .path()
            .join("missing")
            .to_string_lossy()
            .into_owned(),
        ..Default::default()
    }];
    // A host path that does not exist is refused at create, naming the mount.
    let e = a
        .try_create_container(&sb, &cfg, bad)
        .await
        .expect_err("a mount of a missing host path was created");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let missing = a.env.dir.path().join("missing");
    assert!(
        e.message().contains(&format!(
            "config.mounts[0].host_path: {}: No such file or directory",
            missing.display()
        )),
        "{e}"
    );
    a.finish().await;
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_propagation_private_host_to_container_and_bidirectional() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    // Bidirectional propagation needs a privileged container, so a privileged sandbox.
    let mut cfg = a.sandbox_config("propagation");
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    let sb = a.run_sandbox(&cfg).await;

    // A shared mount point of the test's own on the host.
    let base = a.env.dir.path().join("prop");
    std::fs::create_dir_all(&base).unwrap();
    let b = base.to_string_lossy().into_owned();
    sh(&format!("mount --bind {b} {b} && mount --make-rshared {b}"));
    let result = std::panic::AssertUnwindSafe(propagation_checks(&mut a, &sb, &cfg, &base));
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    // Whatever happened, the test's mounts go before the leak check.
    a.remove_sandbox(&sb).await;
    let _ = Command::new("umount").args(["-R", "-l", &b]).status();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
    a.finish().await;
}

async fn propagation_checks(a: &mut Agent, sb: &str, cfg: &v1::PodSandboxConfig, base: &Path) {
    let b = base.to_string_lossy().into_owned();
    let mount = |path: &str, p: v1::MountPropagation| v1::Mount {
        container_path: path.into(),
        host_path: b.clone(),
        propagation: p as i32,
        ..Default::default()
    };
    let mut c = a.container_config("c", &["sleep", "3600"]);
    c.mounts = vec![
        mount("/private", v1::MountPropagation::PropagationPrivate),
        mount("/slave", v1::MountPropagation::PropagationHostToContainer),
        mount("/shared", v1::MountPropagation::PropagationBidirectional),
    ];
    c.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let c = a.run_container(sb, cfg, c).await;

    // Host to container: a mount made on the host afterwards shows in /slave and
    // /shared, not in /private.
    std::fs::create_dir_all(base.join("from-host")).unwrap();
    sh(&format!(
        "mount -t tmpfs podrun-prop {b}/from-host && echo hi > {b}/from-host/f"
    ));
    assert_eq!(a.exec(&c, &["cat", "/slave/from-host/f"]).await, "hi\n");
    assert_eq!(a.exec(&c, &["cat", "/shared/from-host/f"]).await, "hi\n");
    let (code, _, _) = a
        .exec_any(&c, &["test", "-e", "/private/from-host/f"])
        .await;
    assert_ne!(code, 0, "a private mount saw a later host mount");

    // Container to host: only through the bidirectional mount.
    std::fs::create_dir_all(base.join("from-ctr")).unwrap();
    a.exec(
        &c,
        &[
            "sh",
            "-c",
            "mount -t tmpfs ctr /shared/from-ctr && echo there > /shared/from-ctr/g",
        ],
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(base.join("from-ctr/g")).unwrap(),
        "there\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_and_sandbox_stats() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("stats").await;
    let c = a
        .run_container(
            &sb,
            &cfg,
            a.container_config(
                "busy",
                &[
                    "sh",
                    "-c",
                    "dd if=/dev/zero of=/tmp/blob bs=1M count=8; while true; do :; done",
                ],
            ),
        )
        .await;
    let stats = cri_common::eventually("cpu usage", Duration::from_secs(30), || {
        let mut rt = a.rt.clone();
        let c = c.clone();
        async move {
            let s = rt
                .container_stats(v1::ContainerStatsRequest { container_id: c })
                .await
                .ok()?
                .into_inner()
                .stats?;
            let cpu = s.cpu.as_ref()?.usage_core_nano_seconds.as_ref()?.value;
            (cpu > 0).then_some(s)
        }
    })
    .await;
    assert_eq!(stats.attributes.as_ref().unwrap().id, c);
    assert_eq!(
        stats
            .attributes
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .name,
        "busy"
    );
    let mem = stats.memory.as_ref().expect("memory stats");
    assert!(mem.timestamp > 0);
    assert!(
        mem.working_set_bytes.as_ref().is_some_and(|w| w.value > 0),
        "{mem:?}"
    );
    {
        assert!(stats.writable_layer.is_some(), "{stats:?}");
        // The 8 MiB written to the container's own filesystem count in its writable layer.
        cri_common::eventually("writable layer usage", Duration::from_secs(15), || {
            let mut rt = a.rt.clone();
            let c = c.clone();
            async move {
                let s = rt
                    .container_stats(v1::ContainerStatsRequest { container_id: c })
                    .await
                    .ok()?
                    .into_inner()
                    .stats?;
                let used = s.writable_layer.as_ref()?.used_bytes.as_ref()?.value;
                (used >= 8 << 20).then_some(())
            }
        })
        .await;
    }

    let all =
        a.rt.list_container_stats(v1::ListContainerStatsRequest {
            filter: Some(v1::ContainerStatsFilter {
                pod_sandbox_id: sb.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].attributes.as_ref().unwrap().id, c);

    // UpdateContainerResources takes a new memory limit on a running container.
    a.rt.update_container_resources(v1::UpdateContainerResourcesRequest {
        container_id: c.clone(),
        linux: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 256 << 20,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let st = a.container_status(&c).await.unwrap();
    let r = st
        .resources
        .as_ref()
        .and_then(|r| r.linux.as_ref())
        .expect("resources in the status");
    assert_eq!(r.memory_limit_in_bytes, 256 << 20);

    // Under load the cumulative CPU time grows, and the rate between two samples is
    // that of a busy core (well above zero).
    let sample = |mut rt: v1::runtime_service_client::RuntimeServiceClient<_>, c: String| async move {
        rt.container_stats(v1::ContainerStatsRequest { container_id: c })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap()
            .cpu
            .unwrap()
    };
    let first = sample(a.rt.clone(), c.clone()).await;
    let cum = |u: &v1::CpuUsage| u.usage_core_nano_seconds.as_ref().unwrap().value;
    cri_common::eventually(
        "CPU time to grow at a busy rate",
        Duration::from_secs(30),
        || {
            let (rt, c) = (a.rt.clone(), c.clone());
            async move {
                let second = sample(rt, c).await;
                let rate = second.usage_nano_cores.as_ref().unwrap().value;
                (cum(&second) > cum(&first) && rate > 10_000_000).then_some(())
            }
        },
    )
    .await;
    let pod =
        a.rt.pod_sandbox_stats(v1::PodSandboxStatsRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = pod.linux.unwrap();
    assert_eq!(linux.containers.len(), 1);
    assert!(linux.process.unwrap().process_count.unwrap().value >= 1);
    a.stop_container(&c, 0).await;
    a.finish().await;
    let _ = BUSYBOX;
}

/// GetContainerEvents, as kubelet's evented PLEG reads it: CREATED, STARTED, STOPPED
/// (also for an exit nobody asked for) and DELETED, in order, each with the sandbox's
/// status and its containers' statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_in_order_with_statuses() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let mut events =
        a.rt.get_container_events(v1::GetEventsRequest {})
            .await
            .expect("GetContainerEvents")
            .into_inner();
    let (sb, cfg) = a.sandbox("events").await;
    let c = a
        .run_container(&sb, &cfg, a.container_config("short", &["sleep", "1"]))
        .await;
    a.wait_container_state(&c, ContainerExited).await;
    a.remove_container(&c).await;

    use v1::ContainerEventType::*;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.message())
            .await
            .unwrap_or_else(|_| panic!("events so far: {seen:?}"))
            .expect("event stream")
            .expect("stream open");
        if ev.container_id != c {
            continue;
        }
        let sandbox = ev.pod_sandbox_status.clone().expect("sandbox status");
        assert_eq!(sandbox.id, sb);
        assert!(sandbox.metadata.is_some(), "{sandbox:?}");
        assert!(ev.created_at > 0);
        let kind = v1::ContainerEventType::try_from(ev.container_event_type).unwrap();
        let mine = ev.containers_statuses.iter().find(|s| s.id == c);
        match kind {
            ContainerCreatedEvent => {
                assert_eq!(mine.map(|s| s.state), Some(ContainerCreated as i32))
            }
            ContainerStartedEvent => assert!(mine.is_some()),
            ContainerStoppedEvent => {
                assert_eq!(mine.map(|s| s.state), Some(ContainerExited as i32))
            }
            ContainerDeletedEvent => assert!(mine.is_none(), "{mine:?}"),
        }
        seen.push(kind);
    }
    assert_eq!(
        seen,
        [
            ContainerCreatedEvent,
            ContainerStartedEvent,
            ContainerStoppedEvent,
            ContainerDeletedEvent
        ]
    );
    a.finish().await;
}
