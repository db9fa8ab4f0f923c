//! The CRI socket's transport: a byte-stream filter between the unix socket and the
//! HTTP/2 server that makes every request's `:authority` acceptable to it.
//!
//! gRPC clients in Go (crictl, critest, kubelets before 1.26), Java and C++ send the
//! unix socket's path (`/run/podrun/podrun.sock`, sometimes percent-encoded) as the
//! HTTP/2 `:authority`. That is no valid URI authority, and the HTTP/2 server resets such
//! streams with PROTOCOL_ERROR. containerd and CRI-O ignore the authority on a unix
//! socket; so does podrun: a request whose `:authority` does not parse is given
//! `localhost` before the server sees it.
//!
//! Header blocks are HPACK-compressed with a dynamic table that the client's encoder and
//! the server's decoder keep in step, so the filter decodes every block the client sends
//! (tracking the client's table) and, from the first block it has to change onwards,
//! re-encodes each block without touching the server's dynamic table. Until then blocks
//! pass through byte for byte, and other frames always do, without being buffered.
//!
//! ```text
//!  Preface ──24 bytes──▶ Frames ◀─┐  HEADERS/CONTINUATION: buffered to END_HEADERS,
//!                          │      └─ decoded, then forwarded as they came (Pass) or
//!                          │         re-encoded (Reencode); other frames stream through
//!                          └─ not HTTP/2, or a framing error ─▶ Raw (everything passes)
//! ```

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Every HTTP/2 peer accepts frames of this size (SETTINGS_MAX_FRAME_SIZE's floor).
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The most header-block bytes (as sent, compressed) buffered for one request.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// What a request with an unusable authority is given instead.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("HTTP/2 header block of stream {stream} exceeds {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge { stream: u32 },
    #[error("HTTP/2 header block of stream {stream} cannot be decoded: {reason}")]
    Hpack { stream: u32, reason: String },
}

impl From<TransportError> for io::Error {
    fn from(e: TransportError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Header blocks are decoded and forwarded unchanged.
    Pass,
    /// A block was rewritten: every block from now on is re-encoded.
    Reencode,
    /// Not HTTP/2 or not well-framed: the server sees the bytes as sent and judges them.
    Raw,
}

/// A header block being collected, from its HEADERS frame to END_HEADERS.
struct PendingBlock {
    stream: u32,
    /// END_STREAM of the HEADERS frame.
    end_stream: bool,
    /// The HEADERS frame's priority fields, kept as they were.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, forwarded as they are when nothing needs changing.
    raw: Vec<u8>,
}

/// The sans-IO filter of the client-to-server direction of one connection.
pub struct AuthorityRewriter {
    mode: Mode,
    preface_seen: usize,
    /// Received bytes not yet consumed (at most one frame header or header frame).
    input: Vec<u8>,
    /// Payload bytes of the current non-header frame still to forward as they come.
    passthrough: usize,
    block: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    rewritten: u64,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityRewriter {
    pub fn new() -> Self {
        AuthorityRewriter {
            mode: Mode::Pass,
            preface_seen: 0,
            input: Vec::new(),
            passthrough: 0,
            block: None,
            decoder: loona_hpack::Decoder::new(),
            rewritten: 0,
        }
    }

    /// How many requests had their authority replaced.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Filter `data` received from the client, appending what the server should read to
    /// `out`. An error means the connection cannot be carried on faithfully.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), TransportError> {
        while !data.is_empty() {
            if self.mode == Mode::Raw {
                out.extend_from_slice(data);
                return Ok(());
            }
            if self.preface_seen < PREFACE.len() {
                let want = &PREFACE[self.preface_seen..];
                let n = want.len().min(data.len());
                if data[..n] != want[..n] {
                    self.go_raw(out);
                    continue;
                }
                out.extend_from_slice(&data[..n]);
                self.preface_seen += n;
                data = &data[n..];
                continue;
            }
            if self.passthrough > 0 {
                let n = self.passthrough.min(data.len());
                out.extend_from_slice(&data[..n]);
                self.passthrough -= n;
                data = &data[n..];
                continue;
            }
            // Collect a frame header, then (for header frames) the whole frame.
            let need = if self.input.len() < FRAME_HEADER_LEN {
                FRAME_HEADER_LEN
            } else {
                FRAME_HEADER_LEN + frame_len(&self.input)
            };
            let n = (need - self.input.len()).min(data.len());
            self.input.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.input.len() < need {
                continue;
            }
            if need == FRAME_HEADER_LEN {
                self.frame_header(out)?;
            }
            if self.mode != Mode::Raw
                && self.input.len() >= FRAME_HEADER_LEN
                && self.input.len() == FRAME_HEADER_LEN + frame_len(&self.input)
            {
                self.header_frame(out)?;
            }
        }
        Ok(())
    }

    /// The connection ended: forward whatever was held back, so the server sees the
    /// same truncated input the client sent.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(b) = self.block.take() {
            out.extend_from_slice(&b.raw);
        }
        out.append(&mut self.input);
    }

    /// `self.input` holds a frame header: forward other frames' headers and let their
    /// payloads stream through; keep header frames to collect their payload.
    fn frame_header(&mut self, out: &mut Vec<u8>) -> Result<(), TransportError> {
        let h = &self.input;
        let (len, kind) = (frame_len(h), h[3]);
        let stream = stream_id(h);
        // Inside a header block only a CONTINUATION of its stream may come, and outside
        // one no CONTINUATION: anything else is a connection error the server must see
        // as it was sent.
        let framing_ok = match (&self.block, kind) {
            (Some(b), TYPE_CONTINUATION) => b.stream == stream,
            (Some(_), _) | (None, TYPE_CONTINUATION) => false,
            _ => true,
        };
        if !framing_ok {
            self.go_raw(out);
            return Ok(());
        }
        if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
            out.append(&mut self.input);
            self.passthrough = len;
            return Ok(());
        }
        let buffered = self.block.as_ref().map_or(0, |b| b.raw.len());
        if buffered + FRAME_HEADER_LEN + len > MAX_HEADER_BLOCK {
            if self.mode == Mode::Pass {
                // The server applies its own limits to what it is sent.
                self.go_raw(out);
                return Ok(());
            }
            return Err(TransportError::HeaderBlockTooLarge { stream });
        }
        Ok(())
    }

    /// `self.input` holds a whole HEADERS or CONTINUATION frame.
    fn header_frame(&mut self, out: &mut Vec<u8>) -> Result<(), TransportError> {
        let frame = std::mem::take(&mut self.input);
        let (kind, flags, stream) = (frame[3], frame[4], stream_id(&frame));
        let payload = &frame[FRAME_HEADER_LEN..];
        let block = if kind == TYPE_HEADERS {
            let Some((priority, fragment)) = headers_fragment(flags, payload) else {
                self.input = frame;
                self.go_raw(out);
                return Ok(());
            };
            self.block.insert(PendingBlock {
                stream,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
                raw: Vec::new(),
            })
        } else if let Some(b) = self.block.as_mut() {
            b.fragment.extend_from_slice(payload);
            b
        } else {
            self.input = frame;
            self.go_raw(out);
            return Ok(());
        };
        block.raw.extend_from_slice(&frame);
        if flags & FLAG_END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.complete(block, out)?;
            }
        }
        Ok(())
    }

    fn complete(&mut self, block: PendingBlock, out: &mut Vec<u8>) -> Result<(), TransportError> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            headers.push((name.into_owned(), value.into_owned()))
        });
        if let Err(e) = decoded {
            if self.mode == Mode::Pass {
                // The server's own decoder will find the same fault and say so.
                out.extend_from_slice(&block.raw);
                self.mode = Mode::Raw;
                return Ok(());
            }
            return Err(TransportError::Hpack {
                stream: block.stream,
                reason: format!("{e:?}"),
            });
        }
        let mut changed = false;
        for (name, value) in headers.iter_mut() {
            if name == b":authority" && !valid_authority(value) {
                *value = LOCAL_AUTHORITY.to_vec();
                changed = true;
            }
        }
        if changed {
            self.rewritten += 1;
            tracing::debug!(
                stream = block.stream,
                "replaced a request's unusable :authority"
            );
            self.mode = Mode::Reencode;
        }
        if self.mode == Mode::Pass {
            out.extend_from_slice(&block.raw);
            return Ok(());
        }
        let encoded = encode_block(&headers);
        write_header_frames(
            out,
            block.stream,
            block.end_stream,
            block.priority,
            &encoded,
        );
        Ok(())
    }

    /// Stop filtering: forward what is held back, and from now on every byte as it comes.
    fn go_raw(&mut self, out: &mut Vec<u8>) {
        self.finish(out);
        self.passthrough = 0;
        self.mode = Mode::Raw;
    }
}

fn stream_id(header: &[u8]) -> u32 {
    u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff
}

fn frame_len(header: &[u8]) -> usize {
    (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2])
}

/// The priority fields and header block fragment of a HEADERS payload, without padding;
/// None if the padding or priority fields do not fit.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        pad = usize::from(*body.first()?);
        body = &body[1..];
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        priority = Some(<[u8; 5]>::try_from(body.get(..5)?).ok()?);
        body = &body[5..];
    }
    let end = body.len().checked_sub(pad)?;
    Some((priority, &body[..end]))
}

/// Whether the HTTP/2 server accepts `value` as a request's authority.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// HPACK-encode `headers` as literals that are never added to the dynamic table, so the
/// server's decoder table stays as the client's unchanged blocks left it.
fn encode_block(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        // Literal Header Field without Indexing, new name (RFC 7541 §6.2.2).
        out.push(0x00);
        encode_string(name, &mut out);
        encode_string(value, &mut out);
    }
    out
}

/// A string literal without Huffman coding: 7-bit-prefix length, then the bytes.
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1); `first` holds the bits above it.
fn encode_integer(value: usize, prefix_bits: u8, first: u8, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(value, prefix_bits, first, out);
}

/// A HEADERS frame and as many CONTINUATION frames as `block` needs.
fn write_header_frames(
    out: &mut Vec<u8>,
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
) {
    let first_room = MAX_FRAME_PAYLOAD - if priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = 0u8;
    if end_stream {
        flags |= FLAG_END_STREAM;
    }
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let prio = priority.as_ref().map_or(&[][..], |p| &p[..]);
    write_frame_header(out, prio.len() + first.len(), TYPE_HEADERS, flags, stream);
    out.extend_from_slice(prio);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
    }
}

fn write_frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
}

/// A connection whose client-to-server bytes go through an [`AuthorityRewriter`];
/// writes go to the client untouched.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: AuthorityRewriter,
    /// Filtered bytes not yet read by the server, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    scratch: Box<[u8]>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: AuthorityRewriter::new(),
            out: Vec::new(),
            out_pos: 0,
            scratch: vec![0u8; 32 * 1024].into_boxed_slice(),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let filled = rb.filled().len();
            if filled == 0 {
                this.eof = true;
                this.rewriter.finish(&mut this.out);
                continue;
            }
            this.rewriter
                .feed(&this.scratch[..filled], &mut this.out)
                .map_err(io::Error::from)?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
