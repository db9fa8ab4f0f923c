//! Pod sandboxes and containers as the CRI drives them: a sandbox is a pod monitor started
//! with a plan that has no containers (`PodPlan::managed`); containers are planned one by
//! one from a `ContainerSpec` and handed to that monitor, which creates, starts, stops and
//! removes them on request. The CRI server translates its protobuf messages into the plain
//! specs here, so this crate stays free of gRPC.
//!
//! ```text
//!  run_sandbox: reserve nothing (the caller owns names) ─▶ state dir ─▶ netns + CNI ADD
//!               ─▶ hosts, hostname, resolv.conf ─▶ plan.json ─▶ monitor up (Ready)
//!  plan_container: image ─▶ user/groups ─▶ mounts/devices ─▶ security ─▶ ContainerPlan
//! ```
//! Every step registers its undo first, so a failure leaves nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::cgroups::{Driver, QosClass, Resources};
use crate::monitor::{self, PLAN_FILE};
use crate::plan::{ContainerKind, ContainerPlan, PodPlan, ProcessSpec, RestartPolicy};
use crate::pod::{
    group_in_file, io, launch_monitor, member_groups, parse_signal, user_in_passwd,
    user_in_passwd_by_uid, PodError, PodRuntime, Rollback,
};
use crate::rootfs::{
    MountPlan, Propagation, RootfsSpec, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS,
};
use crate::security::seccomp::SeccompProfile;
use crate::state;

/// How a pod uses one kind of namespace (CRI `NamespaceMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NamespaceMode {
    /// Shared by the pod's containers.
    #[default]
    Pod,
    /// Each container its own (PID only).
    Container,
    /// The host's.
    Node,
    /// Another container's (PID only; ephemeral containers).
    Target,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSpec {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// What RunPodSandbox asks for, in runtime terms.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: Option<PathBuf>,
    pub dns: Option<DnsSpec>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// kubelet's pod cgroup ("/kubepods/burstable/pod<uid>" or "kubepods-...slice").
    pub cgroup_parent: Option<String>,
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    pub sysctls: BTreeMap<String, String>,
    /// Limits for the whole pod (overhead plus resources), applied to the pod cgroup
    /// when podrun owns it.
    pub resources: Resources,
}

/// One mount of a CRI container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub container_path: String,
    pub host_path: PathBuf,
    pub readonly: bool,
    pub propagation: Propagation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub container_path: String,
    pub host_path: PathBuf,
    /// cgroup permissions, a subset of "rwm".
    pub permissions: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecuritySpec {
    pub privileged: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub run_as_user: Option<i64>,
    pub run_as_username: Option<String>,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    pub readonly_rootfs: bool,
    pub no_new_privs: bool,
    /// None: the runtime's defaults (none when privileged).
    pub masked_paths: Option<Vec<String>>,
    pub readonly_paths: Option<Vec<String>>,
    pub seccomp: SeccompProfile,
}

impl Default for SecuritySpec {
    fn default() -> Self {
        Self {
            privileged: false,
            add_capabilities: Vec::new(),
            drop_capabilities: Vec::new(),
            run_as_user: None,
            run_as_username: None,
            run_as_group: None,
            supplemental_groups: Vec::new(),
            readonly_rootfs: false,
            no_new_privs: false,
            masked_paths: None,
            readonly_paths: None,
            seccomp: SeccompProfile::Unconfined,
        }
    }
}

/// What CreateContainer asks for, in runtime terms.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub attempt: u32,
    /// Image reference or id; must be in the store (the CRI never pulls on create).
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<MountSpec>,
    pub devices: Vec<DeviceSpec>,
    /// Absolute path of the log file, or None for no log.
    pub log_path: Option<PathBuf>,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub resources: Resources,
    pub oom_score_adj: Option<i32>,
    pub security: SecuritySpec,
}

/// Present in a sandbox's state dir while RunPodSandbox creates it, flock-ed by the
/// creator.
pub const CREATING_MARKER: &str = "cri-creating";

fn hold_creation_marker(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, PodError> {
    let path = state_dir.join(CREATING_MARKER);
    let f = std::fs::File::create(&path).map_err(io(format!("create {}", path.display())))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| PodError::Io {
        step: format!("lock {}", path.display()),
        source: e.into(),
    })
}

fn invalid(field: &str, message: impl Into<String>) -> PodError {
    PodError::Invalid {
        file: field.to_owned(),
        message: message.into(),
    }
}

/// Expand a systemd slice name into its path of parent slices, as systemd nests them:
/// "a-b-c.slice" is "a.slice/a-b.slice/a-b-c.slice".
pub fn expand_slice(slice: &str) -> Result<String, String> {
    let name = slice
        .strip_suffix(".slice")
        .ok_or_else(|| format!("{slice:?} is not a systemd slice (name.slice)"))?;
    if name.is_empty() || name.contains('/') || name.starts_with('-') || name.ends_with('-') {
        return Err(format!("{slice:?} is not a valid slice name"));
    }
    if name == "-" {
        return Ok(String::new());
    }
    let mut out = Vec::new();
    let mut acc = String::new();
    for part in name.split('-') {
        if part.is_empty() {
            return Err(format!("{slice:?} is not a valid slice name"));
        }
        if !acc.is_empty() {
            acc.push('-');
        }
        acc.push_str(part);
        out.push(format!("{acc}.slice"));
    }
    Ok(out.join("/"))
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
            expand_slice(parent)
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

/// resolv.conf content from a CRI DNSConfig; None keeps the host's file.
pub fn resolv_conf(dns: &DnsSpec) -> String {
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for s in &dns.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

impl PodRuntime {
    /// Start a sandbox: its network, its files and its monitor, with no containers yet.
    /// `id` is the sandbox id the caller chose (unique, a path component).
    pub fn run_sandbox(&self, id: &str, spec: &SandboxSpec) -> Result<PodPlan, PodError> {
        state::validate_path_component("sandbox id", id)
            .map_err(|m| invalid("pod_sandbox_id", m))?;
        if spec.pid == NamespaceMode::Target {
            return Err(invalid(
                "config.linux.security_context.namespace_options.pid",
                "TARGET is only valid for containers",
            ));
        }
        let paths = &self.config.paths;
        let state_dir = paths.pod_state(id);
        let data_dir = paths.pod_data(id);
        if state_dir.exists() {
            return Err(PodError::AlreadyExists(id.to_owned()));
        }
        std::fs::create_dir_all(&state_dir)
            .map_err(io(format!("create {}", state_dir.display())))?;
        let cleanup = Rollback::new(|| {
            let _ = std::fs::remove_dir_all(&state_dir);
            let _ = std::fs::remove_dir_all(&data_dir);
        });
        // Held while the sandbox is being created: a sandbox dir whose marker nobody
        // holds was left by a crash (`reap_half_created`).
        let _creating = hold_creation_marker(&state_dir)?;
        crate::fault::point("sandbox:state");
        let driver = self.cgroups().driver();
        let (cgroup_path, external_cgroup) = match spec.cgroup_parent.as_deref() {
            Some(p) if !p.is_empty() => (
                pod_cgroup_path(driver, p).map_err(|m| invalid("config.linux.cgroup_parent", m))?,
                true,
            ),
            _ => (
                self.cgroups()
                    .pod_path(&self.config.cgroup_root, QosClass::BestEffort, id),
                false,
            ),
        };

        let host_network = spec.network == NamespaceMode::Node;
        let network = if host_network {
            None
        } else {
            self.attach_sandbox_network(id, &spec.port_mappings)?
        };
        crate::fault::point("sandbox:network");
        let network_undo = Rollback::new(|| {
            if let Some(n) = &network {
                crate::network::teardown(id, n);
            }
        });
        let pod_ip = network.as_ref().and_then(|n| n.pod_ip.clone());
        // As containerd: no hostname means the node's (for /etc/hostname, $HOSTNAME and
        // the pod's UTS namespace alike), not the sandbox name.
        let hostname = if host_network || spec.hostname.is_empty() {
            &self.config.node_name
        } else {
            &spec.hostname
        };
        let hostname = crate::spec::truncate_pod_hostname(&spec.name, hostname);
        let hosts = if host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}\t{hostname}\n",
                pod_ip.as_deref().unwrap_or("127.0.1.1")
            )
        };
        let resolv = match &spec.dns {
            Some(d) => resolv_conf(d),
            None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        for (file, content) in [
            ("hosts", hosts),
            ("hostname", format!("{hostname}\n")),
            ("resolv.conf", resolv),
        ] {
            state::write_atomic(&state_dir.join(file), content.as_bytes(), 0o644)?;
        }
        // The pod's /dev/shm is a tmpfs on the host (containers are built from the host's
        // mount namespace); teardown unmounts it.
        let shm = state_dir.join("shm");
        let shm_undo = Rollback::new(|| {
            let _ = nix::mount::umount2(&shm, nix::mount::MntFlags::MNT_DETACH);
        });
        if spec.ipc != NamespaceMode::Node {
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
        let log_dir = spec
            .log_directory
            .clone()
            .unwrap_or_else(|| paths.pod_logs(&spec.namespace, &spec.name, &spec.uid));
        let plan = PodPlan {
            id: id.to_owned(),
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            uid: spec.uid.clone(),
            hostname,
            host_network,
            host_ipc: spec.ipc == NamespaceMode::Node,
            host_pid: spec.pid == NamespaceMode::Node,
            share_process_namespace: spec.pid == NamespaceMode::Pod,
            restart_policy: RestartPolicy::Never,
            termination_grace_period_secs: 30,
            cgroup_driver: driver,
            cgroup_path,
            // A cgroup the caller gave is the caller's to limit (kubelet sets its pids.max).
            pod_resources: if external_cgroup {
                Resources::default()
            } else {
                Resources {
                    pids_limit: self.config.pod_max_pids,
                    ..spec.resources.clone()
                }
            },
            log_dir,
            state_dir: state_dir.clone(),
            data_dir: data_dir.clone(),
            tmpfs: Vec::new(),
            containers: Vec::new(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            source: None,
            created_at: chrono::Utc::now(),
            network: network.clone(),
            backoff_base_ms: 10_000,
            managed: true,
            external_cgroup,
            owns_log_dir: spec.log_directory.is_none(),
            sysctls: spec.sysctls.clone(),
        };
        crate::fault::point("sandbox:files");
        let undo = Rollback::new(|| monitor::teardown_pod(&plan, self.cgroups()));
        state::write_json(&state_dir.join(PLAN_FILE), &plan)?;
        crate::fault::point("sandbox:plan");
        launch_monitor(&plan, &self.config.monitor_exe)?;
        crate::fault::point("sandbox:monitor");
        let _ = std::fs::remove_file(state_dir.join(CREATING_MARKER));
        undo.disarm();
        shm_undo.disarm();
        network_undo.disarm();
        cleanup.disarm();
        info!(sandbox = %id, pod = %plan.name, namespace = %plan.namespace, "sandbox ready");
        Ok(plan)
    }

    fn attach_sandbox_network(
        &self,
        id: &str,
        ports: &[PortMapping],
    ) -> Result<Option<crate::network::PodNetwork>, PodError> {
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
        self.attach_pod_network(id, serde_json::json!({ "portMappings": mappings }))
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
        state::validate_path_component("container id", id)
            .map_err(|m| invalid("container_id", m))?;
        let img = self
            .images
            .get(&spec.image)
            .map_err(|e| invalid("config.image.image", e.to_string()))?
            .ok_or_else(|| PodError::NotFound(format!("image {:?} (pull it first)", spec.image)))?;
        let config = self.images.config(&img)?;
        let layers = self.images.layer_dirs(&img)?;
        let sec = &spec.security;

        // Command: CRI command replaces the entrypoint, args replace cmd.
        let mut args = if spec.command.is_empty() {
            config.entrypoint.clone()
        } else {
            spec.command.clone()
        };
        if !spec.args.is_empty() {
            args.extend(spec.args.iter().cloned());
        } else if spec.command.is_empty() {
            args.extend(config.cmd.iter().cloned());
        }
        if args.is_empty() {
            return Err(invalid(
                "config.command",
                "no command specified and the image has no entrypoint or cmd",
            ));
        }

        // Env: image first, the CRI's override by name.
        let mut env: Vec<(String, String)> = config
            .env
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (e.clone(), String::new()),
            })
            .collect();
        for (k, v) in &spec.envs {
            match env.iter_mut().find(|(ek, _)| ek == k) {
                Some(slot) => slot.1 = v.clone(),
                None => env.push((k.clone(), v.clone())),
            }
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.insert(
                0,
                (
                    "PATH".into(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ),
            );
        }
        if !env.iter().any(|(k, _)| k == "HOSTNAME") {
            env.push(("HOSTNAME".into(), sandbox.hostname.clone()));
        }
        if spec.tty && !env.iter().any(|(k, _)| k == "TERM") {
            env.push(("TERM".into(), "xterm".into()));
        }

        // User: run_as_user / run_as_username over the image's USER, as containerd does.
        let image_user = config.user.clone().unwrap_or_default();
        let (user_part, group_part) = match image_user.split_once(':') {
            Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
            None => (image_user.clone(), None),
        };
        let lookup_name = |name: &str, field: &str| {
            user_in_passwd(&layers, name).ok_or_else(|| {
                invalid(
                    field,
                    format!("user {name:?} not found in the image's /etc/passwd"),
                )
            })
        };
        let (mut uid, mut gid, mut user_name) = (0u32, 0u32, String::new());
        if let Some(u) = sec.run_as_user {
            if u < 0 {
                return Err(invalid(
                    "config.linux.security_context.run_as_user",
                    format!("must not be negative, got {u}"),
                ));
            }
            uid = u as u32;
            gid = user_in_passwd_by_uid(&layers, uid).unwrap_or(0);
        } else if let Some(name) = sec.run_as_username.as_deref().filter(|n| !n.is_empty()) {
            (uid, gid) = lookup_name(name, "config.linux.security_context.run_as_username")?;
            user_name = name.to_owned();
        } else if !user_part.is_empty() {
            if let Ok(n) = user_part.parse::<u32>() {
                uid = n;
                gid = user_in_passwd_by_uid(&layers, n).unwrap_or(0);
            } else {
                (uid, gid) = lookup_name(&user_part, "image config User")?;
                user_name = user_part.clone();
            }
            if let Some(g) = &group_part {
                gid = match g.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => group_in_file(&layers, g).ok_or_else(|| {
                        invalid(
                            "image config User",
                            format!("group {g:?} not found in the image's /etc/group"),
                        )
                    })?,
                };
            }
        }
        if let Some(g) = sec.run_as_group {
            if sec.run_as_user.is_none()
                && sec.run_as_username.as_deref().unwrap_or("").is_empty()
                && user_part.is_empty()
            {
                // kubelet validates this too: a group without a user is meaningless.
                return Err(invalid(
                    "config.linux.security_context.run_as_group",
                    "set without run_as_user or run_as_username",
                ));
            }
            if g < 0 {
                return Err(invalid(
                    "config.linux.security_context.run_as_group",
                    format!("must not be negative, got {g}"),
                ));
            }
            gid = g as u32;
        }
        let mut groups = member_groups(&layers, &user_name, uid);
        groups.extend(sec.supplemental_groups.iter().map(|g| *g as u32));
        groups.sort_unstable();
        groups.dedup();

        let capabilities = crate::security::capabilities::resolve(
            &sec.add_capabilities,
            &sec.drop_capabilities,
            sec.privileged,
            uid,
        )
        .map_err(|e| invalid("config.linux.security_context.capabilities", e.to_string()))?;
        let seccomp = if sec.privileged {
            SeccompProfile::Unconfined
        } else {
            sec.seccomp.clone()
        };
        crate::security::seccomp::compile(&seccomp, &capabilities)
            .map_err(|e| invalid("config.linux.security_context.seccomp", e.to_string()))?;

        // Mounts: the sandbox's files unless the caller mounts its own there, then the
        // CRI mounts, then devices (bind-mounted host nodes).
        let mut mounts: Vec<MountPlan> = Vec::new();
        for (file, dest) in [
            ("hosts", "/etc/hosts"),
            ("hostname", "/etc/hostname"),
            ("resolv.conf", "/etc/resolv.conf"),
        ] {
            if spec.mounts.iter().any(|m| m.container_path == dest) {
                continue;
            }
            mounts.push(MountPlan {
                source: sandbox.state_dir.join(file),
                destination: dest.into(),
                readonly: sec.readonly_rootfs,
                propagation: Propagation::Private,
                file: true,
            });
        }
        for (i, m) in spec.mounts.iter().enumerate() {
            let field = format!("config.mounts[{i}]");
            if !m.container_path.starts_with('/') {
                return Err(invalid(
                    &format!("{field}.container_path"),
                    format!("must be absolute, got {:?}", m.container_path),
                ));
            }
            // A symlinked host path mounts what it points to, as runc does.
            let source = std::fs::canonicalize(&m.host_path).map_err(|e| {
                invalid(
                    &format!("{field}.host_path"),
                    format!("{}: {e}", m.host_path.display()),
                )
            })?;
            if m.propagation == Propagation::Rshared && !sec.privileged {
                // containerd allows it and makes the source shared; we do the same but
                // the kernel needs the source on a shared mount, which rootfs checks.
            }
            let file = std::fs::metadata(&source)
                .map(|md| !md.is_dir())
                .unwrap_or(false);
            mounts.push(MountPlan {
                source,
                destination: m.container_path.clone().into(),
                readonly: m.readonly,
                propagation: m.propagation,
                file,
            });
        }
        let mut resources = spec.resources.clone();
        resources.restrict_devices = !sec.privileged;
        for (i, d) in spec.devices.iter().enumerate() {
            let field = format!("config.devices[{i}]");
            if !d.container_path.starts_with('/') {
                return Err(invalid(
                    &format!("{field}.container_path"),
                    format!("must be absolute, got {:?}", d.container_path),
                ));
            }
            if d.permissions.chars().any(|c| !"rwm".contains(c)) {
                return Err(invalid(
                    &format!("{field}.permissions"),
                    format!("must be a subset of \"rwm\", got {:?}", d.permissions),
                ));
            }
            let source = std::fs::canonicalize(&d.host_path).map_err(|e| {
                invalid(
                    &format!("{field}.host_path"),
                    format!("{}: {e}", d.host_path.display()),
                )
            })?;
            let md = std::fs::metadata(&source).map_err(|e| {
                invalid(
                    &format!("{field}.host_path"),
                    format!("{}: {e}", source.display()),
                )
            })?;
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            let kind = if md.file_type().is_char_device() {
                'c'
            } else if md.file_type().is_block_device() {
                'b'
            } else {
                return Err(invalid(
                    &format!("{field}.host_path"),
                    format!("{} is not a device", source.display()),
                ));
            };
            let rdev = md.rdev();
            let (major, minor) = (libc::major(rdev), libc::minor(rdev));
            let perms = if d.permissions.is_empty() {
                "rwm".to_owned()
            } else {
                d.permissions.clone()
            };
            resources
                .device_rules
                .push(format!("{kind} {major}:{minor} {perms}"));
            mounts.push(MountPlan {
                source,
                destination: d.container_path.clone().into(),
                readonly: !perms.contains('w'),
                propagation: Propagation::Private,
                file: true,
            });
        }

        let cdir = self.config.paths.container_data(id);
        let rootfs = RootfsSpec {
            rootfs: cdir.join("rootfs"),
            layers,
            upper: cdir.join("upper"),
            work: cdir.join("work"),
            readonly: sec.readonly_rootfs,
            privileged: sec.privileged,
            mounts,
            dev_shm: if sandbox.host_ipc {
                Some(PathBuf::from("/dev/shm"))
            } else {
                Some(sandbox.state_dir.join("shm"))
            },
            masked_paths: match &sec.masked_paths {
                Some(p) => p.clone(),
                None if sec.privileged => vec![],
                None => DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            },
            readonly_paths: match &sec.readonly_paths {
                Some(p) => p.clone(),
                None if sec.privileged => vec![],
                None => DEFAULT_READONLY_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            },
        };
        let stop_signal = config
            .stop_signal
            .as_deref()
            .and_then(parse_signal)
            .unwrap_or(libc::SIGTERM);
        let cwd = if spec.working_dir.is_empty() {
            config
                .working_dir
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/".into())
        } else {
            spec.working_dir.clone()
        };
        Ok(ContainerPlan {
            cgroup_path: self.cgroups().container_path(&sandbox.cgroup_path, id),
            id: id.to_owned(),
            name: spec.name.clone(),
            kind: ContainerKind::App,
            image: spec.image.clone(),
            image_id: img.id.clone(),
            rootfs,
            process: ProcessSpec {
                args,
                env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                cwd,
                uid,
                gid,
                additional_gids: groups,
                capabilities,
                no_new_privs: sec.no_new_privs,
                oom_score_adj: spec.oom_score_adj,
                tty: spec.tty,
                hostname: None,
            },
            seccomp,
            resources,
            stop_signal,
            pre_stop: None,
            post_start: None,
            termination_message: None,
            log_path: spec.log_path.clone(),
            stdin: spec.stdin,
            stdin_once: spec.stdin_once,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_like_systemd() {
        assert_eq!(
            expand_slice("kubepods-besteffort-pod12_34.slice").unwrap(),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice"
        );
        assert_eq!(expand_slice("a.slice").unwrap(), "a.slice");
        assert!(expand_slice("a--b.slice").is_err());
        assert!(expand_slice("a/b.slice").is_err());
        assert!(expand_slice("nope").is_err());
    }

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
    }

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = DnsSpec {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&d),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
    }
}
