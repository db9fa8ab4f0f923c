//! SPDY/3.1 as Kubernetes' remotecommand and portforward protocols use it: frame
//! encoding and decoding, zlib header-block compression with the SPDY/3 dictionary, and a
//! [`Session`] that multiplexes streams over one connection for either end (the server
//! accepts the streams a client opens; a client opens them).
//!
//! Session layout: one reader task decodes frames and routes them to streams; one writer
//! task owns the compressor (header compression state is shared by every frame sent, so
//! frames must be compressed in the order they hit the wire). Control frames (replies,
//! pings, window updates) use an unbounded queue so the reader never blocks on a slow
//! socket; data frames use a bounded queue, which is the backpressure for writers.
//!
//! Flow control is honoured loosely, because Kubernetes' Go clients (spdystream) speak
//! SPDY/3 framing without windows: windows are tracked always, but a writer waits on them
//! only once the peer has shown it does flow control by sending a WINDOW_UPDATE. We send
//! WINDOW_UPDATEs as received data is consumed, so peers that do honour windows never
//! stall.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// SPDY protocol version carried in every control frame.
pub const VERSION: u16 = 3;
/// SPDY/3.1 initial stream and session flow-control window.
pub const DEFAULT_WINDOW: i64 = 64 * 1024;
/// Largest DATA payload we send in one frame.
const MAX_DATA_FRAME: usize = 32 * 1024;
/// Largest frame we accept (the length field is 24 bits; refuse absurd header blocks).
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// How long [`Session::close`] waits for the peer to hang up.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// Data queue depth of the writer task, in frames.
const DATA_QUEUE: usize = 64;

/// DATA/SYN flag: last frame from this sender on the stream.
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM flag: the receiver may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes (SPDY/3 section 2.4.2).
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// SETTINGS id for the initial stream window.
const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// Errors of the SPDY layer.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("spdy connection i/o: {0}")]
    Io(#[from] io::Error),
    #[error("spdy protocol error: {0}")]
    Protocol(String),
    #[error("spdy header compression: {0}")]
    Compression(String),
    #[error("spdy session closed")]
    SessionClosed,
    #[error("spdy stream {0} was reset with status {1}")]
    StreamReset(u32, u32),
    #[error("timed out waiting for the reply to stream {0}")]
    ReplyTimeout(u32),
}

/// Header names and values of one header block, names lower case as SPDY/3 requires.
pub type Headers = Vec<(String, String)>;

/// Looks a header up by name, ignoring case (Go peers canonicalise names).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_id: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        /// (flags, id, value)
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
}

/// The SPDY/3 header compression dictionary (SPDY/3 section 2.6.10.1): a list of
/// length-prefixed words followed by a run of common values. It must be byte-exact or
/// the peer's inflate fails, so it is built from the spec's word list here.
pub fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
            "203 Non-Authoritative Information",
            "204 No Content",
            "301 Moved Permanently",
            "400 Bad Request",
            "401 Unauthorized",
            "403 Forbidden",
            "404 Not Found",
            "500 Internal Server Error",
            "501 Not Implemented",
            "503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
            "application/xhtml+xml,text/plain,text/javascript,",
            "publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1424);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Compresses header blocks for one direction of a session.
pub struct HeaderEncoder {
    z: Compress,
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderEncoder {
    pub fn new() -> Self {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(dictionary())
            .expect("setting the deflate dictionary on a fresh stream cannot fail");
        Self { z }
    }

    /// Serialises and compresses one header block, ending with a sync flush so the peer
    /// can decode it without waiting for more.
    pub fn encode(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        raw.put_u32(headers.len() as u32);
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            raw.put_u32(k.len() as u32);
            raw.put_slice(k.as_bytes());
            raw.put_u32(v.len() as u32);
            raw.put_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            input = &input[(self.z.total_in() - before) as usize..];
            // A sync flush is complete once all input is consumed and the output buffer
            // was not filled to the brim.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Decompresses header blocks for one direction of a session.
pub struct HeaderDecoder {
    z: Decompress,
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecoder {
    pub fn new() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }

    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut out: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(1024));
            }
            let before = self.z.total_in();
            let res = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.z.total_in() - before) as usize..];
            match res {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(dictionary())
                        .map_err(|e| SpdyError::Compression(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if out.len() > MAX_FRAME {
                return Err(SpdyError::Compression("header block too large".into()));
            }
        }
        parse_header_block(&out)
    }
}

fn parse_header_block(mut b: &[u8]) -> Result<Headers, SpdyError> {
    let bad = || SpdyError::Protocol("truncated header block".into());
    let take_str = |b: &mut &[u8]| -> Result<String, SpdyError> {
        if b.len() < 4 {
            return Err(bad());
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return Err(bad());
        }
        let s = String::from_utf8_lossy(&b[..n]).into_owned();
        b.advance(n);
        Ok(s)
    };
    if b.len() < 4 {
        return Err(bad());
    }
    let n = b.get_u32() as usize;
    let mut headers = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let k = take_str(&mut b)?;
        let v = take_str(&mut b)?;
        // Several values of one name travel NUL-separated in one value.
        for v in v.split('\0') {
            headers.push((k.clone(), v.to_string()));
        }
    }
    Ok(headers)
}

fn control_header(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(((flags as u32) << 24) | (len as u32 & 0x00ff_ffff));
}

/// Appends the wire form of `frame` to `out`, compressing header blocks with `enc`.
pub fn encode_frame(
    frame: &Frame,
    enc: &mut HeaderEncoder,
    out: &mut BytesMut,
) -> Result<(), SpdyError> {
    match frame {
        Frame::SynStream {
            stream_id,
            associated_id,
            priority,
            flags,
            headers,
        } => {
            let block = enc.encode(headers)?;
            control_header(out, TYPE_SYN_STREAM, *flags, 10 + block.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(associated_id & 0x7fff_ffff);
            out.put_u8((priority & 0x7) << 5);
            out.put_u8(0); // credential slot
            out.put_slice(&block);
        }
        Frame::SynReply {
            stream_id,
            flags,
            headers,
        }
        | Frame::Headers {
            stream_id,
            flags,
            headers,
        } => {
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                TYPE_SYN_REPLY
            } else {
                TYPE_HEADERS
            };
            let block = enc.encode(headers)?;
            control_header(out, kind, *flags, 4 + block.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_slice(&block);
        }
        Frame::RstStream { stream_id, status } => {
            control_header(out, TYPE_RST_STREAM, 0, 8);
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::Settings { flags, entries } => {
            control_header(out, TYPE_SETTINGS, *flags, 4 + 8 * entries.len());
            out.put_u32(entries.len() as u32);
            for (f, id, v) in entries {
                out.put_u32(((*f as u32) << 24) | (id & 0x00ff_ffff));
                out.put_u32(*v);
            }
        }
        Frame::Ping { id } => {
            control_header(out, TYPE_PING, 0, 4);
            out.put_u32(*id);
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            control_header(out, TYPE_GOAWAY, 0, 8);
            out.put_u32(last_good_stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control_header(out, TYPE_WINDOW_UPDATE, 0, 8);
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(delta & 0x7fff_ffff);
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(((*flags as u32) << 24) | (data.len() as u32 & 0x00ff_ffff));
            out.put_slice(data);
        }
    }
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames. Unknown control
/// frame types (NOOP, CREDENTIAL) are skipped, as the spec asks.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut HeaderDecoder,
) -> Result<Option<Frame>, SpdyError> {
    loop {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        r.read_exact(&mut head[1..]).await?;
        let word0 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::Protocol(format!("frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        if word0 & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: word0 & 0x7fff_ffff,
                flags,
                data: Bytes::from(body),
            }));
        }
        let version = ((word0 >> 16) & 0x7fff) as u16;
        let kind = (word0 & 0xffff) as u16;
        if version != VERSION {
            return Err(SpdyError::Protocol(format!(
                "unsupported version {version}"
            )));
        }
        if let Some(f) = decode_control(kind, flags, &body, dec)? {
            return Ok(Some(f));
        }
    }
}

fn decode_control(
    kind: u16,
    flags: u8,
    body: &[u8],
    dec: &mut HeaderDecoder,
) -> Result<Option<Frame>, SpdyError> {
    let short = |need: usize| -> Result<(), SpdyError> {
        if body.len() < need {
            Err(SpdyError::Protocol(format!(
                "control frame type {kind} of {} bytes",
                body.len()
            )))
        } else {
            Ok(())
        }
    };
    let u32_at = |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    let f = match kind {
        TYPE_SYN_STREAM => {
            short(10)?;
            Frame::SynStream {
                stream_id: u32_at(0) & 0x7fff_ffff,
                associated_id: u32_at(4) & 0x7fff_ffff,
                priority: body[8] >> 5,
                flags,
                headers: dec.decode(&body[10..])?,
            }
        }
        TYPE_SYN_REPLY | TYPE_HEADERS => {
            short(4)?;
            let stream_id = u32_at(0) & 0x7fff_ffff;
            let headers = dec.decode(&body[4..])?;
            if kind == TYPE_SYN_REPLY {
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    flags,
                    headers,
                }
            }
        }
        TYPE_RST_STREAM => {
            short(8)?;
            Frame::RstStream {
                stream_id: u32_at(0) & 0x7fff_ffff,
                status: u32_at(4),
            }
        }
        TYPE_SETTINGS => {
            short(4)?;
            let n = u32_at(0) as usize;
            short(4 + n.saturating_mul(8))?;
            let entries = (0..n)
                .map(|i| {
                    let w = u32_at(4 + i * 8);
                    ((w >> 24) as u8, w & 0x00ff_ffff, u32_at(8 + i * 8))
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        TYPE_PING => {
            short(4)?;
            Frame::Ping { id: u32_at(0) }
        }
        TYPE_GOAWAY => {
            short(4)?;
            Frame::GoAway {
                last_good_stream_id: u32_at(0) & 0x7fff_ffff,
                // SPDY/2 GOAWAY had no status; tolerate its shorter body.
                status: if body.len() >= 8 { u32_at(4) } else { 0 },
            }
        }
        TYPE_WINDOW_UPDATE => {
            short(8)?;
            Frame::WindowUpdate {
                stream_id: u32_at(0) & 0x7fff_ffff,
                delta: u32_at(4) & 0x7fff_ffff,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(f))
}

/// Which end of the connection this session is; it decides stream id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

enum Outgoing {
    Frame(Frame),
    /// Write GOAWAY, flush, shut the socket down and stop.
    Shutdown,
}

struct StreamState {
    /// Data received from the peer; dropped at FIN or RST so the reader sees the end.
    data_tx: Option<mpsc::UnboundedSender<Bytes>>,
    send_window: i64,
    reply_tx: Option<oneshot::Sender<Result<Headers, SpdyError>>>,
    /// Set when the peer reset the stream.
    reset: Option<u32>,
    local_closed: bool,
    remote_closed: bool,
}

struct State {
    streams: HashMap<u32, StreamState>,
    next_id: u32,
    session_send_window: i64,
    initial_send_window: i64,
    peer_flow_control: bool,
    closed: bool,
    goaway_received: bool,
    /// Consumed but not yet acknowledged bytes of the session window.
    session_unacked: u32,
    /// Ids of our pings not yet answered, so their replies are not echoed back.
    pings_sent: std::collections::HashSet<u32>,
}

struct Shared {
    role: Role,
    state: Mutex<State>,
    ctrl_tx: mpsc::UnboundedSender<Outgoing>,
    data_tx: mpsc::Sender<Outgoing>,
    /// Woken when a send window grows or the session/stream closes.
    window: Notify,
    closed_tx: watch::Sender<bool>,
    /// Tells the reader task to stop (it then runs its end-of-session cleanup).
    stop_reading: Notify,
}

impl Shared {
    fn send_ctrl(&self, f: Frame) {
        let _ = self.ctrl_tx.send(Outgoing::Frame(f));
    }

    fn maybe_forget(state: &mut State, id: u32) {
        if let Some(s) = state.streams.get(&id) {
            if s.local_closed && s.remote_closed && s.reply_tx.is_none() {
                state.streams.remove(&id);
            }
        }
    }

    /// Accounts `n` bytes consumed from the session window and acknowledges them in
    /// batches of half a window, which keeps WINDOW_UPDATEs few.
    fn consumed(&self, n: usize) {
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
    shared: Arc<Shared>,
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

/// One SPDY stream: its headers plus a reading and a writing half.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub reader: StreamReader,
    pub writer: StreamWriter,
}

impl Stream {
    fn new(
        id: u32,
        headers: Headers,
        shared: Arc<Shared>,
        rx: mpsc::UnboundedReceiver<Bytes>,
    ) -> Stream {
        Stream {
            id,
            headers,
            reader: StreamReader {
                id,
                shared: shared.clone(),
                rx,
                buf: Bytes::new(),
                unacked: 0,
            },
            writer: StreamWriter { id, shared },
        }
    }

    /// The value of header `name`, ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// Receiving half of a stream. Implements `AsyncRead`; EOF when the peer sent FIN or RST
/// or the session ended.
pub struct StreamReader {
    id: u32,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Bytes>,
    buf: Bytes,
    unacked: u32,
}

impl StreamReader {
    /// The next chunk of data, or `None` at the end of the stream.
    pub async fn read_chunk(&mut self) -> Option<Bytes> {
        if !self.buf.is_empty() {
            return Some(std::mem::take(&mut self.buf));
        }
        let b = self.rx.recv().await?;
        self.ack(b.len());
        Some(b)
    }

    /// Reads everything up to the end of the stream.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = self.read_chunk().await {
            out.extend_from_slice(&b);
        }
        out
    }

    fn ack(&mut self, n: usize) {
        self.unacked += n as u32;
        if self.unacked as i64 >= DEFAULT_WINDOW / 2 {
            let d = std::mem::take(&mut self.unacked);
            self.shared.send_ctrl(Frame::WindowUpdate {
                stream_id: self.id,
                delta: d,
            });
        }
        self.shared.consumed(n);
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => {
                    self.ack(b.len());
                    self.buf = b;
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.buf.len().min(out.remaining());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Sending half of a stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
}

impl StreamWriter {
    /// Sends `data` in DATA frames, waiting on the send windows when the peer does flow
    /// control.
    pub async fn write_all(&self, mut data: &[u8]) -> Result<(), SpdyError> {
        while !data.is_empty() {
            let n = self.reserve(data.len().min(MAX_DATA_FRAME)).await?;
            let chunk = Bytes::copy_from_slice(&data[..n]);
            data = &data[n..];
            self.send(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: chunk,
            })
            .await?;
        }
        Ok(())
    }

    /// Waits for window to send up to `want` bytes and takes it.
    async fn reserve(&self, want: usize) -> Result<usize, SpdyError> {
        loop {
            let notified = self.shared.window.notified();
            {
                let mut st = self.shared.state.lock().unwrap();
                if st.closed {
                    return Err(SpdyError::SessionClosed);
                }
                let flow = st.peer_flow_control;
                let session_window = st.session_send_window;
                let Some(s) = st.streams.get_mut(&self.id) else {
                    return Err(SpdyError::StreamReset(self.id, rst::STREAM_ALREADY_CLOSED));
                };
                if let Some(code) = s.reset {
                    return Err(SpdyError::StreamReset(self.id, code));
                }
                if s.local_closed {
                    return Err(SpdyError::StreamReset(self.id, rst::STREAM_ALREADY_CLOSED));
                }
                let avail = s.send_window.min(session_window);
                if !flow || avail > 0 {
                    let n = if flow { want.min(avail as usize) } else { want };
                    s.send_window -= n as i64;
                    st.session_send_window -= n as i64;
                    return Ok(n);
                }
            }
            notified.await;
        }
    }

    async fn send(&self, f: Frame) -> Result<(), SpdyError> {
        self.shared
            .data_tx
            .send(Outgoing::Frame(f))
            .await
            .map_err(|_| SpdyError::SessionClosed)
    }

    /// Half-closes the stream (an empty DATA frame with FIN), after all data queued so far.
    pub async fn close(&self) -> Result<(), SpdyError> {
        {
            let mut st = self.shared.state.lock().unwrap();
            match st.streams.get_mut(&self.id) {
                Some(s) if !s.local_closed => s.local_closed = true,
                _ => return Ok(()),
            }
            Shared::maybe_forget(&mut st, self.id);
        }
        self.send(Frame::Data {
            stream_id: self.id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await
    }

    /// Aborts the stream in both directions.
    pub fn reset(&self, status: u32) {
        let mut st = self.shared.state.lock().unwrap();
        if let Some(mut s) = st.streams.remove(&self.id) {
            s.data_tx = None;
        }
        drop(st);
        self.shared.send_ctrl(Frame::RstStream {
            stream_id: self.id,
            status,
        });
        self.shared.window.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
        let mut enc = HeaderEncoder::new();
        let mut buf = BytesMut::new();
        for f in frames {
            encode_frame(f, &mut enc, &mut buf).unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut dec = HeaderDecoder::new();
            let mut r = &buf[..];
            let mut out = Vec::new();
            while let Some(f) = read_frame(&mut r, &mut dec).await.unwrap() {
                out.push(f);
            }
            out
        })
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dictionary_matches_spec_size() {
        // The SPDY/3 dictionary is 1423 bytes (ending in ",enq=0.").
        assert_eq!(dictionary().len(), 1423);
        assert!(dictionary().ends_with(b",*,enq=0."));
        assert!(dictionary().starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
    }

    #[test]
    fn frames_roundtrip() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 3,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "error"), ("port", "80")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::new(),
            },
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)],
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: 0,
            },
            Frame::Headers {
                stream_id: 1,
                flags: 0,
                headers: h(&[("a", "b")]),
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 65536,
            },
            // The compression context carries over between header blocks.
            Frame::SynStream {
                stream_id: 3,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
            },
        ];
        assert_eq!(roundtrip(&frames), frames);
    }

    #[test]
    fn data_frame_wire_format() {
        let mut enc = HeaderEncoder::new();
        let mut buf = BytesMut::new();
        let f = Frame::Data {
            stream_id: 5,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"ab"),
        };
        encode_frame(&f, &mut enc, &mut buf).unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 5, 1, 0, 0, 2, b'a', b'b']);
        buf.clear();
        encode_frame(&Frame::Ping { id: 2 }, &mut enc, &mut buf).unwrap();
        assert_eq!(&buf[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 2]);
    }

    #[test]
    fn header_compression_roundtrip_many_blocks() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        for i in 0..50 {
            let headers = h(&[
                ("streamtype", "stdout"),
                ("requestid", &i.to_string()),
                ("x-long", &"v".repeat(i * 100)),
            ]);
            let block = enc.encode(&headers).unwrap();
            assert_eq!(dec.decode(&block).unwrap(), headers);
        }
    }

    #[test]
    fn header_names_are_lowercased_and_nul_values_split() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        let block = enc.encode(&h(&[("StreamType", "a\0b")])).unwrap();
        assert_eq!(
            dec.decode(&block).unwrap(),
            h(&[("streamtype", "a"), ("streamtype", "b")])
        );
    }

    #[test]
    fn dictionary_compresses_common_names() {
        // Compression against the dictionary makes "content-type" etc. nearly free;
        // a decoder without it must fail, which shows the dictionary is in play.
        let mut enc = HeaderEncoder::new();
        let block = enc
            .encode(&h(&[("content-type", "text/plain"), ("status", "200 OK")]))
            .unwrap();
        let mut plain = Decompress::new(true);
        let mut out = Vec::with_capacity(1024);
        let err = plain
            .decompress_vec(&block, &mut out, FlushDecompress::Sync)
            .unwrap_err();
        assert!(err.needs_dictionary().is_some());
    }

    #[tokio::test]
    async fn server_answers_ping_and_stops_accepting_after_goaway() {
        let (a, b) = tokio::io::duplex(4096);
        let (_server, mut incoming) = Session::new(b, Role::Server);
        let (mut rd, mut wr) = tokio::io::split(a);
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        let send = |f: Frame, enc: &mut HeaderEncoder| {
            let mut buf = BytesMut::new();
            encode_frame(&f, enc, &mut buf).unwrap();
            buf
        };
        wr.write_all(&send(Frame::Ping { id: 1 }, &mut enc))
            .await
            .unwrap();
        assert_eq!(
            read_frame(&mut rd, &mut dec).await.unwrap(),
            Some(Frame::Ping { id: 1 })
        );
        let syn = Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), "stdin".into())],
        };
        wr.write_all(&send(syn, &mut enc)).await.unwrap();
        assert!(matches!(
            read_frame(&mut rd, &mut dec).await.unwrap(),
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        let mut s = incoming.accept().await.unwrap();
        let goaway = Frame::GoAway {
            last_good_stream_id: 0,
            status: 0,
        };
        wr.write_all(&send(goaway, &mut enc)).await.unwrap();
        assert!(incoming.accept().await.is_none());
        // Streams already open keep working after GOAWAY.
        let data = Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"x"),
        };
        wr.write_all(&send(data, &mut enc)).await.unwrap();
        assert_eq!(s.reader.read_to_end().await, b"x");
    }

    #[tokio::test]
    async fn session_open_data_fin_ping_and_flow_control() {
        let (a, b) = tokio::io::duplex(4096);
        let (client, _cin) = Session::new(a, Role::Client);
        let (server, mut sin) = Session::new(b, Role::Server);
        let srv = tokio::spawn(async move {
            let mut s = sin.accept().await.unwrap();
            assert_eq!(s.header("streamType"), Some("data"));
            // Echo everything back, then FIN.
            while let Some(chunk) = s.reader.read_chunk().await {
                s.writer.write_all(&chunk).await.unwrap();
            }
            s.writer.close().await.unwrap();
            server
        });
        let mut s = client
            .open(
                vec![("streamtype".into(), "data".into())],
                std::time::Duration::from_secs(5),
            )
            .await
            .unwrap();
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let w = s.writer.clone();
        let p2 = payload.clone();
        let sender = tokio::spawn(async move {
            w.write_all(&p2).await.unwrap();
            w.close().await.unwrap();
        });
        let got = s.reader.read_to_end().await;
        sender.await.unwrap();
        assert_eq!(got.len(), payload.len());
        assert!(got == payload);
        client.ping(1);
        let server = srv.await.unwrap();
        // Both sides did flow control with each other.
        assert!(server.shared.state.lock().unwrap().peer_flow_control);
        client.close().await;
        server.closed().await;
    }
}
