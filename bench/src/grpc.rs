//! A minimal blocking gRPC client over one HTTP/2 connection on a unix socket, enough for
//! the CRI calls the benchmark times, plus the few protobuf encoders and decoders those
//! calls need. The bench crate carries no async runtime or gRPC stack, and one
//! synchronous connection keeps the client's own cost small and equal for every server.
//!
//! Requests are sent one at a time: HEADERS (HPACK literals, no Huffman, no table) and
//! one DATA frame. Responses are read frame by frame; response headers are not decoded
//! (servers Huffman-code them), so a call without a response message is reported as
//! failed and the server's log tells why.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
/// Our receive window, per stream and for the connection.
const WINDOW: u32 = 1 << 24;

pub struct Client {
    stream: UnixStream,
    next_stream: u32,
}

impl Client {
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("connect to {}", socket.display()))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut c = Client {
            stream,
            next_stream: 1,
        };
        let mut settings = Vec::new();
        // ENABLE_PUSH = 0, INITIAL_WINDOW_SIZE = WINDOW.
        settings.extend_from_slice(&[0, 2, 0, 0, 0, 0]);
        settings.extend_from_slice(&[0, 4]);
        settings.extend_from_slice(&WINDOW.to_be_bytes());
        c.stream.write_all(PREFACE)?;
        c.frame(SETTINGS, 0, 0, &settings)?;
        c.frame(WINDOW_UPDATE, 0, 0, &(WINDOW - 65_535).to_be_bytes())?;
        Ok(c)
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<()> {
        let len = payload.len() as u32;
        let mut head = [0u8; 9];
        head[..3].copy_from_slice(&len.to_be_bytes()[1..]);
        head[3] = kind;
        head[4] = flags;
        head[5..].copy_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        self.stream.write_all(&head)?;
        self.stream.write_all(payload)?;
        Ok(())
    }

    fn read_frame(&mut self) -> Result<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        self.stream
            .read_exact(&mut head)
            .context("read HTTP/2 frame")?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload)?;
        Ok((head[3], head[4], stream, payload))
    }

    /// Call `/<service>/<method>` with an encoded request; the encoded response message.
    pub fn call(&mut self, path: &str, request: &[u8]) -> Result<Vec<u8>> {
        let id = self.next_stream;
        self.next_stream += 2;
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            // Literal header field without indexing, new name (RFC 7541 6.2.2).
            block.push(0);
            hpack_string(&mut block, name);
            hpack_string(&mut block, value);
        }
        self.frame(HEADERS, END_HEADERS, id, &block)?;
        let mut body = Vec::with_capacity(request.len() + 5);
        body.push(0);
        body.extend_from_slice(&(request.len() as u32).to_be_bytes());
        body.extend_from_slice(request);
        self.frame(DATA, END_STREAM, id, &body)?;

        let mut data = Vec::new();
        loop {
            let (kind, flags, stream, payload) = self.read_frame()?;
            match kind {
                SETTINGS if flags & ACK == 0 => self.frame(SETTINGS, ACK, 0, &[])?,
                PING if flags & ACK == 0 => self.frame(PING, ACK, 0, &payload)?,
                GOAWAY => bail!("{path}: the server closed the connection (GOAWAY)"),
                RST_STREAM if stream == id => bail!("{path}: stream reset by the server"),
                DATA if stream == id => {
                    let body = if flags & PADDED != 0 && !payload.is_empty() {
                        let pad = payload[0] as usize;
                        &payload[1..payload.len().saturating_sub(pad)]
                    } else {
                        &payload[..]
                    };
                    data.extend_from_slice(body);
                    if !payload.is_empty() {
                        let n = (payload.len() as u32).to_be_bytes();
                        self.frame(WINDOW_UPDATE, 0, 0, &n)?;
                        if flags & END_STREAM == 0 {
                            self.frame(WINDOW_UPDATE, 0, id, &n)?;
                        }
                    }
                    if flags & END_STREAM != 0 {
                        break;
                    }
                }
                HEADERS if stream == id && flags & END_STREAM != 0 => break,
                _ => {}
            }
        }
        if data.len() < 5 {
            bail!("{path}: the call failed (no response message; the server's log says why)");
        }
        if data[0] != 0 {
            bail!("{path}: compressed response not supported");
        }
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        data.get(5..5 + len)
            .map(<[u8]>::to_vec)
            .with_context(|| format!("{path}: truncated response message"))
    }
}

fn hpack_int(out: &mut Vec<u8>, prefix_bits: u8, first: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_string(out: &mut Vec<u8>, s: &str) {
    hpack_int(out, 7, 0, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A protobuf message under construction.
#[derive(Default, Clone)]
pub struct Msg(Vec<u8>);

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Msg {
    pub fn new() -> Self {
        Msg::default()
    }

    fn bytes(mut self, field: u32, b: &[u8]) -> Self {
        varint(&mut self.0, u64::from(field << 3 | 2));
        varint(&mut self.0, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    pub fn str(self, field: u32, s: &str) -> Self {
        if s.is_empty() {
            return self;
        }
        self.bytes(field, s.as_bytes())
    }

    pub fn msg(self, field: u32, m: Msg) -> Self {
        self.bytes(field, &m.0)
    }

    pub fn int(mut self, field: u32, v: i64) -> Self {
        if v != 0 {
            varint(&mut self.0, u64::from(field << 3));
            varint(&mut self.0, v as u64);
        }
        self
    }

    pub fn encode(self) -> Vec<u8> {
        self.0
    }
}

/// The first string (or bytes) value of `field` in an encoded message.
pub fn string_field(msg: &[u8], field: u32) -> Option<String> {
    let mut i = 0;
    let read_varint = |i: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *msg.get(*i)?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    while i < msg.len() {
        let key = read_varint(&mut i)?;
        let (f, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                read_varint(&mut i)?;
            }
            1 => i += 8,
            5 => i += 4,
            2 => {
                let len = read_varint(&mut i)? as usize;
                let v = msg.get(i..i + len)?;
                if f == field {
                    return Some(String::from_utf8_lossy(v).into_owned());
                }
                i += len;
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_round_trip() {
        let m = Msg::new()
            .msg(1, Msg::new().str(1, "name").str(2, "uid"))
            .int(2, 300)
            .str(3, "x")
            .encode();
        assert_eq!(&m[..2], &[0x0a, 11]);
        assert_eq!(string_field(&m, 3).as_deref(), Some("x"));
        assert_eq!(string_field(&m, 4), None);
        let inner = string_field(&m, 1).unwrap();
        assert_eq!(string_field(inner.as_bytes(), 2).as_deref(), Some("uid"));
    }

    #[test]
    fn hpack_integers_use_continuation_bytes() {
        let mut out = Vec::new();
        hpack_int(&mut out, 7, 0, 10);
        assert_eq!(out, [10]);
        out.clear();
        // RFC 7541 C.1.2 with a 5-bit prefix: 1337 -> 31, 154, 10.
        hpack_int(&mut out, 5, 0, 1337);
        assert_eq!(out, [31, 154, 10]);
    }
}
