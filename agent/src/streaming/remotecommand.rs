//! Exec and attach (Kubernetes' remotecommand protocol) over SPDY or WebSocket.
//!
//! Over SPDY the client opens one stream per role, named by its `streamType` header
//! (`error`, `stdin`, `stdout`, `stderr`, `resize`); over WebSocket the roles are the
//! channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize. Once the command ends, its
//! output is flushed, then the result goes on the error stream: a JSON `metav1.Status`
//! from v4 on, plain text (and only on failure) before that.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use podrun_cri_proto::v1::{AttachRequest, ExecRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{self, header};
use super::websocket::{self, Mux};
use super::{HttpResponse, StreamRuntime, Streams, TerminalSize, STREAM_CREATION_TIMEOUT};

/// The remotecommand protocol versions, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1,
    V2,
    V3,
    V4,
    V5,
}

impl Version {
    pub fn from_protocol(p: &str) -> Version {
        match p {
            "v5.channel.k8s.io" => Version::V5,
            "v4.channel.k8s.io" | "v4.base64.channel.k8s.io" => Version::V4,
            "v3.channel.k8s.io" => Version::V3,
            "v2.channel.k8s.io" => Version::V2,
            _ => Version::V1,
        }
    }
}

/// SPDY sub-protocols, preferred first.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// WebSocket sub-protocols, preferred first.
pub const WS_PROTOCOLS: &[&str] = &[
    websocket::V5_BINARY,
    websocket::V4_BINARY,
    websocket::V4_BASE64,
    websocket::BINARY,
    websocket::BASE64,
];

/// WebSocket channel numbers.
pub mod channel {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const ERROR: u8 = 3;
    pub const RESIZE: u8 = 4;
}

/// The cached CRI request a connection serves.
#[derive(Debug, Clone)]
pub enum Operation {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Operation {
    fn flags(&self) -> (bool, bool, bool, bool) {
        match self {
            Operation::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Operation::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
        }
    }

    fn container_id(&self) -> &str {
        match self {
            Operation::Exec(r) => &r.container_id,
            Operation::Attach(r) => &r.container_id,
        }
    }
}

/// Where client input comes from, whichever the transport.
enum Source {
    Spdy(spdy::StreamReader),
    Ws(mpsc::UnboundedReceiver<Bytes>),
}

impl Source {
    async fn next(&mut self) -> Option<Bytes> {
        match self {
            Source::Spdy(r) => r.read_chunk().await,
            Source::Ws(r) => r.recv().await,
        }
    }
}

/// Where output for the client goes, whichever the transport.
enum Sink {
    Spdy(spdy::StreamWriter),
    Ws(Mux, u8),
}

impl Sink {
    async fn write(&self, data: &[u8]) -> Result<(), ()> {
        match self {
            Sink::Spdy(w) => w.write_all(data).await.map_err(|_| ()),
            Sink::Ws(m, ch) => m.send(*ch, data).await,
        }
    }

    async fn close(&self) {
        match self {
            Sink::Spdy(w) => {
                let _ = w.close().await;
            }
            // WebSocket channels have no close of their own; the connection's close ends them.
            Sink::Ws(..) => {}
        }
    }
}

#[derive(Default)]
struct Channels {
    stdin: Option<Source>,
    stdout: Option<Sink>,
    stderr: Option<Sink>,
    error: Option<Sink>,
    resize: Option<Source>,
}

/// `metav1.Status` JSON for a finished command, as kubelet writes it.
pub fn status_json(result: &Result<i32, String>) -> String {
    let v = match result {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {e}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": e}]},
            "code": 500,
        }),
    };
    v.to_string()
}

pub(crate) fn serve_spdy(
    req: Request<Incoming>,
    op: Operation,
    runtime: Arc<dyn StreamRuntime>,
) -> HttpResponse {
    super::upgrade_spdy(
        req,
        SPDY_PROTOCOLS,
        move |protocol, session, mut incoming| async move {
            let version = Version::from_protocol(protocol);
            let (stdin, stdout, stderr, tty) = op.flags();
            let want_stderr = stderr && !tty;
            let want_resize = tty && version >= Version::V3;
            let expected =
                1 + stdin as usize + stdout as usize + want_stderr as usize + want_resize as usize;
            let mut ch = Channels::default();
            let mut got = 0;
            let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
            while got < expected {
                let s = match tokio::time::timeout_at(deadline, incoming.accept()).await {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        tracing::debug!(container = %op.container_id(), "client left before opening its streams");
                        session.close().await;
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(container = %op.container_id(), got, expected, "timed out waiting for client streams");
                        session.close().await;
                        return;
                    }
                };
                let kind = header(&s.headers, "streamtype")
                    .unwrap_or("")
                    .to_ascii_lowercase();
                let slot_taken = match kind.as_str() {
                    "error" => ch.error.replace(Sink::Spdy(s.writer)).is_some(),
                    "stdin" => ch.stdin.replace(Source::Spdy(s.reader)).is_some(),
                    "stdout" => ch.stdout.replace(Sink::Spdy(s.writer)).is_some(),
                    "stderr" => ch.stderr.replace(Sink::Spdy(s.writer)).is_some(),
                    "resize" => ch.resize.replace(Source::Spdy(s.reader)).is_some(),
                    other => {
                        tracing::debug!(stream_type = %other, "ignoring stream of unknown type");
                        continue;
                    }
                };
                if !slot_taken {
                    got += 1;
                }
            }
            let client_gone = {
                let s = session.clone();
                async move { s.closed().await }
            };
            run(op, version, ch, runtime, client_gone).await;
            session.close().await;
        },
    )
}

pub(crate) fn serve_websocket(
    req: Request<Incoming>,
    op: Operation,
    runtime: Arc<dyn StreamRuntime>,
) -> HttpResponse {
    websocket::upgrade(req, WS_PROTOCOLS, move |protocol, ws| async move {
        // Without a named protocol the channel framing is the original one.
        let version = if protocol.is_empty() {
            Version::V1
        } else {
            Version::from_protocol(protocol)
        };
        let (stdin, stdout, stderr, tty) = op.flags();
        let (mux, mut inputs) = Mux::start(
            ws,
            websocket::is_base64(protocol),
            &[channel::STDIN, channel::RESIZE],
        );
        let ch = Channels {
            stdin: stdin
                .then(|| inputs.remove(&channel::STDIN).map(Source::Ws))
                .flatten(),
            stdout: stdout.then(|| Sink::Ws(mux.clone(), channel::STDOUT)),
            stderr: (stderr && !tty).then(|| Sink::Ws(mux.clone(), channel::STDERR)),
            error: Some(Sink::Ws(mux.clone(), channel::ERROR)),
            resize: tty
                .then(|| inputs.remove(&channel::RESIZE).map(Source::Ws))
                .flatten(),
        };
        let client_gone = {
            let m = mux.clone();
            async move { m.closed().await }
        };
        run(op, version, ch, runtime, client_gone).await;
        mux.close().await;
    })
}

/// Copies client input into a pipe whose read end goes to the runtime.
fn pump_in(mut src: Source) -> Box<dyn tokio::io::AsyncRead + Send + Unpin> {
    let (mut w, r) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        while let Some(b) = src.next().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
        // Dropping the write end is the runtime's EOF.
        let _ = w.shutdown().await;
    });
    Box::new(r)
}

/// A pipe whose write end goes to the runtime and whose read end is copied to `sink`,
/// which is closed at EOF. The handle resolves once everything was queued.
fn pump_out(
    sink: Sink,
) -> (
    Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    tokio::task::JoinHandle<()>,
) {
    let (w, mut r) = tokio::io::duplex(64 * 1024);
    let h = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.write(&buf[..n]).await.is_err() {
                        // The client is gone; keep draining so the writer never blocks.
                        while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
                        return;
                    }
                }
            }
        }
        sink.close().await;
    });
    (Box::new(w), h)
}

/// Longest resize event accepted: a real one is about 30 bytes, and a peer that never
/// closes its object must not grow the buffer without end.
const MAX_RESIZE_EVENT: usize = 4096;

/// Decodes the resize stream, a sequence of `{"Width":w,"Height":h}` JSON objects that
/// may arrive split across chunks.
#[derive(Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    /// Adds a chunk and returns the events it completes, then `Err` if the stream
    /// turned bad (the events before the bad one still count).
    pub fn push(&mut self, chunk: &[u8]) -> (Vec<TerminalSize>, Result<(), String>) {
        #[derive(serde::Deserialize)]
        struct Size {
            #[serde(rename = "Width")]
            width: u16,
            #[serde(rename = "Height")]
            height: u16,
        }
        self.buf.extend_from_slice(chunk);
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Size>();
        let mut events = Vec::new();
        let mut consumed = 0;
        loop {
            match it.next() {
                Some(Ok(s)) => {
                    consumed = it.byte_offset();
                    events.push(TerminalSize {
                        width: s.width,
                        height: s.height,
                    });
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return (events, Err(e.to_string())),
                None => {
                    consumed = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > MAX_RESIZE_EVENT {
            let e = format!("resize event longer than {MAX_RESIZE_EVENT} bytes");
            return (events, Err(e));
        }
        (events, Ok(()))
    }
}

fn pump_resize(mut src: Source) -> mpsc::Receiver<TerminalSize> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut decoder = ResizeDecoder::default();
        while let Some(b) = src.next().await {
            let (events, status) = decoder.push(&b);
            for size in events {
                if tx.send(size).await.is_err() {
                    return;
                }
            }
            if let Err(e) = status {
                tracing::debug!(error = %e, "bad resize event");
                return;
            }
        }
    });
    rx
}

async fn run(
    op: Operation,
    version: Version,
    ch: Channels,
    runtime: Arc<dyn StreamRuntime>,
    client_gone: impl std::future::Future<Output = ()> + Send,
) {
    let mut outs = Vec::new();
    let mut streams = Streams {
        stdin: ch.stdin.map(pump_in),
        stdout: None,
        stderr: None,
        resize: ch.resize.map(pump_resize),
    };
    if let Some(s) = ch.stdout {
        let (w, h) = pump_out(s);
        streams.stdout = Some(w);
        outs.push(h);
    }
    if let Some(s) = ch.stderr {
        let (w, h) = pump_out(s);
        streams.stderr = Some(w);
        outs.push(h);
    }
    let result: Result<i32, String> = match op {
        Operation::Exec(r) => {
            tracing::debug!(container = %r.container_id, tty = r.tty, "exec");
            runtime.exec(r.container_id, r.cmd, r.tty, streams).await
        }
        Operation::Attach(r) => {
            tracing::debug!(container = %r.container_id, tty = r.tty, "attach");
            let fut = runtime.attach(r.container_id, r.tty, streams);
            // Attach ends when the client goes, too; the container keeps running.
            tokio::select! {
                res = fut => res.map(|()| 0),
                () = client_gone => return,
            }
        }
    };
    // All output first, so the status is the last thing the client reads.
    for h in outs {
        let _ = h.await;
    }
    if let Some(err) = ch.error {
        if version >= Version::V4 {
            let _ = err.write(status_json(&result).as_bytes()).await;
        } else {
            match &result {
                Ok(0) => {}
                Ok(code) => {
                    let _ = err
                        .write(
                            format!(
                                "command terminated with non-zero exit code: exit status {code}"
                            )
                            .as_bytes(),
                        )
                        .await;
                }
                Err(e) => {
                    let _ = err.write(e.as_bytes()).await;
                }
            }
        }
        err.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_shapes() {
        assert_eq!(status_json(&Ok(0)), r#"{"metadata":{},"status":"Success"}"#);
        let v: serde_json::Value = serde_json::from_str(&status_json(&Ok(3))).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let v: serde_json::Value = serde_json::from_str(&status_json(&Err("boom".into()))).unwrap();
        assert_eq!(v["status"], "Failure");
    }

    #[test]
    fn versions_order() {
        assert!(Version::from_protocol("v4.channel.k8s.io") > Version::V3);
        assert_eq!(Version::from_protocol("channel.k8s.io"), Version::V1);
    }
}
