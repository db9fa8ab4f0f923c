//! The pod plan: everything the pod monitor needs to run a pod, fully resolved before the
//! monitor starts (images to layer dirs, users to numeric ids, env and command merged,
//! volumes to host paths). The monitor only executes it, so it stays small and never has
//! to parse YAML or read image metadata.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroups::Resources;
use crate::rootfs::RootfsSpec;
use crate::security::capabilities::CapabilitySet;
use crate::security::seccomp::SeccompProfile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ContainerKind {
    /// Runs to completion, in order, before the app containers.
    Init,
    /// Init container with `restartPolicy: Always`: started in init order, keeps running.
    Sidecar,
    #[default]
    App,
}

/// The process to run, as the kernel will see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub capabilities: CapabilitySet,
    pub no_new_privs: bool,
    /// Desired oom_score_adj; only ever raised (lowering needs CAP_SYS_RESOURCE).
    pub oom_score_adj: Option<i32>,
    pub tty: bool,
    /// Set the hostname (the process has its own UTS namespace). Pods set theirs once
    /// in the monitor instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPlan {
    pub id: String,
    pub name: String,
    pub kind: ContainerKind,
    /// The image as the pod names it, and the resolved image id.
    pub image: String,
    pub image_id: String,
    pub rootfs: RootfsSpec,
    pub process: ProcessSpec,
    pub seccomp: SeccompProfile,
    pub cgroup_path: String,
    pub resources: Resources,
    /// Signal number sent on stop (image StopSignal, else SIGTERM).
    pub stop_signal: i32,
    /// preStop exec hook command.
    pub pre_stop: Option<Vec<String>>,
    /// postStart exec hook command.
    pub post_start: Option<Vec<String>>,
    /// Host path of the file bind-mounted at terminationMessagePath.
    pub termination_message: Option<PathBuf>,
    /// Absolute path of the CRI log file (CRI `log_directory` joined with `log_path`).
    /// When set it is used instead of `<log_dir>/<name>/<restart>.log`.
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    /// Keep a stdin open for the container (the monitor holds its write end, for attach).
    #[serde(default)]
    pub stdin: bool,
    /// Close the container's stdin once the first attached client closes its stdin.
    #[serde(default)]
    pub stdin_once: bool,
}

/// A tmpfs the monitor mounts in its own mount namespace (emptyDir with medium Memory,
/// /dev/shm), so it vanishes with the monitor whatever happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsPlan {
    pub path: PathBuf,
    pub size_bytes: Option<u64>,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub hostname: String,
    pub host_network: bool,
    pub host_ipc: bool,
    pub host_pid: bool,
    pub share_process_namespace: bool,
    pub restart_policy: RestartPolicy,
    pub termination_grace_period_secs: u64,
    pub cgroup_driver: crate::cgroups::Driver,
    pub cgroup_path: String,
    pub pod_resources: Resources,
    pub log_dir: PathBuf,
    pub state_dir: PathBuf,
    pub data_dir: PathBuf,
    pub tmpfs: Vec<TmpfsPlan>,
    /// Containers in start order: init and sidecars as listed, then app containers.
    pub containers: Vec<ContainerPlan>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The manifest the pod came from, for `podrun down FILE`.
    pub source: Option<PathBuf>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The pod's CNI attachment and pinned network namespace, when it has one.
    #[serde(default)]
    pub network: Option<crate::network::PodNetwork>,
    /// First delay of the restart back-off (kubelet: 10 s, doubling to 5 min).
    #[serde(default = "default_backoff_base")]
    pub backoff_base_ms: u64,
    /// Containers are driven one by one by the CRI agent: none at start, each added by
    /// CreateContainer and started by StartContainer, never restarted or auto-stopped by
    /// the monitor (kubelet does restarts itself). The monitor stays until
    /// `Stop { remove: true }`.
    #[serde(default)]
    pub managed: bool,
    /// Namespaced sysctls (`net.*`, `kernel.shm*`, ...), written by the monitor to
    /// `/proc/sys/<key with '.' as '/'>` once it is in the pod's namespaces.
    #[serde(default)]
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// The pod cgroup is the caller's (kubelet's cgroup_parent): teardown removes only the
    /// container cgroups below it, never the pod cgroup or its parents.
    #[serde(default)]
    pub external_cgroup: bool,
    /// A CRI sandbox's log directory is podrun's default (the caller gave none), so it
    /// goes with the sandbox; a LogDirectory the caller gave is the caller's (kubelet
    /// removes it with the pod). `podrun run` pods always own theirs.
    #[serde(default)]
    pub owns_log_dir: bool,
}

fn default_backoff_base() -> u64 {
    10_000
}

impl PodPlan {
    pub fn container(&self, name: &str) -> Option<&ContainerPlan> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Where a container's output goes for its `restart`-th run: the CRI log path when
    /// the caller chose one, else `<log_dir>/<name>/<restart>.log`.
    pub fn log_path(&self, c: &ContainerPlan, restart: u32) -> PathBuf {
        match &c.log_path {
            Some(p) => p.clone(),
            None => self.log_dir.join(&c.name).join(format!("{restart}.log")),
        }
    }
}

/// The file under /proc/sys that sets sysctl `key`: dots separate the components unless
/// the key already uses slashes (Kubernetes accepts both, e.g. for interface names with
/// dots). Keys that could leave /proc/sys are refused.
pub fn sysctl_path(key: &str) -> Option<PathBuf> {
    if key.is_empty() {
        return None;
    }
    let rel = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    let ok = rel
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then(|| PathBuf::from("/proc/sys").join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_map_under_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        // Slashes keep dots inside a component (an interface named eth0.100).
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in [
            "",
            "net..ipv4",
            "net/../../etc/passwd",
            "/net/ipv4",
            "net.ipv4.",
        ] {
            assert_eq!(sysctl_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn new_fields_default_when_absent() {
        let c = ContainerPlan {
            id: "c".into(),
            name: "web".into(),
            kind: ContainerKind::App,
            image: "busybox".into(),
            image_id: "sha256:1".into(),
            rootfs: RootfsSpec {
                rootfs: "/r".into(),
                layers: Vec::new(),
                upper: "/c/upper".into(),
                work: "/c/work".into(),
                readonly: false,
                privileged: false,
                mounts: Vec::new(),
                dev_shm: None,
                masked_paths: Vec::new(),
                readonly_paths: Vec::new(),
            },
            process: ProcessSpec::default(),
            seccomp: SeccompProfile::Unconfined,
            cgroup_path: "/p/c".into(),
            resources: Resources::default(),
            stop_signal: 15,
            pre_stop: None,
            post_start: None,
            termination_message: None,
            log_path: Some("/x.log".into()),
            stdin: true,
            stdin_once: true,
        };
        let mut json = serde_json::to_value(&c).unwrap();
        for k in ["log_path", "stdin", "stdin_once"] {
            json.as_object_mut().unwrap().remove(k);
        }
        let old: ContainerPlan = serde_json::from_value(json).unwrap();
        assert_eq!(
            (old.log_path, old.stdin, old.stdin_once),
            (None, false, false)
        );
        let c = ContainerPlan {
            log_path: None,
            ..c
        };
        let mut pod = PodPlan {
            id: "p".into(),
            name: "pod".into(),
            namespace: "default".into(),
            uid: "u".into(),
            hostname: "pod".into(),
            host_network: false,
            host_ipc: false,
            host_pid: false,
            share_process_namespace: false,
            restart_policy: RestartPolicy::Always,
            termination_grace_period_secs: 30,
            cgroup_driver: crate::cgroups::Driver::Cgroupfs,
            cgroup_path: "/p".into(),
            pod_resources: Resources::default(),
            log_dir: "/logs/pod".into(),
            state_dir: "/state/p".into(),
            data_dir: "/data/p".into(),
            tmpfs: Vec::new(),
            containers: vec![c.clone()],
            labels: Default::default(),
            annotations: Default::default(),
            source: None,
            created_at: chrono::Utc::now(),
            network: None,
            backoff_base_ms: 10,
            managed: true,
            sysctls: [("kernel.shm_rmid_forced".to_owned(), "1".to_owned())].into(),
            external_cgroup: false,
            owns_log_dir: false,
        };
        let mut json = serde_json::to_value(&pod).unwrap();
        let obj = json.as_object_mut().unwrap();
        for k in ["managed", "sysctls", "external_cgroup", "owns_log_dir"] {
            obj.remove(k);
        }
        let old: PodPlan = serde_json::from_value(json).unwrap();
        assert!(!old.managed && old.sysctls.is_empty() && !old.owns_log_dir);
        assert_eq!(
            pod.log_path(&c, 2),
            PathBuf::from("/logs/pod/web/2.log"),
            "kubelet-style path without a CRI log path"
        );
        pod.containers[0].log_path = Some("/var/log/pods/x/web/0.log".into());
        assert_eq!(
            pod.log_path(&pod.containers[0], 2),
            PathBuf::from("/var/log/pods/x/web/0.log")
        );
    }
}
