//! An in-process registry for tests: a small HTTP/1.1 server on 127.0.0.1 serving manifests
//! and blobs from memory, with optional basic or bearer-token authentication and injected
//! faults (status codes, truncated or corrupted bodies, stalls). It logs every request so
//! tests can count downloads.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;

use super::archive::sha256_digest;

#[derive(Debug, Clone)]
pub enum AuthMode {
    Basic {
        username: String,
        password: String,
    },
    /// Bearer tokens from `/token`, which wants basic credentials when they are given.
    Bearer {
        credentials: Option<(String, String)>,
        token: String,
    },
    /// Bearer tokens from `POST /token` in exchange for a refresh (identity) token.
    IdentityToken {
        refresh_token: String,
        token: String,
    },
}

/// What to do instead of (or to) the next response for a path.
#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16),
    /// Announce the full length but send only this many bytes, then close.
    Truncate(usize),
    /// Send the headers, then nothing for this long.
    Stall(Duration),
    /// Flip a byte of the body.
    Corrupt,
}

#[derive(Default)]
struct State {
    /// (repository, tag or digest) → (content type, bytes)
    manifests: HashMap<(String, String), (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
    auth: Option<AuthMode>,
    faults: HashMap<String, VecDeque<Fault>>,
    log: Vec<String>,
}

pub struct FakeRegistry {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Serve HTTPS with this PEM certificate chain and key.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Self::start_with(Some(Arc::new(config)))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let st = st.clone();
                        let tls = tls.clone();
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = match tls {
                                Some(cfg) => match rustls::ServerConnection::new(cfg) {
                                    Ok(conn) => {
                                        serve(rustls::StreamOwned::new(conn, stream), &st, addr)
                                    }
                                    Err(_) => Ok(()),
                                },
                                None => serve(stream, &st, addr),
                            };
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeRegistry {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>`, the registry part of references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_auth(&self, mode: AuthMode) {
        self.state.lock().unwrap().auth = Some(mode);
    }

    pub fn put_blob(&self, data: &[u8]) -> String {
        let d = sha256_digest(data);
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(d.clone(), data.to_vec());
        d
    }

    /// Store a manifest under its digest and, if given, a tag.
    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, media: &str, data: &[u8]) -> String {
        let d = sha256_digest(data);
        let mut s = self.state.lock().unwrap();
        s.manifests.insert(
            (repo.to_string(), d.clone()),
            (media.to_string(), data.to_vec()),
        );
        if let Some(t) = tag {
            s.manifests.insert(
                (repo.to_string(), t.to_string()),
                (media.to_string(), data.to_vec()),
            );
        }
        d
    }

    /// Queue a fault for requests whose path (without query) ends with `suffix`.
    pub fn fault(&self, suffix: &str, f: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(suffix.to_string())
            .or_default()
            .push_back(f);
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// How many GETs of blob `digest`.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest}");
        self.log()
            .iter()
            .filter(|l| l.starts_with("GET ") && l.split('?').next().unwrap().ends_with(&needle))
            .count()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn respond(status: u16, body: &[u8]) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_vec(),
    }
}

fn serve<S: Read + Write>(
    mut stream: S,
    state: &Mutex<State>,
    addr: SocketAddr,
) -> std::io::Result<()> {
    // Byte by byte up to the blank line, so nothing past the head is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    let mut content_length = 0usize;
    for h in lines {
        if let Some((k, v)) = h.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                content_length = v.trim().parse().unwrap_or(0);
            }
            headers.insert(k, v.trim().to_string());
        }
    }
    let mut body = vec![0u8; content_length];
    stream.read_exact(&mut body)?;
    let path = target.split('?').next().unwrap_or("").to_string();
    let (resp, fault) = {
        let mut s = state.lock().unwrap();
        s.log.push(format!("{method} {target}"));
        let fault = s
            .faults
            .iter_mut()
            .find(|(k, q)| path.ends_with(k.as_str()) && !q.is_empty())
            .and_then(|(_, q)| q.pop_front());
        let resp = match &fault {
            Some(Fault::Status(code)) => respond(
                *code,
                br#"{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}"#,
            ),
            _ => route(&mut s, &method, &target, &path, &headers, &body, addr),
        };
        (resp, fault)
    };
    write_response(stream, &method, resp, fault)
}

fn route(
    s: &mut State,
    method: &str,
    target: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
    addr: SocketAddr,
) -> Response {
    let b64 =
        |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    let given = headers.get("authorization").cloned().unwrap_or_default();
    if path == "/token" {
        if let Some(AuthMode::Bearer { credentials, token }) = &s.auth {
            if let Some((u, p)) = credentials {
                if given != format!("Basic {}", b64(u, p)) {
                    return respond(
                        401,
                        br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
                    );
                }
            }
            let query_ok = target.contains("scope=") && target.contains("service=fake");
            if !query_ok {
                return respond(400, b"{}");
            }
            return respond(200, format!(r#"{{"token":"{token}"}}"#).as_bytes());
        }
        if let Some(AuthMode::IdentityToken {
            refresh_token,
            token,
        }) = &s.auth
        {
            let form = String::from_utf8_lossy(body);
            let ok = method == "POST"
                && form.contains("grant_type=refresh_token")
                && form.contains(&format!("refresh_token={refresh_token}"))
                && form.contains("service=fake");
            if !ok {
                return respond(401, b"{}");
            }
            return respond(200, format!(r#"{{"access_token":"{token}"}}"#).as_bytes());
        }
        return respond(404, b"{}");
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return respond(404, b"{}");
    };
    match &s.auth {
        Some(AuthMode::Basic { username, password })
            if given != format!("Basic {}", b64(username, password)) =>
        {
            let mut r = respond(
                401,
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
            r.headers
                .push(("WWW-Authenticate".into(), r#"Basic realm="fake""#.into()));
            return r;
        }
        Some(AuthMode::Bearer { token, .. } | AuthMode::IdentityToken { token, .. })
            if given != format!("Bearer {token}") =>
        {
            let repo = rest
                .rsplit_once("/manifests/")
                .or_else(|| rest.rsplit_once("/blobs/"))
                .map(|(r, _)| r)
                .unwrap_or("");
            let mut r = respond(
                401,
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
            r.headers.push((
                "WWW-Authenticate".into(),
                format!(
                    r#"Bearer realm="http://{addr}/token",service="fake",scope="repository:{repo}:pull""#
                ),
            ));
            return r;
        }
        _ => {}
    }
    if rest.is_empty() {
        return respond(200, b"{}");
    }
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        return match s.manifests.get(&(repo.to_string(), reference.to_string())) {
            Some((media, data)) => Response {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), media.clone()),
                    ("Docker-Content-Digest".into(), sha256_digest(data)),
                ],
                body: data.clone(),
            },
            None => respond(
                404,
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
        };
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        return match s.blobs.get(digest) {
            Some(data) => Response {
                status: 200,
                headers: vec![("Content-Type".into(), "application/octet-stream".into())],
                body: data.clone(),
            },
            None => respond(
                404,
                br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#,
            ),
        };
    }
    let _ = method;
    respond(404, b"{}")
}

fn write_response<S: Read + Write>(
    mut stream: S,
    method: &str,
    mut resp: Response,
    fault: Option<Fault>,
) -> std::io::Result<()> {
    if let (Some(Fault::Corrupt), Some(b)) = (&fault, resp.body.first_mut()) {
        *b ^= 0xff;
    }
    let mut head = format!("HTTP/1.1 {} X\r\n", resp.status);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        resp.body.len()
    ));
    stream.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }
    match fault {
        Some(Fault::Truncate(n)) => {
            stream.write_all(&resp.body[..n.min(resp.body.len())])?;
            stream.flush()?;
            // Dropping the stream closes it without the rest: the client sees a short body.
        }
        Some(Fault::Stall(d)) => {
            stream.flush()?;
            std::thread::sleep(d);
        }
        _ => stream.write_all(&resp.body)?,
    }
    stream.flush()
}
