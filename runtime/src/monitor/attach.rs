//! Clients attached to a running container's stdio: its output copied to them through
//! bounded queues, their input written to its stdin, terminal resizes.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use tracing::debug;

use super::protocol::{self, Response};
use super::{
    set_nonblocking, AttachedOutput, Attachment, Monitor, ATTACH_PENDING_MAX, STDIN_BUF_MAX,
};
use crate::logs::Stream;

impl AttachedOutput {
    pub(super) fn new(fd: OwnedFd) -> Self {
        set_nonblocking(&fd);
        Self {
            fd,
            pending: Vec::new(),
        }
    }

    fn queue(&mut self, data: &[u8]) {
        let room = ATTACH_PENDING_MAX.saturating_sub(self.pending.len());
        self.pending
            .extend_from_slice(&data[..data.len().min(room)]);
    }

    /// Write `data` (after what is pending); false once the client's side is broken.
    pub(super) fn push(&mut self, data: &[u8]) -> bool {
        if !self.pending.is_empty() {
            self.queue(data);
            return self.flush();
        }
        let mut rest = data;
        while !rest.is_empty() {
            match nix::unistd::write(&self.fd, rest) {
                Ok(n) => rest = &rest[n..],
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => break,
                Err(_) => return false,
            }
        }
        self.queue(rest);
        true
    }

    /// Write what is pending, as far as the descriptor takes it; false once broken.
    pub(super) fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match nix::unistd::write(&self.fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return true,
                Err(_) => return false,
            }
        }
        true
    }
}

impl Attachment {
    pub(super) fn flushed(&self) -> bool {
        [&self.stdout, &self.stderr]
            .iter()
            .all(|o| o.as_ref().is_none_or(|o| o.pending.is_empty()))
    }
}

impl Monitor {
    /// `want` is (stdin, stdout, stderr); `fds` holds one descriptor per true entry.
    pub(super) fn attach(
        &mut self,
        stream: UnixStream,
        id: &str,
        want: [bool; 3],
        fds: Vec<OwnedFd>,
    ) {
        let result = (|| {
            let idx = self
                .index_of(id)
                .ok_or_else(|| format!("container {id} not found"))?;
            let r = self.containers[idx]
                .running
                .as_ref()
                .ok_or_else(|| format!("container {id} is not running"))?;
            if fds.len() != want.iter().filter(|w| **w).count() {
                return Err("attach needs one descriptor per requested stream".to_owned());
            }
            if want[0] && (r.stdin.is_none() || r.stdin_close) {
                return Err(format!("container {id} has no stdin"));
            }
            Ok(idx)
        })();
        let idx = match result {
            Ok(idx) => idx,
            Err(message) => {
                let _ = protocol::write_response(&stream, &Response::Error { message });
                return;
            }
        };
        let mut fds = fds.into_iter();
        let mut next = |wanted: bool| if wanted { fds.next() } else { None };
        let stdin = next(want[0]);
        if let Some(fd) = &stdin {
            set_nonblocking(fd);
        }
        let stdout = next(want[1]).map(AttachedOutput::new);
        let stderr = next(want[2]).map(AttachedOutput::new);
        let _ = stream.set_read_timeout(None);
        if protocol::write_response(&stream, &Response::Ok).is_err() {
            return;
        }
        debug!(pod = %self.plan.name, container = %self.containers[idx].plan.name, "client attached");
        self.containers[idx].attaches.push(Attachment {
            stream,
            stdin,
            stdout,
            stderr,
            exit_code: None,
            finish_by: None,
            gone: false,
        });
    }

    pub(super) fn read_attached_stdin(&mut self, i: usize, j: usize) {
        let c = &mut self.containers[i];
        let (Some(r), Some(a)) = (c.running.as_mut(), c.attaches.get_mut(j)) else {
            return;
        };
        let Some(fd) = &a.stdin else { return };
        let mut buf = [0u8; 16 * 1024];
        let room = STDIN_BUF_MAX
            .saturating_sub(r.stdin_buf.len())
            .min(buf.len());
        match nix::unistd::read(fd, &mut buf[..room.max(1)]) {
            Ok(n) if n > 0 => r.stdin_buf.extend_from_slice(&buf[..n]),
            Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
            _ => {
                a.stdin = None;
                self.attached_stdin_closed(i);
            }
        }
    }

    /// An attached client closed its stdin: with stdin_once the container's stdin is
    /// closed too (once what it sent is written), so the container sees EOF.
    pub(super) fn attached_stdin_closed(&mut self, i: usize) {
        let c = &mut self.containers[i];
        if !c.plan.stdin_once {
            return;
        }
        if let Some(r) = c.running.as_mut() {
            r.stdin_close = true;
        }
        self.flush_stdin(i);
    }

    pub(super) fn flush_stdin(&mut self, i: usize) {
        let Some(r) = self.containers[i].running.as_mut() else {
            return;
        };
        let Some(fd) = &r.stdin else {
            r.stdin_buf.clear();
            return;
        };
        while !r.stdin_buf.is_empty() {
            match nix::unistd::write(fd, &r.stdin_buf) {
                Ok(n) => {
                    r.stdin_buf.drain(..n);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return,
                Err(_) => {
                    // The container closed its stdin: nothing more can reach it.
                    r.stdin_buf.clear();
                    r.stdin = None;
                    return;
                }
            }
        }
        if r.stdin_close {
            r.stdin = None;
        }
    }

    pub(super) fn resize(&mut self, id: &str, width: u16, height: u16) -> Result<(), String> {
        let idx = self
            .index_of(id)
            .ok_or_else(|| format!("container {id} not found"))?;
        let c = &self.containers[idx];
        if !c.plan.process.tty {
            return Err(format!("container {id} has no terminal"));
        }
        let master = c
            .running
            .as_ref()
            .and_then(|r| r.stdout.as_ref())
            .ok_or_else(|| format!("container {id} is not running"))?;
        crate::process::set_terminal_size(master, height, width)
            .map_err(|e| format!("resize terminal: {e}"))?;
        Ok(())
    }
}

/// Copy container output to the attached clients: a tty container has one stream, which
/// goes to their stdout. A client whose side broke loses that output descriptor.
pub(super) fn copy_to_attaches(
    attaches: &mut [Attachment],
    tty: bool,
    stream: Stream,
    data: &[u8],
) {
    for a in attaches {
        let out = if tty || stream == Stream::Stdout {
            &mut a.stdout
        } else {
            &mut a.stderr
        };
        if out.as_mut().is_some_and(|o| !o.push(data)) {
            *out = None;
        }
    }
}
