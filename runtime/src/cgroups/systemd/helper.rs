//! `SystemdBus` through a helper process, for the processes that clone container
//! processes (the pod monitor, `podrun oci run`). Those must stay single-threaded: a
//! cloned child runs ordinary Rust before execve, and a lock another thread held at the
//! clone would never be released in it. A zbus connection runs executor and reactor
//! threads, so it lives in a helper forked from the caller while the caller is still
//! single-threaded (fork from one thread is safe). The helper connects, then serves one
//! JSON request per line over a socketpair until the caller closes it.
//!
//! ```text
//! caller (one thread)              helper (zbus threads)            systemd
//!   spawn: fork ───────────────────▶ connect ───────────────────────▶ Version
//!          ◀── Ready(Ok | Err) ─────
//!   call   ── Request ─────────────▶ StartTransientUnit ... ────────▶
//!          ◀── Reply ──────────────
//!   drop   ── EOF ─────────────────▶ exit
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::CgroupError;
use super::{BusError, SystemdBus, UnitProperty, ZbusSystemd};

/// How long one call (or the helper's connect) may take before the helper is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One `SystemdBus` call, as sent to the helper.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Start {
        name: String,
        mode: String,
        properties: Vec<UnitProperty>,
    },
    SetProperties {
        name: String,
        runtime: bool,
        properties: Vec<UnitProperty>,
    },
    Stop {
        name: String,
        mode: String,
    },
    ActiveState {
        name: String,
    },
}

/// The helper's answer to a request (ActiveState's value; None for the others).
type Reply = Result<Option<String>, BusError>;

/// The helper's first line: connected, or why not.
type Ready = Result<(), String>;

/// Which bus the helper connects to.
#[derive(Debug, Clone)]
enum Target {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set, as for `ZbusSystemd::connect`).
    System,
    Address(String),
}

/// A forked helper and the caller's end of its socket.
struct Helper {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The helper process; None when the other end is not a child (tests).
    process: Option<OwnedFd>,
}

impl Helper {
    fn exchange(&mut self, request: &Request) -> Result<Reply, String> {
        let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        read_line(&mut self.reader)
    }

    /// End the helper: it has no state worth waiting for. Through its pidfd, so nothing
    /// else is signalled or reaped even if the caller's reaping took it already.
    fn end(self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
        if let Some(pidfd) = &self.process {
            // SAFETY: plain syscalls on a pidfd this struct owns.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::waitid(
                    libc::P_PIDFD,
                    pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED,
                );
            }
        }
    }
}

fn read_line<T: for<'de> Deserialize<'de>>(
    reader: &mut BufReader<UnixStream>,
) -> Result<T, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("the helper process exited".into()),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("bad answer {line:?}: {e}")),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!("no answer within {CALL_TIMEOUT:?}"))
        }
        Err(e) => Err(format!("receive: {e}")),
    }
}

/// `SystemdBus` whose calls a helper process makes. A helper that breaks (exits, stops
/// answering) is ended and the next call forks a new one.
pub struct HelperBus {
    target: Target,
    helper: Mutex<Option<Helper>>,
}

impl HelperBus {
    /// Fork a helper connected to the system bus. Call from a single-threaded process.
    pub fn connect() -> Result<Self, CgroupError> {
        Self::with_target(Target::System)
    }

    /// Fork a helper connected to the bus at `address`.
    pub fn connect_address(address: &str) -> Result<Self, CgroupError> {
        Self::with_target(Target::Address(address.to_string()))
    }

    fn with_target(target: Target) -> Result<Self, CgroupError> {
        let helper = spawn(&target).map_err(|reason| CgroupError::SystemdUnavailable { reason })?;
        Ok(HelperBus {
            target,
            helper: Mutex::new(Some(helper)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Helper>> {
        self.helper.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn call(&self, request: Request) -> Reply {
        let mut guard = self.lock();
        if guard.is_none() {
            *guard = Some(spawn(&self.target).map_err(BusError::Other)?);
        }
        let helper = guard.as_mut().expect("helper present");
        match helper.exchange(&request) {
            Ok(reply) => reply,
            Err(e) => {
                if let Some(h) = guard.take() {
                    h.end();
                }
                Err(BusError::Other(format!("systemd D-Bus helper: {e}")))
            }
        }
    }
}

impl Drop for HelperBus {
    fn drop(&mut self) {
        if let Some(h) = self.lock().take() {
            h.end();
        }
    }
}

impl SystemdBus for HelperBus {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[UnitProperty],
    ) -> Result<(), BusError> {
        self.call(Request::Start {
            name: name.to_string(),
            mode: mode.to_string(),
            properties: properties.to_vec(),
        })
        .map(drop)
    }

    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[UnitProperty],
    ) -> Result<(), BusError> {
        self.call(Request::SetProperties {
            name: name.to_string(),
            runtime,
            properties: properties.to_vec(),
        })
        .map(drop)
    }

    fn stop_unit(&self, name: &str, mode: &str) -> Result<(), BusError> {
        self.call(Request::Stop {
            name: name.to_string(),
            mode: mode.to_string(),
        })
        .map(drop)
    }

    fn active_state(&self, name: &str) -> Result<Option<String>, BusError> {
        self.call(Request::ActiveState {
            name: name.to_string(),
        })
    }
}

/// Fork the helper and wait for it to report whether it reached systemd.
fn spawn(target: &Target) -> Result<Helper, String> {
    // fork is only safe from one thread: the child allocates and starts zbus.
    if let Some(threads) = crate::process::thread_count().filter(|n| *n > 1) {
        return Err(format!(
            "the D-Bus helper must be forked from a single-threaded process; this one has \
             {threads} threads"
        ));
    }
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let parent = nix::unistd::getpid();
    // SAFETY: the caller is single-threaded (checked above), so the child may run
    // ordinary code; it never returns from `helper_main`.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            helper_main(theirs, target, parent)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(theirs);
            // SAFETY: pidfd_open on our own, not yet reaped, child.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.as_raw(), 0) };
            // SAFETY: a descriptor pidfd_open just returned, owned from here on.
            let process = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) });
            let mut helper = from_stream(ours)?;
            helper.process = process;
            let ready: Result<Ready, String> = read_line(&mut helper.reader);
            match ready {
                Ok(Ok(())) => {
                    tracing::debug!(pid = child.as_raw(), "systemd D-Bus helper ready");
                    Ok(helper)
                }
                Ok(Err(reason)) => {
                    helper.end();
                    Err(reason)
                }
                Err(e) => {
                    helper.end();
                    Err(format!("systemd D-Bus helper: {e}"))
                }
            }
        }
    }
}

fn from_stream(stream: UnixStream) -> Result<Helper, String> {
    stream
        .set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| format!("socket timeout: {e}"))?;
    let writer = stream.try_clone().map_err(|e| format!("socket: {e}"))?;
    Ok(Helper {
        reader: BufReader::new(stream),
        writer,
        process: None,
    })
}

/// The helper process: never returns.
fn helper_main(sock: UnixStream, target: &Target, parent: nix::unistd::Pid) -> ! {
    // SAFETY: prctl with integer arguments; this process is the helper alone.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"podrun-dbus".as_ptr(), 0, 0, 0);
    }
    if nix::unistd::getppid() != parent {
        // SAFETY: leave without running the caller's destructors.
        unsafe { libc::_exit(0) }
    }
    // Signals the caller blocks (for its signalfd) must reach the helper.
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    close_other_fds(sock.as_raw_fd());
    let connected = match target {
        Target::System => ZbusSystemd::connect(),
        Target::Address(a) => ZbusSystemd::connect_address(a),
    };
    let ready: Ready = connected.as_ref().map(drop).map_err(|e| match e {
        CgroupError::SystemdUnavailable { reason } => reason.clone(),
        e => e.to_string(),
    });
    let mut writer = &sock;
    let mut line = serde_json::to_string(&ready).unwrap_or_default();
    line.push('\n');
    if writer.write_all(line.as_bytes()).is_ok() {
        if let Ok(bus) = connected {
            serve(&bus, &sock);
        }
    }
    // SAFETY: leave without running the caller's destructors or atexit handlers.
    unsafe { libc::_exit(0) }
}

/// Keep only stdio and the socket: the caller's other descriptors (its listening
/// socket, container pipes, readiness pipe) must close when the caller closes them.
fn close_other_fds(keep: i32) {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|fd| *fd > 2 && *fd != keep) {
        // SAFETY: closing descriptors of this process, which owns nothing else by now;
        // the one the listing used is gone already (EBADF is harmless).
        unsafe { libc::close(fd) };
    }
}

/// Answer requests on `sock` with `bus` until the other end closes it.
fn serve(bus: &dyn SystemdBus, sock: &UnixStream) {
    let mut writer = sock;
    for line in BufReader::new(sock).lines() {
        let Ok(line) = line else { return };
        let reply: Reply = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Start {
                name,
                mode,
                properties,
            }) => bus
                .start_transient_unit(&name, &mode, &properties)
                .map(|()| None),
            Ok(Request::SetProperties {
                name,
                runtime,
                properties,
            }) => bus
                .set_unit_properties(&name, runtime, &properties)
                .map(|()| None),
            Ok(Request::Stop { name, mode }) => bus.stop_unit(&name, &mode).map(|()| None),
            Ok(Request::ActiveState { name }) => bus.active_state(&name),
            Err(e) => Err(BusError::Other(format!("bad request {line:?}: {e}"))),
        };
        let mut out = serde_json::to_string(&reply).unwrap_or_default();
        out.push('\n');
        if writer.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{BusCall, FakeBus, PropValue};
    use super::*;

    /// The client and `serve` over a socketpair, the helper's loop on a thread: the
    /// protocol without forking the (multi-threaded) test process.
    fn over_socket(bus: Arc<FakeBus>) -> (HelperBus, std::thread::JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve(bus.as_ref(), &theirs));
        let client = HelperBus {
            target: Target::System,
            helper: Mutex::new(Some(from_stream(ours).unwrap())),
        };
        (client, server)
    }

    #[test]
    fn calls_and_errors_cross_the_socket() {
        let fake = Arc::new(FakeBus::new());
        let (bus, server) = over_socket(fake.clone());
        let props = vec![
            ("PIDs".to_string(), PropValue::U32List(vec![7])),
            ("Delegate".to_string(), PropValue::Bool(true)),
        ];
        bus.start_transient_unit("a.scope", "replace", &props)
            .unwrap();
        assert_eq!(
            bus.start_transient_unit("a.scope", "replace", &props),
            Err(BusError::UnitExists)
        );
        assert_eq!(
            bus.active_state("a.scope").unwrap().as_deref(),
            Some("active")
        );
        bus.set_unit_properties("a.scope", true, &props[1..])
            .unwrap();
        bus.stop_unit("a.scope", "replace").unwrap();
        assert_eq!(bus.active_state("a.scope").unwrap(), None);
        assert_eq!(
            bus.stop_unit("a.scope", "replace"),
            Err(BusError::NoSuchUnit)
        );
        assert_eq!(
            fake.calls()[0],
            BusCall::Start {
                name: "a.scope".into(),
                mode: "replace".into(),
                properties: props,
            }
        );
        drop(bus);
        server.join().unwrap();
    }

    #[test]
    fn a_gone_helper_is_an_error_not_a_hang() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let bus = HelperBus {
            target: Target::Address("unix:path=/nonexistent/bus".into()),
            helper: Mutex::new(Some(from_stream(ours).unwrap())),
        };
        let err = bus.stop_unit("a.scope", "replace").unwrap_err();
        assert!(
            matches!(&err, BusError::Other(m) if m.contains("helper")),
            "{err}"
        );
    }

    #[test]
    fn forking_from_a_multi_threaded_process_is_refused() {
        // A second thread, alive while the helper would be forked.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || stopped.recv());
        let result = HelperBus::connect_address("unix:path=/nonexistent/bus");
        drop(stop);
        let _ = other.join();
        let err = match result {
            Err(e) => e.to_string(),
            Ok(_) => panic!("forked from a multi-threaded process"),
        };
        assert!(err.contains("single-threaded"), "{err}");
    }
}
