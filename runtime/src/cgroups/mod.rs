//! cgroups: one `CgroupManager` trait with cgroupfs v1, cgroupfs v2 and systemd backends.
//!
//! This module owns everything podrun does with cgroups: detecting the host layout
//! (legacy v1, hybrid v1 + empty unified mount, or unified v2) from
//! /proc/self/mountinfo, naming pod and container cgroups after Kubernetes QoS
//! classes, creating them with resource limits, moving processes in, reading usage
//! and OOM counters, freezing, and removing them. Filesystem access goes through
//! `fs::CgroupFs` and systemd through `systemd::SystemdBus`, both with fakes, so the
//! backends are unit-tested without root.
//!
//! On hybrid hosts the v1 controllers are used; the unified mount there carries no
//! controllers and is left alone.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod fs;
pub mod mountinfo;
pub mod systemd;
pub mod v1;
pub mod v2;

pub use fs::{CgroupFs, FakeFs, HostFs};
pub use mountinfo::{MountTable, UnifiedMount, V1Mount};
pub use systemd::{BusAccess, SystemdBus, SystemdManager};
pub use v1::V1Manager;
pub use v2::V2Manager;

/// Resource settings for one cgroup, in Kubernetes units already converted to the
/// kernel's (shares on the v1 scale 2..262144; the v2 backend converts to weight).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// cpu.shares (v1 scale). v2: converted to cpu.weight.
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per `cpu_period`; None = unlimited.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds (default 100000 when a quota is set).
    pub cpu_period: Option<u64>,
    /// Memory limit in bytes; None = unlimited.
    pub memory_limit: Option<i64>,
    /// Maximum number of tasks; None = unlimited.
    pub pids_limit: Option<i64>,
    /// cpuset.cpus, e.g. "0-1".
    pub cpuset_cpus: Option<String>,
    /// cpuset.mems.
    pub cpuset_mems: Option<String>,
    /// Deny device access except the standard devices (/dev/null, zero, full, random,
    /// urandom, tty, console, ptmx, pts), as runc's default device rules do. Unprivileged
    /// containers get this; the v1 devices controller enforces it.
    #[serde(default)]
    pub restrict_devices: bool,
    /// Devices allowed on top of the defaults when restricted (v1 `devices.allow`
    /// syntax, e.g. "c 10:200 rwm"): the container's CRI devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_rules: Vec<String>,
}

/// Device rules allowed in unprivileged containers (v1 `devices.allow` syntax): mknod of
/// anything, access only to the standard character devices.
pub const DEFAULT_DEVICE_RULES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// Default CFS period (µs) used when a quota is given without one.
pub const DEFAULT_CPU_PERIOD: u64 = 100_000;
/// Bounds of cpu.shares accepted by the kernel.
pub const MIN_CPU_SHARES: u64 = 2;
pub const MAX_CPU_SHARES: u64 = 262_144;
/// Default top-level cgroup name.
pub const DEFAULT_ROOT: &str = "podrun";
/// Where the cgroup filesystems are mounted on a normal host.
pub const DEFAULT_MOUNT_ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hierarchy {
    /// v1 controllers only.
    Legacy,
    /// v1 controllers plus a (controller-less) cgroup2 mount; podrun uses v1.
    Hybrid,
    /// cgroup2 only.
    Unified,
}

impl fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hierarchy::Legacy => "legacy",
            Hierarchy::Hybrid => "hybrid",
            Hierarchy::Unified => "unified",
        })
    }
}

/// The cgroup driver, as named in kubelet's and CRI's `cgroupDriver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        })
    }
}

impl FromStr for Driver {
    type Err = CgroupError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cgroupfs" => Ok(Driver::Cgroupfs),
            "systemd" => Ok(Driver::Systemd),
            _ => Err(CgroupError::UnknownDriver(s.to_string())),
        }
    }
}

/// Kubernetes pod QoS class, which decides the pod cgroup's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    #[default]
    BestEffort,
}

/// Lowercase name used in cgroup paths ("guaranteed", "burstable", "besteffort").
pub fn qos_class_name(q: QosClass) -> &'static str {
    match q {
        QosClass::Guaranteed => "guaranteed",
        QosClass::Burstable => "burstable",
        QosClass::BestEffort => "besteffort",
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        })
    }
}

/// Usage of one cgroup, in the units CRI's ContainerStats and PodSandboxStats use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CgroupStats {
    /// Cumulative CPU time in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory charged to the cgroup, page cache included.
    pub memory_usage_bytes: u64,
    /// Usage minus inactive file pages, floored at 0 (cAdvisor's working set, which the
    /// kubelet evicts on).
    pub memory_working_set_bytes: u64,
    /// Anonymous memory (v1 total_rss; v2 anon).
    pub memory_rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The memory limit; None when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// Tasks in the cgroup (pids.current).
    pub pids: u64,
    /// OOM kills inside the cgroup.
    pub oom_kills: u64,
}

/// v1 reports "no limit" as the largest page-aligned i64 (9223372036854771712 on 4 KiB
/// pages); anything that high means unlimited.
pub(crate) const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// Errors of the cgroup module; each variant names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading mount table {path}: {source}")]
    ReadMountinfo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing mountinfo line {line}: {reason}")]
    ParseMountinfo { line: usize, reason: String },
    #[error("no cgroup filesystem is mounted (neither cgroup v1 nor cgroup2 found in mountinfo)")]
    NoCgroupMounts,
    #[error("cgroup mount {mount_point} is outside the mount root {mount_root}")]
    MountOutsideRoot {
        mount_point: PathBuf,
        mount_root: PathBuf,
    },
    #[error("cgroup controller {controller} is not available on this host")]
    ControllerMissing { controller: String },
    #[error("unknown cgroup driver {0:?} (expected \"cgroupfs\" or \"systemd\")")]
    UnknownDriver(String),
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("creating cgroup directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {value:?} to {path}: {source}")]
    WriteFile {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error(
        "memory limit {limit} bytes for cgroup {path} is below its current usage of {usage} bytes"
    )]
    MemoryBelowUsage {
        path: String,
        limit: i64,
        usage: u64,
    },
    #[error("moving pid {pid} into cgroup {path}: {source}")]
    AddProcess {
        path: String,
        pid: i32,
        source: std::io::Error,
    },
    #[error("cgroup {path} does not exist")]
    NotFound { path: String },
    #[error("cgroup {path} still has processes {pids:?}; cannot remove it")]
    Busy { path: String, pids: Vec<i32> },
    #[error("removing cgroup directory {path}: {source}")]
    RemoveDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path} did not reach freezer state {wanted} (last seen {seen:?})")]
    FreezeTimeout {
        path: String,
        wanted: String,
        seen: String,
    },
    #[error("systemd cgroup driver unavailable: {reason}")]
    SystemdUnavailable { reason: String },
    #[error("systemd {step} of unit {unit}: {source}")]
    Systemd {
        step: &'static str,
        unit: String,
        source: systemd::BusError,
    },
    #[error("unit {unit} did not reach state {wanted} in time (last {seen:?})")]
    SystemdJobTimeout {
        unit: String,
        wanted: String,
        seen: Option<String>,
    },
}

/// One cgroup driver on one host layout.
pub trait CgroupManager: Send + Sync {
    fn driver(&self) -> Driver;
    fn hierarchy(&self) -> Hierarchy;
    /// Cgroup path (driver-specific string) for a pod. cgroupfs:
    /// "<root>/<qos, none for guaranteed>/pod<uid>"; systemd:
    /// "<root>.slice/<root>-<qos>.slice/<root>-<qos>-pod<uid with - as _>.slice".
    fn pod_path(&self, root: &str, qos: QosClass, pod_uid: &str) -> String;
    /// Cgroup path for a container inside a pod cgroup: cgroupfs "<pod_path>/<id>",
    /// systemd "<pod slice>:podrun:<id>" (scope podrun-<id>.scope in that slice).
    fn container_path(&self, pod_path: &str, container_id: &str) -> String;
    /// Create (idempotently) the cgroup and its parents in every managed hierarchy and
    /// apply `resources` to it.
    fn ensure(&self, path: &str, resources: &Resources) -> Result<(), CgroupError>;
    /// Move a process into the cgroup in every hierarchy.
    fn add_process(&self, path: &str, pid: i32) -> Result<(), CgroupError>;
    /// Apply `resources` to an existing cgroup (None fields lift limits).
    fn update(&self, path: &str, resources: &Resources) -> Result<(), CgroupError>;
    /// Usage counters and the memory limit of an existing cgroup (`NotFound` otherwise).
    fn stats(&self, path: &str) -> Result<CgroupStats, CgroupError>;
    /// OOM kill counter of this cgroup; 0 if unknown.
    fn oom_kills(&self, path: &str) -> Result<u64, CgroupError>;
    /// PIDs in the cgroup and its descendants, all hierarchies, deduped and sorted.
    /// Empty if the cgroup does not exist.
    fn pids(&self, path: &str) -> Result<Vec<i32>, CgroupError>;
    /// Remove the cgroup and its descendants in every hierarchy. Missing = Ok;
    /// remaining processes = `Busy` after a short retry.
    fn remove(&self, path: &str) -> Result<(), CgroupError>;
    /// Freeze or thaw every process of the cgroup.
    fn freeze(&self, path: &str, frozen: bool) -> Result<(), CgroupError>;
    /// Remove the cgroup only if it has no children and no processes (in every
    /// hierarchy); never touches anything below it. For cleaning up shared parents (QoS
    /// and root cgroups) once their last pod is gone. Ok(true) when it is gone.
    fn remove_if_empty(&self, path: &str) -> Result<bool, CgroupError>;
}

/// cgroupfs pod path: "<root>/<qos>/pod<uid>", Guaranteed pods directly under root.
pub fn cgroupfs_pod_path(root: &str, qos: QosClass, pod_uid: &str) -> String {
    let root = root.trim_matches('/');
    match qos {
        QosClass::Guaranteed => format!("{root}/pod{pod_uid}"),
        _ => format!("{root}/{}/pod{pod_uid}", qos_class_name(qos)),
    }
}

/// Where to find the cgroup mounts and the mount table.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Directory below which the cgroup mounts live (normally /sys/fs/cgroup). Mounts
    /// in mountinfo outside it are ignored; tests point it at a temp dir.
    pub mount_root: PathBuf,
    /// The mount table to read (normally /proc/self/mountinfo).
    pub mountinfo: PathBuf,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            mount_root: PathBuf::from(DEFAULT_MOUNT_ROOT),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        }
    }
}

fn read_mountinfo(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::ReadMountinfo {
        path: path.to_path_buf(),
        source,
    })
}

/// Detect this host's cgroup layout from /proc/self/mountinfo.
pub fn detect() -> Result<Hierarchy, CgroupError> {
    let text = read_mountinfo(&ManagerConfig::default().mountinfo)?;
    detect_from(&text).map(|(h, _)| h)
}

/// Detect the layout from mountinfo text, returning the cgroup mounts too.
pub fn detect_from(mountinfo: &str) -> Result<(Hierarchy, MountTable), CgroupError> {
    let table = mountinfo::parse_mountinfo(mountinfo)?;
    let hierarchy = table.hierarchy()?;
    Ok((hierarchy, table))
}

/// The cgroupfs backend of a host: v1 on legacy and hybrid hosts, v2 on unified ones.
/// The systemd driver keeps one too, for reads, freezing and what systemd leaves alone.
pub enum CgroupfsBackend {
    V1(V1Manager),
    V2(V2Manager),
}

impl CgroupfsBackend {
    /// The backend for a detected layout, over `fs` rooted at `mount_root`.
    pub fn from_mounts(
        hierarchy: Hierarchy,
        table: &MountTable,
        mount_root: &Path,
        fs: Arc<dyn CgroupFs>,
    ) -> Result<Self, CgroupError> {
        Ok(match hierarchy {
            Hierarchy::Legacy | Hierarchy::Hybrid => {
                CgroupfsBackend::V1(V1Manager::from_mounts(hierarchy, table, mount_root, fs)?)
            }
            Hierarchy::Unified => {
                CgroupfsBackend::V2(V2Manager::from_mounts(table, mount_root, fs)?)
            }
        })
    }

    pub fn manager(&self) -> &dyn CgroupManager {
        match self {
            CgroupfsBackend::V1(m) => m,
            CgroupfsBackend::V2(m) => m,
        }
    }

    pub fn into_manager(self) -> Box<dyn CgroupManager> {
        match self {
            CgroupfsBackend::V1(m) => Box::new(m),
            CgroupfsBackend::V2(m) => Box::new(m),
        }
    }

    /// Create directories only (v1: every hierarchy; v2: systemd already did).
    pub fn create_dirs(&self, path: &str) -> Result<(), CgroupError> {
        match self {
            CgroupfsBackend::V1(m) => m.create_dirs(path),
            CgroupfsBackend::V2(_) => Ok(()),
        }
    }

    /// Write only the cpuset fields of `res`.
    pub fn apply_cpuset(&self, path: &str, res: &Resources) -> Result<(), CgroupError> {
        if res.cpuset_cpus.is_none() && res.cpuset_mems.is_none() {
            return Ok(());
        }
        match self {
            CgroupfsBackend::V1(m) => m.apply_cpuset(path, res),
            CgroupfsBackend::V2(m) => m.apply_cpuset(path, res),
        }
    }
}

/// Build the manager for `driver` on this host: v1 cgroupfs on legacy and hybrid
/// hosts, v2 cgroupfs on unified ones, or systemd over the system bus.
pub fn new_manager(driver: Driver) -> Result<Box<dyn CgroupManager>, CgroupError> {
    new_manager_with(driver, &ManagerConfig::default())
}

/// `new_manager` with explicit mount root and mount table.
pub fn new_manager_with(
    driver: Driver,
    config: &ManagerConfig,
) -> Result<Box<dyn CgroupManager>, CgroupError> {
    build_manager(driver, config, BusAccess::InProcess)
}

/// `new_manager` for a process that clones container processes (the pod monitor,
/// `podrun oci run`) and so must stay single-threaded: the systemd driver speaks D-Bus
/// from a helper process. Call it while this process has one thread.
pub fn new_manager_single_threaded(driver: Driver) -> Result<Box<dyn CgroupManager>, CgroupError> {
    build_manager(driver, &ManagerConfig::default(), BusAccess::Helper)
}

fn build_manager(
    driver: Driver,
    config: &ManagerConfig,
    bus: BusAccess,
) -> Result<Box<dyn CgroupManager>, CgroupError> {
    let text = read_mountinfo(&config.mountinfo)?;
    let (hierarchy, table) = detect_from(&text)?;
    tracing::debug!(driver = %driver, hierarchy = %hierarchy, "cgroup layout detected");
    let fs: Arc<dyn CgroupFs> = Arc::new(HostFs::new(&config.mount_root));
    let backend = CgroupfsBackend::from_mounts(hierarchy, &table, &config.mount_root, fs)?;
    match driver {
        Driver::Cgroupfs => Ok(backend.into_manager()),
        Driver::Systemd => Ok(Box::new(SystemdManager::new(bus.connect()?, backend))),
    }
}

/// v2 cpu.weight from v1 cpu.shares (the conversion runc and the kubelet use):
/// 2 → 1, 1024 → 39, 262144 → 10000.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_CPU_SHARES, MAX_CPU_SHARES);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Remove the cgroups above `path` (QoS and root cgroups) that nothing uses any more,
/// stopping at the first one still in use.
pub fn remove_empty_parents(cgroups: &dyn CgroupManager, path: &str) {
    let mut current = path;
    while let Some((up, _)) = current.rsplit_once('/') {
        if up.is_empty() || !cgroups.remove_if_empty(up).unwrap_or(false) {
            break;
        }
        current = up;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_round_trips_through_strings() {
        assert_eq!(Driver::Cgroupfs.to_string(), "cgroupfs");
        assert_eq!(Driver::Systemd.to_string(), "systemd");
        assert_eq!("systemd".parse::<Driver>().unwrap(), Driver::Systemd);
        assert_eq!("CgroupFS".parse::<Driver>().unwrap(), Driver::Cgroupfs);
        assert!(matches!(
            "lxc".parse::<Driver>(),
            Err(CgroupError::UnknownDriver(_))
        ));
        assert_eq!(
            serde_json::to_string(&Driver::Systemd).unwrap(),
            "\"systemd\""
        );
    }

    #[test]
    fn qos_names_and_cgroupfs_paths() {
        assert_eq!(qos_class_name(QosClass::BestEffort), "besteffort");
        assert_eq!(
            cgroupfs_pod_path("podrun", QosClass::Burstable, "1234"),
            "podrun/burstable/pod1234"
        );
        assert_eq!(
            cgroupfs_pod_path("podrun", QosClass::Guaranteed, "1234"),
            "podrun/pod1234"
        );
        assert_eq!(
            cgroupfs_pod_path("/podrun-test-ab12/", QosClass::BestEffort, "u"),
            "podrun-test-ab12/besteffort/podu"
        );
    }

    #[test]
    fn shares_to_weight_matches_runc_conversion() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        // Out-of-range shares are clamped, not wrapped.
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(1_000_000), 10_000);
    }

    #[test]
    fn detect_from_this_machines_layout() {
        let (h, table) = detect_from(
            "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
             35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        )
        .unwrap();
        assert_eq!(h, Hierarchy::Hybrid);
        assert!(table.v1_for("memory").is_some());
    }

    #[test]
    fn detect_reads_the_live_mount_table() {
        // The layout read from mountinfo matches what the cgroup root shows: a
        // cgroup2 root lists its controllers; a hybrid host mounts cgroup2 beside v1.
        let root = Path::new("/sys/fs/cgroup");
        let expected = if root.join("cgroup.controllers").is_file() {
            Hierarchy::Unified
        } else if root.join("unified/cgroup.controllers").is_file() {
            Hierarchy::Hybrid
        } else {
            Hierarchy::Legacy
        };
        assert_eq!(detect().unwrap(), expected);
    }

    /// The mount root is configurable: a temp dir with plain directories stands in for
    /// the cgroup mounts (no control files, so every knob is skipped as absent).
    #[test]
    fn manager_over_a_temp_mount_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for h in ["cpu", "memory", "freezer", "unified"] {
            std::fs::create_dir(root.join(h)).unwrap();
        }
        std::fs::write(root.join("memory/cgroup.procs"), "").unwrap();
        let r = root.display();
        let mountinfo = root.join("mountinfo");
        std::fs::write(
            &mountinfo,
            format!(
                "1 0 0:1 / {r}/cpu rw - cgroup cgroup rw,cpu\n\
                 2 0 0:2 / {r}/memory rw - cgroup cgroup rw,memory\n\
                 3 0 0:3 / {r}/freezer rw - cgroup cgroup rw,freezer\n\
                 4 0 0:4 / {r}/unified rw - cgroup2 cgroup2 rw\n\
                 5 0 0:5 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
            ),
        )
        .unwrap();
        let config = ManagerConfig {
            mount_root: root.to_path_buf(),
            mountinfo,
        };
        let mgr = new_manager_with(Driver::Cgroupfs, &config).unwrap();
        assert_eq!(mgr.hierarchy(), Hierarchy::Hybrid);
        let pod = mgr.pod_path("podrun-t", QosClass::BestEffort, "x");
        let res = Resources {
            memory_limit: Some(1 << 20),
            ..Default::default()
        };
        mgr.ensure(&pod, &res).unwrap();
        for h in ["cpu", "memory", "freezer"] {
            assert!(root.join(h).join(&pod).is_dir(), "{h}");
        }
        // Outside the mount root (pids) and the unified mount are left alone.
        assert!(!root.join("unified/podrun-t").exists());
        mgr.remove("podrun-t").unwrap();
        for h in ["cpu", "memory", "freezer"] {
            assert!(!root.join(h).join("podrun-t").exists(), "{h}");
        }
        assert!(new_manager_with(
            Driver::Cgroupfs,
            &ManagerConfig {
                mount_root: root.to_path_buf(),
                mountinfo: root.join("missing"),
            }
        )
        .is_err());
    }

    #[test]
    fn systemd_driver_fails_clearly_without_systemd() {
        if std::path::Path::new("/run/systemd/system").exists() {
            return;
        }
        let err = match new_manager(Driver::Systemd) {
            Err(e) => e,
            Ok(_) => panic!("systemd manager created without systemd"),
        };
        assert!(
            matches!(err, CgroupError::SystemdUnavailable { .. }),
            "{err}"
        );
        eprintln!("{err}");
    }
}
