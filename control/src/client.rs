//! A small client of the Kubernetes API for podrun's own commands: the server and
//! credentials of a kubeconfig, HTTPS with the cluster CA, and JSON requests, one
//! HTTP/1.1 connection each.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use crate::api::auth::kubeconfig;

/// The longest a request may take, connection and TLS included.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response body read.
const MAX_RESPONSE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig cannot be read or lacks what a client needs.
    #[error("{0}")]
    Kubeconfig(String),
    /// No answer: connecting, TLS, or HTTP failed.
    #[error("{kubeconfig}: {method} {url}: {message}")]
    Transport {
        kubeconfig: PathBuf,
        method: Method,
        url: String,
        message: String,
    },
    /// The server answered with an error status.
    #[error("{kubeconfig}: {method} {url}: {} {reason}: {message}", .code.as_u16())]
    Status {
        kubeconfig: PathBuf,
        method: Method,
        url: String,
        code: StatusCode,
        /// The Status reason (NotFound, Forbidden, ...), or the HTTP reason phrase.
        reason: String,
        message: String,
    },
}

impl ClientError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A client of one API server, as a kubeconfig's current context names it.
#[derive(Clone)]
pub struct ApiClient {
    kubeconfig: PathBuf,
    /// `https://host:port` and any path prefix, without a trailing slash.
    server: String,
    authority: String,
    /// The server URL's path, prepended to every request's.
    prefix: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    /// A bearer token, sent when the kubeconfig's user has no client certificate.
    token: Option<String>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("kubeconfig", &self.kubeconfig)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client for the current context of the kubeconfig at `path`.
    pub fn from_kubeconfig(path: &Path) -> Result<ApiClient, ClientError> {
        let config = kubeconfig::read(path).map_err(|e| ClientError::Kubeconfig(e.to_string()))?;
        ApiClient::new(path, config)
    }

    /// A client of a kubeconfig already read; `path` names it in errors.
    pub fn new(path: &Path, config: kubeconfig::ClientConfig) -> Result<ApiClient, ClientError> {
        let bad = |m: String| ClientError::Kubeconfig(format!("{}: {m}", path.display()));
        let uri: Uri = config
            .server
            .parse()
            .map_err(|e| bad(format!("server {:?}: {e}", config.server)))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad(format!("server {:?} is not https://", config.server)));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad(format!("server {:?} has no host", config.server)))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(443);
        let name = config
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| bad(format!("TLS server name {name:?}: {e}")))?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&config.ca_pem) {
            let c = c.map_err(|e| bad(format!("certificate authority: {e}")))?;
            roots
                .add(c)
                .map_err(|e| bad(format!("certificate authority: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("the certificate authority holds no certificate".into()));
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS versions: {e}")))?
            .with_root_certificates(roots);
        let mut tls = match &config.client_cert {
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(format!("client certificate: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| bad(format!("client key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad(format!("client certificate: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ApiClient {
            kubeconfig: path.to_path_buf(),
            server: config.server.trim_end_matches('/').to_string(),
            authority: authority.as_str().to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
            host,
            port,
            server_name,
            tls: Arc::new(tls),
            token: config.token.filter(|_| config.client_cert.is_none()),
        })
    }

    /// `https://host:port`, as the kubeconfig names the server.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::DELETE, path, None).await
    }

    /// One request with an optional JSON body; the JSON answer (Null when empty), or
    /// the error the server's Status describes.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.server);
        let transport = |message: String| ClientError::Transport {
            kubeconfig: self.kubeconfig.clone(),
            method: method.clone(),
            url: url.clone(),
            message,
        };
        let target = format!("{}{path}", self.prefix);
        let (code, bytes) = tokio::time::timeout(TIMEOUT, self.exchange(&method, &target, body))
            .await
            .map_err(|_| transport(format!("no answer within {} s", TIMEOUT.as_secs())))?
            .map_err(transport)?;
        if code.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes)
                .map_err(|e| transport(format!("the answer is not JSON: {e}")));
        }
        let status: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let message = status["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                text.chars()
                    .take(512)
                    .collect::<String>()
                    .trim()
                    .to_string()
            });
        let reason = status["reason"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| code.canonical_reason().unwrap_or_default().to_string());
        Err(ClientError::Status {
            kubeconfig: self.kubeconfig.clone(),
            method,
            url,
            code,
            reason,
            message,
        })
    }

    async fn exchange(
        &self,
        method: &Method,
        target: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), String> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(target)
            .header(header::HOST, &self.authority)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("podrun/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let payload = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| format!("request body: {e}"))?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| format!("request: {e}"))?;
        let answer = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            let code = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((code, bytes))
        }
        .await;
        conn.abort();
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_without_https_or_ca_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.conf");
        std::fs::write(
            &p,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
        )
        .unwrap();
        let e = ApiClient::from_kubeconfig(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(e.contains("certificate-authority"), "{e}");
        let e = ApiClient::from_kubeconfig(&dir.path().join("missing.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.conf"), "{e}");
    }

    /// A real server on loopback, driven by this client with the admin certificate and
    /// with bootstrap tokens.
    #[tokio::test]
    async fn admin_and_bootstrap_token_clients_of_a_real_server() {
        use crate::api::auth::token::{BootstrapToken, NAMESPACE};
        use crate::server::{run, ServerConfig};

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("server");
        let config = ServerConfig {
            root: root.clone(),
            bind_address: "127.0.0.1".parse().unwrap(),
            secure_port: 0,
            advertise_address: None,
            etcd_servers: Vec::new(),
            service_cluster_ip_range: "10.96.0.0/12".parse().unwrap(),
            service_node_port_range: (30000, 32767),
            admin_kubeconfig_copy: None,
            controllers: false,
            node_cidrs: None,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(config, async {
            let _ = stop_rx.await;
        }));
        let admin_conf = root.join("admin.conf");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !admin_conf.exists() {
            assert!(!server.is_finished(), "the server ended early");
            assert!(std::time::Instant::now() < deadline, "no admin.conf");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let admin = ApiClient::from_kubeconfig(&admin_conf).unwrap();
        assert!(
            admin.server().starts_with("https://127.0.0.1:"),
            "{admin:?}"
        );

        let secrets = format!("/api/v1/namespaces/{NAMESPACE}/secrets");
        let t = BootstrapToken::generate();
        let exp = chrono::Utc::now() + chrono::Duration::hours(1);
        let created = admin
            .post(&secrets, &t.secret_with(Some(exp), "test"))
            .await
            .unwrap();
        assert_eq!(created["metadata"]["name"], t.secret_name());
        let list = admin.get(&secrets).await.unwrap();
        assert!(
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["metadata"]["name"] == t.secret_name()),
            "{list}"
        );
        let again = admin
            .post(&secrets, &t.secret_with(Some(exp), "test"))
            .await
            .unwrap_err();
        assert_eq!(again.status(), Some(StatusCode::CONFLICT), "{again}");
        assert!(again.to_string().contains("AlreadyExists"), "{again}");
        assert!(again.to_string().contains("admin.conf"), "{again}");

        let as_token = |token: &str| {
            let p = dir.path().join(format!("{token}.conf"));
            let ca = std::fs::read_to_string(root.join("pki/ca.crt")).unwrap();
            kubeconfig::write(
                &p,
                admin.server(),
                &ca,
                "joiner",
                kubeconfig::Credential::Token(token),
            )
            .unwrap();
            ApiClient::from_kubeconfig(&p).unwrap()
        };
        let good = as_token(&format!("{}.{}", t.id, t.secret));
        let api = good.get("/api").await.unwrap();
        assert_eq!(api["kind"], "APIVersions", "{api}");
        let e = good.get("/api/v1/pods").await.unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::FORBIDDEN), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("User \"system:bootstrap:{}\"", t.id)),
            "{e}"
        );
        for bad in [format!("{}.{}", t.id, "0".repeat(16)), "garbage".into()] {
            let e = as_token(&bad).get("/api").await.unwrap_err();
            assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED), "{e}");
            let ClientError::Status { reason, .. } = &e else {
                panic!("{e}")
            };
            assert_eq!(reason, "Unauthorized");
        }

        admin
            .delete(&format!("{secrets}/{}", t.secret_name()))
            .await
            .unwrap();
        let e = good.get("/api").await.unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED), "{e}");

        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
