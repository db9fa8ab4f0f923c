//! Stopping the pod (preStop hooks, stop signals, SIGKILL after the grace period) and
//! tearing down what it owns on the host.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::{Monitor, Stopping};
use crate::cgroups::CgroupManager;
use crate::plan::{ContainerKind, PodPlan};
use crate::status::ContainerState;

impl Monitor {
    pub(super) fn begin_stop(
        &mut self,
        grace_secs: Option<u64>,
        remove: bool,
        waiter: Option<UnixStream>,
    ) {
        let grace =
            Duration::from_secs(grace_secs.unwrap_or(self.plan.termination_grace_period_secs));
        if let Some(s) = &mut self.stopping {
            s.remove |= remove;
            s.deadline = s.deadline.min(Instant::now() + grace);
            s.waiters.extend(waiter);
            return;
        }
        info!(pod = %self.plan.name, grace_secs = grace.as_secs(), "stopping pod");
        self.stopping = Some(Stopping {
            deadline: Instant::now() + grace,
            remove,
            sidecars_signalled: false,
            waiters: waiter.into_iter().collect(),
        });
        let managed = self.plan.managed;
        for c in &mut self.containers {
            if c.running.is_none() && !c.done {
                c.done = true;
                c.next_start = None;
                // A created managed container stays Created: kubelet removes it.
                if !managed && !matches!(c.status.state, ContainerState::Terminated { .. }) {
                    c.status.state = ContainerState::Waiting {
                        reason: "PodTerminating".into(),
                        message: String::new(),
                    };
                }
            }
        }
        // App containers first (preStop hook, then the stop signal); sidecars once the
        // app containers are gone, as kubelet does.
        let apps: Vec<usize> = (0..self.containers.len())
            .filter(|i| {
                self.containers[*i].plan.kind != ContainerKind::Sidecar
                    && self.containers[*i].running.is_some()
            })
            .collect();
        for idx in apps {
            self.stop_container(idx);
        }
        crate::fault::point("monitor:stopping");
        self.status_dirty = true;
    }

    pub(super) fn stop_container(&mut self, idx: usize) {
        let c = &self.containers[idx];
        if c.running.is_none() || c.stop_sent {
            return;
        }
        // kubelet runs the hooks of managed containers itself.
        match c.plan.pre_stop.clone().filter(|_| !self.plan.managed) {
            Some(cmd) => {
                self.containers[idx].stop_sent = true;
                self.spawn_exec(idx, cmd, None, None)
            }
            None => self.signal_container(idx),
        }
    }

    pub(super) fn signal_container(&mut self, idx: usize) {
        let c = &mut self.containers[idx];
        if let Some(r) = &c.running {
            c.stop_sent = true;
            let sig = Signal::try_from(c.plan.stop_signal).unwrap_or(Signal::SIGTERM);
            debug!(pod = %self.plan.name, container = %c.plan.name, signal = %sig, "signalling container");
            let _ = nix::sys::signal::kill(r.pid, sig);
        }
    }

    pub(super) fn progress_stop(&mut self) {
        let now = Instant::now();
        let deadline_passed = self.stopping.as_ref().is_some_and(|s| now >= s.deadline);
        let apps_running = self
            .containers
            .iter()
            .any(|c| c.plan.kind != ContainerKind::Sidecar && c.running.is_some());
        let sidecars_signalled = self.stopping.as_ref().is_some_and(|s| s.sidecars_signalled);
        if !apps_running && !sidecars_signalled {
            if let Some(s) = &mut self.stopping {
                s.sidecars_signalled = true;
            }
            for idx in (0..self.containers.len()).rev() {
                if self.containers[idx].plan.kind == ContainerKind::Sidecar {
                    self.stop_container(idx);
                }
            }
        }
        if deadline_passed {
            for idx in 0..self.containers.len() {
                let c = &self.containers[idx];
                if let Some(r) = &c.running {
                    let _ = nix::sys::signal::kill(r.pid, Signal::SIGKILL);
                }
                // Processes outside the container's own PID namespace (shared or host
                // PID) do not die with its init: kill the whole cgroup.
                for pid in self.cgroups.pids(&c.plan.cgroup_path).unwrap_or_default() {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            for pid in self.execs.keys() {
                let _ = nix::sys::signal::kill(*pid, Signal::SIGKILL);
            }
        }
    }

    pub(super) fn finished_stopping(&self) -> bool {
        self.stopping.is_some()
            && self.containers.iter().all(|c| c.running.is_none())
            && self.execs.is_empty()
    }

    /// Remove everything the pod owns on the host. Idempotent; also used by podrun to
    /// reap pods whose monitor died.
    pub(super) fn teardown(&mut self) {
        // Flush the logs of anything still draining.
        for idx in 0..self.containers.len() {
            self.drain(idx, true);
        }
        self.containers.iter_mut().for_each(|c| {
            c.draining.clear();
            c.draining_log = None;
        });
        // The pod's tmpfs mounts live in this namespace: unmount them so their
        // directories can go with the state dir.
        for t in &self.plan.tmpfs {
            let _ = nix::mount::umount2(&t.path, nix::mount::MntFlags::MNT_DETACH);
        }
        // The rest is host state: CNI plugins must run in the host's network namespace
        // and the netns pin lives in the host's mount namespace.
        if let Err(e) = nix::sched::setns(&self.host_net, CloneFlags::CLONE_NEWNET)
            .and_then(|_| nix::sched::setns(&self.host_mnt, CloneFlags::CLONE_NEWNS))
        {
            warn!(pod = %self.plan.name, error = %e, "return to the host namespaces for teardown");
        }
        crate::fault::point("monitor:teardown");
        teardown_pod(&self.plan, self.cgroups.as_ref());
    }
}

/// SIGKILL everything in cgroup `path` (frozen first, so nothing forks meanwhile) and
/// wait, briefly, for it to be empty.
pub(super) fn kill_cgroup(cgroups: &dyn CgroupManager, path: &str) {
    for attempt in 0..50 {
        let pids = cgroups.pids(path).unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        if attempt == 0 {
            let _ = cgroups.freeze(path, true);
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = cgroups.freeze(path, false);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kill whatever is left in the pod's cgroups and remove every host resource of the pod:
/// cgroups, container upper dirs, volumes, logs, state and the name reservation.
/// Idempotent, so it is safe to run again after a crash at any point.
pub fn teardown_pod(plan: &PodPlan, cgroups: &dyn CgroupManager) {
    let mut paths: Vec<&str> = plan
        .containers
        .iter()
        .map(|c| c.cgroup_path.as_str())
        .collect();
    // A pod cgroup the caller made (kubelet's cgroup_parent) is the caller's to remove.
    if !plan.external_cgroup {
        paths.push(&plan.cgroup_path);
    }
    for path in &paths {
        kill_cgroup(cgroups, path);
        if let Err(e) = cgroups.remove(path) {
            warn!(pod = %plan.name, cgroup = %path, error = %e, "remove cgroup");
        }
    }
    // The QoS and root cgroups above the pod go with their last pod; one still in use by
    // another pod is left alone (rmdir of a non-empty cgroup fails).
    if !plan.external_cgroup {
        crate::cgroups::remove_empty_parents(cgroups, &plan.cgroup_path);
    }
    // Processes are gone: the network can go (CNI DEL, then the netns pin).
    if let Some(net) = &plan.network {
        crate::network::teardown(&plan.id, net);
    }
    for c in &plan.containers {
        if let Some(dir) = c.rootfs.upper.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let _ = std::fs::remove_dir_all(&plan.data_dir);
    // A CRI sandbox's shm is mounted on the host.
    if plan.managed {
        let _ = nix::mount::umount2(
            &plan.state_dir.join("shm"),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
    // A log directory the CRI caller gave is the caller's: kubelet removes it with the pod.
    if !plan.managed || plan.owns_log_dir {
        let _ = std::fs::remove_dir_all(&plan.log_dir);
    }
    if let Some(names) = plan.state_dir.parent().and_then(Path::parent) {
        let name_file = names
            .join("names")
            .join(format!("{}_{}", plan.namespace, plan.name));
        if std::fs::read_to_string(&name_file).is_ok_and(|id| id.trim() == plan.id) {
            let _ = std::fs::remove_file(&name_file);
        }
    }
    let _ = std::fs::remove_dir_all(&plan.state_dir);
}
