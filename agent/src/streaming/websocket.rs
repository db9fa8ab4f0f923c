//! Kubernetes' WebSocket channel protocols (`channel.k8s.io` and its `v4.`/`v5.` and
//! base64 variants): each binary message is one channel byte followed by that channel's
//! data; the base64 variants send text messages whose first character is the channel
//! digit and whose rest is base64. `v5` adds channel 255, whose one-byte payload names a
//! channel the sender will write no more to (the only way to signal stdin EOF).
//!
//! [`Mux`] runs one WebSocket for either end: a writer task sends queued messages in
//! order, a reader task routes incoming data to per-channel queues.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{header_list, plain, HttpResponse};

pub const V5_BINARY: &str = "v5.channel.k8s.io";
pub const V4_BINARY: &str = "v4.channel.k8s.io";
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
pub const BINARY: &str = "channel.k8s.io";
pub const BASE64: &str = "base64.channel.k8s.io";
/// The `v5` channel whose payload is the id of a channel being closed.
pub const CLOSE_CHANNEL: u8 = 255;

/// Whether messages of this protocol are base64 text rather than binary.
pub fn is_base64(protocol: &str) -> bool {
    protocol.contains("base64")
}

/// Frames `data` for `channel`.
pub fn encode(channel: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push((b'0' + channel) as char);
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::Text(s.into())
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(channel);
        v.extend_from_slice(data);
        Message::Binary(v.into())
    }
}

/// The channel and payload of a data message; `None` for anything else.
pub fn decode(msg: &Message) -> Option<(u8, Bytes)> {
    match msg {
        Message::Binary(b) if !b.is_empty() => Some((b[0], b.slice(1..))),
        Message::Text(t) if !t.is_empty() => {
            // Bytes, not str slicing: the first character may be wider than one byte.
            let (first, rest) = t.as_bytes().split_first()?;
            let ch = first.checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            Some((ch, Bytes::from(data)))
        }
        _ => None,
    }
}

enum Out {
    Msg(Message),
    Close(oneshot::Sender<()>),
}

/// One WebSocket carrying numbered channels.
#[derive(Clone)]
pub struct Mux {
    tx: mpsc::Sender<Out>,
    base64: bool,
    closed: watch::Receiver<bool>,
    reader: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

impl Mux {
    /// Starts the tasks; returns the mux and a queue for each channel in `inputs`.
    /// A queue ends when the peer closes that channel (v5) or the connection.
    pub fn start<S>(
        ws: WebSocketStream<S>,
        base64: bool,
        inputs: &[u8],
    ) -> (Mux, HashMap<u8, mpsc::UnboundedReceiver<Bytes>>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::channel::<Out>(64);
        let (closed_tx, closed_rx) = watch::channel(false);
        let mut senders = HashMap::new();
        let mut receivers = HashMap::new();
        for ch in inputs {
            let (s, r) = mpsc::unbounded_channel();
            senders.insert(*ch, s);
            receivers.insert(*ch, r);
        }
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                match out {
                    Out::Msg(m) => {
                        // Batch: flush only when nothing else is queued.
                        let r = if rx.is_empty() {
                            sink.send(m).await
                        } else {
                            sink.feed(m).await
                        };
                        if r.is_err() {
                            break;
                        }
                    }
                    Out::Close(done) => {
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                                reason: "".into(),
                            })))
                            .await;
                        let _ = sink.flush().await;
                        let _ = done.send(());
                        break;
                    }
                }
            }
        });
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                let Some((ch, data)) = decode(&msg) else {
                    continue;
                };
                if ch == CLOSE_CHANNEL {
                    if let Some(c) = data.first() {
                        senders.remove(c);
                    }
                    continue;
                }
                if let Some(s) = senders.get(&ch) {
                    if !data.is_empty() {
                        let _ = s.send(data);
                    }
                }
            }
            drop(senders);
            let _ = closed_tx.send_replace(true);
        });
        let mux = Mux {
            tx,
            base64,
            closed: closed_rx,
            reader: Arc::new(Mutex::new(Some(reader.abort_handle()))),
        };
        (mux, receivers)
    }

    /// Queues `data` on `channel`; an error means the connection is gone.
    pub async fn send(&self, channel: u8, data: &[u8]) -> Result<(), ()> {
        self.tx
            .send(Out::Msg(encode(channel, data, self.base64)))
            .await
            .map_err(|_| ())
    }

    /// Signals (v5) that we will write no more on `channel`.
    pub async fn close_channel(&self, channel: u8) -> Result<(), ()> {
        self.send(CLOSE_CHANNEL, &[channel]).await
    }

    /// Resolves once the peer closed the connection or it failed.
    pub async fn closed(&self) {
        let mut c = self.closed.clone();
        let _ = c.wait_for(|v| *v).await;
    }

    /// Sends a close frame after everything queued, then waits briefly for the peer's
    /// close before dropping the connection.
    pub async fn close(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Out::Close(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.closed()).await;
        if let Some(h) = self.reader.lock().unwrap().take() {
            h.abort();
        }
    }
}

/// Turns a WebSocket whose binary messages carry a byte stream (Kubernetes' SPDY
/// tunnelling, `SPDY/3.1+portforward.k8s.io`) into a plain byte stream.
pub fn tunnel<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(theirs);
        let inbound = async {
            while let Some(Ok(msg)) = stream.next().await {
                let ok = match msg {
                    Message::Binary(b) => wr.write_all(&b).await.is_ok(),
                    Message::Close(_) => false,
                    _ => true,
                };
                if !ok {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        };
        let outbound = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let m = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                        if sink.send(m).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        };
        // Either direction ending ends the tunnel, as a closed socket would.
        tokio::select! {
            () = inbound => {}
            () = outbound => {}
        }
    });
    ours
}

/// Answers a WebSocket upgrade: negotiates the sub-protocol (the client's first offer we
/// support; none offered means the plain `channel.k8s.io` framing) and runs `f` on the
/// socket once hyper hands it over.
pub(crate) fn upgrade<F, Fut>(
    mut req: Request<Incoming>,
    supported: &[&'static str],
    f: F,
) -> HttpResponse
where
    F: FnOnce(&'static str, WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
    else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let offered = header_list(&req, "sec-websocket-protocol");
    let protocol: &'static str = if offered.is_empty() {
        ""
    } else {
        match super::negotiate(&offered, supported) {
            Some(p) => p,
            None => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "requested protocol(s) are not supported: {:?}; supports {:?}",
                        offered, supported
                    ),
                )
            }
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                f(protocol, ws).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let mut r = hyper::Response::new(http_body_util::Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert("Sec-WebSocket-Accept", v);
    }
    if !protocol.is_empty() {
        h.insert(
            "Sec-WebSocket-Protocol",
            header::HeaderValue::from_static(protocol),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_base64_framing_roundtrip() {
        for b64 in [false, true] {
            let m = encode(2, b"hello\x00\xff", b64);
            assert_eq!(decode(&m), Some((2, Bytes::from_static(b"hello\x00\xff"))));
        }
        assert_eq!(
            encode(1, b"hi", false),
            Message::Binary(Bytes::from_static(b"\x01hi"))
        );
        assert_eq!(encode(1, b"hi", true), Message::Text("1aGk=".into()));
        assert_eq!(decode(&Message::Binary(Bytes::new())), None);
    }
}
