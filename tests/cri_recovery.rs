//! `podrun agent` crash recovery: pod monitors outlive the agent, so after a SIGKILL and a
//! restart on the same roots the agent rebuilds its view from state and the monitors:
//! the same sandboxes and containers, still running, still controllable through the CRI.

mod common;
mod cri_common;

use cri_common::Agent;
use podrun_cri_proto::v1;
use v1::ContainerState::{ContainerExited, ContainerRunning};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_after_kill_keeps_sandboxes_and_running_containers() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("survivor").await;
    let running = a
        .run_container(&sb, &cfg, a.container_config("running", &["sleep", "3600"]))
        .await;
    let done = a
        .create_container(
            &sb,
            &cfg,
            a.container_config("done", &["sh", "-c", "exit 5"]),
        )
        .await;
    a.start_container(&done).await;
    a.wait_container_state(&done, ContainerExited).await;
    let created = a
        .create_container(&sb, &cfg, a.container_config("created", &["sleep", "3600"]))
        .await;
    // A second sandbox, stopped, to check that NOTREADY survives too.
    let (stopped, _) = a.sandbox("stopped").await;
    a.stop_sandbox(&stopped).await;
    // A process of the running container, to prove it is the same one afterwards.
    let pid_before = a.exec(&running, &["sh", "-c", "pidof sleep"]).await;

    let sandboxes_before = sorted_sandboxes(&mut a).await;
    let containers_before = sorted_containers(&mut a).await;
    let status_before = a.container_status(&running).await.unwrap();

    let old_pid = a.pid();
    a.kill_hard();
    assert!(!std::path::Path::new(&format!("/proc/{old_pid}")).exists());
    a.restart().await;

    assert_eq!(sorted_sandboxes(&mut a).await, sandboxes_before);
    assert_eq!(sorted_containers(&mut a).await, containers_before);
    let st = a.container_status(&running).await.unwrap();
    assert_eq!(st.state, ContainerRunning as i32);
    assert_eq!(st.started_at, status_before.started_at);
    assert_eq!(st.created_at, status_before.created_at);
    let st = a.container_status(&done).await.unwrap();
    assert_eq!((st.state, st.exit_code), (ContainerExited as i32, 5));
    assert_eq!(
        a.sandbox_status(&stopped).await.unwrap().state,
        v1::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(
        a.sandbox_status(&sb).await.unwrap().state,
        v1::PodSandboxState::SandboxReady as i32
    );
    // Still the same process, and still reachable.
    assert_eq!(
        a.exec(&running, &["sh", "-c", "pidof sleep"]).await,
        pid_before
    );

    // The restarted agent controls everything: start the created container, stop the
    // running one, and the duplicate-name check still knows the sandbox.
    a.start_container(&created).await;
    a.wait_container_state(&created, ContainerRunning).await;
    a.stop_container(&running, 0).await;
    a.wait_container_state(&running, ContainerExited).await;
    let dup =
        a.rt.run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("the name is still taken after the restart");
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);

    // A crash while a container is running, then a graceful stop of everything.
    a.kill_hard();
    a.restart().await;
    a.wait_container_state(&created, ContainerRunning).await;
    a.finish().await;
}

/// The agent killed at each step of RunPodSandbox and CreateContainer, then restarted:
/// the half-created sandbox or container is gone (network, IP, netns, mounts, cgroups,
/// directories) or complete, and the agent serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_at_each_creation_step_leaves_nothing_half_made() {
    require_root!();
    let mut env = common::Env::new(&["busybox"]);
    let net = cri_common::network(&mut env);
    let mut a = Agent::start_in(env).await;
    for point in [
        "sandbox:state",
        "sandbox:network",
        "sandbox:files",
        "sandbox:plan",
        "sandbox:monitor",
        "agent:sandbox-record",
    ] {
        a.restart_with_fault(Some(point)).await;
        let cfg = a.sandbox_config(&cri_common::unique("crash"));
        let r =
            a.rt.run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await;
        assert!(r.is_err(), "{point}: RunPodSandbox answered {r:?}");
        let st = a.wait_exit();
        assert!(!st.success(), "{point}: the agent exited with {st}");
        a.restart().await;
        let left = a.list_sandboxes(None).await;
        assert!(
            left.is_empty(),
            "{point}: sandboxes after recovery: {left:?}\n{}",
            a.log()
        );
        // The same name can be used again at once.
        let sb = a.run_sandbox(&cfg).await;
        a.remove_sandbox(&sb).await;
        assert_eq!(
            std::fs::read_dir(a.env.state.join("pods"))
                .map(|d| d.count())
                .unwrap_or(0),
            0,
            "{point}: pod state left"
        );
    }

    let (sb, cfg) = a.sandbox("keeper").await;
    for point in [
        "agent:container-plan",
        "agent:container-record",
        "agent:container-created",
    ] {
        a.restart_with_fault(Some(point)).await;
        let c = a
            .try_create_container(&sb, &cfg, a.container_config("c", &["sleep", "3600"]))
            .await;
        assert!(c.is_err(), "{point}: CreateContainer answered {c:?}");
        a.wait_exit();
        a.restart().await;
        let containers = a.containers(None).await;
        match point {
            // Created in the monitor before the crash: it is complete and kept, as
            // containerd keeps a container whose create reply was lost.
            "agent:container-created" => {
                assert_eq!(containers.len(), 1, "{point}: {containers:?}");
                assert_eq!(
                    containers[0].state,
                    v1::ContainerState::ContainerCreated as i32
                );
                a.remove_container(&containers[0].id).await;
            }
            _ => assert!(containers.is_empty(), "{point}: {containers:?}"),
        }
        let dirs = std::fs::read_dir(a.env.root.join("containers"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(dirs, 0, "{point}: container data left");
        assert_eq!(
            a.sandbox_status(&sb).await.unwrap().state,
            v1::PodSandboxState::SandboxReady as i32,
            "{point}"
        );
    }
    // The sandbox still works after all this.
    let c = a
        .run_container(&sb, &cfg, a.container_config("after", &["sleep", "3600"]))
        .await;
    assert_eq!(a.exec(&c, &["echo", "ok"]).await, "ok\n");
    a.finish().await;
    net.assert_clean_and_remove();
}

/// (id, name, state) of every sandbox, sorted.
async fn sorted_sandboxes(a: &mut Agent) -> Vec<(String, String, i32)> {
    let mut v: Vec<_> = a
        .list_sandboxes(None)
        .await
        .into_iter()
        .map(|s| (s.id, s.metadata.unwrap_or_default().name, s.state))
        .collect();
    v.sort();
    v
}

/// (id, sandbox, name, state) of every container, sorted.
async fn sorted_containers(a: &mut Agent) -> Vec<(String, String, String, i32)> {
    let mut v: Vec<_> = a
        .containers(None)
        .await
        .into_iter()
        .map(|c| {
            (
                c.id,
                c.pod_sandbox_id,
                c.metadata.unwrap_or_default().name,
                c.state,
            )
        })
        .collect();
    v.sort();
    v
}
