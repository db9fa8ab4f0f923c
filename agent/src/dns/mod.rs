//! Cluster DNS, answered by the agent itself instead of a CoreDNS deployment.
//!
//! The records are those of the Kubernetes DNS specification, as CoreDNS's kubernetes
//! plugin serves them:
//!
//! - `<svc>.<ns>.svc.<domain>`: A/AAAA of the ClusterIPs; for a headless service the
//!   addresses of its ready endpoints; for an ExternalName service a CNAME;
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV for each named port, targeting the
//!   service, or each endpoint of a headless service by `<hostname or dashed-ip>.<svc>...`,
//!   whose A/AAAA records exist too;
//! - `<dashed-ip>.<ns>.pod.<domain>`: the address spelled (CoreDNS's "pods insecure");
//! - PTR records of ClusterIPs and headless endpoints, and `dns-version.<domain>` TXT.
//!
//! Names under the domain that do not exist are NXDOMAIN with the zone's SOA; an existing
//! name asked for another type is NODATA. Everything else goes to the host's upstream
//! resolvers, and names under the cluster domain never do.
//!
//! The pieces: [`zone`] is the pure record index and resolver, [`message`] turns request
//! bytes into a response, [`forward`] asks the upstream resolvers, [`server`] owns the
//! sockets and [`source`] keeps the zone current from reflectors over the API.

pub mod forward;
pub mod message;
pub mod server;
pub mod source;
pub mod zone;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use forward::Forwarder;
pub use server::{serve_on, Sockets};
pub use zone::Zone;

/// The kubernetes plugin's default TTL.
pub const DEFAULT_TTL: u32 = 5;

/// How long one upstream resolver may take before the next one is asked.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// What the cluster DNS server answers, where, and whom it asks for the rest.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Addresses to answer on, UDP and TCP each.
    pub listen: Vec<SocketAddr>,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// Resolvers for names outside the cluster, tried in order.
    pub upstream: Vec<SocketAddr>,
    /// TTL of the cluster's records, in seconds.
    pub ttl: u32,
    /// How long each upstream resolver may take.
    pub upstream_timeout: Duration,
}

impl DnsConfig {
    /// Listen on `listen`, with the upstream resolvers of the host's /etc/resolv.conf.
    pub fn new(listen: Vec<SocketAddr>) -> DnsConfig {
        let upstream = upstream_from_resolv_conf(Path::new("/etc/resolv.conf"), &listen)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cluster dns: no upstream resolvers");
                Vec::new()
            });
        DnsConfig {
            listen,
            domain: "cluster.local".into(),
            upstream,
            ttl: DEFAULT_TTL,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding {proto} {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: std::io::Error,
    },
    #[error("dns socket: {0}")]
    Socket(std::io::Error),
    #[error("reading {path}: {source}")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster domain {domain:?}: {reason}")]
    Domain { domain: String, reason: String },
}

/// Serve cluster DNS on `cfg.listen` from Services and EndpointSlices watched through
/// `client`, until `shutdown` turns true.
pub async fn serve(
    client: kube::Client,
    cfg: DnsConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), DnsError> {
    let domain = cfg.domain.trim_end_matches('.').to_ascii_lowercase();
    if let Err(e) = hickory_proto::rr::Name::from_ascii(&domain) {
        return Err(DnsError::Domain {
            domain: cfg.domain.clone(),
            reason: e.to_string(),
        });
    }
    let sockets = Sockets::bind(&cfg.listen).await?;
    let (zone_tx, zone_rx) =
        tokio::sync::watch::channel(Arc::new(Zone::unsynced(&domain, cfg.ttl)));
    let source = tokio::spawn(source::run(
        client,
        domain.clone(),
        cfg.ttl,
        zone_tx,
        shutdown.clone(),
    ));
    tracing::info!(listen = ?cfg.listen, domain, upstream = ?cfg.upstream, "cluster dns serving");
    let forwarder = Forwarder::new(cfg.upstream, cfg.upstream_timeout);
    let served = serve_on(zone_rx, sockets, forwarder, shutdown).await;
    source.abort();
    let _ = source.await;
    served
}

/// The nameservers of a resolv.conf file, as upstream resolvers for `listen`.
pub fn upstream_from_resolv_conf(
    path: &Path,
    listen: &[SocketAddr],
) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ResolvConf {
        path: path.display().to_string(),
        source,
    })?;
    Ok(upstream_from(&text, listen))
}

/// The `nameserver` lines of resolv.conf text (port 53), less any that would send
/// queries back to a server listening on `listen`: its own addresses, and every
/// loopback address when it listens on all addresses of port 53 (a loopback stub
/// such as systemd-resolved's or dnsmasq's may itself forward to us).
pub fn upstream_from(resolv_conf: &str, listen: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut upstream = Vec::new();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // A scoped IPv6 address (fe80::1%eth0) is left out: SocketAddr has no scope name.
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        let addr = SocketAddr::new(ip, 53);
        let loops = listen.iter().any(|l| {
            l.port() == 53
                && (l.ip() == ip
                    || (l.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
        });
        if !loops && !upstream.contains(&addr) {
            upstream.push(addr);
        }
    }
    upstream
}

#[cfg(test)]
mod tests;
