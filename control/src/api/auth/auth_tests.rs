//! The certificates, kubeconfigs, bootstrap tokens and authorizer as a client sees them:
//! files and modes, the users certificates and tokens name, 403 texts, and real TLS
//! handshakes over loopback.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pki::{Pki, ServingNames};
use super::token::BootstrapToken;
use super::*;

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn every_key_is_private_and_the_admin_certificate_outlives_a_new_serving_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &ServingNames::default()).unwrap();
    for f in ["ca.key", "apiserver.key", "admin.key"] {
        assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
    }
    let ca = der(&pki.ca_pem);
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.as_ref()).unwrap();
    assert!(ca_cert.is_ca());
    let admin = user_from_client_cert(&der(&pki.admin_cert_pem)).unwrap();
    assert_eq!(admin.name, "kubernetes-admin");
    assert_eq!(admin.groups, ["system:masters", "system:authenticated"]);

    let more = ServingNames {
        dns: vec!["api.example".into()],
        ..ServingNames::default()
    };
    let again = Pki::load_or_create(dir.path(), &more).unwrap();
    assert_ne!(again.serving_cert_pem, pki.serving_cert_pem);
    assert_eq!(again.admin_cert_pem, pki.admin_cert_pem);
    assert_eq!(again.admin_key_pem, pki.admin_key_pem);
}

#[test]
fn an_issued_client_certificate_names_its_user_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &ServingNames::default()).unwrap();
    let (cert, key) = pki
        .issue_client_cert("system:node:n1", &["system:nodes"], 30)
        .unwrap();
    assert!(key.contains("PRIVATE KEY"));
    let node = user_from_client_cert(&der(&cert)).unwrap();
    assert_eq!(node.name, "system:node:n1");
    assert_eq!(node.groups, ["system:nodes", "system:authenticated"]);
    assert_eq!(node.node(), Some("n1"));
}

#[test]
fn the_admin_kubeconfig_reads_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(&dir.path().join("pki"), &ServingNames::default()).unwrap();
    let path = dir.path().join("admin.conf");
    kubeconfig::write_admin(&path, "https://127.0.0.1:6443", &pki).unwrap();
    assert_eq!(mode(&path), 0o600);
    let v: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["kind"], "Config");
    assert_eq!(v["current-context"], "kubernetes-admin@podrun");
    assert_eq!(v["contexts"][0]["context"]["user"], "kubernetes-admin");
    assert_eq!(
        v["contexts"][0]["context"]["cluster"],
        v["clusters"][0]["name"]
    );
    let c = kubeconfig::read(&path).unwrap();
    assert_eq!(c.server, "https://127.0.0.1:6443");
    assert_eq!(c.ca_pem, pki.ca_pem.as_bytes());
    assert_eq!(
        c.client_cert,
        Some((
            pki.admin_cert_pem.as_bytes().to_vec(),
            pki.admin_key_pem.as_bytes().to_vec()
        ))
    );
    assert_eq!(c.token, None);
}

#[test]
fn tokens_of_the_wrong_shape_do_not_parse() {
    for bad in [
        "abc",
        "abcdef.short",
        "abcdef0123456789abcdef",
        "abcdef.0123456789ABCDEF",
        "abcdef.0123456789abcdef.x",
    ] {
        assert!(BootstrapToken::parse(bad).is_err(), "{bad}");
    }
    let t = BootstrapToken::generate();
    assert_ne!(BootstrapToken::generate(), t);
    assert_eq!(t.secret_name(), format!("bootstrap-token-{}", t.id));
}

/// GetGroups: the extra groups are validated as written, every one, and the groups come
/// back sorted without duplicates.
#[test]
fn a_token_with_an_invalid_extra_group_does_not_authenticate() {
    let t = BootstrapToken::generate();
    let now = chrono::Utc::now();
    let with_groups = |g: &str| {
        let mut s = t.secret_with(None, "");
        s["data"]["auth-extra-groups"] = json!(base64::engine::general_purpose::STANDARD.encode(g));
        s
    };
    let user = t
        .authenticate(
            &with_groups("system:bootstrappers:b,system:bootstrappers:a,system:bootstrappers:a"),
            now,
        )
        .unwrap();
    assert_eq!(
        user.groups,
        [
            "system:bootstrappers",
            "system:bootstrappers:a",
            "system:bootstrappers:b",
            "system:authenticated"
        ]
    );
    for bad in [
        "system:masters",
        "system:bootstrappers:ok,system:masters",
        "system:bootstrappers:a, system:bootstrappers:b",
        "system:bootstrappers:",
        "system:bootstrappers:Upper",
        "system:bootstrappers:ends-",
    ] {
        assert!(t.authenticate(&with_groups(bad), now).is_none(), "{bad}");
    }
    let none = t.authenticate(&with_groups(""), now).unwrap();
    assert_eq!(
        none.groups,
        ["system:bootstrappers", "system:authenticated"]
    );
}

#[test]
fn only_a_bearer_authorization_carries_a_token() {
    let mut h = http::HeaderMap::new();
    assert_eq!(bearer_token(&h), None);
    h.insert("authorization", "Bearer abc.def".parse().unwrap());
    assert_eq!(bearer_token(&h), Some("abc.def"));
    h.insert("authorization", "Basic abc".parse().unwrap());
    assert_eq!(bearer_token(&h), None);
    h.insert("authorization", "Bearer ".parse().unwrap());
    assert_eq!(bearer_token(&h), None);
}

/// Request attributes for authorizer tests.
pub(super) fn attrs(
    verb: &str,
    group: &str,
    resource: &str,
    sub: &str,
    ns: &str,
    name: &str,
) -> RequestAttributes {
    RequestAttributes {
        verb: verb.into(),
        api_group: group.into(),
        resource: resource.into(),
        subresource: sub.into(),
        namespace: ns.into(),
        name: name.into(),
    }
}

fn user(name: &str, groups: &[&str]) -> User {
    User {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

#[test]
fn the_authorizer_gives_bootstrappers_csrs_and_nodes_their_own_objects() {
    let anyone = user("x", &["system:authenticated"]);
    assert_eq!(
        authorize(&anyone, &attrs("create", "", "pods", "", "default", "")),
        Decision::Deny(
            "pods is forbidden: User \"x\" cannot create resource \"pods\" in API group \"\" in the namespace \"default\"".into()
        )
    );

    let boot = user("system:bootstrap:abcdef", &["system:bootstrappers"]);
    let csr = attrs(
        "create",
        "certificates.k8s.io",
        "certificatesigningrequests",
        "",
        "",
        "",
    );
    assert_eq!(authorize(&boot, &csr), Decision::Allow);
    assert_ne!(
        authorize(&boot, &attrs("get", "", "secrets", "", "kube-system", "s")),
        Decision::Allow
    );
    assert_ne!(
        authorize(&boot, &attrs("list", "", "nodes", "", "", "")),
        Decision::Allow
    );

    let node = user("system:node:n1", &["system:nodes", "system:authenticated"]);
    for a in [
        attrs("list", "", "nodes", "", "", ""),
        attrs("watch", "discovery.k8s.io", "endpointslices", "", "", ""),
        attrs("patch", "", "nodes", "status", "", "n1"),
        attrs("create", "", "events", "", "default", ""),
        attrs("patch", "events.k8s.io", "events", "", "default", "e"),
        attrs(
            "create",
            "coordination.k8s.io",
            "leases",
            "",
            "kube-node-lease",
            "",
        ),
    ] {
        assert_eq!(authorize(&node, &a), Decision::Allow, "{a:?}");
    }
    for a in [
        attrs("patch", "", "nodes", "status", "", "n2"),
        attrs(
            "update",
            "coordination.k8s.io",
            "leases",
            "",
            "kube-node-lease",
            "n2",
        ),
        attrs("create", "apps", "deployments", "", "default", ""),
        attrs("delete", "", "namespaces", "", "", "default"),
    ] {
        assert_ne!(authorize(&node, &a), Decision::Allow, "{a:?}");
    }
    // A name in system:nodes without the node prefix is no node.
    let odd = user("kubelet", &["system:nodes"]);
    assert_ne!(
        authorize(&odd, &attrs("list", "", "pods", "", "", "")),
        Decision::Allow
    );
}

fn client(roots_pem: &str, cert: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(roots_pem)).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match cert {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![der(cert)],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// One connection echoing four bytes: what the server saw (None when its handshake or
/// the echo failed) and whether the client got its bytes back.
async fn exchange(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> (Option<(Option<User>, Option<Vec<u8>>)>, bool) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.ok()?;
        let mut tls = acceptor.accept(tcp).await.ok()?;
        let (_, conn) = tls.get_ref();
        let user = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(user_from_client_cert);
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.ok()?;
        tls.write_all(&buf).await.ok()?;
        tls.shutdown().await.ok();
        Some((user, alpn))
    });
    let connector = tokio_rustls::TlsConnector::from(client);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let echoed = async {
        let mut tls = connector.connect(name, tcp).await.ok()?;
        tls.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.ok()?;
        Some(buf == *b"ping")
    }
    .await
    .unwrap_or(false);
    (srv.await.unwrap(), echoed)
}

#[tokio::test]
async fn tls_refuses_a_stranger_certificate_and_serves_every_service_name_over_http1() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &ServingNames::default()).unwrap();
    let server = server_tls_config(&pki).unwrap();

    for name in [
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "127.0.0.1",
    ] {
        let admin = client(&pki.ca_pem, Some((&pki.admin_cert_pem, &pki.admin_key_pem)));
        let (seen, ok) = exchange(server.clone(), admin, name).await;
        assert!(ok, "{name}");
        let (u, alpn) = seen.unwrap();
        assert_eq!(u.unwrap().name, "kubernetes-admin");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    // A certificate from another cluster's CA: the handshake fails, nobody is served.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::load_or_create(other_dir.path(), &ServingNames::default()).unwrap();
    let stranger = client(
        &pki.ca_pem,
        Some((&other.admin_cert_pem, &other.admin_key_pem)),
    );
    let (seen, ok) = exchange(server.clone(), stranger, "localhost").await;
    assert!(!ok);
    assert!(seen.is_none());

    // A client that trusts another CA does not take this server.
    let wary = client(&other.ca_pem, None);
    let (seen, ok) = exchange(server, wary, "localhost").await;
    assert!(!ok);
    assert!(seen.is_none());
}
