//! End-to-end tests: the server on 127.0.0.1:0 with a fake runtime, driven by the
//! clients in [`super::client`] over SPDY and WebSocket v4/v5.

use std::sync::Arc;
use std::time::Duration;

use podrun_cri_proto::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{self, ClientError, ExecOptions, PortForwardSpdy, Transport};
use super::*;

/// Exec: `["echo", code]` copies stdin to stdout (or writes "hello\n" without stdin),
/// writes "oops\n" to stderr and exits with `code`; `["resize", n]` prints n resize
/// events as "WxH\n"; `["fail"]` fails to start. Attach echoes stdin. Port 1 refuses
/// connections; any other port is an echo server.
struct FakeRuntime;

impl StreamRuntime for FakeRuntime {
    fn exec(
        &self,
        _container_id: String,
        cmd: Vec<String>,
        _tty: bool,
        mut streams: Streams,
    ) -> BoxFuture<Result<i32, String>> {
        Box::pin(async move {
            match cmd[0].as_str() {
                "fail" => Err("container not running".to_string()),
                "resize" => {
                    let n: usize = cmd[1].parse().unwrap();
                    let mut rx = streams.resize.take().expect("resize stream");
                    let out = streams.stdout.as_mut().expect("stdout");
                    for _ in 0..n {
                        let s = rx.recv().await.ok_or("resize ended")?;
                        out.write_all(format!("{}x{}\n", s.width, s.height).as_bytes())
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(0)
                }
                _ => {
                    let code: i32 = cmd.get(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                    if let Some(err) = streams.stderr.as_mut() {
                        err.write_all(b"oops\n").await.map_err(|e| e.to_string())?;
                    }
                    match (streams.stdin.as_mut(), streams.stdout.as_mut()) {
                        (Some(i), Some(o)) => {
                            tokio::io::copy(i, o).await.map_err(|e| e.to_string())?;
                        }
                        (None, Some(o)) => {
                            o.write_all(b"hello\n").await.map_err(|e| e.to_string())?;
                        }
                        _ => {}
                    }
                    Ok(code)
                }
            }
        })
    }

    fn attach(
        &self,
        _container_id: String,
        _tty: bool,
        mut streams: Streams,
    ) -> BoxFuture<Result<(), String>> {
        Box::pin(async move {
            if let (Some(i), Some(o)) = (streams.stdin.as_mut(), streams.stdout.as_mut()) {
                tokio::io::copy(i, o).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    fn port_forward(
        &self,
        _sandbox_id: String,
        port: u16,
    ) -> BoxFuture<Result<Box<dyn AsyncStream>, String>> {
        Box::pin(async move {
            if port == 1 {
                return Err("connection refused".to_string());
            }
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(theirs);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
            Ok(Box::new(ours) as Box<dyn AsyncStream>)
        })
    }
}

async fn server() -> StreamServer {
    StreamServer::start("127.0.0.1:0".parse().unwrap(), Arc::new(FakeRuntime))
        .await
        .unwrap()
}

fn exec_req(cmd: &[&str], stdin: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
        ..Default::default()
    }
}

fn opts(stdin: bool, tty: bool) -> ExecOptions {
    ExecOptions {
        stdin,
        stdout: true,
        stderr: !tty,
        tty,
    }
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 253) as u8).collect()
}

const ALL: [Transport; 4] = [
    Transport::Spdy,
    Transport::WebSocketV4,
    Transport::WebSocketV4Base64,
    Transport::WebSocketV5,
];

#[tokio::test]
async fn exec_output_and_exit_codes_on_every_transport() {
    let s = server().await;
    for t in ALL {
        for code in [0, 3] {
            let url = s
                .get_exec(&exec_req(&["echo", &code.to_string()], false, false))
                .unwrap()
                .url;
            assert!(url.starts_with(&format!("http://{}/exec/", s.local_addr())));
            let out = client::exec(&url, t, opts(false, false), None)
                .await
                .unwrap();
            assert_eq!(out.stdout, b"hello\n", "{t:?}");
            assert_eq!(out.stderr, b"oops\n", "{t:?}");
            assert_eq!(out.exit_code, code, "{t:?}: {}", out.status);
            assert_eq!(out.error, None);
            if code == 0 {
                assert_eq!(out.status, r#"{"metadata":{},"status":"Success"}"#);
            }
        }
    }
}

#[tokio::test]
async fn exec_stdin_eof_large_echo() {
    let s = server().await;
    let data = payload(1 << 20);
    for t in [Transport::Spdy, Transport::WebSocketV5] {
        let url = s
            .get_exec(&exec_req(&["echo", "0"], true, false))
            .unwrap()
            .url;
        let out = client::exec(&url, t, opts(true, false), Some(&data))
            .await
            .unwrap();
        assert_eq!(out.stdout.len(), data.len(), "{t:?}");
        assert!(out.stdout == data, "{t:?}");
        assert_eq!(out.exit_code, 0);
    }
}

#[tokio::test]
async fn exec_runtime_failure_is_reported() {
    let s = server().await;
    for t in [Transport::Spdy, Transport::WebSocketV4] {
        let url = s.get_exec(&exec_req(&["fail"], false, false)).unwrap().url;
        let out = client::exec(&url, t, opts(false, false), None)
            .await
            .unwrap();
        assert_eq!(out.exit_code, -1);
        assert!(out.error.unwrap().contains("container not running"));
    }
}

#[tokio::test]
async fn tty_resize_events_reach_the_runtime() {
    let s = server().await;
    for t in [
        Transport::Spdy,
        Transport::WebSocketV4,
        Transport::WebSocketV5,
    ] {
        let url = s
            .get_exec(&exec_req(&["resize", "2"], false, true))
            .unwrap()
            .url;
        let mut rc = client::RemoteCommand::connect(&url, t, opts(false, true))
            .await
            .unwrap();
        rc.resize(TerminalSize {
            width: 80,
            height: 24,
        })
        .await
        .unwrap();
        rc.wait_stdout(|o| o == b"80x24\n").await.unwrap();
        rc.resize(TerminalSize {
            width: 120,
            height: 40,
        })
        .await
        .unwrap();
        let out = rc.wait().await.unwrap();
        assert_eq!(out.stdout, b"80x24\n120x40\n", "{t:?}");
        assert!(out.stderr.is_empty());
        assert_eq!(out.exit_code, 0);
    }
}

#[tokio::test]
async fn interactive_exec_echoes_before_eof() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["echo", "5"], true, false))
        .unwrap()
        .url;
    let mut rc = client::RemoteCommand::connect(&url, Transport::Spdy, opts(true, false))
        .await
        .unwrap();
    assert_eq!(rc.protocol(), "v4.channel.k8s.io");
    rc.write_stdin(b"ping\n").await.unwrap();
    rc.wait_stdout(|o| o == b"ping\n").await.unwrap();
    rc.close_stdin().await.unwrap();
    let out = rc.wait().await.unwrap();
    assert_eq!(out.exit_code, 5);
}

#[tokio::test]
async fn attach_over_spdy_and_websocket() {
    let s = server().await;
    for t in [Transport::Spdy, Transport::WebSocketV5] {
        let url = s
            .get_attach(&AttachRequest {
                container_id: "c1".into(),
                stdin: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            })
            .unwrap()
            .url;
        assert!(url.contains("/attach/"));
        let out = client::exec(&url, t, opts(true, false), Some(b"abc"))
            .await
            .unwrap();
        assert_eq!(out.stdout, b"abc");
        assert_eq!(out.exit_code, 0);
    }
}

#[tokio::test]
async fn token_is_single_use() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["echo", "0"], false, false))
        .unwrap()
        .url;
    client::exec(&url, Transport::Spdy, opts(false, false), None)
        .await
        .unwrap();
    for t in [Transport::Spdy, Transport::WebSocketV5] {
        match client::exec(&url, t, opts(false, false), None).await {
            Err(ClientError::Http { status: 404, .. }) => {}
            other => panic!("reused token: {other:?}"),
        }
    }
    // Unknown paths are 404 too.
    let bogus = format!("http://{}/exec/nope", s.local_addr());
    assert!(matches!(
        client::exec(&bogus, Transport::Spdy, opts(false, false), None).await,
        Err(ClientError::Http { status: 404, .. })
    ));
}

#[tokio::test]
async fn expired_token_is_refused() {
    let ttl = Duration::from_millis(50);
    let s =
        StreamServer::start_with_ttl("127.0.0.1:0".parse().unwrap(), Arc::new(FakeRuntime), ttl)
            .await
            .unwrap();
    let url = s
        .get_exec(&exec_req(&["echo", "0"], false, false))
        .unwrap()
        .url;
    // Wait until the token is certainly older than its TTL.
    let issued = std::time::Instant::now();
    while issued.elapsed() <= ttl {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(
        client::exec(&url, Transport::Spdy, opts(false, false), None).await,
        Err(ClientError::Http { status: 404, .. })
    ));
}

#[tokio::test]
async fn requests_are_validated() {
    let s = server().await;
    fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
        r.unwrap_err().code()
    }
    let mut r = exec_req(&["echo"], false, false);
    r.container_id.clear();
    assert_eq!(code(s.get_exec(&r)), tonic::Code::InvalidArgument);
    assert_eq!(
        code(s.get_exec(&exec_req(&[], false, false))),
        tonic::Code::InvalidArgument
    );
    let mut r = exec_req(&["echo"], false, false);
    (r.stdout, r.stderr) = (false, false);
    assert_eq!(code(s.get_exec(&r)), tonic::Code::InvalidArgument);
    let mut r = exec_req(&["echo"], false, true);
    r.stderr = true;
    assert_eq!(code(s.get_exec(&r)), tonic::Code::InvalidArgument);
    assert_eq!(
        code(s.get_attach(&AttachRequest::default())),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(s.get_port_forward(&PortForwardRequest::default())),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test]
async fn spdy_upgrade_without_common_protocol_is_forbidden() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["echo", "0"], false, false))
        .unwrap()
        .url;
    let path = url
        .split_once(&s.local_addr().to_string())
        .unwrap()
        .1
        .to_string();
    let mut tcp = tokio::net::TcpStream::connect(s.local_addr())
        .await
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v9.channel.k8s.io\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 12];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 403");
}

fn pf_req() -> PortForwardRequest {
    PortForwardRequest {
        pod_sandbox_id: "p1".into(),
        port: vec![8080],
    }
}

#[tokio::test]
async fn port_forward_spdy_large_transfer_and_errors() {
    port_forward_spdy(false).await;
}

#[tokio::test]
async fn port_forward_spdy_tunneled_through_websocket() {
    port_forward_spdy(true).await;
}

async fn port_forward_spdy(tunneled: bool) {
    let s = server().await;
    let url = s.get_port_forward(&pf_req()).unwrap().url;
    assert!(url.contains("/portforward/"));
    let pf = if tunneled {
        PortForwardSpdy::connect_tunneled(&url).await.unwrap()
    } else {
        PortForwardSpdy::connect(&url).await.unwrap()
    };
    let data = payload(1 << 20);
    // Two connections at once on one session.
    let mut a = pf.open(8080).await.unwrap();
    let mut b = pf.open(9090).await.unwrap();
    let da = data.clone();
    let wa = async {
        a.write_all(&da).await.unwrap();
        a.close_write().await.unwrap();
        a.read_to_end().await
    };
    let wb = async {
        b.write_all(b"second").await.unwrap();
        b.close_write().await.unwrap();
        b.read_to_end().await
    };
    let (ra, rb) = tokio::join!(wa, wb);
    assert_eq!(ra.len(), data.len());
    assert!(ra == data);
    assert_eq!(rb, b"second");
    assert_eq!(a.error().await, "");
    // A refused dial is reported on the error stream.
    let mut c = pf.open(1).await.unwrap();
    assert!(c.read_to_end().await.is_empty());
    let e = c.error().await;
    assert!(e.contains("connection refused"), "{e}");
    pf.close().await;
}

#[tokio::test]
async fn port_forward_websocket_large_transfer() {
    let s = server().await;
    for base64 in [false, true] {
        let url = s.get_port_forward(&pf_req()).unwrap().url;
        let mut streams = client::port_forward_websocket(&url, &[8080, 1], base64)
            .await
            .unwrap();
        let refused = streams.pop().unwrap();
        let mut st = streams.pop().unwrap();
        let data = payload(1 << 20);
        let w = st.writer();
        let (_, got) = tokio::join!(
            async { w.write_all(&data).await.unwrap() },
            st.read_exact_len(data.len())
        );
        assert_eq!(got.len(), data.len());
        assert!(got == data);
        let e = refused.error().await;
        assert!(e.contains("connection refused"), "{e}");
    }
}

#[tokio::test]
async fn any_host_header_is_accepted() {
    // Clients that reached the CRI over a unix socket may name it as the Host; the
    // streaming server, like the CRI socket, does not judge it.
    let s = server().await;
    for host in [
        Some("/run/podrun/podrun.sock"),
        Some("%2Frun%2Fpodrun%2Fpodrun.sock"),
        Some("localhost"),
        Some(""),
        None,
    ] {
        let url = s
            .get_exec(&exec_req(&["echo", "0"], false, false))
            .unwrap()
            .url;
        let path = &url[url.find("/exec/").unwrap()..];
        let host_line = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        let req = format!(
            "POST {path} HTTP/1.1\r\n{host_line}Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        );
        let head = response_head(&s, &req).await;
        assert!(head.starts_with("HTTP/1.1 101"), "Host {host:?}: {head}");
    }
}

/// Send a raw HTTP/1.1 request; the response's status line and headers.
async fn response_head(s: &StreamServer, req: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(s.local_addr())
        .await
        .unwrap();
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte))
            .await
            .expect("the server answers")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn websocket_port_forward_refuses_more_ports_than_channels() {
    let s = server().await;
    for (count, expect) in [(129, "HTTP/1.1 400"), (128, "HTTP/1.1 101")] {
        let url = s.get_port_forward(&pf_req()).unwrap().url;
        let path = &url[url.find("/portforward/").unwrap()..];
        let ports: Vec<String> = (1..=count).map(|p| p.to_string()).collect();
        let req = format!(
            "GET {path}?ports={} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n",
            ports.join(",")
        );
        let head = response_head(&s, &req).await;
        assert!(head.starts_with(expect), "{count} ports: {head}");
    }
}
