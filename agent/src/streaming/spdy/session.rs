//! The [`Session`]: stream multiplexing over one connection, with one reader task that
//! routes decoded frames to streams and one writer task that owns the header compressor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::stream::Stream;
use super::{
    encode_frame, read_frame, rst, Frame, HeaderDecoder, HeaderEncoder, Headers, SpdyError,
    CLOSE_LINGER, DATA_QUEUE, DEFAULT_WINDOW, FLAG_FIN, FLAG_UNIDIRECTIONAL,
    SETTINGS_INITIAL_WINDOW_SIZE,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

pub(super) enum Outgoing {
    Frame(Frame),
    /// Write GOAWAY, flush, shut the socket down and stop.
    Shutdown,
}

pub(super) struct StreamState {
    /// Data received from the peer; dropped at FIN or RST so the reader sees the end.
    pub(super) data_tx: Option<mpsc::UnboundedSender<Bytes>>,
    pub(super) send_window: i64,
    pub(super) reply_tx: Option<oneshot::Sender<Result<Headers, SpdyError>>>,
    /// Set when the peer reset the stream.
    pub(super) reset: Option<u32>,
    pub(super) local_closed: bool,
    pub(super) remote_closed: bool,
}

pub(super) struct State {
    pub(super) streams: HashMap<u32, StreamState>,
    pub(super) next_id: u32,
    pub(super) session_send_window: i64,
    pub(super) initial_send_window: i64,
    pub(super) peer_flow_control: bool,
    pub(super) closed: bool,
    pub(super) goaway_received: bool,
    /// Consumed but not yet acknowledged bytes of the session window.
    pub(super) session_unacked: u32,
    /// Ids of our pings not yet answered, so their replies are not echoed back.
    pub(super) pings_sent: std::collections::HashSet<u32>,
}

pub(super) struct Shared {
    pub(super) role: Role,
    pub(super) state: Mutex<State>,
    pub(super) ctrl_tx: mpsc::UnboundedSender<Outgoing>,
    pub(super) data_tx: mpsc::Sender<Outgoing>,
    /// Woken when a send window grows or the session/stream closes.
    pub(super) window: Notify,
    pub(super) closed_tx: watch::Sender<bool>,
    /// Tells the reader task to stop (it then runs its end-of-session cleanup).
    pub(super) stop_reading: Notify,
}

impl Shared {
    pub(super) fn send_ctrl(&self, f: Frame) {
        let _ = self.ctrl_tx.send(Outgoing::Frame(f));
    }

    pub(super) fn maybe_forget(state: &mut State, id: u32) {
        if let Some(s) = state.streams.get(&id) {
            if s.local_closed && s.remote_closed && s.reply_tx.is_none() {
                state.streams.remove(&id);
            }
        }
    }

    /// Accounts `n` bytes consumed from the session window and acknowledges them in
    /// batches of half a window, which keeps WINDOW_UPDATEs few.
    pub(super) fn consumed(&self, n: usize) {
        let mut st = self.state.lock().unwrap();
        st.session_unacked += n as u32;
        if st.session_unacked as i64 >= DEFAULT_WINDOW / 2 {
            let d = std::mem::take(&mut st.session_unacked);
            self.send_ctrl(Frame::WindowUpdate {
                stream_id: 0,
                delta: d,
            });
        }
    }
}

/// A SPDY session over one connection.
#[derive(Clone)]
pub struct Session {
    pub(super) shared: Arc<Shared>,
}

/// The receiving end of streams the peer opens.
pub struct Incoming {
    rx: mpsc::UnboundedReceiver<Stream>,
}

impl Incoming {
    /// The next stream the peer opened (already replied to), or `None` once the session
    /// ended or the peer sent GOAWAY.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.rx.recv().await
    }
}

impl Session {
    /// Starts the reader and writer tasks on `io`.
    pub fn new<T>(io: T, role: Role) -> (Session, Incoming)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
        let (closed_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            role,
            state: Mutex::new(State {
                streams: HashMap::new(),
                next_id: if role == Role::Client { 1 } else { 2 },
                session_send_window: DEFAULT_WINDOW,
                initial_send_window: DEFAULT_WINDOW,
                peer_flow_control: false,
                closed: false,
                goaway_received: false,
                session_unacked: 0,
                pings_sent: Default::default(),
            }),
            ctrl_tx,
            data_tx,
            window: Notify::new(),
            closed_tx,
            stop_reading: Notify::new(),
        });
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_task(wr, ctrl_rx, data_rx));
        tokio::spawn(reader_task(rd, shared.clone(), in_tx));
        (Session { shared }, Incoming { rx: in_rx })
    }

    /// Opens a stream with `headers` and waits (up to `timeout`) for the peer's reply.
    pub async fn open(
        &self,
        headers: Headers,
        timeout: std::time::Duration,
    ) -> Result<Stream, SpdyError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        let id = {
            let mut st = self.shared.state.lock().unwrap();
            if st.closed || st.goaway_received {
                return Err(SpdyError::SessionClosed);
            }
            let id = st.next_id;
            st.next_id += 2;
            let window = st.initial_send_window;
            st.streams.insert(
                id,
                StreamState {
                    data_tx: Some(data_tx),
                    send_window: window,
                    reply_tx: Some(reply_tx),
                    reset: None,
                    local_closed: false,
                    remote_closed: false,
                },
            );
            id
        };
        self.shared.send_ctrl(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: headers.clone(),
        });
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(Ok(_reply))) => Ok(Stream::new(id, headers, self.shared.clone(), data_rx)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(SpdyError::SessionClosed),
            Err(_) => Err(SpdyError::ReplyTimeout(id)),
        }
    }

    /// Flushes queued data, sends GOAWAY and shuts the connection's write side down.
    pub async fn close(&self) {
        let _ = self.shared.data_tx.send(Outgoing::Shutdown).await;
        // Give the peer a moment to read what we sent and hang up; then stop reading so
        // a peer that never hangs up does not keep the connection alive.
        let _ = tokio::time::timeout(CLOSE_LINGER, self.closed()).await;
        self.shared.stop_reading.notify_one();
    }

    /// Resolves once the connection has ended (peer gone or read error).
    pub async fn closed(&self) {
        let mut rx = self.shared.closed_tx.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Sends a PING (odd ids from clients, even from servers); the reader answers the
    /// peer's pings by itself.
    pub fn ping(&self, id: u32) {
        self.shared.state.lock().unwrap().pings_sent.insert(id);
        self.shared.send_ctrl(Frame::Ping { id });
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(
    wr: W,
    mut ctrl_rx: mpsc::UnboundedReceiver<Outgoing>,
    mut data_rx: mpsc::Receiver<Outgoing>,
) {
    let mut wr = tokio::io::BufWriter::with_capacity(64 * 1024, wr);
    let mut enc = HeaderEncoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut ctrl_open = true;
    loop {
        let item = tokio::select! {
            biased;
            m = ctrl_rx.recv(), if ctrl_open => match m {
                Some(m) => m,
                None => { ctrl_open = false; continue; }
            },
            m = data_rx.recv() => match m {
                Some(m) => m,
                // Every session handle is gone: nothing more will be sent.
                None => Outgoing::Shutdown,
            },
        };
        let shutdown = matches!(item, Outgoing::Shutdown);
        let frame = match item {
            Outgoing::Frame(f) => f,
            Outgoing::Shutdown => Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            },
        };
        buf.clear();
        if let Err(e) = encode_frame(&frame, &mut enc, &mut buf) {
            tracing::warn!(error = %e, "spdy: encoding frame failed");
            break;
        }
        if wr.write_all(&buf).await.is_err() {
            break;
        }
        // Flush once nothing else is waiting, so bursts share one syscall.
        let idle = ctrl_rx.is_empty() && data_rx.is_empty();
        if (idle || shutdown) && wr.flush().await.is_err() {
            break;
        }
        if shutdown {
            let _ = wr.shutdown().await;
            break;
        }
    }
}

async fn reader_task<R: AsyncRead + Unpin>(
    rd: R,
    shared: Arc<Shared>,
    in_tx: mpsc::UnboundedSender<Stream>,
) {
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    let mut dec = HeaderDecoder::new();
    let mut in_tx = Some(in_tx);
    loop {
        let read = tokio::select! {
            r = read_frame(&mut rd, &mut dec) => r,
            () = shared.stop_reading.notified() => break,
        };
        let frame = match read {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "spdy: reading frame failed");
                break;
            }
        };
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                let (data_tx, data_rx) = mpsc::unbounded_channel();
                let mut st = shared.state.lock().unwrap();
                let peer_parity = if shared.role == Role::Server { 1 } else { 0 };
                if stream_id % 2 != peer_parity || st.streams.contains_key(&stream_id) {
                    drop(st);
                    shared.send_ctrl(Frame::RstStream {
                        stream_id,
                        status: rst::PROTOCOL_ERROR,
                    });
                    continue;
                }
                let Some(tx) = in_tx.as_ref().filter(|_| !st.goaway_received) else {
                    drop(st);
                    shared.send_ctrl(Frame::RstStream {
                        stream_id,
                        status: rst::REFUSED_STREAM,
                    });
                    continue;
                };
                let fin = flags & FLAG_FIN != 0;
                let window = st.initial_send_window;
                st.streams.insert(
                    stream_id,
                    StreamState {
                        data_tx: if fin { None } else { Some(data_tx.clone()) },
                        send_window: window,
                        reply_tx: None,
                        reset: None,
                        local_closed: flags & FLAG_UNIDIRECTIONAL != 0,
                        remote_closed: fin,
                    },
                );
                // Reply before handing the stream out, so the reply precedes its data.
                shared.send_ctrl(Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: Vec::new(),
                });
                drop(st);
                drop(data_tx);
                let _ = tx.send(Stream::new(stream_id, headers, shared.clone(), data_rx));
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let mut st = shared.state.lock().unwrap();
                if let Some(s) = st.streams.get_mut(&stream_id) {
                    if let Some(tx) = s.reply_tx.take() {
                        let _ = tx.send(Ok(headers));
                    }
                    if flags & FLAG_FIN != 0 {
                        s.data_tx = None;
                        s.remote_closed = true;
                    }
                    Shared::maybe_forget(&mut st, stream_id);
                }
            }
            Frame::Headers {
                stream_id, flags, ..
            } => {
                if flags & FLAG_FIN != 0 {
                    let mut st = shared.state.lock().unwrap();
                    if let Some(s) = st.streams.get_mut(&stream_id) {
                        s.data_tx = None;
                        s.remote_closed = true;
                    }
                    Shared::maybe_forget(&mut st, stream_id);
                }
            }
            Frame::RstStream { stream_id, status } => {
                let mut st = shared.state.lock().unwrap();
                if let Some(mut s) = st.streams.remove(&stream_id) {
                    s.data_tx = None;
                    s.reset = Some(status);
                    if let Some(tx) = s.reply_tx.take() {
                        let _ = tx.send(Err(SpdyError::StreamReset(stream_id, status)));
                    }
                }
                drop(st);
                shared.window.notify_waiters();
            }
            Frame::Settings { entries, .. } => {
                let mut st = shared.state.lock().unwrap();
                for (_, id, value) in entries {
                    if id == SETTINGS_INITIAL_WINDOW_SIZE {
                        let delta = value as i64 - st.initial_send_window;
                        st.initial_send_window = value as i64;
                        for s in st.streams.values_mut() {
                            s.send_window += delta;
                        }
                    }
                }
                drop(st);
                shared.window.notify_waiters();
            }
            Frame::Ping { id } => {
                // Answer every ping but the replies to our own.
                let ours = shared.state.lock().unwrap().pings_sent.remove(&id);
                if !ours {
                    shared.send_ctrl(Frame::Ping { id });
                }
            }
            Frame::GoAway { .. } => {
                // No new streams from the peer; the ones open carry on.
                shared.state.lock().unwrap().goaway_received = true;
                in_tx = None;
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut st = shared.state.lock().unwrap();
                st.peer_flow_control = true;
                if stream_id == 0 {
                    st.session_send_window += delta as i64;
                } else if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.send_window += delta as i64;
                }
                drop(st);
                shared.window.notify_waiters();
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let mut consumed_now = 0;
                let mut st = shared.state.lock().unwrap();
                let known = match st.streams.get_mut(&stream_id) {
                    Some(s) => {
                        let delivered = match &s.data_tx {
                            Some(tx) if !data.is_empty() => tx.send(data.clone()).is_ok(),
                            _ => false,
                        };
                        if !delivered && !data.is_empty() {
                            // Nobody will read it: give the window back now.
                            consumed_now += data.len();
                        }
                        if flags & FLAG_FIN != 0 {
                            s.data_tx = None;
                            s.remote_closed = true;
                        }
                        true
                    }
                    None => false,
                };
                if flags & FLAG_FIN != 0 {
                    Shared::maybe_forget(&mut st, stream_id);
                }
                drop(st);
                if consumed_now > 0 {
                    shared.consumed(consumed_now);
                    shared.send_ctrl(Frame::WindowUpdate {
                        stream_id,
                        delta: consumed_now as u32,
                    });
                }
                if !known {
                    // Still count it against the session window, or the peer stalls.
                    shared.consumed(data.len());
                    if flags & FLAG_FIN == 0 {
                        shared.send_ctrl(Frame::RstStream {
                            stream_id,
                            status: rst::INVALID_STREAM,
                        });
                    }
                }
            }
        }
    }
    let mut st = shared.state.lock().unwrap();
    st.closed = true;
    for (id, s) in st.streams.iter_mut() {
        s.data_tx = None;
        if let Some(tx) = s.reply_tx.take() {
            let _ = tx.send(Err(SpdyError::StreamReset(*id, rst::CANCEL)));
        }
    }
    drop(st);
    shared.window.notify_waiters();
    let _ = shared.closed_tx.send_replace(true);
}
