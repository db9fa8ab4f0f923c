//! Containers of a CRI-managed pod, as the agent asks: create, start, stop and remove,
//! log reopening and resource updates.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::protocol::{self, Response};
use super::requests::reply;
use super::stop::kill_cgroup;
use super::{Container, Monitor, CONTAINER_CREATED, PLAN_FILE};
use crate::plan::ContainerPlan;

impl Monitor {
    pub(super) fn index_of(&self, id: &str) -> Option<usize> {
        self.containers.iter().position(|c| c.plan.id == id)
    }

    fn write_plan(&self) -> Result<(), String> {
        crate::state::write_json(&self.plan.state_dir.join(PLAN_FILE), &self.plan)
            .map_err(|e| e.to_string())
    }

    pub(super) fn create_container(&mut self, plan: ContainerPlan) -> Result<(), String> {
        if !self.plan.managed {
            return Err(format!("pod {} is not managed by CRI", self.plan.name));
        }
        if self.stopping.is_some() {
            return Err(format!("pod {} is stopping", self.plan.name));
        }
        if self.index_of(&plan.id).is_some() {
            return Err(format!("container {} already exists", plan.id));
        }
        // Recorded in plan.json first, so teardown (ours, or the reaper's after a crash)
        // finds everything the container may come to own.
        self.plan.containers.push(plan.clone());
        if let Err(e) = self.write_plan() {
            self.plan.containers.pop();
            return Err(format!("record container {}: {e}", plan.id));
        }
        info!(pod = %self.plan.name, container = %plan.name, id = %plan.id, "container created");
        self.containers.push(Container::new(
            &plan,
            self.plan.backoff_base_ms,
            CONTAINER_CREATED,
        ));
        self.status_dirty = true;
        Ok(())
    }

    pub(super) fn start_container(&mut self, id: &str) -> Result<(), String> {
        let idx = self
            .index_of(id)
            .ok_or_else(|| format!("container {id} not found"))?;
        let c = &self.containers[idx];
        if c.started_before || c.done || c.running.is_some() || c.removing {
            return Err(format!("container {id} is not in created state"));
        }
        if self.stopping.is_some() {
            return Err(format!("pod {} is stopping", self.plan.name));
        }
        self.start(idx)
    }

    pub(super) fn stop_container_request(
        &mut self,
        id: &str,
        timeout_secs: i64,
        stream: UnixStream,
    ) {
        let Some(idx) = self
            .index_of(id)
            .filter(|i| self.containers[*i].running.is_some())
        else {
            reply(&stream, Ok(()));
            return;
        };
        let _ = stream.set_read_timeout(None);
        self.containers[idx].stop_waiters.push(stream);
        if timeout_secs <= 0 {
            self.kill_container(idx);
            return;
        }
        if !self.containers[idx].stop_sent {
            self.signal_container(idx);
        }
        let at = Instant::now() + Duration::from_secs(timeout_secs as u64);
        let c = &mut self.containers[idx];
        c.kill_at = Some(c.kill_at.map_or(at, |t| t.min(at)));
    }

    /// SIGKILL the container's init and whatever else is in its cgroup (processes of a
    /// shared PID namespace do not die with the init).
    fn kill_container(&mut self, idx: usize) {
        let c = &mut self.containers[idx];
        c.kill_at = None;
        if let Some(r) = &c.running {
            c.stop_sent = true;
            let _ = nix::sys::signal::kill(r.pid, Signal::SIGKILL);
            for pid in self.cgroups.pids(&c.plan.cgroup_path).unwrap_or_default() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    pub(super) fn remove_container(&mut self, id: &str, stream: UnixStream) {
        let Some(idx) = self.index_of(id) else {
            reply(&stream, Ok(()));
            return;
        };
        let _ = stream.set_read_timeout(None);
        let c = &mut self.containers[idx];
        c.removing = true;
        c.remove_waiters.push(stream);
        // Finished in progress_requests once it no longer runs.
        self.kill_container(idx);
    }

    /// Kill deadlines of StopContainer, removals waiting for an exit, and attached
    /// clients of exited containers.
    pub(super) fn progress_requests(&mut self) {
        let now = Instant::now();
        for idx in 0..self.containers.len() {
            let c = &self.containers[idx];
            if c.running.is_some() && c.kill_at.is_some_and(|t| now >= t) {
                debug!(pod = %self.plan.name, container = %c.plan.name, "stop timeout passed; killing container");
                self.kill_container(idx);
            }
        }
        while let Some(idx) = self
            .containers
            .iter()
            .position(|c| c.removing && c.running.is_none())
        {
            self.finish_remove(idx);
        }
        for c in &mut self.containers {
            let drained = c.draining.is_empty();
            c.attaches.retain_mut(|a| {
                let Some(exit_code) = a.exit_code else {
                    return true;
                };
                for o in [&mut a.stdout, &mut a.stderr] {
                    if o.as_mut().is_some_and(|o| !o.flush()) {
                        *o = None;
                    }
                }
                if (drained && a.flushed()) || a.finish_by.is_some_and(|t| now >= t) {
                    let _ = protocol::write_response(&a.stream, &Response::Exited { exit_code });
                    return false;
                }
                true
            });
        }
    }

    fn finish_remove(&mut self, idx: usize) {
        self.drain(idx, true);
        let mut c = self.containers.remove(idx);
        let path = c.plan.cgroup_path.clone();
        kill_cgroup(self.cgroups.as_ref(), &path);
        if let Err(e) = self.cgroups.remove(&path) {
            warn!(pod = %self.plan.name, cgroup = %path, error = %e, "remove container cgroup");
        }
        if let Some(dir) = c.plan.rootfs.upper.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        self.seccomp_cache.remove(&c.plan.id);
        self.plan.containers.retain(|p| p.id != c.plan.id);
        if let Err(e) = self.write_plan() {
            warn!(pod = %self.plan.name, error = %e, "record container removal");
        }
        info!(pod = %self.plan.name, container = %c.plan.name, id = %c.plan.id, "container removed");
        let exit_code = c.status.state.exit_code().unwrap_or(137);
        for a in c.attaches.drain(..) {
            let code = a.exit_code.unwrap_or(exit_code);
            let _ = protocol::write_response(&a.stream, &Response::Exited { exit_code: code });
        }
        for w in c.stop_waiters.drain(..).chain(c.remove_waiters.drain(..)) {
            let _ = protocol::write_response(&w, &Response::Ok);
        }
        self.status_dirty = true;
    }

    pub(super) fn reopen_log(&mut self, id: &str) -> Result<(), String> {
        let log = self
            .index_of(id)
            .and_then(|i| self.containers[i].running.as_mut())
            .and_then(|r| r.log.as_mut())
            .ok_or_else(|| format!("container {id} is not running"))?;
        log.reopen().map_err(|e| e.to_string())
    }

    pub(super) fn update_resources(
        &mut self,
        id: &str,
        resources: crate::cgroups::Resources,
    ) -> Result<(), String> {
        let idx = self
            .index_of(id)
            .ok_or_else(|| format!("container {id} not found"))?;
        let c = &mut self.containers[idx];
        // A container not started yet gets its cgroup (with these limits) at start.
        if c.running.is_some() {
            self.cgroups
                .update(&c.plan.cgroup_path, &resources)
                .map_err(|e| format!("cgroup {}: {e}", c.plan.cgroup_path))?;
        }
        c.plan.resources = resources.clone();
        if let Some(p) = self.plan.containers.iter_mut().find(|p| p.id == id) {
            p.resources = resources;
        }
        self.write_plan()
    }
}
