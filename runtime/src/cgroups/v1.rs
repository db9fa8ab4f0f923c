//! cgroupfs driver on cgroup v1 (legacy and hybrid hosts): one directory per
//! hierarchy (cpu, cpuacct, cpuset, memory, pids, freezer, ...), each cgroup created in
//! all of them, limits written to the controller that owns them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fs::{
    clean_path, keyed_value, mkdir_all, parse_u64, read_optional, remove_trees, subtree_pids,
    write_optional, CgroupFs,
};
use super::mountinfo::{relative_to, MountTable};
use super::{
    cgroupfs_pod_path, CgroupError, CgroupManager, CgroupStats, Driver, Hierarchy, QosClass,
    Resources, DEFAULT_CPU_PERIOD, MAX_CPU_SHARES, MIN_CPU_SHARES, V1_UNLIMITED_THRESHOLD,
};

/// How long freeze waits for the kernel to settle FREEZING into FROZEN.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// One mounted v1 hierarchy, its directory relative to the filesystem root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Dir {
    pub dir: PathBuf,
    pub controllers: Vec<String>,
}

impl V1Dir {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The v1 cgroupfs backend.
pub struct V1Manager {
    hierarchy: Hierarchy,
    fs: Arc<dyn CgroupFs>,
    dirs: Vec<V1Dir>,
}

impl V1Manager {
    /// A manager over explicit hierarchy directories (relative to `fs`'s root).
    pub fn new(hierarchy: Hierarchy, fs: Arc<dyn CgroupFs>, dirs: Vec<V1Dir>) -> Self {
        V1Manager {
            hierarchy,
            fs,
            dirs,
        }
    }

    /// A manager over the v1 mounts of `table` that lie below `mount_root`.
    pub fn from_mounts(
        hierarchy: Hierarchy,
        table: &MountTable,
        mount_root: &Path,
        fs: Arc<dyn CgroupFs>,
    ) -> Result<Self, CgroupError> {
        let mut dirs = Vec::new();
        for m in &table.v1 {
            match relative_to(&m.mount_point, mount_root) {
                Some(dir) => dirs.push(V1Dir {
                    dir,
                    controllers: m.controllers.clone(),
                }),
                None => tracing::debug!(
                    mount_point = %m.mount_point.display(),
                    mount_root = %mount_root.display(),
                    "ignoring v1 hierarchy outside the mount root"
                ),
            }
        }
        if !dirs.iter().any(|d| d.has("memory") || d.has("cpu")) {
            let mount_point = table
                .v1_for("memory")
                .map(|m| m.mount_point.clone())
                .unwrap_or_default();
            return Err(CgroupError::MountOutsideRoot {
                mount_point,
                mount_root: mount_root.to_path_buf(),
            });
        }
        Ok(Self::new(hierarchy, fs, dirs))
    }

    /// Directories of the hierarchies this manager writes to.
    pub fn hierarchy_dirs(&self) -> &[V1Dir] {
        &self.dirs
    }

    /// The cgroup's directory in the hierarchy carrying `controller`.
    fn dir_of(&self, controller: &str, rel: &Path) -> Option<PathBuf> {
        self.dirs
            .iter()
            .find(|d| d.has(controller))
            .map(|d| d.dir.join(rel))
    }

    /// Create the cgroup's directories in every hierarchy (cpusets filled from the
    /// parents) without touching limits. The systemd driver uses this for the v1
    /// hierarchies systemd does not manage (cpuset, freezer, ...).
    pub fn create_dirs(&self, path: &str) -> Result<(), CgroupError> {
        let rel = clean_path(path)?;
        for h in &self.dirs {
            let cpuset = h.has("cpuset");
            mkdir_all(
                &*self.fs,
                &h.dir,
                &rel,
                |_| Ok(()),
                |parent, child| {
                    if cpuset {
                        self.fill_cpuset(parent, child)?;
                    }
                    Ok(())
                },
            )?;
        }
        Ok(())
    }

    /// Write only the cpuset fields of `res`.
    pub fn apply_cpuset(&self, path: &str, res: &Resources) -> Result<(), CgroupError> {
        let rel = clean_path(path)?;
        if let Some(dir) = self.dir_of("cpuset", &rel) {
            if let Some(cpus) = &res.cpuset_cpus {
                write_optional(&*self.fs, &dir.join("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = &res.cpuset_mems {
                write_optional(&*self.fs, &dir.join("cpuset.mems"), mems)?;
            }
        }
        Ok(())
    }

    fn exists_anywhere(&self, rel: &Path) -> bool {
        self.dirs.iter().any(|d| self.fs.exists(&d.dir.join(rel)))
    }

    /// A fresh cpuset cgroup has empty cpus/mems and refuses tasks until they are set:
    /// copy them from the parent.
    fn fill_cpuset(&self, parent: &Path, child: &Path) -> Result<(), CgroupError> {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let Some(current) = read_optional(&*self.fs, &child.join(file))? else {
                continue;
            };
            if !current.trim().is_empty() {
                continue;
            }
            if let Some(inherited) = read_optional(&*self.fs, &parent.join(file))? {
                if !inherited.trim().is_empty() {
                    write_optional(&*self.fs, &child.join(file), inherited.trim())?;
                }
            }
        }
        Ok(())
    }

    fn apply_cpu(&self, dir: &Path, res: &Resources) -> Result<(), CgroupError> {
        let fs = &*self.fs;
        if let Some(shares) = res.cpu_shares {
            let shares = shares.clamp(MIN_CPU_SHARES, MAX_CPU_SHARES);
            write_optional(fs, &dir.join("cpu.shares"), &shares.to_string())?;
        }
        let (quota, period) = v1_cfs(res);
        let quota_file = dir.join("cpu.cfs_quota_us");
        let quota_value = quota.to_string();
        let Some(period) = period else {
            write_optional(fs, &quota_file, &quota_value)?;
            return Ok(());
        };
        // The kernel checks quota/period against the parent on every write, so one
        // order can fail where the other passes: try period first, then the reverse.
        let period_file = dir.join("cpu.cfs_period_us");
        match write_optional(fs, &period_file, &period.to_string()) {
            Ok(_) => {
                write_optional(fs, &quota_file, &quota_value)?;
            }
            Err(CgroupError::WriteFile { ref source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                write_optional(fs, &quota_file, &quota_value)?;
                write_optional(fs, &period_file, &period.to_string())?;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn apply_memory(&self, path: &str, dir: &Path, res: &Resources) -> Result<(), CgroupError> {
        let fs = &*self.fs;
        let file = dir.join("memory.limit_in_bytes");
        let Some(limit) = res.memory_limit.filter(|l| *l > 0) else {
            write_optional(fs, &file, "-1")?;
            return Ok(());
        };
        let working_set = self.memory_working_set(dir)?;
        if (limit as u64) < working_set {
            return Err(CgroupError::MemoryBelowUsage {
                path: path.to_string(),
                limit,
                usage: working_set,
            });
        }
        match write_optional(fs, &file, &limit.to_string()) {
            // The kernel answers EBUSY when it cannot reclaim down to the new limit.
            Err(CgroupError::WriteFile { ref source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) =>
            {
                let usage = read_optional(fs, &dir.join("memory.usage_in_bytes"))?
                    .and_then(|s| parse_u64(&s))
                    .unwrap_or(0);
                Err(CgroupError::MemoryBelowUsage {
                    path: path.to_string(),
                    limit,
                    usage,
                })
            }
            other => other.map(|_| ()),
        }
    }

    fn memory_working_set(&self, dir: &Path) -> Result<u64, CgroupError> {
        let usage = read_optional(&*self.fs, &dir.join("memory.usage_in_bytes"))?
            .and_then(|s| parse_u64(&s))
            .unwrap_or(0);
        let stat = read_optional(&*self.fs, &dir.join("memory.stat"))?.unwrap_or_default();
        let inactive = keyed_value(&stat, "total_inactive_file")
            .or_else(|| keyed_value(&stat, "inactive_file"))
            .unwrap_or(0);
        Ok(usage.saturating_sub(inactive))
    }
}

/// The v1 CFS values to write: quota (-1 = unlimited) and the period, if any.
pub fn v1_cfs(res: &Resources) -> (i64, Option<u64>) {
    match res.cpu_quota.filter(|q| *q > 0) {
        Some(q) => (q, Some(res.cpu_period.unwrap_or(DEFAULT_CPU_PERIOD))),
        None => (-1, res.cpu_period),
    }
}

/// pids.max value: non-positive limits mean unlimited, as in Kubernetes.
pub fn pids_max(limit: Option<i64>) -> String {
    match limit.filter(|l| *l > 0) {
        Some(l) => l.to_string(),
        None => "max".to_string(),
    }
}

fn read_counter(fs: &dyn CgroupFs, file: &Path) -> Result<u64, CgroupError> {
    Ok(read_optional(fs, file)?
        .and_then(|s| parse_u64(&s))
        .unwrap_or(0))
}

impl CgroupManager for V1Manager {
    fn driver(&self) -> Driver {
        Driver::Cgroupfs
    }

    fn hierarchy(&self) -> Hierarchy {
        self.hierarchy
    }

    fn pod_path(&self, root: &str, qos: QosClass, pod_uid: &str) -> String {
        cgroupfs_pod_path(root, qos, pod_uid)
    }

    fn container_path(&self, pod_path: &str, container_id: &str) -> String {
        format!("{}/{container_id}", pod_path.trim_end_matches('/'))
    }

    fn ensure(&self, path: &str, resources: &Resources) -> Result<(), CgroupError> {
        self.create_dirs(path)?;
        self.update(path, resources)
    }

    fn add_process(&self, path: &str, pid: i32) -> Result<(), CgroupError> {
        let rel = clean_path(path)?;
        for h in &self.dirs {
            let procs = h.dir.join(&rel).join("cgroup.procs");
            self.fs
                .write(&procs, &pid.to_string())
                .map_err(|source| match source.kind() {
                    io::ErrorKind::NotFound => CgroupError::NotFound {
                        path: path.to_string(),
                    },
                    _ => CgroupError::AddProcess {
                        path: path.to_string(),
                        pid,
                        source,
                    },
                })?;
        }
        tracing::debug!(cgroup = %path, pid, "process added to cgroup");
        Ok(())
    }

    fn update(&self, path: &str, resources: &Resources) -> Result<(), CgroupError> {
        let rel = clean_path(path)?;
        if !self.exists_anywhere(&rel) {
            return Err(CgroupError::NotFound {
                path: path.to_string(),
            });
        }
        let fs = &*self.fs;
        self.apply_cpuset(path, resources)?;
        match self.dir_of("cpu", &rel) {
            Some(dir) => self.apply_cpu(&dir, resources)?,
            None => tracing::debug!(cgroup = %path, "no cpu hierarchy, cpu limits skipped"),
        }
        match self.dir_of("memory", &rel) {
            Some(dir) => self.apply_memory(path, &dir, resources)?,
            None => tracing::debug!(cgroup = %path, "no memory hierarchy, memory limit skipped"),
        }
        match self.dir_of("pids", &rel) {
            Some(dir) => {
                write_optional(fs, &dir.join("pids.max"), &pids_max(resources.pids_limit))?;
            }
            None => tracing::debug!(cgroup = %path, "no pids hierarchy, pids limit skipped"),
        }
        if resources.restrict_devices {
            if let Some(dir) = self.dir_of("devices", &rel) {
                write_optional(fs, &dir.join("devices.deny"), "a")?;
                for rule in crate::cgroups::DEFAULT_DEVICE_RULES {
                    write_optional(fs, &dir.join("devices.allow"), rule)?;
                }
                for rule in &resources.device_rules {
                    write_optional(fs, &dir.join("devices.allow"), rule)?;
                }
            }
        }
        Ok(())
    }

    fn stats(&self, path: &str) -> Result<CgroupStats, CgroupError> {
        let rel = clean_path(path)?;
        if !self.exists_anywhere(&rel) {
            return Err(CgroupError::NotFound {
                path: path.to_string(),
            });
        }
        let fs = &*self.fs;
        let mut stats = CgroupStats::default();
        if let Some(dir) = self.dir_of("cpuacct", &rel) {
            stats.cpu_usage_ns = read_counter(fs, &dir.join("cpuacct.usage"))?;
        }
        if let Some(dir) = self.dir_of("memory", &rel) {
            stats.memory_usage_bytes = read_counter(fs, &dir.join("memory.usage_in_bytes"))?;
            stats.memory_working_set_bytes = self.memory_working_set(&dir)?;
            let stat = read_optional(fs, &dir.join("memory.stat"))?.unwrap_or_default();
            // total_* include descendants; the plain keys only this cgroup.
            let get = |k: &str| {
                keyed_value(&stat, &format!("total_{k}"))
                    .or_else(|| keyed_value(&stat, k))
                    .unwrap_or(0)
            };
            stats.memory_rss_bytes = get("rss");
            stats.page_faults = get("pgfault");
            stats.major_page_faults = get("pgmajfault");
            stats.memory_limit_bytes = read_optional(fs, &dir.join("memory.limit_in_bytes"))?
                .and_then(|s| parse_u64(&s))
                .filter(|l| *l < V1_UNLIMITED_THRESHOLD);
        }
        stats.oom_kills = self.oom_kills(path)?;
        if let Some(dir) = self.dir_of("pids", &rel) {
            stats.pids = read_counter(fs, &dir.join("pids.current"))?;
        }
        Ok(stats)
    }

    fn oom_kills(&self, path: &str) -> Result<u64, CgroupError> {
        let rel = clean_path(path)?;
        let Some(dir) = self.dir_of("memory", &rel) else {
            return Ok(0);
        };
        let text = read_optional(&*self.fs, &dir.join("memory.oom_control"))?;
        Ok(text.and_then(|t| keyed_value(&t, "oom_kill")).unwrap_or(0))
    }

    fn pids(&self, path: &str) -> Result<Vec<i32>, CgroupError> {
        let rel = clean_path(path)?;
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .flat_map(|h| subtree_pids(&*self.fs, &h.dir.join(&rel)))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    fn remove(&self, path: &str) -> Result<(), CgroupError> {
        let rel = clean_path(path)?;
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|h| h.dir.join(&rel)).collect();
        remove_trees(&*self.fs, &dirs, path)?;
        tracing::debug!(cgroup = %path, "cgroup removed");
        Ok(())
    }

    fn remove_if_empty(&self, path: &str) -> Result<bool, CgroupError> {
        let rel = clean_path(path)?;
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|h| h.dir.join(&rel)).collect();
        Ok(crate::cgroups::fs::remove_dirs_if_empty(&*self.fs, &dirs))
    }

    fn freeze(&self, path: &str, frozen: bool) -> Result<(), CgroupError> {
        let rel = clean_path(path)?;
        let dir = self
            .dir_of("freezer", &rel)
            .ok_or_else(|| CgroupError::ControllerMissing {
                controller: "freezer".to_string(),
            })?;
        if !self.fs.exists(&dir) {
            return Err(CgroupError::NotFound {
                path: path.to_string(),
            });
        }
        let file = dir.join("freezer.state");
        let wanted = if frozen { "FROZEN" } else { "THAWED" };
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        loop {
            // Re-writing while FREEZING pushes the kernel on: a task in an
            // uninterruptible sleep can otherwise stall the transition.
            self.fs
                .write(&file, wanted)
                .map_err(|source| CgroupError::WriteFile {
                    path: file.clone(),
                    value: wanted.to_string(),
                    source,
                })?;
            let seen = read_optional(&*self.fs, &file)?.unwrap_or_default();
            let seen = seen.trim();
            if seen == wanted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::FreezeTimeout {
                    path: path.to_string(),
                    wanted: wanted.to_string(),
                    seen: seen.to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests;
