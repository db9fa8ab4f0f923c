//! `podrun run`: start a pod, then either return once it runs (-d) or stream its logs
//! until Ctrl-C or until every container is done, and remove it.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use podrun_runtime::monitor::protocol::{Client, Request};
use podrun_runtime::pod::{PodError, PodRuntime};
use podrun_runtime::status::{ContainerState, PodPhase};

use super::logs::Tailer;
use crate::Cli;

pub fn run(cli: &Cli, file: &Path, detach: bool, pull: &str) -> Result<ExitCode> {
    // Block the stop signals before anything starts, so a Ctrl-C during start-up is
    // handled as a stop of the pod rather than killing podrun half-way.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGHUP);
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

    let mut rt = super::runtime(cli)?;
    rt.config.pull = pull
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--pull: {e}"))?;
    let mut m = podrun_runtime::spec::load_manifest(file)?;
    podrun_runtime::spec::apply_defaults(&mut m, cli.namespace.as_deref());
    let plan = rt.run(&m)?;
    let pod = rt.find(&plan.namespace, &plan.name)?;

    if detach {
        // Return once every container has started (or report why one could not).
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = rt.status(&pod);
            // The status file of a monitor that died still says Waiting: only its answer counts.
            let status = status.filter(|_| Client::connect(&pod.socket()).is_ok());
            if let Some(s) = &status {
                let failed = s
                    .containers
                    .iter()
                    .find_map(|c| match (&c.state, &c.last_state) {
                        (
                            ContainerState::Terminated {
                                reason, message, ..
                            },
                            _,
                        )
                        | (
                            _,
                            Some(ContainerState::Terminated {
                                reason, message, ..
                            }),
                        ) if reason == "StartError" => {
                            Some(format!("container {}: {message}", c.name))
                        }
                        _ => None,
                    });
                if let Some(msg) = failed {
                    rt.stop(&pod, Some(0), true)?;
                    bail!(
                        "pod {}/{} failed to start: {msg}",
                        plan.namespace,
                        plan.name
                    );
                }
                let started = s.containers.iter().filter(|c| !c.init).all(|c| {
                    c.restart_count > 0 || !matches!(c.state, ContainerState::Waiting { .. })
                });
                if started || matches!(s.phase, PodPhase::Failed | PodPhase::Succeeded) {
                    // The pod runs on its own now: a closed stdout just ends podrun.
                    super::default_sigpipe();
                    println!("pod {}/{} started ({})", plan.namespace, plan.name, s.phase);
                    return Ok(ExitCode::SUCCESS);
                }
            } else if !rt.find(&plan.namespace, &plan.name).is_ok_and(|p| p.alive) {
                bail!(
                    "pod {}/{}: the pod monitor exited",
                    plan.namespace,
                    plan.name
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {}/{}: containers did not start within 120s (see `podrun pods`)",
                    plan.namespace,
                    plan.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // Foreground: if podrun dies, the monitor notices the closed connection and removes
    // the pod.
    let mut hold = Client::connect(&pod.socket())?;
    hold.call(&Request::Hold)?;
    let mut tailer = Tailer::new(&plan, None, false);
    // A closed stdout (`podrun run pod.yaml | head`) stops the pod as Ctrl-C does, and
    // then podrun ends quietly as on SIGPIPE.
    let mut stdout_closed = false;
    // The monitor never writes on the hold connection: anything readable there is its end.
    let mut monitor_gone = false;
    loop {
        match tailer.poll() {
            Ok(()) => {}
            Err(e) if super::is_broken_pipe(&e) => {
                stdout_closed = true;
                break;
            }
            Err(e) => return Err(e.into()),
        }
        if signals.read_signal()?.is_some() {
            eprintln!(
                "podrun: stopping pod {}/{} (grace period {}s)",
                plan.namespace, plan.name, plan.termination_grace_period_secs
            );
            break;
        }
        let status = rt.status(&pod);
        match &status {
            Some(s) if matches!(s.phase, PodPhase::Succeeded | PodPhase::Failed) => break,
            None if !rt.find(&plan.namespace, &plan.name).is_ok_and(|p| p.alive) => break,
            _ => {}
        }
        let mut fds = [
            nix::poll::PollFd::new(signals.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(hold.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
        if fds[1].any().unwrap_or(false) {
            monitor_gone = true;
            break;
        }
    }
    if monitor_gone {
        let _ = tailer.poll();
        return monitor_died(&rt, &plan.namespace, &plan.name);
    }
    let final_status = rt.status(&pod);
    let pod = rt.find(&plan.namespace, &plan.name)?;
    // Stop and remove; a second Ctrl-C shortens the grace period to nothing, and the
    // monitor then kills and removes the pod itself.
    let mut forced = false;
    let result = std::thread::scope(|s| {
        let h = s.spawn(|| rt.stop(&pod, None, false));
        while !h.is_finished() {
            if signals.read_signal().ok().flatten().is_some() {
                forced = true;
                if let Ok(mut c) = Client::connect(&pod.socket()) {
                    let _ = c.send(&Request::Stop {
                        grace_secs: Some(0),
                        remove: true,
                    });
                }
            }
            if !stdout_closed {
                let _ = tailer.poll();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        h.join().expect("stop thread")
    });
    // Everything the containers wrote is in the logs now: print it, then remove the pod.
    if !stdout_closed {
        let _ = tailer.poll();
    }
    // After a forced stop the graceful one's outcome no longer matters (the monitor may
    // have closed its connection half-way), and the pod being gone already is what it
    // leaves: the monitor removed it.
    let result = if forced { Ok(()) } else { result };
    let removed = match rt.find(&plan.namespace, &plan.name) {
        Ok(p) => result.and_then(|()| rt.stop(&p, Some(0), true)),
        Err(PodError::NotFound(_)) if forced => Ok(()),
        Err(e) => result.and(Err(e)),
    };
    drop(hold);
    removed?;
    if stdout_closed {
        super::exit_as_on_sigpipe();
    }
    if forced {
        // As a container killed by SIGKILL exits.
        eprintln!("podrun: pod {}/{} killed", plan.namespace, plan.name);
        return Ok(ExitCode::from(128 + libc::SIGKILL as u8));
    }
    let code = final_status
        .as_ref()
        .and_then(|s| {
            s.containers
                .iter()
                .filter(|c| !c.init)
                .filter_map(|c| c.state.exit_code())
                .find(|c| *c != 0)
        })
        .unwrap_or(0);
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// The monitor ended while podrun held the pod. Killed (or crashed), it left the pod's
/// containers running, re-parented to init: kill them through the pod's cgroups and remove
/// the rest (network, state), as `reap` would, and say so.
fn monitor_died(rt: &PodRuntime, ns: &str, name: &str) -> Result<ExitCode> {
    let mut pod = match rt.find(ns, name) {
        Ok(pod) => pod,
        // Removed by another command (`podrun rm`): nothing is left to clean up.
        Err(PodError::NotFound(_)) => bail!("pod {ns}/{name} was removed by another command"),
        Err(e) => return Err(e.into()),
    };
    let pid = pod.status.as_ref().map(|s| s.monitor_pid).unwrap_or(0);
    eprintln!(
        "podrun: the monitor of pod {ns}/{name} (pid {pid}) exited unexpectedly; killing its containers and removing the pod"
    );
    if pid > 0 {
        // This process started the monitor: reap it, or its zombie keeps the pod's
        // cgroup busy. ECHILD when it was not ours.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
    // Its listening socket may outlive our connection by a moment: never ask it to stop.
    pod.alive = false;
    rt.stop(&pod, Some(0), true)?;
    Ok(ExitCode::FAILURE)
}
