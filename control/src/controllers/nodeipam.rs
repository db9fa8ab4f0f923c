//! Node IPAM (kube-controller-manager's `--allocate-node-cidrs` with the range
//! allocator): every Node gets its own slice of the cluster CIDR in `spec.podCIDR` and
//! `spec.podCIDRs`, which its agent gives to the pod network. A range is free again once
//! its Node is gone; a Node that already has one keeps it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tracing::{info, warn};

use super::manager::Task;
use super::shared::Informers;

/// kube-controller-manager's defaults: `--cluster-cidr` is the tutorials' pod network
/// here, and `--node-cidr-mask-size` 24 for IPv4.
pub const DEFAULT_CLUSTER_CIDR: &str = "172.16.0.0/16";
pub const DEFAULT_MASK_SIZE: u8 = 24;

/// What the allocator hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrConfig {
    pub cluster_cidr: IpNet,
    pub mask_size: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrConfigError {
    #[error(
        "--node-cidr-mask-size {mask}: must be at least the prefix length of --cluster-cidr {cidr} \
         and leave room for pods (at most {max})"
    )]
    MaskSize { mask: u8, cidr: IpNet, max: u8 },
}

impl CidrConfig {
    /// Checks the mask against the cluster CIDR: a node's range lies inside it and holds
    /// at least a gateway and a few pods.
    pub fn new(cluster_cidr: IpNet, mask_size: u8) -> Result<Self, CidrConfigError> {
        let max = cluster_cidr.max_prefix_len() - 2;
        if mask_size < cluster_cidr.prefix_len() || mask_size > max {
            return Err(CidrConfigError::MaskSize {
                mask: mask_size,
                cidr: cluster_cidr,
                max,
            });
        }
        Ok(CidrConfig {
            cluster_cidr: cluster_cidr.trunc(),
            mask_size,
        })
    }
}

impl Default for CidrConfig {
    fn default() -> Self {
        CidrConfig {
            cluster_cidr: DEFAULT_CLUSTER_CIDR.parse().expect("literal"),
            mask_size: DEFAULT_MASK_SIZE,
        }
    }
}

/// The lowest range of `cfg` that overlaps none of `used`.
pub fn allocate(cfg: &CidrConfig, used: &BTreeSet<IpNet>) -> Option<IpNet> {
    let mut subnets = cfg.cluster_cidr.subnets(cfg.mask_size).ok()?;
    subnets.find(|candidate| {
        !used
            .iter()
            .any(|u| u.contains(&candidate.network()) || candidate.contains(&u.network()))
    })
}

/// The ranges nodes hold (`spec.podCIDRs`, else `spec.podCIDR`).
fn node_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = &node.spec else {
        return Vec::new();
    };
    let mut out: Vec<IpNet> = spec
        .pod_cidrs
        .iter()
        .flatten()
        .filter_map(|c| c.parse().ok())
        .collect();
    if out.is_empty() {
        out.extend(
            spec.pod_cidr
                .as_deref()
                .and_then(|c| c.parse::<IpNet>().ok()),
        );
    }
    out
}

/// The allocator's memory between passes: ranges it patched that the cache does not
/// show yet, so a lagging cache never makes it hand one range to two nodes.
#[derive(Default)]
struct Pending(BTreeMap<String, IpNet>);

/// One pass: a range for every node without one. Returns the patches to make, as
/// (node, range).
fn plan(cfg: &CidrConfig, nodes: &[Node], pending: &mut Pending) -> Vec<(String, IpNet)> {
    let names: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    pending.0.retain(|name, _| names.contains(name.as_str()));
    let mut used: BTreeSet<IpNet> = nodes.iter().flat_map(node_cidrs).collect();
    for node in nodes {
        if !node_cidrs(node).is_empty() {
            if let Some(name) = &node.metadata.name {
                pending.0.remove(name);
            }
        }
    }
    used.extend(pending.0.values().copied());
    let mut waiting: Vec<&Node> = nodes
        .iter()
        .filter(|n| node_cidrs(n).is_empty() && n.metadata.deletion_timestamp.is_none())
        .collect();
    // Oldest first, as nodes registered.
    waiting.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    let mut out = Vec::new();
    for node in waiting {
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        let cidr = match pending.0.get(&name) {
            Some(c) => *c,
            None => match allocate(cfg, &used) {
                Some(c) => c,
                None => {
                    warn!(node = %name, cluster_cidr = %cfg.cluster_cidr, "CIDRNotAvailable: the cluster CIDR is full");
                    continue;
                }
            },
        };
        used.insert(cidr);
        pending.0.insert(name.clone(), cidr);
        out.push((name, cidr));
    }
    out
}

/// Runs the allocator on node changes.
pub fn run(client: Client, informers: &Informers, cfg: CidrConfig) -> Task {
    let nodes = informers.nodes.store();
    let mut events = informers.nodes.subscribe().map(|_| ()).boxed();
    Box::pin(async move {
        let _ = nodes.wait_until_ready().await;
        let mut pending = Pending::default();
        loop {
            pass(&client, &nodes, &cfg, &mut pending).await;
            if let Ok(None) = tokio::time::timeout(Duration::from_secs(30), events.next()).await {
                return;
            }
        }
    })
}

async fn pass(client: &Client, nodes: &Store<Node>, cfg: &CidrConfig, pending: &mut Pending) {
    let state: Vec<Node> = nodes.state().iter().map(|n| (**n).clone()).collect();
    let api: Api<Node> = Api::all(client.clone());
    for (name, cidr) in plan(cfg, &state, pending) {
        let body = serde_json::json!({
            "spec": { "podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()] }
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => info!(node = %name, pod_cidr = %cidr, "node CIDR allocated"),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                pending.0.remove(&name);
            }
            Err(e) => warn!(node = %name, error = %e, "node CIDR allocation"),
        }
    }
}

/// The address of `cidr` with index `n` (the gateway is 1), for callers that name
/// addresses inside a node's range.
pub fn nth(cidr: &IpNet, n: u32) -> Option<IpAddr> {
    match cidr.network() {
        IpAddr::V4(a) => u32::from(a)
            .checked_add(n)
            .map(|v| IpAddr::V4(v.into()))
            .filter(|ip| cidr.contains(ip)),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(n.into())
            .map(|v| IpAddr::V6(v.into()))
            .filter(|ip| cidr.contains(ip)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, created: i64) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(created).unwrap(),
        ));
        n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: cidr.map(str::to_owned),
            pod_cidrs: cidr.map(|c| vec![c.to_owned()]),
            ..Default::default()
        });
        n
    }

    fn cfg(cidr: &str, mask: u8) -> CidrConfig {
        CidrConfig::new(cidr.parse().unwrap(), mask).unwrap()
    }

    #[test]
    fn nodes_get_the_lowest_free_ranges_in_registration_order() {
        let c = CidrConfig::default();
        let nodes = vec![
            node("w2", None, 20),
            node("m", Some("172.16.0.0/24"), 1),
            node("w1", None, 10),
        ];
        let mut pending = Pending::default();
        let got = plan(&c, &nodes, &mut pending);
        assert_eq!(
            got,
            vec![
                ("w1".to_string(), "172.16.1.0/24".parse().unwrap()),
                ("w2".to_string(), "172.16.2.0/24".parse().unwrap()),
            ]
        );
        // The cache has not caught up: the same answers, not new ranges.
        assert_eq!(plan(&c, &nodes, &mut pending), got);
        // Caught up: nothing to do.
        let nodes = vec![
            node("w2", Some("172.16.2.0/24"), 20),
            node("m", Some("172.16.0.0/24"), 1),
            node("w1", Some("172.16.1.0/24"), 10),
        ];
        assert!(plan(&c, &nodes, &mut pending).is_empty());
        assert!(pending.0.is_empty());
    }

    #[test]
    fn a_deleted_nodes_range_is_reused() {
        let c = CidrConfig::default();
        let mut pending = Pending::default();
        let nodes = vec![node("w3", None, 30), node("w2", Some("172.16.2.0/24"), 2)];
        assert_eq!(
            plan(&c, &nodes, &mut pending),
            vec![("w3".to_string(), "172.16.0.0/24".parse().unwrap())]
        );
    }

    #[test]
    fn a_full_cluster_cidr_leaves_the_node_waiting() {
        let c = cfg("10.1.0.0/23", 24);
        let nodes = vec![
            node("a", Some("10.1.0.0/24"), 1),
            node("b", Some("10.1.1.0/24"), 2),
            node("c", None, 3),
        ];
        assert!(plan(&c, &nodes, &mut Pending::default()).is_empty());
        // A range held by something foreign that overlaps is not handed out either.
        let used: BTreeSet<IpNet> = ["10.1.0.0/16".parse().unwrap()].into();
        assert_eq!(allocate(&c, &used), None);
    }

    #[test]
    fn masks_outside_the_cluster_cidr_are_refused() {
        assert!(CidrConfig::new("172.16.0.0/16".parse().unwrap(), 15).is_err());
        assert!(CidrConfig::new("172.16.0.0/16".parse().unwrap(), 31).is_err());
        let e = CidrConfig::new("172.16.0.0/16".parse().unwrap(), 8).unwrap_err();
        assert!(e.to_string().contains("--node-cidr-mask-size 8"), "{e}");
        assert_eq!(
            CidrConfig::new("172.16.5.9/16".parse().unwrap(), 24)
                .unwrap()
                .cluster_cidr,
            "172.16.0.0/16".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            nth(&"172.16.3.0/24".parse().unwrap(), 1),
            Some("172.16.3.1".parse().unwrap())
        );
        assert_eq!(nth(&"172.16.3.0/24".parse().unwrap(), 256), None);
    }
}
