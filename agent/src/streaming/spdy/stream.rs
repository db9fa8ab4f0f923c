//! One stream of a session: its headers, an `AsyncRead` receiving half and a sending half
//! that honours the send windows once the peer does flow control.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use super::session::{Outgoing, Shared};
use super::{header, rst, Frame, Headers, SpdyError, DEFAULT_WINDOW, FLAG_FIN, MAX_DATA_FRAME};

/// One SPDY stream: its headers plus a reading and a writing half.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub reader: StreamReader,
    pub writer: StreamWriter,
}

impl Stream {
    pub(super) fn new(
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
