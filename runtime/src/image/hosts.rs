//! Where a registry's content is fetched from and with which credentials: containerd's
//! `certs.d/<host>/hosts.toml` layout (mirrors tried in order, the upstream last) and
//! Docker's `config.json` `auths`.
//!
//! ```toml
//! server = "https://registry-1.docker.io"     # the upstream; optional
//! [host."http://127.0.0.1:5000"]              # a mirror, tried before the upstream
//!   capabilities = ["pull", "resolve"]         # resolve = may answer tag lookups
//!   skip_verify = false
//!   ca = "/etc/podrun/certs.d/mirror.pem"      # or a list of files
//!   override_path = false                      # true: the URL path already ends in /v2
//! ```
//! Without a hosts.toml the upstream is `https://<host>`, except on loopback where Docker
//! and containerd both speak plain HTTP, and `docker.io` whose API lives at
//! `registry-1.docker.io`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::ImageError;

/// Credentials for a registry, as CRI's `AuthConfig` and Docker's config.json carry them.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    Basic {
        username: String,
        password: String,
    },
    /// A refresh token exchanged at the token endpoint (`identitytoken` in config.json).
    IdentityToken(String),
    /// A bearer token sent as is.
    RegistryToken(String),
}

impl std::fmt::Debug for Auth {
    // Secrets stay out of logs and error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Auth::IdentityToken(_) => write!(f, "IdentityToken(***)"),
            Auth::RegistryToken(_) => write!(f, "RegistryToken(***)"),
        }
    }
}

/// One place to fetch a registry's content from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Scheme, host and API path: `https://registry-1.docker.io/v2`.
    pub api: String,
    /// `host[:port]` of the URL, the key credentials are looked up by.
    pub host: String,
    pub pull: bool,
    pub resolve: bool,
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
    /// The upstream registry itself, as opposed to a mirror.
    pub upstream: bool,
}

impl Endpoint {
    pub fn is_https(&self) -> bool {
        self.api.starts_with("https://")
    }
}

fn hosts_err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::HostsConfig {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// True for `localhost`, 127.0.0.0/8 and ::1, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map(|(h, _)| h).unwrap_or(rest)
    } else {
        host.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map(|(h, _)| h)
            .unwrap_or(host)
    };
    bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The upstream when no hosts.toml names a server.
fn default_server(registry: &str) -> String {
    if registry == super::reference::DEFAULT_REGISTRY {
        "https://registry-1.docker.io".to_string()
    } else if is_loopback(registry) {
        format!("http://{registry}")
    } else {
        format!("https://{registry}")
    }
}

/// Split `scheme://host[:port][/path]` and build the API base.
fn endpoint_from_url(
    url: &str,
    override_path: bool,
    path: &Path,
) -> Result<(String, String), ImageError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| hosts_err(path, format!("{url:?} has no http:// or https:// scheme")))?;
    if scheme != "http" && scheme != "https" {
        return Err(hosts_err(
            path,
            format!("{url:?}: unsupported scheme {scheme}"),
        ));
    }
    let (host, url_path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(hosts_err(path, format!("{url:?} has no host")));
    }
    let api_path = if override_path || url_path.ends_with("/v2") {
        url_path.to_string()
    } else {
        format!("{url_path}/v2")
    };
    Ok((format!("{scheme}://{host}{api_path}"), host.to_string()))
}

fn string_list(
    v: Option<&toml::Value>,
    what: &str,
    path: &Path,
) -> Result<Vec<String>, ImageError> {
    match v {
        None => Ok(Vec::new()),
        Some(toml::Value::String(s)) => Ok(vec![s.clone()]),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| hosts_err(path, format!("{what} must be a list of strings")))
            })
            .collect(),
        Some(_) => Err(hosts_err(
            path,
            format!("{what} must be a string or a list"),
        )),
    }
}

/// The `*.crt` files in a certs.d host directory: extra CAs for the upstream, as Docker reads them.
fn dir_cas(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("crt"))
        .collect();
    out.sort();
    out
}

/// The endpoints for `registry`, mirrors first and the upstream last, read from
/// `<hosts_dir>/<registry>/hosts.toml` (or `<hosts_dir>/_default/hosts.toml`).
pub fn endpoints(hosts_dir: &Path, registry: &str) -> Result<Vec<Endpoint>, ImageError> {
    let mut dir = hosts_dir.join(registry);
    if !dir.is_dir() {
        dir = hosts_dir.join("_default");
    }
    let file = dir.join("hosts.toml");
    let mut upstream_url = default_server(registry);
    let mut upstream_skip = false;
    let mut upstream_ca = dir_cas(&dir);
    let mut out = Vec::new();
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| hosts_err(&file, e.message().to_string()))?;
            if let Some(s) = table.get("server") {
                upstream_url = s
                    .as_str()
                    .ok_or_else(|| hosts_err(&file, "server must be a string"))?
                    .to_string();
            }
            if let Some(v) = table.get("skip_verify") {
                upstream_skip = v.as_bool().unwrap_or(false);
            }
            upstream_ca.extend(
                string_list(table.get("ca"), "ca", &file)?
                    .into_iter()
                    .map(|c| resolve_path(&dir, &c)),
            );
            let hosts = match table.get("host") {
                None => None,
                Some(toml::Value::Table(t)) => Some(t),
                Some(_) => return Err(hosts_err(&file, "host must be a table")),
            };
            for (url, h) in hosts.into_iter().flatten() {
                let h = h
                    .as_table()
                    .ok_or_else(|| hosts_err(&file, format!("host.{url:?} must be a table")))?;
                let caps = match h.get("capabilities") {
                    None => vec!["pull".to_string(), "resolve".to_string()],
                    v => string_list(v, "capabilities", &file)?,
                };
                let override_path = h
                    .get("override_path")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                let (api, host) = endpoint_from_url(url, override_path, &file)?;
                out.push(Endpoint {
                    api,
                    host,
                    pull: caps.iter().any(|c| c == "pull"),
                    resolve: caps.iter().any(|c| c == "resolve"),
                    skip_verify: h
                        .get("skip_verify")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false),
                    ca: string_list(h.get("ca"), "ca", &file)?
                        .into_iter()
                        .map(|c| resolve_path(&dir, &c))
                        .collect(),
                    upstream: false,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(hosts_err(&file, e.to_string())),
    }
    let (api, host) = endpoint_from_url(&upstream_url, false, &file)?;
    // A server entry may repeat one of the hosts: keep it once, as the upstream.
    out.retain(|e| e.api != api);
    out.push(Endpoint {
        api,
        host,
        pull: true,
        resolve: true,
        skip_verify: upstream_skip,
        ca: upstream_ca,
        upstream: true,
    });
    Ok(out)
}

fn resolve_path(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuthEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/path` → `host:5000`.
fn normalize_auth_key(key: &str) -> String {
    let rest = key.split_once("://").map(|(_, r)| r).unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            super::reference::DEFAULT_REGISTRY.to_string()
        }
        h => h.to_string(),
    }
}

/// Credentials from Docker's config.json, by registry host.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    by_host: HashMap<String, Auth>,
}

impl Credentials {
    /// The file at `path`, or `$DOCKER_CONFIG/config.json`, or `~/.docker/config.json`.
    /// A default file that does not exist gives no credentials; an explicit one must exist.
    pub fn load(path: Option<&Path>) -> Result<Self, ImageError> {
        let explicit = path.is_some();
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os("DOCKER_CONFIG") {
                Some(d) => PathBuf::from(d).join("config.json"),
                None => match std::env::var_os("HOME") {
                    Some(h) => PathBuf::from(h).join(".docker/config.json"),
                    None => return Ok(Self::default()),
                },
            },
        };
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(e) => {
                return Err(ImageError::AuthConfig {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        Self::parse(&data).map_err(|reason| ImageError::AuthConfig { path, reason })
    }

    pub fn parse(data: &[u8]) -> Result<Self, String> {
        let cfg: DockerConfig = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        let mut by_host = HashMap::new();
        for (key, entry) in cfg.auths {
            let auth = if let Some(t) = entry.registrytoken.filter(|t| !t.is_empty()) {
                Auth::RegistryToken(t)
            } else if let Some(t) = entry.identitytoken.filter(|t| !t.is_empty()) {
                Auth::IdentityToken(t)
            } else if let Some(b64) = entry.auth.filter(|a| !a.is_empty()) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| format!("auths.{key:?}.auth: {e}"))?;
                let text = String::from_utf8(raw)
                    .map_err(|_| format!("auths.{key:?}.auth is not UTF-8"))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key:?}.auth is not base64(user:password)"))?;
                Auth::Basic {
                    username: u.to_string(),
                    password: p.to_string(),
                }
            } else if let (Some(u), Some(p)) = (entry.username, entry.password) {
                Auth::Basic {
                    username: u,
                    password: p,
                }
            } else {
                continue;
            };
            by_host.insert(normalize_auth_key(&key), auth);
        }
        Ok(Credentials { by_host })
    }

    pub fn get(&self, host: &str) -> Option<&Auth> {
        self.by_host.get(&normalize_auth_key(host))
    }

    pub fn insert(&mut self, host: &str, auth: Auth) {
        self.by_host.insert(normalize_auth_key(host), auth);
    }
}
