//! The pod subresources served by the pod's kubelet, as kube-apiserver proxies them:
//! `pods/log` is a GET of `/containerLogs/...` whose body is streamed back, and
//! `pods/exec`, `pods/attach` and `pods/portforward` hand the client's upgrade request
//! (SPDY/3.1 or WebSocket, whichever the client asked for) to `/exec`, `/attach` and
//! `/portForward`, then copy bytes both ways after the kubelet's 101.
//!
//! The kubelet is found from the pod's `spec.nodeName`: the Node's InternalIP
//! (else ExternalIP, else Hostname) and `status.daemonEndpoints.kubeletEndpoint.Port`
//! (10250 when unset). The server connects with TLS, presenting the client certificate
//! it issued itself (`kube-apiserver-kubelet-client`, in `system:masters`), and does not
//! verify the kubelet's serving certificate, which a kubelet signs itself: that is
//! kube-apiserver's behaviour without `--kubelet-certificate-authority`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use super::auth::AuthError;
use super::codec::{self, Body};
use super::request::{Query, ResourceRequest, Verb};
use super::status::ApiError;
use super::{auth, Api};

/// kubelet's default API port.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;
/// The annotation naming the container `kubectl logs` and `exec` use by default.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// How long a kubelet has to accept the connection and finish the TLS handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a kubelet's error body that is kept for the message.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// The TLS client the server reaches kubelets with.
pub struct KubeletClient {
    tls: Arc<rustls::ClientConfig>,
}

/// Accepts any serving certificate: a kubelet signs its own.
#[derive(Debug)]
struct AnyServingCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServingCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    // The handshake's signatures are still checked: the peer holds the key of the
    // certificate it showed.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl KubeletClient {
    /// A client presenting the certificate and key (PEM).
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<KubeletClient, AuthError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            AuthError::Certificate(format!("kubelet client {what}: {e}"))
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| bad("certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad("key", &e))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", &e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServingCert(provider)))
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad("certificate", &e))?;
        // Upgrades need HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient {
            tls: Arc::new(config),
        })
    }

    /// An HTTP/1.1 connection to the kubelet at `host:port`.
    async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, ApiError> {
        let dial_err = |e: &dyn std::fmt::Display| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "",
                format!("error dialing backend: the kubelet at {host}:{port}: {e}"),
            )
        };
        let name = ServerName::try_from(host.to_string()).map_err(|e| dial_err(&e))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let tls = tokio::time::timeout(DIAL_TIMEOUT, async {
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            connector.connect(name, tcp).await
        })
        .await
        .map_err(|_| dial_err(&"timed out"))?
        .map_err(|e| dial_err(&e))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| dial_err(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "kubelet connection");
            }
        });
        Ok(sender)
    }
}

/// What the client sent, as far as the proxy needs it.
pub struct ClientRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a http::Uri,
    pub headers: &'a HeaderMap,
    /// The connection's upgrade, for exec, attach and portforward over HTTP/1.1.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// The query's pairs in order, repeated keys kept (`command`, `ports`).
fn pairs(uri: &http::Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A boolean query parameter as Kubernetes decodes one.
fn flag(q: &Query, k: &str) -> bool {
    match q.get(k) {
        None => false,
        Some(v) => v != "0" && !v.eq_ignore_ascii_case("false"),
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The container a request is about: the one asked for, which the pod must have; else
/// the pod's only container, or the one its default-container annotation names.
pub fn pick_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &pod["spec"];
    let containers = names(&spec["containers"]);
    if let Some(c) = asked {
        let known = containers.iter().any(|n| n == c)
            || names(&spec["initContainers"]).iter().any(|n| n == c)
            || names(&spec["ephemeralContainers"]).iter().any(|n| n == c);
        if !known {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {pod_name}"
            )));
        }
        return Ok(c.to_string());
    }
    if let Some(d) = pod["metadata"]["annotations"][DEFAULT_CONTAINER_ANNOTATION].as_str() {
        if containers.iter().any(|n| n == d) {
            return Ok(d.to_string());
        }
    }
    match containers.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(ApiError::bad_request(format!(
            "the pod {pod_name} does not have any containers"
        ))),
        many => {
            let mut msg = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                many.join(" ")
            );
            let init = names(&spec["initContainers"]);
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// The kubelet's address and port from the Node: InternalIP, else ExternalIP, else
/// Hostname.
pub fn kubelet_address(node: &Value) -> Option<(String, u16)> {
    let addresses = node["status"]["addresses"].as_array()?;
    let host = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|t| {
            addresses
                .iter()
                .find(|a| a["type"] == *t)
                .and_then(|a| a["address"].as_str())
                .filter(|a| !a.is_empty())
        })?
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some((host, port))
}

/// The kubelet path and query for a subresource of the pod.
pub fn kubelet_target(
    sub: &str,
    pod: &Value,
    q: &Query,
    uri: &http::Uri,
) -> Result<String, ApiError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let mut out = form_urlencoded::Serializer::new(String::new());
    let path = match sub {
        "log" => {
            let container = pick_container(pod, q.get("container"))?;
            for k in ["follow", "previous", "timestamps"] {
                if flag(q, k) {
                    out.append_pair(k, "true");
                }
            }
            if q.get("sinceSeconds").is_some() && q.get("sinceTime").is_some() {
                return Err(ApiError::bad_request(
                    "at most one of `sinceTime` or `sinceSeconds` may be specified",
                ));
            }
            for (k, min) in [("tailLines", 0), ("limitBytes", 1), ("sinceSeconds", 1)] {
                if let Some(n) = q.int(k)? {
                    if n < min {
                        return Err(ApiError::bad_request(format!("{k} must be at least {min}")));
                    }
                    out.append_pair(k, &n.to_string());
                }
            }
            if let Some(t) = q.get("sinceTime") {
                out.append_pair("sinceTime", t);
            }
            format!("/containerLogs/{ns}/{name}/{container}")
        }
        "exec" | "attach" => {
            let container = pick_container(pod, q.get("container"))?;
            let phase = pod["status"]["phase"].as_str().unwrap_or_default();
            if matches!(phase, "Succeeded" | "Failed") {
                let what = if sub == "exec" {
                    "exec into"
                } else {
                    "attach to"
                };
                return Err(ApiError::bad_request(format!(
                    "cannot {what} a container in a completed pod; current phase is {phase}"
                )));
            }
            let streams = [
                ("stdin", "input"),
                ("stdout", "output"),
                ("stderr", "error"),
            ];
            if !streams.iter().any(|(k, _)| flag(q, k)) {
                return Err(ApiError::bad_request(
                    "you must specify at least 1 of stdin, stdout, stderr",
                ));
            }
            for (k, kubelet) in streams.iter().chain(&[("tty", "tty")]) {
                if flag(q, k) {
                    out.append_pair(kubelet, "1");
                }
            }
            if sub == "exec" {
                let command: Vec<String> = pairs(uri)
                    .into_iter()
                    .filter(|(k, _)| k == "command")
                    .map(|(_, v)| v)
                    .collect();
                if command.is_empty() {
                    return Err(ApiError::bad_request(
                        "you must specify at least one command for the container",
                    ));
                }
                for c in &command {
                    out.append_pair("command", c);
                }
            }
            format!("/{sub}/{ns}/{name}/{container}")
        }
        _ => {
            for (k, v) in pairs(uri) {
                if k == "ports" {
                    for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        match p.parse::<u16>() {
                            Ok(n) if n > 0 => {
                                out.append_pair("port", p);
                            }
                            _ => {
                                return Err(ApiError::bad_request(format!(
                                    "invalid port {p:?}: a port is 1 to 65535"
                                )))
                            }
                        }
                    }
                }
            }
            format!("/portForward/{ns}/{name}")
        }
    };
    let query = out.finish();
    Ok(if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    })
}

/// Request headers that belong to one hop or to the client's credentials, and are not
/// passed on; `Connection` and `Upgrade` are, since the upgrade is the point.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "authorization",
    "proxy-authorization",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
];

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// A kubelet's refusal as the API's error: its status and its words.
async fn kubelet_error(resp: Response<hyper::body::Incoming>) -> ApiError {
    let code = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_ERROR_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let reason = match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    ApiError::new(code, reason, text)
}

impl Api {
    /// A kubelet's streamed body passed on until it ends, the client goes, or the server
    /// stops (a followed log, like a watch, must not hold the stop up).
    fn until_shutdown(&self, mut body: hyper::body::Incoming) -> Body {
        let mut shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    f = body.frame() => f,
                    _ = tx.closed() => return,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                match frame {
                    Some(Ok(f)) => {
                        if let Ok(data) = f.into_data() {
                            if tx.send(data).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "reading from the kubelet");
                        return;
                    }
                    None => return,
                }
            }
        });
        codec::stream_body(rx)
    }

    /// Serves pods/log, exec, attach or portforward of `pod` through its kubelet.
    pub(super) async fn pod_connect(
        &self,
        r: &ResourceRequest,
        user: &auth::User,
        pod: &Value,
        q: &Query,
        req: ClientRequest<'_>,
    ) -> Result<Response<Body>, ApiError> {
        let sub = r.subresource.as_deref().unwrap_or_default();
        let name = r.name.as_deref().unwrap_or_default();
        let streaming = sub != "log";
        // Opening a stream is a create, whatever the method: a WebSocket upgrade is a
        // GET, and kube-apiserver asks for create on it too.
        if streaming && r.verb == Verb::Get {
            self.authorize(
                user,
                &ResourceRequest {
                    verb: Verb::Create,
                    ..r.clone()
                },
            )?;
        }
        if streaming && !is_upgrade(req.headers) {
            return Err(ApiError::bad_request("Upgrade request required"));
        }
        let node = match pod["spec"]["nodeName"].as_str() {
            Some(n) if !n.is_empty() => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "pod {name} does not have a host assigned"
                )))
            }
        };
        let target = kubelet_target(sub, pod, q, req.uri)?;
        let nodes = self
            .strategy("", "nodes")
            .ok_or_else(|| ApiError::internal("the nodes resource is not served"))?;
        let node_obj = self.get_object(nodes, None, node).await?;
        let (host, port) = kubelet_address(&node_obj).ok_or_else(|| {
            ApiError::unavailable(format!(
                "node {node:?} has no address to reach its kubelet at (status.addresses is empty)"
            ))
        })?;
        let client = self.kubelet_client.as_ref().ok_or_else(|| {
            ApiError::unavailable("this server has no client certificate for kubelets")
        })?;
        let mut sender = client.connect(&host, port).await?;
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut out = Request::builder()
            .method(if streaming {
                req.method.clone()
            } else {
                Method::GET
            })
            .uri(&target);
        if let Some(h) = out.headers_mut() {
            if streaming {
                for (k, v) in req.headers {
                    let k_str = k.as_str();
                    if !NOT_FORWARDED.contains(&k_str) && !k_str.starts_with("impersonate-") {
                        h.append(k, v.clone());
                    }
                }
            }
            if let Ok(v) = HeaderValue::from_str(&authority) {
                h.insert(header::HOST, v);
            }
        }
        let out = out
            .body(Empty::<Bytes>::new())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        tracing::debug!(pod = %name, node = %node, kubelet = %authority, target = %target, "proxying to the kubelet");
        let mut resp = sender.send_request(out).await.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "",
                format!("the kubelet at {authority}: {e}"),
            )
        })?;
        if !streaming {
            if resp.status() != StatusCode::OK {
                return Err(kubelet_error(resp).await);
            }
            let body = self.until_shutdown(resp.into_body());
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(body)
                .map_err(|e| ApiError::internal(e.to_string()));
        }
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // The kubelet's answer (no protocol in common, a container not running)
            // goes to the client as it is, as kube-apiserver's upgrade proxy does.
            let (parts, body) = resp.into_parts();
            return Ok(Response::from_parts(
                parts,
                body.map_err(std::io::Error::other).boxed(),
            ));
        }
        let Some(client_side) = req.upgrade else {
            return Err(ApiError::bad_request(
                "Upgrade request required (upgrades need HTTP/1.1)",
            ));
        };
        let kubelet_side = hyper::upgrade::on(&mut resp);
        let mut answer = Response::new(codec::full(Bytes::new()));
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *answer.headers_mut() = resp.headers().clone();
        let pod_name = name.to_string();
        tokio::spawn(async move {
            let (client, kubelet) = match tokio::try_join!(client_side, kubelet_side) {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(pod = %pod_name, error = %e, "upgrade to the kubelet");
                    return;
                }
            };
            let (mut client, mut kubelet) = (TokioIo::new(client), TokioIo::new(kubelet));
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut kubelet).await {
                tracing::debug!(pod = %pod_name, error = %e, "stream to the kubelet ended");
            }
        });
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], init: &[&str], annotation: Option<&str>) -> Value {
        let c: Vec<Value> = containers.iter().map(|n| json!({"name": n})).collect();
        let i: Vec<Value> = init.iter().map(|n| json!({"name": n})).collect();
        let mut p = json!({
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"nodeName": "w1", "containers": c, "initContainers": i},
            "status": {"phase": "Running"},
        });
        if let Some(a) = annotation {
            p["metadata"]["annotations"] = json!({ DEFAULT_CONTAINER_ANNOTATION: a });
        }
        p
    }

    #[test]
    fn the_container_defaults_as_kube_apiserver_picks_it() {
        assert_eq!(pick_container(&pod(&["a"], &[], None), None).unwrap(), "a");
        assert_eq!(
            pick_container(&pod(&["a", "b"], &[], Some("b")), None).unwrap(),
            "b"
        );
        let e = pick_container(&pod(&["a", "b"], &["init"], None), None).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "a container name must be specified for pod web, choose one of: [a b] or one of the init containers: [init]"
        );
        assert_eq!(
            pick_container(&pod(&["a", "b"], &["init"], None), Some("init")).unwrap(),
            "init"
        );
        let e = pick_container(&pod(&["a"], &[], None), Some("c")).unwrap_err();
        assert_eq!(e.message, "container c is not valid for pod web");
    }

    #[test]
    fn only_those_the_authorizer_allows_reach_a_kubelet() {
        let attrs = |verb: &str, sub: &str| auth::RequestAttributes {
            verb: verb.into(),
            namespace: "prod".into(),
            resource: "pods".into(),
            subresource: sub.into(),
            name: "web".into(),
            api_group: String::new(),
        };
        let admin = auth::User {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into()],
        };
        let node = auth::User {
            name: "system:node:w1".into(),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        };
        let bootstrap = auth::User {
            name: "system:bootstrap:abcdef".into(),
            groups: vec!["system:bootstrappers".into()],
        };
        for (verb, sub) in [
            ("get", "log"),
            ("create", "exec"),
            ("get", "exec"),
            ("create", "portforward"),
            ("create", "attach"),
        ] {
            assert_eq!(
                auth::authorize(&admin, &attrs(verb, sub)),
                auth::Decision::Allow
            );
            for u in [&node, &bootstrap] {
                let auth::Decision::Deny(m) = auth::authorize(u, &attrs(verb, sub)) else {
                    panic!("{} may {verb} pods/{sub}", u.name)
                };
                assert!(
                    m.contains(&format!("cannot {verb} resource \"pods/{sub}\"")),
                    "{m}"
                );
            }
        }
    }

    #[test]
    fn the_kubelet_is_the_nodes_internal_ip_and_kubelet_port() {
        let n = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "w1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10555}},
        }});
        assert_eq!(kubelet_address(&n), Some(("10.0.0.5".into(), 10555)));
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "w1"}]}});
        assert_eq!(kubelet_address(&n), Some(("w1".into(), 10250)));
        assert_eq!(kubelet_address(&json!({"status": {}})), None);
    }

    fn target(sub: &str, p: &Value, query: &str) -> Result<String, ApiError> {
        let uri: http::Uri = format!("/x?{query}").parse().unwrap();
        kubelet_target(sub, p, &Query::parse(uri.query()), &uri)
    }

    #[test]
    fn kubelet_paths_carry_the_options_in_kubelets_words() {
        let p = pod(&["a", "b"], &[], None);
        assert_eq!(
            target(
                "log",
                &p,
                "container=b&follow=true&tailLines=10&timestamps=false"
            )
            .unwrap(),
            "/containerLogs/prod/web/b?follow=true&tailLines=10"
        );
        assert_eq!(
            target(
                "log",
                &p,
                "container=a&sinceTime=2024-05-01T10%3A00%3A00Z&previous=1"
            )
            .unwrap(),
            "/containerLogs/prod/web/a?previous=true&sinceTime=2024-05-01T10%3A00%3A00Z"
        );
        assert_eq!(
            target("log", &p, "container=a&tailLines=-1")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            target(
                "exec",
                &p,
                "container=a&command=sh&command=-c&command=echo+hi&stdin=true&stdout=true&stderr=false&tty=false"
            )
            .unwrap(),
            "/exec/prod/web/a?input=1&output=1&command=sh&command=-c&command=echo+hi"
        );
        assert_eq!(
            target("exec", &p, "container=a&stdout=true")
                .unwrap_err()
                .message,
            "you must specify at least one command for the container"
        );
        assert_eq!(
            target("attach", &p, "container=b&stdin=1&stdout=1&tty=1").unwrap(),
            "/attach/prod/web/b?input=1&output=1&tty=1"
        );
        assert_eq!(
            target("portforward", &p, "ports=80,8080").unwrap(),
            "/portForward/prod/web?port=80&port=8080"
        );
        assert_eq!(
            target("portforward", &p, "").unwrap(),
            "/portForward/prod/web"
        );
        assert_eq!(target("portforward", &p, "ports=0").unwrap_err().code, 400);
        let mut done = p.clone();
        done["status"]["phase"] = json!("Succeeded");
        assert_eq!(
            target("exec", &done, "container=a&command=ls&stdout=1")
                .unwrap_err()
                .message,
            "cannot exec into a container in a completed pod; current phase is Succeeded"
        );
    }
}
