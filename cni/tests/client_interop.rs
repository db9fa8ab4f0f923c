//! The runtime-side client driving real plugin chains as root: Debian's reference
//! plugins (bridge + host-local + portmap) and podrun-bridge, through ADD, CHECK and
//! DEL with the result cache, in namespaces these tests create.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use podrun_cni::{Cni, NetworkConfigList};
use serde_json::{json, Value};

fn reference_plugins_installed() -> bool {
    ["bridge", "host-local", "portmap"]
        .iter()
        .all(|p| Path::new("/usr/lib/cni").join(p).exists())
}

fn nat_rules() -> String {
    Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn drive_chain(
    net: &TestNetwork,
    list: NetworkConfigList,
    cni_path: Vec<PathBuf>,
    caps: Value,
) -> Value {
    let cache = tempfile::tempdir().unwrap();
    let cni = Cni::new(list, cni_path, cache.path().to_path_buf());
    let mut ns = TestNetns::new();
    let netns = ns.path();
    let result = cni.add("interop", &netns, "eth0", caps).unwrap();
    let ip = result.ips[0].address;
    assert!(
        ip.to_string()
            .starts_with(net.subnet.trim_end_matches("0/24")),
        "{ip}"
    );
    assert_eq!(
        result
            .interfaces
            .iter()
            .filter(|i| i.sandbox == netns)
            .count(),
        1
    );
    let cached = cni.cached("interop", "eth0").expect("result cached");
    assert_eq!(cached.result["ips"][0]["address"], ip.to_string());

    let link = &ns.ip_json(&["addr", "show", "dev", "eth0"])[0];
    assert!(link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["local"] == ip.addr().to_string()));
    assert_eq!(net.ports().len(), 1);

    cni.check("interop", &netns, "eth0", Value::Null).unwrap();
    let snapshot = serde_json::to_value(&result).unwrap();

    cni.del("interop", &netns, "eth0", Value::Null).unwrap();
    assert!(cni.cached("interop", "eth0").is_none());
    assert_eq!(ns.ip_json(&["link", "show", "dev", "eth0"]), Value::Null);
    cni.del("interop", &netns, "eth0", Value::Null).unwrap();
    let name = ns.name.clone();
    ns.delete();
    assert_netns_gone(&name);
    cni.del("interop", &netns, "eth0", Value::Null).unwrap();
    snapshot
}

#[test]
fn client_drives_the_reference_plugins() {
    if !require_root("client_drives_the_reference_plugins") {
        return;
    }
    if !reference_plugins_installed() {
        common::cannot_run(
            "client_drives_the_reference_plugins",
            "containernetworking-plugins is not installed in /usr/lib/cni",
        );
        return;
    }
    let net = TestNetwork::new("10.244.80.0/24");
    let list: NetworkConfigList = serde_json::from_value(json!({
        "cniVersion": "1.0.0",
        "name": net.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": true,
                "ipam": {"type": "host-local", "subnet": net.subnet, "dataDir": net.data_dir.path(),
                         "routes": [{"dst": "0.0.0.0/0"}]}
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    }))
    .unwrap();
    let caps =
        json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]});
    let cache = tempfile::tempdir().unwrap();
    let cni = Cni::new(
        list.clone(),
        vec![PathBuf::from("/usr/lib/cni")],
        cache.path().to_path_buf(),
    );
    // The portmap rule exists while attached and goes away with DEL.
    let ns = TestNetns::new();
    cni.add("pm", &ns.path(), "eth0", caps.clone()).unwrap();
    assert!(
        nat_rules().contains("--dport 18080"),
        "no DNAT rule for hostPort 18080"
    );
    cni.del("pm", &ns.path(), "eth0", Value::Null).unwrap();
    assert!(
        !nat_rules().contains("--dport 18080"),
        "DNAT rule left after DEL"
    );
    drop(ns);

    drive_chain(&net, list, vec![PathBuf::from("/usr/lib/cni")], caps);
    net.assert_clean_and_remove();
}

#[test]
fn client_drives_podrun_bridge() {
    if !require_root("client_drives_podrun_bridge") {
        return;
    }
    let net = TestNetwork::new("10.244.81.0/24");
    let list: NetworkConfigList = serde_json::from_value(json!({
        "cniVersion": "1.1.0",
        "name": net.name,
        "plugins": [{
            "type": "podrun-bridge",
            "bridge": net.bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": true,
            "ipam": {"type": "host-local", "subnet": net.subnet, "dataDir": net.data_dir.path()}
        }]
    }))
    .unwrap();
    let bin_dir = plugin_path().parent().unwrap().to_path_buf();
    let result = drive_chain(&net, list.clone(), vec![bin_dir.clone()], Value::Null);
    assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");

    // GC and STATUS through the client (1.1.0 network).
    let cache = tempfile::tempdir().unwrap();
    let cni = Cni::new(list, vec![bin_dir], cache.path().to_path_buf());
    cni.status().unwrap();
    let mut ns = TestNetns::new();
    cni.add("stale", &ns.path(), "eth0", Value::Null).unwrap();
    ns.delete();
    cni.gc(&[]).unwrap();
    assert!(net.reservations().is_empty());
    assert!(cni.cached("stale", "eth0").is_none());
    assert_eq!(net.masq_rules(), 0);
    // The stale veth died with its netns.
    net.assert_clean_and_remove();
}
