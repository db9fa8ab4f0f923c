//! The pod status the monitor writes to status.json and answers with, and the pod phase
//! as Kubernetes defines it.

use super::{Monitor, MonitorError, STATUS_FILE};
use crate::plan::ContainerKind;
use crate::status::{PodPhase, PodStatus};

impl Monitor {
    pub(super) fn status(&self) -> PodStatus {
        PodStatus {
            phase: self.phase(),
            terminating: self.stopping.is_some(),
            monitor_pid: self.host_pid,
            pod_ip: self.plan.network.as_ref().and_then(|n| n.pod_ip.clone()),
            start_time: self.start_time,
            containers: self.containers.iter().map(|c| c.status.clone()).collect(),
        }
    }

    pub(super) fn write_status(&self) -> Result<(), MonitorError> {
        crate::state::write_json(&self.plan.state_dir.join(STATUS_FILE), &self.status())?;
        Ok(())
    }

    fn phase(&self) -> PodPhase {
        if self.plan.managed {
            // The sandbox is up as long as its monitor is; what its containers do is
            // for kubelet to judge.
            return PodPhase::Running;
        }
        let views: Vec<ContainerView> = self
            .containers
            .iter()
            .map(|c| ContainerView {
                kind: c.plan.kind,
                started_once: c.started_before,
                done: c.done,
                exit_code: c.status.state.exit_code(),
            })
            .collect();
        pod_phase(&views)
    }
}

/// What the pod phase depends on, per container.
#[derive(Debug, Clone, Copy)]
pub(super) struct ContainerView {
    pub(super) kind: ContainerKind,
    pub(super) started_once: bool,
    pub(super) done: bool,
    pub(super) exit_code: Option<i32>,
}

/// The pod phase as Kubernetes defines it: Failed once an init container has failed for
/// good; Pending until an app container has started; Succeeded or Failed once every app
/// container is done (by their exit codes); Running otherwise.
pub(super) fn pod_phase(containers: &[ContainerView]) -> PodPhase {
    if containers
        .iter()
        .any(|c| c.kind == ContainerKind::Init && c.done && c.exit_code != Some(0))
    {
        return PodPhase::Failed;
    }
    let apps: Vec<&ContainerView> = containers
        .iter()
        .filter(|c| c.kind == ContainerKind::App)
        .collect();
    if apps.iter().all(|c| !c.started_once && !c.done) {
        return PodPhase::Pending;
    }
    if apps.iter().all(|c| c.done) {
        if apps.iter().all(|c| c.exit_code == Some(0)) {
            return PodPhase::Succeeded;
        }
        return PodPhase::Failed;
    }
    PodPhase::Running
}
