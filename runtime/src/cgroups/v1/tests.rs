use super::super::fs::{FakeFs, FsOp};
use super::*;

/// A hybrid host like the development machines, faked in memory.
fn fake_host(with_pids: bool) -> (Arc<FakeFs>, V1Manager) {
    let fs = Arc::new(FakeFs::new());
    let procs = ("cgroup.procs", "");
    fs.add_hierarchy(
        "cpu",
        &[
            procs,
            ("cpu.shares", "1024"),
            ("cpu.cfs_quota_us", "-1"),
            ("cpu.cfs_period_us", "100000"),
        ],
    );
    fs.add_hierarchy("cpuacct", &[procs, ("cpuacct.usage", "0")]);
    fs.add_hierarchy(
        "cpuset",
        &[procs, ("cpuset.cpus", "0-3"), ("cpuset.mems", "0")],
    );
    fs.add_hierarchy(
        "memory",
        &[
            procs,
            ("memory.limit_in_bytes", "9223372036854771712"),
            ("memory.usage_in_bytes", "0"),
            ("memory.stat", "cache 0\nrss 0\n"),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            ),
        ],
    );
    fs.add_hierarchy("freezer", &[procs, ("freezer.state", "THAWED")]);
    fs.add_hierarchy(
        "devices",
        &[procs, ("devices.allow", ""), ("devices.deny", "")],
    );
    let mut mountinfo = String::from(
        "32 31 0:29 / /cg/cpu rw - cgroup cgroup rw,cpu\n\
             33 31 0:30 / /cg/cpuacct rw - cgroup cgroup rw,cpuacct\n\
             34 31 0:31 / /cg/cpuset rw - cgroup cgroup rw,cpuset\n\
             35 31 0:32 / /cg/memory rw - cgroup cgroup rw,memory\n\
             36 31 0:33 / /cg/devices rw - cgroup cgroup rw,devices\n\
             37 31 0:34 / /cg/freezer rw - cgroup cgroup rw,freezer\n\
             41 31 0:38 / /cg/unified rw - cgroup2 cgroup2 rw\n",
    );
    if with_pids {
        fs.add_hierarchy("pids", &[procs, ("pids.max", "max"), ("pids.current", "0")]);
        mountinfo.push_str("39 31 0:36 / /cg/pids rw - cgroup cgroup rw,pids\n");
    }
    let (h, table) = super::super::detect_from(&mountinfo).unwrap();
    assert_eq!(h, Hierarchy::Hybrid);
    let dyn_fs: Arc<dyn CgroupFs> = fs.clone();
    let mgr = V1Manager::from_mounts(h, &table, Path::new("/cg"), dyn_fs).unwrap();
    (fs, mgr)
}

fn limits() -> Resources {
    Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: None,
        memory_limit: Some(64 << 20),
        pids_limit: Some(100),
        ..Default::default()
    }
}

#[test]
fn paths_follow_kubernetes_qos_layout() {
    let (_, mgr) = fake_host(true);
    let pod = mgr.pod_path("podrun", QosClass::Burstable, "1234");
    assert_eq!(pod, "podrun/burstable/pod1234");
    assert_eq!(
        mgr.container_path(&pod, "abc"),
        "podrun/burstable/pod1234/abc"
    );
    assert_eq!(
        mgr.pod_path("podrun", QosClass::Guaranteed, "9"),
        "podrun/pod9"
    );
    assert_eq!(mgr.driver(), Driver::Cgroupfs);
    assert_eq!(mgr.hierarchy(), Hierarchy::Hybrid);
}

#[test]
fn ensure_creates_every_hierarchy_and_writes_limits() {
    let (fs, mgr) = fake_host(true);
    mgr.ensure("podrun/burstable/pod1", &limits()).unwrap();
    for h in [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "pids",
    ] {
        assert!(fs.has_dir(format!("{h}/podrun/burstable/pod1")), "{h}");
    }
    let d = "podrun/burstable/pod1";
    assert_eq!(fs.get(format!("cpu/{d}/cpu.shares")).unwrap(), "512");
    assert_eq!(
        fs.get(format!("cpu/{d}/cpu.cfs_period_us")).unwrap(),
        "100000"
    );
    assert_eq!(
        fs.get(format!("cpu/{d}/cpu.cfs_quota_us")).unwrap(),
        "50000"
    );
    assert_eq!(
        fs.get(format!("memory/{d}/memory.limit_in_bytes")).unwrap(),
        (64u64 << 20).to_string()
    );
    assert_eq!(fs.get(format!("pids/{d}/pids.max")).unwrap(), "100");
    // memsw is never touched.
    assert!(!fs
        .writes()
        .iter()
        .any(|(p, _)| p.to_string_lossy().contains("memsw")));
    // Parents exist but get no limits.
    assert!(!fs
        .writes()
        .iter()
        .any(|(p, _)| p == Path::new("memory/podrun/burstable/memory.limit_in_bytes")));
}

#[test]
fn cpuset_parents_inherit_cpus_and_mems() {
    let (fs, mgr) = fake_host(true);
    mgr.ensure("podrun/burstable/pod1/ctr", &Resources::default())
        .unwrap();
    for level in [
        "podrun",
        "podrun/burstable",
        "podrun/burstable/pod1",
        "podrun/burstable/pod1/ctr",
    ] {
        assert_eq!(
            fs.get(format!("cpuset/{level}/cpuset.cpus")).unwrap(),
            "0-3",
            "{level}"
        );
        assert_eq!(
            fs.get(format!("cpuset/{level}/cpuset.mems")).unwrap(),
            "0",
            "{level}"
        );
    }
    // An explicit cpuset wins over the inherited one.
    let res = Resources {
        cpuset_cpus: Some("1".into()),
        ..Default::default()
    };
    mgr.update("podrun/burstable/pod1/ctr", &res).unwrap();
    assert_eq!(
        fs.get("cpuset/podrun/burstable/pod1/ctr/cpuset.cpus")
            .unwrap(),
        "1"
    );
}

#[test]
fn unprivileged_containers_get_the_default_device_rules() {
    let (fs, mgr) = fake_host(true);
    let res = Resources {
        restrict_devices: true,
        ..Resources::default()
    };
    mgr.ensure("podrun/pod1/c1", &res).unwrap();
    let writes: Vec<(String, String)> = fs
        .ops()
        .iter()
        .filter_map(|o| match o {
            FsOp::Write(p, v)
                if p.to_string_lossy()
                    .contains("devices/podrun/pod1/c1/devices.") =>
            {
                Some((
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    v.clone(),
                ))
            }
            _ => None,
        })
        .collect();
    assert_eq!(writes[0], ("devices.deny".to_string(), "a".to_string()));
    assert!(writes.contains(&("devices.allow".to_string(), "c 1:3 rwm".to_string())));
    assert_eq!(writes.len(), 1 + crate::cgroups::DEFAULT_DEVICE_RULES.len());
    // Privileged: no device rules at all.
    mgr.ensure("podrun/pod1/c2", &Resources::default()).unwrap();
    assert!(!fs
        .ops()
        .iter()
        .any(|o| matches!(o, FsOp::Write(p, _) if p.to_string_lossy().contains("c2/devices."))));
}

#[test]
fn remove_if_empty_never_recurses() {
    let (_fs, mgr) = fake_host(true);
    mgr.ensure("podrun/burstable/pod1", &Resources::default())
        .unwrap();
    assert!(!mgr.remove_if_empty("podrun/burstable").unwrap());
    assert!(mgr.remove_if_empty("podrun/burstable/pod1").unwrap());
    assert!(mgr.remove_if_empty("podrun/burstable").unwrap());
}

#[test]
fn ensure_is_idempotent() {
    let (fs, mgr) = fake_host(true);
    mgr.ensure("podrun/pod1", &limits()).unwrap();
    let mkdirs = |fs: &FakeFs| {
        fs.ops()
            .iter()
            .filter(|o| matches!(o, FsOp::Mkdir(_)))
            .count()
    };
    let before = mkdirs(&fs);
    mgr.ensure("podrun/pod1", &limits()).unwrap();
    assert_eq!(mkdirs(&fs), before);
}

#[test]
fn unlimited_resources_lift_limits() {
    let (fs, mgr) = fake_host(true);
    mgr.ensure("podrun/pod1", &limits()).unwrap();
    mgr.update("podrun/pod1", &Resources::default()).unwrap();
    assert_eq!(fs.get("cpu/podrun/pod1/cpu.cfs_quota_us").unwrap(), "-1");
    assert_eq!(
        fs.get("memory/podrun/pod1/memory.limit_in_bytes").unwrap(),
        "-1"
    );
    assert_eq!(fs.get("pids/podrun/pod1/pids.max").unwrap(), "max");
    // Shares untouched when not given.
    assert_eq!(fs.get("cpu/podrun/pod1/cpu.shares").unwrap(), "512");
}

#[test]
fn cfs_and_pids_conversions() {
    assert_eq!(v1_cfs(&Resources::default()), (-1, None));
    let r = Resources {
        cpu_quota: Some(20_000),
        cpu_period: Some(50_000),
        ..Default::default()
    };
    assert_eq!(v1_cfs(&r), (20_000, Some(50_000)));
    let r = Resources {
        cpu_quota: Some(20_000),
        ..Default::default()
    };
    assert_eq!(v1_cfs(&r), (20_000, Some(100_000)));
    assert_eq!(pids_max(None), "max");
    assert_eq!(pids_max(Some(0)), "max");
    assert_eq!(pids_max(Some(-1)), "max");
    assert_eq!(pids_max(Some(42)), "42");
}

#[test]
fn shares_are_clamped_to_kernel_range() {
    let (fs, mgr) = fake_host(true);
    let r = Resources {
        cpu_shares: Some(1),
        ..Default::default()
    };
    mgr.ensure("podrun/pod1", &r).unwrap();
    assert_eq!(fs.get("cpu/podrun/pod1/cpu.shares").unwrap(), "2");
}

#[test]
fn period_rejected_first_is_retried_after_quota() {
    let (fs, mgr) = fake_host(true);
    mgr.ensure("podrun/pod1", &Resources::default()).unwrap();
    fs.fail_writes("cpu/podrun/pod1/cpu.cfs_period_us", libc::EINVAL);
    let err = mgr.update("podrun/pod1", &limits()).unwrap_err();
    // Both orders fail here; the error names the file.
    assert!(err.to_string().contains("cpu.cfs_period_us"), "{err}");
    let quota_writes: Vec<_> = fs
        .writes()
        .into_iter()
        .filter(|(p, _)| p.ends_with("cpu.cfs_quota_us"))
        .collect();
    assert_eq!(quota_writes.last().unwrap().1, "50000");
}

#[test]
fn memory_limit_below_usage_is_a_clear_error() {
    let (fs, mgr) = fake_host(true);
    mgr.ensure("podrun/pod1", &Resources::default()).unwrap();
    fs.set("memory/podrun/pod1/memory.usage_in_bytes", "200000000");
    fs.set(
        "memory/podrun/pod1/memory.stat",
        "total_inactive_file 1000\n",
    );
    let err = mgr.update("podrun/pod1", &limits()).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::MemoryBelowUsage {
                usage: 199_999_000,
                ..
            }
        ),
        "{err}"
    );
    // Reclaimable page cache does not count against the new limit; the kernel's
    // EBUSY still maps to the same error.
    fs.set(
        "memory/podrun/pod1/memory.stat",
        "total_inactive_file 199000000\n",
    );
    fs.fail_writes("memory/podrun/pod1/memory.limit_in_bytes", libc::EBUSY);
    let err = mgr.update("podrun/pod1", &limits()).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::MemoryBelowUsage {
                usage: 200_000_000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_pids_controller_is_skipped() {
    let (fs, mgr) = fake_host(false);
    mgr.ensure("podrun/pod1", &limits()).unwrap();
    assert!(fs.get("pids/podrun/pod1/pids.max").is_none());
    // A hierarchy without a knob (old kernel) is skipped too.
    let fs2 = Arc::new(FakeFs::new());
    fs2.add_hierarchy("memory", &[("cgroup.procs", "")]);
    let dyn_fs: Arc<dyn CgroupFs> = fs2.clone();
    let mgr2 = V1Manager::new(
        Hierarchy::Legacy,
        dyn_fs,
        vec![V1Dir {
            dir: "memory".into(),
            controllers: vec!["memory".into()],
        }],
    );
    mgr2.ensure("p", &limits()).unwrap();
}

#[test]
fn add_process_pids_and_remove() {
    let (fs, mgr) = fake_host(true);
    let ctr = "podrun/burstable/pod1/ctr1";
    mgr.ensure(ctr, &limits()).unwrap();
    mgr.add_process(ctr, 4242).unwrap();
    for h in [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "pids",
    ] {
        assert_eq!(fs.get(format!("{h}/{ctr}/cgroup.procs")).unwrap(), "4242\n");
    }
    // Pod-level listing includes the container's processes, deduped.
    assert_eq!(mgr.pids("podrun/burstable/pod1").unwrap(), vec![4242]);
    assert!(matches!(
        mgr.remove("podrun/burstable/pod1"),
        Err(CgroupError::Busy { ref pids, .. }) if pids == &vec![4242]
    ));
    for h in [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "pids",
    ] {
        fs.set(format!("{h}/{ctr}/cgroup.procs"), "");
    }
    mgr.remove("podrun/burstable/pod1").unwrap();
    for h in [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "pids",
    ] {
        assert!(!fs.has_dir(format!("{h}/{ctr}")));
        assert!(!fs.has_dir(format!("{h}/podrun/burstable/pod1")));
        assert!(fs.has_dir(format!("{h}/podrun/burstable")));
    }
    // Deepest first.
    let rmdirs: Vec<_> = fs
        .ops()
        .into_iter()
        .filter_map(|o| match o {
            FsOp::Rmdir(p) if p.starts_with("memory") => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(
        rmdirs,
        vec![
            PathBuf::from("memory/podrun/burstable/pod1/ctr1"),
            PathBuf::from("memory/podrun/burstable/pod1")
        ]
    );
    // Idempotent.
    mgr.remove("podrun/burstable/pod1").unwrap();
    assert!(mgr.pids("podrun/burstable/pod1").unwrap().is_empty());
}

#[test]
fn add_process_to_missing_cgroup_is_not_found() {
    let (_, mgr) = fake_host(true);
    assert!(matches!(
        mgr.add_process("podrun/nope", 1),
        Err(CgroupError::NotFound { .. })
    ));
    assert!(matches!(
        mgr.update("podrun/nope", &limits()),
        Err(CgroupError::NotFound { .. })
    ));
}

#[test]
fn stats_and_oom_kills() {
    let (fs, mgr) = fake_host(true);
    let d = "podrun/pod1";
    mgr.ensure(d, &Resources::default()).unwrap();
    fs.set(format!("cpuacct/{d}/cpuacct.usage"), "123456789\n");
    fs.set(format!("memory/{d}/memory.usage_in_bytes"), "10000\n");
    fs.set(
            format!("memory/{d}/memory.stat"),
            "rss 1\npgfault 2\ntotal_rss 4000\ntotal_inactive_file 3000\ntotal_pgfault 77\ntotal_pgmajfault 5\n",
        );
    fs.set(
        format!("memory/{d}/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    );
    fs.set(format!("pids/{d}/pids.current"), "6\n");
    fs.set(
        format!("memory/{d}/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    let s = mgr.stats(d).unwrap();
    assert_eq!(
        s,
        CgroupStats {
            cpu_usage_ns: 123_456_789,
            memory_usage_bytes: 10_000,
            memory_working_set_bytes: 7_000,
            memory_rss_bytes: 4_000,
            page_faults: 77,
            major_page_faults: 5,
            memory_limit_bytes: None,
            pids: 6,
            oom_kills: 3,
        }
    );
    // A limit shows; inactive file pages above usage floor the working set at 0.
    fs.set(format!("memory/{d}/memory.limit_in_bytes"), "67108864\n");
    fs.set(
        format!("memory/{d}/memory.stat"),
        "total_inactive_file 20000\n",
    );
    let s = mgr.stats(d).unwrap();
    assert_eq!(s.memory_limit_bytes, Some(64 << 20));
    assert_eq!(s.memory_working_set_bytes, 0);
    assert_eq!(mgr.oom_kills(d).unwrap(), 3);
    assert!(matches!(
        mgr.stats("podrun/none"),
        Err(CgroupError::NotFound { .. })
    ));
    assert_eq!(mgr.oom_kills("podrun/none").unwrap(), 0);
}

#[test]
fn freeze_and_thaw() {
    let (fs, mgr) = fake_host(true);
    mgr.ensure("podrun/pod1", &Resources::default()).unwrap();
    mgr.freeze("podrun/pod1", true).unwrap();
    assert_eq!(
        fs.get("freezer/podrun/pod1/freezer.state").unwrap(),
        "FROZEN"
    );
    mgr.freeze("podrun/pod1", false).unwrap();
    assert_eq!(
        fs.get("freezer/podrun/pod1/freezer.state").unwrap(),
        "THAWED"
    );
    assert!(matches!(
        mgr.freeze("podrun/none", true),
        Err(CgroupError::NotFound { .. })
    ));
}

#[test]
fn invalid_paths_are_rejected() {
    let (_, mgr) = fake_host(true);
    assert!(matches!(
        mgr.ensure("../escape", &Resources::default()),
        Err(CgroupError::InvalidPath { .. })
    ));
    assert!(matches!(
        mgr.remove("/"),
        Err(CgroupError::InvalidPath { .. })
    ));
}

/// Real cgroups on this host, as root, on a v1 (legacy or hybrid) layout.
#[test]
fn real_v1_cgroups_as_root() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/sys/fs/cgroup/memory").exists() {
        eprintln!("skipping: needs root and a v1 memory hierarchy");
        return;
    }
    let mgr = match super::super::new_manager(Driver::Cgroupfs) {
        Ok(m) => m,
        Err(e) => panic!("cgroupfs manager on this host: {e}"),
    };
    assert_ne!(mgr.hierarchy(), Hierarchy::Unified);
    let root = format!("podrun-unit-{}", std::process::id());
    let pod = mgr.pod_path(&root, QosClass::Burstable, "u-1");
    let ctr = mgr.container_path(&pod, "c1");
    let pod_res = Resources {
        cpu_shares: Some(256),
        memory_limit: Some(256 << 20),
        ..Default::default()
    };
    let ctr_res = Resources {
        cpu_shares: Some(128),
        cpu_quota: Some(20_000),
        memory_limit: Some(64 << 20),
        pids_limit: Some(64),
        ..Default::default()
    };
    mgr.ensure(&pod, &pod_res).unwrap();
    mgr.ensure(&ctr, &ctr_res).unwrap();
    let limit =
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory/{ctr}/memory.limit_in_bytes"))
            .unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let quota =
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/{ctr}/cpu.cfs_quota_us")).unwrap();
    assert_eq!(quota.trim(), "20000");

    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Collect results first: the child must be killed even when a check fails.
    let added = mgr.add_process(&ctr, pid);
    let pod_pids = mgr.pids(&pod);
    let ctr_pids = mgr.pids(&ctr);
    let stats = mgr.stats(&ctr);
    let frozen = mgr.freeze(&pod, true).and_then(|_| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/{ctr}/freezer.state")).map_err(
            |source| CgroupError::ReadFile {
                path: "freezer.state".into(),
                source,
            },
        )
    });
    // Kill while frozen, then thaw so the signal is delivered: the teardown order.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let thawed = mgr.freeze(&pod, false);
    child.wait().unwrap();
    added.unwrap();
    assert_eq!(pod_pids.unwrap(), vec![pid]);
    assert_eq!(ctr_pids.unwrap(), vec![pid]);
    assert_eq!(stats.unwrap().pids, 1);
    assert_eq!(frozen.unwrap().trim(), "FROZEN");
    thawed.unwrap();
    let cpus = std::fs::read_to_string(format!("/sys/fs/cgroup/cpuset/{ctr}/cpuset.cpus")).unwrap();
    assert!(!cpus.trim().is_empty(), "cpuset.cpus inherited");
    let pids_max = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/{ctr}/pids.max")).unwrap();
    assert_eq!(pids_max.trim(), "64");

    mgr.remove(&ctr).unwrap();
    mgr.remove(&root).unwrap();
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let (_, mounts) = super::super::detect_from(&table).unwrap();
    for m in &mounts.v1 {
        let dir = m.mount_point.join(&root);
        assert!(!dir.exists(), "{} leaked", dir.display());
    }
    mgr.remove(&root).unwrap();
}
