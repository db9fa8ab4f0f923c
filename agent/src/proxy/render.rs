//! The rules, as text for `nft -f`: the fixed chains and maps of the table, each
//! service's chains, sets and map elements ([`ServiceRules`]), and the transactions
//! that install all of them (a full sync) or change one service's (a partial sync).
//! Pure: nothing here runs nft.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use super::model::{Endpoint, ServicePort};

/// The table, of family `ip`.
pub const TABLE: &str = "podrun-proxy";
/// `ip <TABLE>`, as commands name it.
pub const T: &str = "ip podrun-proxy";

/// The mark bit that asks for masquerading in postrouting.
const MASQ_MARK: &str = "0x4000";

pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const MARK_FOR_MASQ: &str = "mark-for-masquerade";
const REJECT_CHAIN: &str = "reject-chain";

/// Local addresses but loopback: NodePorts are not served on 127.0.0.1, which spares
/// `route_localnet`.
const LOCAL_DADDR: &str = "fib daddr type local ip daddr != 127.0.0.0/8";

/// What the renderer needs to know about the node.
#[derive(Debug, Clone)]
pub struct RenderConfig {
    pub node_name: String,
    /// The pods' addresses: traffic from elsewhere to a ClusterIP is masqueraded.
    pub cluster_cidr: Option<Ipv4Net>,
}

/// The maps (and their types) every service puts elements in.
const MAPS: [(&str, &str); 4] = [
    (
        SERVICE_IPS,
        "ipv4_addr . inet_proto . inet_service : verdict",
    ),
    (SERVICE_NODEPORTS, "inet_proto . inet_service : verdict"),
    (
        NO_ENDPOINT_SERVICES,
        "ipv4_addr . inet_proto . inet_service : verdict",
    ),
    (NO_ENDPOINT_NODEPORTS, "inet_proto . inet_service : verdict"),
];

/// The fixed chains: name, base chain spec (None for a regular chain), rules.
fn base_chains() -> Vec<(&'static str, Option<&'static str>, Vec<String>)> {
    let mut chains = vec![
        (
            "nat-prerouting",
            Some("type nat hook prerouting priority dstnat; policy accept;"),
            vec!["jump services".to_owned()],
        ),
        (
            "nat-output",
            Some("type nat hook output priority -100; policy accept;"),
            vec!["jump services".to_owned()],
        ),
        (
            "nat-postrouting",
            Some("type nat hook postrouting priority srcnat; policy accept;"),
            vec!["jump masquerading".to_owned()],
        ),
        (
            // Before the filter tables of others, so a service without endpoints is
            // refused whatever they say.
            "filter-input",
            Some("type filter hook input priority -110; policy accept;"),
            vec![
                "ct state new jump nodeport-endpoints-check".to_owned(),
                "ct state new jump service-endpoints-check".to_owned(),
            ],
        ),
        (
            "filter-forward",
            Some("type filter hook forward priority -110; policy accept;"),
            vec!["ct state new jump service-endpoints-check".to_owned()],
        ),
        (
            "filter-output",
            Some("type filter hook output priority -110; policy accept;"),
            vec!["ct state new jump service-endpoints-check".to_owned()],
        ),
    ];
    chains.extend([
        (
            "services",
            None,
            vec![
                format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
                format!("{LOCAL_DADDR} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
            ],
        ),
        (
            MARK_FOR_MASQ,
            None,
            vec![format!("mark set mark or {MASQ_MARK}")],
        ),
        (
            "masquerading",
            None,
            vec![
                format!("mark and {MASQ_MARK} == 0 return"),
                format!("mark set mark xor {MASQ_MARK}"),
                "masquerade fully-random".to_owned(),
            ],
        ),
        (
            "service-endpoints-check",
            None,
            vec![format!(
                "ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"
            )],
        ),
        (
            "nodeport-endpoints-check",
            None,
            vec![format!(
                "{LOCAL_DADDR} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"
            )],
        ),
        (REJECT_CHAIN, None, vec!["reject".to_owned()]),
    ]);
    chains
}

/// Whether a chain is one of the fixed ones (never removed as stale).
pub fn is_base_chain(name: &str) -> bool {
    base_chains().iter().any(|(n, _, _)| *n == name)
}

/// Whether a set is a service's (affinity) set, not one of the fixed maps.
pub fn is_service_set(name: &str) -> bool {
    name.starts_with("affinity-")
}

/// A service's share of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Its chains and their rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Its affinity sets and their timeouts in seconds. The timeout is part of the
    /// name, so a set never changes: a new timeout is a new set.
    pub sets: BTreeMap<String, u32>,
    /// Its map elements: (map, key) → verdict.
    pub elements: BTreeMap<(&'static str, String), String>,
}

/// "<hash>-<text>": the hash keeps names distinct when they must be cut to nft's limit
/// and tells apart names that differ in one digit.
fn hashed(text: &str) -> String {
    hashed_as(text, text)
}

/// "<hash of key>-<text>".
fn hashed_as(key: &str, text: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut name = format!("{}-{text}", &hex::encode(digest)[..8].to_uppercase());
    // nft names are at most 255 bytes; every part here is ASCII.
    name.truncate(240);
    name
}

fn port_base(p: &ServicePort) -> String {
    format!(
        "{}/{}/{}/{}",
        p.service.namespace, p.service.name, p.protocol, p.port_name
    )
}

fn endpoint_base(p: &ServicePort, ep: &Endpoint) -> String {
    format!("{}__{}/{}", port_base(p), ep.ip, ep.port)
}

pub fn cluster_chain(p: &ServicePort) -> String {
    format!("service-{}", hashed(&port_base(p)))
}

pub fn local_chain(p: &ServicePort) -> String {
    format!("local-{}", hashed(&port_base(p)))
}

pub fn external_chain(p: &ServicePort) -> String {
    format!("external-{}", hashed(&port_base(p)))
}

pub fn endpoint_chain(p: &ServicePort, ep: &Endpoint) -> String {
    format!("endpoint-{}", hashed(&endpoint_base(p, ep)))
}

fn affinity_set(p: &ServicePort, ep: &Endpoint, timeout: u32) -> String {
    let base = endpoint_base(p, ep);
    format!(
        "affinity-{}",
        hashed_as(&format!("{base}@{timeout}"), &base)
    )
}

/// Ready endpoints among those `keep` accepts; when none is ready, the serving ones
/// that are terminating, so connections still land somewhere during a rollout.
fn usable(eps: &[Endpoint], keep: impl Fn(&Endpoint) -> bool) -> Vec<&Endpoint> {
    let ready: Vec<&Endpoint> = eps.iter().filter(|e| keep(e) && e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.iter()
        .filter(|e| keep(e) && e.serving && e.terminating)
        .collect()
}

/// The rules of a service's ports.
pub fn service_rules(ports: &[ServicePort], cfg: &RenderConfig) -> ServiceRules {
    let mut r = ServiceRules::default();
    for p in ports {
        port_rules(p, cfg, &mut r);
    }
    r
}

fn port_rules(p: &ServicePort, cfg: &RenderConfig, r: &mut ServiceRules) {
    let proto = p.protocol;
    let all = usable(&p.endpoints, |_| true);
    let local_node = |e: &Endpoint| e.node_name.as_deref() == Some(cfg.node_name.as_str());
    let cluster = all.clone();
    let local = usable(&p.endpoints, local_node);
    let has_endpoints = !all.is_empty();
    let external = p.externally_accessible();

    let uses_cluster =
        !cluster.is_empty() && (!p.internal_local || (external && !p.external_local));
    let uses_local = !local.is_empty() && (p.internal_local || (external && p.external_local));
    let cluster_chain = cluster_chain(p);
    let local_chain = local_chain(p);
    let external_chain = external_chain(p);

    let (internal_chain, has_internal) = if p.internal_local {
        (&local_chain, !local.is_empty())
    } else {
        (&cluster_chain, has_endpoints)
    };
    let (external_policy_chain, has_external) = if p.external_local {
        (&local_chain, !local.is_empty())
    } else {
        (&cluster_chain, has_endpoints)
    };
    let uses_external = has_endpoints && external;

    // A service without endpoints is refused; one whose Local policy finds none
    // here drops what it cannot serve.
    let (internal_verdict, external_verdict) = if !has_endpoints {
        (
            format!("goto {REJECT_CHAIN}"),
            format!("goto {REJECT_CHAIN}"),
        )
    } else {
        ("drop".to_owned(), "drop".to_owned())
    };

    let vip_key = |ip: Ipv4Addr| format!("{ip} . {proto} . {}", p.port);
    if has_internal {
        r.elements.insert(
            (SERVICE_IPS, vip_key(p.cluster_ip)),
            format!("goto {internal_chain}"),
        );
    } else {
        r.elements.insert(
            (NO_ENDPOINT_SERVICES, vip_key(p.cluster_ip)),
            internal_verdict,
        );
    }
    for ip in &p.external_ips {
        if has_endpoints {
            r.elements.insert(
                (SERVICE_IPS, vip_key(*ip)),
                format!("goto {external_chain}"),
            );
        }
        if !has_external {
            r.elements.insert(
                (NO_ENDPOINT_SERVICES, vip_key(*ip)),
                external_verdict.clone(),
            );
        }
    }
    if let Some(node_port) = p.node_port {
        let key = format!("{proto} . {node_port}");
        if has_endpoints {
            r.elements.insert(
                (SERVICE_NODEPORTS, key.clone()),
                format!("goto {external_chain}"),
            );
        }
        if !has_external {
            r.elements
                .insert((NO_ENDPOINT_NODEPORTS, key), external_verdict.clone());
        }
    }

    let mut internal_rules = Vec::new();
    if has_internal {
        if let Some(cidr) = cfg.cluster_cidr {
            // From outside the pods (a node, a host routed to the service range): the
            // reply must come back through this node to be un-NATed.
            internal_rules.push(format!(
                "ip daddr {} {proto} dport {} ip saddr != {cidr} jump {MARK_FOR_MASQ}",
                p.cluster_ip, p.port
            ));
        }
    }

    if uses_external {
        let mut rules = Vec::new();
        if !p.external_local {
            // The endpoint may be on another node: its reply must return here.
            rules.push(format!("jump {MARK_FOR_MASQ}"));
        } else {
            // Pods and the node itself are not subject to the Local policy, as if
            // they went out to a load balancer and came back.
            let short_circuit = if uses_cluster {
                Some(&cluster_chain)
            } else if uses_local {
                Some(&local_chain)
            } else {
                None
            };
            if let Some(target) = short_circuit {
                if let Some(cidr) = cfg.cluster_cidr {
                    rules.push(format!(
                        "ip saddr {cidr} goto {target} comment \"short-circuit pod traffic\""
                    ));
                }
                rules.push(format!(
                    "fib saddr type local jump {MARK_FOR_MASQ} comment \"masquerade local traffic\""
                ));
                rules.push(format!(
                    "fib saddr type local goto {target} comment \"short-circuit local traffic\""
                ));
            }
        }
        if has_external {
            rules.push(format!("goto {external_policy_chain}"));
        }
        r.chains.insert(external_chain.clone(), rules);
    }

    let mut reachable: Vec<&Endpoint> = Vec::new();
    for (used, chain, eps) in [
        (uses_cluster, &cluster_chain, &cluster),
        (uses_local, &local_chain, &local),
    ] {
        if !used {
            continue;
        }
        let mut rules = if chain == internal_chain {
            std::mem::take(&mut internal_rules)
        } else {
            Vec::new()
        };
        if let Some(timeout) = p.affinity_timeout {
            for ep in eps {
                rules.push(format!(
                    "ip saddr @{} goto {}",
                    affinity_set(p, ep, timeout),
                    endpoint_chain(p, ep)
                ));
            }
        }
        let arms: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto {}", endpoint_chain(p, ep)))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            eps.len(),
            arms.join(", ")
        ));
        r.chains.insert(chain.clone(), rules);
        for ep in eps {
            if !reachable.iter().any(|e| e == ep) {
                reachable.push(ep);
            }
        }
    }

    for ep in reachable {
        let mut rules = vec![
            // A pod reaching itself through its service: without masquerading, its
            // reply would go to itself directly and never be un-NATed.
            format!("ip saddr {} jump {MARK_FOR_MASQ}", ep.ip),
        ];
        if let Some(timeout) = p.affinity_timeout {
            let set = affinity_set(p, ep, timeout);
            rules.push(format!("update @{set} {{ ip saddr }}"));
            r.sets.insert(set, timeout);
        }
        rules.push(format!(
            "meta l4proto {proto} dnat to {}:{}",
            ep.ip, ep.port
        ));
        r.chains.insert(endpoint_chain(p, ep), rules);
    }
}

/// One transaction, in the order nft needs: chains exist before elements and rules
/// point at them, sets before rules use them, and rules are flushed before the sets
/// they used go.
#[derive(Debug, Default)]
pub struct Transaction {
    chains: String,
    delete_elements: String,
    delete_sets: String,
    add_sets: String,
    add_elements: String,
    rules: String,
    /// Chains flushed here as stale; they are deleted in a later transaction, once
    /// nothing points at them.
    pub stale_chains: Vec<String>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
            && self.delete_elements.is_empty()
            && self.delete_sets.is_empty()
            && self.add_sets.is_empty()
            && self.add_elements.is_empty()
            && self.rules.is_empty()
    }

    /// The script for `nft -f`.
    pub fn script(&self) -> String {
        [
            &self.chains,
            &self.delete_elements,
            &self.delete_sets,
            &self.add_sets,
            &self.add_elements,
            &self.rules,
        ]
        .into_iter()
        .map(String::as_str)
        .collect()
    }

    fn write_chain(&mut self, name: &str, rules: &[String]) {
        let _ = writeln!(self.chains, "add chain {T} {name}");
        let _ = writeln!(self.chains, "flush chain {T} {name}");
        for rule in rules {
            let _ = writeln!(self.rules, "add rule {T} {name} {rule}");
        }
    }

    fn add_set(&mut self, name: &str, timeout: u32) {
        let _ = writeln!(
            self.add_sets,
            "add set {T} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
        );
    }

    fn delete_set(&mut self, name: &str) {
        let _ = writeln!(self.delete_sets, "delete set {T} {name}");
    }

    fn add_element(&mut self, map: &str, key: &str, value: &str) {
        let _ = writeln!(
            self.add_elements,
            "add element {T} {map} {{ {key} : {value} }}"
        );
    }

    fn delete_element(&mut self, map: &str, key: &str) {
        let _ = writeln!(self.delete_elements, "delete element {T} {map} {{ {key} }}");
    }

    fn flush_stale(&mut self, name: &str) {
        let _ = writeln!(self.chains, "flush chain {T} {name}");
        self.stale_chains.push(name.to_owned());
    }

    /// A full sync: the table, its fixed chains and maps rewritten, every service's
    /// chains, sets and elements written, and what the kernel holds beyond them
    /// (`existing`) flushed as stale. Affinity sets already there keep their entries.
    pub fn full<'a>(
        services: impl IntoIterator<Item = &'a ServiceRules>,
        existing: &Existing,
    ) -> Transaction {
        let mut tx = Transaction::default();
        let _ = writeln!(
            tx.chains,
            "add table {T} {{ comment \"podrun service proxy\"; }}"
        );
        for (name, spec, rules) in base_chains() {
            match spec {
                Some(spec) => {
                    let _ = writeln!(tx.chains, "add chain {T} {name} {{ {spec} }}");
                    let _ = writeln!(tx.chains, "flush chain {T} {name}");
                    for rule in rules {
                        let _ = writeln!(tx.rules, "add rule {T} {name} {rule}");
                    }
                }
                None => tx.write_chain(name, &rules),
            }
        }
        for (name, ty) in MAPS {
            let _ = writeln!(tx.add_sets, "add map {T} {name} {{ type {ty}; }}");
            let _ = writeln!(tx.add_sets, "flush map {T} {name}");
        }
        let mut chains = BTreeSet::new();
        let mut sets = BTreeSet::new();
        for s in services {
            for (name, rules) in &s.chains {
                tx.write_chain(name, rules);
                chains.insert(name.as_str());
            }
            for (name, timeout) in &s.sets {
                tx.add_set(name, *timeout);
                sets.insert(name.as_str());
            }
            for ((map, key), value) in &s.elements {
                tx.add_element(map, key, value);
            }
        }
        for name in &existing.chains {
            if !is_base_chain(name) && !chains.contains(name.as_str()) {
                tx.flush_stale(name);
            }
        }
        for name in &existing.sets {
            if is_service_set(name) && !sets.contains(name.as_str()) {
                tx.delete_set(name);
            }
        }
        tx
    }

    /// A partial sync of one service: only what differs between what was installed
    /// (`old`) and what should be (`new`; None when the service is gone).
    pub fn diff(&mut self, old: Option<&ServiceRules>, new: Option<&ServiceRules>) {
        let empty = ServiceRules::default();
        let old = old.unwrap_or(&empty);
        let new = new.unwrap_or(&empty);
        for (name, rules) in &new.chains {
            if old.chains.get(name) != Some(rules) {
                self.write_chain(name, rules);
            }
        }
        for name in old.chains.keys() {
            if !new.chains.contains_key(name) {
                self.flush_stale(name);
            }
        }
        for (name, timeout) in &new.sets {
            if !old.sets.contains_key(name) {
                self.add_set(name, *timeout);
            }
        }
        for name in old.sets.keys() {
            if !new.sets.contains_key(name) {
                self.delete_set(name);
            }
        }
        for ((map, key), value) in &new.elements {
            match old.elements.get(&(*map, key.clone())) {
                Some(v) if v == value => {}
                Some(_) => {
                    self.delete_element(map, key);
                    self.add_element(map, key, value);
                }
                None => self.add_element(map, key, value),
            }
        }
        for (map, key) in old.elements.keys() {
            if !new.elements.contains_key(&(*map, key.clone())) {
                self.delete_element(map, key);
            }
        }
    }
}

/// The chains and sets the kernel holds in the table (from a listing).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// Deletes chains flushed as stale earlier.
pub fn delete_chains<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names
        .into_iter()
        .map(|n| format!("delete chain {T} {n}\n"))
        .collect()
}

/// Removes the table, present or not.
pub fn delete_table() -> String {
    format!("add table {T}\ndelete table {T}\n")
}
