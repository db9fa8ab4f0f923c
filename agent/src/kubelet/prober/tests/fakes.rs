//! The fakes the probe tests run against.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use podrun_cri_proto::v1::{ExecSyncRequest, ExecSyncResponse};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::kubelet::cri;
use crate::kubelet::prober::{BoxFuture, Clock, ProbeOutcome, ProbeRunner, Target};

/// A target on 127.0.0.1 whose runtime socket is never dialled.
pub fn target(ports: Vec<ContainerPort>) -> Target {
    Target {
        pod_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        container_id: "c0ffee".into(),
        ports,
        cri: cri::connect("unix:///nonexistent/podrun-prober-test.sock").unwrap(),
    }
}

pub fn named_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        ..Default::default()
    }
}

/// A port nothing listens on.
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

// ---- time ----

/// A clock that moves only when told. Sleepers wake when it passes their deadline.
pub struct FakeClock {
    base: Instant,
    inner: Mutex<FakeTime>,
}

struct FakeTime {
    now: Duration,
    sleepers: Vec<(Instant, oneshot::Sender<()>)>,
    jitter: f64,
}

impl FakeClock {
    pub fn new(jitter: f64) -> Arc<Self> {
        Arc::new(FakeClock {
            base: Instant::now(),
            inner: Mutex::new(FakeTime {
                now: Duration::ZERO,
                sleepers: Vec::new(),
                jitter,
            }),
        })
    }

    /// Time since the clock was made.
    pub fn elapsed(&self) -> Duration {
        self.inner.lock().unwrap().now
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.inner.lock().unwrap();
        t.now += by;
        let now = self.base + t.now;
        let (due, waiting): (Vec<_>, Vec<_>) = t.sleepers.drain(..).partition(|(d, _)| *d <= now);
        t.sleepers = waiting;
        for (_, tx) in due {
            let _ = tx.send(());
        }
    }

    fn sleeping(&self) -> usize {
        let t = self.inner.lock().unwrap();
        t.sleepers.iter().filter(|(_, tx)| !tx.is_closed()).count()
    }

    /// Lets the tasks run until `workers` of them wait on this clock.
    pub async fn settle(&self, workers: usize) {
        for _ in 0..10_000 {
            tokio::task::yield_now().await;
            if self.sleeping() == workers {
                // One more round for anything woken by the last one.
                tokio::task::yield_now().await;
                if self.sleeping() == workers {
                    return;
                }
            }
        }
        panic!("{} tasks wait on the clock, not {workers}", self.sleeping());
    }

    /// Moves the clock on by `by` in steps of one second, letting `workers` settle
    /// after each.
    pub async fn run_for(&self, by: Duration, workers: usize) {
        let mut left = by;
        while !left.is_zero() {
            let step = left.min(Duration::from_secs(1));
            self.advance(step);
            self.settle(workers).await;
            left -= step;
        }
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.base + self.inner.lock().unwrap().now
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        let mut t = self.inner.lock().unwrap();
        if deadline <= self.base + t.now {
            return Box::pin(std::future::ready(()));
        }
        let (tx, rx) = oneshot::channel();
        t.sleepers.push((deadline, tx));
        Box::pin(async move {
            let _ = rx.await;
        })
    }

    fn jitter(&self, max: Duration) -> Duration {
        max.mul_f64(self.inner.lock().unwrap().jitter)
    }
}

// ---- probe runs ----

/// One run: the probe's exec command and the fake time it ran at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub command: Vec<String>,
    pub at: Duration,
}

/// Outcomes scripted by the first word of the probe's exec command; Success once a
/// script runs out.
pub struct ScriptedRunner {
    clock: Arc<FakeClock>,
    scripts: Mutex<HashMap<String, VecDeque<ProbeOutcome>>>,
    runs: Mutex<Vec<Run>>,
}

impl ScriptedRunner {
    pub fn new(clock: Arc<FakeClock>) -> Arc<Self> {
        Arc::new(ScriptedRunner {
            clock,
            scripts: Mutex::new(HashMap::new()),
            runs: Mutex::new(Vec::new()),
        })
    }

    pub fn script(&self, name: &str, outcomes: impl IntoIterator<Item = ProbeOutcome>) {
        self.scripts
            .lock()
            .unwrap()
            .entry(name.into())
            .or_default()
            .extend(outcomes);
    }

    /// When the runs of `name` happened, in seconds of fake time.
    pub fn times(&self, name: &str) -> Vec<u64> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.command.first().map(String::as_str) == Some(name))
            .map(|r| r.at.as_secs())
            .collect()
    }

    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }
}

impl ProbeRunner for ScriptedRunner {
    fn run<'a>(&'a self, probe: &'a Probe, _target: &'a Target) -> BoxFuture<'a, ProbeOutcome> {
        let command = probe
            .exec
            .as_ref()
            .and_then(|e| e.command.clone())
            .unwrap_or_default();
        let name = command.first().cloned().unwrap_or_default();
        self.runs.lock().unwrap().push(Run {
            command,
            at: self.clock.elapsed(),
        });
        let outcome = self
            .scripts
            .lock()
            .unwrap()
            .get_mut(&name)
            .and_then(VecDeque::pop_front)
            .unwrap_or(ProbeOutcome::Success);
        Box::pin(std::future::ready(outcome))
    }
}

// ---- the runtime ----

/// A RuntimeService that answers ExecSync by the command's first word, and
/// Unimplemented to everything else.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    pub seen: Arc<Mutex<Vec<ExecSyncRequest>>>,
}

impl FakeRuntime {
    fn exec_sync(&self, req: ExecSyncRequest) -> Result<ExecSyncResponse, tonic::Status> {
        self.seen.lock().unwrap().push(req.clone());
        let reply = |exit_code: i32| ExecSyncResponse {
            stdout: b"out\n".to_vec(),
            stderr: b"err\n".to_vec(),
            exit_code,
        };
        match req.cmd.first().map(String::as_str) {
            Some("true") => Ok(reply(0)),
            Some("false") => Ok(reply(1)),
            Some("big") => Ok(ExecSyncResponse {
                stdout: vec![b'x'; 64 * 1024],
                stderr: Vec::new(),
                exit_code: 2,
            }),
            Some("sleep") => Err(tonic::Status::deadline_exceeded("timed out")),
            _ => Err(tonic::Status::not_found(format!(
                "container {} is not running",
                req.container_id
            ))),
        }
    }

    /// Serves on a unix socket in `dir`; a target whose runtime it is.
    pub async fn serve(self, dir: &std::path::Path) -> Target {
        let path = dir.join("runtime.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(self)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        Target {
            cri: cri::connect(&format!("unix://{}", path.display())).unwrap(),
            ..target(Vec::new())
        }
    }
}

impl tonic::server::NamedService for FakeRuntime {
    const NAME: &'static str = "runtime.v1.RuntimeService";
}

impl<B> tower::Service<Request<B>> for FakeRuntime
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let fake = self.clone();
        Box::pin(async move {
            if req.uri().path() != "/runtime.v1.RuntimeService/ExecSync" {
                return Ok(tonic::Status::unimplemented("not in the fake").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(ExecSync(fake), req).await)
        })
    }
}

struct ExecSync(FakeRuntime);

impl tonic::server::UnaryService<ExecSyncRequest> for ExecSync {
    type Response = ExecSyncResponse;
    type Future = BoxFuture<'static, Result<tonic::Response<ExecSyncResponse>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<ExecSyncRequest>) -> Self::Future {
        let reply = self.0.exec_sync(req.into_inner()).map(tonic::Response::new);
        Box::pin(std::future::ready(reply))
    }
}

// ---- HTTP ----

/// A request the test server got.
#[derive(Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
}

/// An HTTP/1 server on 127.0.0.1 (over TLS when given a config) with the routes the
/// tests ask for; what it was asked comes out of the receiver.
pub async fn http_server(
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| respond(req, port, tx.clone()));
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(config) => {
                        let Ok(stream) =
                            tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                        else {
                            return;
                        };
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    (port, rx)
}

async fn respond(
    req: Request<Incoming>,
    port: u16,
    seen: mpsc::UnboundedSender<Seen>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let _ = seen.send(Seen {
        path: path.clone(),
        headers: req.headers().clone(),
    });
    let reply = |status: u16, body: Vec<u8>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    };
    let redirect = |to: String, body: Vec<u8>| {
        let mut r = reply(302, body);
        r.headers_mut()
            .insert(http::header::LOCATION, to.parse().unwrap());
        r
    };
    Ok(match path.as_str() {
        "/ok" | "/healthz" | "/healthz?deep=1" => reply(200, b"fine".to_vec()),
        "/fail" => reply(500, b"secret details".to_vec()),
        "/moved" => redirect("/ok".into(), Vec::new()),
        "/away" => redirect(format!("http://localhost:{port}/ok"), vec![b'y'; 64 * 1024]),
        "/loop" => redirect("/loop".into(), Vec::new()),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            reply(200, Vec::new())
        }
        _ => reply(404, Vec::new()),
    })
}

/// A self-signed certificate for a name no probe asks for.
pub fn tls_config() -> Arc<rustls::ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["elsewhere.invalid".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    Arc::new(config)
}

/// Everything the server was asked so far.
pub fn drain(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Vec<Seen> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}
