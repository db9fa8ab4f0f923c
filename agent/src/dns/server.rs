//! The sockets: a UDP loop and a TCP accept loop per listen address, all answering from
//! the latest [`Zone`] a watch channel holds.
//!
//! Cluster names are answered inline on the UDP loop (no allocation beyond the
//! response); whatever needs an upstream resolver runs as its own task, at most
//! [`MAX_PENDING`] at a time, so a slow upstream never stalls cluster names.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::forward::Forwarder;
use super::message::{self, Outcome};
use super::zone::Zone;
use super::DnsError;

/// Queries waiting on upstream resolvers, and TCP connections, at most at once.
const MAX_PENDING: usize = 1024;

/// How long a TCP connection may stay idle between queries (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Bound sockets to answer on.
#[derive(Debug, Default)]
pub struct Sockets {
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

impl Sockets {
    /// Bind UDP and TCP on every address.
    pub async fn bind(listen: &[std::net::SocketAddr]) -> Result<Sockets, DnsError> {
        let mut sockets = Sockets::default();
        for addr in listen {
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|source| DnsError::Bind {
                    addr: *addr,
                    proto: "udp",
                    source,
                })?;
            // Port 0: TCP takes the port UDP was given, so one address serves both.
            let tcp_addr = udp.local_addr().unwrap_or(*addr);
            let tcp = TcpListener::bind(tcp_addr)
                .await
                .map_err(|source| DnsError::Bind {
                    addr: tcp_addr,
                    proto: "tcp",
                    source,
                })?;
            sockets.udp.push(udp);
            sockets.tcp.push(tcp);
        }
        Ok(sockets)
    }
}

/// What every socket loop shares.
struct Handler {
    zone: watch::Receiver<Arc<Zone>>,
    forwarder: Forwarder,
    pending: Arc<Semaphore>,
}

impl Handler {
    fn zone(&self) -> Arc<Zone> {
        self.zone.borrow().clone()
    }

    /// Finish an outcome that needs upstream resolvers.
    async fn complete(&self, outcome: Outcome) -> Option<Message> {
        match outcome {
            Outcome::Respond(response) => Some(response),
            Outcome::Drop => None,
            Outcome::Forward {
                request,
                mut response,
            } => match self.forwarder.forward(&request).await {
                Some(mut answer) => {
                    // The client's EDNS terms, not the upstream's.
                    answer.edns = response.edns.take();
                    answer.metadata.recursion_available = true;
                    Some(answer)
                }
                None => {
                    response.metadata.response_code = ResponseCode::ServFail;
                    Some(response)
                }
            },
            Outcome::Chase {
                mut response,
                query,
            } => {
                let mut request = Message::query();
                request.metadata.recursion_desired = true;
                request.add_query(query);
                if let Some(answer) = self.forwarder.forward(&request).await {
                    response.answers.extend(answer.answers);
                    if answer.metadata.response_code == ResponseCode::NXDomain {
                        response.metadata.response_code = ResponseCode::NXDomain;
                    }
                }
                Some(response)
            }
        }
    }

    /// Answer one request completely (TCP, and UDP requests that need upstream).
    async fn answer(&self, bytes: &[u8], limit: Option<usize>) -> Option<Vec<u8>> {
        let outcome = message::handle(&self.zone(), bytes);
        let response = self.complete(outcome).await?;
        message::encode(response, limit)
    }
}

/// Serve DNS on `sockets` until `shutdown` turns true: answers from the latest zone in
/// `zone`, everything else forwarded by `forwarder`.
pub async fn serve_on(
    zone: watch::Receiver<Arc<Zone>>,
    sockets: Sockets,
    forwarder: Forwarder,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DnsError> {
    let handler = Arc::new(Handler {
        zone,
        forwarder,
        pending: Arc::new(Semaphore::new(MAX_PENDING)),
    });
    let mut loops = JoinSet::new();
    for socket in sockets.udp {
        loops.spawn(udp_loop(handler.clone(), Arc::new(socket)));
    }
    for listener in sockets.tcp {
        loops.spawn(tcp_loop(handler.clone(), listener));
    }
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => {}
        res = loops.join_next() => {
            if let Some(Ok(Err(e))) = res {
                return Err(e);
            }
        }
    }
    loops.shutdown().await;
    Ok(())
}

async fn udp_loop(handler: Arc<Handler>, socket: Arc<UdpSocket>) -> Result<(), DnsError> {
    let local = socket.local_addr().map_err(DnsError::Socket)?;
    let mut buf = vec![0u8; 65535];
    let mut tasks = JoinSet::new();
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors of earlier sends surface here on Linux: not fatal.
            Err(e) => {
                tracing::debug!(addr = %local, error = %e, "dns udp receive");
                continue;
            }
        };
        while tasks.try_join_next().is_some() {}
        let bytes = &buf[..n];
        let (outcome, limit) = message::handle_udp(&handler.zone(), bytes);
        match outcome {
            Outcome::Drop => {}
            Outcome::Respond(response) => {
                if let Some(out) = message::encode(response, Some(limit)) {
                    if let Err(e) = socket.send_to(&out, peer).await {
                        tracing::debug!(peer = %peer, error = %e, "dns udp send");
                    }
                }
            }
            outcome => {
                let Ok(permit) = handler.pending.clone().try_acquire_owned() else {
                    tracing::debug!(peer = %peer, "dns: too many pending queries, dropped one");
                    continue;
                };
                let handler = handler.clone();
                let socket = socket.clone();
                tasks.spawn(async move {
                    let response = handler.complete(outcome).await;
                    drop(permit);
                    if let Some(out) = response.and_then(|r| message::encode(r, Some(limit))) {
                        if let Err(e) = socket.send_to(&out, peer).await {
                            tracing::debug!(peer = %peer, error = %e, "dns udp send");
                        }
                    }
                });
            }
        }
    }
}

async fn tcp_loop(handler: Arc<Handler>, listener: TcpListener) -> Result<(), DnsError> {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "dns tcp accept");
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_PENDING {
            tracing::debug!(peer = %peer, "dns: too many tcp connections, closed one");
            continue;
        }
        let handler = handler.clone();
        connections.spawn(async move {
            if let Err(e) = tcp_connection(&handler, stream).await {
                tracing::debug!(peer = %peer, error = %e, "dns tcp connection");
            }
        });
    }
}

/// Length-prefixed queries, answered in order, until the client closes or idles.
async fn tcp_connection(handler: &Handler, mut stream: TcpStream) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let mut buf = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let Some(out) = handler.answer(&buf, None).await else {
            return Ok(());
        };
        let Ok(len) = u16::try_from(out.len()) else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&out);
        stream.write_all(&framed).await?;
    }
}
