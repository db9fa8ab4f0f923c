//! The monitor's loop: reap exits, make progress, write the status, then wait on signals,
//! the control socket, holders, container output and attached clients.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use tracing::{debug, info, warn};

use super::protocol::{self, Request, Response};
use super::{Monitor, MonitorError, STDIN_BUF_MAX};

impl Monitor {
    pub(super) fn run(mut self) -> Result<(), MonitorError> {
        info!(pod = %self.plan.name, namespace = %self.plan.namespace, id = %self.plan.id, "pod monitor started");
        loop {
            self.reap();
            self.progress();
            if self.status_dirty {
                self.write_status()?;
                self.status_dirty = false;
            }
            if self.finished_stopping() {
                if self.stopping.as_ref().is_some_and(|s| s.remove) {
                    break;
                }
                // Stopped but kept: answer whoever waits, stay for status and removal.
                for w in self
                    .stopping
                    .as_mut()
                    .map(|s| std::mem::take(&mut s.waiters))
                    .unwrap_or_default()
                {
                    let _ = protocol::write_response(&w, &Response::Ok);
                }
            }
            self.poll_once()?;
        }
        let remove = self.stopping.as_ref().map(|s| s.remove).unwrap_or(false);
        let waiters = self.stopping.take().map(|s| s.waiters).unwrap_or_default();
        if remove {
            self.teardown();
        }
        for w in waiters {
            let _ = protocol::write_response(&w, &Response::Ok);
        }
        info!(pod = %self.plan.name, "pod monitor exiting");
        Ok(())
    }

    fn next_timeout(&self) -> PollTimeout {
        let now = Instant::now();
        let mut next: Option<Instant> = self
            .containers
            .iter()
            .filter(|c| c.running.is_none() && !c.done)
            .filter_map(|c| c.next_start)
            .min();
        // StopContainer kill deadlines and attached clients waiting for their Exited.
        for c in &self.containers {
            let deadlines = c
                .running
                .as_ref()
                .and(c.kill_at)
                .into_iter()
                .chain(c.attaches.iter().filter_map(|a| a.finish_by));
            for t in deadlines {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        if let Some(s) = self.stopping.as_ref().filter(|_| !self.finished_stopping()) {
            next = Some(next.map_or(s.deadline, |n| n.min(s.deadline)));
            // While stopping, look again often: processes in shared PID namespaces are
            // killed through the cgroup, which sends no SIGCHLD for grandchildren.
            next = Some(next.unwrap().min(now + Duration::from_millis(200)));
        }
        match next {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis().min(60_000) as u16;
                PollTimeout::from(ms.max(1))
            }
        }
    }

    fn poll_once(&mut self) -> Result<(), MonitorError> {
        enum Src {
            Signal,
            Listener,
            Holder(usize),
            Pipe(usize),
            /// Container's stdin can take more of its buffered input.
            StdinOut(usize),
            /// An attached client's stdin has input (container, attachment).
            AttachIn(usize, usize),
            /// An attached client's output can take more.
            AttachOut(usize, usize),
            /// An attached client's connection hung up (or spoke).
            AttachConn(usize, usize),
        }
        let timeout = self.next_timeout();
        let mut srcs = Vec::new();
        let mut pfds = Vec::new();
        pfds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
        srcs.push(Src::Signal);
        pfds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        srcs.push(Src::Listener);
        for (i, h) in self.holders.iter().enumerate() {
            pfds.push(PollFd::new(h.as_fd(), PollFlags::POLLIN));
            srcs.push(Src::Holder(i));
        }
        for (i, c) in self.containers.iter().enumerate() {
            let fds: Vec<&OwnedFd> = match &c.running {
                Some(r) => r.stdout.iter().chain(r.stderr.iter()).collect(),
                None => c.draining.iter().map(|(_, f)| f).collect(),
            };
            for fd in fds {
                pfds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                srcs.push(Src::Pipe(i));
            }
            let stdin = c.running.as_ref().filter(|r| r.stdin.is_some());
            if let Some(r) = stdin.filter(|r| !r.stdin_buf.is_empty()) {
                pfds.push(PollFd::new(
                    r.stdin.as_ref().unwrap().as_fd(),
                    PollFlags::POLLOUT,
                ));
                srcs.push(Src::StdinOut(i));
            }
            let take_input = stdin.is_some_and(|r| r.stdin_buf.len() < STDIN_BUF_MAX);
            for (j, a) in c.attaches.iter().enumerate() {
                pfds.push(PollFd::new(a.stream.as_fd(), PollFlags::POLLIN));
                srcs.push(Src::AttachConn(i, j));
                if let Some(fd) = a.stdin.as_ref().filter(|_| take_input) {
                    pfds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    srcs.push(Src::AttachIn(i, j));
                }
                for o in [&a.stdout, &a.stderr].into_iter().flatten() {
                    if !o.pending.is_empty() {
                        pfds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLOUT));
                        srcs.push(Src::AttachOut(i, j));
                    }
                }
            }
        }
        match nix::poll::poll(&mut pfds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                return Err(MonitorError::Sys {
                    step: "poll",
                    source: e,
                })
            }
        }
        let ready: Vec<bool> = pfds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(pfds);
        let mut hung_holders = Vec::new();
        let mut pipes = Vec::new();
        let mut accept = false;
        let mut stdins = Vec::new();
        for (src, r) in srcs.into_iter().zip(ready) {
            if !r {
                continue;
            }
            match src {
                Src::Signal => self.on_signals(),
                Src::Listener => accept = true,
                Src::Holder(i) => hung_holders.push(i),
                Src::Pipe(i) => pipes.push(i),
                Src::StdinOut(i) => stdins.push(i),
                Src::AttachIn(i, j) => {
                    self.read_attached_stdin(i, j);
                    stdins.push(i);
                }
                Src::AttachOut(i, j) => {
                    let a = &mut self.containers[i].attaches[j];
                    for o in [&mut a.stdout, &mut a.stderr] {
                        if o.as_mut().is_some_and(|o| !o.flush()) {
                            *o = None;
                        }
                    }
                }
                Src::AttachConn(i, j) => {
                    let a = &mut self.containers[i].attaches[j];
                    let mut b = [0u8; 512];
                    match nix::sys::socket::recv(
                        a.stream.as_raw_fd(),
                        &mut b,
                        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                    ) {
                        Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
                        Ok(n) if n > 0 => {}
                        _ => a.gone = true,
                    }
                }
            }
        }
        pipes.dedup();
        for i in pipes {
            self.drain(i, false);
        }
        stdins.dedup();
        for i in stdins {
            self.flush_stdin(i);
        }
        for i in 0..self.containers.len() {
            let c = &mut self.containers[i];
            let closed_stdin = c.attaches.iter().any(|a| a.gone && a.stdin.is_some());
            c.attaches.retain(|a| !a.gone);
            if closed_stdin {
                self.attached_stdin_closed(i);
            }
        }
        for i in hung_holders.into_iter().rev() {
            self.on_holder_readable(i);
        }
        if accept {
            self.accept_clients();
        }
        Ok(())
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let sig = info.ssi_signo as i32;
            if sig == libc::SIGCHLD {
                continue; // reaped at the top of the loop
            }
            // A stop signal from outside the pod (sender pid 0 when the sender is in an
            // ancestor PID namespace, or a host pid) stops and removes the pod; containers
            // sharing the monitor's PID namespace cannot signal it through the pod's
            // processes since the monitor is not visible... unless they share its
            // namespace, in which case only root with CAP_KILL could, as with pause.
            info!(pod = %self.plan.name, signal = sig, "stop signal received");
            self.begin_stop(None, true, None);
        }
    }

    fn on_holder_readable(&mut self, i: usize) {
        let h = self.holders.remove(i);
        match protocol::read_request(&h) {
            Ok((Request::Release, _)) => {
                let _ = protocol::write_response(&h, &Response::Ok);
            }
            Ok(_) => self.holders.insert(i, h),
            Err(_) => {
                // The foreground `podrun run` went away without releasing the pod.
                warn!(pod = %self.plan.name, "the command holding the pod exited; stopping the pod");
                self.begin_stop(None, true, None);
            }
        }
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(_) => return,
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            match protocol::read_request(&stream) {
                Ok((req, fds)) => self.handle(stream, req, fds),
                Err(e) => debug!(error = %e, "bad monitor request"),
            }
        }
    }
}
