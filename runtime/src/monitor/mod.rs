//! The pod monitor: one small single-threaded process per pod. It lives in the pod's
//! network, IPC and UTS namespaces and holds them (no pause container), is the subreaper
//! and parent of every container in the pod, runs them in Kubernetes order with
//! kubelet's restart policy and back-off, turns their output into CRI-format logs, and
//! answers `status`, `exec` and `stop` on its control socket. It survives the command
//! that started it; when asked to remove the pod it tears everything down and exits.
//!
//! Pod life, as the monitor drives it:
//! ```text
//!  init containers, one at a time ──all exited 0──▶ app containers started together
//!  (native sidecars start in init order and keep running)
//!      │ failure + restartPolicy Never                 │ exits: restart per policy, with back-off
//!      ▼                                               ▼
//!    Failed ◀──────────── all done, none restarting ── Running ──▶ Succeeded
//!  Stop: preStop hooks, stop signal, SIGKILL after the grace period, then (remove) teardown.
//! ```
//!
//! A `managed` plan (CRI) starts with no containers and the monitor never decides
//! anything about them: the agent adds each (`CreateContainer`), starts, stops and
//! removes it, and kubelet restarts containers itself:
//! ```text
//!  CreateContainer ─▶ Waiting(ContainerCreated) ─StartContainer─▶ Running ─exit─▶ Terminated
//!                                │                                  │ StopContainer  │
//!                                └──────────── RemoveContainer ◀────┴────────────────┘
//! ```
//! The monitor also copies a running container's stdio to and from attached clients
//! (`Attach`), besides writing its output to the log.

pub mod backoff;
pub mod protocol;
mod stdio;

mod attach;
mod event_loop;
mod exec;
mod exits;
mod logs;
mod managed;
mod requests;
mod setup;
mod start;
mod status;
mod stop;
#[cfg(test)]
mod tests;

pub use stop::teardown_pod;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use crate::cgroups::CgroupManager;
use crate::logs::{CriLogWriter, Stream};
use crate::plan::{ContainerKind, ContainerPlan, PodPlan};
use crate::status::{ContainerState, ContainerStatus};
use backoff::Backoff;

pub const PLAN_FILE: &str = "plan.json";
pub const STATUS_FILE: &str = "status.json";
pub const SOCKET_FILE: &str = "monitor.sock";
/// Waiting reason of a managed container between CreateContainer and StartContainer.
pub const CONTAINER_CREATED: &str = "ContainerCreated";

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("read pod plan {0}: {1}")]
    Plan(String, String),
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        source: nix::Error,
    },
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("cgroup {path}: {message}")]
    Cgroup { path: String, message: String },
    #[error("sysctl {name}: {message}")]
    Sysctl { name: String, message: String },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

fn sys(step: &'static str) -> impl FnOnce(nix::Error) -> MonitorError {
    move |source| MonitorError::Sys { step, source }
}
fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> MonitorError {
    move |source| MonitorError::Io { step, source }
}

struct Running {
    pid: Pid,
    started: Instant,
    oom_kills_before: u64,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    log: Option<CriLogWriter>,
    /// Write end of the container's stdin (a pipe, or a dup of the pty master), kept for
    /// attached clients when the plan asks for stdin.
    stdin: Option<OwnedFd>,
    /// Input from attached clients not yet written to `stdin`.
    stdin_buf: Vec<u8>,
    /// Close `stdin` once `stdin_buf` is written (stdin_once and the client closed).
    stdin_close: bool,
}

/// Attached input is read only while less than this waits for the container.
const STDIN_BUF_MAX: usize = 64 * 1024;
/// Output kept for an attached client that does not read fast enough; beyond it the
/// client loses output rather than stalling the pod.
const ATTACH_PENDING_MAX: usize = 1 << 20;
/// How long an attached client still gets output once the container exited.
const ATTACH_LINGER: Duration = Duration::from_secs(2);

/// One of an attached client's output descriptors (non-blocking).
struct AttachedOutput {
    fd: OwnedFd,
    pending: Vec<u8>,
}

/// A client attached to a container's stdio.
struct Attachment {
    stream: UnixStream,
    stdin: Option<OwnedFd>,
    stdout: Option<AttachedOutput>,
    stderr: Option<AttachedOutput>,
    /// The container exited: `Exited` is sent once the output is flushed, or at
    /// `finish_by` at the latest.
    exit_code: Option<i32>,
    finish_by: Option<Instant>,
    /// The client hung up: drop it.
    gone: bool,
}

struct Container {
    plan: ContainerPlan,
    status: ContainerStatus,
    running: Option<Running>,
    backoff: Backoff,
    /// When a restart is due (back-off) or the first start may happen.
    next_start: Option<Instant>,
    /// Exited and will not run again.
    done: bool,
    /// Has been started (or tried to) at least once.
    started_before: bool,
    stop_sent: bool,
    /// Output pipes of a finished run still being drained.
    draining: Vec<(Stream, OwnedFd)>,
    draining_log: Option<CriLogWriter>,
    attaches: Vec<Attachment>,
    /// StopContainer: SIGKILL once this passes.
    kill_at: Option<Instant>,
    /// StopContainer callers, answered once the container exited.
    stop_waiters: Vec<UnixStream>,
    /// RemoveContainer: forget the container once it is no longer running.
    removing: bool,
    remove_waiters: Vec<UnixStream>,
}

impl Container {
    fn new(plan: &ContainerPlan, backoff_base_ms: u64, waiting_reason: &str) -> Self {
        Container {
            status: ContainerStatus {
                id: plan.id.clone(),
                name: plan.name.clone(),
                image: plan.image.clone(),
                image_id: plan.image_id.clone(),
                state: ContainerState::Waiting {
                    reason: waiting_reason.into(),
                    message: String::new(),
                },
                last_state: None,
                restart_count: 0,
                ready: false,
                init: plan.kind != ContainerKind::App,
            },
            plan: plan.clone(),
            running: None,
            backoff: Backoff::new(Duration::from_millis(backoff_base_ms)),
            next_start: None,
            done: false,
            started_before: false,
            stop_sent: false,
            draining: Vec::new(),
            draining_log: None,
            attaches: Vec::new(),
            kill_at: None,
            stop_waiters: Vec::new(),
            removing: false,
            remove_waiters: Vec::new(),
        }
    }
}

struct ExecSession {
    stream: Option<UnixStream>,
    /// Hook execs (preStop) have no client.
    hook_of: Option<usize>,
}

struct Stopping {
    deadline: Instant,
    remove: bool,
    sidecars_signalled: bool,
    waiters: Vec<UnixStream>,
}

pub struct Monitor {
    plan: PodPlan,
    cgroups: Box<dyn CgroupManager>,
    containers: Vec<Container>,
    execs: HashMap<Pid, ExecSession>,
    holders: Vec<UnixStream>,
    listener: UnixListener,
    signals: SignalFd,
    stopping: Option<Stopping>,
    start_time: chrono::DateTime<Utc>,
    status_dirty: bool,
    seccomp_cache: HashMap<String, Vec<seccompiler::BpfProgram>>,
    host_mnt: OwnedFd,
    host_net: OwnedFd,
    host_pid: i32,
}

/// Entry point of `podrun monitor`: the launcher has already put this process in the
/// pod's namespaces. `ready` receives one line, "ok <pid>" or the error, once the pod is
/// set up (or has failed to be).
pub fn run(state_dir: &Path, ready: Option<OwnedFd>) -> Result<(), MonitorError> {
    let plan: PodPlan = crate::state::read_json(&state_dir.join(PLAN_FILE))?
        .ok_or_else(|| MonitorError::Plan(state_dir.display().to_string(), "missing".into()))?;
    let result = Monitor::new(plan).and_then(|m| {
        if let Some(fd) = &ready {
            let _ = nix::unistd::write(fd, format!("ok {}\n", std::process::id()).as_bytes());
        }
        m.run()
    });
    if let (Err(e), Some(fd)) = (&result, &ready) {
        let _ = nix::unistd::write(fd, format!("{e}\n").as_bytes());
    }
    result
}

fn set_nonblocking(fd: &impl AsRawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}
