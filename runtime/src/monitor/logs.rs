//! Draining container output into the CRI log and to attached clients.

use std::os::fd::{AsRawFd, OwnedFd};

use tracing::warn;

use super::attach::copy_to_attaches;
use super::Monitor;
use crate::logs::{CriLogWriter, Stream};

impl Monitor {
    pub(super) fn drain(&mut self, idx: usize, eof_expected: bool) {
        let c = &mut self.containers[idx];
        let tty = c.plan.process.tty;
        let attaches = &mut c.attaches;
        let (fds, log): (Vec<(Stream, &OwnedFd)>, &mut Option<CriLogWriter>) = match &c.running {
            Some(_) => {
                let r = c.running.as_mut().unwrap();
                let mut v = Vec::new();
                if let Some(fd) = &r.stdout {
                    v.push((Stream::Stdout, fd));
                }
                if let Some(fd) = &r.stderr {
                    v.push((Stream::Stderr, fd));
                }
                (v, &mut r.log)
            }
            None => (
                c.draining.iter().map(|(s, fd)| (*s, fd)).collect(),
                &mut c.draining_log,
            ),
        };
        let mut closed = Vec::new();
        let mut buf = [0u8; 32 * 1024];
        for (stream, fd) in fds {
            loop {
                match nix::unistd::read(fd, &mut buf) {
                    Ok(0) | Err(nix::Error::EIO) => {
                        closed.push(fd.as_raw_fd());
                        if let Some(l) = log.as_mut() {
                            let _ = l.flush_partial(stream);
                        }
                        break;
                    }
                    Ok(n) => {
                        if let Some(l) = log.as_mut() {
                            if let Err(e) = l.write(stream, &buf[..n]) {
                                warn!(error = %e, "write container log");
                            }
                        }
                        copy_to_attaches(attaches, tty, stream, &buf[..n]);
                    }
                    Err(nix::Error::EINTR) => continue,
                    Err(_) => break, // EAGAIN: nothing more now
                }
            }
        }
        let _ = eof_expected;
        if let Some(r) = c.running.as_mut() {
            if r.stdout
                .as_ref()
                .is_some_and(|f| closed.contains(&f.as_raw_fd()))
            {
                r.stdout = None;
            }
            if r.stderr
                .as_ref()
                .is_some_and(|f| closed.contains(&f.as_raw_fd()))
            {
                r.stderr = None;
            }
        } else {
            c.draining
                .retain(|(_, fd)| !closed.contains(&fd.as_raw_fd()));
            if c.draining.is_empty() {
                c.draining_log = None;
            }
        }
    }
}
