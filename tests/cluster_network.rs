//! The cluster network on three agents, each in a network namespace of its own on one
//! link (all addresses inside namespaces the test creates): every node gets a pod CIDR
//! from `podrun server`, its pods get addresses from it on podrun's own bridge, and
//! pods reach pods on other nodes by IP through host-gw routes. Every test ends with
//! the leak check on every node.

// Both harnesses carry the record of which tests ran.
#![allow(clippy::duplicate_mod)]

mod common;
mod kubelet_common;
mod server_common;

use std::collections::BTreeMap;

use kubelet_common::{Cluster, SLOW};
use serde_json::Value;
use server_common::{wait_until, wait_until_or};

/// A busybox pod on `node` that serves its hostname over HTTP on port 80.
fn web_pod(name: &str, node: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "web", "image": "busybox",
                "command": ["sh", "-c",
                    "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"],
            }],
        },
    })
    .to_string()
}

/// An HTTP GET from inside pod `from` (busybox nc): the whole response, trimmed.
fn http_get(c: &Cluster, from: &str, host: &str) -> String {
    let out = c.kubectl(&[
        "exec",
        from,
        "--",
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} 80"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .replace('\r', "")
}

fn apply(c: &Cluster, manifest: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.json");
    std::fs::write(&f, manifest).unwrap();
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
}

fn running_ip(c: &Cluster, name: &str) -> String {
    c.wait_pod(name, "Running with an IP", |p| {
        (p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
            .then(|| p["status"]["podIP"].as_str().unwrap().to_owned())
    })
}

/// The node's routes that podrun installed (`proto 152`): destination -> gateway.
fn podrun_routes(c: &mut Cluster, node: &str) -> BTreeMap<String, String> {
    let out = c
        .node(node)
        .exec(&["ip", "-j", "route", "show", "proto", "152"]);
    assert!(out.status.success(), "{out:?}");
    let routes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    routes
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or_default().to_owned(),
                r["gateway"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The nodes' network state, for a failure's message.
fn diagnose(c: &Cluster, ips: &[&str]) -> String {
    let mut out = String::new();
    for n in &c.nodes {
        for ip in ips {
            let o = n.exec(&["curl", "-sS", "-m", "2", &format!("http://{ip}/")]);
            out.push_str(&format!(
                "--- {} curl {ip}: {} {}{}\n",
                n.name,
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        for cmd in [
            &["ip", "-br", "addr"][..],
            &["ip", "route"],
            &[
                "sysctl",
                "net.ipv4.ip_forward",
                "net.ipv4.conf.all.rp_filter",
            ],
            &["nft", "list", "ruleset"],
        ] {
            let o = n.exec(cmd);
            out.push_str(&format!(
                "--- {} {}:\n{}{}",
                n.name,
                cmd.join(" "),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    out
}

#[test]
fn pods_reach_pods_on_other_nodes_by_ip() {
    let names = ["w1-k8s", "w2-k8s", "w3-k8s"];
    let Some(mut c) = Cluster::start_network("pods_reach_pods_on_other_nodes_by_ip", &names, &[])
    else {
        return;
    };
    // Every node has its own /24 of 172.16.0.0/16.
    let nodes: Value = serde_json::from_str(&c.ok(&["get", "nodes", "-o", "json"])).unwrap();
    let mut cidrs = BTreeMap::new();
    for n in nodes["items"].as_array().unwrap() {
        let name = n["metadata"]["name"].as_str().unwrap().to_owned();
        let cidr = n["spec"]["podCIDR"].as_str().unwrap_or_default().to_owned();
        assert!(
            cidr.starts_with("172.16.") && cidr.ends_with(".0/24"),
            "{name}: {cidr:?}"
        );
        assert_eq!(n["spec"]["podCIDRs"][0], cidr.as_str());
        cidrs.insert(name, cidr);
    }
    let distinct: std::collections::BTreeSet<_> = cidrs.values().collect();
    assert_eq!(distinct.len(), 3, "{cidrs:?}");
    let jsonpath = c.ok(&["get", "nodes", "-o", "jsonpath={..podCIDR}"]);
    for cidr in cidrs.values() {
        assert!(jsonpath.contains(cidr.as_str()), "{jsonpath}");
    }
    // Each node routes the others' ranges through their addresses, and only those.
    let ips: BTreeMap<String, String> = c
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.ip.clone()))
        .collect();
    for me in names {
        let want: BTreeMap<String, String> = names
            .iter()
            .filter(|n| **n != me)
            .map(|n| (cidrs[*n].clone(), ips[*n].clone()))
            .collect();
        wait_until(&format!("{me}'s routes"), SLOW, || {
            (podrun_routes(&mut c, me) == want).then_some(())
        });
        let log = c.node(me).log_text();
        assert!(
            log.contains("cluster network") && log.contains(&cidrs[me]),
            "{me}: the agent says which range it uses:\n{log}"
        );
    }

    // The cluster DNS address is this node's own.
    let dns = c.ok(&[
        "get",
        "svc",
        "-n",
        "kube-system",
        "kube-dns",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(dns, "10.96.0.10");
    for n in &c.nodes {
        let out = n.exec(&["ip", "-o", "addr", "show", "to", "10.96.0.10/32"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("10.96.0.10/32"),
            "{}: {out:?}",
            n.name
        );
    }

    // A pod on w1 reaches a pod on w3 by IP, and the other way round; each pod's address
    // is in its node's range.
    apply(&c, &web_pod("web1", "w1-k8s"));
    apply(&c, &web_pod("web3", "w3-k8s"));
    let ip1 = running_ip(&c, "web1");
    let ip3 = running_ip(&c, "web3");
    let net = |cidr: &str| cidr.trim_end_matches("0/24").to_owned();
    assert!(
        ip1.starts_with(&net(&cidrs["w1-k8s"])),
        "{ip1} in {}",
        cidrs["w1-k8s"]
    );
    assert!(
        ip3.starts_with(&net(&cidrs["w3-k8s"])),
        "{ip3} in {}",
        cidrs["w3-k8s"]
    );
    let fetch = |c: &Cluster, from: &str, ip: &str| -> String { http_get(c, from, ip) };
    wait_until_or(
        SLOW,
        || format!("web1 -> web3\n{}", diagnose(&c, &[&ip1, &ip3])),
        || fetch(&c, "web1", &ip3).ends_with("\nweb3").then_some(()),
    );
    wait_until_or(
        SLOW,
        || format!("web3 -> web1\n{}", diagnose(&c, &[&ip1, &ip3])),
        || fetch(&c, "web3", &ip1).ends_with("\nweb1").then_some(()),
    );
    // A node that leaves takes its route with it, on every other node.
    c.ok(&["delete", "pod", "web3", "--wait=true"]);
    c.node("w3-k8s").stop();
    c.ok(&["delete", "node", "w3-k8s"]);
    for me in ["w1-k8s", "w2-k8s"] {
        wait_until(&format!("{me} drops the route to w3"), SLOW, || {
            (!podrun_routes(&mut c, me).contains_key(&cidrs["w3-k8s"])).then_some(())
        });
    }
    c.finish();
}

#[test]
fn pods_reach_pods_on_other_nodes_over_vxlan() {
    let names = ["v1-k8s", "v2-k8s"];
    let Some(mut c) = Cluster::start_network(
        "pods_reach_pods_on_other_nodes_over_vxlan",
        &names,
        &["--network-backend", "vxlan"],
    ) else {
        return;
    };
    let cidr = |c: &Cluster, n: &str| c.ok(&["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"]);
    let (cidr1, cidr2) = (cidr(&c, "v1-k8s"), cidr(&c, "v2-k8s"));
    // Each node publishes its tunnel link's MAC; the other routes its range through the
    // tunnel.
    for (me, other, other_cidr) in [("v1-k8s", "v2-k8s", &cidr2), ("v2-k8s", "v1-k8s", &cidr1)] {
        let mac = wait_until(&format!("{other}'s tunnel MAC"), SLOW, || {
            let m = c.ok(&[
                "get",
                "node",
                other,
                "-o",
                "jsonpath={.metadata.annotations.podrun\\.io/vtep-mac}",
            ]);
            (!m.is_empty()).then_some(m)
        });
        let vtep = other_cidr.trim_end_matches("/24").to_owned();
        wait_until(&format!("{me}'s tunnel route to {other}"), SLOW, || {
            let out = c.node(me).exec(&["ip", "route", "show", "proto", "152"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains(&format!("{other_cidr} via {vtep} dev podrun.1 onlink"))
                .then_some(())
        });
        let fdb = c
            .node(me)
            .exec(&["bridge", "fdb", "show", "dev", "podrun.1"]);
        let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
        let other_ip = c.nodes.iter().find(|n| n.name == other).unwrap().ip.clone();
        assert!(
            fdb.contains(&format!("{mac} dst {other_ip}")),
            "{me}: {fdb}"
        );
    }
    apply(&c, &web_pod("web1", "v1-k8s"));
    apply(&c, &web_pod("web2", "v2-k8s"));
    let ip1 = running_ip(&c, "web1");
    let ip2 = running_ip(&c, "web2");
    wait_until_or(
        SLOW,
        || format!("web1 -> web2\n{}", diagnose(&c, &[&ip1, &ip2])),
        || http_get(&c, "web1", &ip2).ends_with("\nweb2").then_some(()),
    );
    wait_until_or(
        SLOW,
        || format!("web2 -> web1\n{}", diagnose(&c, &[&ip1, &ip2])),
        || http_get(&c, "web2", &ip1).ends_with("\nweb1").then_some(()),
    );
    // The other node leaves: its route, neighbour and forwarding entries go.
    c.ok(&["delete", "pod", "web2", "--wait=true"]);
    c.node("v2-k8s").stop();
    c.ok(&["delete", "node", "v2-k8s"]);
    let left = |c: &Cluster| -> String {
        let n = c.nodes.iter().find(|n| n.name == "v1-k8s").unwrap();
        [
            &["ip", "route", "show", "proto", "152"][..],
            &["ip", "neigh", "show", "dev", "podrun.1", "nud", "permanent"],
            &["bridge", "fdb", "show", "dev", "podrun.1"],
        ]
        .iter()
        .map(|cmd| String::from_utf8_lossy(&n.exec(cmd).stdout).into_owned())
        .collect::<Vec<_>>()
        .concat()
    };
    wait_until_or(
        SLOW,
        || format!("v1 forgets v2; left:\n{}", left(&c)),
        || {
            let l = left(&c);
            // The link's own address entry is not a peer's.
            (!l.contains(" dst ") && !l.contains(" via ") && !l.contains("PERMANENT")).then_some(())
        },
    );
    c.finish();
}
