//! What a front end asks of the planner, in runtime terms: the CRI server translates its
//! protobuf messages into these, and `podrun run` translates a Pod ([`crate::pod::kube`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cgroups::{QosClass, Resources};
use crate::plan::ContainerKind;
use crate::rootfs::Propagation;
use crate::security::seccomp::SeccompProfile;

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

/// One line of /etc/hosts: an address and its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAlias {
    pub ip: String,
    pub hostnames: Vec<String>,
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
    /// resolv.conf of the pod; None copies the host's.
    pub dns: Option<DnsSpec>,
    /// Extra /etc/hosts entries (a Pod's `hostAliases`).
    pub host_aliases: Vec<HostAlias>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// kubelet's pod cgroup ("/kubepods/burstable/pod<uid>" or "kubepods-...slice").
    pub cgroup_parent: Option<String>,
    /// Without a cgroup parent, the pod cgroup goes under podrun's root by QoS class.
    pub qos: QosClass,
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
    /// Refuse to start a process that would run as uid 0 (or whose image user cannot be
    /// verified to be non-root).
    pub run_as_non_root: bool,
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
            run_as_non_root: false,
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
    /// Where the container runs in the pod's start order (CRI containers are all apps).
    pub kind: ContainerKind,
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
    /// Exec hooks the pod monitor runs (kubelet runs them itself through the CRI).
    pub post_start: Option<Vec<String>>,
    pub pre_stop: Option<Vec<String>>,
    /// Where the container may write its termination message; the planner provides
    /// an empty file there.
    pub termination_message_path: Option<String>,
}
