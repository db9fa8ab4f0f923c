//! Authentication and authorization: TLS with optional client certificates (the
//! certificate's subject is the user), bootstrap tokens as bearer tokens, and an
//! authorizer with kube-apiserver's built-in rules that matter here: system:masters may
//! do anything, a node may touch only its own objects (the Node authorizer and
//! NodeRestriction).

pub mod kubeconfig;
pub mod pki;
pub mod token;

#[cfg(test)]
mod auth_tests;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("certificates: {0}")]
    Certificate(String),
    #[error("bootstrap token: {0}")]
    Token(String),
    #[error("{path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
}

/// The identity of the controllers (kube-controller-manager's user).
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// The identity of the scheduler (kube-scheduler's user).
pub const SCHEDULER_USER: &str = "system:kube-scheduler";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }

    /// The node name of a node's identity, `system:node:<name>` in `system:nodes`.
    pub fn node(&self) -> Option<&str> {
        if !self.in_group("system:nodes") {
            return None;
        }
        self.name
            .strip_prefix("system:node:")
            .filter(|n| !n.is_empty())
    }
}

/// HTTPS with HTTP/2 and HTTP/1.1, client certificates checked against the cluster CA
/// when offered: without one a client is anonymous and gets 401s.
pub fn server_tls_config(p: &pki::Pki) -> Result<Arc<rustls::ServerConfig>, AuthError> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| AuthError::Certificate(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(p.ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| bad("ca.crt", &e))?)
            .map_err(|e| bad("ca.crt", &e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad("client verifier", &e))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(p.serving_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad("apiserver.crt", &e))?;
    let key = PrivateKeyDer::from_pem_slice(p.serving_key_pem.as_bytes())
        .map_err(|e| bad("apiserver.key", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("serving certificate", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The user a verified client certificate names: CN the name, each O a group.
pub fn user_from_client_cert(cert: &CertificateDer) -> Option<User> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = c.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

/// `Authorization: Bearer <token>`.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Who sends a request: the user of the connection's verified client certificate when
/// there is one (kube-apiserver's union authenticator tries x509 first), else the user
/// of an `Authorization: Bearer` bootstrap token, else anonymous (None). A bearer token
/// that does not authenticate is a 401, never anonymous.
pub async fn authenticate(
    api: &crate::api::Api,
    cert_user: Option<&User>,
    headers: &http::HeaderMap,
) -> Result<Option<User>, crate::api::status::ApiError> {
    if let Some(u) = cert_user {
        return Ok(Some(u.clone()));
    }
    match bearer_token(headers) {
        Some(t) => token::authenticate_bearer(api, t).await.map(Some),
        None => Ok(None),
    }
}

/// What a request does, as kube-apiserver's authorizers see it.
#[derive(Clone, Debug, Default)]
pub struct RequestAttributes {
    pub verb: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub api_group: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// The resources a node reads (the Node authorizer lets it read more narrowly; reading
/// the kinds is the part a client can tell).
const NODE_READS: &[&str] = &[
    "pods",
    "nodes",
    "services",
    "endpoints",
    "endpointslices",
    "configmaps",
    "secrets",
    "persistentvolumeclaims",
    "persistentvolumes",
    "namespaces",
    "leases",
];

pub fn authorize(user: &User, a: &RequestAttributes) -> Decision {
    if user.in_group("system:masters") {
        return Decision::Allow;
    }
    // The control plane's own components: their bootstrap roles upstream cover every
    // resource podrun serves.
    if matches!(user.name.as_str(), CONTROLLER_MANAGER_USER | SCHEDULER_USER) {
        return Decision::Allow;
    }
    let read = matches!(a.verb.as_str(), "get" | "list" | "watch");
    if let Some(node) = user.node() {
        let allowed = match (
            a.api_group.as_str(),
            a.resource.as_str(),
            a.subresource.as_str(),
        ) {
            (_, r, "") if read && NODE_READS.contains(&r) => true,
            ("", "nodes", "" | "status") => {
                a.name.is_empty() && a.verb == "create" || a.name == node
            }
            ("coordination.k8s.io", "leases", "") => {
                a.namespace == "kube-node-lease"
                    && (a.name == node || a.name.is_empty() && a.verb == "create")
            }
            // The object check (the pod is bound to this node) happens on the write.
            ("", "pods", "status") => matches!(a.verb.as_str(), "get" | "update" | "patch"),
            // Deleting its pods (graceful deletion ends on the node) and mirror pods.
            ("", "pods", "") => matches!(a.verb.as_str(), "create" | "delete"),
            // Renewing its own client certificate.
            ("certificates.k8s.io", "certificatesigningrequests", "") => {
                matches!(a.verb.as_str(), "create" | "get" | "list" | "watch")
            }
            ("", "events", "") | ("events.k8s.io", "events", "") => {
                matches!(a.verb.as_str(), "create" | "update" | "patch")
            }
            _ => false,
        };
        if allowed {
            return Decision::Allow;
        }
    }
    if user.in_group("system:bootstrappers")
        && a.api_group == "certificates.k8s.io"
        && a.resource == "certificatesigningrequests"
        && matches!(a.verb.as_str(), "create" | "get" | "list" | "watch")
    {
        return Decision::Allow;
    }
    Decision::Deny(forbidden_message(user, a))
}

/// kube-apiserver's 403 text.
pub fn forbidden_message(user: &User, a: &RequestAttributes) -> String {
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    // The resource as apierrors.NewForbidden names it: "pods", "deployments.apps".
    let qualified = if a.api_group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.api_group)
    };
    let kind = if a.name.is_empty() {
        format!("{qualified} is forbidden")
    } else {
        format!("{qualified} \"{}\" is forbidden", a.name)
    };
    format!(
        "{kind}: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        user.name, a.verb, a.api_group
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::auth_tests::attrs;

    #[test]
    fn masters_may_do_anything_and_nodes_only_their_own() {
        let admin = User {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into()],
        };
        assert_eq!(
            authorize(
                &admin,
                &attrs("delete", "apps", "deployments", "", "x", "y")
            ),
            Decision::Allow
        );
        let w1 = User {
            name: "system:node:w1".into(),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        };
        assert_eq!(
            authorize(&w1, &attrs("update", "", "nodes", "status", "", "w1")),
            Decision::Allow
        );
        assert_eq!(
            authorize(&w1, &attrs("list", "", "pods", "", "", "")),
            Decision::Allow
        );
        assert_eq!(
            authorize(
                &w1,
                &attrs(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    "",
                    "kube-node-lease",
                    "w1"
                )
            ),
            Decision::Allow
        );
        let Decision::Deny(m) = authorize(&w1, &attrs("update", "", "nodes", "status", "", "w2"))
        else {
            panic!()
        };
        assert_eq!(
            m,
            "nodes \"w2\" is forbidden: User \"system:node:w1\" cannot update resource \"nodes/status\" in API group \"\" at the cluster scope"
        );
        let Decision::Deny(m) = authorize(
            &w1,
            &attrs("create", "apps", "deployments", "", "default", ""),
        ) else {
            panic!()
        };
        assert_eq!(
            m,
            "deployments.apps is forbidden: User \"system:node:w1\" cannot create resource \"deployments\" in API group \"apps\" in the namespace \"default\""
        );
        assert!(matches!(
            authorize(
                &w1,
                &attrs(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    "",
                    "kube-node-lease",
                    "w2"
                )
            ),
            Decision::Deny(_)
        ));
        assert!(matches!(
            authorize(
                &w1,
                &attrs("create", "apps", "deployments", "", "default", "")
            ),
            Decision::Deny(_)
        ));
    }

    #[tokio::test]
    async fn tls_takes_the_admin_certificate_and_anonymous_clients() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let p = pki::Pki::load_or_create(dir.path(), &pki::ServingNames::default()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls_config(&p).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut users = Vec::new();
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let alpn = tls.get_ref().1.alpn_protocol().map(|a| a.to_vec());
                let user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(user_from_client_cert);
                tls.write_all(b"x").await.unwrap();
                users.push((user, alpn));
            }
            users
        });
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(p.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let chain: Vec<_> = CertificateDer::pem_slice_iter(p.admin_cert_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_slice(p.admin_key_pem.as_bytes()).unwrap();
        let mut with_cert = builder.clone().with_client_auth_cert(chain, key).unwrap();
        with_cert.alpn_protocols = vec![b"h2".to_vec()];
        let anonymous = builder.with_no_client_auth();
        for config in [with_cert, anonymous] {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = connector
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.unwrap();
        }
        let users = server.await.unwrap();
        let admin = users[0].0.clone().unwrap();
        assert_eq!(admin.name, "kubernetes-admin");
        assert!(admin.in_group("system:masters"));
        assert_eq!(users[0].1.as_deref(), Some(&b"h2"[..]));
        assert!(users[1].0.is_none());
    }
}
