//! The renderer and the proxier against a fake nft.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::model::{ServiceKey, Snapshot};
use super::nft::{listed_names, FakeNft};
use super::render::{self, Existing, RenderConfig, Transaction};
use super::sync::Proxier;

fn cfg() -> RenderConfig {
    RenderConfig {
        node_name: "node-a".into(),
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
    }
}

fn service(name: &str, ip: &str, spec: serde_json::Value) -> Service {
    let mut s = json!({
        "metadata": {"namespace": "default", "name": name},
        "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]},
    });
    for (k, v) in spec.as_object().unwrap() {
        s["spec"][k] = v.clone();
    }
    serde_json::from_value(s).unwrap()
}

/// A slice of `service`: endpoints (ip, node, ready, serving, terminating), one port.
fn slice(
    service: &str,
    name: &str,
    port: serde_json::Value,
    eps: &[(&str, &str, bool, bool, bool)],
) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": name,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [port],
        "endpoints": eps.iter().map(|(ip, node, ready, serving, terminating)| json!({
            "addresses": [ip], "nodeName": node,
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn ready(ip: &'static str, node: &'static str) -> (&'static str, &'static str, bool, bool, bool) {
    (ip, node, true, true, false)
}

fn rules(snap: &Snapshot, name: &str) -> render::ServiceRules {
    Proxier::new(cfg(), Vec::new())
        .desired(snap, &ServiceKey::new("default", name))
        .unwrap_or_default()
}

fn all_rules(r: &render::ServiceRules) -> String {
    let mut s = String::new();
    for (chain, rules) in &r.chains {
        s.push_str(&format!("chain {chain}\n"));
        for rule in rules {
            s.push_str(&format!("  {rule}\n"));
        }
    }
    for ((map, key), value) in &r.elements {
        s.push_str(&format!("{map}: {key} : {value}\n"));
    }
    s
}

fn web() -> Snapshot {
    let mut snap = Snapshot::default();
    snap.apply_service(service("web", "10.96.0.10", json!({})));
    snap.apply_slice(slice(
        "web",
        "web-1",
        json!({"port": 8080, "protocol": "TCP"}),
        &[ready("10.244.1.2", "node-a"), ready("10.244.2.2", "node-b")],
    ));
    snap
}

#[test]
fn cluster_ip_balances_over_ready_endpoints() {
    let r = rules(&web(), "web");
    let text = all_rules(&r);
    let svc_chain = r.chains.keys().find(|c| c.starts_with("service-")).unwrap();
    assert!(svc_chain.ends_with("-default/web/tcp/"), "{svc_chain}");
    assert_eq!(
        r.elements
            .get(&(render::SERVICE_IPS, "10.96.0.10 . tcp . 80".into())),
        Some(&format!("goto {svc_chain}"))
    );
    let svc_rules = &r.chains[svc_chain];
    assert_eq!(
        svc_rules[0],
        "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
    );
    assert!(svc_rules[1].starts_with("numgen random mod 2 vmap { 0 : goto endpoint-"));
    let endpoints: Vec<_> = r
        .chains
        .iter()
        .filter(|(c, _)| c.starts_with("endpoint-"))
        .collect();
    assert_eq!(endpoints.len(), 2, "{text}");
    let (_, ep) = endpoints
        .iter()
        .find(|(c, _)| c.ends_with("__10.244.1.2/8080"))
        .unwrap();
    assert_eq!(
        **ep,
        [
            "ip saddr 10.244.1.2 jump mark-for-masquerade",
            "meta l4proto tcp dnat to 10.244.1.2:8080"
        ]
    );
    // No NodePort, no external chain, nothing refused.
    assert!(!text.contains("external-"), "{text}");
    assert!(!text.contains("no-endpoint"), "{text}");
}

#[test]
fn node_port_goes_through_the_external_chain_with_masquerade() {
    let mut snap = web();
    snap.apply_service(service(
        "web",
        "10.96.0.10",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
    ));
    let r = rules(&snap, "web");
    let ext = r
        .chains
        .keys()
        .find(|c| c.starts_with("external-"))
        .unwrap();
    let svc = r.chains.keys().find(|c| c.starts_with("service-")).unwrap();
    assert_eq!(
        r.elements
            .get(&(render::SERVICE_NODEPORTS, "tcp . 30080".into())),
        Some(&format!("goto {ext}"))
    );
    assert_eq!(
        r.chains[ext],
        ["jump mark-for-masquerade".to_owned(), format!("goto {svc}")]
    );
    // A ClusterIP service keeps no NodePort even if one is written.
    snap.apply_service(service(
        "web",
        "10.96.0.10",
        json!({"ports": [{"port": 80, "nodePort": 30080}]}),
    ));
    assert!(!all_rules(&rules(&snap, "web")).contains("30080"));
}

#[test]
fn named_target_port_takes_the_number_from_the_slice_port_of_that_name() {
    let mut snap = Snapshot::default();
    snap.apply_service(service(
        "multi",
        "10.96.0.11",
        json!({"ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "metrics", "port": 9090, "targetPort": "prom"},
        ]}),
    ));
    snap.apply_slice(
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "multi-1",
                         "labels": {"kubernetes.io/service-name": "multi"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9100, "protocol": "TCP"},
                      {"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}],
        }))
        .unwrap(),
    );
    let text = all_rules(&rules(&snap, "multi"));
    assert!(text.contains("dnat to 10.244.1.5:8080"), "{text}");
    assert!(text.contains("dnat to 10.244.1.5:9100"), "{text}");
    assert!(
        text.contains("10.96.0.11 . tcp . 80 : goto service-"),
        "{text}"
    );
    assert!(
        text.contains("10.96.0.11 . tcp . 9090 : goto service-"),
        "{text}"
    );
    let http = text
        .lines()
        .find(|l| l.starts_with("chain endpoint-") && l.contains("/tcp/http__"))
        .unwrap();
    assert!(http.ends_with("__10.244.1.5/8080"), "{http}");
}

#[test]
fn client_ip_affinity_sets_with_the_timeout() {
    let mut snap = web();
    snap.apply_service(service(
        "web",
        "10.96.0.10",
        json!({"sessionAffinity": "ClientIP"}),
    ));
    let r = rules(&snap, "web");
    assert_eq!(r.sets.len(), 2);
    assert!(r.sets.values().all(|t| *t == 10800));
    let svc = r.chains.keys().find(|c| c.starts_with("service-")).unwrap();
    let svc_rules = &r.chains[svc];
    assert_eq!(svc_rules.len(), 4, "{svc_rules:?}");
    for rule in &svc_rules[1..3] {
        let set = rule
            .strip_prefix("ip saddr @")
            .and_then(|r| r.split_once(" goto endpoint-"))
            .map(|(set, _)| set)
            .unwrap_or_else(|| panic!("{rule}"));
        assert!(r.sets.contains_key(set), "{rule}");
    }
    let text = all_rules(&r);
    assert_eq!(text.matches("update @affinity-").count(), 2, "{text}");
    // Another timeout is another set, so a set never has to change.
    snap.apply_service(service(
        "web",
        "10.96.0.10",
        json!({"sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
    ));
    let r60 = rules(&snap, "web");
    assert!(r60.sets.values().all(|t| *t == 60));
    assert!(r60.sets.keys().all(|k| !r.sets.contains_key(k)));
    let mut tx = Transaction::default();
    tx.diff(Some(&r), Some(&r60));
    let script = tx.script();
    assert!(script.contains("timeout 60s;"), "{script}");
    // The old sets go after the chains using them are flushed.
    let flush = script.find("flush chain").unwrap();
    let delete = script.find("delete set").unwrap();
    assert!(flush < delete, "{script}");
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    let mut snap = web();
    snap.apply_service(service(
        "web",
        "10.96.0.10",
        json!({"internalTrafficPolicy": "Local"}),
    ));
    let r = rules(&snap, "web");
    let text = all_rules(&r);
    assert!(
        text.contains("10.96.0.10 . tcp . 80 : goto local-"),
        "{text}"
    );
    assert!(text.contains("numgen random mod 1 vmap"), "{text}");
    assert!(text.contains("dnat to 10.244.1.2:8080"), "{text}");
    assert!(!text.contains("10.244.2.2"), "{text}");
    assert!(!text.contains("chain service-"), "{text}");
    // None here: dropped, not rejected (the service has endpoints elsewhere).
    let far = ServiceKey::new("default", "web");
    let other = Proxier::new(
        RenderConfig {
            node_name: "node-c".into(),
            ..cfg()
        },
        Vec::new(),
    );
    let r = other.desired(&snap, &far).unwrap();
    assert_eq!(
        r.elements
            .get(&(render::NO_ENDPOINT_SERVICES, "10.96.0.10 . tcp . 80".into())),
        Some(&"drop".to_owned())
    );
    assert!(r.chains.is_empty());
}

#[test]
fn external_traffic_policy_local_short_circuits_pods_and_the_node() {
    let mut snap = web();
    snap.apply_service(service(
        "web",
        "10.96.0.10",
        json!({"type": "NodePort", "externalTrafficPolicy": "Local",
               "ports": [{"port": 80, "nodePort": 30080}]}),
    ));
    let r = rules(&snap, "web");
    let ext = r
        .chains
        .keys()
        .find(|c| c.starts_with("external-"))
        .unwrap();
    let svc = r.chains.keys().find(|c| c.starts_with("service-")).unwrap();
    let local = r.chains.keys().find(|c| c.starts_with("local-")).unwrap();
    let ext_rules = &r.chains[ext];
    assert_eq!(
        ext_rules[0],
        format!("ip saddr 10.244.0.0/16 goto {svc} comment \"short-circuit pod traffic\"")
    );
    assert!(ext_rules[1].starts_with("fib saddr type local jump mark-for-masquerade"));
    assert!(ext_rules[2].starts_with(&format!("fib saddr type local goto {svc}")));
    assert_eq!(ext_rules[3], format!("goto {local}"));
    assert!(r.chains[local][0].starts_with("numgen random mod 1 "));
    // The ClusterIP still balances over both.
    assert!(r.chains[svc][1].starts_with("numgen random mod 2 "));

    // No local endpoint: outside traffic to the NodePort is dropped.
    let far = Proxier::new(
        RenderConfig {
            node_name: "node-c".into(),
            ..cfg()
        },
        Vec::new(),
    );
    let r = far
        .desired(&snap, &ServiceKey::new("default", "web"))
        .unwrap();
    assert_eq!(
        r.elements
            .get(&(render::NO_ENDPOINT_NODEPORTS, "tcp . 30080".into())),
        Some(&"drop".to_owned())
    );
    let ext = r
        .chains
        .keys()
        .find(|c| c.starts_with("external-"))
        .unwrap();
    assert!(!r.chains[ext].iter().any(|l| l.starts_with("goto local-")));
}

#[test]
fn a_service_without_ready_endpoints_is_rejected() {
    let mut snap = Snapshot::default();
    snap.apply_service(service(
        "empty",
        "10.96.0.12",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30081}]}),
    ));
    let r = rules(&snap, "empty");
    assert!(r.chains.is_empty());
    assert_eq!(
        r.elements
            .get(&(render::NO_ENDPOINT_SERVICES, "10.96.0.12 . tcp . 80".into())),
        Some(&"goto reject-chain".to_owned())
    );
    assert_eq!(
        r.elements
            .get(&(render::NO_ENDPOINT_NODEPORTS, "tcp . 30081".into())),
        Some(&"goto reject-chain".to_owned())
    );
    // Not ready and not terminating: still nothing to send to.
    snap.apply_slice(slice(
        "empty",
        "empty-1",
        json!({"port": 80}),
        &[("10.244.1.9", "node-a", false, false, false)],
    ));
    assert!(rules(&snap, "empty").chains.is_empty());
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let mut snap = Snapshot::default();
    snap.apply_service(service("roll", "10.96.0.13", json!({})));
    snap.apply_slice(slice(
        "roll",
        "roll-1",
        json!({"port": 8080}),
        &[
            ("10.244.1.3", "node-a", false, true, true),
            ("10.244.1.4", "node-a", false, false, true),
        ],
    ));
    let text = all_rules(&rules(&snap, "roll"));
    assert!(text.contains("dnat to 10.244.1.3:8080"), "{text}");
    assert!(!text.contains("10.244.1.4"), "{text}");
    snap.apply_slice(slice(
        "roll",
        "roll-2",
        json!({"port": 8080}),
        &[ready("10.244.1.5", "node-b")],
    ));
    let text = all_rules(&rules(&snap, "roll"));
    assert!(text.contains("numgen random mod 1 "), "{text}");
    assert!(text.contains("dnat to 10.244.1.5:8080"), "{text}");
    assert!(!text.contains("10.244.1.3"), "{text}");
}

#[test]
fn skipped_headless_and_external_name_services_get_no_rules() {
    let mut snap = web();
    snap.apply_service(service("dns", "10.96.0.53", json!({})));
    snap.apply_service(service("headless", "None", json!({})));
    snap.apply_service(service(
        "ext",
        "",
        json!({"type": "ExternalName", "externalName": "example.org"}),
    ));
    let p = Proxier::new(cfg(), vec!["10.96.0.53".parse().unwrap()]);
    for name in ["dns", "headless", "ext"] {
        assert!(p
            .desired(&snap, &ServiceKey::new("default", name))
            .is_none());
    }
    assert!(p
        .desired(&snap, &ServiceKey::new("default", "web"))
        .is_some());
}

#[test]
fn the_full_sync_writes_the_table_and_flushes_what_is_stale() {
    let snap = web();
    let nft = FakeNft::default();
    *nft.existing.lock().unwrap() = Existing {
        chains: ["services", "service-OLD-default/gone/tcp/"]
            .map(String::from)
            .into(),
        sets: ["affinity-OLD", "service-ips"].map(String::from).into(),
    };
    let mut p = Proxier::new(cfg(), Vec::new());
    let stats = p.sync(&nft, &snap, &BTreeSet::new(), false).unwrap();
    assert!(stats.full);
    let script = nft.scripts.lock().unwrap()[0].clone();
    assert!(script.starts_with("add table ip podrun-proxy"), "{script}");
    for needle in [
        "add chain ip podrun-proxy nat-prerouting { type nat hook prerouting priority dstnat; policy accept; }",
        "add map ip podrun-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }",
        "flush map ip podrun-proxy service-ips",
        "add rule ip podrun-proxy masquerading masquerade fully-random",
        "add element ip podrun-proxy service-ips { 10.96.0.10 . tcp . 80 : goto service-",
        "flush chain ip podrun-proxy service-OLD-default/gone/tcp/\n",
        "delete set ip podrun-proxy affinity-OLD\n",
    ] {
        assert!(script.contains(needle), "no {needle:?} in\n{script}");
    }
    assert!(!script.contains("delete set ip podrun-proxy service-ips"));
    assert_eq!(
        p.stale_chains().collect::<Vec<_>>(),
        ["service-OLD-default/gone/tcp/"]
    );
    // A second later the stale chain is deleted, in a transaction of its own.
    p.delete_stale(
        &nft,
        std::time::Instant::now() + std::time::Duration::from_secs(2),
    );
    assert_eq!(
        nft.scripts.lock().unwrap()[1],
        "delete chain ip podrun-proxy service-OLD-default/gone/tcp/\n"
    );
}

#[test]
fn a_change_to_one_service_touches_only_its_chains_and_elements() {
    let mut snap = web();
    for i in 0..5 {
        let name = format!("other{i}");
        snap.apply_service(service(&name, &format!("10.96.1.{i}"), json!({})));
        snap.apply_slice(slice(
            &name,
            &format!("{name}-1"),
            json!({"port": 8080}),
            &[ready("10.244.3.3", "node-b")],
        ));
    }
    let nft = FakeNft::default();
    let mut p = Proxier::new(cfg(), Vec::new());
    p.sync(&nft, &snap, &BTreeSet::new(), false).unwrap();

    // One more endpoint for web.
    let changed = snap.apply_slice(slice(
        "web",
        "web-1",
        json!({"port": 8080, "protocol": "TCP"}),
        &[
            ready("10.244.1.2", "node-a"),
            ready("10.244.2.2", "node-b"),
            ready("10.244.2.7", "node-b"),
        ],
    ));
    assert_eq!(changed, [ServiceKey::new("default", "web")]);
    let stats = p
        .sync(&nft, &snap, &changed.into_iter().collect(), false)
        .unwrap();
    assert!(!stats.full);
    let script = nft.scripts.lock().unwrap()[1].clone();
    assert!(!script.contains("other"), "{script}");
    assert!(!script.contains("add table"), "{script}");
    // The service chain is rewritten and the new endpoint's chain added; the
    // unchanged endpoint chains and the map element are left alone.
    assert_eq!(script.matches("flush chain").count(), 2, "{script}");
    assert!(script.contains("numgen random mod 3 "), "{script}");
    assert!(script.contains("dnat to 10.244.2.7:8080"), "{script}");
    assert!(!script.contains("element"), "{script}");

    // Nothing changed: no transaction at all.
    let again = p
        .sync(
            &nft,
            &snap,
            &[ServiceKey::new("default", "web")].into(),
            false,
        )
        .unwrap();
    assert_eq!(again.script_bytes, 0);
    assert_eq!(nft.scripts.lock().unwrap().len(), 2);

    // Deleting the service removes its element and flushes its chains as stale.
    let svc = snap.services[&ServiceKey::new("default", "web")].clone();
    let key = snap.delete_service(&svc).unwrap();
    p.sync(&nft, &snap, &[key].into(), false).unwrap();
    let script = nft.scripts.lock().unwrap()[2].clone();
    assert!(!script.contains("other"), "{script}");
    assert!(
        script.contains("delete element ip podrun-proxy service-ips { 10.96.0.10 . tcp . 80 }"),
        "{script}"
    );
    assert_eq!(script.matches("flush chain").count(), 4, "{script}");
    assert!(!script.contains("add "), "{script}");
    assert_eq!(p.stale_chains().count(), 4);
}

#[test]
fn a_failed_transaction_makes_the_next_sync_full() {
    let snap = web();
    let nft = FakeNft::default();
    let mut p = Proxier::new(cfg(), Vec::new());
    p.sync(&nft, &snap, &BTreeSet::new(), false).unwrap();
    let mut snap2 = snap.clone();
    snap2.apply_service(service(
        "web",
        "10.96.0.10",
        json!({"sessionAffinity": "ClientIP"}),
    ));
    nft.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let dirty: BTreeSet<ServiceKey> = [ServiceKey::new("default", "web")].into();
    assert!(p.sync(&nft, &snap2, &dirty, false).is_err());
    let stats = p.sync(&nft, &snap2, &BTreeSet::new(), false).unwrap();
    assert!(stats.full);
}

#[test]
fn relisting_reports_only_what_changed() {
    let mut snap = web();
    let web_svc = snap.services.values().next().unwrap().clone();
    let changed = snap.replace_services(vec![web_svc.clone()]);
    assert!(changed.is_empty());
    let changed = snap.replace_services(vec![service("new", "10.96.0.20", json!({}))]);
    assert_eq!(
        changed,
        [
            ServiceKey::new("default", "new"),
            ServiceKey::new("default", "web")
        ]
        .into()
    );
    let changed = snap.replace_slices(Vec::new());
    assert_eq!(changed, [ServiceKey::new("default", "web")].into());
}

#[test]
fn listings_name_the_chains_and_sets_of_the_proxy_table_only() {
    let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
        {"chain": {"family": "ip", "table": "podrun-proxy", "name": "services", "handle": 1}},
        {"chain": {"family": "ip", "table": "podrun", "name": "postrouting", "handle": 2}},
        {"set": {"family": "ip", "table": "podrun-proxy", "name": "affinity-X", "type": "ipv4_addr", "handle": 3}}]}"#;
    assert_eq!(listed_names(json, "chain").unwrap(), ["services"]);
    assert_eq!(listed_names(json, "set").unwrap(), ["affinity-X"]);
}
