//! Pod status as kubelet writes it, computed from what the CRI runtime reports: the
//! phase, the conditions (PodReadyToStartContainers, Initialized, ContainersReady,
//! Ready, with PodScheduled kept as the scheduler wrote it), the pod's IPs, and one
//! status per container with its state, last state, restart count, image and readiness.
//! Pure functions: the pod sync gathers the inputs.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podrun_cri_proto::v1 as cri;

/// Why a container is not running, when kubelet knows better than the runtime
/// (image pulls, back-off, configuration errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// What the pod sync observed.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub sandbox: Option<cri::PodSandboxStatus>,
    /// Every CRI container of the pod, any state, any attempt.
    pub containers: Vec<cri::ContainerStatus>,
    /// Per container name.
    pub waiting: HashMap<String, Waiting>,
    /// Per container name: the readiness probe's verdict (absent: no probe or not yet).
    pub ready: HashMap<String, bool>,
    /// Per container name: whether the startup probe has succeeded.
    pub started: HashMap<String, bool>,
    /// `podrun`, `containerd`: the scheme of container IDs.
    pub runtime_name: String,
    pub host_ip: Option<String>,
}

fn ts(nanos: i64) -> Option<Time> {
    if nanos <= 0 {
        return None;
    }
    jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .ok()
        .map(Time)
}

/// The containers of one name, newest first.
pub fn instances<'a>(obs: &'a Observed, name: &str) -> Vec<&'a cri::ContainerStatus> {
    let mut v: Vec<_> = obs
        .containers
        .iter()
        .filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == name))
        .collect();
    v.sort_by_key(|c| {
        std::cmp::Reverse((
            c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
            c.created_at,
        ))
    });
    v
}

fn state_of(c: &cri::ContainerStatus) -> ContainerState {
    match cri::ContainerState::try_from(c.state).unwrap_or(cri::ContainerState::ContainerUnknown) {
        cri::ContainerState::ContainerRunning => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: ts(c.started_at),
            }),
            ..Default::default()
        },
        cri::ContainerState::ContainerExited => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: c.exit_code,
                reason: Some(if c.reason.is_empty() {
                    if c.exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .to_owned()
                } else {
                    c.reason.clone()
                }),
                message: (!c.message.is_empty()).then(|| c.message.clone()),
                started_at: ts(c.started_at),
                finished_at: ts(c.finished_at),
                container_id: None,
                signal: None,
            }),
            ..Default::default()
        },
        cri::ContainerState::ContainerCreated => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..Default::default()
        },
        cri::ContainerState::ContainerUnknown => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 137,
                reason: Some("ContainerStatusUnknown".into()),
                message: Some(
                    "The container could not be located when the pod was terminated".into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

fn is_running(c: &cri::ContainerStatus) -> bool {
    c.state == cri::ContainerState::ContainerRunning as i32
}

fn is_exited(c: &cri::ContainerStatus) -> bool {
    c.state == cri::ContainerState::ContainerExited as i32
}

/// A native sidecar: an init container that keeps running (restartPolicy Always).
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

fn container_status(
    spec: &Container,
    obs: &Observed,
    default_waiting: &str,
    is_init: bool,
) -> ContainerStatus {
    let name = spec.name.as_str();
    let all = instances(obs, name);
    let current = all.first().copied();
    let previous = all.get(1).copied();
    let id = |c: &cri::ContainerStatus| format!("{}://{}", obs.runtime_name, c.id);
    let mut state = match current {
        Some(c) => state_of(c),
        None => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(default_waiting.to_owned()),
                message: None,
            }),
            ..Default::default()
        },
    };
    let mut last_state = previous.map(state_of).filter(|s| s.terminated.is_some());
    if let Some(w) = obs.waiting.get(name) {
        // Back-off after an exit: the exit becomes the last state, as kubelet shows it.
        if let Some(c) = current.filter(|c| is_exited(c)) {
            last_state = Some(state_of(c));
        }
        if current.is_none_or(|c| !is_running(c)) {
            state = ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(w.reason.clone()),
                    message: (!w.message.is_empty()).then(|| w.message.clone()),
                }),
                ..Default::default()
            };
        }
    }
    if let (Some(t), Some(c)) = (state.terminated.as_mut(), current) {
        t.container_id = Some(id(c));
    }
    if let (
        Some(ContainerState {
            terminated: Some(t),
            ..
        }),
        Some(c),
    ) = (
        last_state.as_mut(),
        if obs.waiting.contains_key(name) {
            current
        } else {
            previous
        },
    ) {
        t.container_id = Some(id(c));
    }
    let running = current.is_some_and(is_running);
    let started = running
        && (spec.startup_probe.is_none() || obs.started.get(name).copied().unwrap_or(false));
    let ready = if is_init && !is_sidecar(spec) {
        current.is_some_and(|c| is_exited(c) && c.exit_code == 0)
    } else {
        started && (spec.readiness_probe.is_none() || obs.ready.get(name).copied().unwrap_or(false))
    };
    let restart_count = current
        .and_then(|c| c.metadata.as_ref())
        .map(|m| m.attempt as i32)
        .unwrap_or(0);
    ContainerStatus {
        name: name.to_owned(),
        state: Some(state),
        last_state: Some(last_state.unwrap_or_default()),
        ready,
        restart_count,
        image: spec.image.clone().unwrap_or_default(),
        image_id: current.map(|c| c.image_ref.clone()).unwrap_or_default(),
        container_id: current.map(id),
        started: Some(started),
        ..Default::default()
    }
}

fn condition(
    prev: Option<&PodStatus>,
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: jiff::Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let old = prev
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let transition = match old {
        Some(o) if o.status == status => o.last_transition_time.clone(),
        _ => Some(Time(now)),
    };
    PodCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.filter(|_| !ok).map(str::to_owned),
        message: message.filter(|_| !ok),
        last_transition_time: transition,
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The phase, as kubelet derives it from the containers and the restart policy.
pub fn phase(pod: &Pod, init: &[ContainerStatus], regular: &[ContainerStatus]) -> String {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let init_specs = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[]);
    fn terminated(s: &ContainerStatus) -> Option<&ContainerStateTerminated> {
        s.state.as_ref().and_then(|s| s.terminated.as_ref())
    }
    // An init container that failed for good fails the pod.
    let mut init_pending = false;
    for (spec, st) in init_specs.iter().zip(init) {
        if is_sidecar(spec) {
            if !st.started.unwrap_or(false) {
                init_pending = true;
            }
            continue;
        }
        match terminated(st) {
            Some(t) if t.exit_code == 0 => {}
            Some(_) if policy == "Never" => return "Failed".into(),
            _ => init_pending = true,
        }
    }
    if init_pending {
        return "Pending".into();
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for st in regular {
        let state = st.state.as_ref();
        if state.is_some_and(|s| s.running.is_some()) {
            running += 1;
        } else if let Some(t) = terminated(st) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if st
            .last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some())
        {
            // Waiting to restart after an exit.
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        return "Pending".into();
    }
    if running > 0 {
        return "Running".into();
    }
    if stopped > 0 {
        return match policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        }
        .into();
    }
    "Pending".into()
}

/// The whole status. `prev` is the status the API holds: transition times, the
/// PodScheduled condition and the start time carry over from it.
pub fn pod_status(pod: &Pod, obs: &Observed, now: jiff::Timestamp) -> PodStatus {
    let prev = pod.status.as_ref();
    let spec = pod.spec.clone().unwrap_or_default();
    let init_specs = spec.init_containers.clone().unwrap_or_default();
    let init: Vec<ContainerStatus> = init_specs
        .iter()
        .map(|c| container_status(c, obs, "PodInitializing", true))
        .collect();
    let initialized = init_specs.iter().zip(&init).all(|(c, st)| {
        if is_sidecar(c) {
            st.started.unwrap_or(false)
        } else {
            st.ready
        }
    });
    let default_waiting = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let regular: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, obs, default_waiting, false))
        .collect();
    let mut phase = phase(pod, &init, &regular);
    // A terminal phase is never left (kubelet never moves a pod back).
    if let Some(p) = prev.and_then(|p| p.phase.as_deref()) {
        if p == "Succeeded" || p == "Failed" {
            phase = p.to_owned();
        }
    }
    let sandbox_ready = obs
        .sandbox
        .as_ref()
        .is_some_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
    let unready: Vec<&str> = init_specs
        .iter()
        .zip(&init)
        .filter(|(c, st)| is_sidecar(c) && !st.ready)
        .chain(
            spec.containers
                .iter()
                .zip(&regular)
                .filter(|(_, st)| !st.ready),
        )
        .map(|(c, _)| c.name.as_str())
        .collect();
    let incomplete: Vec<&str> = init_specs
        .iter()
        .zip(&init)
        .filter(|(c, st)| {
            !(if is_sidecar(c) {
                st.started.unwrap_or(false)
            } else {
                st.ready
            })
        })
        .map(|(c, _)| c.name.as_str())
        .collect();
    let terminal = phase == "Succeeded" || phase == "Failed";
    let containers_ready = unready.is_empty() && !terminal;
    let not_ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let unready_msg = (!unready.is_empty())
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let mut conditions = vec![
        condition(
            prev,
            "PodReadyToStartContainers",
            sandbox_ready,
            None,
            None,
            now,
        ),
        condition(
            prev,
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
            now,
        ),
        condition(
            prev,
            "Ready",
            containers_ready,
            Some(not_ready_reason),
            unready_msg.clone(),
            now,
        ),
        condition(
            prev,
            "ContainersReady",
            containers_ready,
            Some(not_ready_reason),
            unready_msg,
            now,
        ),
    ];
    if let Some(s) = prev
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
    {
        conditions.push(s.clone());
    }
    let ips: Vec<String> = obs
        .sandbox
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| {
            std::iter::once(n.ip.clone())
                .chain(n.additional_ips.iter().map(|i| i.ip.clone()))
                .filter(|i| !i.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let ips = if host_network {
        obs.host_ip.iter().cloned().collect()
    } else if ips.is_empty() {
        // Between sandboxes the last known addresses stay, as kubelet keeps them.
        prev.and_then(|p| p.pod_ips.as_ref())
            .map(|v| v.iter().map(|p| p.ip.clone()).collect())
            .unwrap_or_default()
    } else {
        ips
    };
    PodStatus {
        phase: Some(phase),
        conditions: Some(conditions),
        host_ip: obs.host_ip.clone(),
        host_ips: obs
            .host_ip
            .as_ref()
            .map(|ip| vec![HostIP { ip: ip.clone() }]),
        pod_ip: ips.first().cloned(),
        pod_ips: (!ips.is_empty()).then(|| ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        start_time: prev.and_then(|p| p.start_time.clone()).or(Some(Time(now))),
        qos_class: Some(qos_class(pod).to_owned()),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(regular),
        ..Default::default()
    }
}

/// Guaranteed, Burstable or BestEffort, from requests and limits of cpu and memory.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let r = c.resources.clone().unwrap_or_default();
        let requests = r.requests.unwrap_or_default();
        let limits = r.limits.unwrap_or_default();
        for res in ["cpu", "memory"] {
            let req = requests.get(res).map(|q| q.0.as_str());
            let lim = limits.get(res).map(|q| q.0.as_str());
            let nonzero = |q: Option<&str>| q.is_some_and(|q| !matches!(q, "0" | "0m"));
            if nonzero(req) || nonzero(lim) {
                any = true;
            }
            // The API server defaults requests to limits.
            let milli = |q: &str| podrun_runtime::spec::parse_quantity_milli(q).ok();
            match (req, lim) {
                (_, None) => guaranteed = false,
                (Some(a), Some(b)) if milli(a) != milli(b) => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests;
