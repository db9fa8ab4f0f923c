//! The cluster's pod network on this node, as flannel's host-gw and vxlan backends build it: the
//! node's own pod range (its Node's `spec.podCIDR`, given by the control plane's node
//! IPAM) goes to the container runtime (CRI UpdateRuntimeConfig, so podrun's bridge
//! network takes it), each other node's range is routed through that node's address,
//! and pod traffic that leaves the cluster CIDR is masqueraded. Routes are reconciled
//! from the Node watch and carry podrun's own route protocol number, so podrun finds
//! and removes exactly its own. The cluster DNS address is put on a dummy link (on
//! loopback where the kernel has no dummy driver), so pods reach this node's DNS server
//! at the `kube-dns` Service address.

pub mod routes;
pub mod vxlan;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::kubelet::cri::CriClient;

pub use routes::{desired_routes, reconcile, Hop, RouteTable, ROUTE_PROTOCOL};

/// How pod traffic crosses to other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Routes through the other nodes' addresses: nodes share a link.
    HostGw,
    /// A VXLAN tunnel between the nodes' addresses: they need only reach each other.
    Vxlan,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host-gw" => Ok(Backend::HostGw),
            "vxlan" => Ok(Backend::Vxlan),
            other => Err(format!("unknown backend {other:?} (host-gw, vxlan)")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
        })
    }
}

/// The nftables table of the node's masquerade rule.
pub const NFT_TABLE: &str = "podrun-cluster";
/// The dummy link carrying the cluster DNS address.
pub const DNS_LINK: &str = "podrun-dns";

#[derive(Clone, Debug)]
pub struct ClusterNetConfig {
    pub node_name: String,
    pub node_ip: IpAddr,
    pub backend: Backend,
    pub cluster_cidr: IpNet,
    /// The cluster DNS address to answer on (None: no cluster DNS on this node).
    pub cluster_dns: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("netlink: {0}")]
    Netlink(#[from] podrun_cni::netlink::NetlinkError),
    #[error("nft: {0}")]
    Nft(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runtime: {0}")]
    Runtime(String),
}

/// The node's pod range as its Node says it (`spec.podCIDRs[0]`, else `spec.podCIDR`).
pub fn pod_cidr(node: &Node) -> Option<IpNet> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|c| c.parse::<IpNet>().ok())
}

/// The node's masquerade rule: traffic from its pods to anything outside the cluster
/// CIDR leaves with the node's address; pod-to-pod traffic keeps its source, on this
/// node and across nodes. The table is replaced whole in one transaction.
pub fn masquerade_script(pod_cidr: IpNet, cluster_cidr: IpNet) -> String {
    format!(
        "table ip {t}\n\
         delete table ip {t}\n\
         table ip {t} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pod_cidr} ip daddr != {cluster_cidr} masquerade comment \"pod egress\"\n\
         \t}}\n\
         }}\n",
        t = NFT_TABLE
    )
}

fn nft(script: &str) -> Result<(), NetworkError> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Nft(format!("run nft: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| NetworkError::Nft(e.to_string()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| NetworkError::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(NetworkError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

fn sysctl(path: &str, value: &str) -> Result<(), NetworkError> {
    std::fs::write(path, value).map_err(|source| NetworkError::Io {
        path: path.into(),
        source,
    })
}

/// Puts `ip` on the dummy link [`DNS_LINK`], made when missing, or on loopback when
/// the kernel cannot make one. Returns the link's name.
pub fn dns_address(ip: IpAddr) -> Result<&'static str, NetworkError> {
    let mut nl = podrun_cni::netlink::Netlink::open()?;
    let mut name = DNS_LINK;
    let link = match nl.link_by_name(DNS_LINK)? {
        Some(l) => l,
        None => {
            match nl.create_dummy(DNS_LINK) {
                Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => name = "lo",
                Err(e) if !e.is_exists() => return Err(e.into()),
                _ => {}
            }
            nl.link_by_name(name)?
                .ok_or_else(|| NetworkError::Runtime(format!("{name} vanished")))?
        }
    };
    let host = IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("full prefix");
    if !nl
        .addresses(Some(link.index))?
        .iter()
        .any(|a| a.address == host)
    {
        match nl.add_address(link.index, host) {
            Err(e) if !e.is_exists() => return Err(e.into()),
            _ => {}
        }
    }
    nl.set_up(link.index)?;
    Ok(name)
}

/// The node's own range: applied to the runtime, and its masquerade rule. Done each
/// time the range is seen, so a restarted runtime gets it again.
async fn apply_own(cri: &CriClient, cidr: IpNet, cluster_cidr: IpNet) -> Result<(), NetworkError> {
    use podrun_cri_proto::v1 as cri;
    cri.runtime
        .clone()
        .update_runtime_config(cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig {
                    pod_cidr: cidr.to_string(),
                }),
            }),
        })
        .await
        .map_err(|e| NetworkError::Runtime(e.message().to_owned()))?;
    let script = masquerade_script(cidr, cluster_cidr);
    tokio::task::spawn_blocking(move || {
        sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        nft(&script)
    })
    .await
    .map_err(|e| NetworkError::Runtime(e.to_string()))?
}

/// The routes and tunnel peers last programmed.
type RouteState = (BTreeMap<IpNet, Hop>, Option<(u32, Vec<vxlan::Peer>)>);

/// Runs the node's part of the cluster network until `shutdown`. `ready` is set to the
/// node's pod range once the runtime has it, so pods are started in it. Routes and
/// rules stay when the agent stops: the pods keep running and keep their network.
pub async fn run(
    client: Client,
    cfg: ClusterNetConfig,
    cri: CriClient,
    ready: tokio::sync::watch::Sender<Option<IpNet>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if let Some(ip) = cfg.cluster_dns {
        match tokio::task::spawn_blocking(move || dns_address(ip)).await {
            Ok(Ok(link)) => info!(address = %ip, link, "cluster DNS address"),
            Ok(Err(e)) => warn!(error = %e, "cluster DNS address"),
            Err(e) => warn!(error = %e, "cluster DNS address"),
        }
    }
    let api: Api<Node> = Api::all(client);
    let mut stream_api = Some(api.clone());
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut stream = watcher::watcher(stream_api.take().expect("once"), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut init: Option<BTreeMap<String, Node>> = None;
    let mut applied: Option<IpNet> = None;
    let mut last_routes: Option<RouteState> = None;
    let mut tunnel: Option<u32> = None;
    let mut resync = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = resync.tick() => { last_routes = None; }
            ev = stream.next() => {
                let Some(ev) = ev else { return };
                match ev {
                    Ok(watcher::Event::Init) => init = Some(BTreeMap::new()),
                    Ok(watcher::Event::InitApply(n)) => {
                        if let (Some(m), Some(name)) = (init.as_mut(), n.metadata.name.clone()) {
                            m.insert(name, n);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(m) = init.take() {
                            nodes = m;
                        }
                    }
                    Ok(watcher::Event::Apply(n)) => {
                        if let Some(name) = n.metadata.name.clone() {
                            nodes.insert(name, n);
                        }
                    }
                    Ok(watcher::Event::Delete(n)) => {
                        if let Some(name) = &n.metadata.name {
                            nodes.remove(name);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "node watch");
                        continue;
                    }
                }
                if init.is_some() {
                    continue;
                }
            }
        }
        // The node's own range.
        if let Some(cidr) = nodes.get(&cfg.node_name).and_then(pod_cidr) {
            if applied != Some(cidr) {
                match apply_own(&cri, cidr, cfg.cluster_cidr).await {
                    Ok(()) => {
                        info!(node = %cfg.node_name, pod_cidr = %cidr, cluster_cidr = %cfg.cluster_cidr, backend = %cfg.backend, "cluster network: this node's pods get addresses from its pod CIDR");
                        applied = Some(cidr);
                        tunnel = None;
                        let _ = ready.send(Some(cidr));
                    }
                    Err(e) => warn!(pod_cidr = %cidr, error = %e, "applying the node's pod CIDR"),
                }
            }
        }
        // The tunnel link, and its MAC published for the other nodes.
        if let (Backend::Vxlan, Some(own), None) = (cfg.backend, applied, tunnel) {
            let node_ip = cfg.node_ip;
            match tokio::task::spawn_blocking(move || {
                let mut nl = podrun_cni::netlink::Netlink::open()?;
                vxlan::ensure_link(&mut nl, node_ip, own)
            })
            .await
            {
                Ok(Ok((index, mac))) => {
                    tunnel = Some(index);
                    let published = nodes
                        .get(&cfg.node_name)
                        .and_then(|n| n.metadata.annotations.as_ref())
                        .and_then(|a| a.get(vxlan::MAC_ANNOTATION))
                        .cloned();
                    if published.as_deref() != Some(mac.as_str()) {
                        let body = serde_json::json!({
                            "metadata": { "annotations": { vxlan::MAC_ANNOTATION: mac } }
                        });
                        if let Err(e) = api
                            .patch(
                                &cfg.node_name,
                                &kube::api::PatchParams::default(),
                                &kube::api::Patch::Merge(&body),
                            )
                            .await
                        {
                            warn!(error = %e, "publishing the tunnel link's MAC");
                            tunnel = None;
                        }
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "vxlan link"),
                Err(e) => warn!(error = %e, "vxlan link"),
            }
        }
        // Routes to the other nodes' ranges.
        let list: Vec<Node> = nodes.values().cloned().collect();
        let (want, peers) = match (cfg.backend, tunnel) {
            (Backend::HostGw, _) => (
                desired_routes(&list, &cfg.node_name, applied)
                    .into_iter()
                    .map(|(cidr, via)| (cidr, Hop { via, oif: None }))
                    .collect(),
                None,
            ),
            (Backend::Vxlan, Some(index)) => {
                let peers = vxlan::peers(&list, &cfg.node_name, applied);
                (vxlan::routes(&peers, index), Some((index, peers)))
            }
            (Backend::Vxlan, None) => continue,
        };
        let key = (want.clone(), peers.clone());
        if last_routes.as_ref() == Some(&key) {
            continue;
        }
        let w = want.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut nl = podrun_cni::netlink::Netlink::open()?;
            if let Some((index, peers)) = &peers {
                vxlan::reconcile_entries(&mut nl, *index, peers)?;
            }
            reconcile(&mut nl, &w)
        })
        .await;
        match res {
            Ok(Ok(changes)) => {
                for c in &changes {
                    info!(change = %c, "cluster network route");
                }
                last_routes = Some(key);
            }
            Ok(Err(e)) => warn!(error = %e, "cluster network routes"),
            Err(e) => warn!(error = %e, "cluster network routes"),
        }
    }
}

/// Removes what [`run`] installed on this node: routes, the masquerade table and the
/// DNS link (`podrun agent` leaving the cluster).
pub fn cleanup(dns: Option<IpAddr>) -> Result<(), NetworkError> {
    let mut nl = podrun_cni::netlink::Netlink::open()?;
    reconcile(&mut nl, &BTreeMap::new())?;
    vxlan::remove_link(&mut nl)?;
    if let Some(l) = nl.link_by_name(DNS_LINK)? {
        nl.delete_link(l.index)?;
    }
    if let (Some(ip), Some(lo)) = (dns, nl.link_by_name("lo")?) {
        let host = IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("full prefix");
        nl.delete_address(lo.index, host)?;
    }
    let _ = nft(&format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_spares_the_cluster_cidr() {
        let s = masquerade_script(
            "172.16.3.0/24".parse().unwrap(),
            "172.16.0.0/16".parse().unwrap(),
        );
        assert!(s.contains("ip saddr 172.16.3.0/24 ip daddr != 172.16.0.0/16 masquerade"));
        // Replaced whole, so a changed range never leaves the old rule.
        assert!(s.starts_with("table ip podrun-cluster\ndelete table ip podrun-cluster\n"));
    }

    #[test]
    fn the_pod_cidr_is_read_from_the_node() {
        let mut n = Node::default();
        assert_eq!(pod_cidr(&n), None);
        n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: Some("10.1.2.0/24".into()),
            ..Default::default()
        });
        assert_eq!(pod_cidr(&n), Some("10.1.2.0/24".parse().unwrap()));
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.9.0.0/24".into()]);
        assert_eq!(pod_cidr(&n), Some("10.9.0.0/24".parse().unwrap()));
    }
}
