//! SPDY/3 frames: the [`Frame`] enum, its wire encoding and the decoding of frames read
//! from the connection.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{HeaderDecoder, HeaderEncoder, Headers, SpdyError, MAX_FRAME, VERSION};

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

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
        // Grow with the bytes that arrive, not with what the length field claims.
        let mut body = Vec::with_capacity(len.min(64 * 1024));
        (&mut *r).take(len as u64).read_to_end(&mut body).await?;
        if body.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("frame of {len} bytes ends after {}", body.len()),
            )
            .into());
        }
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
