//! httpGet probes and hooks, as kubelet sends them: a GET to `scheme://host:port/path`
//! (host defaults to the pod IP), the action's headers plus `User-Agent: kube-probe/…`
//! and `Accept: */*`, HTTPS without verifying the certificate, redirects followed only
//! to the same host, at most 10 KiB of the body read, all within the timeout.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONNECTION, HOST, LOCATION, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::HTTPGetAction;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::time::Instant;
use url::Url;

use super::{go_quote, resolve_port, tcp, ProbeOutcome, Target, KUBE_MAJOR, KUBE_MINOR};

/// How much of a response body kubelet reads.
pub(super) const MAX_BODY: usize = 10 * 1024;
/// Go's client gives up on the tenth redirect.
const MAX_REDIRECTS: usize = 10;

/// A GET built from an HTTPGetAction, as kubelet's `NewRequestForHTTPGetAction` does.
#[derive(Clone, Debug)]
pub(super) struct GetRequest {
    url: Url,
    headers: HeaderMap,
    /// A `Host` among the action's headers: sent instead of the URL's host.
    host: Option<String>,
    /// Something Go's client refuses when sending (a scheme, a header): the request
    /// fails with this, as a failed request and not as a probe that could not run.
    invalid: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum BuildError {
    /// No `host` in the action and no pod IP to default to.
    NoPodIp,
    /// The port could not be resolved, or the host is no host.
    Invalid(String),
}

/// Why a GET got no answer (Go's `client.Do` error) or its body could not be read.
#[derive(Debug)]
pub(super) enum GetError {
    /// `Get "url": …`: connect, TLS, timeout, too many redirects.
    Request {
        message: String,
        /// The server answered TLS with plain HTTP (hooks retry over HTTP).
        plain_http: bool,
    },
    /// The answer's body could not be read.
    Body(String),
}

/// The status and at most [`MAX_BODY`] bytes of the body.
#[derive(Debug)]
pub(super) struct GetResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl GetRequest {
    /// `purpose` names the user agent: `kube-probe/…` or `kube-lifecycle/…`.
    pub(super) fn new(
        action: &HTTPGetAction,
        target: &Target,
        purpose: &str,
    ) -> Result<Self, BuildError> {
        let port = resolve_port(&action.port, &target.ports).map_err(BuildError::Invalid)?;
        let host = match action.host.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => h.to_owned(),
            None => target.pod_ip.ok_or(BuildError::NoPodIp)?.to_string(),
        };
        let mut invalid = None;
        let scheme = match action.scheme.as_deref().unwrap_or("").to_ascii_lowercase() {
            s if s.is_empty() || s == "http" => "http".to_owned(),
            s if s == "https" => s,
            s => {
                invalid = Some(format!("unsupported protocol scheme {}", go_quote(&s)));
                "http".to_owned()
            }
        };
        let authority = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let mut url = Url::parse(&format!("{scheme}://{authority}/"))
            .map_err(|e| BuildError::Invalid(format!("host {}: {e}", go_quote(&host))))?;
        // The path may carry a query; a fragment is never sent.
        let path = action.path.as_deref().unwrap_or("");
        let path = path.split('#').next().unwrap_or("");
        match path.split_once('?') {
            Some((p, q)) => {
                url.set_path(p);
                url.set_query(Some(q));
            }
            None => url.set_path(path),
        }

        let mut headers = HeaderMap::new();
        let mut host_header = None;
        for h in action.http_headers.iter().flatten() {
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                invalid.get_or_insert(format!(
                    "net/http: invalid header field name {}",
                    go_quote(&h.name)
                ));
                continue;
            };
            let Ok(value) = HeaderValue::from_str(&h.value) else {
                invalid.get_or_insert(format!(
                    "net/http: invalid header field value for {}",
                    go_quote(&h.name)
                ));
                continue;
            };
            if name == HOST {
                host_header.get_or_insert(h.value.clone());
            } else {
                headers.append(name, value);
            }
        }
        match headers.get(USER_AGENT).map(|v| v.is_empty()) {
            None => {
                let agent = format!("kube-{purpose}/{KUBE_MAJOR}.{KUBE_MINOR}");
                if let Ok(agent) = HeaderValue::from_str(&agent) {
                    headers.insert(USER_AGENT, agent);
                }
            }
            // An empty User-Agent means none.
            Some(true) => {
                headers.remove(USER_AGENT);
            }
            Some(false) => {}
        }
        match headers.get(ACCEPT).map(|v| v.is_empty()) {
            None => {
                headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
            }
            // An empty Accept takes the default away.
            Some(true) => {
                headers.remove(ACCEPT);
            }
            Some(false) => {}
        }
        Ok(GetRequest {
            url,
            headers,
            host: host_header.filter(|h| !h.is_empty()),
            invalid,
        })
    }
}

/// An httpGet probe: 200 to 399 succeeds (a 3xx left by a redirect to another host
/// with a warning), anything else fails with the status code.
pub(super) async fn probe(
    action: &HTTPGetAction,
    target: &Target,
    timeout: Duration,
) -> ProbeOutcome {
    let req = match GetRequest::new(action, target, "probe") {
        Ok(r) => r,
        Err(BuildError::NoPodIp) => {
            return ProbeOutcome::Error("the pod has no IP address".to_owned())
        }
        Err(BuildError::Invalid(e)) => return ProbeOutcome::Error(e),
    };
    match get(&req, timeout).await {
        Err(GetError::Request { message, .. }) => ProbeOutcome::Failure(message),
        Err(GetError::Body(e)) => ProbeOutcome::Error(e),
        Ok(resp) => {
            let code = resp.status.as_u16();
            if (300..400).contains(&code) {
                ProbeOutcome::Warning(format!(
                    "Probe terminated redirects, Response body: {}",
                    String::from_utf8_lossy(&resp.body)
                ))
            } else if (200..300).contains(&code) {
                ProbeOutcome::Success
            } else {
                // As kubelet, never the body: it may hold what the user should not see.
                ProbeOutcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
    }
}

/// An httpGet hook: any answer will do, whatever its status (as kubelet); an HTTPS
/// hook answered in plain HTTP is tried again over HTTP, without Authorization.
pub(super) async fn hook(
    action: &HTTPGetAction,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let req = GetRequest::new(action, target, "lifecycle").map_err(|e| match e {
        BuildError::NoPodIp => {
            "failed to find networking container: the pod has no IP address".to_owned()
        }
        BuildError::Invalid(e) => e,
    })?;
    match get(&req, timeout).await {
        Ok(_) | Err(GetError::Body(_)) => Ok(()),
        Err(GetError::Request {
            message,
            plain_http: true,
        }) => {
            let mut plain = req.clone();
            let port = plain.url.port_or_known_default();
            if plain.url.set_scheme("http").is_err() || plain.url.set_port(port).is_err() {
                return Err(message);
            }
            plain.headers.remove(AUTHORIZATION);
            match get(&plain, deadline.saturating_duration_since(Instant::now())).await {
                Ok(_) | Err(GetError::Body(_)) => {
                    tracing::warn!(
                        host = plain.url.host_str().unwrap_or(""),
                        "request to HTTPS lifecycle hook got HTTP response, retry with HTTP succeeded"
                    );
                    Ok(())
                }
                Err(_) => Err(message),
            }
        }
        Err(GetError::Request { message, .. }) => Err(message),
    }
}

/// Sends the GET, follows redirects to the same host, and reads the body, all
/// within `timeout` (Go's `Client.Timeout`).
pub(super) async fn get(req: &GetRequest, timeout: Duration) -> Result<GetResponse, GetError> {
    let deadline = Instant::now() + timeout;
    let failed = |url: &Url, message: String, plain_http: bool| GetError::Request {
        message: format!("Get {}: {message}", go_quote(url.as_str())),
        plain_http,
    };
    if let Some(e) = &req.invalid {
        return Err(failed(&req.url, e.clone(), false));
    }
    let mut url = req.url.clone();
    let mut host = req.host.clone();
    let mut followed = 0;
    loop {
        let (parts, body, conn) = match tokio::time::timeout_at(
            deadline,
            send(&url, &req.headers, host.as_deref()),
        )
        .await
        {
            Err(_) => {
                let m =
                    "context deadline exceeded (Client.Timeout exceeded while awaiting headers)";
                return Err(failed(&url, m.to_owned(), false));
            }
            Ok(Err(e)) => return Err(failed(&url, e.message, e.plain_http)),
            Ok(Ok(r)) => r,
        };
        if let Some(location) = redirect_location(&parts) {
            let next = url.join(location).map_err(|e| {
                failed(
                    &url,
                    format!(
                        "failed to parse Location header {}: {e}",
                        go_quote(location)
                    ),
                    false,
                )
            })?;
            // Only to the host first asked; elsewhere the redirect itself is the answer.
            if next.host() == req.url.host() {
                followed += 1;
                if followed >= MAX_REDIRECTS {
                    return Err(failed(
                        &next,
                        "stopped after 10 redirects".to_owned(),
                        false,
                    ));
                }
                // A Host header given by the action goes on only with a relative Location.
                if Url::parse(location).is_ok() {
                    host = None;
                }
                url = next;
                drop((body, conn));
                continue;
            }
        }
        let body = match tokio::time::timeout_at(deadline, read_limited(body, MAX_BODY)).await {
            Err(_) => {
                return Err(GetError::Body(
                    "context deadline exceeded (Client.Timeout or context cancellation while reading body)".to_owned(),
                ))
            }
            Ok(Err(e)) => return Err(GetError::Body(error_text(&e))),
            Ok(Ok(b)) => b,
        };
        drop(conn);
        return Ok(GetResponse {
            status: parts.status,
            body,
        });
    }
}

/// The Location of a redirect Go's client would follow.
fn redirect_location(parts: &http::response::Parts) -> Option<&str> {
    matches!(parts.status.as_u16(), 301 | 302 | 303 | 307 | 308)
        .then(|| parts.headers.get(LOCATION)?.to_str().ok())
        .flatten()
}

struct SendError {
    message: String,
    plain_http: bool,
}

impl From<String> for SendError {
    fn from(message: String) -> Self {
        SendError {
            message,
            plain_http: false,
        }
    }
}

/// The connection task of one exchange, ended when the exchange is done with.
struct Conn(tokio::task::JoinHandle<()>);

impl Drop for Conn {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One GET on a connection of its own (kubelet disables keep-alive for probes).
async fn send(
    url: &Url,
    headers: &HeaderMap,
    host: Option<&str>,
) -> Result<(http::response::Parts, Incoming, Conn), SendError> {
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(format!("unsupported protocol scheme {}", go_quote(other)).into()),
    };
    let url_host = url
        .host_str()
        .ok_or_else(|| "no Host in request URL".to_owned())?;
    let port = url.port_or_known_default().unwrap_or(80);
    let authority = match url.port() {
        Some(p) => format!("{url_host}:{p}"),
        None => url_host.to_owned(),
    };
    let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(target)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    *request.headers_mut() = headers.clone();
    let host_value =
        HeaderValue::from_str(host.unwrap_or(&authority)).map_err(|e| e.to_string())?;
    request.headers_mut().insert(HOST, host_value);
    request
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));

    let stream = tcp::dial(url_host, port, None).await?;
    if !tls {
        return exchange(TokioIo::new(stream), request).await;
    }
    let bare = url_host.trim_start_matches('[').trim_end_matches(']');
    let name = match bare.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(bare.to_owned()).map_err(|e| e.to_string())?,
    };
    let connector = tokio_rustls::TlsConnector::from(tls_config()?);
    let stream = connector.connect(name, stream).await.map_err(|e| {
        let plain_http = matches!(
            e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))
        );
        SendError {
            message: if plain_http {
                "http: server gave HTTP response to HTTPS client".to_owned()
            } else {
                error_text(&e)
            },
            plain_http,
        }
    })?;
    exchange(TokioIo::new(stream), request).await
}

async fn exchange<I>(
    io: I,
    request: Request<Empty<Bytes>>,
) -> Result<(http::response::Parts, Incoming, Conn), SendError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| error_text(&e))?;
    let conn = Conn(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender.send_request(request).await.map_err(|e| {
        if e.is_incomplete_message() {
            "EOF".to_owned()
        } else {
            error_text(&e)
        }
    })?;
    let (parts, body) = response.into_parts();
    Ok((parts, body, conn))
}

/// At most `limit` bytes of the body; the rest is left unread (kubelet's truncation is
/// not an error).
async fn read_limited(mut body: Incoming, limit: usize) -> Result<Bytes, hyper::Error> {
    let mut buf = BytesMut::new();
    while buf.len() < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame?.into_data() {
            let take = data.len().min(limit - buf.len());
            buf.extend_from_slice(&data[..take]);
        }
    }
    Ok(buf.freeze())
}

/// An error and its sources, joined as Go's wrapped errors print.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// TLS that checks the handshake but not the certificate, as kubelet's probes do
/// (`InsecureSkipVerify`): a pod's certificate rarely names its IP.
fn tls_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS client: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
