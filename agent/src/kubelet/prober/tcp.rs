//! tcpSocket probes, and the TCP dial every network probe starts with.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::TCPSocketAction;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::{os_error_text, resolve_port, ProbeOutcome, Target};

/// Connects to `port` of the probe's `host`, or of the pod IP, within the timeout.
pub(super) async fn probe(
    action: &TCPSocketAction,
    target: &Target,
    timeout: Duration,
) -> ProbeOutcome {
    let port = match resolve_port(&action.port, &target.ports) {
        Ok(p) => p,
        Err(e) => return ProbeOutcome::Error(e),
    };
    let host = match action.host.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => h.to_owned(),
        None => match target.pod_ip {
            Some(ip) => ip.to_string(),
            None => return ProbeOutcome::Error("the pod has no IP address".to_owned()),
        },
    };
    match dial(&host, port, Some(Instant::now() + timeout)).await {
        // Connected is all a tcpSocket probe asks; the socket closes on drop.
        Ok(_) => ProbeOutcome::Success,
        Err(e) => ProbeOutcome::Failure(e),
    }
}

/// Dials `host:port` (an IP address or a name to look up), trying each address until
/// one answers; errors are worded as Go's dialer words them ("dial tcp 10.1.2.3:80:
/// connect: connection refused"). Without a deadline the caller bounds the time.
pub(super) async fn dial(
    host: &str,
    port: u16,
    deadline: Option<Instant>,
) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let lookup = tokio::net::lookup_host((host, port));
            let found = match deadline {
                Some(d) => tokio::time::timeout_at(d, lookup)
                    .await
                    .map_err(|_| format!("dial tcp: lookup {host}: i/o timeout"))?,
                None => lookup.await,
            };
            let addrs: Vec<SocketAddr> = found
                .map_err(|e| format!("dial tcp: lookup {host}: {}", os_error_text(&e)))?
                .collect();
            if addrs.is_empty() {
                return Err(format!("dial tcp: lookup {host}: no such host"));
            }
            addrs
        }
    };
    let mut last = String::new();
    for addr in addrs {
        match connect(addr, deadline).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn connect(addr: SocketAddr, deadline: Option<Instant>) -> Result<TcpStream, String> {
    let fail = |e: std::io::Error| format!("dial tcp {addr}: connect: {}", os_error_text(&e));
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("dial tcp {addr}: socket: {}", os_error_text(&e)))?;
    // kubelet lingers one second on close to spare the node TIME_WAIT sockets; a
    // lingering close would block a runtime thread here, so the close stays plain.
    match deadline {
        Some(d) => match tokio::time::timeout_at(d, socket.connect(addr)).await {
            Ok(r) => r.map_err(fail),
            Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
        },
        None => socket.connect(addr).await.map_err(fail),
    }
}
