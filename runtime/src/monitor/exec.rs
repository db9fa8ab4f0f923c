//! Processes started in a running container: exec sessions and lifecycle hooks.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use tracing::warn;

use super::protocol::{self, Response};
use super::{ExecSession, Monitor};
use crate::plan::ProcessSpec;
use crate::process::{self, ChildSetup, Stdio};

impl Monitor {
    /// Start a process in container `idx` (exec, or a hook when `stream` is None).
    pub(super) fn spawn_exec(
        &mut self,
        idx: usize,
        args: Vec<String>,
        stdio: Option<Stdio>,
        stream: Option<UnixStream>,
    ) {
        self.spawn_exec_with(idx, args, stdio, stream, None)
    }

    pub(super) fn spawn_exec_with(
        &mut self,
        idx: usize,
        args: Vec<String>,
        stdio: Option<Stdio>,
        stream: Option<UnixStream>,
        console: Option<OwnedFd>,
    ) {
        let hook = stream.is_none();
        let result = (|| -> Result<Pid, String> {
            let seccomp = self.compile_seccomp(idx)?;
            let c = &self.containers[idx];
            let init = c.running.as_ref().ok_or("container is not running")?.pid;
            let mnt_ns = process::open_ns(init, "mnt").map_err(|e| e.to_string())?;
            let pid_ns = if self.clone_flags().contains(CloneFlags::CLONE_NEWPID) {
                Some(process::open_ns(init, "pid").map_err(|e| e.to_string())?)
            } else {
                None
            };
            let stdio = match stdio {
                Some(s) => s,
                None => {
                    let null = || process::dev_null().map_err(|e| e.to_string());
                    Stdio {
                        stdin: null()?,
                        stdout: null()?,
                        stderr: null()?,
                        tty: false,
                    }
                }
            };
            let mut spec: ProcessSpec = c.plan.process.clone();
            spec.args = args;
            if (stdio.tty || console.is_some()) && !spec.env.iter().any(|e| e.starts_with("TERM="))
            {
                spec.env.push("TERM=xterm".into());
            }
            let cgroups = &self.cgroups;
            let cg_path = c.plan.cgroup_path.clone();
            let mut place = |pid: Pid| {
                cgroups
                    .add_process(&cg_path, pid.as_raw())
                    .map_err(|e| format!("cgroup {cg_path}: {e}"))
            };
            process::with_pid_ns_for_children(pid_ns.as_ref(), || {
                process::spawn(
                    CloneFlags::empty(),
                    ChildSetup::Join {
                        mnt_ns: &mnt_ns,
                        console: console.as_ref(),
                    },
                    &spec,
                    &seccomp,
                    stdio,
                    &mut place,
                )
            })
            .map_err(|e| e.to_string())
        })();
        match result {
            Ok(pid) => {
                if let Some(s) = &stream {
                    let _ = protocol::write_response(s, &Response::Started { pid: pid.as_raw() });
                }
                self.execs.insert(
                    pid,
                    ExecSession {
                        stream,
                        hook_of: hook.then_some(idx),
                    },
                );
            }
            Err(message) => {
                warn!(pod = %self.plan.name, container = %self.containers[idx].plan.name, error = %message, "exec failed");
                match stream {
                    Some(s) => {
                        let _ = protocol::write_response(&s, &Response::Error { message });
                    }
                    None if self.stopping.is_some() => self.signal_container(idx),
                    None => {}
                }
            }
        }
    }
}
