//! The Service proxy: every node programs the cluster's Services into nftables, as
//! kube-proxy's nftables mode does, in a table of its own (`ip podrun-proxy`).
//!
//! It watches Services and EndpointSlices, renders each service port into chains
//! ([`render`], pure and unit-tested), and applies them with `nft -f -`, one
//! transaction per change ([`nft`], [`sync`]). After the first full sync a change to
//! one Service or EndpointSlice touches only that service's chains and map elements; a
//! full sync runs again every hour and after any failure.
//!
//! ```text
//! prerouting/output (nat, dstnat) -> services
//!    ip daddr . l4proto . dport  vmap @service-ips ------> service-<port>  (ClusterIP)
//!    local daddr: l4proto . dport vmap @service-nodeports -> external-<port> (NodePort)
//! external-<port>: mark for masquerade (Cluster policy) or short-circuit pods and the
//!    node (Local policy), then goto service-<port> or local-<port>
//! service-<port> / local-<port>: mark traffic from outside the cluster CIDR;
//!    ClientIP affinity (ip saddr @affinity-<endpoint> goto endpoint-<endpoint>);
//!    numgen random mod N vmap { i : goto endpoint-<i> }
//! endpoint-<endpoint>: mark hairpin traffic; update @affinity set; dnat to ip:port
//! postrouting (nat, srcnat): masquerade what is marked
//! input/forward/output (filter, -110): ip daddr . l4proto . dport vmap
//!    @no-endpoint-services (and @no-endpoint-nodeports): reject, or drop for a Local
//!    policy with no endpoint on this node
//! ```
//!
//! The rules stay when the proxy stops: pods keep running across agent restarts, and
//! so do their Services. [`cleanup`] deletes the table.
//!
//! Pods sit on a Linux bridge, so the reply of a pod to another pod of the same bridge
//! would be bridged past the host's IP hooks and never un-NATed: the proxy sets
//! `net.bridge.bridge-nf-call-iptables=1` (loading br_netfilter when the sysctl is
//! missing), which sends bridged IPv4 through the `ip` family hooks. NodePorts are not
//! served on 127.0.0.0/8, so `route_localnet` is left alone. IPv4 only.

pub mod model;
pub mod nft;
pub mod render;
pub mod sync;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::time::Instant;

pub use model::{ServiceKey, Snapshot};
pub use nft::{FakeNft, Nft, NftCommand};
pub use render::RenderConfig;
pub use sync::{Proxier, SyncStats};

/// A full sync this often, whatever happens (kube-proxy's default sync period).
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);
/// Changes arriving this close together go in one transaction.
const BATCH: Duration = Duration::from_millis(100);
/// After a failed sync.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("nft not found (install nftables, or give its path)")]
    NftMissing,
    #[error("failed to run {program}: {source}")]
    NftSpawn {
        program: String,
        source: std::io::Error,
    },
    #[error("nft {args} failed: {stderr}")]
    Nft { args: String, stderr: String },
    #[error("reading the nft listing of {what}: {source}")]
    Listing {
        what: String,
        source: serde_json::Error,
    },
    #[error("--cluster-cidr {0}: only IPv4 is supported")]
    ClusterCidr(ipnet::IpNet),
    #[error("{path}: {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What the proxy needs to know about its node.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Endpoints with this nodeName are local (traffic policy Local).
    pub node_name: String,
    /// The node's addresses (informational: NodePorts are served on every local
    /// address, these included).
    pub node_ips: Vec<IpAddr>,
    /// The pods' addresses; traffic from outside it to a service is masqueraded.
    pub cluster_cidr: ipnet::IpNet,
    /// Services served on the node itself (the cluster DNS IP): no rules for them.
    pub skip_cluster_ips: Vec<IpAddr>,
    /// The nft binary (found on PATH when None).
    pub nft: Option<PathBuf>,
}

impl ProxyConfig {
    pub fn render_config(&self) -> Result<RenderConfig, ProxyError> {
        let ipnet::IpNet::V4(cidr) = self.cluster_cidr else {
            return Err(ProxyError::ClusterCidr(self.cluster_cidr));
        };
        Ok(RenderConfig {
            node_name: self.node_name.clone(),
            cluster_cidr: Some(cidr.trunc()),
        })
    }
}

const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Sends bridged IPv4 traffic through the IP hooks (see the module docs). Writes the
/// network namespace's own sysctl.
pub fn ensure_bridge_netfilter() -> Result<(), ProxyError> {
    let path = std::path::Path::new(BRIDGE_NF_CALL_IPTABLES);
    if !path.exists() {
        let status = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            tracing::warn!("modprobe br_netfilter failed: pod-to-pod service replies on one bridge may bypass NAT");
        }
    }
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|source| ProxyError::Sysctl {
        path: BRIDGE_NF_CALL_IPTABLES.to_owned(),
        source,
    })
}

/// Deletes the proxy's table and every rule in it; fine when it is not there.
pub fn cleanup(nft: Option<PathBuf>) -> Result<(), ProxyError> {
    NftCommand::find(nft)?.apply(&render::delete_table())
}

/// Runs the proxy until `shutdown` turns true. The rules stay in place afterwards.
pub async fn run(
    client: kube::Client,
    cfg: ProxyConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ProxyError> {
    let render = cfg.render_config()?;
    let nft: Arc<dyn Nft> = Arc::new(NftCommand::find(cfg.nft.clone())?);
    ensure_bridge_netfilter()?;
    tracing::info!(node = %cfg.node_name, cluster_cidr = %cfg.cluster_cidr, "service proxy starting");

    let mut services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    let mut slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default().labels(model::SERVICE_NAME_LABEL),
    )
    .default_backoff()
    .boxed();

    let mut snap = Snapshot::default();
    let mut proxier = Some(Proxier::new(render, cfg.skip_cluster_ips.clone()));
    let mut dirty: BTreeSet<ServiceKey> = BTreeSet::new();
    let (mut services_listed, mut slices_listed) = (false, false);
    let mut service_buf: Vec<Service> = Vec::new();
    let mut slice_buf: Vec<EndpointSlice> = Vec::new();
    let mut next_sync: Option<Instant> = None;
    let mut last_full = Instant::now();
    let mut first = true;

    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let synced = services_listed && slices_listed;
        let due = if synced {
            let full_due = last_full + FULL_SYNC_PERIOD;
            let stale_due = proxier
                .as_ref()
                .and_then(|p| p.stale_due())
                .map(Instant::from_std);
            [next_sync, Some(full_due), stale_due]
                .into_iter()
                .flatten()
                .min()
        } else {
            None
        };
        tokio::select! {
            r = shutdown.changed() => if r.is_err() { return Ok(()) },
            ev = services.next() => match ev {
                Some(Ok(Event::Init)) => service_buf.clear(),
                Some(Ok(Event::InitApply(s))) => service_buf.push(s),
                Some(Ok(Event::InitDone)) => {
                    dirty.extend(snap.replace_services(std::mem::take(&mut service_buf)));
                    services_listed = true;
                }
                Some(Ok(Event::Apply(s))) => dirty.extend(snap.apply_service(s)),
                Some(Ok(Event::Delete(s))) => dirty.extend(snap.delete_service(&s)),
                Some(Err(e)) => tracing::warn!(error = %e, "watching Services"),
                None => return Ok(()),
            },
            ev = slices.next() => match ev {
                Some(Ok(Event::Init)) => slice_buf.clear(),
                Some(Ok(Event::InitApply(s))) => slice_buf.push(s),
                Some(Ok(Event::InitDone)) => {
                    dirty.extend(snap.replace_slices(std::mem::take(&mut slice_buf)));
                    slices_listed = true;
                }
                Some(Ok(Event::Apply(s))) => dirty.extend(snap.apply_slice(s)),
                Some(Ok(Event::Delete(s))) => dirty.extend(snap.delete_slice(&s)),
                Some(Err(e)) => tracing::warn!(error = %e, "watching EndpointSlices"),
                None => return Ok(()),
            },
            _ = sleep_until(due), if due.is_some() => {
                let Some(mut p) = proxier.take() else { continue };
                let full = first || Instant::now() >= last_full + FULL_SYNC_PERIOD;
                let batch = std::mem::take(&mut dirty);
                let nft = nft.clone();
                let snapshot = Arc::new(std::mem::take(&mut snap));
                let snap_for_sync = snapshot.clone();
                let started = std::time::Instant::now();
                let (p, result) = tokio::task::spawn_blocking(move || {
                    let r = p.sync(nft.as_ref(), &snap_for_sync, &batch, full);
                    (p, r.map(|s| (s, batch)))
                })
                .await?;
                snap = Arc::try_unwrap(snapshot).unwrap_or_else(|a| (*a).clone());
                proxier = Some(p);
                next_sync = None;
                match result {
                    Ok((stats, _)) => {
                        if stats.full {
                            last_full = Instant::now();
                            first = false;
                        }
                        if stats.script_bytes > 0 {
                            tracing::info!(
                                full = stats.full,
                                services = stats.services,
                                bytes = stats.script_bytes,
                                elapsed_ms = started.elapsed().as_millis() as u64,
                                "service rules synced"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "syncing service rules; retrying with a full sync");
                        if let Some(p) = proxier.as_mut() {
                            p.request_full();
                        }
                        next_sync = Some(Instant::now() + RETRY);
                    }
                }
                continue;
            }
        }
        if services_listed && slices_listed && (!dirty.is_empty() || first) && next_sync.is_none() {
            next_sync = Some(Instant::now() + BATCH);
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await;
    }
}
