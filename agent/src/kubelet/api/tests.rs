//! The kubelet API over HTTPS against the fake CRI runtime: authentication and
//! authorization, pods, logs, exec, attach and port-forward through the proxy to the
//! streaming server (SPDY and WebSocket), and the stats summary.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::Pod;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::{json, Value};

use super::fake::{FakeCri, FakeUsage};
use super::*;
use crate::streaming::client::{self, ExecOptions, PortForwardSpdy, Transport};

/// A CA of the test's own and client certificates it issues.
struct TestCa {
    pem: String,
    key: KeyPair,
}

impl TestCa {
    fn new(cn: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            key,
        }
    }

    fn client(&self, cn: &str, orgs: &[&str]) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = Issuer::from_ca_cert_pem(&self.pem, &self.key).unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        Identity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

#[derive(Clone)]
struct Identity {
    cert: String,
    key: String,
}

/// Accepts any server certificate, as the API server does with a kubelet's own.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(id: Option<&Identity>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut c = match id {
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(id.cert.as_bytes())
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

async fn tls_connect(
    addr: SocketAddr,
    id: Option<&Identity>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(client_config(id))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
}

/// A GET; the status and body.
async fn get(addr: SocketAddr, id: Option<&Identity>, path: &str) -> (StatusCode, String) {
    let tls = tls_connect(addr, id).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A plain-HTTP front of the kubelet API that presents `id`: the streaming clients
/// speak plain HTTP.
async fn front(addr: SocketAddr, id: Identity) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut plain, _)) = l.accept().await else {
                return;
            };
            let id = id.clone();
            tokio::spawn(async move {
                let mut tls = tls_connect(addr, Some(&id)).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
            });
        }
    });
    local
}

struct Node {
    _dir: tempfile::TempDir,
    fake: FakeCri,
    addr: SocketAddr,
    ca: TestCa,
    admin: Identity,
    main_current: String,
    main_log: std::path::PathBuf,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn pod(ns: &str, name: &str, uid: &str, containers: &[&str]) -> Pod {
    let containers: Vec<Value> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "busybox"}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "spec": {"nodeName": "node-1", "containers": containers},
    }))
    .unwrap()
}

const MAIN_LOG: &str = "\
2024-05-01T10:00:00.000000000Z stdout F first
2024-05-01T10:00:01.000000000Z stderr F second
2024-05-01T10:00:02.000000000Z stdout P thi
2024-05-01T10:00:03.000000000Z stdout F rd
";

/// A node with pod default/web (containers main, restarted once, and side, exited)
/// and its kubelet API on 127.0.0.1.
async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeCri::start(dir.path()).await.unwrap();
    let sandbox = fake.add_sandbox("default", "web", "uid-web");
    let old_log = dir.path().join("main-0.log");
    std::fs::write(
        &old_log,
        "2024-05-01T09:00:00Z stdout F from the first run\n",
    )
    .unwrap();
    let main_log = dir.path().join("main-1.log");
    std::fs::write(&main_log, MAIN_LOG).unwrap();
    fake.add_container(&sandbox, "main", &old_log, false);
    let main_current = fake.add_container(&sandbox, "main", &main_log, true);
    let side_log = dir.path().join("side-0.log");
    std::fs::write(&side_log, "2024-05-01T10:00:00Z stdout F side\n").unwrap();
    let side = fake.add_container(&sandbox, "side", &side_log, false);
    fake.set_usage(
        &main_current,
        FakeUsage {
            cpu_ns: 3_000_000_000,
            nano_cores: 250_000_000,
            working_set: 10 << 20,
        },
    );
    fake.set_usage(
        &side,
        FakeUsage {
            cpu_ns: 1_000_000_000,
            nano_cores: 0,
            working_set: 1 << 20,
        },
    );
    let ca = TestCa::new("cluster-ca");
    let admin = ca.client("kubernetes-admin", &[MASTERS_GROUP]);
    let (cert, key) = self_signed("node-1", &["127.0.0.1".parse().unwrap()]).unwrap();
    let tls = tls_config(&ca.pem, &cert, &key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pods: PodsFn = Arc::new(|| vec![pod("default", "web", "uid-web", &["main", "side"])]);
    let (shutdown, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(serve(listener, tls, fake.client(), pods, rx));
    Node {
        _dir: dir,
        fake,
        addr,
        ca,
        admin,
        main_current,
        main_log,
        shutdown,
        task,
    }
}

impl Node {
    async fn get(&self, path: &str) -> (StatusCode, String) {
        get(self.addr, Some(&self.admin), path).await
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the server stops")
            .unwrap();
    }
}

#[tokio::test]
async fn anonymous_is_401_other_users_403_and_masters_or_the_apiserver_pass() {
    let n = node().await;
    let (code, body) = get(n.addr, None, "/healthz").await;
    assert_eq!(
        (code, body.trim()),
        (StatusCode::UNAUTHORIZED, "Unauthorized")
    );
    let (code, _) = get(n.addr, None, "/pods").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let someone = n.ca.client("jane", &["developers"]);
    let (code, body) = get(n.addr, Some(&someone), "/stats/summary").await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        body.trim(),
        "Forbidden (user=jane, verb=get, resource=nodes, subresource=stats)"
    );
    let (_, body) = get(n.addr, Some(&someone), "/containerLogs/default/web/main").await;
    assert!(body.contains("subresource=proxy"), "{body}");
    // A certificate of another CA does not get through the handshake.
    let stranger = TestCa::new("other-ca").client("kubernetes-admin", &[MASTERS_GROUP]);
    let refused = async {
        let mut tls = tls_connect(n.addr, Some(&stranger)).await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut b = Vec::new();
        tls.read_to_end(&mut b).await?;
        Ok::<_, std::io::Error>(b)
    }
    .await;
    assert!(
        refused.as_ref().map_or(true, |b| b.is_empty()),
        "{refused:?}"
    );
    let apiserver = n.ca.client(APISERVER_CLIENT_CN, &[]);
    assert_eq!(
        get(n.addr, Some(&apiserver), "/healthz").await,
        (StatusCode::OK, "ok\n".to_string())
    );
    assert_eq!(n.get("/healthz").await.0, StatusCode::OK);
    n.stop().await;
}

#[test]
fn the_serving_certificate_names_the_node() {
    let (cert, key) = self_signed("node-1", &["10.0.0.7".parse().unwrap()]).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
    let c = pem.parse_x509().unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect();
    assert!(names.iter().any(|n| n.contains("node-1")), "{names:?}");
    assert!(
        names.iter().any(|n| n.contains("[10, 0, 0, 7]")),
        "{names:?}"
    );
    assert!(c.validity().is_valid());
    assert!(tls_config(&cert, &cert, &key).is_ok());
    assert!(tls_config("", &cert, &key).is_err());
    assert!(tls_config(&cert, "", &key).is_err());
}

#[tokio::test]
async fn pods_are_listed() {
    let n = node().await;
    let (code, body) = n.get("/pods").await;
    assert_eq!(code, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "PodList");
    assert_eq!(v["items"][0]["metadata"]["name"], "web");
    n.stop().await;
}

#[tokio::test]
async fn logs_of_the_current_and_previous_instance_with_options() {
    let n = node().await;
    let (code, body) = n.get("/containerLogs/default/web/main").await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::OK, "first\nsecond\nthird\n")
    );
    let (_, body) = n.get("/containerLogs/default/web/main?tailLines=2").await;
    assert_eq!(body, "second\nthird\n");
    let (_, body) = n
        .get("/containerLogs/default/web/main?tailLines=1&timestamps=true")
        .await;
    assert_eq!(body, "2024-05-01T10:00:02.000000000Z third\n");
    let (_, body) = n
        .get("/containerLogs/default/web/main?sinceTime=2024-05-01T10:00:01Z")
        .await;
    assert_eq!(body, "second\nthird\n");
    let (_, body) = n.get("/containerLogs/default/web/main?limitBytes=8").await;
    assert_eq!(body, "first\nse");
    let (_, body) = n.get("/containerLogs/default/web/main?previous=true").await;
    assert_eq!(body, "from the first run\n");
    let (code, body) = n.get("/containerLogs/default/web/side?previous=1").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("previous terminated container \"side\""),
        "{body}"
    );
    let (code, body) = n.get("/containerLogs/default/web/nope").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        body.contains("container \"nope\" not found in pod \"web\""),
        "{body}"
    );
    let (code, body) = n.get("/containerLogs/default/db/main").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body.contains("pod \"db\""), "{body}");
    let (code, _) = n.get("/containerLogs/default/web/main?tailLines=-3").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    n.stop().await;
}

#[tokio::test]
async fn following_a_log_ends_when_the_container_exits() {
    let n = node().await;
    let tls = tls_connect(n.addr, Some(&n.admin)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/containerLogs/default/web/main?follow=true&tailLines=1")
        .header(header::HOST, "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let mut next = async || -> Option<Bytes> {
        loop {
            let f = tokio::time::timeout(Duration::from_secs(20), body.frame())
                .await
                .expect("a frame in time")?
                .unwrap();
            if let Ok(d) = f.into_data() {
                return Some(d);
            }
        }
    };
    while !got.ends_with(b"third\n") {
        got.extend_from_slice(&next().await.unwrap());
    }
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&n.main_log)
            .unwrap();
        f.write_all(b"2024-05-01T10:00:04Z stdout F fourth\n")
            .unwrap();
    }
    while !got.ends_with(b"fourth\n") {
        got.extend_from_slice(&next().await.unwrap());
    }
    n.fake.set_running(&n.main_current, false);
    assert!(
        next().await.is_none(),
        "the stream ends once the container exited"
    );
    assert_eq!(got, b"third\nfourth\n");
    n.stop().await;
}

#[tokio::test]
async fn a_followed_log_ends_cleanly_when_the_server_stops() {
    let n = node().await;
    let tls = tls_connect(n.addr, Some(&n.admin)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/containerLogs/default/web/main?follow=1&tailLines=1")
        .header(header::HOST, "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut body = send.send_request(req).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"third\n");
    // The server stops without waiting for its drain timeout, which the follower would
    // otherwise hold it to, and the stream ends (the chunked body's last chunk), not cut off.
    tokio::time::timeout(DRAIN_TIMEOUT / 2, n.stop())
        .await
        .expect("the server stops without waiting for the follower");
    let end = tokio::time::timeout(DRAIN_TIMEOUT, body.frame())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test]
async fn exec_and_attach_go_through_to_the_streaming_server() {
    let n = node().await;
    let url = format!("http://{}", front(n.addr, n.admin.clone()).await);
    for transport in [
        Transport::Spdy,
        Transport::WebSocketV5,
        Transport::WebSocketV4,
    ] {
        let out = client::exec(
            &format!(
                "{url}/exec/default/web/main?command=echo&command=hello&command=world&output=1"
            ),
            transport,
            ExecOptions {
                stdout: true,
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
        assert_eq!(out.stdout, b"hello world\n", "{transport:?}");
        assert_eq!(out.exit_code, 0);
    }
    let opts = ExecOptions {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    for transport in [Transport::Spdy, Transport::WebSocketV5] {
        let out = client::exec(
            &format!("{url}/exec/default/web/main?command=cat&input=1&output=1&error=1"),
            transport,
            opts,
            Some(b"piped through\n"),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout, b"piped through\n", "{transport:?}");
        let out = client::exec(
            &format!("{url}/exec/default/web/main?command=fail&command=3&input=1&output=1&error=1"),
            transport,
            opts,
            Some(b""),
        )
        .await
        .unwrap();
        assert_eq!((out.exit_code, out.stderr.as_slice()), (3, &b"oops\n"[..]));
        let out = client::exec(
            &format!("{url}/attach/default/web/main?input=1&output=1&error=1"),
            transport,
            opts,
            Some(b"attached\n"),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout, b"attached\n", "{transport:?}");
    }
    // The uid form of the path.
    let out = client::exec(
        &format!("{url}/exec/default/web/uid-web/main?command=echo&command=x&output=1"),
        Transport::Spdy,
        ExecOptions {
            stdout: true,
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.stdout, b"x\n");
    // Not running, unknown, no streams, no upgrade.
    let err = client::exec(
        &format!("{url}/exec/default/web/side?command=echo&output=1"),
        Transport::Spdy,
        ExecOptions {
            stdout: true,
            ..Default::default()
        },
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&err, client::ClientError::Http { status: 400, body } if body.contains("not running")),
        "{err:?}"
    );
    let err = client::exec(
        &format!("{url}/exec/default/nope/main?command=echo&output=1"),
        Transport::WebSocketV5,
        ExecOptions {
            stdout: true,
            ..Default::default()
        },
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&err, client::ClientError::Http { status: 404, .. }),
        "{err:?}"
    );
    let (code, body) = n.get("/exec/default/web/main?command=echo").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let (code, body) = n.get("/exec/default/web/main?command=echo&output=1").await;
    assert_eq!(
        (code, body.trim()),
        (StatusCode::BAD_REQUEST, "Upgrade request required")
    );
    n.stop().await;
}

#[tokio::test]
async fn port_forward_goes_through_over_spdy_websocket_and_the_tunnel() {
    let n = node().await;
    let url = format!(
        "http://{}/portForward/default/web",
        front(n.addr, n.admin.clone()).await
    );
    for tunneled in [false, true] {
        let pf = if tunneled {
            PortForwardSpdy::connect_tunneled(&url).await.unwrap()
        } else {
            PortForwardSpdy::connect(&url).await.unwrap()
        };
        let mut s = pf.open(8080).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        assert_eq!(s.read_exact_len(4).await, b"ping");
        s.close_write().await.unwrap();
        pf.close().await;
    }
    let mut streams = client::port_forward_websocket(&format!("{url}?port=8080"), &[8080], false)
        .await
        .unwrap();
    let s = &mut streams[0];
    s.write_all(b"over ws").await.unwrap();
    assert_eq!(s.read_exact_len(7).await, b"over ws");
    let err = PortForwardSpdy::connect(&format!(
        "http://{}/portForward/default/nope",
        front(n.addr, n.admin.clone()).await
    ))
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&err, client::ClientError::Http { status: 404, .. }),
        "{err:?}"
    );
    assert!(n.fake.calls().iter().any(|c| c == "PortForward"));
    n.stop().await;
}

#[tokio::test]
async fn the_summary_has_pod_and_container_cpu_and_memory() {
    let n = node().await;
    for without_sandbox_stats in [false, true] {
        if without_sandbox_stats {
            n.fake.without_sandbox_stats();
        }
        let (code, body) = n.get("/stats/summary").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["node"]["nodeName"], "node-1");
        assert!(v["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
        assert!(v["node"]["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0);
        let pod = &v["pods"][0];
        assert_eq!(
            pod["podRef"],
            json!({"name": "web", "namespace": "default", "uid": "uid-web"})
        );
        // Only the running instance of main; side has exited.
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{containers:?}");
        let main = &containers[0];
        assert_eq!(main["name"], "main");
        assert_eq!(main["cpu"]["usageNanoCores"], 250_000_000);
        assert_eq!(main["cpu"]["usageCoreNanoSeconds"], 3_000_000_000u64);
        assert_eq!(main["memory"]["workingSetBytes"], 10 << 20);
        assert!(pod["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() >= 3_000_000_000);
        assert!(pod["memory"]["workingSetBytes"].as_u64().unwrap() >= 10 << 20);
        if without_sandbox_stats {
            // Summed over the running containers.
            assert_eq!(pod["memory"]["workingSetBytes"], 10 << 20);
        }
    }
    assert!(n.fake.calls().iter().any(|c| c == "ListContainerStats"));
    n.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let n = node().await;
    assert_eq!(n.get("/nothing").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        n.get("/containerLogs/default/web").await.0,
        StatusCode::NOT_FOUND
    );
    n.stop().await;
}
