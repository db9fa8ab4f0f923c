//! httpGet, tcpSocket, grpc and exec probes, each against a real server.

use k8s_openapi::api::core::v1::{
    ExecAction, GRPCAction, HTTPGetAction, HTTPHeader, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use super::fakes::{self, closed_port, drain, http_server, named_port, target, FakeRuntime};
use crate::kubelet::prober::{run_probe, ProbeOutcome};

fn http_probe(port: IntOrString, path: &str) -> HTTPGetAction {
    HTTPGetAction {
        port,
        path: Some(path.into()),
        ..Default::default()
    }
}

async fn probe_http(
    action: HTTPGetAction,
    ports: Vec<k8s_openapi::api::core::v1::ContainerPort>,
) -> ProbeOutcome {
    let probe = Probe {
        http_get: Some(action),
        ..Default::default()
    };
    run_probe(&probe, &target(ports)).await
}

#[tokio::test]
async fn http_status_decides() {
    let (port, mut seen) = http_server(None).await;
    let p = IntOrString::Int(i32::from(port));
    assert_eq!(
        probe_http(http_probe(p.clone(), "/ok"), vec![]).await,
        ProbeOutcome::Success
    );
    assert_eq!(
        probe_http(http_probe(p.clone(), "/fail"), vec![]).await,
        ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
    );
    assert_eq!(
        probe_http(http_probe(p.clone(), "/missing"), vec![]).await,
        ProbeOutcome::Failure("HTTP probe failed with statuscode: 404".into())
    );
    // A relative path and a query go as kubelet sends them.
    assert_eq!(
        probe_http(http_probe(p, "healthz?deep=1"), vec![]).await,
        ProbeOutcome::Success
    );
    let paths: Vec<String> = drain(&mut seen).into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/ok", "/fail", "/missing", "/healthz?deep=1"]);
}

#[tokio::test]
async fn http_sends_kubelets_headers() {
    let (port, mut seen) = http_server(None).await;
    let mut action = http_probe(IntOrString::Int(i32::from(port)), "/ok");
    assert_eq!(
        probe_http(action.clone(), vec![]).await,
        ProbeOutcome::Success
    );
    let got = drain(&mut seen).remove(0).headers;
    assert_eq!(got["user-agent"], "kube-probe/1.33");
    assert_eq!(got["accept"], "*/*");
    assert_eq!(got["host"], format!("127.0.0.1:{port}"));
    assert_eq!(got["connection"], "close");

    let header = |name: &str, value: &str| HTTPHeader {
        name: name.into(),
        value: value.into(),
    };
    action.http_headers = Some(vec![
        header("X-Custom", "a"),
        header("x-custom", "b"),
        header("Host", "app.example"),
        header("User-Agent", "mine"),
        header("Accept", ""),
    ]);
    assert_eq!(probe_http(action, vec![]).await, ProbeOutcome::Success);
    let got = drain(&mut seen).remove(0).headers;
    let custom: Vec<_> = got.get_all("x-custom").iter().collect();
    assert_eq!(custom, ["a", "b"]);
    assert_eq!(got["host"], "app.example");
    assert_eq!(got["user-agent"], "mine");
    assert!(
        got.get("accept").is_none(),
        "an empty Accept removes the default"
    );
}

#[tokio::test]
async fn http_port_by_name() {
    let (port, _seen) = http_server(None).await;
    let ports = vec![named_port("metrics", 1), named_port("http", port)];
    let by_name = http_probe(IntOrString::String("http".into()), "/ok");
    assert_eq!(
        probe_http(by_name, ports.clone()).await,
        ProbeOutcome::Success
    );
    let as_string = http_probe(IntOrString::String(port.to_string()), "/ok");
    assert_eq!(probe_http(as_string, vec![]).await, ProbeOutcome::Success);
    let unknown = http_probe(IntOrString::String("admin".into()), "/ok");
    assert_eq!(
        probe_http(unknown, ports).await,
        ProbeOutcome::Error("strconv.Atoi: parsing \"admin\": invalid syntax".into())
    );
    let zero = http_probe(IntOrString::Int(0), "/ok");
    assert_eq!(
        probe_http(zero, vec![]).await,
        ProbeOutcome::Error("invalid port number: 0".into())
    );
}

#[tokio::test]
async fn http_redirects() {
    let (port, mut seen) = http_server(None).await;
    let p = IntOrString::Int(i32::from(port));
    // Same host: followed.
    assert_eq!(
        probe_http(http_probe(p.clone(), "/moved"), vec![]).await,
        ProbeOutcome::Success
    );
    let paths: Vec<String> = drain(&mut seen).into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/moved", "/ok"]);

    // Another host: not followed; success with a warning and at most 10 KiB of body.
    match probe_http(http_probe(p.clone(), "/away"), vec![]).await {
        ProbeOutcome::Warning(w) => {
            let prefix = "Probe terminated redirects, Response body: ";
            assert!(w.starts_with(prefix), "{w}");
            assert_eq!(w.len(), prefix.len() + 10 * 1024);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(drain(&mut seen).len(), 1);

    // A loop: Go's client stops on the tenth redirect.
    match probe_http(http_probe(p, "/loop"), vec![]).await {
        ProbeOutcome::Failure(m) => assert!(m.ends_with(": stopped after 10 redirects"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(drain(&mut seen).len(), 10);
}

#[tokio::test]
async fn http_timeout_and_refused() {
    let (port, _seen) = http_server(None).await;
    let probe = Probe {
        http_get: Some(http_probe(IntOrString::Int(i32::from(port)), "/slow")),
        timeout_seconds: Some(1),
        ..Default::default()
    };
    assert_eq!(
        run_probe(&probe, &target(vec![])).await,
        ProbeOutcome::Failure(format!(
            "Get \"http://127.0.0.1:{port}/slow\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        ))
    );

    let closed = closed_port().await;
    assert_eq!(
        probe_http(http_probe(IntOrString::Int(i32::from(closed)), "/"), vec![]).await,
        ProbeOutcome::Failure(format!(
            "Get \"http://127.0.0.1:{closed}/\": dial tcp 127.0.0.1:{closed}: connect: connection refused"
        ))
    );

    let mut no_ip = target(vec![]);
    no_ip.pod_ip = None;
    let probe = Probe {
        http_get: Some(http_probe(IntOrString::Int(80), "/")),
        ..Default::default()
    };
    assert!(matches!(
        run_probe(&probe, &no_ip).await,
        ProbeOutcome::Error(_)
    ));
}

#[tokio::test]
async fn https_does_not_verify() {
    let (tls_port, mut seen) = http_server(Some(fakes::tls_config())).await;
    let mut action = http_probe(IntOrString::Int(i32::from(tls_port)), "/ok");
    action.scheme = Some("HTTPS".into());
    assert_eq!(
        probe_http(action.clone(), vec![]).await,
        ProbeOutcome::Success
    );
    assert_eq!(drain(&mut seen).len(), 1);

    // HTTPS to a plain HTTP server fails as Go's client does.
    let (plain_port, _seen) = http_server(None).await;
    action.port = IntOrString::Int(i32::from(plain_port));
    assert_eq!(
        probe_http(action, vec![]).await,
        ProbeOutcome::Failure(format!(
            "Get \"https://127.0.0.1:{plain_port}/ok\": http: server gave HTTP response to HTTPS client"
        ))
    );
}

#[tokio::test]
async fn tcp_open_and_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().port();
    let tcp = |port: IntOrString, host: Option<&str>| Probe {
        tcp_socket: Some(TCPSocketAction {
            port,
            host: host.map(Into::into),
        }),
        ..Default::default()
    };
    let t = target(vec![named_port("db", open)]);
    assert_eq!(
        run_probe(&tcp(IntOrString::Int(i32::from(open)), None), &t).await,
        ProbeOutcome::Success
    );
    assert_eq!(
        run_probe(&tcp(IntOrString::String("db".into()), None), &t).await,
        ProbeOutcome::Success
    );
    assert_eq!(
        run_probe(
            &tcp(IntOrString::Int(i32::from(open)), Some("localhost")),
            &t
        )
        .await,
        ProbeOutcome::Success
    );
    drop(listener);
    assert_eq!(
        run_probe(&tcp(IntOrString::Int(i32::from(open)), None), &t).await,
        ProbeOutcome::Failure(format!(
            "dial tcp 127.0.0.1:{open}: connect: connection refused"
        ))
    );
}

async fn grpc_health_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("up", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("down", ServingStatus::NotServing)
        .await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    port
}

fn grpc(port: u16, service: Option<&str>) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port: i32::from(port),
            service: service.map(Into::into),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_health_check() {
    let port = grpc_health_server().await;
    let t = target(vec![]);
    assert_eq!(
        run_probe(&grpc(port, None), &t).await,
        ProbeOutcome::Success
    );
    assert_eq!(
        run_probe(&grpc(port, Some("up")), &t).await,
        ProbeOutcome::Success
    );
    assert_eq!(
        run_probe(&grpc(port, Some("down")), &t).await,
        ProbeOutcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
    );
    match run_probe(&grpc(port, Some("nobody")), &t).await {
        ProbeOutcome::Failure(m) => {
            assert!(
                m.starts_with("error: health rpc probe failed: rpc error: code = NotFound desc = "),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }

    // A gRPC server without the health service.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FakeRuntime::default())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    match run_probe(&grpc(other, None), &t).await {
        ProbeOutcome::Failure(m) => assert!(
            m.starts_with("error: this server does not implement the grpc health protocol (grpc.health.v1.Health)"),
            "{m}"
        ),
        o => panic!("{o:?}"),
    }

    let closed = closed_port().await;
    assert_eq!(
        run_probe(&grpc(closed, None), &t).await,
        ProbeOutcome::Failure(format!(
            "error: health rpc probe failed: rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp {}: connect: connection refused\"",
            fakes::addr(closed)
        ))
    );
}

fn exec(cmd: &[&str]) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(cmd.iter().map(|s| s.to_string()).collect()),
        }),
        timeout_seconds: Some(7),
        ..Default::default()
    }
}

#[tokio::test]
async fn exec_through_exec_sync() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = FakeRuntime::default();
    let seen = runtime.seen.clone();
    let t = runtime.serve(dir.path()).await;

    assert_eq!(run_probe(&exec(&["true"]), &t).await, ProbeOutcome::Success);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].container_id, "c0ffee");
        assert_eq!(seen[0].cmd, ["true"]);
        assert_eq!(seen[0].timeout, 7);
    }
    // The output, stdout then stderr, is the failure's message.
    assert_eq!(
        run_probe(&exec(&["false", "x"]), &t).await,
        ProbeOutcome::Failure("out\nerr\n".into())
    );
    match run_probe(&exec(&["big"]), &t).await {
        ProbeOutcome::Failure(m) => assert_eq!(m.len(), 10 * 1024),
        o => panic!("{o:?}"),
    }
    assert_eq!(
        run_probe(&exec(&["sleep", "60"]), &t).await,
        ProbeOutcome::Failure("command \"sleep 60\" timed out".into())
    );
    assert_eq!(
        run_probe(&exec(&["gone"]), &t).await,
        ProbeOutcome::Error(
            "rpc error: code = NotFound desc = container c0ffee is not running".into()
        )
    );
}

#[tokio::test]
async fn no_handler_is_an_error() {
    assert_eq!(
        run_probe(&Probe::default(), &target(vec![])).await,
        ProbeOutcome::Error("missing probe handler".into())
    );
}
