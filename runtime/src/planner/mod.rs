//! The one pod planner. Both front ends say what they want in runtime terms
//! ([`SandboxSpec`], [`ContainerSpec`]) and the planner turns that into the plans the pod
//! monitor executes ([`PodPlan`](crate::plan::PodPlan),
//! [`ContainerPlan`](crate::plan::ContainerPlan)):
//!
//! ```text
//!  CRI (agent/src/server/convert.rs) ──┐
//!                                      ├─▶ SandboxSpec ─▶ plan_sandbox ─▶ PodPlan
//!  podrun run (pod::kube, a Pod)  ─────┘   ContainerSpec ─▶ plan_container ─▶ ContainerPlan
//! ```
//!
//! The split follows kubelet and a CRI runtime: the front end does what kubelet does
//! (volumes, env from the API, `$(VAR)` expansion, the QoS class, hooks), the planner what
//! containerd does (the sandbox's files and network, the image's user, command and env,
//! capabilities, seccomp, mounts and devices, the rootfs). A planning error names what it
//! is about as a [`Field`]; each front end words it in its own field paths.

mod container;
mod files;
pub mod image_user;
mod sandbox;
pub mod spec;

pub use container::argv;
pub use files::resolv_conf;
pub use sandbox::{pod_cgroup_path, SandboxDraft, CREATING_MARKER};
pub use spec::*;

use crate::pod::PodError;

/// What part of a sandbox or container spec a planning error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    SandboxId,
    ContainerId,
    CgroupParent,
    PidNamespace,
    Image,
    /// The image's own `User`.
    ImageUser,
    Command,
    RunAsUser,
    RunAsUsername,
    RunAsGroup,
    RunAsNonRoot,
    Capabilities,
    Seccomp,
    MountContainerPath(usize),
    MountHostPath(usize),
    DeviceContainerPath(usize),
    DeviceHostPath(usize),
    DevicePermissions(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{message}")]
    Invalid { field: Field, message: String },
    #[error(transparent)]
    Pod(#[from] PodError),
}

impl PlanError {
    pub(crate) fn invalid(field: Field, message: impl Into<String>) -> Self {
        PlanError::Invalid {
            field,
            message: message.into(),
        }
    }

    /// The error as the front end reports it: `name` gives the field's path in the
    /// front end's vocabulary (the error's `file`) and may prefix the message.
    pub fn named(self, name: impl Fn(Field, String) -> PodError) -> PodError {
        match self {
            PlanError::Invalid { field, message } => name(field, message),
            PlanError::Pod(e) => e,
        }
    }
}

impl From<crate::image::ImageError> for PlanError {
    fn from(e: crate::image::ImageError) -> Self {
        PlanError::Pod(e.into())
    }
}

impl From<crate::state::StateError> for PlanError {
    fn from(e: crate::state::StateError) -> Self {
        PlanError::Pod(e.into())
    }
}

pub(crate) fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> PlanError {
    let step = step.into();
    move |source| PlanError::Pod(PodError::Io { step, source })
}
