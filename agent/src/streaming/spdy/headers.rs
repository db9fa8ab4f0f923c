//! Header blocks: their serialisation and zlib compression with the SPDY/3 dictionary.

use bytes::{Buf, BufMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

use super::{Headers, SpdyError};

/// Most bytes a header block may inflate to, and its names and values may add up to
/// (Kubernetes' streams carry a handful of short headers).
const MAX_HEADER_BLOCK: usize = 1024 * 1024;
/// Most headers one block may carry, counting each NUL-separated value.
const MAX_HEADERS: usize = 1024;

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
        let mut out: Vec<u8> = Vec::with_capacity((block.len() * 4 + 64).min(MAX_HEADER_BLOCK));
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(1024));
            }
            let (in_before, out_before) = (self.z.total_in(), out.len());
            let res = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.z.total_in() - in_before) as usize..];
            // A stream the peer ended (or garbage after it) yields neither: give up rather
            // than spin.
            let stuck = self.z.total_in() == in_before && out.len() == out_before;
            if res.is_ok() && stuck && !input.is_empty() {
                return Err(SpdyError::Compression(
                    "header block has data after the end of the compressed stream".into(),
                ));
            }
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
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Compression(format!(
                    "header block inflates to more than {MAX_HEADER_BLOCK} bytes"
                )));
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
    // Splitting values multiplies names: bound what the block expands to, not only its size.
    let mut expanded = 0usize;
    for _ in 0..n {
        let k = take_str(&mut b)?;
        let v = take_str(&mut b)?;
        // Several values of one name travel NUL-separated in one value.
        for v in v.split('\0') {
            expanded += k.len() + v.len();
            if headers.len() >= MAX_HEADERS || expanded > MAX_HEADER_BLOCK {
                return Err(SpdyError::Protocol(format!(
                    "header block expands past {MAX_HEADERS} headers or {MAX_HEADER_BLOCK} bytes"
                )));
            }
            headers.push((k.clone(), v.to_string()));
        }
    }
    Ok(headers)
}
