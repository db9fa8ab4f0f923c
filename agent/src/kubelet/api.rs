//! The kubelet API on port 10250, what the API server proxies `kubectl logs`, `exec`,
//! `attach` and `port-forward` to: HTTPS whose clients prove who they are with a
//! certificate of the cluster CA (anonymous requests are refused, as kubelet does with
//! anonymous auth disabled), and whose serving certificate kubelet signs itself.
//!
//! | path | what |
//! |---|---|
//! | `/healthz` | `ok` |
//! | `/pods` | the PodList of the pods bound to the node |
//! | `/containerLogs/{ns}/{pod}/{container}` | the container's CRI log file, with `PodLogOptions` |
//! | `/exec/{ns}/{pod}[/{uid}]/{container}` | CRI Exec, then the client's upgrade proxied to the streaming URL |
//! | `/attach/{ns}/{pod}[/{uid}]/{container}` | CRI Attach, likewise |
//! | `/portForward/{ns}/{pod}[/{uid}]` | CRI PortForward, likewise |
//! | `/stats/summary` | node and pod CPU and memory, the kubelet summary |
//!
//! Containers are found through CRI by the labels kubelet puts on them: the current
//! instance is the newest, the `previous` one the one before it. The streaming
//! requests are proxied, never redirected, whatever the client speaks (SPDY/3.1 or
//! WebSocket): the streaming server negotiates that itself.

pub mod logs;
mod proxy;
mod stats;

#[cfg(any(test, feature = "test-support"))]
pub mod fake;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use k8s_openapi::api::core::v1::Pod;
use podrun_cri_proto::v1 as cri;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use super::cri::{CriClient, CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID};
use logs::LogOptions;

/// The response body: whole, or streamed (logs, a proxied error).
pub type Body = BoxBody<Bytes, std::io::Error>;

pub(crate) type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The pods bound to this node, as the kubelet knows them.
pub type PodsFn = Arc<dyn Fn() -> Vec<Pod> + Send + Sync>;

/// The common name of the API server's client certificate for kubelets.
pub const APISERVER_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
/// The group whose members may do anything.
pub const MASTERS_GROUP: &str = "system:masters";

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may finish after a shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KubeletApiError {
    #[error("{what}: {message}")]
    Certificate { what: &'static str, message: String },
}

fn cert_err(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> KubeletApiError {
    move |e| KubeletApiError::Certificate {
        what,
        message: e.to_string(),
    }
}

/// HTTPS with HTTP/2 and HTTP/1.1 (upgrades need 1.1). Client certificates are
/// verified against `client_ca_pem` when offered; a client without one gets 401s.
pub fn tls_config(
    client_ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, KubeletApiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        let c = c.map_err(|e| cert_err("client CA")(&e))?;
        roots.add(c).map_err(|e| cert_err("client CA")(&e))?;
    }
    if roots.is_empty() {
        return Err(cert_err("client CA")(&"no certificate in the PEM"));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| cert_err("client verifier")(&e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err("serving certificate")(&e))?;
    if chain.is_empty() {
        return Err(cert_err("serving certificate")(
            &"no certificate in the PEM",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| cert_err("serving key")(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_err("TLS versions")(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| cert_err("serving certificate")(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A self-signed serving certificate for the node's name and addresses, valid for a
/// year, as kubelet makes one when it is given none. Returns the certificate and key,
/// PEM; keeping and reusing them is the caller's business.
pub fn self_signed(node_name: &str, ips: &[IpAddr]) -> Result<(String, String), KubeletApiError> {
    use chrono::Datelike;
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let key = KeyPair::generate().map_err(|e| cert_err("serving key")(&e))?;
    let mut p = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| cert_err("serving certificate")(&e))?;
    let now = chrono::Utc::now();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("{node_name}@{}", now.timestamp()),
    );
    p.distinguished_name = dn;
    if !node_name.is_empty() {
        let dns = node_name
            .try_into()
            .map_err(|e| cert_err("node name")(&e))?;
        p.subject_alt_names.push(SanType::DnsName(dns));
    }
    for ip in ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // From the start of yesterday (clock skew) to a year on; day 28 at most, so the
    // date exists in every month of the next year.
    let yesterday = now - chrono::Duration::days(1);
    let day = |d: u32| d.min(28) as u8;
    p.not_before = rcgen::date_time_ymd(
        yesterday.year(),
        yesterday.month() as u8,
        day(yesterday.day()),
    );
    p.not_after = rcgen::date_time_ymd(now.year() + 1, now.month() as u8, day(now.day()));
    let cert = p
        .self_signed(&key)
        .map_err(|e| cert_err("serving certificate")(&e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Who a verified client certificate names: CN the user, each O a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

fn user_from_cert(cert: &CertificateDer) -> Option<User> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = c.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(User { name, groups })
}

/// What kubelet's authorizer is asked about a request: the verb from the method, and
/// the subresource of `nodes` the path falls under.
fn attributes(method: &Method, path: &str) -> (&'static str, &'static str) {
    let verb = match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    };
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    let subresource = if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        "log"
    } else if under("/spec") {
        "spec"
    } else {
        "proxy"
    };
    (verb, subresource)
}

/// The API server's kubelet client and cluster admins may do anything; nobody else may.
fn authorized(user: &User) -> bool {
    user.name == APISERVER_CLIENT_CN || user.groups.iter().any(|g| g == MASTERS_GROUP)
}

struct State {
    cri: CriClient,
    pods: PodsFn,
    /// CPU samples of pods and containers whose runtime gives no rate: (ns, usage).
    cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
    node_cpu: Mutex<Option<(i64, u64)>>,
    /// Ends the log streams being followed when the server stops.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Serves the kubelet API on `listener` until `shutdown` turns true; connections still
/// open then get a few seconds to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cri: CriClient,
    pods: PodsFn,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let state = Arc::new(State {
        cri,
        pods,
        cpu_samples: Mutex::new(HashMap::new()),
        node_cpu: Mutex::new(None),
        shutdown: shutdown.clone(),
    });
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "kubelet API listening");
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet API: accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "kubelet API: TLS handshake");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "kubelet API: TLS handshake timed out");
                    return;
                }
            };
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(user_from_cert);
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let user = user.clone();
                async move { Ok::<_, Infallible>(handle(&state, user.as_ref(), req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "kubelet API connection");
            }
        });
    }
    tracing::info!("kubelet API stopping");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("kubelet API: connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(msg))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

fn json(v: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(b) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(b))
            .unwrap_or_else(|_| Response::new(full(Bytes::new()))),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A streamed body fed from a channel.
fn channel_body(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    let s = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, std::io::Error>(hyper::body::Frame::data(b)));
    BodyExt::boxed(StreamBody::new(s))
}

/// A request refused: the status and the text kubelet answers with.
struct Refused(StatusCode, String);

impl Refused {
    fn response(self) -> Response<Body> {
        text(self.0, self.1)
    }
}

/// A CRI error as kubelet answers it: the gRPC code picks the HTTP status.
fn cri_error(what: &str, s: &tonic::Status) -> Refused {
    let code = match s.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Refused(code, format!("{what}: {}", s.message()))
}

/// The query's pairs, decoded, in order (repeated keys kept).
fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn first<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(pk, _)| pk == k)
        .map(|(_, v)| v.as_str())
}

async fn handle(state: &Arc<State>, user: Option<&User>, req: Request<Incoming>) -> Response<Body> {
    let Some(user) = user else {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let path = req.uri().path().to_string();
    if !authorized(user) {
        let (verb, subresource) = attributes(req.method(), &path);
        tracing::debug!(user = %user.name, path = %path, "kubelet API: forbidden");
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden (user={}, verb={verb}, resource=nodes, subresource={subresource})",
                user.name
            ),
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match segments.as_slice() {
        ["healthz"] if get => text(StatusCode::OK, "ok"),
        ["pods"] | ["pods", ""] if get => json(&serde_json::json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {},
            "items": (state.pods)(),
        })),
        ["containerLogs", ns, pod, container] if get => {
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            container_logs(state, &req, &ns, &pod, &container).await
        }
        ["exec", ns, pod, container] | ["exec", ns, pod, _, container] => {
            let target = (ns.to_string(), pod.to_string(), container.to_string());
            stream_command(state, req, target, true).await
        }
        ["attach", ns, pod, container] | ["attach", ns, pod, _, container] => {
            let target = (ns.to_string(), pod.to_string(), container.to_string());
            stream_command(state, req, target, false).await
        }
        ["portForward", ns, pod] | ["portForward", ns, pod, _] => {
            let (ns, pod) = (ns.to_string(), pod.to_string());
            port_forward(state, req, &ns, &pod).await
        }
        ["stats", "summary"] if get => match stats::summary(state).await {
            Ok(s) => json(&s),
            Err(e) => cri_error("stats", &e).response(),
        },
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// The pod of that namespace and name among the node's pods.
fn find_pod(state: &State, ns: &str, name: &str) -> Result<Pod, Refused> {
    (state.pods)()
        .into_iter()
        .find(|p| {
            p.metadata.namespace.as_deref().unwrap_or("default") == ns
                && p.metadata.name.as_deref() == Some(name)
        })
        .ok_or_else(|| {
            Refused(
                StatusCode::NOT_FOUND,
                format!("pod {name:?} in namespace {ns:?} does not exist on this node"),
            )
        })
}

/// Whether the pod's spec has a container (init and ephemeral ones too) of that name.
fn has_container(pod: &Pod, name: &str) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == name)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
}

fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let mut l = HashMap::from([
        (
            POD_NAMESPACE.to_string(),
            pod.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        ),
        (
            POD_NAME.to_string(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
    ]);
    if let Some(uid) = pod.metadata.uid.as_ref().filter(|u| !u.is_empty()) {
        l.insert(POD_UID.to_string(), uid.clone());
    }
    l
}

/// Every instance of the pod's container the runtime has, newest first.
async fn instances(
    state: &State,
    pod: &Pod,
    container: &str,
) -> Result<Vec<cri::Container>, Refused> {
    let mut labels = pod_labels(pod);
    labels.insert(CONTAINER_NAME.to_string(), container.to_string());
    let mut rt = state.cri.runtime.clone();
    let mut list = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: labels,
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| cri_error("listing containers", &s))?
        .into_inner()
        .containers;
    list.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    Ok(list)
}

/// The pod and the container's current instance; 404 for a pod or container that
/// does not exist, 400 for one not started yet.
async fn current_container(
    state: &State,
    ns: &str,
    pod_name: &str,
    container: &str,
) -> Result<(Pod, Vec<cri::Container>), Refused> {
    let pod = find_pod(state, ns, pod_name)?;
    if !has_container(&pod, container) {
        return Err(Refused(
            StatusCode::NOT_FOUND,
            format!("container {container:?} not found in pod {pod_name:?}"),
        ));
    }
    let list = instances(state, &pod, container).await?;
    if list.is_empty() {
        return Err(Refused(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod_name:?} is waiting to start"),
        ));
    }
    Ok((pod, list))
}

async fn container_logs(
    state: &Arc<State>,
    req: &Request<Incoming>,
    ns: &str,
    pod_name: &str,
    container: &str,
) -> Response<Body> {
    let pairs = query_pairs(req);
    let opts = match LogOptions::parse(&pairs, chrono::Utc::now()) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let list = match current_container(state, ns, pod_name, container).await {
        Ok((_, l)) => l,
        Err(r) => return r.response(),
    };
    let Some(c) = list.get(usize::from(opts.previous)) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("previous terminated container {container:?} in pod {pod_name:?} not found"),
        );
    };
    let mut rt = state.cri.runtime.clone();
    let status = match rt
        .container_status(cri::ContainerStatusRequest {
            container_id: c.id.clone(),
            verbose: false,
        })
        .await
    {
        Ok(r) => r.into_inner().status.unwrap_or_default(),
        Err(s) => return cri_error("container status", &s).response(),
    };
    if status.log_path.is_empty() {
        return text(
            StatusCode::NOT_FOUND,
            format!("container {container:?} in pod {pod_name:?} has no log file"),
        );
    }
    let path = std::path::PathBuf::from(&status.log_path);
    let reader = match logs::open(&path, opts.tail_lines).await {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "opening the log of container {container:?} in pod {pod_name:?} ({}): {e}",
                    path.display()
                ),
            )
        }
    };
    let id = c.id.clone();
    let cri = state.cri.clone();
    let still_running: logs::StillRunning = Box::new(move || {
        let mut rt = cri.runtime.clone();
        let id = id.clone();
        Box::pin(async move {
            match rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await
            {
                Ok(r) => r
                    .into_inner()
                    .status
                    .is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32),
                Err(_) => false,
            }
        })
    });
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let (pod, ctr) = (pod_name.to_string(), container.to_string());
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            r = logs::stream(reader, path, opts, still_running, tx) => {
                if let Err(e) = r {
                    tracing::warn!(pod = %pod, container = %ctr, error = %e, "reading a container log");
                }
            }
            // Ends a follower, so the server's stop need not wait for it.
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(channel_body(rx))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

/// Exec (with the `command` of the query) or attach: the running instance of the
/// container, the CRI call for a streaming URL, then the upgrade proxied to it.
async fn stream_command(
    state: &Arc<State>,
    req: Request<Incoming>,
    (ns, pod_name, container): (String, String, String),
    exec: bool,
) -> Response<Body> {
    let pairs = query_pairs(&req);
    let flag = |k: &str| logs::query_bool(first(&pairs, k));
    let (stdin, stdout, mut stderr, tty) =
        (flag("input"), flag("output"), flag("error"), flag("tty"));
    if !(stdin || stdout || stderr) {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr",
        );
    }
    if !proxy::is_upgrade(req.headers()) {
        return text(StatusCode::BAD_REQUEST, "Upgrade request required");
    }
    // A terminal has no separate error stream; kubelet drops it rather than fail.
    if tty {
        stderr = false;
    }
    let list = match current_container(state, &ns, &pod_name, &container).await {
        Ok((_, l)) => l,
        Err(r) => return r.response(),
    };
    let c = &list[0];
    if c.state != cri::ContainerState::ContainerRunning as i32 {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod_name:?} is not running"),
        );
    }
    let mut rt = state.cri.runtime.clone();
    let url = if exec {
        let cmd: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        rt.exec(cri::ExecRequest {
            container_id: c.id.clone(),
            cmd,
            tty,
            stdin,
            stdout,
            stderr,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().url)
    } else {
        rt.attach(cri::AttachRequest {
            container_id: c.id.clone(),
            stdin,
            tty,
            stdout,
            stderr,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().url)
    };
    match url {
        Ok(url) => proxy::upgrade(req, &url).await,
        Err(s) => cri_error(if exec { "exec" } else { "attach" }, &s).response(),
    }
}

async fn port_forward(
    state: &Arc<State>,
    req: Request<Incoming>,
    ns: &str,
    pod_name: &str,
) -> Response<Body> {
    let pairs = query_pairs(&req);
    let mut ports = Vec::new();
    for (k, v) in &pairs {
        if k == "port" {
            match v.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(i32::from(p)),
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("invalid port {v:?}: a port is 1 to 65535"),
                    )
                }
            }
        }
    }
    if !proxy::is_upgrade(req.headers()) {
        return text(StatusCode::BAD_REQUEST, "Upgrade request required");
    }
    let pod = match find_pod(state, ns, pod_name) {
        Ok(p) => p,
        Err(r) => return r.response(),
    };
    let mut rt = state.cri.runtime.clone();
    let sandboxes = match rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: pod_labels(&pod),
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
    {
        Ok(r) => r.into_inner().items,
        Err(s) => return cri_error("listing pod sandboxes", &s).response(),
    };
    let Some(sandbox) = sandboxes.iter().max_by_key(|s| s.created_at) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {pod_name:?} in namespace {ns:?} has no running sandbox"),
        );
    };
    match rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: sandbox.id.clone(),
            port: ports,
        })
        .await
    {
        Ok(r) => proxy::upgrade(req, &r.into_inner().url).await,
        Err(s) => cri_error("port forward", &s).response(),
    }
}
