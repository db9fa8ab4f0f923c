//! The podrun-bridge plugin against the CNI spec, invoked as libcni would, as root in
//! network namespaces these tests create. Traffic never leaves the machine: pods only
//! get a default route to a test bridge with a private 10.244.x.0/24 subnet.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{json, Value};

const CNI_PATH: &str = "/usr/lib/cni:/opt/cni/bin";

fn add(net: &TestNetwork, version: &str, ns: &TestNetns, id: &str) -> Value {
    let path = ns.path();
    let run = invoke(
        &plugin_path(),
        &env("ADD", id, &path, "eth0", CNI_PATH),
        &net.conf(version, "podrun-bridge"),
    );
    run.ok();
    run.json
}

fn del(net: &TestNetwork, version: &str, netns_path: &str, id: &str) {
    invoke(
        &plugin_path(),
        &env("DEL", id, netns_path, "eth0", CNI_PATH),
        &net.conf(version, "podrun-bridge"),
    )
    .ok();
}

#[test]
fn add_check_del_across_versions() {
    if !require_root("add_check_del_across_versions") {
        return;
    }
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let net = TestNetwork::new(&format!("10.244.{}.0/24", 10 + i));
        let mut ns = TestNetns::new();
        let result = add(&net, version, &ns, "spec-ctr");

        // Result shape.
        assert_eq!(result["cniVersion"], *version);
        let ifaces = result["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 3);
        assert_eq!(ifaces[0]["name"], net.bridge.as_str());
        assert!(ifaces[1]["name"].as_str().unwrap().starts_with("veth"));
        assert!(ifaces[1].get("sandbox").is_none());
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(ifaces[2]["sandbox"], ns.path().as_str());
        let mac = ifaces[2]["mac"].as_str().unwrap().to_string();
        assert_eq!(mac.len(), 17);
        let ip = &result["ips"][0];
        assert_eq!(ip["interface"], 2);
        let gw = format!("10.244.{}.1", 10 + i);
        assert_eq!(ip["gateway"], gw.as_str());
        let address = ip["address"].as_str().unwrap().to_string();
        assert_eq!(address, format!("10.244.{}.2/24", 10 + i));
        if version.starts_with("0.") {
            assert_eq!(ip["version"], "4");
        } else {
            assert!(ip.get("version").is_none());
        }
        assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0", "gw": gw}]));

        // What the kernel has inside the netns.
        let link = &ns.ip_json(&["addr", "show", "dev", "eth0"])[0];
        assert_eq!(link["mtu"], 1400);
        assert_eq!(link["address"], mac.as_str());
        assert!(link["flags"].as_array().unwrap().contains(&json!("UP")));
        let v4: Vec<String> = link["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == "inet")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect();
        assert_eq!(v4, vec![address.clone()]);
        let routes = ns.ip_json(&["route", "show"]);
        assert!(routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == gw.as_str()));
        // Host side: the veth is on the bridge, the gateway address is on the bridge,
        // hairpin is on, the reservation file names the container.
        let host_veth = ifaces[1]["name"].as_str().unwrap();
        assert_eq!(net.ports(), vec![host_veth.to_string()]);
        assert_eq!(
            std::fs::read_to_string(format!("/sys/class/net/{host_veth}/brport/hairpin_mode"))
                .unwrap()
                .trim(),
            "1"
        );
        let bridge_addrs = sh("ip", &["-o", "addr", "show", "dev", &net.bridge]);
        assert!(bridge_addrs.contains(&format!("{gw}/24")), "{bridge_addrs}");
        let reservation =
            std::fs::read_to_string(net.reservation_dir().join(format!("10.244.{}.2", 10 + i)))
                .unwrap();
        assert_eq!(reservation, "spec-ctr\r\neth0");
        if TestNetwork::nft_available() {
            assert_eq!(net.masq_rules(), 1);
        }

        // CHECK with the ADD result as prevResult.
        let mut check_conf = net.conf(version, "podrun-bridge");
        check_conf["prevResult"] = result.clone();
        invoke(
            &plugin_path(),
            &env("CHECK", "spec-ctr", &ns.path(), "eth0", CNI_PATH),
            &check_conf,
        )
        .ok();
        // CHECK notices a missing address.
        sh("ip", &["-n", &ns.name, "addr", "flush", "dev", "eth0"]);
        let failed = invoke(
            &plugin_path(),
            &env("CHECK", "spec-ctr", &ns.path(), "eth0", CNI_PATH),
            &check_conf,
        );
        assert_ne!(failed.code, 0);

        // DEL twice, then again after the netns is gone.
        del(&net, version, &ns.path(), "spec-ctr");
        assert_eq!(ns.ip_json(&["link", "show", "dev", "eth0"]), Value::Null);
        del(&net, version, &ns.path(), "spec-ctr");
        let path = ns.path();
        let name = ns.name.clone();
        ns.delete();
        assert_netns_gone(&name);
        del(&net, version, &path, "spec-ctr");
        invoke(
            &plugin_path(),
            &env("DEL", "spec-ctr", "", "eth0", CNI_PATH),
            &net.conf(version, "podrun-bridge"),
        )
        .ok();
        net.assert_clean_and_remove();
    }
}

#[test]
fn version_command() {
    mark_ran();
    let run = invoke(
        &plugin_path(),
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": "1.1.0"}),
    );
    run.ok();
    assert_eq!(run.json["cniVersion"], "1.1.0");
    let supported: Vec<&str> = run.json["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(supported.contains(&v), "{supported:?}");
    }
}

#[test]
fn malformed_configs_get_spec_error_codes() {
    // None of these may get far enough to touch the host, so they also run unprivileged.
    let net = TestNetwork::new("10.244.20.0/24");
    let base = net.conf("1.1.0", "podrun-bridge");
    let e = env("ADD", "bad-ctr", "/run/netns/none-such", "eth0", CNI_PATH);
    let cases: Vec<(Value, u64, &str)> = vec![
        (
            json!({"cniVersion": "1.1.0", "type": "podrun-bridge"}),
            7,
            "missing name",
        ),
        (
            json!({"cniVersion": "1.1.0", "name": "x"}),
            7,
            "missing type",
        ),
        (
            json!({"name": "x", "type": "podrun-bridge"}),
            7,
            "missing cniVersion",
        ),
        (
            {
                let mut c = base.clone();
                c["cniVersion"] = json!("5.0.0");
                c
            },
            1,
            "unknown version",
        ),
        (
            {
                let mut c = base.clone();
                c["ipam"]["subnet"] = json!("10.244.20.0/33");
                c
            },
            7,
            "bad CIDR",
        ),
        (
            {
                let mut c = base.clone();
                c["ipam"]["subnet"] = json!("not-a-subnet");
                c
            },
            7,
            "garbage subnet",
        ),
        (
            {
                let mut c = base.clone();
                c["ipam"]["rangeStart"] = json!("10.9.9.9");
                c
            },
            7,
            "rangeStart outside",
        ),
        (
            {
                let mut c = base.clone();
                c["bridge"] = json!("../../etc/passwd");
                c
            },
            7,
            "hostile bridge name",
        ),
        (
            {
                let mut c = base.clone();
                c["name"] = json!("../../etc");
                c
            },
            7,
            "hostile network name",
        ),
        (
            {
                let mut c = base.clone();
                c["mtu"] = json!("big");
                c
            },
            7,
            "mistyped mtu",
        ),
        (
            {
                let mut c = base.clone();
                c["ipam"]["type"] = json!("no-such-ipam");
                c
            },
            7,
            "unknown ipam plugin",
        ),
        (
            {
                let mut c = base.clone();
                c["ipam"]["type"] = json!("../bin/sh");
                c
            },
            7,
            "ipam path traversal",
        ),
    ];
    for (conf, code, what) in cases {
        let run = invoke(&plugin_path(), &e, &conf);
        assert_eq!(run.error_code(), code, "{what}: {}", run.stdout);
        assert!(
            run.json["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    let run = invoke(&plugin_path(), &e, &Value::String("{not json".into()));
    assert_eq!(run.error_code(), 6);
    // Missing environment is code 4.
    let run = invoke(
        &plugin_path(),
        &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "x")],
        &base,
    );
    assert_eq!(run.error_code(), 4);
    let run = invoke(
        &plugin_path(),
        &env("ADD", "x", "/run/netns/x", "a/b", CNI_PATH),
        &base,
    );
    assert_eq!(run.error_code(), 4);
    let run = invoke(&plugin_path(), &[("CNI_COMMAND", "FROB")], &base);
    assert_eq!(run.error_code(), 4);
    // GC and STATUS are 1.1.0 commands.
    let run = invoke(
        &plugin_path(),
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", CNI_PATH)],
        &net.conf("1.0.0", "podrun-bridge"),
    );
    assert_eq!(run.error_code(), 1);
    if is_root() {
        // A netns that does not exist: container unknown, and nothing was reserved.
        let run = invoke(&plugin_path(), &e, &base);
        assert_eq!(run.error_code(), 3, "{}", run.stdout);
        assert!(net.reservations().is_empty());
        assert!(net.ports().is_empty());
        net.remove_bridge();
    }
    assert!(!net.bridge_exists());
}

#[test]
fn fifty_concurrent_adds_get_distinct_ips_and_dels_leave_nothing() {
    if !require_root("fifty_concurrent_adds") {
        return;
    }
    let net = TestNetwork::new("10.244.30.0/24");
    let namespaces: Vec<TestNetns> = (0..50).map(|_| TestNetns::new()).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let net = &net;
                s.spawn(move || add(net, "1.1.0", ns, &format!("ctr-{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: HashSet<String> = results
        .iter()
        .map(|r| r["ips"][0]["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 50);
    assert!(!ips.contains("10.244.30.1/24"), "gateway handed out");
    assert_eq!(net.reservations().len(), 50);
    assert_eq!(net.ports().len(), 50);
    if TestNetwork::nft_available() {
        assert_eq!(net.masq_rules(), 50);
    }
    std::thread::scope(|s| {
        for (i, ns) in namespaces.iter().enumerate() {
            let net = &net;
            s.spawn(move || del(net, "1.1.0", &ns.path(), &format!("ctr-{i}")));
        }
    });
    let names: Vec<String> = namespaces.iter().map(|n| n.name.clone()).collect();
    drop(namespaces);
    for n in names {
        assert_netns_gone(&n);
    }
    net.assert_clean_and_remove();
}

#[test]
fn exhausting_a_slash_29_is_a_clear_error() {
    if !require_root("exhausting_a_slash_29") {
        return;
    }
    let net = TestNetwork::new("10.244.40.0/29");
    let namespaces: Vec<TestNetns> = (0..6).map(|_| TestNetns::new()).collect();
    for (i, ns) in namespaces.iter().take(5).enumerate() {
        add(&net, "1.0.0", ns, &format!("full-{i}"));
    }
    let run = invoke(
        &plugin_path(),
        &env("ADD", "full-5", &namespaces[5].path(), "eth0", CNI_PATH),
        &net.conf("1.0.0", "podrun-bridge"),
    );
    assert_ne!(run.code, 0);
    let msg = run.json["msg"].as_str().unwrap();
    assert!(
        msg.contains("no IP addresses available in range set: 10.244.40.1-10.244.40.6"),
        "unclear error: {msg}"
    );
    // The failed ADD rolled back its veth.
    assert_eq!(
        namespaces[5].ip_json(&["link", "show", "dev", "eth0"]),
        Value::Null
    );
    assert_eq!(net.ports().len(), 5);
    for (i, ns) in namespaces.iter().take(5).enumerate() {
        del(&net, "1.0.0", &ns.path(), &format!("full-{i}"));
    }
    drop(namespaces);
    net.assert_clean_and_remove();
}

#[test]
fn gc_removes_attachments_not_listed_and_status_is_ok() {
    if !require_root("gc_removes_attachments") {
        return;
    }
    let net = TestNetwork::new("10.244.50.0/24");
    let keep = TestNetns::new();
    let mut gone = TestNetns::new();
    add(&net, "1.1.0", &keep, "keep");
    add(&net, "1.1.0", &gone, "gone");
    // The runtime lost track of "gone": its netns disappears without a DEL.
    gone.delete();
    assert_eq!(net.reservations().len(), 2);
    let mut gc_conf = net.conf("1.1.0", "podrun-bridge");
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    invoke(
        &plugin_path(),
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", CNI_PATH)],
        &gc_conf,
    )
    .ok();
    assert_eq!(net.reservations(), vec!["10.244.50.2".to_string()]);
    if TestNetwork::nft_available() {
        assert_eq!(net.masq_rules(), 1);
    }
    invoke(
        &plugin_path(),
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", CNI_PATH)],
        &net.conf("1.1.0", "podrun-bridge"),
    )
    .ok();
    del(&net, "1.1.0", &keep.path(), "keep");
    drop(keep);
    net.assert_clean_and_remove();
}

#[test]
fn delegated_ipam_runs_the_named_plugin() {
    if !require_root("delegated_ipam") {
        return;
    }
    let reference = std::path::Path::new("/usr/lib/cni/host-local");
    if !reference.exists() {
        common::cannot_run(
            "delegated_ipam",
            "containernetworking-plugins is not installed",
        );
        return;
    }
    // The reference host-local under another name, so the plugin must execute it.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(reference, bin.path().join("ext-ipam")).unwrap();
    let cni_path = bin.path().to_str().unwrap().to_string();
    let net = TestNetwork::new("10.244.60.0/24");
    let mut conf = net.conf("1.0.0", "podrun-bridge");
    conf["ipam"]["type"] = json!("ext-ipam");
    let ns = TestNetns::new();
    let path = ns.path();
    let run = invoke(
        &plugin_path(),
        &env("ADD", "deleg", &path, "eth0", &cni_path),
        &conf,
    );
    run.ok();
    assert_eq!(run.json["ips"][0]["address"], "10.244.60.2/24");
    assert_eq!(run.json["ips"][0]["interface"], 2);
    assert_eq!(net.reservations(), vec!["10.244.60.2".to_string()]);
    invoke(
        &plugin_path(),
        &env("DEL", "deleg", &path, "eth0", &cni_path),
        &conf,
    )
    .ok();
    drop(ns);
    net.assert_clean_and_remove();
}

#[test]
fn same_observable_result_as_the_reference_bridge() {
    if !require_root("same_as_reference_bridge") {
        return;
    }
    if !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        common::cannot_run(
            "same_as_reference_bridge",
            "containernetworking-plugins is not installed",
        );
        return;
    }
    let mut observed = Vec::new();
    for (i, plugin) in [
        plugin_path(),
        std::path::PathBuf::from("/usr/lib/cni/bridge"),
    ]
    .iter()
    .enumerate()
    {
        let net = TestNetwork::new(&format!("10.244.{}.0/24", 70 + i));
        let ns = TestNetns::new();
        let path = ns.path();
        let run = invoke(
            plugin,
            &env("ADD", "cmp", &path, "eth0", CNI_PATH),
            &net.conf("1.0.0", "bridge"),
        );
        run.ok();
        let r = &run.json;
        let shape = (
            r["interfaces"].as_array().unwrap().len(),
            r["interfaces"][2]["name"].clone(),
            r["interfaces"][2]["sandbox"] == path.as_str(),
            r["ips"][0]["address"]
                .as_str()
                .unwrap()
                .replace(&format!("10.244.{}.", 70 + i), "X."),
            r["ips"][0]["interface"].clone(),
            r["routes"]
                .to_string()
                .replace(&format!("10.244.{}.", 70 + i), "X."),
        );
        let link = &ns.ip_json(&["addr", "show", "dev", "eth0"])[0];
        let kernel = (
            link["mtu"].clone(),
            link["operstate"].clone(),
            net.ports().len(),
        );
        observed.push((shape, kernel));
        invoke(
            plugin,
            &env("DEL", "cmp", &path, "eth0", CNI_PATH),
            &net.conf("1.0.0", "bridge"),
        )
        .ok();
        drop(ns);
        // The reference plugin keeps its own iptables chains; only podrun's rules are
        // counted by the leak check.
        net.assert_clean_and_remove();
    }
    assert_eq!(observed[0], observed[1]);
}
