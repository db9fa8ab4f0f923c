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

use std::io;

mod frame;
mod headers;
mod session;
mod stream;
#[cfg(test)]
mod tests;

pub use frame::{encode_frame, read_frame, Frame};
pub use headers::{dictionary, HeaderDecoder, HeaderEncoder};
pub use session::{Incoming, Role, Session};
pub use stream::{Stream, StreamReader, StreamWriter};

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
