//! Pod and container status as the monitor records it, in Kubernetes terms. The monitor
//! is the only writer (`<state>/pods/<id>/status.json`, written atomically); every other
//! command reads it.
//!
//! Container state machine:
//! ```text
//!   Waiting(ContainerCreating) ──start──▶ Running ──exit──▶ Terminated
//!         ▲                                                    │
//!         └──── Waiting(CrashLoopBackOff) ◀── restart policy ──┘
//! ```
//! Containers of a CRI-managed pod start in Waiting(ContainerCreated) instead, go to
//! Running only on StartContainer, and stay Terminated (kubelet restarts them as new
//! containers).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ContainerState {
    Waiting {
        reason: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
    },
    Running {
        started_at: DateTime<Utc>,
        pid: i32,
    },
    Terminated {
        exit_code: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        reason: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
        started_at: Option<DateTime<Utc>>,
        finished_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub state: ContainerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<ContainerState>,
    pub restart_count: u32,
    pub ready: bool,
    /// Init container (or native sidecar).
    pub init: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    /// The monitor is gone; what the containers did is unknown.
    Unknown,
}

impl std::fmt::Display for PodPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
            PodPhase::Unknown => "Unknown",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub phase: PodPhase,
    /// Set while the pod is being stopped.
    #[serde(default)]
    pub terminating: bool,
    pub monitor_pid: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    pub start_time: DateTime<Utc>,
    pub containers: Vec<ContainerStatus>,
}

impl PodStatus {
    /// "ready/total" over app containers, as kubectl's READY column.
    pub fn ready_count(&self) -> (usize, usize) {
        let app: Vec<_> = self.containers.iter().filter(|c| !c.init).collect();
        (app.iter().filter(|c| c.ready).count(), app.len())
    }
}

impl ContainerState {
    pub fn name(&self) -> &'static str {
        match self {
            ContainerState::Waiting { .. } => "Waiting",
            ContainerState::Running { .. } => "Running",
            ContainerState::Terminated { .. } => "Terminated",
        }
    }
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ContainerState::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
}
