//! `ZbusSystemd` and `HelperBus`'s protocol against a private dbus-daemon and the mock
//! systemd Manager of `mock.rs`, so the wire format (a(sv), a(sa(sv)), au, ...) and the
//! error mapping are checked without systemd. Skipped where dbus-daemon is missing.

use std::sync::Arc;
use std::time::Duration;

use super::mock::{DbusDaemon, MockSystemd};
use super::*;
use crate::cgroups::fs::{CgroupFs, FakeFs};
use crate::cgroups::v1::{V1Dir, V1Manager};

#[test]
fn zbus_client_against_a_mock_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = match DbusDaemon::start(dir.path()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    // Nobody owns org.freedesktop.systemd1 yet: a clear error, not a hang.
    let err = match ZbusSystemd::connect_address(daemon.address()) {
        Err(e) => e,
        Ok(_) => panic!("connected to a bus without systemd"),
    };
    assert!(
        matches!(err, CgroupError::SystemdUnavailable { .. }),
        "{err}"
    );

    let mock = MockSystemd::serve(daemon.address(), Duration::ZERO, None).unwrap();

    let bus = ZbusSystemd::connect_address(daemon.address()).unwrap();
    let scope_props = vec![
        prop("Description", PropValue::Str("podrun container".into())),
        prop("Slice", PropValue::Str("podrun-podx.slice".into())),
        prop("Delegate", PropValue::Bool(true)),
        prop("PIDs", PropValue::U32List(vec![1234])),
        prop("Wants", PropValue::StrList(vec!["podrun.slice".into()])),
        prop("MemoryMax", PropValue::U64(u64::MAX)),
    ];
    bus.start_transient_unit("podrun-c1.scope", "replace", &scope_props)
        .unwrap();
    assert_eq!(
        bus.start_transient_unit("podrun-c1.scope", "replace", &scope_props),
        Err(BusError::UnitExists)
    );
    assert_eq!(
        bus.active_state("podrun-c1.scope").unwrap().as_deref(),
        Some("active")
    );
    bus.set_unit_properties("podrun-c1.scope", true, &scope_props[5..])
        .unwrap();
    assert_eq!(
        bus.set_unit_properties("nope.scope", true, &scope_props[5..]),
        Err(BusError::NoSuchUnit)
    );
    bus.stop_unit("podrun-c1.scope", "replace").unwrap();
    assert_eq!(bus.active_state("podrun-c1.scope").unwrap(), None);
    assert_eq!(
        bus.stop_unit("podrun-c1.scope", "replace"),
        Err(BusError::NoSuchUnit)
    );

    let seen = mock.calls();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].unit.as_str()),
        ("Start", "podrun-c1.scope")
    );
    assert_eq!(seen[0].pids, vec![1234]);
    let sig = |name: &str| {
        seen[0]
            .signatures
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_str())
            .unwrap()
    };
    assert_eq!(sig("Description"), "s");
    assert_eq!(sig("Delegate"), "b");
    assert_eq!(sig("PIDs"), "au");
    assert_eq!(sig("Wants"), "as");
    assert_eq!(sig("MemoryMax"), "t");
    assert_eq!(seen[1].method, "Set");
    assert_eq!(seen[2].method, "Stop");

    // The whole driver over the wire, with an in-memory v1 filesystem.
    let fs = Arc::new(FakeFs::new());
    fs.add_hierarchy("memory", &[("cgroup.procs", "")]);
    let dyn_fs: Arc<dyn CgroupFs> = fs.clone();
    let backend = CgroupfsBackend::V1(V1Manager::new(
        Hierarchy::Legacy,
        dyn_fs,
        vec![V1Dir {
            dir: "memory".into(),
            controllers: vec!["memory".into()],
        }],
    ));
    let mgr = SystemdManager::new(Box::new(bus), backend);
    let pod = mgr.pod_path("podrun", QosClass::Guaranteed, "p-1");
    mgr.ensure(&pod, &Resources::default()).unwrap();
    let ctr = mgr.container_path(&pod, "c2");
    mgr.ensure(&ctr, &Resources::default()).unwrap();
    mgr.add_process(&ctr, 4321).unwrap();
    assert_eq!(mgr.pids(&pod).unwrap(), vec![4321]);
    fs.set(
        "memory/podrun.slice/podrun-podp_1.slice/podrun-c2.scope/cgroup.procs",
        "",
    );
    mgr.remove(&ctr).unwrap();
    mgr.remove(&pod).unwrap();
    assert!(!fs.has_dir("memory/podrun.slice/podrun-podp_1.slice"));
    let started: Vec<String> = mock
        .calls()
        .iter()
        .skip(3)
        .filter(|c| c.method == "Start")
        .map(|c| c.unit.clone())
        .collect();
    assert_eq!(
        started,
        vec!["podrun.slice", "podrun-podp_1.slice", "podrun-c2.scope"]
    );
}
