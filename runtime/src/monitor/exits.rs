//! Container exits: reaping children, recording how a container ended, and whether and
//! when (back-off) it runs again.

use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, info};

use super::protocol::{self, Response};
use super::{Monitor, ATTACH_LINGER};
use crate::logs::Stream;
use crate::plan::ContainerKind;
use crate::status::ContainerState;

impl Monitor {
    pub(super) fn reap(&mut self) {
        loop {
            match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid, code, None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.on_exit(pid, 128 + sig as i32, Some(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, exit_code: i32, signal: Option<i32>) {
        if let Some(session) = self.execs.remove(&pid) {
            debug!(pod = %self.plan.name, pid = pid.as_raw(), exit_code, "exec process exited");
            if let Some(s) = session.stream {
                let _ = protocol::write_response(&s, &Response::Exited { exit_code });
            }
            if let Some(idx) = session.hook_of {
                // preStop finished: now the container gets its stop signal.
                if self.stopping.is_some() {
                    self.signal_container(idx);
                }
            }
            return;
        }
        let Some(idx) = self
            .containers
            .iter()
            .position(|c| c.running.as_ref().is_some_and(|r| r.pid == pid))
        else {
            return; // an orphan re-parented to us, already gone
        };
        let mut run = self.containers[idx].running.take().expect("running");
        let ran = run.started.elapsed();
        let oom = self
            .cgroups
            .oom_kills(&self.containers[idx].plan.cgroup_path)
            .map(|n| n > run.oom_kills_before)
            .unwrap_or(false);
        let reason = if oom && signal == Some(libc::SIGKILL) {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let message = self.containers[idx]
            .plan
            .termination_message
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
            .unwrap_or_default();
        info!(pod = %self.plan.name, container = %self.containers[idx].plan.name, exit_code, reason, "container exited");
        let c = &mut self.containers[idx];
        if let Some(fd) = run.stdout.take() {
            c.draining.push((Stream::Stdout, fd));
        }
        if let Some(fd) = run.stderr.take() {
            c.draining.push((Stream::Stderr, fd));
        }
        c.draining_log = run.log.take();
        // Read what is already in the pipes now, so the log is complete when status says
        // the container exited.
        self.drain(idx, false);
        let started = match &self.containers[idx].status.state {
            ContainerState::Running { started_at, .. } => Some(*started_at),
            _ => None,
        };
        self.record_exit(idx, exit_code, signal, reason, message, started, ran);
        let c = &mut self.containers[idx];
        c.kill_at = None;
        for w in c.stop_waiters.drain(..) {
            let _ = protocol::write_response(&w, &Response::Ok);
        }
        let linger = Instant::now() + ATTACH_LINGER;
        for a in c.attaches.iter_mut().filter(|a| a.exit_code.is_none()) {
            a.exit_code = Some(exit_code);
            a.finish_by = Some(linger);
            a.stdin = None;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_exit(
        &mut self,
        idx: usize,
        exit_code: i32,
        signal: Option<i32>,
        reason: &str,
        message: String,
        started_at: Option<chrono::DateTime<Utc>>,
        ran: Duration,
    ) {
        let stopping = self.stopping.is_some();
        let policy = self.plan.restart_policy;
        let apps_done = self.apps_done();
        let c = &mut self.containers[idx];
        let terminated = ContainerState::Terminated {
            exit_code,
            signal,
            reason: reason.to_owned(),
            message,
            started_at,
            finished_at: Utc::now(),
        };
        c.status.ready = false;
        let restart = !stopping
            && !self.plan.managed
            && should_restart(c.plan.kind, policy, exit_code, apps_done);
        if restart {
            let delay = c.backoff.next_delay(ran);
            c.status.last_state = Some(terminated);
            c.next_start = Some(Instant::now() + delay);
            c.status.state = if delay.is_zero() {
                ContainerState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                }
            } else {
                ContainerState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {}s restarting failed container={} pod={}",
                        delay.as_secs(),
                        c.plan.name,
                        self.plan.name
                    ),
                }
            };
        } else {
            c.status.state = terminated;
            c.done = true;
        }
        self.status_dirty = true;
    }
}

/// Whether a container that exited is started again (the pod is not stopping).
pub(super) fn should_restart(
    kind: ContainerKind,
    policy: crate::plan::RestartPolicy,
    exit_code: i32,
    apps_done: bool,
) -> bool {
    match kind {
        // Sidecars end with the pod's app containers, as in Kubernetes.
        ContainerKind::Sidecar => !apps_done,
        // Init containers must succeed; they are retried unless the pod never restarts.
        ContainerKind::Init => exit_code != 0 && policy != crate::plan::RestartPolicy::Never,
        ContainerKind::App => policy.restarts(exit_code),
    }
}
