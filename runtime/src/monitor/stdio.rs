//! The stdio of a container's init. Without a terminal: pipes, whose read ends (and
//! the write end of stdin, if the container has one) the monitor keeps for the log and
//! attached clients. With a terminal: the init makes it itself from the container's own
//! devpts (so `tty` inside names it, as with runc's console socket) and sends the master
//! back; the monitor reads output from, writes input to and resizes that master.

use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;

use crate::process::{self, Stdio};

/// What the init is given: its stdio, and with a terminal the socket to send it over
/// (a `ChildSetup` console). Both go once the init is spawned.
pub(super) struct InitStdio {
    pub stdio: Stdio,
    pub console: Option<OwnedFd>,
}

/// The monitor's side, before the init runs.
pub(super) enum Kept {
    Pipes(Ends),
    /// The monitor's end of the console socket; `stdin`: keep a writer on the master.
    Terminal {
        sock: OwnedFd,
        stdin: bool,
    },
}

/// The monitor's descriptors of a running init, non-blocking: output (the terminal
/// master for a tty), stderr (pipes only), and the write end of stdin when the
/// container has one (a dup of the master for a tty).
pub(super) struct Ends {
    pub stdout: OwnedFd,
    pub stderr: Option<OwnedFd>,
    pub stdin: Option<OwnedFd>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// The stdio of an init with or without a terminal, with or without stdin.
pub(super) fn prepare(tty: bool, stdin: bool) -> Result<(InitStdio, Kept), String> {
    if tty {
        // The init's stdio is replaced by the terminal once it is in its container.
        let null = || process::dev_null().map_err(|e| e.to_string());
        let (ours, theirs) = process::console_socketpair().map_err(|e| e.to_string())?;
        let init = InitStdio {
            stdio: Stdio {
                stdin: null()?,
                stdout: null()?,
                stderr: null()?,
                tty: false,
            },
            console: Some(theirs),
        };
        return Ok((init, Kept::Terminal { sock: ours, stdin }));
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (in_r, in_w) = if stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (process::dev_null().map_err(|e| e.to_string())?, None)
    };
    for fd in [Some(&out_r), Some(&err_r), in_w.as_ref()]
        .into_iter()
        .flatten()
    {
        super::set_nonblocking(fd);
    }
    let init = InitStdio {
        stdio: Stdio {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
            tty: false,
        },
        console: None,
    };
    let kept = Kept::Pipes(Ends {
        stdout: out_r,
        stderr: Some(err_r),
        stdin: in_w,
    });
    Ok((init, kept))
}

impl Kept {
    /// Once the init runs (and the `InitStdio` is gone): the monitor's descriptors. A
    /// terminal's master was sent before the init's execve, so it is already waiting
    /// on the socket.
    pub(super) fn into_ends(self) -> Result<Ends, String> {
        match self {
            Kept::Pipes(ends) => Ok(ends),
            Kept::Terminal { sock, stdin } => {
                let master = process::receive_terminal(&sock).map_err(|e| e.to_string())?;
                super::set_nonblocking(&master);
                let stdin = match stdin {
                    true => Some(master.try_clone().map_err(|e| e.to_string())?),
                    false => None,
                };
                Ok(Ends {
                    stdout: master,
                    stderr: None,
                    stdin,
                })
            }
        }
    }
}
