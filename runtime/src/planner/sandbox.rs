//! Planning a pod sandbox: its state directories, network, hostname, shared files and
//! cgroup, and the [`PodPlan`] that describes it.
//!
//! ```text
//!  state dir + creation marker ─▶ cgroup path ─▶ netns + CNI ADD ─▶ hostname
//!      ─▶ hosts, hostname, resolv.conf ─▶ PodPlan (no containers yet)
//! ```
//! Until the front end commits the draft (after writing plan.json), dropping it undoes
//! every step; a crash leaves the creation marker, which `reap_half_created` finds.

use std::path::Path;

use super::{files, Field, NamespaceMode, PlanError, SandboxSpec};
use crate::cgroups::{Driver, Resources};
use crate::plan::{PodPlan, RestartPolicy};
use crate::pod::PodRuntime;

/// Present in a pod's state dir while its sandbox is being created, flock-ed by the
/// creator.
pub const CREATING_MARKER: &str = "cri-creating";

/// A planned sandbox whose directories and network exist. Dropped, it removes them;
/// [`SandboxDraft::commit`] keeps them once the plan is on disk.
pub struct SandboxDraft {
    pub plan: PodPlan,
    creating: Option<nix::fcntl::Flock<std::fs::File>>,
    committed: bool,
}

impl SandboxDraft {
    /// The plan is written and a monitor owns the pod: keep everything.
    pub fn commit(mut self) -> PodPlan {
        let _ = std::fs::remove_file(self.plan.state_dir.join(CREATING_MARKER));
        self.creating = None;
        self.committed = true;
        self.plan.clone()
    }
}

impl Drop for SandboxDraft {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Some(n) = &self.plan.network {
            crate::network::teardown(&self.plan.id, n);
        }
        let _ = std::fs::remove_dir_all(&self.plan.state_dir);
        let _ = std::fs::remove_dir_all(&self.plan.data_dir);
    }
}

fn hold_creation_marker(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, PlanError> {
    let path = state_dir.join(CREATING_MARKER);
    let f =
        std::fs::File::create(&path).map_err(super::io(format!("create {}", path.display())))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| super::io(format!("lock {}", path.display()))(e.into()))
}

/// The pod cgroup path for the driver, from the cgroup parent kubelet passes.
pub fn pod_cgroup_path(driver: Driver, parent: &str) -> Result<String, String> {
    match driver {
        Driver::Systemd => {
            if parent.contains('/') {
                return Err(format!(
                    "cgroup_parent {parent:?} is a cgroupfs path but the cgroup driver is systemd"
                ));
            }
            let path = crate::cgroups::systemd::expand_slice(parent)?;
            if path.is_empty() {
                return Err(format!(
                    "cgroup_parent {parent:?} is the root slice; a pod needs a slice of its own"
                ));
            }
            Ok(path)
        }
        _ => {
            if parent.ends_with(".slice") && !parent.contains('/') {
                return Err(format!(
                    "cgroup_parent {parent:?} is a systemd slice but the cgroup driver is cgroupfs"
                ));
            }
            let p = Path::new(parent);
            if p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(format!("cgroup_parent {parent:?} must not contain '..'"));
            }
            Ok(parent.trim_matches('/').to_owned())
        }
    }
}

impl PodRuntime {
    /// Plan sandbox `id` (unique, a path component): create its state directories,
    /// attach its network and write its shared files. The plan has no containers, runs
    /// nothing and is not on disk yet.
    pub fn plan_sandbox(&self, id: &str, spec: &SandboxSpec) -> Result<SandboxDraft, PlanError> {
        crate::state::validate_path_component("sandbox id", id)
            .map_err(|m| PlanError::invalid(Field::SandboxId, m))?;
        if spec.pid == NamespaceMode::Target {
            return Err(PlanError::invalid(
                Field::PidNamespace,
                "TARGET is only valid for containers",
            ));
        }
        let paths = &self.config.paths;
        let driver = self.cgroups().driver();
        let (cgroup_path, external_cgroup) = match spec.cgroup_parent.as_deref() {
            Some(p) if !p.is_empty() => (
                pod_cgroup_path(driver, p)
                    .map_err(|m| PlanError::invalid(Field::CgroupParent, m))?,
                true,
            ),
            _ => (
                self.cgroups()
                    .pod_path(&self.config.cgroup_root, spec.qos, id),
                false,
            ),
        };
        let state_dir = paths.pod_state(id);
        if state_dir.exists() {
            return Err(crate::pod::PodError::AlreadyExists(id.to_owned()).into());
        }
        std::fs::create_dir_all(&state_dir)
            .map_err(super::io(format!("create {}", state_dir.display())))?;
        let host_network = spec.network == NamespaceMode::Node;
        let mut draft = SandboxDraft {
            plan: PodPlan {
                id: id.to_owned(),
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                uid: spec.uid.clone(),
                hostname: String::new(),
                host_network,
                host_ipc: spec.ipc == NamespaceMode::Node,
                host_pid: spec.pid == NamespaceMode::Node,
                share_process_namespace: spec.pid == NamespaceMode::Pod,
                restart_policy: RestartPolicy::Never,
                termination_grace_period_secs: 30,
                cgroup_driver: driver,
                cgroup_path,
                // A cgroup the caller gave is the caller's to limit (kubelet sets its
                // pids.max).
                pod_resources: if external_cgroup {
                    Resources::default()
                } else {
                    Resources {
                        pids_limit: self.config.pod_max_pids,
                        ..spec.resources.clone()
                    }
                },
                log_dir: spec
                    .log_directory
                    .clone()
                    .unwrap_or_else(|| paths.pod_logs(&spec.namespace, &spec.name, &spec.uid)),
                state_dir: state_dir.clone(),
                data_dir: paths.pod_data(id),
                tmpfs: Vec::new(),
                containers: Vec::new(),
                labels: spec.labels.clone(),
                annotations: spec.annotations.clone(),
                source: None,
                created_at: chrono::Utc::now(),
                network: None,
                backoff_base_ms: 10_000,
                managed: true,
                sysctls: spec.sysctls.clone(),
                external_cgroup,
                owns_log_dir: spec.log_directory.is_none(),
            },
            creating: None,
            committed: false,
        };
        // Held while the sandbox is being created: a state dir whose marker nobody holds
        // was left by a crash (`reap_half_created`).
        draft.creating = Some(hold_creation_marker(&state_dir)?);
        crate::fault::point("sandbox:state");

        if !host_network {
            draft.plan.network = self.attach_sandbox_network(id, &spec.port_mappings)?;
        }
        crate::fault::point("sandbox:network");
        let pod_ip = draft.plan.network.as_ref().and_then(|n| n.pod_ip.clone());
        // As containerd: no hostname means the node's (for /etc/hostname, $HOSTNAME and
        // the pod's UTS namespace alike), not the sandbox name.
        let hostname = if host_network || spec.hostname.is_empty() {
            &self.config.node_name
        } else {
            &spec.hostname
        };
        draft.plan.hostname = crate::spec::truncate_pod_hostname(&spec.name, hostname);
        let hosts = files::hosts(
            host_network,
            &draft.plan.hostname,
            pod_ip.as_deref(),
            &spec.host_aliases,
        );
        files::write(&state_dir, hosts, &draft.plan.hostname, spec.dns.as_ref())?;
        crate::fault::point("sandbox:files");
        Ok(draft)
    }

    fn attach_sandbox_network(
        &self,
        id: &str,
        ports: &[super::PortMapping],
    ) -> Result<Option<crate::network::PodNetwork>, PlanError> {
        let mappings: Vec<serde_json::Value> = ports
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| {
                serde_json::json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol,
                    "hostIP": p.host_ip,
                })
            })
            .collect();
        Ok(self.attach_pod_network(id, serde_json::json!({ "portMappings": mappings }))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parent_must_match_the_driver() {
        assert_eq!(
            pod_cgroup_path(Driver::Cgroupfs, "/kubepods/burstable/podx").unwrap(),
            "kubepods/burstable/podx"
        );
        assert!(pod_cgroup_path(Driver::Cgroupfs, "kubepods-podx.slice").is_err());
        assert!(pod_cgroup_path(Driver::Systemd, "/kubepods/podx").is_err());
        assert!(pod_cgroup_path(Driver::Cgroupfs, "/kubepods/../etc").is_err());
        assert_eq!(
            pod_cgroup_path(Driver::Systemd, "kubepods-podx.slice").unwrap(),
            "kubepods.slice/kubepods-podx.slice"
        );
        assert_eq!(
            pod_cgroup_path(Driver::Systemd, "kubepods-besteffort-pod12_34.slice").unwrap(),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice"
        );
        // One slice grammar for both drivers' callers: the root slice is no pod's.
        let root = pod_cgroup_path(Driver::Systemd, "-.slice").unwrap_err();
        assert!(root.contains("root slice"), "{root}");
        assert!(pod_cgroup_path(Driver::Systemd, "a--b.slice").is_err());
        assert!(pod_cgroup_path(Driver::Systemd, "nope").is_err());
    }
}
