//! The fakes the probe tests run against.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::ContainerPort;
use podrun_cri_proto::v1::{ExecSyncRequest, ExecSyncResponse};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::kubelet::cri;
use crate::kubelet::prober::{BoxFuture, Target};

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
