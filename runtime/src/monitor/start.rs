//! Starting containers: the pod's start order (init containers one at a time, native
//! sidecars, then the app containers) and one container's start with its postStart hook.

use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{info, warn};

use super::{stdio, Monitor, Running};
use crate::logs::CriLogWriter;
use crate::plan::ContainerKind;
use crate::process::{self, ChildSetup};
use crate::status::ContainerState;

impl Monitor {
    /// Decide what to start now: init containers one at a time in order, then all app
    /// containers; restarts whose back-off has expired.
    pub(super) fn apps_done(&self) -> bool {
        let mut apps = self
            .containers
            .iter()
            .filter(|c| c.plan.kind == ContainerKind::App)
            .peekable();
        apps.peek().is_some() && apps.all(|c| c.done)
    }

    pub(super) fn progress(&mut self) {
        self.progress_requests();
        if self.stopping.is_some() {
            self.progress_stop();
            return;
        }
        if self.plan.managed {
            return; // the agent starts and stops containers
        }
        if self.apps_done() {
            // The pod completed: its sidecars get their stop signal, latest first.
            for idx in (0..self.containers.len()).rev() {
                if self.containers[idx].plan.kind == ContainerKind::Sidecar {
                    self.stop_container(idx);
                }
            }
            return;
        }
        let now = Instant::now();
        let mut idx = 0;
        while idx < self.containers.len() {
            let c = &self.containers[idx];
            let kind = c.plan.kind;
            if kind == ContainerKind::Init || kind == ContainerKind::Sidecar {
                let ready_to_start =
                    c.running.is_none() && !c.done && c.next_start.is_none_or(|t| t <= now);
                if ready_to_start {
                    let _ = self.start(idx);
                }
                let c = &self.containers[idx];
                match kind {
                    // Later containers wait until this init container succeeded.
                    ContainerKind::Init if !(c.done && c.status.state.exit_code() == Some(0)) => {
                        return
                    }
                    // Later containers wait until the sidecar has started once.
                    ContainerKind::Sidecar if !c.started_before => return,
                    _ => {}
                }
            } else if c.running.is_none() && !c.done && c.next_start.is_none_or(|t| t <= now) {
                let _ = self.start(idx);
            }
            idx += 1;
        }
    }

    pub(super) fn compile_seccomp(
        &mut self,
        idx: usize,
    ) -> Result<Vec<seccompiler::BpfProgram>, String> {
        let c = &self.containers[idx].plan;
        if let Some(p) = self.seccomp_cache.get(&c.id) {
            return Ok(p.clone());
        }
        let programs = crate::security::seccomp::compile(&c.seccomp, &c.process.capabilities)
            .map_err(|e| e.to_string())?;
        self.seccomp_cache.insert(c.id.clone(), programs.clone());
        Ok(programs)
    }

    pub(super) fn clone_flags(&self) -> CloneFlags {
        let mut flags = CloneFlags::CLONE_NEWNS;
        if !self.plan.host_pid && !self.plan.share_process_namespace {
            flags |= CloneFlags::CLONE_NEWPID;
        }
        flags
    }

    /// Start container `idx`; a failure is recorded as its exit (StartError) and returned.
    pub(super) fn start(&mut self, idx: usize) -> Result<(), String> {
        let now = Utc::now();
        // kubelet counts restarts when they happen, not when they are scheduled.
        let c = &mut self.containers[idx];
        if c.started_before {
            c.status.restart_count += 1;
        }
        c.started_before = true;
        match self.try_start(idx) {
            Ok(running) => {
                let c = &mut self.containers[idx];
                info!(pod = %self.plan.name, container = %c.plan.name, pid = running.pid.as_raw(), "container started");
                c.status.state = ContainerState::Running {
                    started_at: now,
                    pid: running.pid.as_raw(),
                };
                c.status.ready = true;
                c.running = Some(running);
                c.next_start = None;
                c.stop_sent = false;
                // kubelet runs the hooks of managed containers itself.
                let hook = c.plan.post_start.clone().filter(|_| !self.plan.managed);
                if let Some(cmd) = hook {
                    self.spawn_exec(idx, cmd, None, None);
                }
                self.status_dirty = true;
                crate::fault::point("monitor:container-started");
                Ok(())
            }
            Err(message) => {
                let c = &mut self.containers[idx];
                warn!(pod = %self.plan.name, container = %c.plan.name, error = %message, "container failed to start");
                let exit_code = if message.contains("not found") {
                    127
                } else {
                    128
                };
                self.record_exit(
                    idx,
                    exit_code,
                    None,
                    "StartError",
                    message.clone(),
                    None,
                    Duration::ZERO,
                );
                self.status_dirty = true;
                Err(message)
            }
        }
    }

    fn try_start(&mut self, idx: usize) -> Result<Running, String> {
        let seccomp = self.compile_seccomp(idx)?;
        let flags = self.clone_flags();
        let plan = &self.plan;
        let c = &self.containers[idx];
        let cp = &c.plan;
        self.cgroups
            .ensure(&cp.cgroup_path, &cp.resources)
            .map_err(|e| format!("cgroup {}: {e}", cp.cgroup_path))?;
        let oom_before = self.cgroups.oom_kills(&cp.cgroup_path).unwrap_or(0);
        if c.status.restart_count > 0 {
            // A restarted container starts from the image again, as a new container.
            for dir in [&cp.rootfs.upper, &cp.rootfs.work] {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        for dir in [&cp.rootfs.upper, &cp.rootfs.work, &cp.rootfs.rootfs] {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        if let Some(tm) = &cp.termination_message {
            let _ = std::fs::write(tm, b"");
        }
        let log_path = plan.log_path(cp, c.status.restart_count);
        let log = CriLogWriter::open(&log_path)
            .map_err(|e| format!("open log {}: {e}", log_path.display()))?;
        let (init_stdio, kept) = stdio::prepare(cp.process.tty, cp.stdin)?;
        let cgroups = &self.cgroups;
        let cg_path = cp.cgroup_path.clone();
        let mut place = |pid: Pid| {
            cgroups
                .add_process(&cg_path, pid.as_raw())
                .map_err(|e| format!("cgroup {cg_path}: {e}"))
        };
        let console = init_stdio.console.as_ref();
        let setup = if self.plan.managed {
            ChildSetup::ContainerFromHost {
                rootfs: &cp.rootfs,
                host_mnt: &self.host_mnt,
                console,
            }
        } else {
            ChildSetup::Container {
                rootfs: &cp.rootfs,
                console,
            }
        };
        let pid = process::spawn(
            flags,
            setup,
            &cp.process,
            &seccomp,
            init_stdio.stdio,
            &mut place,
        )
        .map_err(|e| e.to_string())?;
        drop(init_stdio.console);
        let ends = match kept.into_ends() {
            Ok(ends) => ends,
            Err(e) => {
                // Not a container the monitor could serve: gone before it is known.
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(e);
            }
        };
        Ok(Running {
            pid,
            started: Instant::now(),
            oom_kills_before: oom_before,
            stdout: Some(ends.stdout),
            stderr: ends.stderr,
            log: Some(log),
            stdin: ends.stdin,
            stdin_buf: Vec::new(),
            stdin_close: false,
        })
    }
}
