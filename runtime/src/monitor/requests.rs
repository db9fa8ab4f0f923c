//! Dispatch of control-socket requests to the monitor's operations.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::protocol::{self, Request, Response};
use super::Monitor;
use crate::process::Stdio;

impl Monitor {
    pub(super) fn handle(&mut self, stream: UnixStream, req: Request, fds: Vec<OwnedFd>) {
        match req {
            Request::Status => {
                let _ = protocol::write_response(&stream, &Response::Status(self.status()));
            }
            Request::Hold => {
                let _ = protocol::write_response(&stream, &Response::Ok);
                let _ = stream.set_read_timeout(None);
                self.holders.push(stream);
            }
            Request::Release => {
                let _ = protocol::write_response(&stream, &Response::Ok);
            }
            Request::Stop { grace_secs, remove } => {
                self.begin_stop(grace_secs, remove, Some(stream))
            }
            Request::Exec {
                container,
                args,
                tty,
            } => {
                // CRI names containers by id; pods by name (a running one first: in a
                // managed pod an exited attempt may share its name).
                let by_name = |running: bool| {
                    self.containers
                        .iter()
                        .position(|c| c.plan.name == container && (!running || c.running.is_some()))
                };
                let Some(idx) = self
                    .containers
                    .iter()
                    .position(|c| c.plan.id == container)
                    .or_else(|| by_name(true))
                    .or_else(|| by_name(false))
                else {
                    let _ = protocol::write_response(
                        &stream,
                        &Response::Error {
                            message: format!(
                                "container {container:?} not found in pod {}",
                                self.plan.name
                            ),
                        },
                    );
                    return;
                };
                if self.containers[idx].running.is_none() {
                    let _ = protocol::write_response(
                        &stream,
                        &Response::Error {
                            message: format!("container {container:?} is not running"),
                        },
                    );
                    return;
                }
                let console_mode = tty && fds.len() == 1;
                if (fds.len() != 3 && !console_mode) || args.is_empty() {
                    let _ = protocol::write_response(
                        &stream,
                        &Response::Error {
                            message: "exec needs a command and three descriptors".into(),
                        },
                    );
                    return;
                }
                let _ = stream.set_read_timeout(None);
                let _ = stream.set_write_timeout(None);
                let mut fds = fds.into_iter();
                if console_mode {
                    let console = fds.next();
                    self.spawn_exec_with(idx, args, None, Some(stream), console);
                    return;
                }
                let stdio = Stdio {
                    stdin: fds.next().unwrap(),
                    stdout: fds.next().unwrap(),
                    stderr: fds.next().unwrap(),
                    tty,
                };
                self.spawn_exec(idx, args, Some(stdio), Some(stream));
            }
            Request::CreateContainer { plan } => {
                let r = self.create_container(*plan);
                reply(&stream, r);
            }
            Request::StartContainer { id } => {
                let r = self.start_container(&id);
                reply(&stream, r);
            }
            Request::StopContainer { id, timeout_secs } => {
                self.stop_container_request(&id, timeout_secs, stream)
            }
            Request::RemoveContainer { id } => self.remove_container(&id, stream),
            Request::ReopenLog { id } => {
                let r = self.reopen_log(&id);
                reply(&stream, r);
            }
            Request::UpdateResources { id, resources } => {
                let r = self.update_resources(&id, resources);
                reply(&stream, r);
            }
            Request::Attach {
                id,
                stdin,
                stdout,
                stderr,
            } => self.attach(stream, &id, [stdin, stdout, stderr], fds),
            Request::Resize { id, width, height } => {
                let r = self.resize(&id, width, height);
                reply(&stream, r);
            }
            Request::KillExec { pid } => {
                let pid = Pid::from_raw(pid);
                if self.execs.contains_key(&pid) {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                }
                reply(&stream, Ok(()));
            }
        }
    }
}

/// Answer a request that succeeds or fails with a message.
pub(super) fn reply(stream: &UnixStream, result: Result<(), String>) {
    let resp = match result {
        Ok(()) => Response::Ok,
        Err(message) => Response::Error { message },
    };
    let _ = protocol::write_response(stream, &resp);
}
