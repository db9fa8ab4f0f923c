//! `podrun exec`: run a command in a running container. Without a terminal the process
//! gets podrun's own descriptors (passed to the monitor over its socket), so its output
//! needs no copying; with -t podrun makes a pseudo-terminal and relays it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::ExitCode;

use anyhow::{bail, Result};
use nix::sys::termios;
use podrun_runtime::plan::ContainerKind;
use podrun_runtime::pod::PodRuntime;

fn dup(fd: impl AsFd) -> Result<OwnedFd> {
    Ok(fd.as_fd().try_clone_to_owned()?)
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
        let code = rt.exec(&info, &name, command, false, [&stdin, &stdout, &stderr])?;
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }

    let pty = nix::pty::openpty(None, None)?;
    let stdin_fd = std::io::stdin();
    let saved = termios::tcgetattr(&stdin_fd).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin_fd, termios::SetArg::TCSANOW, &raw)?;
        // Same window size as ours.
        // SAFETY: TIOCGWINSZ/TIOCSWINSZ read and write one winsize struct.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(stdin_fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0 {
                libc::ioctl(pty.master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
            }
        }
    }
    let master_in = dup(&pty.master)?;
    let master_out = dup(&pty.master)?;
    if interactive {
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
    let relay = std::thread::spawn(move || {
        let mut m = std::fs::File::from(master_out);
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = m.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = out.flush();
        }
    });
    let slave = pty.slave;
    let result = rt.exec(&info, &name, command, true, [&slave, &slave, &slave]);
    drop(slave);
    // The process is gone; what it wrote is still in the terminal buffer.
    let _ = relay.join();
    if let Some(t) = &saved {
        let _ = termios::tcsetattr(&stdin_fd, termios::SetArg::TCSANOW, t);
    }
    let code = result?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
