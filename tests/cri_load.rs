//! The agent under load: many sandboxes created at once through the socket, log rotation
//! while a container writes as fast as it can, and SIGTERM leaving the pods running.

mod common;
mod cri_common;

use std::time::Duration;

use cri_common::Agent;
use podrun_cri_proto::v1;
use v1::ContainerState::{ContainerExited, ContainerRunning};

/// 100 sandboxes, each with a running container, created concurrently: all succeed, all
/// distinct, and all go again concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_sandboxes_created_concurrently() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    const N: usize = 100;
    let mut tasks = Vec::new();
    for i in 0..N {
        let mut rt = a.rt.clone();
        let cfg = a.sandbox_config(&format!("load{i}"));
        let ccfg = a.container_config("main", &["sleep", "3600"]);
        tasks.push(tokio::spawn(async move {
            let sb = rt
                .run_pod_sandbox(v1::RunPodSandboxRequest {
                    config: Some(cfg.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .map_err(|e| format!("RunPodSandbox {i}: {e}"))?
                .into_inner()
                .pod_sandbox_id;
            let c = rt
                .create_container(v1::CreateContainerRequest {
                    pod_sandbox_id: sb.clone(),
                    config: Some(ccfg),
                    sandbox_config: Some(cfg),
                })
                .await
                .map_err(|e| format!("CreateContainer {i}: {e}"))?
                .into_inner()
                .container_id;
            rt.start_container(v1::StartContainerRequest {
                container_id: c.clone(),
            })
            .await
            .map_err(|e| format!("StartContainer {i}: {e}"))?;
            Ok::<_, String>((sb, c))
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        created.push(
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("{e}\n{}", a.log())),
        );
    }
    let mut ids: Vec<&String> = created.iter().map(|(s, _)| s).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N);
    let running = a
        .containers(Some(v1::ContainerFilter {
            state: Some(v1::ContainerStateValue {
                state: ContainerRunning as i32,
            }),
            ..Default::default()
        }))
        .await;
    assert_eq!(running.len(), N);
    let ready = a
        .list_sandboxes(Some(v1::PodSandboxFilter {
            state: Some(v1::PodSandboxStateValue {
                state: v1::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        }))
        .await;
    assert_eq!(ready.len(), N);

    let mut tasks = Vec::new();
    for (sb, _) in created {
        let mut rt = a.rt.clone();
        tasks.push(tokio::spawn(async move {
            rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
                pod_sandbox_id: sb.clone(),
            })
            .await?;
            rt.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: sb })
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("stop and remove");
    }
    assert!(a.list_sandboxes(None).await.is_empty());
    a.finish().await;
}

/// A container writing numbered lines as fast as it can while its log is rotated five
/// times: every line is in exactly one file, whole, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_rotation_under_write_load_loses_nothing() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("rotate").await;
    let log_dir = std::path::PathBuf::from(&cfg.log_directory);
    let c = a
        .run_container(
            &sb,
            &cfg,
            a.container_config(
                "writer",
                &[
                    "sh",
                    "-c",
                    // Writes until told to stop, then names its last line.
                    "i=0; while [ ! -e /tmp/stop ]; do for k in 1 2 3 4 5 6 7 8 9 10; do \
                     i=$((i+1)); echo line-$i; done; done; echo last-$i",
                ],
            ),
        )
        .await;
    let path = log_dir.join("writer.log");
    let mut rotated = Vec::new();
    for n in 1..=5 {
        // Rotate once the current file has taken some lines, while the writer runs.
        cri_common::eventually("log lines to rotate", Duration::from_secs(60), || {
            let path = path.clone();
            async move {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                (len > 512 * 1024).then_some(())
            }
        })
        .await;
        let to = log_dir.join(format!("writer.log.{n}"));
        std::fs::rename(&path, &to).unwrap();
        rotated.push(to);
        a.rt.reopen_container_log(v1::ReopenContainerLogRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReopenContainerLog {n}: {e}"));
    }
    a.exec(&c, &["touch", "/tmp/stop"]).await;
    a.wait_container_state(&c, ContainerExited).await;
    rotated.push(path);

    // Reassemble: partial records (P) continue in the next record of the stream.
    let mut lines = Vec::new();
    let mut partial = String::new();
    let mut per_file = Vec::new();
    for f in &rotated {
        let records = cri_common::parse_cri_log(f);
        per_file.push(records.len());
        for (_ts, stream, tag, text) in records {
            assert_eq!(stream, "stdout");
            partial.push_str(&text);
            if tag == "F" {
                lines.push(std::mem::take(&mut partial));
            }
        }
    }
    assert!(partial.is_empty(), "a partial line was never finished");
    assert!(
        per_file.iter().filter(|n| **n > 0).count() >= 2,
        "the rotations did not split the log: {per_file:?}"
    );
    let last = lines.pop().unwrap_or_default();
    let total = lines.len();
    assert_eq!(last, format!("last-{total}"), "lines lost at a rotation");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &format!("line-{}", i + 1), "line {i} of {total}");
    }
    assert!(
        per_file.iter().all(|n| *n > 0),
        "every file holds lines: {per_file:?}"
    );
    a.finish().await;
}

/// SIGTERM stops the agent and nothing else: the pod's container keeps running, and a
/// new agent serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_agent_not_the_pods() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("stays").await;
    let c = a
        .run_container(&sb, &cfg, a.container_config("c", &["sleep", "3600"]))
        .await;
    let pid = a.exec(&c, &["sh", "-c", "pidof sleep"]).await;
    // kubelet keeps an event stream open: it must not hold the agent up.
    let mut events =
        a.rt.get_container_events(v1::GetEventsRequest {})
            .await
            .unwrap()
            .into_inner();
    let agent = a.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = a.wait_exit();
    assert!(st.success(), "the agent exited with {st}");
    assert!(
        !matches!(events.message().await, Ok(Some(_))),
        "the event stream goes on after the agent stopped"
    );
    assert!(!a.socket.exists(), "the socket stays after a clean stop");
    a.restart().await;
    let st = a.container_status(&c).await.unwrap();
    assert_eq!(st.state, ContainerRunning as i32);
    assert_eq!(a.exec(&c, &["sh", "-c", "pidof sleep"]).await, pid);
    a.finish().await;
}
