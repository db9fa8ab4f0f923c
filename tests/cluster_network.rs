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

/// The echo-hname Deployment of the tutorials: busybox httpd answering its pod's name,
/// ready while it has something to serve.
fn echo_deployment(replicas: u32) -> String {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "echo-hname" },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": "echo-hname" } },
            "template": {
                "metadata": { "labels": { "app": "echo-hname" } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "web", "image": "busybox",
                        "command": ["sh", "-c",
                            "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"],
                        "ports": [{ "name": "http", "containerPort": 80 }],
                        "readinessProbe": {
                            "httpGet": { "path": "/index.html", "port": 80 },
                            "periodSeconds": 1, "failureThreshold": 1,
                        },
                    }],
                },
            },
        },
    })
    .to_string()
}

/// The hostnames that answered `n` requests to `host[:port]` from inside pod `from`.
fn answers(c: &Cluster, from: &str, host: &str, n: u32) -> std::collections::BTreeSet<String> {
    let script = format!(
        "for i in $(seq {n}); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} 80 | tail -n 1; echo; done"
    );
    let out = c.kubectl(&["exec", from, "--", "sh", "-c", &script]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| l.starts_with("echo-hname-"))
        .collect()
}

/// The names of the Deployment's pods that are Ready.
fn ready_echo_pods(c: &Cluster) -> std::collections::BTreeSet<String> {
    let pods: Value =
        serde_json::from_str(&c.ok(&["get", "pods", "-l", "app=echo-hname", "-o", "json"]))
            .unwrap();
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The proxy's rules of a node, as nft lists them.
fn proxy_rules(c: &Cluster, node: &str) -> String {
    let n = c.nodes.iter().find(|n| n.name == node).unwrap();
    String::from_utf8_lossy(
        &n.exec(&["nft", "list", "table", "ip", "podrun-proxy"])
            .stdout,
    )
    .into_owned()
}

#[test]
fn services_balance_over_ready_pods_and_resolve_by_name() {
    let names = ["s1-k8s", "s2-k8s", "s3-k8s"];
    let Some(c) = Cluster::start_network(
        "services_balance_over_ready_pods_and_resolve_by_name",
        &names,
        &[],
    ) else {
        return;
    };
    apply(&c, &echo_deployment(3));
    apply(&c, &web_pod("client", "s1-k8s"));
    running_ip(&c, "client");
    c.ok(&["expose", "deployment", "echo-hname", "--port=80"]);
    let cluster_ip = c.ok(&[
        "get",
        "svc",
        "echo-hname",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert!(
        cluster_ip.starts_with("10.9") || cluster_ip.starts_with("10.1"),
        "{cluster_ip}"
    );

    // Every replica answers on the ClusterIP in turn.
    let ready = wait_until("3 ready replicas", SLOW, || {
        let r = ready_echo_pods(&c);
        (r.len() == 3).then_some(r)
    });
    wait_until_or(
        SLOW,
        || {
            format!(
                "every replica behind {cluster_ip}; answers {:?}",
                answers(&c, "client", &cluster_ip, 10)
            )
        },
        || (answers(&c, "client", &cluster_ip, 30) == ready).then_some(()),
    );

    // By name, through the node's cluster DNS: the short name (search path) and the
    // full one; busybox's nslookup has its own resolver.
    for name in ["echo-hname", "echo-hname.default.svc.cluster.local"] {
        wait_until(&format!("{name} resolves to {cluster_ip}"), SLOW, || {
            let out = c.kubectl(&["exec", "client", "--", "nslookup", name]);
            String::from_utf8_lossy(&out.stdout)
                .contains(&cluster_ip)
                .then_some(())
        });
    }
    let resolv = c.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("ndots:5"), "{resolv}");
    // curl (glibc's resolver, as most programs) by the short name.
    apply(
        &c,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "curl" },
            "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "curl", "image": "curl",
                    "command": ["curl", "-sS", "--retry", "20", "--retry-all-errors", "--retry-delay", "1",
                                "-m", "5", "http://echo-hname/"] }],
            },
        })
        .to_string(),
    );
    c.wait_pod("curl", "Succeeded", |p| {
        (p["status"]["phase"] == "Succeeded").then_some(())
    });
    let got = c.ok(&["logs", "curl"]);
    assert!(
        ready.contains(got.trim()),
        "curl echo-hname answered {got:?}"
    );

    // A replica that fails readiness receives no traffic.
    let sick = ready.iter().next().unwrap().clone();
    c.ok(&["exec", &sick, "--", "rm", "/www/index.html"]);
    wait_until("the sick replica leaves the endpoints", SLOW, || {
        (!ready_echo_pods(&c).contains(&sick)).then_some(())
    });
    wait_until_or(
        SLOW,
        || format!("no traffic to {sick}"),
        || {
            let a = answers(&c, "client", &cluster_ip, 20);
            (a.len() == 2 && !a.contains(&sick)).then_some(())
        },
    );

    // Scaling changes who answers.
    c.ok(&["scale", "deployment", "echo-hname", "--replicas=5"]);
    // The sick replica stays out: 4 of the 5 are ready.
    let ready = wait_until("4 ready replicas of 5", SLOW, || {
        let r = ready_echo_pods(&c);
        (r.len() == 4).then_some(r)
    });
    assert!(!ready.contains(&sick));
    let started = std::time::Instant::now();
    wait_until("traffic reaches the 4 ready replicas", SLOW, || {
        (answers(&c, "client", &cluster_ip, 40) == ready).then_some(())
    });
    eprintln!(
        "scale 3 -> 5: every ready replica answered {:?} after all were Ready",
        started.elapsed()
    );
    c.ok(&["scale", "deployment", "echo-hname", "--replicas=1"]);
    let ready = wait_until("scaled down to 1", SLOW, || {
        let r = ready_echo_pods(&c);
        let pods = c.ok(&["get", "pods", "-l", "app=echo-hname", "-o", "name"]);
        (r.len() == 1 && pods.lines().count() == 1).then_some(r)
    });
    wait_until("traffic reaches only the one left", SLOW, || {
        (answers(&c, "client", &cluster_ip, 10) == ready).then_some(())
    });

    // NodePort: from the host side of the test network, on every node's address.
    c.ok(&[
        "patch",
        "svc",
        "echo-hname",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ]);
    let port = c.ok(&[
        "get",
        "svc",
        "echo-hname",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    for n in &c.nodes {
        let url = format!("http://{}:{port}/", n.ip);
        wait_until(&format!("NodePort on {}", n.name), SLOW, || {
            let out = std::process::Command::new("curl")
                .args(["-sS", "-m", "3", &url])
                .output()
                .unwrap();
            ready
                .contains(String::from_utf8_lossy(&out.stdout).trim())
                .then_some(())
        });
    }

    // Removing the Service removes its rules on every node.
    for n in names {
        assert!(proxy_rules(&c, n).contains("echo-hname"), "{n}");
    }
    c.ok(&["delete", "svc", "echo-hname"]);
    for n in names {
        wait_until(&format!("{n} drops echo-hname's rules"), SLOW, || {
            (!proxy_rules(&c, n).contains("echo-hname")).then_some(())
        });
    }
    c.ok(&["delete", "deployment", "echo-hname"]);
    c.finish();
}
