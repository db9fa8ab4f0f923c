use std::fs;

use serde_json::{json, Value};

use super::*;

fn conf(ipam: Value) -> IpamConfig {
    IpamConfig::parse("net", &ipam).unwrap()
}

#[test]
fn defaults_follow_host_local() {
    let c = conf(json!({"type": "host-local", "subnet": "10.244.1.0/29"}));
    let r = &c.range_sets[0].0[0];
    assert_eq!(r.range_start.to_string(), "10.244.1.1");
    assert_eq!(r.range_end.to_string(), "10.244.1.6");
    assert_eq!(r.gateway.unwrap().to_string(), "10.244.1.1");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/networks/net"));
}

#[test]
fn bad_configs_are_rejected() {
    for bad in [
        json!({"subnet": "10.0.0.0/33"}),
        json!({"subnet": "nonsense"}),
        json!({}),
        json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}),
        json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}),
        json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}),
        json!({"ranges": [[]]}),
    ] {
        assert!(IpamConfig::parse("n", &bad).is_err(), "{bad}");
    }
}

#[test]
fn round_robin_skips_gateway_and_exhausts_a_slash_29() {
    let store = MemStore::new();
    let c = conf(json!({"subnet": "10.244.1.0/29"}));
    let mut got = Vec::new();
    for i in 0..5 {
        let a = allocate(&store, &c, &format!("c{i}"), "eth0", &[]).unwrap();
        got.push(a[0].address.to_string());
        assert_eq!(a[0].gateway.unwrap().to_string(), "10.244.1.1");
    }
    assert_eq!(
        got,
        [
            "10.244.1.2/29",
            "10.244.1.3/29",
            "10.244.1.4/29",
            "10.244.1.5/29",
            "10.244.1.6/29"
        ]
    );
    let err = allocate(&store, &c, "c9", "eth0", &[]).unwrap_err();
    assert_eq!(
            err.to_string(),
            "failed to allocate for range 0: no IP addresses available in range set: 10.244.1.1-10.244.1.6"
        );
    // Released addresses are reused only after the rest of the range.
    release(&store, "c1", "eth0").unwrap();
    let a = allocate(&store, &c, "c9", "eth0", &[]).unwrap();
    assert_eq!(a[0].address.to_string(), "10.244.1.3/29");
}

#[test]
fn repeated_add_returns_the_same_address() {
    let store = MemStore::new();
    let c = conf(json!({"subnet": "10.244.2.0/24"}));
    let a = allocate(&store, &c, "c", "eth0", &[]).unwrap();
    let b = allocate(&store, &c, "c", "eth0", &[]).unwrap();
    assert_eq!(a, b);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn multiple_range_sets_and_requested_ip() {
    let store = MemStore::new();
    let c = conf(json!({"ranges": [
        [{"subnet": "10.244.3.0/24", "rangeStart": "10.244.3.10", "rangeEnd": "10.244.3.20"}],
        [{"subnet": "fd00::/120"}]
    ]}));
    let a = allocate(&store, &c, "c", "eth0", &["10.244.3.15".parse().unwrap()]).unwrap();
    assert_eq!(a[0].address.to_string(), "10.244.3.15/24");
    assert_eq!(a[1].address.to_string(), "fd00::2/120");
    let err = allocate(&store, &c, "d", "eth0", &["10.244.3.15".parse().unwrap()]).unwrap_err();
    assert!(matches!(err, IpamError::AlreadyAllocated { .. }));
    // The failed call released what it took in the second set.
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn gc_keeps_only_valid_attachments() {
    let store = MemStore::new();
    let c = conf(json!({"subnet": "10.244.4.0/24"}));
    allocate(&store, &c, "keep", "eth0", &[]).unwrap();
    allocate(&store, &c, "drop", "eth0", &[]).unwrap();
    let released = garbage_collect(&store, &[("keep".into(), "eth0".into())]).unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(store.list().unwrap()[0].container_id, "keep");
}

#[test]
fn disk_store_uses_host_local_layout() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(json!({"subnet": "10.244.5.0/24", "dataDir": dir.path()}));
    let store = DiskStore::open(&c.data_dir).unwrap();
    let a = allocate(&store, &c, "abc", "eth0", &[]).unwrap();
    let ip = a[0].address.addr().to_string();
    assert_eq!(
        fs::read_to_string(c.data_dir.join(&ip)).unwrap(),
        "abc\r\neth0"
    );
    assert_eq!(
        fs::read_to_string(c.data_dir.join("last_reserved_ip.0")).unwrap(),
        ip
    );
    assert!(c.data_dir.join("lock").exists());
    assert_eq!(release(&store, "abc", "eth0").unwrap().len(), 1);
    assert_eq!(release(&store, "abc", "eth0").unwrap().len(), 0);
    assert!(!c.data_dir.join(&ip).exists());
}
