//! Pod sandboxes and containers as the CRI drives them: a sandbox is a pod monitor started
//! with a plan that has no containers (`PodPlan::managed`); containers are planned one by
//! one from a `ContainerSpec` and handed to that monitor, which creates, starts, stops and
//! removes them on request. The CRI server translates its protobuf messages into the plain
//! specs of [`crate::planner`], so this crate stays free of gRPC.
//!
//! ```text
//!  run_sandbox: plan_sandbox (state dir, netns + CNI ADD, files) ─▶ shm
//!               ─▶ plan.json ─▶ monitor up (Ready)
//!  plan_container: planner::plan_container_spec, errors named by CRI field
//! ```
//! Every step registers its undo first, so a failure leaves nothing behind.

use tracing::{info, warn};

use crate::monitor::{self, PLAN_FILE};
use crate::plan::{ContainerPlan, PodPlan};
use crate::planner::Field;
pub use crate::planner::{
    pod_cgroup_path, resolv_conf, ContainerSpec, DeviceSpec, DnsSpec, HostAlias, MountSpec,
    NamespaceMode, PortMapping, SandboxSpec, SecuritySpec, CREATING_MARKER,
};
use crate::pod::{io, launch_monitor, PodError, PodRuntime, Rollback};
use crate::state;

/// A planning error about `field`, worded with the CRI's field path.
fn cri_error(field: Field, message: String) -> PodError {
    let file = match field {
        Field::SandboxId => "pod_sandbox_id".to_owned(),
        Field::ContainerId => "container_id".to_owned(),
        Field::CgroupParent => "config.linux.cgroup_parent".to_owned(),
        Field::PidNamespace => "config.linux.security_context.namespace_options.pid".to_owned(),
        Field::Image => "config.image.image".to_owned(),
        Field::ImageUser => "image config User".to_owned(),
        Field::Command => "config.command".to_owned(),
        Field::RunAsUser => "config.linux.security_context.run_as_user".to_owned(),
        Field::RunAsUsername => "config.linux.security_context.run_as_username".to_owned(),
        Field::RunAsGroup => "config.linux.security_context.run_as_group".to_owned(),
        Field::RunAsNonRoot => "config.linux.security_context.run_as_non_root".to_owned(),
        Field::Capabilities => "config.linux.security_context.capabilities".to_owned(),
        Field::Seccomp => "config.linux.security_context.seccomp".to_owned(),
        Field::MountContainerPath(i) => format!("config.mounts[{i}].container_path"),
        Field::MountHostPath(i) => format!("config.mounts[{i}].host_path"),
        Field::DeviceContainerPath(i) => format!("config.devices[{i}].container_path"),
        Field::DeviceHostPath(i) => format!("config.devices[{i}].host_path"),
        Field::DevicePermissions(i) => format!("config.devices[{i}].permissions"),
    };
    PodError::Invalid { file, message }
}

impl PodRuntime {
    /// Start a sandbox: its network, its files and its monitor, with no containers yet.
    /// `id` is the sandbox id the caller chose (unique, a path component).
    pub fn run_sandbox(&self, id: &str, spec: &SandboxSpec) -> Result<PodPlan, PodError> {
        let draft = self
            .plan_sandbox(id, spec)
            .map_err(|e| e.named(cri_error))?;
        let plan = &draft.plan;
        let state_dir = &plan.state_dir;
        // The pod's /dev/shm is a tmpfs on the host (containers are built from the host's
        // mount namespace); teardown unmounts it.
        let shm = state_dir.join("shm");
        let shm_undo = Rollback::new(|| {
            let _ = nix::mount::umount2(&shm, nix::mount::MntFlags::MNT_DETACH);
        });
        if !plan.host_ipc {
            std::fs::create_dir_all(&shm).map_err(io(format!("create {}", shm.display())))?;
            nix::mount::mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                Some("mode=1777,size=65536k"),
            )
            .map_err(|e| PodError::Io {
                step: format!("mount the pod's shm at {}", shm.display()),
                source: e.into(),
            })?;
        }
        let undo = Rollback::new(|| monitor::teardown_pod(plan, self.cgroups()));
        state::write_json(&state_dir.join(PLAN_FILE), plan)?;
        crate::fault::point("sandbox:plan");
        launch_monitor(plan, &self.config.monitor_exe)?;
        crate::fault::point("sandbox:monitor");
        undo.disarm();
        shm_undo.disarm();
        let plan = draft.commit();
        info!(sandbox = %id, pod = %plan.name, namespace = %plan.namespace, "sandbox ready");
        Ok(plan)
    }

    /// Remove sandboxes whose creation a crash interrupted before their plan was
    /// written: their CNI attachment (DEL with the cached or current configuration),
    /// pinned netns, shm and directories. Returns their ids.
    pub fn reap_half_created(&self) -> Vec<String> {
        let mut reaped = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.config.paths.pods_state()) else {
            return reaped;
        };
        for e in entries.flatten() {
            let dir = e.path();
            let marker = dir.join(CREATING_MARKER);
            if !marker.exists() || dir.join(PLAN_FILE).exists() {
                continue;
            }
            let Ok(f) = std::fs::File::open(&marker) else {
                continue;
            };
            // Still held: its creator is alive and at work.
            if nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err() {
                continue;
            }
            let Some(id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            warn!(sandbox = %id, "reaping a sandbox whose creation was interrupted");
            let netns = self.config.paths.state.join("netns").join(&id);
            crate::network::teardown_orphan(&self.config.network, &id, &netns);
            let _ = nix::mount::umount2(&dir.join("shm"), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_dir_all(self.config.paths.pod_data(&id));
            reaped.push(id);
        }
        reaped
    }

    /// Plan a container of `sandbox`: everything its monitor needs to create and start
    /// it. Nothing runs and nothing outside `<root>/containers/<id>` is created.
    pub fn plan_container(
        &self,
        sandbox: &PodPlan,
        id: &str,
        spec: &ContainerSpec,
    ) -> Result<ContainerPlan, PodError> {
        self.plan_container_spec(sandbox, id, spec)
            .map_err(|e| e.named(cri_error))
    }
}
