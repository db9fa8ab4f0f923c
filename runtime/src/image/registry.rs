//! A client of the OCI distribution API for one repository: manifest and blob GETs over the
//! endpoints hosts.toml gives (mirrors in order, the upstream last), bearer-token and basic
//! authentication from the `WWW-Authenticate` challenge, retries with back-off for 5xx and
//! connection errors, and a stall timeout (no bytes for that long fails the request).
//!
//! Authentication, per endpoint:
//! ```text
//! request ──401 + WWW-Authenticate──▶ Bearer: GET realm?service&scope (basic creds if any)
//!    ▲                                        or POST refresh_token (identity token)
//!    └──── retry with Authorization ◀──────── Basic: base64(user:password)
//! ```
//! The header obtained is kept for the endpoint and sent up front on later requests.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;

use super::hosts::{Auth, Credentials, Endpoint};
use super::ImageError;

/// Manifest types podrun can pull, most preferred first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// JSON documents (manifests, indexes, configs, tokens) larger than this are refused.
pub const MAX_DOCUMENT: u64 = 16 << 20;
const USER_AGENT: &str = concat!("podrun/", env!("CARGO_PKG_VERSION"));

/// How hard to try.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Further attempts after the first, for 5xx, 429 and connection errors.
    pub retries: u32,
    /// Delay before the first retry, doubled for each further one.
    pub backoff: Duration,
    /// A request that receives no byte for this long fails.
    pub stall_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            backoff: Duration::from_millis(500),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

struct Connection {
    ep: Endpoint,
    agent: ureq::Agent,
    /// Credentials for this endpoint, if any.
    auth: Option<Auth>,
    /// The Authorization header earned by the last challenge.
    authorization: Mutex<Option<String>>,
}

/// A fetched manifest or index.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    /// `Docker-Content-Digest`, when the registry sent it.
    pub digest_header: Option<String>,
    /// Which endpoint answered.
    pub api: String,
}

/// The distribution API for one repository of one registry.
pub struct RegistryClient {
    registry: String,
    repository: String,
    conns: Vec<Connection>,
    policy: RetryPolicy,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("registry", &self.registry)
            .field("repository", &self.repository)
            .field(
                "endpoints",
                &self.conns.iter().map(|c| &c.ep.api).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn is_stall(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// An io::Error somewhere in a ureq error's source chain.
fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// Turn a ureq transport failure into the error podrun reports, and say whether to retry.
fn transport_error(url: &str, t: &ureq::Transport, stall: Duration) -> (ImageError, bool) {
    if let Some(io) = io_source(t) {
        if is_stall(io) {
            return (
                ImageError::Stalled {
                    url: url.to_string(),
                    seconds: stall.as_secs_f64(),
                },
                true,
            );
        }
    }
    let retry = !matches!(
        t.kind(),
        ureq::ErrorKind::Dns | ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme
    );
    // ureq's own Display repeats the URL, which the error already names.
    let mut detail = t.kind().to_string();
    if let Some(m) = t.message() {
        detail.push_str(&format!(": {m}"));
    }
    if let Some(io) = io_source(t) {
        detail.push_str(&format!(": {io}"));
    }
    let reason = match t.kind() {
        ureq::ErrorKind::Dns => format!("unknown host ({detail})"),
        _ => detail,
    };
    (
        ImageError::RegistryConnect {
            url: url.to_string(),
            reason,
        },
        retry,
    )
}

/// `MANIFEST_UNKNOWN: manifest unknown` from a distribution error body, if there is one.
fn error_detail(resp: ureq::Response) -> String {
    let mut body = Vec::new();
    let _ = resp.into_reader().take(8192).read_to_end(&mut body);
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|x| format!("{}: {}", x.code, x.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(&body)
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect(),
    }
}

/// A parsed `WWW-Authenticate` header: the scheme and its parameters.
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `Bearer realm="https://auth/token",service="reg",scope="repository:a/b:pull"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            params.push((key, String::new()));
            continue;
        }
        chars.next();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        params.push((key, value));
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

/// A rustls verifier that accepts any certificate: `skip_verify = true` in hosts.toml.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The system CA bundle, as containerd starts from the system pool before adding `ca` files.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn tls_config(ep: &Endpoint) -> Result<Arc<rustls::ClientConfig>, ImageError> {
    use rustls_pki_types::pem::PemObject;
    let tls_err = |reason: String| ImageError::Tls {
        endpoint: ep.api.clone(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    if ep.skip_verify {
        return Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(certs) = rustls_pki_types::CertificateDer::pem_file_iter(SYSTEM_CA_BUNDLE) {
        roots.add_parsable_certificates(certs.flatten());
    }
    for ca in &ep.ca {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca)
            .map_err(|e| tls_err(format!("read CA file {}: {e}", ca.display())))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(format!("parse CA file {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(tls_err(format!(
                "CA file {} holds no certificate",
                ca.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| tls_err(format!("CA file {}: {e}", ca.display())))?;
        }
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

fn basic_header(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    )
}

impl RegistryClient {
    /// A client for `registry/repository` over `endpoints`. `auth` (from CRI's AuthConfig or
    /// the command line) is for the upstream registry only, so mirrors never see it; every
    /// endpoint may also have credentials in `creds` (config.json).
    pub fn new(
        registry: &str,
        repository: &str,
        endpoints: Vec<Endpoint>,
        auth: Option<Auth>,
        creds: &Credentials,
        policy: RetryPolicy,
    ) -> Result<Self, ImageError> {
        let mut conns = Vec::new();
        for ep in endpoints {
            let mut builder = ureq::AgentBuilder::new()
                .timeout_connect(
                    Duration::from_secs(30).min(policy.stall_timeout.max(Duration::from_secs(1))),
                )
                .timeout_read(policy.stall_timeout)
                .timeout_write(policy.stall_timeout)
                .user_agent(USER_AGENT)
                .redirects(5);
            if ep.is_https() {
                builder = builder.tls_config(tls_config(&ep)?);
            }
            let ep_auth = if ep.upstream {
                auth.clone()
                    .or_else(|| creds.get(registry).cloned())
                    .or_else(|| creds.get(&ep.host).cloned())
            } else {
                creds.get(&ep.host).cloned()
            };
            let preset = match &ep_auth {
                Some(Auth::RegistryToken(t)) => Some(format!("Bearer {t}")),
                _ => None,
            };
            conns.push(Connection {
                ep,
                agent: builder.build(),
                auth: ep_auth,
                authorization: Mutex::new(preset),
            });
        }
        Ok(RegistryClient {
            registry: registry.to_string(),
            repository: repository.to_string(),
            conns,
            policy,
        })
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.conns.iter().map(|c| &c.ep)
    }

    fn url(&self, conn: &Connection, path: &str) -> String {
        let mut url = format!("{}/{}/{path}", conn.ep.api, self.repository);
        if !conn.ep.upstream {
            // Tells a mirror serving several registries which one is meant, as containerd does.
            url.push_str(&format!("?ns={}", self.registry));
        }
        url
    }

    /// Sleep before retry `attempt` (1-based).
    fn backoff(&self, attempt: u32) {
        let factor = 1u32 << (attempt - 1).min(10);
        std::thread::sleep(self.policy.backoff.saturating_mul(factor));
    }

    /// Answer an authentication challenge: the Authorization header to retry with.
    fn authorize(&self, conn: &Connection, challenge: &str) -> Result<String, ImageError> {
        let parsed = parse_challenge(challenge).ok_or_else(|| ImageError::RegistryAuth {
            url: conn.ep.api.clone(),
            reason: format!("unparsable WWW-Authenticate header {challenge:?}"),
        })?;
        if parsed.scheme.eq_ignore_ascii_case("basic") {
            return match &conn.auth {
                Some(Auth::Basic { username, password }) => Ok(basic_header(username, password)),
                _ => Err(ImageError::RegistryAuth {
                    url: conn.ep.api.clone(),
                    reason: "the registry asks for a username and password and none is configured"
                        .into(),
                }),
            };
        }
        if !parsed.scheme.eq_ignore_ascii_case("bearer") {
            return Err(ImageError::RegistryAuth {
                url: conn.ep.api.clone(),
                reason: format!("unsupported authentication scheme {}", parsed.scheme),
            });
        }
        let realm = parsed
            .param("realm")
            .ok_or_else(|| ImageError::RegistryAuth {
                url: conn.ep.api.clone(),
                reason: "bearer challenge without realm".into(),
            })?;
        let default_scope = format!("repository:{}:pull", self.repository);
        let scope = parsed.param("scope").unwrap_or(&default_scope);
        let service = parsed.param("service");
        let auth_err = |reason: String| ImageError::RegistryAuth {
            url: realm.to_string(),
            reason,
        };
        let result = match &conn.auth {
            Some(Auth::IdentityToken(refresh)) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("client_id", "podrun"),
                    ("scope", scope),
                ];
                if let Some(s) = service {
                    form.push(("service", s));
                }
                conn.agent.post(realm).send_form(&form)
            }
            other => {
                let mut req = conn.agent.get(realm).query("scope", scope);
                if let Some(s) = service {
                    req = req.query("service", s);
                }
                if let Some(Auth::Basic { username, password }) = other {
                    req = req.set("Authorization", &basic_header(username, password));
                }
                req.call()
            }
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let detail = error_detail(r);
                return Err(auth_err(format!(
                    "token request failed: HTTP {code} {detail}"
                )));
            }
            Err(ureq::Error::Transport(t)) => return Err(auth_err(t.to_string())),
        };
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_DOCUMENT)
            .read_to_end(&mut body)
            .map_err(|e| auth_err(format!("read token: {e}")))?;
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| auth_err(format!("token response is not JSON: {e}")))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_err("token response holds no token".into()))?;
        Ok(format!("Bearer {token}"))
    }

    /// GET `path` on one endpoint, authenticating and retrying as needed.
    fn get(
        &self,
        conn: &Connection,
        path: &str,
        accept: Option<&str>,
        head: bool,
    ) -> Result<ureq::Response, ImageError> {
        let url = self.url(conn, path);
        let mut attempt = 0u32;
        let mut challenged = false;
        loop {
            let mut req = if head {
                conn.agent.head(&url)
            } else {
                conn.agent.get(&url)
            };
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            let authz = conn.authorization.lock().unwrap().clone();
            if let Some(h) = &authz {
                req = req.set("Authorization", h);
            }
            let (err, retry) = match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if !challenged => {
                    challenged = true;
                    let Some(challenge) = resp.header("WWW-Authenticate").map(str::to_string)
                    else {
                        return Err(ImageError::RegistryHttp {
                            url,
                            status: 401,
                            detail: "unauthorized, and no WWW-Authenticate challenge".into(),
                        });
                    };
                    let header = self.authorize(conn, &challenge)?;
                    *conn.authorization.lock().unwrap() = Some(header);
                    continue;
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let retry = code >= 500 || code == 429;
                    let mut detail = if head {
                        String::new()
                    } else {
                        error_detail(resp)
                    };
                    if code == 401 || code == 403 {
                        let hint = if conn.auth.is_some() {
                            "credentials rejected"
                        } else {
                            "no credentials configured"
                        };
                        detail = if detail.is_empty() {
                            hint.to_string()
                        } else {
                            format!("{detail} ({hint})")
                        };
                    }
                    (
                        ImageError::RegistryHttp {
                            url: url.clone(),
                            status: code,
                            detail,
                        },
                        retry,
                    )
                }
                Err(ureq::Error::Transport(t)) => {
                    transport_error(&url, &t, self.policy.stall_timeout)
                }
            };
            if !retry || attempt >= self.policy.retries {
                return Err(err);
            }
            attempt += 1;
            tracing::debug!(url = %url, attempt, error = %err, "retrying registry request");
            self.backoff(attempt);
        }
    }

    /// Fetch a manifest or index by tag or digest from the first endpoint that may resolve
    /// it (tags) or pull it (digests) and answers; the last failure if none does.
    pub fn manifest(&self, reference: &str) -> Result<Fetched, ImageError> {
        let by_digest = reference.contains(':');
        let mut last = None;
        for conn in &self.conns {
            let allowed = if by_digest {
                conn.ep.pull
            } else {
                conn.ep.resolve
            };
            if !allowed {
                continue;
            }
            let result = self
                .get(
                    conn,
                    &format!("manifests/{reference}"),
                    Some(MANIFEST_ACCEPT),
                    false,
                )
                .and_then(|resp| {
                    let content_type = resp
                        .header("Content-Type")
                        .map(|c| c.split(';').next().unwrap_or(c).trim().to_string());
                    let digest_header = resp.header("Docker-Content-Digest").map(str::to_string);
                    let url = self.url(conn, &format!("manifests/{reference}"));
                    let bytes = read_document(resp, &url, self.policy.stall_timeout)?;
                    Ok(Fetched {
                        bytes,
                        content_type,
                        digest_header,
                        api: conn.ep.api.clone(),
                    })
                });
            match result {
                Ok(f) => return Ok(f),
                Err(e) => {
                    if !conn.ep.upstream {
                        tracing::info!(mirror = %conn.ep.api, error = %e, "mirror failed, trying the next endpoint");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ImageError::RegistryConnect {
            url: format!("{}/{}", self.registry, self.repository),
            reason: "no endpoint in hosts.toml may resolve or pull".into(),
        }))
    }

    /// Open a blob for reading from the first endpoint that serves it.
    /// Returns the body and the URL it came from.
    pub fn open_blob(
        &self,
        digest: &str,
    ) -> Result<(Box<dyn Read + Send + Sync>, String), ImageError> {
        let mut last = None;
        for conn in self.conns.iter().filter(|c| c.ep.pull) {
            let path = format!("blobs/{digest}");
            match self.get(conn, &path, None, false) {
                Ok(resp) => return Ok((resp.into_reader(), self.url(conn, &path))),
                Err(e) => {
                    if !conn.ep.upstream {
                        tracing::info!(mirror = %conn.ep.api, digest, error = %e, "mirror failed, trying the next endpoint");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ImageError::RegistryConnect {
            url: format!("{}/{}", self.registry, self.repository),
            reason: "no endpoint in hosts.toml may pull".into(),
        }))
    }

    /// A small blob (an image config) in memory.
    pub fn blob_bytes(&self, digest: &str, size: u64) -> Result<Vec<u8>, ImageError> {
        if size > MAX_DOCUMENT {
            return Err(ImageError::RegistryRead {
                url: digest.to_string(),
                received: 0,
                reason: format!("document of {size} bytes is too large"),
            });
        }
        let mut attempt = 0;
        loop {
            let (reader, url) = self.open_blob(digest)?;
            let mut buf = Vec::with_capacity(size as usize);
            match reader.take(size + 1).read_to_end(&mut buf) {
                Ok(_) => return Ok(buf),
                Err(e) => {
                    let err = read_error(&url, buf.len() as u64, &e, self.policy.stall_timeout);
                    if attempt >= self.policy.retries {
                        return Err(err);
                    }
                    attempt += 1;
                    self.backoff(attempt);
                }
            }
        }
    }

    /// Sleep for retry `attempt` of a body read, exposed for the blob download loop.
    pub fn wait_before_retry(&self, attempt: u32) {
        self.backoff(attempt.max(1));
    }
}

/// The error for a body read that failed after `received` bytes.
pub fn read_error(url: &str, received: u64, e: &io::Error, stall: Duration) -> ImageError {
    if is_stall(e) {
        ImageError::Stalled {
            url: url.to_string(),
            seconds: stall.as_secs_f64(),
        }
    } else {
        ImageError::RegistryRead {
            url: url.to_string(),
            received,
            reason: e.to_string(),
        }
    }
}

fn read_document(resp: ureq::Response, url: &str, stall: Duration) -> Result<Vec<u8>, ImageError> {
    let mut buf = Vec::new();
    resp.into_reader()
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut buf)
        .map_err(|e| read_error(url, buf.len() as u64, &e, stall))?;
    if buf.len() as u64 > MAX_DOCUMENT {
        return Err(ImageError::RegistryRead {
            url: url.to_string(),
            received: buf.len() as u64,
            reason: "document is too large".into(),
        });
    }
    Ok(buf)
}
