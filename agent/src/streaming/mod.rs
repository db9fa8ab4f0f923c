//! The CRI streaming server: the HTTP endpoint that `Exec`, `Attach` and `PortForward`
//! point clients at, as kubelet's streaming server does for containerd and CRI-O.
//!
//! A CRI call validates its request, caches it under a random single-use token (valid
//! for one minute) and answers with `http://<addr>/{exec,attach,portforward}/<token>`.
//! The client then upgrades that URL either to SPDY/3.1 (remotecommand
//! `v4.channel.k8s.io`..`channel.k8s.io`, or `portforward.k8s.io`) or to a WebSocket
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`, base64 variants). The work itself is
//! delegated to a [`StreamRuntime`], which the agent implements over the pod monitors
//! and tests implement with fakes.
//!
//! Modules: [`spdy`] framing and sessions, [`websocket`] channel framing,
//! [`remotecommand`] exec/attach over either, [`portforward`], and [`client`], the client
//! side used by tests and benchmarks.

pub mod client;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use podrun_cri_proto::v1::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};

/// Terminal size carried by a resize event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// The client's streams, handed to the runtime. `None` where the client did not ask
/// for one; in tty mode there is no stderr.
pub struct Streams {
    pub stdin: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    pub stdout: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    pub stderr: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    pub resize: Option<tokio::sync::mpsc::Receiver<TerminalSize>>,
}

/// A bidirectional byte stream (a forwarded port's connection).
pub trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AsyncStream for T {}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What the streaming server needs from the container runtime.
pub trait StreamRuntime: Send + Sync + 'static {
    /// Run cmd in the container; returns its exit code.
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        streams: Streams,
    ) -> BoxFuture<Result<i32, String>>;
    /// Attach to the container's main process until it exits or the client goes.
    fn attach(
        &self,
        container_id: String,
        tty: bool,
        streams: Streams,
    ) -> BoxFuture<Result<(), String>>;
    /// Connect to `port` inside the pod's network namespace and return the connection.
    fn port_forward(
        &self,
        sandbox_id: String,
        port: u16,
    ) -> BoxFuture<Result<Box<dyn AsyncStream>, String>>;
}

/// How long a token stays valid, as in kubelet.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Most requests cached at once, as in kubelet.
const MAX_IN_FLIGHT: usize = 1000;
/// How long the server waits for a client to open all its streams.
pub(crate) const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated CRI request waiting for its client to connect.
#[derive(Debug, Clone)]
pub(crate) enum CachedRequest {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

/// Single-use tokens for cached requests.
struct RequestCache {
    entries: Mutex<HashMap<String, (CachedRequest, Instant)>>,
    ttl: Duration,
}

impl RequestCache {
    fn insert(&self, req: CachedRequest) -> Result<String, tonic::Status> {
        let token = new_token().map_err(|e| tonic::Status::internal(e.to_string()))?;
        let mut m = self.entries.lock().unwrap();
        let now = Instant::now();
        m.retain(|_, (_, t)| now.duration_since(*t) < self.ttl);
        if m.len() >= MAX_IN_FLIGHT {
            return Err(tonic::Status::resource_exhausted(
                "maximum number of in-flight streaming requests reached",
            ));
        }
        m.insert(token.clone(), (req, now));
        Ok(token)
    }

    /// Removes and returns the request if the token is known and fresh.
    fn consume(&self, token: &str) -> Option<CachedRequest> {
        let (req, t) = self.entries.lock().unwrap().remove(token)?;
        (t.elapsed() < self.ttl).then_some(req)
    }
}

fn new_token() -> std::io::Result<String> {
    use base64::Engine;
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// The streaming HTTP server. Dropping it stops accepting connections; sessions already
/// upgraded run to completion.
pub struct StreamServer {
    addr: SocketAddr,
    cache: Arc<RequestCache>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StreamServer {
    /// Bind (e.g. 127.0.0.1:0) and serve in a tokio task.
    pub async fn start(addr: SocketAddr, runtime: Arc<dyn StreamRuntime>) -> std::io::Result<Self> {
        Self::start_with_ttl(addr, runtime, TOKEN_TTL).await
    }

    /// As [`StreamServer::start`] with another token lifetime (tests use a short one).
    pub async fn start_with_ttl(
        addr: SocketAddr,
        runtime: Arc<dyn StreamRuntime>,
        ttl: Duration,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cache = Arc::new(RequestCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
        });
        let c = cache.clone();
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "streaming server: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let cache = c.clone();
                let runtime = runtime.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let cache = cache.clone();
                        let runtime = runtime.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(req, cache, runtime)) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await
                    {
                        tracing::debug!(peer = %peer, error = %e, "streaming connection ended");
                    }
                });
            }
        });
        tracing::info!(addr = %addr, "streaming server listening");
        Ok(StreamServer { addr, cache, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn url(&self, kind: &str, token: &str) -> String {
        format!("http://{}/{}/{}", self.addr, kind, token)
    }

    pub fn get_exec(&self, req: &ExecRequest) -> Result<ExecResponse, tonic::Status> {
        if req.container_id.is_empty() {
            return Err(tonic::Status::invalid_argument(
                "missing required container_id",
            ));
        }
        if req.cmd.is_empty() {
            return Err(tonic::Status::invalid_argument("missing required cmd"));
        }
        validate_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
        let token = self.cache.insert(CachedRequest::Exec(req.clone()))?;
        Ok(ExecResponse {
            url: self.url("exec", &token),
        })
    }

    pub fn get_attach(&self, req: &AttachRequest) -> Result<AttachResponse, tonic::Status> {
        if req.container_id.is_empty() {
            return Err(tonic::Status::invalid_argument(
                "missing required container_id",
            ));
        }
        validate_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
        let token = self.cache.insert(CachedRequest::Attach(req.clone()))?;
        Ok(AttachResponse {
            url: self.url("attach", &token),
        })
    }

    pub fn get_port_forward(
        &self,
        req: &PortForwardRequest,
    ) -> Result<PortForwardResponse, tonic::Status> {
        if req.pod_sandbox_id.is_empty() {
            return Err(tonic::Status::invalid_argument(
                "missing required pod_sandbox_id",
            ));
        }
        let token = self.cache.insert(CachedRequest::PortForward(req.clone()))?;
        Ok(PortForwardResponse {
            url: self.url("portforward", &token),
        })
    }
}

fn validate_streams(
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> Result<(), tonic::Status> {
    if !(stdin || stdout || stderr) {
        return Err(tonic::Status::invalid_argument(
            "one of stdin, stdout, or stderr must be set",
        ));
    }
    if tty && stderr {
        return Err(tonic::Status::invalid_argument(
            "tty and stderr cannot both be true",
        ));
    }
    Ok(())
}

pub(crate) type HttpResponse = Response<Full<Bytes>>;

pub(crate) fn plain(status: StatusCode, msg: impl Into<String>) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Every value of a (possibly repeated, comma separated) request header, in order.
pub(crate) fn header_list(req: &Request<Incoming>, name: &str) -> Vec<String> {
    header_values(req.headers(), name)
}

/// Every value of a (possibly repeated, comma separated) header of `headers`, in order;
/// values that are not visible ASCII are skipped.
pub fn header_values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn handle(
    req: Request<Incoming>,
    cache: Arc<RequestCache>,
    runtime: Arc<dyn StreamRuntime>,
) -> HttpResponse {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    }
    let Some(cached) = cache.consume(token) else {
        tracing::debug!(path = %path, "streaming request with unknown or expired token");
        return plain(StatusCode::NOT_FOUND, "invalid or expired token");
    };
    let upgrade = header_list(&req, "upgrade");
    let is_ws = upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket"));
    let is_spdy = upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
    match (cached, is_ws, is_spdy) {
        (CachedRequest::Exec(_) | CachedRequest::Attach(_), false, false)
        | (CachedRequest::PortForward(_), false, false) => plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        ),
        (CachedRequest::PortForward(pf), ws, _) => {
            if ws {
                portforward::serve_websocket(req, pf, runtime)
            } else {
                portforward::serve_spdy(req, pf, runtime)
            }
        }
        (rc, ws, _) => {
            let op = match rc {
                CachedRequest::Exec(e) => remotecommand::Operation::Exec(e),
                CachedRequest::Attach(a) => remotecommand::Operation::Attach(a),
                CachedRequest::PortForward(_) => unreachable!("matched above"),
            };
            if ws {
                remotecommand::serve_websocket(req, op, runtime)
            } else {
                remotecommand::serve_spdy(req, op, runtime)
            }
        }
    }
}

/// The first of the client's `offered` sub-protocols that the server `supported`, as
/// Kubernetes' handshake picks it.
pub fn negotiate(offered: &[String], supported: &[&'static str]) -> Option<&'static str> {
    offered
        .iter()
        .find_map(|o| supported.iter().copied().find(|s| *s == o.as_str()))
}

/// Answers a SPDY upgrade: negotiates the sub-protocol and, once hyper hands the
/// connection over, runs `f` on a server session.
pub(crate) fn upgrade_spdy<F, Fut>(
    mut req: Request<Incoming>,
    supported: &[&'static str],
    f: F,
) -> HttpResponse
where
    F: FnOnce(&'static str, spdy::Session, spdy::Incoming) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let offered = header_list(&req, "x-stream-protocol-version");
    // Kubernetes' handshake takes the client's first offer the server supports; no offer
    // at all is the legacy, unversioned protocol.
    let protocol = if offered.is_empty() {
        ""
    } else {
        match negotiate(&offered, supported) {
            Some(p) => p,
            None => {
                return plain(
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {:?}, server supports {:?}",
                        offered, supported
                    ),
                )
            }
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let (session, incoming) = spdy::Session::new(TokioIo::new(up), spdy::Role::Server);
                f(protocol, session, incoming).await;
            }
            Err(e) => tracing::debug!(error = %e, "spdy upgrade failed"),
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("SPDY/3.1"),
    );
    if !protocol.is_empty() {
        h.insert(
            "X-Stream-Protocol-Version",
            header::HeaderValue::from_static(protocol),
        );
    }
    r
}

#[cfg(test)]
mod tests;
