//! CRI streaming of `podrun agent`, after critest's "Streaming" specs: Exec, Attach and
//! PortForward return URLs on the agent's streaming server, and kubectl-style clients
//! (`podrun_agent::streaming::client`, SPDY/3.1 and WebSocket v4/v5) run commands, attach
//! to a container's stdio, and forward a pod port through them.

mod common;
mod cri_common;

use std::time::Duration;

use cri_common::{Agent, NGINX};
use podrun_agent::streaming::client::{self, ExecOptions, Transport};
use podrun_cri_proto::v1;

async fn exec_url(a: &mut Agent, c: &str, cmd: &[&str], o: ExecOptions) -> String {
    let url =
        a.rt.exec(v1::ExecRequest {
            container_id: c.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: o.tty,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
            audit_request_id: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("Exec: {e}"))
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    url
}

/// The URL of an Attach asking for the streams of `o`.
async fn attach_url(a: &mut Agent, c: &str, o: &ExecOptions) -> String {
    a.rt.attach(v1::AttachRequest {
        container_id: c.to_string(),
        tty: o.tty,
        stdin: o.stdin,
        stdout: o.stdout,
        stderr: o.stderr,
        audit_request_id: String::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("Attach: {e}"))
    .into_inner()
    .url
}

async fn with_timeout<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy_and_websocket() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("exec").await;
    let c = a
        .run_container(&sb, &cfg, a.container_config("c", &["sleep", "3600"]))
        .await;
    let all = ExecOptions {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };

    // stdin to EOF, separate stdout and stderr, the exit code: where EOF can be sent.
    for t in [Transport::Spdy, Transport::WebSocketV5] {
        let url = exec_url(&mut a, &c, &["sh", "-c", "cat; echo err >&2; exit 3"], all).await;
        let out = with_timeout("exec", client::exec(&url, t, all, Some(b"hello stdin\n")))
            .await
            .unwrap_or_else(|e| panic!("{t:?}: {e}"));
        assert_eq!(out.stdout, b"hello stdin\n", "{t:?}");
        assert_eq!(out.stderr, b"err\n", "{t:?}");
        assert_eq!(out.exit_code, 3, "{t:?}: {out:?}");
    }
    // v4 WebSocket (binary and base64) cannot half-close stdin: output only.
    let out_only = ExecOptions {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    for t in [
        Transport::WebSocketV4,
        Transport::WebSocketV4Base64,
        Transport::Spdy,
    ] {
        let url = exec_url(
            &mut a,
            &c,
            &["sh", "-c", "echo out; echo err >&2"],
            out_only,
        )
        .await;
        let out = with_timeout("exec", client::exec(&url, t, out_only, None))
            .await
            .unwrap_or_else(|e| panic!("{t:?}: {e}"));
        assert_eq!(out.stdout, b"out\n", "{t:?}");
        assert_eq!(out.stderr, b"err\n", "{t:?}");
        assert_eq!(out.exit_code, 0, "{t:?}: {out:?}");
        assert!(out.error.is_none(), "{t:?}: {out:?}");
    }

    // A URL is good for one use only.
    let url = exec_url(&mut a, &c, &["true"], out_only).await;
    with_timeout("exec", client::exec(&url, Transport::Spdy, out_only, None))
        .await
        .unwrap();
    let again = with_timeout("exec", client::exec(&url, Transport::Spdy, out_only, None)).await;
    assert!(
        matches!(again, Err(client::ClientError::Http { status: 404, .. })),
        "{again:?}"
    );

    // A missing command fails the exec, reported on the error stream.
    let url = exec_url(&mut a, &c, &["/no/such/binary"], out_only).await;
    let out = with_timeout("exec", client::exec(&url, Transport::Spdy, out_only, None))
        .await
        .unwrap();
    assert_ne!(out.exit_code, 0, "{out:?}");

    // Invalid requests: no stream at all, or stderr with a tty.
    let bad =
        a.rt.exec(v1::ExecRequest {
            container_id: c.clone(),
            cmd: vec!["true".into()],
            ..Default::default()
        })
        .await;
    assert!(bad.is_err(), "an exec without streams was accepted");
    let bad =
        a.rt.exec(v1::ExecRequest {
            container_id: c.clone(),
            cmd: vec!["true".into()],
            tty: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await;
    assert!(bad.is_err(), "tty with stderr was accepted");
    let bad =
        a.rt.exec(v1::ExecRequest {
            container_id: "f00d".repeat(16),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::NotFound);
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_tty() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("tty").await;
    let c = a
        .run_container(&sb, &cfg, a.container_config("c", &["sleep", "3600"]))
        .await;
    let tty = ExecOptions {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    for t in [
        Transport::Spdy,
        Transport::WebSocketV5,
        Transport::WebSocketV4,
    ] {
        let url = exec_url(&mut a, &c, &["sh"], tty).await;
        let mut rc = with_timeout("connect", client::RemoteCommand::connect(&url, t, tty))
            .await
            .unwrap_or_else(|e| panic!("{t:?}: {e}"));
        rc.resize(podrun_agent::streaming::TerminalSize {
            width: 123,
            height: 45,
        })
        .await
        .unwrap();
        rc.write_stdin(b"stty size; [ -t 0 ] && echo is-a-tty; exit 7\n")
            .await
            .unwrap();
        let out = with_timeout("tty exec", rc.wait()).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("is-a-tty"), "{t:?}: {text}");
        assert!(text.contains("45 123"), "{t:?}: resize not applied: {text}");
        // A terminal turns \n into \r\n.
        assert!(text.contains("\r\n"), "{t:?}: {text:?}");
        assert_eq!(out.exit_code, 7, "{t:?}: {out:?}");
    }
    a.finish().await;
}

/// The `/dev/pts/N` path a terminal printed (`tty`'s output), once its line is complete.
fn pts_path(out: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(out);
    let rest = &text[text.find("/dev/pts/")?..];
    let end = rest.find(['\r', '\n'])?;
    Some(rest[..end].to_owned())
}

/// Run `tty` in an interactive shell through Exec with a terminal; while the shell still
/// runs, return what `tty` printed, the `/dev/pts/N` path it names (if any), and the
/// command, still open, for the caller to end.
async fn exec_tty(a: &mut Agent, c: &str) -> (String, Option<String>, client::RemoteCommand) {
    let tty = ExecOptions {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let url = exec_url(a, c, &["sh"], tty).await;
    let mut rc = with_timeout(
        "connect",
        client::RemoteCommand::connect(&url, Transport::Spdy, tty),
    )
    .await
    .unwrap();
    // The terminal echoes the input line: wait for what only the shell's output has.
    rc.write_stdin(b"tty; echo done-$((6*7))\n").await.unwrap();
    let seen = std::cell::RefCell::new(String::new());
    with_timeout(
        "the output of tty",
        rc.wait_stdout(|o| {
            *seen.borrow_mut() = String::from_utf8_lossy(o).into_owned();
            o.windows(7).any(|w| w == b"done-42")
        }),
    )
    .await
    .unwrap();
    let seen = seen.into_inner();
    let path = pts_path(seen.as_bytes());
    (seen, path, rc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_tty_is_a_terminal_of_the_container() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox(&cri_common::unique("ptsexec")).await;
    let root = a
        .run_container(&sb, &cfg, a.container_config("root", &["sleep", "3600"]))
        .await;
    let mut user = a.container_config("user", &["sleep", "3600"]);
    let linux = user.linux.as_mut().unwrap();
    linux.security_context.as_mut().unwrap().run_as_user = Some(v1::Int64Value { value: 1000 });
    let user = a.run_container(&sb, &cfg, user).await;
    for (c, uid) in [(&root, 0), (&user, 1000)] {
        let (seen, path, mut rc) = exec_tty(&mut a, c).await;
        let path = path.unwrap_or_else(|| panic!("tty named no /dev/pts path: {seen:?}"));
        // The terminal is one of the container's own devpts: another process of the
        // container sees it, owned by the exec's user and the devpts group (tty, 5).
        let (code, _, err) = a.exec_any(c, &["test", "-e", &path]).await;
        assert_eq!(code, 0, "{path} does not exist in the container: {err}");
        let owner = a.exec(c, &["stat", "-c", "%u %g", &path]).await;
        assert_eq!(owner.trim(), format!("{uid} 5"), "owner of {path}");
        rc.write_stdin(b"exit 3\n").await.unwrap();
        let out = with_timeout("tty exec", rc.wait()).await.unwrap();
        assert_eq!(out.exit_code, 3, "{out:?}");
    }
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_container_gets_a_terminal_of_its_own_and_can_be_attached() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox(&cri_common::unique("ptsinit")).await;
    // The init's terminal is the first of the container's devpts.
    let mut c = a.container_config(
        "term",
        &[
            "sh",
            "-c",
            "tty; stat -c 'owner %u %g' $(tty); echo ready; while read x; do stty size; echo got-$x; done",
        ],
    );
    c.tty = true;
    c.stdin = true;
    let linux = c.linux.as_mut().unwrap();
    linux.security_context.as_mut().unwrap().run_as_user = Some(v1::Int64Value { value: 1000 });
    let c = a.run_container(&sb, &cfg, c).await;
    let log = std::path::Path::new(&cfg.log_directory).join("term.log");
    let lines = cri_common::eventually("tty output in the log", Duration::from_secs(30), || {
        let lines = cri_common::parse_cri_log(&log);
        let found = lines.iter().any(|(_, _, _, l)| l.trim_end() == "ready");
        async move { found.then_some(lines) }
    })
    .await;
    let text: Vec<&str> = lines.iter().map(|(_, _, _, l)| l.trim_end()).collect();
    assert!(text.contains(&"/dev/pts/0"), "log: {text:?}");
    assert!(text.contains(&"owner 1000 5"), "log: {text:?}");
    let (code, _, err) = a.exec_any(&c, &["test", "-e", "/dev/pts/0"]).await;
    assert_eq!(code, 0, "/dev/pts/0 is not in the container: {err}");

    // Attach with a terminal: input reaches the shell through the terminal, resizes
    // apply to it, and its output comes back as one stream.
    let opts = ExecOptions {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let url = attach_url(&mut a, &c, &opts).await;
    let mut rc = with_timeout(
        "attach",
        client::RemoteCommand::connect(&url, Transport::WebSocketV5, opts),
    )
    .await
    .unwrap();
    rc.resize(podrun_agent::streaming::TerminalSize {
        width: 123,
        height: 45,
    })
    .await
    .unwrap();
    // The resize and the input travel separately: send lines until one was answered
    // after the resize had been applied.
    for i in 0.. {
        let line = format!("line{i}\n");
        rc.write_stdin(line.as_bytes()).await.unwrap();
        let answer = format!("got-line{i}\r\n");
        with_timeout(
            "attach output",
            rc.wait_stdout(|o| o.windows(answer.len()).any(|w| w == answer.as_bytes())),
        )
        .await
        .unwrap();
        let sized = std::cell::Cell::new(false);
        rc.wait_stdout(|o| {
            sized.set(String::from_utf8_lossy(o).contains("45 123\r\ngot-"));
            true
        })
        .await
        .unwrap();
        if sized.get() {
            break;
        }
        assert!(i < 100, "the resize never reached the terminal");
    }
    drop(rc);
    // Detaching leaves the container running.
    assert_eq!(
        a.container_status(&c).await.unwrap().state,
        v1::ContainerState::ContainerRunning as i32
    );
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_a_container() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("attach").await;
    // An interactive container: cat echoes stdin; closing stdin (stdin_once) ends it.
    let mut c = a.container_config("cat", &["cat"]);
    c.stdin = true;
    c.stdin_once = true;
    let c = a.run_container(&sb, &cfg, c).await;
    let opts = ExecOptions {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let url = attach_url(&mut a, &c, &opts).await;
    let mut rc = with_timeout(
        "attach",
        client::RemoteCommand::connect(&url, Transport::Spdy, opts),
    )
    .await
    .unwrap();
    rc.write_stdin(b"ping through attach\n").await.unwrap();
    with_timeout(
        "attach output",
        rc.wait_stdout(|o| o.windows(7).any(|w| w == b"through")),
    )
    .await
    .unwrap();
    rc.close_stdin().await.unwrap();
    let out = with_timeout("attach end", rc.wait()).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("ping through attach"));
    let st = a
        .wait_container_state(&c, v1::ContainerState::ContainerExited)
        .await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    // What went through attach is in the container log as well.
    let log = std::path::Path::new(&cfg.log_directory).join("cat.log");
    let lines = cri_common::parse_cri_log(&log);
    assert!(
        lines
            .iter()
            .any(|(_, s, _, l)| s == "stdout" && l == "ping through attach"),
        "{lines:?}"
    );

    // Attach over WebSocket v5 to a long-running writer: output arrives.
    let w = a
        .run_container(
            &sb,
            &cfg,
            a.container_config(
                "writer",
                &["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
            ),
        )
        .await;
    let out_only = ExecOptions {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let url = attach_url(&mut a, &w, &out_only).await;
    let mut rc = with_timeout(
        "attach ws",
        client::RemoteCommand::connect(&url, Transport::WebSocketV5, out_only),
    )
    .await
    .unwrap();
    with_timeout(
        "attach ws output",
        rc.wait_stdout(|o| o.windows(4).filter(|w| *w == b"tick").count() >= 2),
    )
    .await
    .unwrap();
    drop(rc);
    // Detaching does not stop the container.
    assert_eq!(
        a.container_status(&w).await.unwrap().state,
        v1::ContainerState::ContainerRunning as i32
    );
    a.finish().await;
}

async fn port_forward_url(a: &mut Agent, sb: &str, ports: &[i32]) -> String {
    a.rt.port_forward(v1::PortForwardRequest {
        pod_sandbox_id: sb.to_string(),
        port: ports.to_vec(),
    })
    .await
    .unwrap_or_else(|e| panic!("PortForward: {e}"))
    .into_inner()
    .url
}

async fn read_until(s: &mut client::PortForwardStream, needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while !out.windows(needle.len()).any(|w| w == needle) {
        match s.read().await {
            Some(b) => out.extend_from_slice(&b),
            None => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_spdy_and_websocket() {
    require_root!();
    let mut a = Agent::start(&["nginx"]).await;
    let (sb, cfg) = a.sandbox("pf").await;
    let mut web = a.container_config("nginx", &[]);
    web.command.clear();
    web.image.as_mut().unwrap().image = NGINX.into();
    let web = a.run_container(&sb, &cfg, web).await;
    // nginx needs a moment to listen; ExecSync polls from inside the pod.
    cri_common::eventually("nginx to listen", Duration::from_secs(30), || {
        let mut rt = a.rt.clone();
        let web = web.clone();
        async move {
            let r = rt
                .exec_sync(v1::ExecSyncRequest {
                    container_id: web,
                    cmd: vec![
                        "sh".into(),
                        "-c".into(),
                        "cat /proc/net/tcp | grep -q ':0050 '".into(),
                    ],
                    timeout: 10,
                })
                .await
                .ok()?
                .into_inner();
            (r.exit_code == 0).then_some(())
        }
    })
    .await;

    // SPDY: two connections on one session.
    let url = port_forward_url(&mut a, &sb, &[80]).await;
    let session = with_timeout("pf connect", client::PortForwardSpdy::connect(&url))
        .await
        .unwrap();
    for _ in 0..2 {
        let mut s = with_timeout("pf open", session.open(80)).await.unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        s.close_write().await.unwrap();
        let body = with_timeout("pf read", s.read_to_end()).await;
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("Welcome to nginx!"), "{body}");
        assert_eq!(with_timeout("pf error", s.error()).await, "");
    }
    // A closed port: the error stream says so.
    let mut s = with_timeout("pf open", session.open(81)).await.unwrap();
    let _ = s.write_all(b"x").await;
    let _ = with_timeout("pf read closed", s.read_to_end()).await;
    let err = with_timeout("pf error", s.error()).await;
    assert!(!err.is_empty(), "no error for a closed port");
    session.close().await;

    // WebSocket: the ports go in the query.
    let url = port_forward_url(&mut a, &sb, &[80]).await;
    let mut streams = with_timeout("pf ws", client::port_forward_websocket(&url, &[80], false))
        .await
        .unwrap();
    let mut s = streams.remove(0);
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let body = with_timeout("pf ws read", read_until(&mut s, b"</html>")).await;
    assert!(
        String::from_utf8_lossy(&body).contains("Welcome to nginx!"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    drop(s);

    // Port forward into an unknown sandbox is NotFound.
    let e =
        a.rt.port_forward(v1::PortForwardRequest {
            pod_sandbox_id: "f00d".repeat(16),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let _ = cfg;
    a.finish().await;
}
