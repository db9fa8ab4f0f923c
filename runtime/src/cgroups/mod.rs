//! cgroups: one `CgroupManager` trait with cgroupfs v1, cgroupfs v2 and systemd backends.

use serde::{Deserialize, Serialize};

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
}
