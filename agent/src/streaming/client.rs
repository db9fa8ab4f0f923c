//! Clients for the streaming server, speaking what kubectl and crictl speak: exec and
//! attach over SPDY/3.1 (`v4.channel.k8s.io`) or WebSocket (`v4`/`v5.channel.k8s.io`),
//! and port forwarding over SPDY (`portforward.k8s.io`) or WebSocket
//! (`v4.channel.k8s.io`). Integration tests and benchmarks drive the server with these.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::remotecommand::channel;
use super::spdy::{self, Session, SpdyError};
use super::websocket::{self, Mux};
use super::TerminalSize;

/// How long a client waits for the server to answer a stream it opens.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad url {0:?}")]
    Url(String),
    /// The server answered the upgrade with an HTTP status (404 for a used or expired token).
    #[error("server answered {status}: {body}")]
    Http { status: u16, body: String },
    #[error(transparent)]
    Spdy(#[from] SpdyError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection closed")]
    Closed,
}

/// Which wire protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// SPDY/3.1 with `v4.channel.k8s.io` (exec/attach) or `portforward.k8s.io`.
    Spdy,
    /// WebSocket `v4.channel.k8s.io` (binary channels, no stdin half-close).
    WebSocketV4,
    /// WebSocket `v4.base64.channel.k8s.io` (base64 text messages).
    WebSocketV4Base64,
    /// WebSocket `v5.channel.k8s.io` (v4 plus the close-channel signal).
    WebSocketV5,
}

/// Which streams an exec or attach asks for; must match the CRI request.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// What a finished exec or attach produced.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// 0 on success, the command's code for `NonZeroExitCode`, -1 for other failures.
    pub exit_code: i32,
    /// The raw content of the error stream (JSON Status from v4 on).
    pub status: String,
    /// The failure message for failures other than a non-zero exit code.
    pub error: Option<String>,
}

/// Output chunks as they arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Stdout,
    Stderr,
}

struct Url {
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::Url(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(ClientError::Url(url.to_string()));
    }
    Ok(Url {
        authority: authority.to_string(),
        path: path.to_string(),
    })
}

/// Sends an upgrade request and reads the response head. On 101 the stream is handed
/// back positioned right after the head (read byte by byte so nothing is over-read).
async fn upgrade(
    url: &str,
    extra_headers: &[(&str, String)],
) -> Result<(TcpStream, Vec<(String, String)>), ClientError> {
    let u = parse_url(url)?;
    let mut tcp = TcpStream::connect(&u.authority).await?;
    let _ = tcp.set_nodelay(true);
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n",
        u.path, u.authority
    );
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut b).await? == 0 {
            return Err(ClientError::Closed);
        }
        head.push(b[0]);
        if head.len() > 64 * 1024 {
            return Err(ClientError::Protocol("response head too large".into()));
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("bad status line in {text:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if status != 101 {
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len.min(64 * 1024)];
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut body)).await;
        return Err(ClientError::Http {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok((tcp, headers))
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

async fn upgrade_spdy(url: &str, protocols: &[&str]) -> Result<(Session, String), ClientError> {
    let mut h: Vec<(&str, String)> = vec![("Upgrade", "SPDY/3.1".into())];
    for p in protocols {
        h.push(("X-Stream-Protocol-Version", p.to_string()));
    }
    let (tcp, headers) = upgrade(url, &h).await?;
    let protocol = find(&headers, "x-stream-protocol-version")
        .unwrap_or("")
        .to_string();
    let (session, _incoming) = Session::new(tcp, spdy::Role::Client);
    Ok((session, protocol))
}

async fn upgrade_ws(
    url: &str,
    protocols: &[&str],
) -> Result<(WebSocketStream<TcpStream>, String), ClientError> {
    let mut key = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))?;
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let h = vec![
        ("Upgrade", "websocket".to_string()),
        ("Sec-WebSocket-Version", "13".to_string()),
        ("Sec-WebSocket-Key", key.clone()),
        ("Sec-WebSocket-Protocol", protocols.join(", ")),
    ];
    let (tcp, headers) = upgrade(url, &h).await?;
    let want = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if find(&headers, "sec-websocket-accept") != Some(want.as_str()) {
        return Err(ClientError::Protocol("bad Sec-WebSocket-Accept".into()));
    }
    let protocol = find(&headers, "sec-websocket-protocol")
        .unwrap_or("")
        .to_string();
    let ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    Ok((ws, protocol))
}

enum RcInput {
    Spdy {
        stdin: Option<spdy::StreamWriter>,
        resize: Option<spdy::StreamWriter>,
        session: Session,
    },
    Ws {
        mux: Mux,
        v5: bool,
    },
}

/// A running exec or attach.
pub struct RemoteCommand {
    protocol: String,
    input: RcInput,
    output: mpsc::UnboundedReceiver<(OutputKind, Bytes)>,
    collected: ExecOutput,
    status: tokio::task::JoinHandle<Vec<u8>>,
}

impl RemoteCommand {
    /// Upgrades `url` (from an ExecResponse or AttachResponse) and opens the streams.
    pub async fn connect(
        url: &str,
        transport: Transport,
        opts: ExecOptions,
    ) -> Result<RemoteCommand, ClientError> {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        match transport {
            Transport::Spdy => {
                let (session, protocol) = upgrade_spdy(
                    url,
                    &[
                        "v4.channel.k8s.io",
                        "v3.channel.k8s.io",
                        "v2.channel.k8s.io",
                        "channel.k8s.io",
                    ],
                )
                .await?;
                let open = |kind: &str| {
                    let session = session.clone();
                    let h = vec![("streamtype".to_string(), kind.to_string())];
                    async move { session.open(h, REPLY_TIMEOUT).await }
                };
                // kubectl's order: error first, then stdin, stdout, stderr, resize.
                let mut error = open("error").await?;
                // The client never writes on the error stream.
                error.writer.close().await?;
                let stdin = match opts.stdin {
                    true => Some(open("stdin").await?.writer),
                    false => None,
                };
                for (want, kind, name) in [
                    (opts.stdout, OutputKind::Stdout, "stdout"),
                    (opts.stderr && !opts.tty, OutputKind::Stderr, "stderr"),
                ] {
                    if want {
                        let mut s = open(name).await?;
                        s.writer.close().await?;
                        let tx = out_tx.clone();
                        tokio::spawn(async move {
                            while let Some(b) = s.reader.read_chunk().await {
                                let _ = tx.send((kind, b));
                            }
                        });
                    }
                }
                let resize = match opts.tty {
                    true => Some(open("resize").await?.writer),
                    false => None,
                };
                let status = tokio::spawn(async move { error.reader.read_to_end().await });
                Ok(RemoteCommand {
                    protocol,
                    input: RcInput::Spdy {
                        stdin,
                        resize,
                        session,
                    },
                    output: out_rx,
                    collected: ExecOutput::default(),
                    status,
                })
            }
            Transport::WebSocketV4 | Transport::WebSocketV4Base64 | Transport::WebSocketV5 => {
                let protocol = match transport {
                    Transport::WebSocketV5 => websocket::V5_BINARY,
                    Transport::WebSocketV4Base64 => websocket::V4_BASE64,
                    _ => websocket::V4_BINARY,
                };
                let (ws, negotiated) = upgrade_ws(url, &[protocol]).await?;
                let (mux, mut rxs) = Mux::start(
                    ws,
                    websocket::is_base64(&negotiated),
                    &[channel::STDOUT, channel::STDERR, channel::ERROR],
                );
                for (ch, kind) in [
                    (channel::STDOUT, OutputKind::Stdout),
                    (channel::STDERR, OutputKind::Stderr),
                ] {
                    let mut rx = rxs.remove(&ch).expect("registered above");
                    let tx = out_tx.clone();
                    tokio::spawn(async move {
                        while let Some(b) = rx.recv().await {
                            let _ = tx.send((kind, b));
                        }
                    });
                }
                let mut err_rx = rxs.remove(&channel::ERROR).expect("registered above");
                let status = tokio::spawn(async move {
                    let mut v = Vec::new();
                    while let Some(b) = err_rx.recv().await {
                        v.extend_from_slice(&b);
                    }
                    v
                });
                let v5 = negotiated == websocket::V5_BINARY;
                Ok(RemoteCommand {
                    protocol: negotiated,
                    input: RcInput::Ws { mux, v5 },
                    output: out_rx,
                    collected: ExecOutput::default(),
                    status,
                })
            }
        }
    }

    /// The sub-protocol the server chose.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Sends bytes to the command's stdin.
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        match &self.input {
            RcInput::Spdy { stdin: Some(w), .. } => Ok(w.write_all(data).await?),
            RcInput::Spdy { stdin: None, .. } => {
                Err(ClientError::Protocol("no stdin stream".into()))
            }
            RcInput::Ws { mux, .. } => mux
                .send(channel::STDIN, data)
                .await
                .map_err(|_| ClientError::Closed),
        }
    }

    /// Signals EOF on stdin (SPDY FIN, or the v5 close signal; v4 WebSocket cannot).
    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        match &mut self.input {
            RcInput::Spdy { stdin, .. } => {
                if let Some(w) = stdin.take() {
                    w.close().await?;
                }
                Ok(())
            }
            RcInput::Ws { mux, v5: true } => mux
                .close_channel(channel::STDIN)
                .await
                .map_err(|_| ClientError::Closed),
            RcInput::Ws { v5: false, .. } => Err(ClientError::Protocol(
                "v4 WebSocket cannot half-close stdin".into(),
            )),
        }
    }

    /// Sends a terminal resize event.
    pub async fn resize(&mut self, size: TerminalSize) -> Result<(), ClientError> {
        let json = format!("{{\"Width\":{},\"Height\":{}}}\n", size.width, size.height);
        match &self.input {
            RcInput::Spdy {
                resize: Some(w), ..
            } => Ok(w.write_all(json.as_bytes()).await?),
            RcInput::Spdy { resize: None, .. } => {
                Err(ClientError::Protocol("no resize stream (tty off)".into()))
            }
            RcInput::Ws { mux, .. } => mux
                .send(channel::RESIZE, json.as_bytes())
                .await
                .map_err(|_| ClientError::Closed),
        }
    }

    /// The next chunk of output, or `None` once output has ended. Chunks read here are
    /// also kept for [`RemoteCommand::wait`].
    pub async fn next_output(&mut self) -> Option<(OutputKind, Bytes)> {
        let (k, b) = self.output.recv().await?;
        match k {
            OutputKind::Stdout => self.collected.stdout.extend_from_slice(&b),
            OutputKind::Stderr => self.collected.stderr.extend_from_slice(&b),
        }
        Some((k, b))
    }

    /// Reads output until `pred` holds for the stdout collected so far.
    pub async fn wait_stdout(&mut self, pred: impl Fn(&[u8]) -> bool) -> Result<(), ClientError> {
        while !pred(&self.collected.stdout) {
            if self.next_output().await.is_none() {
                return Err(ClientError::Closed);
            }
        }
        Ok(())
    }

    /// Waits for the command to end and returns everything it produced.
    pub async fn wait(mut self) -> Result<ExecOutput, ClientError> {
        let status = (&mut self.status).await.map_err(|_| ClientError::Closed)?;
        while self.next_output().await.is_some() {}
        let mut out = std::mem::take(&mut self.collected);
        out.status = String::from_utf8_lossy(&status).into_owned();
        (out.exit_code, out.error) = parse_status(&out.status);
        match self.input {
            RcInput::Spdy { session, .. } => session.close().await,
            RcInput::Ws { mux, .. } => mux.close().await,
        }
        Ok(out)
    }
}

/// Exit code and failure message of an error-stream payload.
pub fn parse_status(status: &str) -> (i32, Option<String>) {
    if status.trim().is_empty() {
        return (0, None);
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(status) else {
        // Before v4 the error stream is a plain message.
        return (-1, Some(status.to_string()));
    };
    if v["status"] == "Success" {
        return (0, None);
    }
    if v["reason"] == "NonZeroExitCode" {
        if let Some(causes) = v["details"]["causes"].as_array() {
            for c in causes {
                if c["reason"] == "ExitCode" {
                    if let Some(code) = c["message"].as_str().and_then(|m| m.parse().ok()) {
                        return (code, None);
                    }
                }
            }
        }
    }
    (
        -1,
        Some(v["message"].as_str().unwrap_or(status).to_string()),
    )
}

/// Runs a whole exec or attach: sends `stdin` (then EOF, where the protocol can say so)
/// and collects the output and exit code.
pub async fn exec(
    url: &str,
    transport: Transport,
    opts: ExecOptions,
    stdin: Option<&[u8]>,
) -> Result<ExecOutput, ClientError> {
    let mut rc = RemoteCommand::connect(url, transport, opts).await?;
    if let Some(data) = stdin {
        rc.write_stdin(data).await?;
        if transport != Transport::WebSocketV4 && transport != Transport::WebSocketV4Base64 {
            rc.close_stdin().await?;
        }
    }
    rc.wait().await
}

/// A SPDY port-forward session; each [`PortForwardSpdy::open`] is one forwarded connection.
pub struct PortForwardSpdy {
    session: Session,
    next_request: AtomicU32,
}

impl PortForwardSpdy {
    pub async fn connect(url: &str) -> Result<PortForwardSpdy, ClientError> {
        let (session, protocol) = upgrade_spdy(url, &[super::portforward::PROTOCOL_V1]).await?;
        if protocol != super::portforward::PROTOCOL_V1 {
            return Err(ClientError::Protocol(format!("server chose {protocol:?}")));
        }
        Ok(PortForwardSpdy {
            session,
            next_request: AtomicU32::new(0),
        })
    }

    /// Connects with SPDY tunnelled through a WebSocket (`SPDY/3.1+portforward.k8s.io`).
    pub async fn connect_tunneled(url: &str) -> Result<PortForwardSpdy, ClientError> {
        let (ws, protocol) = upgrade_ws(url, &[super::portforward::PROTOCOL_TUNNEL]).await?;
        if protocol != super::portforward::PROTOCOL_TUNNEL {
            return Err(ClientError::Protocol(format!("server chose {protocol:?}")));
        }
        let (session, _incoming) = Session::new(websocket::tunnel(ws), spdy::Role::Client);
        Ok(PortForwardSpdy {
            session,
            next_request: AtomicU32::new(0),
        })
    }

    /// Opens the error and data stream pair for one connection to `port`.
    pub async fn open(&self, port: u16) -> Result<PortForwardStream, ClientError> {
        let id = self
            .next_request
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let h = |kind: &str| {
            vec![
                ("streamtype".to_string(), kind.to_string()),
                ("port".to_string(), port.to_string()),
                ("requestid".to_string(), id.clone()),
            ]
        };
        let error = self.session.open(h("error"), REPLY_TIMEOUT).await?;
        error.writer.close().await?;
        let data = self.session.open(h("data"), REPLY_TIMEOUT).await?;
        let mut err_reader = error.reader;
        let error = tokio::spawn(async move { err_reader.read_to_end().await });
        Ok(PortForwardStream {
            inner: PfInner::Spdy {
                reader: data.reader,
                writer: data.writer,
            },
            error,
        })
    }

    /// Ends the session (GOAWAY and close).
    pub async fn close(self) {
        self.session.close().await;
    }
}

enum PfInner {
    Spdy {
        reader: spdy::StreamReader,
        writer: spdy::StreamWriter,
    },
    Ws {
        mux: Mux,
        channel: u8,
        rx: mpsc::UnboundedReceiver<Bytes>,
        /// Bytes of the leading port prefix still to strip.
        prefix: usize,
    },
}

/// One forwarded connection.
pub struct PortForwardStream {
    inner: PfInner,
    error: tokio::task::JoinHandle<Vec<u8>>,
}

/// The sending side of a [`PortForwardStream`], usable while another task reads.
#[derive(Clone)]
pub enum PortForwardWriter {
    Spdy(spdy::StreamWriter),
    Ws(Mux, u8),
}

impl PortForwardWriter {
    pub async fn write_all(&self, data: &[u8]) -> Result<(), ClientError> {
        match self {
            PortForwardWriter::Spdy(w) => Ok(w.write_all(data).await?),
            PortForwardWriter::Ws(mux, ch) => {
                mux.send(*ch, data).await.map_err(|_| ClientError::Closed)
            }
        }
    }

    /// Half-closes (SPDY only; a WebSocket channel cannot be half-closed).
    pub async fn close_write(&self) -> Result<(), ClientError> {
        match self {
            PortForwardWriter::Spdy(w) => Ok(w.close().await?),
            PortForwardWriter::Ws(..) => Ok(()),
        }
    }
}

impl PortForwardStream {
    pub fn writer(&self) -> PortForwardWriter {
        match &self.inner {
            PfInner::Spdy { writer, .. } => PortForwardWriter::Spdy(writer.clone()),
            PfInner::Ws { mux, channel, .. } => PortForwardWriter::Ws(mux.clone(), *channel),
        }
    }

    pub async fn write_all(&self, data: &[u8]) -> Result<(), ClientError> {
        self.writer().write_all(data).await
    }

    /// Half-closes (SPDY only; a WebSocket channel cannot be half-closed).
    pub async fn close_write(&self) -> Result<(), ClientError> {
        self.writer().close_write().await
    }

    /// The next chunk from the pod, or `None` at the end.
    pub async fn read(&mut self) -> Option<Bytes> {
        match &mut self.inner {
            PfInner::Spdy { reader, .. } => reader.read_chunk().await,
            PfInner::Ws { rx, prefix, .. } => loop {
                let mut b = rx.recv().await?;
                if *prefix > 0 {
                    let n = (*prefix).min(b.len());
                    *prefix -= n;
                    b = b.slice(n..);
                }
                if !b.is_empty() {
                    return Some(b);
                }
            },
        }
    }

    /// Reads until `n` bytes arrived or the stream ended.
    pub async fn read_exact_len(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.read().await {
                Some(b) => out.extend_from_slice(&b),
                None => break,
            }
        }
        out
    }

    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = self.read().await {
            out.extend_from_slice(&b);
        }
        out
    }

    /// The error stream's content once it ends (empty when forwarding went well). Over
    /// WebSocket the error channel ends only with the connection.
    pub async fn error(self) -> String {
        if let PfInner::Ws { mux, .. } = &self.inner {
            mux.close().await;
        }
        let v = self.error.await.unwrap_or_default();
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Port forwarding over WebSocket: one stream per port, on one connection. `ports` go in
/// the `ports` query parameter, as kubelet expects.
pub async fn port_forward_websocket(
    url: &str,
    ports: &[u16],
    base64: bool,
) -> Result<Vec<PortForwardStream>, ClientError> {
    let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}ports={}", list.join(","));
    let protocol = if base64 {
        websocket::V4_BASE64
    } else {
        websocket::V4_BINARY
    };
    let (ws, negotiated) = upgrade_ws(&url, &[protocol]).await?;
    let inputs: Vec<u8> = (0..ports.len() * 2).map(|i| i as u8).collect();
    let (mux, mut rxs): (Mux, HashMap<u8, _>) =
        Mux::start(ws, websocket::is_base64(&negotiated), &inputs);
    let mut out = Vec::new();
    for i in 0..ports.len() {
        let (d, e) = ((i * 2) as u8, (i * 2 + 1) as u8);
        let rx = rxs.remove(&d).expect("registered above");
        let mut erx = rxs.remove(&e).expect("registered above");
        let error = tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(b) = erx.recv().await {
                v.extend_from_slice(&b);
            }
            // Drop the port prefix.
            v.split_off(2.min(v.len()))
        });
        out.push(PortForwardStream {
            inner: PfInner::Ws {
                mux: mux.clone(),
                channel: d,
                rx,
                prefix: 2,
            },
            error,
        });
    }
    Ok(out)
}
