use serde_json::{json, Value};

use super::container::setup_container_iface;
use super::*;
use crate::netlink::fake::FakeLinks;
use crate::spec::{IpConfig, Route};

fn conf(v: Value) -> BridgeConf {
    BridgeConf::parse(&v).unwrap()
}

#[test]
fn ensure_bridge_creates_once_and_reuses() {
    let mut nl = FakeLinks::new();
    let c = conf(json!({"bridge": "br9", "mtu": 1400, "promiscMode": true}));
    let first = ensure_bridge(&mut nl, &c).unwrap();
    let second = ensure_bridge(&mut nl, &c).unwrap();
    assert_eq!(first.index, second.index);
    let created = nl
        .calls
        .iter()
        .filter(|c| c.starts_with("create_bridge"))
        .count();
    assert_eq!(created, 1);
    let bridge = nl.links.iter().find(|l| l.name == "br9").unwrap();
    assert!(bridge.up && bridge.promisc);
    assert_eq!(bridge.mtu, 1400);
}

#[test]
fn ensure_bridge_tolerates_a_concurrent_creator_and_rejects_non_bridges() {
    let mut nl = FakeLinks::new();
    nl.race_on_create = true;
    ensure_bridge(&mut nl, &conf(json!({"bridge": "br9"}))).unwrap();
    nl.push("eth9", Some("veth"));
    let err = ensure_bridge(&mut nl, &conf(json!({"bridge": "eth9"}))).unwrap_err();
    assert!(err.msg.contains("not a bridge"), "{}", err.msg);
}

#[test]
fn container_iface_gets_addresses_routes_and_lo() {
    let mut nl = FakeLinks::new();
    let result = CniResult {
        ips: vec![IpConfig {
            address: "10.1.0.5/24".parse().unwrap(),
            gateway: None,
            interface: None,
        }],
        routes: vec![Route::new(
            "0.0.0.0/0".parse().unwrap(),
            Some("10.1.0.1".parse().unwrap()),
        )],
        ..Default::default()
    };
    let side =
        setup_container_iface(&mut nl, "eth0", "vethabc", Some(1450), None, &result).unwrap();
    let eth0 = nl.links.iter().find(|l| l.name == "eth0").unwrap().clone();
    assert_eq!(side.mac, eth0.mac);
    assert!(eth0.up);
    assert_eq!(eth0.mtu, 1450);
    assert!(nl.links.iter().find(|l| l.name == "lo").unwrap().up);
    assert_eq!(nl.addresses[0].address.to_string(), "10.1.0.5/24");
    assert_eq!(nl.routes[0].gateway, Some("10.1.0.1".parse().unwrap()));
    assert_eq!(nl.routes[0].oif, Some(eth0.index));
    // Addresses go on before the link comes up, routes after.
    let order: Vec<&str> = nl
        .calls
        .iter()
        .map(|c| c.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "create_veth",
            "add_address",
            "set_up",
            "set_up",
            "add_route"
        ]
    );
    // A second ADD for the same interface name is refused, not merged.
    assert!(setup_container_iface(&mut nl, "eth0", "vethdef", None, None, &result).is_err());
}

#[test]
fn conf_defaults_and_validation() {
    let c = BridgeConf::parse(&json!({"isDefaultGateway": true})).unwrap();
    assert_eq!(c.bridge, "cni0");
    assert!(c.is_gateway);
    assert!(BridgeConf::parse(&json!({"bridge": "this-name-is-too-long"})).is_err());
    assert!(BridgeConf::parse(&json!({"bridge": "a/b"})).is_err());
    assert!(BridgeConf::parse(&json!({"mtu": 10})).is_err());
    assert!(BridgeConf::parse(&json!({"ipMasq": "yes"})).is_err());
}
