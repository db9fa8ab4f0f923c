//! The agent applies `--pod-max-pids` to the cgroups of the sandboxes it creates.

mod common;
mod cri_common;

use cri_common::Agent;
use podrun_cri_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_max_pids_limits_a_sandbox() {
    require_root!();
    let mut env = common::Env::new(&["busybox"]);
    env.cni_args = ["--network", "none", "--pod-max-pids", "10"]
        .map(String::from)
        .to_vec();
    let mut a = Agent::start_in(env).await;
    let (sb, cfg) = a.sandbox("forker").await;
    let pod_cgroup = a.env.pod_cgroup("pids").expect("the sandbox's pids cgroup");
    assert_eq!(
        std::fs::read_to_string(pod_cgroup.join("pids.max"))
            .unwrap()
            .trim(),
        "10"
    );
    // A resize through the CRI keeps the limit.
    a.rt.update_pod_sandbox_resources(v1::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: sb.clone(),
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 512 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(pod_cgroup.join("pids.max"))
            .unwrap()
            .trim(),
        "10"
    );
    let forker = a.container_config(
        "forker",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 30 ]; do sleep 3600 & i=$((i+1)); echo forked $i; done; echo all forked",
        ],
    );
    let id = a.create_container(&sb, &cfg, forker).await;
    a.start_container(&id).await;
    let st = a
        .wait_container_state(&id, v1::ContainerState::ContainerExited)
        .await;
    let log = std::path::Path::new(&cfg.log_directory).join("forker.log");
    let lines: Vec<String> = cri_common::parse_cri_log(&log)
        .into_iter()
        .map(|(_, _, _, l)| l)
        .collect();
    assert!(!lines.iter().any(|l| l == "all forked"), "{lines:?}");
    let forked = lines
        .iter()
        .filter_map(|l| l.strip_prefix("forked ")?.trim().parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        forked < 10,
        "at most 10 processes in the sandbox: {lines:?}"
    );
    assert_ne!(st.exit_code, 0, "{st:?}");
    a.finish().await;
}
