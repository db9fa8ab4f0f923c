//! `podrun exec`: run a command in a running container. Without a terminal the process
//! gets podrun's own descriptors (passed to the monitor over its socket), so its output
//! needs no copying; with -t the container makes a pseudo-terminal, podrun relays it and
//! passes window size changes (SIGWINCH) on.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;

use anyhow::{bail, Result};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios;
use podrun_runtime::monitor::protocol::ProtocolError;
use podrun_runtime::plan::ContainerKind;
use podrun_runtime::pod::{PodError, PodRuntime};

fn dup(fd: impl AsFd) -> Result<OwnedFd> {
    Ok(fd.as_fd().try_clone_to_owned()?)
}

/// The size of our terminal, when stdin is one.
fn window_size() -> Option<libc::winsize> {
    // SAFETY: TIOCGWINSZ writes one winsize struct, which we own.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0).then_some(ws)
    }
}

/// Give the container's terminal the size of ours.
fn copy_window_size(master: &OwnedFd) {
    if let Some(ws) = window_size() {
        let _ = podrun_runtime::process::set_terminal_size(master, ws.ws_row, ws.ws_col);
    }
}

pub fn exec(
    rt: &PodRuntime,
    ns: &str,
    pod: &str,
    container: Option<&str>,
    command: Vec<String>,
    interactive: bool,
    tty: bool,
) -> Result<ExitCode> {
    let info = rt.find(ns, pod)?;
    if !info.alive {
        bail!("pod {ns}/{pod} is not running");
    }
    let name = match container {
        Some(c) => c.to_owned(),
        None => info
            .plan
            .containers
            .iter()
            .find(|c| c.kind == ContainerKind::App)
            .map(|c| c.name.clone())
            .unwrap_or_default(),
    };
    if !tty {
        let stdin = if interactive {
            dup(std::io::stdin())?
        } else {
            OwnedFd::from(std::fs::File::open("/dev/null")?)
        };
        let stdout = dup(std::io::stdout())?;
        let stderr = dup(std::io::stderr())?;
        return exit_code(rt.exec(&info, &name, command, false, &[&stdin, &stdout, &stderr]));
    }

    // The terminal is made inside the container (its own devpts), as runc's console
    // socket does; its master end comes back over this socket pair.
    let (ours, theirs) = podrun_runtime::process::console_socketpair()?;
    if let Some(ws) = window_size() {
        podrun_runtime::process::set_initial_terminal_size(&ours, ws.ws_row, ws.ws_col)?;
    }
    let stdin_fd = std::io::stdin();
    let saved = termios::tcgetattr(&stdin_fd).ok();
    // Window size changes reach us as SIGWINCH; blocked here, before any thread starts,
    // so that every thread leaves it to the signalfd.
    let mut winch = SigSet::empty();
    winch.add(Signal::SIGWINCH);
    winch.thread_block()?;
    let resizes = SignalFd::with_flags(&winch, SfdFlags::SFD_CLOEXEC)?;
    let relay = std::thread::spawn(move || -> Result<()> {
        let master = podrun_runtime::process::receive_terminal(&ours)?;
        copy_window_size(&master);
        let resized = dup(&master)?;
        std::thread::spawn(move || {
            // The kernel signals the process group in the container's terminal itself.
            while let Ok(Some(_)) = resizes.read_signal() {
                copy_window_size(&resized);
            }
        });
        if interactive {
            let master_in = dup(&master)?;
            std::thread::spawn(move || {
                let mut m = std::fs::File::from(master_in);
                let mut buf = [0u8; 4096];
                let mut stdin = std::io::stdin();
                while let Ok(n) = stdin.read(&mut buf) {
                    if n == 0 || m.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
        let mut m = std::fs::File::from(master);
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        // EIO once the process and every holder of the slave are gone.
        while let Ok(n) = m.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = out.flush();
        }
        Ok(())
    });
    if let Some(t) = &saved {
        let mut raw = t.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin_fd, termios::SetArg::TCSANOW, &raw)?;
    }
    let result = rt.exec(&info, &name, command, true, &[&theirs]);
    drop(theirs);
    if result.is_ok() {
        let _ = relay.join();
    }
    if let Some(t) = &saved {
        let _ = termios::tcsetattr(&stdin_fd, termios::SetArg::TCSANOW, t);
    }
    exit_code(result)
}

/// The command's exit code; 127 or 126 (with the reason on stderr) when it could not be
/// executed, as runc, Docker and kubectl exit.
fn exit_code(result: Result<i32, PodError>) -> Result<ExitCode> {
    match result {
        Ok(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(PodError::Protocol(ProtocolError::Remote(message))) => {
            match podrun_runtime::process::exec_failure_exit_code(&message) {
                Some(code) => {
                    eprintln!("podrun: {message}");
                    Ok(ExitCode::from(code))
                }
                None => bail!(message),
            }
        }
        Err(e) => Err(e.into()),
    }
}
