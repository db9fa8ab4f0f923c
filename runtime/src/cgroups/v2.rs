//! cgroupfs driver on cgroup v2 (unified hosts): a single tree, controllers enabled
//! top-down through each parent's cgroup.subtree_control, v1-scale shares converted to
//! cpu.weight.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fs::{
    clean_path, keyed_value, mkdir_all, parse_u64, read_optional, remove_trees, subtree_pids,
    write_optional, CgroupFs,
};
use super::mountinfo::{relative_to, MountTable};
use super::v1::pids_max;
use super::{
    cgroupfs_pod_path, shares_to_weight, CgroupError, CgroupManager, CgroupStats, Driver,
    Hierarchy, QosClass, Resources, DEFAULT_CPU_PERIOD,
};

/// Controllers podrun enables for its subtree, when the kernel offers them.
const WANTED_CONTROLLERS: [&str; 6] = ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"];

const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The v2 cgroupfs backend.
pub struct V2Manager {
    fs: Arc<dyn CgroupFs>,
    /// The unified mount, relative to `fs`'s root ("" when it is the root itself).
    dir: PathBuf,
}

/// cpu.max value: "<quota|max> <period>"; a bare "max" keeps the current period.
pub fn cpu_max(res: &Resources) -> String {
    match res.cpu_quota.filter(|q| *q > 0) {
        Some(q) => format!("{q} {}", res.cpu_period.unwrap_or(DEFAULT_CPU_PERIOD)),
        None => match res.cpu_period {
            Some(p) => format!("max {p}"),
            None => "max".to_string(),
        },
    }
}

impl V2Manager {
    pub fn new(fs: Arc<dyn CgroupFs>, dir: impl Into<PathBuf>) -> Self {
        V2Manager {
            fs,
            dir: dir.into(),
        }
    }

    /// A manager over the unified mount of `table`, which must lie below `mount_root`.
    pub fn from_mounts(
        table: &MountTable,
        mount_root: &Path,
        fs: Arc<dyn CgroupFs>,
    ) -> Result<Self, CgroupError> {
        let unified = table.unified.as_ref().ok_or(CgroupError::NoCgroupMounts)?;
        let dir = relative_to(&unified.mount_point, mount_root).ok_or_else(|| {
            CgroupError::MountOutsideRoot {
                mount_point: unified.mount_point.clone(),
                mount_root: mount_root.to_path_buf(),
            }
        })?;
        Ok(Self::new(fs, dir))
    }

    /// Write only the cpuset fields of `res` (the systemd driver leaves cpusets to
    /// cgroupfs).
    pub fn apply_cpuset(&self, path: &str, res: &Resources) -> Result<(), CgroupError> {
        let dir = self.existing_dir(path)?;
        if let Some(cpus) = &res.cpuset_cpus {
            write_optional(&*self.fs, &dir.join("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = &res.cpuset_mems {
            write_optional(&*self.fs, &dir.join("cpuset.mems"), mems)?;
        }
        Ok(())
    }

    fn existing_dir(&self, path: &str) -> Result<PathBuf, CgroupError> {
        let dir = self.dir.join(clean_path(path)?);
        if !self.fs.exists(&dir) {
            return Err(CgroupError::NotFound {
                path: path.to_string(),
            });
        }
        Ok(dir)
    }

    /// Enable in `parent`'s subtree_control every wanted controller it offers, so its
    /// children get the knobs. Failures are logged: the knob writes that follow skip
    /// what is missing.
    fn enable_controllers(&self, parent: &Path) -> Result<(), CgroupError> {
        let fs = &*self.fs;
        let Some(available) = read_optional(fs, &parent.join("cgroup.controllers"))? else {
            return Ok(());
        };
        let enabled =
            read_optional(fs, &parent.join("cgroup.subtree_control"))?.unwrap_or_default();
        let missing: Vec<&str> = WANTED_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let file = parent.join("cgroup.subtree_control");
        let all: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
        if fs.write(&file, &all.join(" ")).is_ok() {
            return Ok(());
        }
        // One refused controller fails the whole write; enable the rest one by one.
        for c in missing {
            if let Err(e) = fs.write(&file, &format!("+{c}")) {
                tracing::warn!(dir = %parent.display(), controller = c, error = %e, "cannot enable cgroup controller");
            }
        }
        Ok(())
    }

    fn memory_working_set(&self, dir: &Path) -> Result<(u64, u64), CgroupError> {
        let usage = read_optional(&*self.fs, &dir.join("memory.current"))?
            .and_then(|s| parse_u64(&s))
            .unwrap_or(0);
        let stat = read_optional(&*self.fs, &dir.join("memory.stat"))?.unwrap_or_default();
        let inactive = keyed_value(&stat, "inactive_file").unwrap_or(0);
        Ok((usage, usage.saturating_sub(inactive)))
    }
}

impl CgroupManager for V2Manager {
    fn driver(&self) -> Driver {
        Driver::Cgroupfs
    }

    fn hierarchy(&self) -> Hierarchy {
        Hierarchy::Unified
    }

    fn pod_path(&self, root: &str, qos: QosClass, pod_uid: &str) -> String {
        cgroupfs_pod_path(root, qos, pod_uid)
    }

    fn container_path(&self, pod_path: &str, container_id: &str) -> String {
        format!("{}/{container_id}", pod_path.trim_end_matches('/'))
    }

    fn ensure(&self, path: &str, resources: &Resources) -> Result<(), CgroupError> {
        let rel = clean_path(path)?;
        mkdir_all(
            &*self.fs,
            &self.dir,
            &rel,
            |parent| self.enable_controllers(parent),
            |_, _| Ok(()),
        )?;
        self.update(path, resources)
    }

    fn add_process(&self, path: &str, pid: i32) -> Result<(), CgroupError> {
        let dir = self.existing_dir(path)?;
        self.fs
            .write(&dir.join("cgroup.procs"), &pid.to_string())
            .map_err(|source| CgroupError::AddProcess {
                path: path.to_string(),
                pid,
                source,
            })?;
        tracing::debug!(cgroup = %path, pid, "process added to cgroup");
        Ok(())
    }

    fn update(&self, path: &str, resources: &Resources) -> Result<(), CgroupError> {
        let dir = self.existing_dir(path)?;
        let fs = &*self.fs;
        self.apply_cpuset(path, resources)?;
        if let Some(shares) = resources.cpu_shares {
            write_optional(
                fs,
                &dir.join("cpu.weight"),
                &shares_to_weight(shares).to_string(),
            )?;
        }
        write_optional(fs, &dir.join("cpu.max"), &cpu_max(resources))?;
        match resources.memory_limit.filter(|l| *l > 0) {
            Some(limit) => {
                // v2 does not refuse a limit below usage: it reclaims and then OOM-kills
                // inside the cgroup. Refuse here instead, ignoring reclaimable cache.
                let (_, working_set) = self.memory_working_set(&dir)?;
                if (limit as u64) < working_set {
                    return Err(CgroupError::MemoryBelowUsage {
                        path: path.to_string(),
                        limit,
                        usage: working_set,
                    });
                }
                write_optional(fs, &dir.join("memory.max"), &limit.to_string())?;
            }
            None => {
                write_optional(fs, &dir.join("memory.max"), "max")?;
            }
        }
        write_optional(fs, &dir.join("pids.max"), &pids_max(resources.pids_limit))?;
        Ok(())
    }

    fn stats(&self, path: &str) -> Result<CgroupStats, CgroupError> {
        let dir = self.existing_dir(path)?;
        let fs = &*self.fs;
        let cpu = read_optional(fs, &dir.join("cpu.stat"))?.unwrap_or_default();
        let (usage, working_set) = self.memory_working_set(&dir)?;
        let mem = read_optional(fs, &dir.join("memory.stat"))?.unwrap_or_default();
        let key = |k: &str| keyed_value(&mem, k).unwrap_or(0);
        Ok(CgroupStats {
            cpu_usage_ns: keyed_value(&cpu, "usage_usec")
                .unwrap_or(0)
                .saturating_mul(1000),
            memory_usage_bytes: usage,
            memory_working_set_bytes: working_set,
            memory_rss_bytes: key("anon"),
            page_faults: key("pgfault"),
            major_page_faults: key("pgmajfault"),
            // "max" does not parse as a number: unlimited.
            memory_limit_bytes: read_optional(fs, &dir.join("memory.max"))?
                .and_then(|s| parse_u64(&s)),
            pids: read_optional(fs, &dir.join("pids.current"))?
                .and_then(|s| parse_u64(&s))
                .unwrap_or(0),
            oom_kills: self.oom_kills(path)?,
        })
    }

    fn oom_kills(&self, path: &str) -> Result<u64, CgroupError> {
        let dir = self.dir.join(clean_path(path)?);
        let events = read_optional(&*self.fs, &dir.join("memory.events"))?;
        Ok(events
            .and_then(|e| keyed_value(&e, "oom_kill"))
            .unwrap_or(0))
    }

    fn pids(&self, path: &str) -> Result<Vec<i32>, CgroupError> {
        let dir = self.dir.join(clean_path(path)?);
        let mut pids = subtree_pids(&*self.fs, &dir);
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    fn remove(&self, path: &str) -> Result<(), CgroupError> {
        let dir = self.dir.join(clean_path(path)?);
        remove_trees(&*self.fs, &[dir], path)?;
        tracing::debug!(cgroup = %path, "cgroup removed");
        Ok(())
    }

    fn remove_if_empty(&self, path: &str) -> Result<bool, CgroupError> {
        let dir = self.dir.join(clean_path(path)?);
        Ok(crate::cgroups::fs::remove_dirs_if_empty(&*self.fs, &[dir]))
    }

    fn freeze(&self, path: &str, frozen: bool) -> Result<(), CgroupError> {
        let dir = self.existing_dir(path)?;
        let file = dir.join("cgroup.freeze");
        let value = if frozen { "1" } else { "0" };
        self.fs
            .write(&file, value)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => CgroupError::ControllerMissing {
                    controller: "freezer".to_string(),
                },
                _ => CgroupError::WriteFile {
                    path: file.clone(),
                    value: value.to_string(),
                    source,
                },
            })?;
        // cgroup.events reports "frozen 1" once every task has stopped.
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        let wanted = u64::from(frozen);
        loop {
            let events = read_optional(&*self.fs, &dir.join("cgroup.events"))?;
            let seen = events.as_deref().and_then(|e| keyed_value(e, "frozen"));
            if seen.is_none_or(|s| s == wanted) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::FreezeTimeout {
                    path: path.to_string(),
                    wanted: format!("frozen {wanted}"),
                    seen: format!("frozen {}", seen.unwrap_or_default()),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fs::FakeFs;
    use super::*;

    /// A unified host whose cgroup2 mount is the fs root itself.
    fn fake_host() -> (Arc<FakeFs>, V2Manager) {
        let fs = Arc::new(FakeFs::new());
        fs.add_hierarchy(
            "",
            &[
                ("cgroup.procs", ""),
                ("cgroup.controllers", "cpuset cpu io memory pids"),
                ("cgroup.subtree_control", "memory"),
                ("cgroup.freeze", "0"),
                ("cgroup.events", "populated 0\nfrozen 0\n"),
                ("cpu.weight", "100"),
                ("cpu.max", "max 100000"),
                ("cpu.stat", "usage_usec 0\n"),
                ("memory.max", "max"),
                ("memory.current", "0"),
                ("memory.stat", "anon 0\n"),
                ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
                ("pids.max", "max"),
                ("pids.current", "0"),
                ("cpuset.cpus", ""),
                ("cpuset.mems", ""),
            ],
        );
        let (h, table) =
            super::super::detect_from("24 18 0:22 / /cg rw - cgroup2 cgroup2 rw,nsdelegate\n")
                .unwrap();
        assert_eq!(h, Hierarchy::Unified);
        let dyn_fs: Arc<dyn CgroupFs> = fs.clone();
        let mgr = V2Manager::from_mounts(&table, Path::new("/cg"), dyn_fs).unwrap();
        (fs, mgr)
    }

    #[test]
    fn cpu_max_values() {
        assert_eq!(cpu_max(&Resources::default()), "max");
        let r = Resources {
            cpu_quota: Some(50_000),
            ..Default::default()
        };
        assert_eq!(cpu_max(&r), "50000 100000");
        let r = Resources {
            cpu_quota: Some(10_000),
            cpu_period: Some(20_000),
            ..Default::default()
        };
        assert_eq!(cpu_max(&r), "10000 20000");
        let r = Resources {
            cpu_period: Some(20_000),
            ..Default::default()
        };
        assert_eq!(cpu_max(&r), "max 20000");
    }

    #[test]
    fn ensure_enables_controllers_in_parents_and_writes_limits() {
        let (fs, mgr) = fake_host();
        let res = Resources {
            cpu_shares: Some(1024),
            cpu_quota: Some(50_000),
            memory_limit: Some(128 << 20),
            pids_limit: Some(10),
            ..Default::default()
        };
        mgr.ensure("podrun/burstable/pod1", &res).unwrap();
        // memory was already enabled at the root: only the rest is added there.
        let subtree: Vec<_> = fs
            .writes()
            .into_iter()
            .filter(|(p, _)| p.ends_with("cgroup.subtree_control"))
            .collect();
        assert_eq!(
            subtree,
            vec![
                (
                    PathBuf::from("cgroup.subtree_control"),
                    "+cpuset +cpu +io +pids".to_string()
                ),
                (
                    PathBuf::from("podrun/cgroup.subtree_control"),
                    "+cpuset +cpu +io +memory +pids".to_string()
                ),
                (
                    PathBuf::from("podrun/burstable/cgroup.subtree_control"),
                    "+cpuset +cpu +io +memory +pids".to_string()
                ),
            ]
        );
        assert_eq!(
            fs.get("cgroup.subtree_control").unwrap(),
            "memory cpuset cpu io pids"
        );
        // Controllers already enabled are not written again.
        let before = fs.writes().len();
        mgr.ensure("podrun/burstable/pod2", &Resources::default())
            .unwrap();
        assert!(!fs.writes()[before..]
            .iter()
            .any(|(p, _)| p.ends_with("cgroup.subtree_control")));

        let d = "podrun/burstable/pod1";
        assert_eq!(fs.get(format!("{d}/cpu.weight")).unwrap(), "39");
        assert_eq!(fs.get(format!("{d}/cpu.max")).unwrap(), "50000 100000");
        assert_eq!(
            fs.get(format!("{d}/memory.max")).unwrap(),
            (128u64 << 20).to_string()
        );
        assert_eq!(fs.get(format!("{d}/pids.max")).unwrap(), "10");
        // The leaf's own subtree_control is left alone (it will hold processes).
        assert_eq!(fs.get(format!("{d}/cgroup.subtree_control")).unwrap(), "");
        assert!(!fs
            .writes()
            .iter()
            .any(|(p, _)| p.ends_with("memory.swap.max")));

        mgr.update(d, &Resources::default()).unwrap();
        assert_eq!(fs.get(format!("{d}/cpu.max")).unwrap(), "max");
        assert_eq!(fs.get(format!("{d}/memory.max")).unwrap(), "max");
        assert_eq!(fs.get(format!("{d}/pids.max")).unwrap(), "max");
    }

    #[test]
    fn refused_controller_does_not_block_the_others() {
        let (fs, mgr) = fake_host();
        mgr.ensure("podrun", &Resources::default()).unwrap();
        // Simulate the kernel refusing a combined write (e.g. a threaded subtree).
        fs.set("podrun/cgroup.subtree_control", "");
        fs.fail_writes("podrun/cgroup.subtree_control", libc::EOPNOTSUPP);
        mgr.ensure("podrun/pod1", &Resources::default()).unwrap();
        assert!(fs.has_dir("podrun/pod1"));
    }

    #[test]
    fn memory_limit_below_working_set_is_refused() {
        let (fs, mgr) = fake_host();
        mgr.ensure("podrun/pod1", &Resources::default()).unwrap();
        fs.set("podrun/pod1/memory.current", "5000000");
        fs.set(
            "podrun/pod1/memory.stat",
            "anon 4000000\ninactive_file 1000000\n",
        );
        let res = Resources {
            memory_limit: Some(3_000_000),
            ..Default::default()
        };
        let err = mgr.update("podrun/pod1", &res).unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::MemoryBelowUsage {
                    usage: 4_000_000,
                    limit: 3_000_000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("below its current usage"));
        let res = Resources {
            memory_limit: Some(4_500_000),
            ..Default::default()
        };
        mgr.update("podrun/pod1", &res).unwrap();
    }

    #[test]
    fn stats_oom_pids_freeze_remove() {
        let (fs, mgr) = fake_host();
        let ctr = "podrun/pod1/c1";
        mgr.ensure(ctr, &Resources::default()).unwrap();
        fs.set(
            format!("{ctr}/cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        );
        fs.set(format!("{ctr}/memory.current"), "9000");
        fs.set(
            format!("{ctr}/memory.stat"),
            "anon 6000\nfile 3000\ninactive_file 2000\npgfault 11\npgmajfault 1\n",
        );
        fs.set(format!("{ctr}/memory.events"), "oom 2\noom_kill 1\n");
        fs.set(format!("{ctr}/pids.current"), "3");
        let s = mgr.stats(ctr).unwrap();
        assert_eq!(
            s,
            CgroupStats {
                cpu_usage_ns: 1_500_000,
                memory_usage_bytes: 9000,
                memory_working_set_bytes: 7000,
                memory_rss_bytes: 6000,
                page_faults: 11,
                major_page_faults: 1,
                memory_limit_bytes: None,
                pids: 3,
                oom_kills: 1,
            }
        );
        fs.set(format!("{ctr}/memory.max"), "1048576\n");
        fs.set(format!("{ctr}/memory.stat"), "inactive_file 20000\n");
        let s = mgr.stats(ctr).unwrap();
        assert_eq!(s.memory_limit_bytes, Some(1 << 20));
        // Working set is floored at 0 when inactive file pages exceed usage.
        assert_eq!(s.memory_working_set_bytes, 0);
        assert!(matches!(
            mgr.stats("podrun/gone"),
            Err(CgroupError::NotFound { .. })
        ));
        assert_eq!(mgr.oom_kills("podrun/gone").unwrap(), 0);

        fs.set(format!("{ctr}/cgroup.events"), "populated 1\nfrozen 1\n");
        mgr.freeze(ctr, true).unwrap();
        assert_eq!(fs.get(format!("{ctr}/cgroup.freeze")).unwrap(), "1");

        mgr.add_process(ctr, 99).unwrap();
        mgr.add_process(ctr, 99).unwrap();
        assert_eq!(mgr.pids("podrun/pod1").unwrap(), vec![99]);
        assert!(matches!(
            mgr.remove("podrun/pod1"),
            Err(CgroupError::Busy { .. })
        ));
        fs.set(format!("{ctr}/cgroup.procs"), "");
        mgr.remove("podrun/pod1").unwrap();
        assert!(!fs.has_dir(ctr));
        assert!(!fs.has_dir("podrun/pod1"));
        assert!(fs.has_dir("podrun"));
        mgr.remove("podrun/pod1").unwrap();
        assert!(mgr.pids("podrun/pod1").unwrap().is_empty());
    }

    #[test]
    fn freeze_waits_for_frozen_event() {
        let (fs, mgr) = fake_host();
        mgr.ensure("p", &Resources::default()).unwrap();
        // The fake never reports "frozen 1" unless told: thaw is immediate.
        mgr.freeze("p", false).unwrap();
        assert_eq!(fs.get("p/cgroup.freeze").unwrap(), "0");
        fs.set("p/cgroup.events", "populated 1\nfrozen 1\n");
        mgr.freeze("p", true).unwrap();
        assert_eq!(fs.get("p/cgroup.freeze").unwrap(), "1");
        // Until the kernel reports "frozen 1", freezing is not done.
        fs.set("p/cgroup.events", "populated 1\nfrozen 0\n");
        match mgr.freeze("p", true) {
            Err(CgroupError::FreezeTimeout { path, wanted, seen }) => {
                assert_eq!(
                    (path.as_str(), wanted.as_str(), seen.as_str()),
                    ("p", "frozen 1", "frozen 0")
                );
            }
            other => panic!("freeze without a frozen event: {other:?}"),
        }
    }
}
