use std::sync::Arc;

use super::super::fs::{CgroupFs, FakeFs};
use super::super::v1::{V1Dir, V1Manager};
use super::super::v2::V2Manager;
use super::*;

/// Shares a FakeBus between the manager and the test.
struct SharedBus(Arc<FakeBus>);

impl SystemdBus for SharedBus {
    fn start_transient_unit(&self, n: &str, m: &str, p: &[UnitProperty]) -> Result<(), BusError> {
        self.0.start_transient_unit(n, m, p)
    }
    fn set_unit_properties(&self, n: &str, r: bool, p: &[UnitProperty]) -> Result<(), BusError> {
        self.0.set_unit_properties(n, r, p)
    }
    fn stop_unit(&self, n: &str, m: &str) -> Result<(), BusError> {
        self.0.stop_unit(n, m)
    }
    fn active_state(&self, n: &str) -> Result<Option<String>, BusError> {
        self.0.active_state(n)
    }
}

fn v1_manager() -> (Arc<FakeBus>, Arc<FakeFs>, SystemdManager) {
    let fs = Arc::new(FakeFs::new());
    let procs = ("cgroup.procs", "");
    fs.add_hierarchy("memory", &[procs, ("memory.limit_in_bytes", "")]);
    fs.add_hierarchy(
        "cpuset",
        &[procs, ("cpuset.cpus", "0-1"), ("cpuset.mems", "0")],
    );
    fs.add_hierarchy("freezer", &[procs, ("freezer.state", "THAWED")]);
    let dirs = ["memory", "cpuset", "freezer"]
        .iter()
        .map(|c| V1Dir {
            dir: c.into(),
            controllers: vec![c.to_string()],
        })
        .collect();
    let dyn_fs: Arc<dyn CgroupFs> = fs.clone();
    let backend = CgroupfsBackend::V1(V1Manager::new(Hierarchy::Hybrid, dyn_fs, dirs));
    let bus = Arc::new(FakeBus::new());
    let mgr = SystemdManager::new(Box::new(SharedBus(bus.clone())), backend);
    (bus, fs, mgr)
}

fn v2_manager() -> (Arc<FakeBus>, SystemdManager) {
    let fs: Arc<dyn CgroupFs> = Arc::new(FakeFs::new());
    let backend = CgroupfsBackend::V2(V2Manager::new(fs, ""));
    let bus = Arc::new(FakeBus::new());
    (
        bus.clone(),
        SystemdManager::new(Box::new(SharedBus(bus)), backend),
    )
}

fn props_of(call: &BusCall) -> &[UnitProperty] {
    match call {
        BusCall::Start { properties, .. } | BusCall::SetProperties { properties, .. } => properties,
        BusCall::Stop { .. } => &[],
    }
}

fn get<'a>(props: &'a [UnitProperty], name: &str) -> Option<&'a PropValue> {
    props.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

#[test]
fn pod_and_container_names_follow_kubepods_style() {
    let (_, _, mgr) = v1_manager();
    let pod = mgr.pod_path("podrun", QosClass::Burstable, "12-34-ab");
    assert_eq!(
        pod,
        "podrun.slice/podrun-burstable.slice/podrun-burstable-pod12_34_ab.slice"
    );
    assert_eq!(
        mgr.pod_path("podrun", QosClass::Guaranteed, "u1"),
        "podrun.slice/podrun-podu1.slice"
    );
    let ctr = mgr.container_path(&pod, "c0ffee");
    assert_eq!(ctr, "podrun-burstable-pod12_34_ab.slice:podrun:c0ffee");
    let parsed = UnitPath::parse(&ctr).unwrap();
    assert_eq!(parsed.unit(), "podrun-c0ffee.scope");
    assert_eq!(
        parsed.fs_path(),
        "podrun.slice/podrun-burstable.slice/podrun-burstable-pod12_34_ab.slice/podrun-c0ffee.scope"
    );
    assert_eq!(mgr.driver(), Driver::Systemd);
}

#[test]
fn stats_read_the_units_cgroup_through_the_fs_backend() {
    let (_, fs, mgr) = v1_manager();
    let pod = mgr.pod_path("podrun", QosClass::Burstable, "p1");
    mgr.ensure(&pod, &Resources::default()).unwrap();
    let ctr = mgr.container_path(&pod, "c1");
    mgr.ensure(&ctr, &Resources::default()).unwrap();
    let dir = format!("memory/{}", UnitPath::parse(&ctr).unwrap().fs_path());
    // systemd creates the unit's cgroups; the fake bus does not, so stand in for it.
    let mut at = std::path::PathBuf::new();
    for part in std::path::Path::new(&dir).components() {
        at.push(part);
        let _ = fs.mkdir(&at);
    }
    fs.set(format!("{dir}/memory.usage_in_bytes"), "5000\n");
    fs.set(
        format!("{dir}/memory.stat"),
        "total_rss 3000\ntotal_inactive_file 1000\ntotal_pgfault 9\ntotal_pgmajfault 2\n",
    );
    fs.set(format!("{dir}/memory.limit_in_bytes"), "268435456\n");
    let s = mgr.stats(&ctr).unwrap();
    assert_eq!(
        s,
        CgroupStats {
            memory_usage_bytes: 5000,
            memory_working_set_bytes: 4000,
            memory_rss_bytes: 3000,
            page_faults: 9,
            major_page_faults: 2,
            memory_limit_bytes: Some(256 << 20),
            ..Default::default()
        }
    );
    assert!(matches!(
        mgr.stats(&mgr.container_path(&pod, "gone")),
        Err(CgroupError::NotFound { .. })
    ));
}

#[test]
fn slice_expansion() {
    assert_eq!(
        expand_slice("a-b-c.slice").unwrap(),
        "a.slice/a-b.slice/a-b-c.slice"
    );
    assert_eq!(expand_slice("-.slice").unwrap(), "");
    assert!(expand_slice("a--b.slice").is_err());
    assert!(expand_slice("a-.slice").is_err());
    assert!(expand_slice("a.scope").is_err());
    assert!(UnitPath::parse("podrun.slice:podrun").is_err());
    assert!(UnitPath::parse("podrun/x").is_err());
    assert!(UnitPath::parse("podrun.slice:podrun:a/b").is_err());
}

#[test]
fn quota_conversion_rounds_up_to_whole_percent() {
    assert_eq!(quota_per_sec_usec(50_000, 100_000), 500_000);
    assert_eq!(quota_per_sec_usec(12_345, 100_000), 130_000);
    assert_eq!(quota_per_sec_usec(-1, 100_000), u64::MAX);
    assert_eq!(quota_per_sec_usec(0, 100_000), u64::MAX);
}

#[test]
fn properties_differ_between_v1_and_v2() {
    let res = Resources {
        cpu_shares: Some(1024),
        cpu_quota: Some(50_000),
        memory_limit: Some(1 << 30),
        pids_limit: Some(100),
        ..Default::default()
    };
    let v1 = resource_properties(&res, Hierarchy::Hybrid);
    assert_eq!(get(&v1, "CPUShares"), Some(&PropValue::U64(1024)));
    assert_eq!(get(&v1, "MemoryLimit"), Some(&PropValue::U64(1 << 30)));
    assert!(get(&v1, "CPUWeight").is_none() && get(&v1, "MemoryMax").is_none());
    assert_eq!(
        get(&v1, "CPUQuotaPerSecUSec"),
        Some(&PropValue::U64(500_000))
    );
    assert_eq!(get(&v1, "TasksMax"), Some(&PropValue::U64(100)));
    assert!(get(&v1, "CPUQuotaPeriodUSec").is_none());
    let v2 = resource_properties(&res, Hierarchy::Unified);
    assert_eq!(get(&v2, "CPUWeight"), Some(&PropValue::U64(39)));
    assert_eq!(get(&v2, "MemoryMax"), Some(&PropValue::U64(1 << 30)));
    let unlimited = resource_properties(&Resources::default(), Hierarchy::Unified);
    assert_eq!(
        get(&unlimited, "MemoryMax"),
        Some(&PropValue::U64(u64::MAX))
    );
    assert_eq!(get(&unlimited, "TasksMax"), Some(&PropValue::U64(u64::MAX)));
    assert_eq!(
        get(&unlimited, "CPUQuotaPerSecUSec"),
        Some(&PropValue::U64(u64::MAX))
    );
    assert!(get(&unlimited, "CPUWeight").is_none());
}

#[test]
fn ensure_pod_starts_each_slice_with_limits_on_the_leaf() {
    let (bus, fs, mgr) = v1_manager();
    let pod = mgr.pod_path("podrun", QosClass::Burstable, "p1");
    let res = Resources {
        memory_limit: Some(1 << 28),
        ..Default::default()
    };
    mgr.ensure(&pod, &res).unwrap();
    let calls = bus.calls();
    let names: Vec<_> = calls
        .iter()
        .map(|c| match c {
            BusCall::Start { name, mode, .. } => {
                assert_eq!(mode, "replace");
                name.as_str()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        vec![
            "podrun.slice",
            "podrun-burstable.slice",
            "podrun-burstable-podp1.slice"
        ]
    );
    assert!(get(props_of(&calls[0]), "MemoryLimit").is_none());
    assert_eq!(
        get(props_of(&calls[1]), "Wants"),
        Some(&PropValue::StrList(vec!["podrun.slice".into()]))
    );
    assert_eq!(
        get(props_of(&calls[2]), "MemoryLimit"),
        Some(&PropValue::U64(1 << 28))
    );
    assert_eq!(
        get(props_of(&calls[2]), "DefaultDependencies"),
        Some(&PropValue::Bool(false))
    );
    // v1 hierarchies systemd leaves alone get the directories, cpusets filled.
    let dir = "cpuset/podrun.slice/podrun-burstable.slice/podrun-burstable-podp1.slice";
    assert!(fs.has_dir(dir));
    assert_eq!(fs.get(format!("{dir}/cpuset.cpus")).unwrap(), "0-1");

    // Idempotent: a second ensure only updates the leaf.
    mgr.ensure(&pod, &res).unwrap();
    let calls = bus.calls();
    assert_eq!(calls.len(), 4);
    assert!(
        matches!(&calls[3], BusCall::SetProperties { name, .. } if name == "podrun-burstable-podp1.slice")
    );
}

#[test]
fn container_scope_starts_on_add_process_with_delegate_and_pid() {
    let (bus, fs, mgr) = v1_manager();
    let pod = mgr.pod_path("podrun", QosClass::BestEffort, "p2");
    mgr.ensure(&pod, &Resources::default()).unwrap();
    let ctr = mgr.container_path(&pod, "abc");
    let res = Resources {
        cpu_shares: Some(2),
        pids_limit: Some(5),
        ..Default::default()
    };
    mgr.ensure(&ctr, &res).unwrap();
    assert!(!bus.is_active("podrun-abc.scope"), "no empty scopes");
    mgr.add_process(&ctr, 777).unwrap();
    let calls = bus.calls();
    let BusCall::Start {
        name, properties, ..
    } = calls.last().unwrap()
    else {
        panic!("expected a start");
    };
    assert_eq!(name, "podrun-abc.scope");
    assert_eq!(
        get(properties, "PIDs"),
        Some(&PropValue::U32List(vec![777]))
    );
    assert_eq!(get(properties, "Delegate"), Some(&PropValue::Bool(true)));
    assert_eq!(
        get(properties, "Slice"),
        Some(&PropValue::Str("podrun-besteffort-podp2.slice".into()))
    );
    assert_eq!(get(properties, "CPUShares"), Some(&PropValue::U64(2)));
    assert_eq!(get(properties, "TasksMax"), Some(&PropValue::U64(5)));
    let scope_dir = "freezer/podrun.slice/podrun-besteffort.slice/podrun-besteffort-podp2.slice/podrun-abc.scope";
    assert_eq!(
        fs.get(format!("{scope_dir}/cgroup.procs")).unwrap(),
        "777\n"
    );
    assert_eq!(mgr.pids(&pod).unwrap(), vec![777]);

    // A second process joins through cgroupfs.
    mgr.add_process(&ctr, 778).unwrap();
    assert_eq!(bus.calls().len(), calls.len());
    assert_eq!(mgr.pids(&ctr).unwrap(), vec![777, 778]);

    // Update of a running scope goes through SetUnitProperties.
    mgr.update(&ctr, &Resources::default()).unwrap();
    assert!(
        matches!(bus.calls().last().unwrap(), BusCall::SetProperties { name, .. } if name == "podrun-abc.scope")
    );

    mgr.freeze(&ctr, true).unwrap();
    assert_eq!(
        fs.get(format!("{scope_dir}/freezer.state")).unwrap(),
        "FROZEN"
    );
}

#[test]
fn remove_stops_the_unit_and_cleans_leftover_dirs() {
    let (bus, fs, mgr) = v1_manager();
    let pod = mgr.pod_path("podrun", QosClass::Burstable, "p3");
    mgr.ensure(&pod, &Resources::default()).unwrap();
    let ctr = mgr.container_path(&pod, "c1");
    mgr.ensure(&ctr, &Resources::default()).unwrap();
    mgr.add_process(&ctr, 5).unwrap();
    // The fake kernel keeps the pid until the process is gone.
    for h in ["memory", "cpuset", "freezer"] {
        fs.set(
            format!(
                "{h}/{}/cgroup.procs",
                UnitPath::parse(&ctr).unwrap().fs_path()
            ),
            "",
        );
    }
    mgr.remove(&pod).unwrap();
    assert!(
        matches!(bus.calls().last().unwrap(), BusCall::Stop { name } if name == "podrun-burstable-podp3.slice")
    );
    assert!(!bus.is_active("podrun-c1.scope"));
    assert!(!fs.has_dir("cpuset/podrun.slice/podrun-burstable.slice/podrun-burstable-podp3.slice"));
    // Idempotent: a missing unit is fine.
    mgr.remove(&pod).unwrap();
    mgr.remove(&ctr).unwrap();
}

#[test]
fn update_of_missing_unit_is_not_found() {
    let (_, mgr) = v2_manager();
    assert!(matches!(
        mgr.update("podrun.slice/podrun-x.slice", &Resources::default()),
        Err(CgroupError::NotFound { .. })
    ));
    assert_eq!(mgr.hierarchy(), Hierarchy::Unified);
}

#[test]
fn v2_scope_uses_cpu_weight() {
    let (bus, mgr) = v2_manager();
    let ctr = "podrun-podx.slice:podrun:c9";
    mgr.ensure(
        ctr,
        &Resources {
            cpu_shares: Some(262_144),
            ..Default::default()
        },
    )
    .unwrap();
    // The fake v2 fs has no directories; only the bus part matters here.
    let _ = mgr.add_process(ctr, 1);
    let calls = bus.calls();
    let BusCall::Start { properties, .. } = &calls[0] else {
        panic!("expected a start");
    };
    assert_eq!(get(properties, "CPUWeight"), Some(&PropValue::U64(10_000)));
    assert!(get(properties, "CPUShares").is_none());
}

#[test]
fn fs_path_of_expands() {
    assert_eq!(
        fs_path_of("a.slice/a-b.slice").unwrap(),
        PathBuf::from("a.slice/a-b.slice")
    );
}
