use super::*;
use serde_json::json;

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn web() -> Pod {
    pod(json!({
        "metadata": { "name": "web", "namespace": "default", "uid": "u1" },
        "spec": {
            "containers": [
                { "name": "app", "image": "busybox", "readinessProbe": { "exec": { "command": ["true"] } } },
                { "name": "side", "image": "busybox" },
            ],
        },
        "status": {
            "phase": "Pending",
            "conditions": [{ "type": "PodScheduled", "status": "True" }],
        },
    }))
}

fn c(
    name: &str,
    attempt: u32,
    state: cri::ContainerState,
    exit: i32,
    created: i64,
) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: format!("{name}-{attempt}"),
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt,
        }),
        state: state as i32,
        created_at: created,
        started_at: created + 1,
        finished_at: if state == cri::ContainerState::ContainerExited {
            created + 2
        } else {
            0
        },
        exit_code: exit,
        image_ref: "sha256:abc".into(),
        ..Default::default()
    }
}

fn sandbox(ip: &str) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: "sb".into(),
        state: cri::PodSandboxState::SandboxReady as i32,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: ip.into(),
            additional_ips: vec![],
        }),
        ..Default::default()
    }
}

fn obs() -> Observed {
    Observed {
        runtime_name: "podrun".into(),
        host_ip: Some("192.168.1.101".into()),
        ..Default::default()
    }
}

fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
    s.conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == t)
        .unwrap()
}

const NOW: i64 = 1_700_000_000;

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(NOW).unwrap()
}

#[test]
fn nothing_yet_is_pending_and_creating() {
    let s = pod_status(&web(), &obs(), now());
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    let cs = s.container_statuses.as_ref().unwrap();
    let w = cs[0].state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
    assert_eq!(cond(&s, "PodReadyToStartContainers").status, "False");
    assert_eq!(cond(&s, "PodScheduled").status, "True");
    assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    assert_eq!(s.host_ip.as_deref(), Some("192.168.1.101"));
}

#[test]
fn running_with_readiness_gating_ready() {
    let mut o = obs();
    o.sandbox = Some(sandbox("10.88.0.5"));
    o.containers = vec![
        c("app", 0, cri::ContainerState::ContainerRunning, 0, 1),
        c("side", 0, cri::ContainerState::ContainerRunning, 0, 1),
    ];
    let s = pod_status(&web(), &o, now());
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(s.pod_ip.as_deref(), Some("10.88.0.5"));
    assert_eq!(cond(&s, "Ready").status, "False");
    assert_eq!(
        cond(&s, "Ready").message.as_deref(),
        Some("containers with unready status: [app]")
    );
    assert_eq!(
        s.container_statuses.as_ref().unwrap()[0]
            .container_id
            .as_deref(),
        Some("podrun://app-0")
    );
    o.ready.insert("app".into(), true);
    let s = pod_status(&web(), &o, now());
    assert_eq!(cond(&s, "Ready").status, "True");
    assert_eq!(cond(&s, "ContainersReady").status, "True");
    assert!(cond(&s, "Ready").reason.is_none());
}

#[test]
fn crash_loop_shows_last_state_and_restart_count() {
    let mut o = obs();
    o.sandbox = Some(sandbox("10.88.0.5"));
    o.containers = vec![
        c("app", 0, cri::ContainerState::ContainerExited, 1, 1),
        c("app", 1, cri::ContainerState::ContainerExited, 1, 5),
        c("side", 0, cri::ContainerState::ContainerRunning, 0, 1),
    ];
    o.waiting.insert(
        "app".into(),
        Waiting {
            reason: "CrashLoopBackOff".into(),
            message: "back-off 20s restarting failed container".into(),
        },
    );
    let s = pod_status(&web(), &o, now());
    let app = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(app.restart_count, 1);
    assert_eq!(
        app.state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("CrashLoopBackOff")
    );
    let last = app
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap();
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert_eq!(last.container_id.as_deref(), Some("podrun://app-1"));
    assert_eq!(s.phase.as_deref(), Some("Running"));
}

#[test]
fn phases_follow_the_restart_policy() {
    let mut p = web();
    let mut o = obs();
    o.sandbox = Some(sandbox("10.88.0.5"));
    o.containers = vec![
        c("app", 0, cri::ContainerState::ContainerExited, 0, 1),
        c("side", 0, cri::ContainerState::ContainerExited, 3, 1),
    ];
    p.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    assert_eq!(pod_status(&p, &o, now()).phase.as_deref(), Some("Failed"));
    p.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
    assert_eq!(pod_status(&p, &o, now()).phase.as_deref(), Some("Running"));
    o.containers[1].exit_code = 0;
    assert_eq!(
        pod_status(&p, &o, now()).phase.as_deref(),
        Some("Succeeded")
    );
    let done = pod_status(&p, &o, now());
    assert_eq!(cond(&done, "Ready").reason.as_deref(), Some("PodCompleted"));
    // Terminal phases stick.
    p.status = Some(done);
    o.containers.clear();
    assert_eq!(
        pod_status(&p, &o, now()).phase.as_deref(),
        Some("Succeeded")
    );
}

#[test]
fn init_containers_gate_the_rest() {
    let p = pod(json!({
        "metadata": { "name": "i", "uid": "u" },
        "spec": {
            "initContainers": [{ "name": "setup", "image": "busybox" }, { "name": "proxy", "image": "busybox", "restartPolicy": "Always" }],
            "containers": [{ "name": "app", "image": "busybox" }],
        },
    }));
    let mut o = obs();
    o.sandbox = Some(sandbox("10.88.0.6"));
    o.containers = vec![c("setup", 0, cri::ContainerState::ContainerRunning, 0, 1)];
    let s = pod_status(&p, &o, now());
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(
        cond(&s, "Initialized").message.as_deref(),
        Some("containers with incomplete status: [setup proxy]")
    );
    let app = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(
        app.state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("PodInitializing")
    );
    o.containers = vec![
        c("setup", 0, cri::ContainerState::ContainerExited, 0, 1),
        c("proxy", 0, cri::ContainerState::ContainerRunning, 0, 2),
        c("app", 0, cri::ContainerState::ContainerRunning, 0, 3),
    ];
    let s = pod_status(&p, &o, now());
    assert_eq!(cond(&s, "Initialized").status, "True");
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&s, "Ready").status, "True");
    assert_eq!(
        s.init_container_statuses.as_ref().unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("Completed")
    );
}

#[test]
fn transition_times_carry_over() {
    let mut p = web();
    let mut o = obs();
    o.sandbox = Some(sandbox("10.88.0.5"));
    let first = pod_status(&p, &o, now());
    p.status = Some(first);
    let later = jiff::Timestamp::from_second(NOW + 30).unwrap();
    let s = pod_status(&p, &o, later);
    assert_eq!(
        cond(&s, "PodReadyToStartContainers").last_transition_time,
        Some(Time(now()))
    );
    assert_eq!(s.start_time, Some(Time(now())));
}

#[test]
fn qos_classes() {
    let with = |res: serde_json::Value| {
        pod(json!({ "spec": { "containers": [{ "name": "a", "resources": res }] } }))
    };
    assert_eq!(qos_class(&with(json!({}))), "BestEffort");
    assert_eq!(
        qos_class(&with(json!({ "requests": { "cpu": "100m" } }))),
        "Burstable"
    );
    assert_eq!(
        qos_class(&with(
            json!({ "requests": { "cpu": "1", "memory": "64Mi" }, "limits": { "cpu": "1000m", "memory": "64Mi" } })
        )),
        "Guaranteed"
    );
    assert_eq!(
        qos_class(&with(json!({ "limits": { "cpu": "1", "memory": "64Mi" } }))),
        "Guaranteed"
    );
}
