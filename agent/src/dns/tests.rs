//! The resolver over built zones, the message rules, and the server on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::message::{self, Outcome};
use super::zone::{Answer, Resolution, Zone};
use super::*;

fn service(ns: &str, name: &str, ips: &[&str], ports: &[(&str, i32, &str)]) -> Service {
    let ports: Vec<_> = ports
        .iter()
        .map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": ips[0], "clusterIPs": ips, "ports": ports},
    }))
    .unwrap()
}

fn external(ns: &str, name: &str, target: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "ExternalName", "externalName": target},
    }))
    .unwrap()
}

/// (address, hostname, ready)
fn slice(
    ns: &str,
    svc: &str,
    suffix: &str,
    endpoints: &[(&str, Option<&str>, Option<bool>)],
    ports: &[(&str, i32)],
) -> EndpointSlice {
    let family = if endpoints.iter().any(|e| e.0.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(ip, host, ready)| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": ready}});
            if let Some(h) = host {
                e["hostname"] = json!(h);
            }
            e
        })
        .collect();
    let ports: Vec<_> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{svc}-{suffix}"), "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": family,
        "endpoints": endpoints,
        "ports": ports,
    }))
    .unwrap()
}

fn cluster() -> Zone {
    let services = vec![
        service(
            "default",
            "web",
            &["10.96.0.10"],
            &[("http", 80, "TCP"), ("", 81, "TCP")],
        ),
        service("default", "dual", &["10.96.0.11", "fd00::11"], &[]),
        service(
            "kube-system",
            "kube-dns",
            &["10.96.0.2"],
            &[("dns", 53, "UDP")],
        ),
        service("default", "db", &["None"], &[]),
        service("default", "empty", &["None"], &[]),
        external("default", "ext", "example.org"),
        external("default", "alias", "web.default.svc.cluster.local"),
    ];
    let slices = vec![
        slice(
            "default",
            "db",
            "a",
            &[
                ("10.244.1.5", Some("db-0"), Some(true)),
                ("10.244.2.6", None, None),
                ("10.244.3.7", Some("db-2"), Some(false)),
            ],
            &[("pg", 5432)],
        ),
        slice(
            "default",
            "web",
            "a",
            &[("10.244.1.9", None, Some(true))],
            &[("http", 8080)],
        ),
    ];
    Zone::build("cluster.local", 5, 7, &services, &slices)
}

fn name(n: &str) -> Name {
    Name::from_ascii(n).unwrap()
}

fn answer(zone: &Zone, qname: &str, qtype: RecordType) -> Answer {
    match zone.resolve(&name(qname), qtype) {
        Resolution::Answer(a) => a,
        Resolution::Forward => panic!("{qname} {qtype}: forwarded"),
    }
}

fn rdata(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.data.to_string()).collect()
}

#[test]
fn cluster_ip_service_a_record() {
    let zone = cluster();
    let a = answer(&zone, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.authoritative);
    assert_eq!(rdata(&a.answers), ["10.96.0.10"]);
    assert_eq!(a.answers[0].ttl, 5);
    assert_eq!(
        a.answers[0].name.to_ascii(),
        "web.default.svc.cluster.local."
    );
}

#[test]
fn dual_stack_service_answers_a_and_aaaa() {
    let zone = cluster();
    let a = answer(&zone, "dual.default.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a.answers), ["10.96.0.11"]);
    let aaaa = answer(&zone, "dual.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(rdata(&aaaa.answers), ["fd00::11"]);
    // An IPv4-only service has no AAAA: NODATA, with the SOA.
    let none = answer(&zone, "web.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(none.rcode, ResponseCode::NoError);
    assert!(none.answers.is_empty());
    assert_eq!(none.authorities[0].record_type(), RecordType::SOA);
}

#[test]
fn srv_for_named_ports_with_target_addresses() {
    let zone = cluster();
    let a = answer(
        &zone,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        rdata(&a.answers),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(rdata(&a.additionals), ["10.96.0.10"]);
    let dns = answer(
        &zone,
        "_dns._udp.kube-dns.kube-system.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        rdata(&dns.answers),
        ["0 100 53 kube-dns.kube-system.svc.cluster.local."]
    );
    // Wrong protocol: no such name.
    let tcp = answer(
        &zone,
        "_dns._tcp.kube-dns.kube-system.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(tcp.rcode, ResponseCode::NXDomain);
    // The intermediate `_tcp` label exists (empty non-terminal): NODATA.
    let ent = answer(&zone, "_tcp.web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(ent.rcode, ResponseCode::NoError);
    assert!(ent.answers.is_empty());
}

#[test]
fn headless_service_answers_ready_endpoints() {
    let zone = cluster();
    let a = answer(&zone, "db.default.svc.cluster.local.", RecordType::A);
    let mut ips = rdata(&a.answers);
    ips.sort();
    assert_eq!(ips, ["10.244.1.5", "10.244.2.6"]);
    // Endpoint names: the hostname, else the dashed address; the unready one has none.
    let host = answer(&zone, "db-0.db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&host.answers), ["10.244.1.5"]);
    let dashed = answer(
        &zone,
        "10-244-2-6.db.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(rdata(&dashed.answers), ["10.244.2.6"]);
    let unready = answer(&zone, "db-2.db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(unready.rcode, ResponseCode::NXDomain);
    // SRV: one per endpoint, each with its address in the additional section.
    let srv = answer(
        &zone,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    );
    let mut targets = rdata(&srv.answers);
    targets.sort();
    assert_eq!(
        targets,
        [
            "0 50 5432 10-244-2-6.db.default.svc.cluster.local.",
            "0 50 5432 db-0.db.default.svc.cluster.local.",
        ]
    );
    assert_eq!(srv.additionals.len(), 2);
    // A headless service without endpoints exists, with no addresses.
    let empty = answer(&zone, "empty.default.svc.cluster.local.", RecordType::A);
    assert_eq!(empty.rcode, ResponseCode::NoError);
    assert!(empty.answers.is_empty());
}

#[test]
fn external_name_is_a_cname() {
    let zone = cluster();
    let a = answer(&zone, "ext.default.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a.answers), ["example.org."]);
    assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(a.external_target, Some(name("example.org.")));
    // A CNAME into the zone is followed in the same answer.
    let alias = answer(&zone, "alias.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        rdata(&alias.answers),
        ["web.default.svc.cluster.local.", "10.96.0.10"]
    );
    assert_eq!(alias.external_target, None);
}

#[test]
fn ptr_for_cluster_ips_and_headless_endpoints() {
    let zone = cluster();
    let svc = answer(&zone, "10.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(rdata(&svc.answers), ["web.default.svc.cluster.local."]);
    let ep = answer(&zone, "5.1.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(rdata(&ep.answers), ["db-0.db.default.svc.cluster.local."]);
    let v6 = "1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    assert_eq!(
        rdata(&answer(&zone, v6, RecordType::PTR).answers),
        ["dual.default.svc.cluster.local."]
    );
    // Addresses the cluster does not own go upstream.
    assert_eq!(
        zone.resolve(&name("1.1.168.192.in-addr.arpa."), RecordType::PTR),
        Resolution::Forward
    );
}

#[test]
fn pod_names_answer_the_address_they_spell() {
    let zone = cluster();
    let a = answer(
        &zone,
        "10-244-1-5.anything.pod.cluster.local.",
        RecordType::A,
    );
    assert_eq!(rdata(&a.answers), ["10.244.1.5"]);
    let v6 = answer(
        &zone,
        "fd00--5.default.pod.cluster.local.",
        RecordType::AAAA,
    );
    assert_eq!(rdata(&v6.answers), ["fd00::5"]);
    let bad = answer(&zone, "not-an-ip.default.pod.cluster.local.", RecordType::A);
    assert_eq!(bad.rcode, ResponseCode::NXDomain);
}

#[test]
fn missing_names_are_nxdomain_with_the_soa() {
    let zone = cluster();
    for qname in [
        "nope.default.svc.cluster.local.",
        "web.other.svc.cluster.local.",
        // What a search path makes of an already qualified name.
        "svc.default.svc.cluster.local.default.svc.cluster.local.",
        "web.default.svc.cluster.local.default.svc.cluster.local.",
        "x.cluster.local.",
    ] {
        let a = answer(&zone, qname, RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NXDomain, "{qname}");
        assert!(a.answers.is_empty());
        assert_eq!(a.authorities.len(), 1);
        let soa = a.authorities[0].data.to_string();
        assert!(
            soa.starts_with("ns.dns.cluster.local. hostmaster.cluster.local. 7 "),
            "{soa}"
        );
    }
    // The zone's own levels exist.
    for qname in [
        "cluster.local.",
        "svc.cluster.local.",
        "default.svc.cluster.local.",
    ] {
        assert_eq!(
            answer(&zone, qname, RecordType::A).rcode,
            ResponseCode::NoError,
            "{qname}"
        );
    }
    assert_eq!(
        rdata(&answer(&zone, "cluster.local.", RecordType::SOA).answers).len(),
        1
    );
}

#[test]
fn names_are_case_insensitive_and_keep_the_asked_case() {
    let zone = cluster();
    let a = answer(&zone, "WeB.Default.SVC.Cluster.Local.", RecordType::A);
    assert_eq!(rdata(&a.answers), ["10.96.0.10"]);
    assert_eq!(
        a.answers[0].name.to_ascii(),
        "WeB.Default.SVC.Cluster.Local."
    );
}

#[test]
fn dns_version_txt_and_forwarding_outside_the_zone() {
    let zone = cluster();
    let txt = answer(&zone, "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(rdata(&txt.answers), ["1.1.0"]);
    assert_eq!(
        zone.resolve(&name("example.org."), RecordType::A),
        Resolution::Forward
    );
    // A look-alike is not under the domain.
    assert_eq!(
        zone.resolve(&name("evilcluster.local."), RecordType::A),
        Resolution::Forward
    );
}

#[test]
fn unsynced_zone_answers_servfail_for_cluster_names_only() {
    let zone = Zone::unsynced("cluster.local", 5);
    let a = answer(&zone, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::ServFail);
    assert!(!a.authoritative);
    assert_eq!(
        zone.resolve(&name("example.org."), RecordType::A),
        Resolution::Forward
    );
}

#[test]
fn upstream_skips_our_own_addresses_and_loopback_when_listening_on_all() {
    let conf = "# comment\nsearch example\nnameserver 10.0.0.2\nnameserver 127.0.0.53\n\
                nameserver 10.0.0.2\nnameserver ::1\nnameserver bogus\noptions ndots:5\n";
    let specific: SocketAddr = "10.0.0.2:53".parse().unwrap();
    assert_eq!(
        upstream_from(conf, &[specific]),
        [
            "127.0.0.53:53".parse().unwrap(),
            "[::1]:53".parse().unwrap()
        ] as [SocketAddr; 2]
    );
    let all: SocketAddr = "0.0.0.0:53".parse().unwrap();
    assert_eq!(
        upstream_from(conf, &[all]),
        ["10.0.0.2:53".parse::<SocketAddr>().unwrap()]
    );
    // Another port never loops back to us.
    let other: SocketAddr = "127.0.0.53:5353".parse().unwrap();
    assert_eq!(upstream_from(conf, &[other]).len(), 3);
}

// The message layer.

fn request(id: u16, qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = message::query(id, qname, qtype).unwrap();
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn respond(zone: &Zone, bytes: &[u8]) -> Message {
    match message::handle(zone, bytes) {
        Outcome::Respond(m) => m,
        other => panic!("not answered locally: {other:?}"),
    }
}

#[test]
fn response_flags_and_edns() {
    let zone = cluster();
    let m = respond(
        &zone,
        &request(
            42,
            "web.default.svc.cluster.local.",
            RecordType::A,
            Some(4096),
        ),
    );
    assert_eq!(m.metadata.id, 42);
    assert!(
        m.metadata.authoritative && m.metadata.recursion_available && m.metadata.recursion_desired
    );
    assert_eq!(m.queries.len(), 1);
    assert_eq!(
        m.edns.as_ref().map(Edns::max_payload),
        Some(message::EDNS_PAYLOAD)
    );
    let mut no_rd = message::query(43, "web.default.svc.cluster.local.", RecordType::A).unwrap();
    no_rd.metadata.recursion_desired = false;
    let m = respond(&zone, &no_rd.to_vec().unwrap());
    assert!(!m.metadata.recursion_desired && m.edns.is_none());
}

#[test]
fn malformed_and_unsupported_requests() {
    let zone = cluster();
    let mut two = message::query(1, "a.cluster.local.", RecordType::A).unwrap();
    two.add_query(hickory_proto::op::Query::query(
        name("b.cluster.local."),
        RecordType::A,
    ));
    assert_eq!(
        respond(&zone, &two.to_vec().unwrap())
            .metadata
            .response_code,
        ResponseCode::FormErr
    );
    let mut garbage = request(7, "web.default.svc.cluster.local.", RecordType::A, None);
    garbage.truncate(20);
    let m = respond(&zone, &garbage);
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (7, ResponseCode::FormErr)
    );
    assert!(matches!(message::handle(&zone, &[1, 2, 3]), Outcome::Drop));
}

/// A headless service with `n` ready endpoints.
fn big_zone(n: u8) -> Zone {
    let eps: Vec<String> = (0..n).map(|i| format!("10.244.9.{i}")).collect();
    let eps: Vec<(&str, Option<&str>, Option<bool>)> = eps
        .iter()
        .map(|ip| (ip.as_str(), None, Some(true)))
        .collect();
    Zone::build(
        "cluster.local",
        5,
        1,
        &[service("default", "big", &["None"], &[])],
        &[slice("default", "big", "a", &eps, &[("http", 80)])],
    )
}

#[test]
fn big_answers_are_truncated_to_the_udp_limit() {
    let zone = big_zone(100);
    let bytes = request(9, "big.default.svc.cluster.local.", RecordType::A, None);
    let full = respond(&zone, &bytes);
    assert_eq!(full.answers.len(), 100);
    let out = message::encode(full.clone(), Some(512)).unwrap();
    assert!(out.len() <= 512);
    let m = Message::from_vec(&out).unwrap();
    assert!(m.metadata.truncation && m.answers.is_empty());
    // With EDNS 4096 it fits; over TCP there is no limit.
    let m = Message::from_vec(&message::encode(full.clone(), Some(4096)).unwrap()).unwrap();
    assert!(!m.metadata.truncation && m.answers.len() == 100);
    assert!(message::encode(full, None).unwrap().len() > 512);
}

// The server, on 127.0.0.1.

struct TestServer {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), DnsError>>,
    zone: tokio::sync::watch::Sender<Arc<Zone>>,
}

async fn start(zone: Zone, upstream: Vec<SocketAddr>) -> TestServer {
    let sockets = Sockets::bind(&["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let addr = sockets.udp[0].local_addr().unwrap();
    assert_eq!(sockets.tcp[0].local_addr().unwrap(), addr);
    let (zone_tx, zone_rx) = tokio::sync::watch::channel(Arc::new(zone));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let forwarder = Forwarder::new(upstream, Duration::from_millis(500));
    let task = tokio::spawn(serve_on(zone_rx, sockets, forwarder, stop_rx));
    TestServer {
        addr,
        stop,
        task,
        zone: zone_tx,
    }
}

impl TestServer {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

async fn udp_query(server: SocketAddr, bytes: &[u8]) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .expect("an answer over udp")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

async fn tcp_query(server: SocketAddr, bytes: &[u8]) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

#[tokio::test]
async fn server_answers_over_udp_and_tcp_and_follows_the_zone() {
    let server = start(cluster(), vec![]).await;
    let q = request(5, "web.default.svc.cluster.local.", RecordType::A, None);
    for m in [
        udp_query(server.addr, &q).await,
        tcp_query(server.addr, &q).await,
    ] {
        assert_eq!(m.metadata.id, 5);
        assert!(m.metadata.authoritative);
        assert_eq!(rdata(&m.answers), ["10.96.0.10"]);
    }
    let nx = udp_query(
        server.addr,
        &request(6, "nope.default.svc.cluster.local.", RecordType::A, None),
    )
    .await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities.len(), 1);
    // A new zone is answered from at once.
    server
        .zone
        .send_replace(Arc::new(Zone::build("cluster.local", 5, 8, &[], &[])));
    let gone = udp_query(server.addr, &q).await;
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
    server.stop().await;
}

#[tokio::test]
async fn server_truncates_big_udp_answers_and_tcp_carries_them() {
    let server = start(big_zone(100), vec![]).await;
    let q = request(11, "big.default.svc.cluster.local.", RecordType::A, None);
    let udp = udp_query(server.addr, &q).await;
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
    let tcp = tcp_query(server.addr, &q).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 100);
    // SRV for 100 endpoints: the SRV records alone are over 1232 bytes, so dropping the
    // additional addresses is not enough and TC is set.
    let srv = request(
        12,
        "_http._tcp.big.default.svc.cluster.local.",
        RecordType::SRV,
        Some(1232),
    );
    let udp = udp_query(server.addr, &srv).await;
    assert!(udp.metadata.truncation);
    assert!(udp.edns.is_some());
    server.stop().await;
}

/// A fake upstream resolver: answers every A question with 192.0.2.1 over UDP and TCP;
/// over UDP with TC set and no answer when `truncate_udp`.
async fn fake_upstream(truncate_udp: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let answer = |bytes: &[u8], truncate: bool| {
        let req = Message::from_vec(bytes).unwrap();
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.queries = req.queries.clone();
        resp.metadata.recursion_available = true;
        if truncate {
            resp.metadata.truncation = true;
        } else {
            let owner = req.queries[0].name().clone();
            resp.add_answer(Record::from_rdata(
                owner,
                300,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
            ));
        }
        resp.to_vec().unwrap()
    };
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                Ok((n, peer)) = udp.recv_from(&mut buf) => {
                    let out = answer(&buf[..n], truncate_udp);
                    let _ = udp.send_to(&out, peer).await;
                }
                Ok((mut stream, _)) = tcp.accept() => {
                    let len = stream.read_u16().await.unwrap();
                    let mut req = vec![0u8; usize::from(len)];
                    stream.read_exact(&mut req).await.unwrap();
                    let out = answer(&req, false);
                    stream.write_u16(out.len() as u16).await.unwrap();
                    stream.write_all(&out).await.unwrap();
                }
            }
        }
    });
    (addr, task)
}

#[tokio::test]
async fn server_forwards_other_names_upstream() {
    for truncate_udp in [false, true] {
        let (upstream, fake) = fake_upstream(truncate_udp).await;
        let server = start(cluster(), vec![upstream]).await;
        let q = request(21, "www.example.org.", RecordType::A, Some(1232));
        let m = udp_query(server.addr, &q).await;
        assert_eq!(m.metadata.id, 21);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(!m.metadata.authoritative && m.metadata.recursion_available);
        assert_eq!(
            rdata(&m.answers),
            ["192.0.2.1"],
            "truncate_udp={truncate_udp}"
        );
        assert_eq!(
            m.edns.as_ref().map(Edns::max_payload),
            Some(message::EDNS_PAYLOAD)
        );
        // An ExternalName's target is completed from upstream.
        let ext = tcp_query(
            server.addr,
            &request(22, "ext.default.svc.cluster.local.", RecordType::A, None),
        )
        .await;
        assert_eq!(rdata(&ext.answers), ["example.org.", "192.0.2.1"]);
        server.stop().await;
        fake.abort();
    }
}

#[tokio::test]
async fn server_answers_servfail_when_upstream_is_down_and_never_forwards_cluster_names() {
    // A port nobody listens on: the upstream refuses at once.
    let down = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let server = start(cluster(), vec![down]).await;
    let m = udp_query(
        server.addr,
        &request(31, "www.example.org.", RecordType::A, None),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.metadata.id, 31);
    let tcp = tcp_query(
        server.addr,
        &request(32, "www.example.org.", RecordType::AAAA, None),
    )
    .await;
    assert_eq!(tcp.metadata.response_code, ResponseCode::ServFail);
    // Cluster names are answered whatever the upstream does.
    let nx = udp_query(
        server.addr,
        &request(33, "a.b.svc.cluster.local.", RecordType::A, None),
    )
    .await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    server.stop().await;
    // And with no upstream at all.
    let server = start(cluster(), vec![]).await;
    let m = udp_query(
        server.addr,
        &request(34, "www.example.org.", RecordType::A, None),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    server.stop().await;
}

#[test]
fn aaaa_rdata_renders() {
    // Keeps the AAAA import honest for the dual-stack checks above.
    let r = Record::from_rdata(name("x."), 5, RData::AAAA(AAAA("fd00::1".parse().unwrap())));
    assert_eq!(r.data.to_string(), "fd00::1");
}
