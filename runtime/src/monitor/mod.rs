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

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::cgroups::CgroupManager;
use crate::logs::{CriLogWriter, Stream};
use crate::plan::{ContainerKind, ContainerPlan, PodPlan, ProcessSpec};
use crate::process::{self, ChildSetup, Stdio};
use crate::status::{ContainerState, ContainerStatus, PodPhase, PodStatus};
use backoff::Backoff;
use protocol::{Request, Response};

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

impl AttachedOutput {
    fn new(fd: OwnedFd) -> Self {
        set_nonblocking(&fd);
        Self {
            fd,
            pending: Vec::new(),
        }
    }

    fn queue(&mut self, data: &[u8]) {
        let room = ATTACH_PENDING_MAX.saturating_sub(self.pending.len());
        self.pending
            .extend_from_slice(&data[..data.len().min(room)]);
    }

    /// Write `data` (after what is pending); false once the client's side is broken.
    fn push(&mut self, data: &[u8]) -> bool {
        if !self.pending.is_empty() {
            self.queue(data);
            return self.flush();
        }
        let mut rest = data;
        while !rest.is_empty() {
            match nix::unistd::write(&self.fd, rest) {
                Ok(n) => rest = &rest[n..],
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => break,
                Err(_) => return false,
            }
        }
        self.queue(rest);
        true
    }

    /// Write what is pending, as far as the descriptor takes it; false once broken.
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match nix::unistd::write(&self.fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return true,
                Err(_) => return false,
            }
        }
        true
    }
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

impl Attachment {
    fn flushed(&self) -> bool {
        [&self.stdout, &self.stderr]
            .iter()
            .all(|o| o.as_ref().is_none_or(|o| o.pending.is_empty()))
    }
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

/// Bring up `lo` in the pod's own network namespace, so containers reach each other on
/// localhost.
fn loopback_up() -> Result<(), MonitorError> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("socket for lo"))?;
    // SAFETY: ifreq is plain data; the ioctls read and write only that struct.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(MonitorError::Sys {
                step: "get lo flags",
                source: nix::Error::last(),
            });
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(MonitorError::Sys {
                step: "bring lo up",
                source: nix::Error::last(),
            });
        }
    }
    Ok(())
}

impl Monitor {
    fn new(plan: PodPlan) -> Result<Self, MonitorError> {
        use nix::mount::MsFlags;
        // SAFETY: prctl with integer arguments.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        }
        // Handles on the host's mount and network namespaces, to undo the pod's host-side
        // state (pinned netns, CNI attachment) from there at teardown.
        // /proc/self, not /proc/<pid>: in a pod PID namespace our pid means another
        // process in the host's /proc.
        let open_own = |kind: &str| {
            std::fs::File::open(format!("/proc/self/ns/{kind}"))
                .map(OwnedFd::from)
                .map_err(io("open the host namespaces"))
        };
        // Our pid as the host sees it (getpid() is 1 when the pod has a PID namespace).
        let host_pid = std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str().and_then(|s| s.parse::<i32>().ok()))
            .unwrap_or_else(|| std::process::id() as i32);
        let host_mnt = open_own("mnt")?;
        let host_net = open_own("net")?;
        // The monitor has its own mount namespace: what it mounts (pod tmpfs volumes,
        // /dev/shm) exists only there and in the containers it forks, and disappears
        // with them, whatever happens to podrun.
        nix::sched::unshare(CloneFlags::CLONE_NEWNS)
            .map_err(sys("create the monitor's mount namespace"))?;
        if let Some(net) = &plan.network {
            let fd =
                std::fs::File::open(&net.netns).map_err(io("open the pod network namespace"))?;
            nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
                .map_err(sys("join the pod network namespace"))?;
        }
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys("make the monitor's mounts rslave"))?;
        if plan.share_process_namespace && !plan.host_pid {
            // The monitor is PID 1 of the pod's PID namespace: /proc must show that
            // namespace for it to find its children there.
            nix::mount::mount(
                Some("proc"),
                "/proc",
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(sys("mount /proc for the pod PID namespace"))?;
        }
        for t in &plan.tmpfs {
            std::fs::create_dir_all(&t.path).map_err(io("create tmpfs mount point"))?;
            let mut data = format!("mode={:o}", t.mode);
            if let Some(size) = t.size_bytes {
                data.push_str(&format!(",size={size}"));
            }
            nix::mount::mount(
                Some("tmpfs"),
                &t.path,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(data.as_str()),
            )
            .map_err(sys("mount pod tmpfs"))?;
        }
        if !plan.host_network {
            nix::unistd::sethostname(&plan.hostname).map_err(sys("set the pod hostname"))?;
            loopback_up()?;
        }
        apply_sysctls(&plan.sysctls)?;
        crate::fault::point("monitor:namespaces");

        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        mask.thread_block().map_err(sys("block signals"))?;
        // SAFETY: ignoring SIGPIPE is process-wide and async-signal-safe.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(sys("signalfd"))?;

        // The monitor clones container processes: it must stay single-threaded.
        let cgroups =
            crate::cgroups::new_manager_single_threaded(plan.cgroup_driver).map_err(|e| {
                MonitorError::Cgroup {
                    path: plan.cgroup_path.clone(),
                    message: e.to_string(),
                }
            })?;
        cgroups
            .ensure(&plan.cgroup_path, &plan.pod_resources)
            .map_err(|e| MonitorError::Cgroup {
                path: plan.cgroup_path.clone(),
                message: e.to_string(),
            })?;

        crate::fault::point("monitor:cgroup");
        let socket = plan.state_dir.join(SOCKET_FILE);
        let _ = std::fs::remove_file(&socket);
        let listener = protocol::with_short_path(&socket, |p| UnixListener::bind(p))
            .map_err(io("bind the monitor socket"))?;
        listener
            .set_nonblocking(true)
            .map_err(io("monitor socket"))?;
        crate::fault::point("monitor:socket");

        // Containers of a managed plan wait for StartContainer; the others for their
        // turn in the pod's start order.
        let reason = if plan.managed {
            CONTAINER_CREATED
        } else {
            "PodInitializing"
        };
        let containers = plan
            .containers
            .iter()
            .map(|c| Container::new(c, plan.backoff_base_ms, reason))
            .collect();
        let m = Monitor {
            plan,
            cgroups,
            containers,
            execs: HashMap::new(),
            holders: Vec::new(),
            listener,
            signals,
            stopping: None,
            start_time: Utc::now(),
            status_dirty: true,
            seccomp_cache: HashMap::new(),
            host_mnt,
            host_net,
            host_pid,
        };
        m.write_status()?;
        Ok(m)
    }

    fn run(mut self) -> Result<(), MonitorError> {
        info!(pod = %self.plan.name, namespace = %self.plan.namespace, id = %self.plan.id, "pod monitor started");
        loop {
            self.reap();
            self.progress();
            if self.status_dirty {
                self.write_status()?;
                self.status_dirty = false;
            }
            if self.finished_stopping() {
                if self.stopping.as_ref().is_some_and(|s| s.remove) {
                    break;
                }
                // Stopped but kept: answer whoever waits, stay for status and removal.
                for w in self
                    .stopping
                    .as_mut()
                    .map(|s| std::mem::take(&mut s.waiters))
                    .unwrap_or_default()
                {
                    let _ = protocol::write_response(&w, &Response::Ok);
                }
            }
            self.poll_once()?;
        }
        let remove = self.stopping.as_ref().map(|s| s.remove).unwrap_or(false);
        let waiters = self.stopping.take().map(|s| s.waiters).unwrap_or_default();
        if remove {
            self.teardown();
        }
        for w in waiters {
            let _ = protocol::write_response(&w, &Response::Ok);
        }
        info!(pod = %self.plan.name, "pod monitor exiting");
        Ok(())
    }

    fn status(&self) -> PodStatus {
        PodStatus {
            phase: self.phase(),
            terminating: self.stopping.is_some(),
            monitor_pid: self.host_pid,
            pod_ip: self.plan.network.as_ref().and_then(|n| n.pod_ip.clone()),
            start_time: self.start_time,
            containers: self.containers.iter().map(|c| c.status.clone()).collect(),
        }
    }

    fn write_status(&self) -> Result<(), MonitorError> {
        crate::state::write_json(&self.plan.state_dir.join(STATUS_FILE), &self.status())?;
        Ok(())
    }

    fn phase(&self) -> PodPhase {
        if self.plan.managed {
            // The sandbox is up as long as its monitor is; what its containers do is
            // for kubelet to judge.
            return PodPhase::Running;
        }
        let views: Vec<ContainerView> = self
            .containers
            .iter()
            .map(|c| ContainerView {
                kind: c.plan.kind,
                started_once: c.started_before,
                done: c.done,
                exit_code: c.status.state.exit_code(),
            })
            .collect();
        pod_phase(&views)
    }

    // ---- starting containers -------------------------------------------------------

    /// Decide what to start now: init containers one at a time in order, then all app
    /// containers; restarts whose back-off has expired.
    fn apps_done(&self) -> bool {
        let mut apps = self
            .containers
            .iter()
            .filter(|c| c.plan.kind == ContainerKind::App)
            .peekable();
        apps.peek().is_some() && apps.all(|c| c.done)
    }

    fn progress(&mut self) {
        self.progress_requests();
        if self.stopping.is_some() {
            self.progress_stop();
            return;
        }
        if self.plan.managed {
            return; // the agent starts and stops containers
        }
        if self.apps_done() {
            // The pod completed: its sidecars get their stop signal, latest first.
            for idx in (0..self.containers.len()).rev() {
                if self.containers[idx].plan.kind == ContainerKind::Sidecar {
                    self.stop_container(idx);
                }
            }
            return;
        }
        let now = Instant::now();
        let mut idx = 0;
        while idx < self.containers.len() {
            let c = &self.containers[idx];
            let kind = c.plan.kind;
            if kind == ContainerKind::Init || kind == ContainerKind::Sidecar {
                let ready_to_start =
                    c.running.is_none() && !c.done && c.next_start.is_none_or(|t| t <= now);
                if ready_to_start {
                    let _ = self.start(idx);
                }
                let c = &self.containers[idx];
                match kind {
                    // Later containers wait until this init container succeeded.
                    ContainerKind::Init if !(c.done && c.status.state.exit_code() == Some(0)) => {
                        return
                    }
                    // Later containers wait until the sidecar has started once.
                    ContainerKind::Sidecar if !c.started_before => return,
                    _ => {}
                }
            } else if c.running.is_none() && !c.done && c.next_start.is_none_or(|t| t <= now) {
                let _ = self.start(idx);
            }
            idx += 1;
        }
    }

    fn compile_seccomp(&mut self, idx: usize) -> Result<Vec<seccompiler::BpfProgram>, String> {
        let c = &self.containers[idx].plan;
        if let Some(p) = self.seccomp_cache.get(&c.id) {
            return Ok(p.clone());
        }
        let programs = crate::security::seccomp::compile(&c.seccomp, &c.process.capabilities)
            .map_err(|e| e.to_string())?;
        self.seccomp_cache.insert(c.id.clone(), programs.clone());
        Ok(programs)
    }

    fn clone_flags(&self) -> CloneFlags {
        let mut flags = CloneFlags::CLONE_NEWNS;
        if !self.plan.host_pid && !self.plan.share_process_namespace {
            flags |= CloneFlags::CLONE_NEWPID;
        }
        flags
    }

    /// Start container `idx`; a failure is recorded as its exit (StartError) and returned.
    fn start(&mut self, idx: usize) -> Result<(), String> {
        let now = Utc::now();
        // kubelet counts restarts when they happen, not when they are scheduled.
        let c = &mut self.containers[idx];
        if c.started_before {
            c.status.restart_count += 1;
        }
        c.started_before = true;
        match self.try_start(idx) {
            Ok(running) => {
                let c = &mut self.containers[idx];
                info!(pod = %self.plan.name, container = %c.plan.name, pid = running.pid.as_raw(), "container started");
                c.status.state = ContainerState::Running {
                    started_at: now,
                    pid: running.pid.as_raw(),
                };
                c.status.ready = true;
                c.running = Some(running);
                c.next_start = None;
                c.stop_sent = false;
                // kubelet runs the hooks of managed containers itself.
                let hook = c.plan.post_start.clone().filter(|_| !self.plan.managed);
                if let Some(cmd) = hook {
                    self.spawn_exec(idx, cmd, None, None);
                }
                self.status_dirty = true;
                crate::fault::point("monitor:container-started");
                Ok(())
            }
            Err(message) => {
                let c = &mut self.containers[idx];
                warn!(pod = %self.plan.name, container = %c.plan.name, error = %message, "container failed to start");
                let exit_code = if message.contains("not found") {
                    127
                } else {
                    128
                };
                self.record_exit(
                    idx,
                    exit_code,
                    None,
                    "StartError",
                    message.clone(),
                    None,
                    Duration::ZERO,
                );
                self.status_dirty = true;
                Err(message)
            }
        }
    }

    fn try_start(&mut self, idx: usize) -> Result<Running, String> {
        let seccomp = self.compile_seccomp(idx)?;
        let flags = self.clone_flags();
        let plan = &self.plan;
        let c = &self.containers[idx];
        let cp = &c.plan;
        self.cgroups
            .ensure(&cp.cgroup_path, &cp.resources)
            .map_err(|e| format!("cgroup {}: {e}", cp.cgroup_path))?;
        let oom_before = self.cgroups.oom_kills(&cp.cgroup_path).unwrap_or(0);
        if c.status.restart_count > 0 {
            // A restarted container starts from the image again, as a new container.
            for dir in [&cp.rootfs.upper, &cp.rootfs.work] {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        for dir in [&cp.rootfs.upper, &cp.rootfs.work, &cp.rootfs.rootfs] {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        if let Some(tm) = &cp.termination_message {
            let _ = std::fs::write(tm, b"");
        }
        let log_path = plan.log_path(cp, c.status.restart_count);
        let log = CriLogWriter::open(&log_path)
            .map_err(|e| format!("open log {}: {e}", log_path.display()))?;
        let (init_stdio, kept) = stdio::prepare(cp.process.tty, cp.stdin)?;
        let cgroups = &self.cgroups;
        let cg_path = cp.cgroup_path.clone();
        let mut place = |pid: Pid| {
            cgroups
                .add_process(&cg_path, pid.as_raw())
                .map_err(|e| format!("cgroup {cg_path}: {e}"))
        };
        let console = init_stdio.console.as_ref();
        let setup = if self.plan.managed {
            ChildSetup::ContainerFromHost {
                rootfs: &cp.rootfs,
                host_mnt: &self.host_mnt,
                console,
            }
        } else {
            ChildSetup::Container {
                rootfs: &cp.rootfs,
                console,
            }
        };
        let pid = process::spawn(
            flags,
            setup,
            &cp.process,
            &seccomp,
            init_stdio.stdio,
            &mut place,
        )
        .map_err(|e| e.to_string())?;
        drop(init_stdio.console);
        let ends = match kept.into_ends() {
            Ok(ends) => ends,
            Err(e) => {
                // Not a container the monitor could serve: gone before it is known.
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(e);
            }
        };
        Ok(Running {
            pid,
            started: Instant::now(),
            oom_kills_before: oom_before,
            stdout: Some(ends.stdout),
            stderr: ends.stderr,
            log: Some(log),
            stdin: ends.stdin,
            stdin_buf: Vec::new(),
            stdin_close: false,
        })
    }

    // ---- exits ---------------------------------------------------------------------

    fn reap(&mut self) {
        loop {
            match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid, code, None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.on_exit(pid, 128 + sig as i32, Some(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, exit_code: i32, signal: Option<i32>) {
        if let Some(session) = self.execs.remove(&pid) {
            debug!(pod = %self.plan.name, pid = pid.as_raw(), exit_code, "exec process exited");
            if let Some(s) = session.stream {
                let _ = protocol::write_response(&s, &Response::Exited { exit_code });
            }
            if let Some(idx) = session.hook_of {
                // preStop finished: now the container gets its stop signal.
                if self.stopping.is_some() {
                    self.signal_container(idx);
                }
            }
            return;
        }
        let Some(idx) = self
            .containers
            .iter()
            .position(|c| c.running.as_ref().is_some_and(|r| r.pid == pid))
        else {
            return; // an orphan re-parented to us, already gone
        };
        let mut run = self.containers[idx].running.take().expect("running");
        let ran = run.started.elapsed();
        let oom = self
            .cgroups
            .oom_kills(&self.containers[idx].plan.cgroup_path)
            .map(|n| n > run.oom_kills_before)
            .unwrap_or(false);
        let reason = if oom && signal == Some(libc::SIGKILL) {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let message = self.containers[idx]
            .plan
            .termination_message
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
            .unwrap_or_default();
        info!(pod = %self.plan.name, container = %self.containers[idx].plan.name, exit_code, reason, "container exited");
        let c = &mut self.containers[idx];
        if let Some(fd) = run.stdout.take() {
            c.draining.push((Stream::Stdout, fd));
        }
        if let Some(fd) = run.stderr.take() {
            c.draining.push((Stream::Stderr, fd));
        }
        c.draining_log = run.log.take();
        // Read what is already in the pipes now, so the log is complete when status says
        // the container exited.
        self.drain(idx, false);
        let started = match &self.containers[idx].status.state {
            ContainerState::Running { started_at, .. } => Some(*started_at),
            _ => None,
        };
        self.record_exit(idx, exit_code, signal, reason, message, started, ran);
        let c = &mut self.containers[idx];
        c.kill_at = None;
        for w in c.stop_waiters.drain(..) {
            let _ = protocol::write_response(&w, &Response::Ok);
        }
        let linger = Instant::now() + ATTACH_LINGER;
        for a in c.attaches.iter_mut().filter(|a| a.exit_code.is_none()) {
            a.exit_code = Some(exit_code);
            a.finish_by = Some(linger);
            a.stdin = None;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_exit(
        &mut self,
        idx: usize,
        exit_code: i32,
        signal: Option<i32>,
        reason: &str,
        message: String,
        started_at: Option<chrono::DateTime<Utc>>,
        ran: Duration,
    ) {
        let stopping = self.stopping.is_some();
        let policy = self.plan.restart_policy;
        let apps_done = self.apps_done();
        let c = &mut self.containers[idx];
        let terminated = ContainerState::Terminated {
            exit_code,
            signal,
            reason: reason.to_owned(),
            message,
            started_at,
            finished_at: Utc::now(),
        };
        c.status.ready = false;
        let restart = !stopping
            && !self.plan.managed
            && should_restart(c.plan.kind, policy, exit_code, apps_done);
        if restart {
            let delay = c.backoff.next_delay(ran);
            c.status.last_state = Some(terminated);
            c.next_start = Some(Instant::now() + delay);
            c.status.state = if delay.is_zero() {
                ContainerState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                }
            } else {
                ContainerState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {}s restarting failed container={} pod={}",
                        delay.as_secs(),
                        c.plan.name,
                        self.plan.name
                    ),
                }
            };
        } else {
            c.status.state = terminated;
            c.done = true;
        }
        self.status_dirty = true;
    }

    // ---- logs ----------------------------------------------------------------------

    fn drain(&mut self, idx: usize, eof_expected: bool) {
        let c = &mut self.containers[idx];
        let tty = c.plan.process.tty;
        let attaches = &mut c.attaches;
        let (fds, log): (Vec<(Stream, &OwnedFd)>, &mut Option<CriLogWriter>) = match &c.running {
            Some(_) => {
                let r = c.running.as_mut().unwrap();
                let mut v = Vec::new();
                if let Some(fd) = &r.stdout {
                    v.push((Stream::Stdout, fd));
                }
                if let Some(fd) = &r.stderr {
                    v.push((Stream::Stderr, fd));
                }
                (v, &mut r.log)
            }
            None => (
                c.draining.iter().map(|(s, fd)| (*s, fd)).collect(),
                &mut c.draining_log,
            ),
        };
        let mut closed = Vec::new();
        let mut buf = [0u8; 32 * 1024];
        for (stream, fd) in fds {
            loop {
                match nix::unistd::read(fd, &mut buf) {
                    Ok(0) | Err(nix::Error::EIO) => {
                        closed.push(fd.as_raw_fd());
                        if let Some(l) = log.as_mut() {
                            let _ = l.flush_partial(stream);
                        }
                        break;
                    }
                    Ok(n) => {
                        if let Some(l) = log.as_mut() {
                            if let Err(e) = l.write(stream, &buf[..n]) {
                                warn!(error = %e, "write container log");
                            }
                        }
                        copy_to_attaches(attaches, tty, stream, &buf[..n]);
                    }
                    Err(nix::Error::EINTR) => continue,
                    Err(_) => break, // EAGAIN: nothing more now
                }
            }
        }
        let _ = eof_expected;
        if let Some(r) = c.running.as_mut() {
            if r.stdout
                .as_ref()
                .is_some_and(|f| closed.contains(&f.as_raw_fd()))
            {
                r.stdout = None;
            }
            if r.stderr
                .as_ref()
                .is_some_and(|f| closed.contains(&f.as_raw_fd()))
            {
                r.stderr = None;
            }
        } else {
            c.draining
                .retain(|(_, fd)| !closed.contains(&fd.as_raw_fd()));
            if c.draining.is_empty() {
                c.draining_log = None;
            }
        }
    }

    // ---- the event loop ------------------------------------------------------------

    fn next_timeout(&self) -> PollTimeout {
        let now = Instant::now();
        let mut next: Option<Instant> = self
            .containers
            .iter()
            .filter(|c| c.running.is_none() && !c.done)
            .filter_map(|c| c.next_start)
            .min();
        // StopContainer kill deadlines and attached clients waiting for their Exited.
        for c in &self.containers {
            let deadlines = c
                .running
                .as_ref()
                .and(c.kill_at)
                .into_iter()
                .chain(c.attaches.iter().filter_map(|a| a.finish_by));
            for t in deadlines {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        if let Some(s) = self.stopping.as_ref().filter(|_| !self.finished_stopping()) {
            next = Some(next.map_or(s.deadline, |n| n.min(s.deadline)));
            // While stopping, look again often: processes in shared PID namespaces are
            // killed through the cgroup, which sends no SIGCHLD for grandchildren.
            next = Some(next.unwrap().min(now + Duration::from_millis(200)));
        }
        match next {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis().min(60_000) as u16;
                PollTimeout::from(ms.max(1))
            }
        }
    }

    fn poll_once(&mut self) -> Result<(), MonitorError> {
        enum Src {
            Signal,
            Listener,
            Holder(usize),
            Pipe(usize),
            /// Container's stdin can take more of its buffered input.
            StdinOut(usize),
            /// An attached client's stdin has input (container, attachment).
            AttachIn(usize, usize),
            /// An attached client's output can take more.
            AttachOut(usize, usize),
            /// An attached client's connection hung up (or spoke).
            AttachConn(usize, usize),
        }
        let timeout = self.next_timeout();
        let mut srcs = Vec::new();
        let mut pfds = Vec::new();
        pfds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
        srcs.push(Src::Signal);
        pfds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        srcs.push(Src::Listener);
        for (i, h) in self.holders.iter().enumerate() {
            pfds.push(PollFd::new(h.as_fd(), PollFlags::POLLIN));
            srcs.push(Src::Holder(i));
        }
        for (i, c) in self.containers.iter().enumerate() {
            let fds: Vec<&OwnedFd> = match &c.running {
                Some(r) => r.stdout.iter().chain(r.stderr.iter()).collect(),
                None => c.draining.iter().map(|(_, f)| f).collect(),
            };
            for fd in fds {
                pfds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                srcs.push(Src::Pipe(i));
            }
            let stdin = c.running.as_ref().filter(|r| r.stdin.is_some());
            if let Some(r) = stdin.filter(|r| !r.stdin_buf.is_empty()) {
                pfds.push(PollFd::new(
                    r.stdin.as_ref().unwrap().as_fd(),
                    PollFlags::POLLOUT,
                ));
                srcs.push(Src::StdinOut(i));
            }
            let take_input = stdin.is_some_and(|r| r.stdin_buf.len() < STDIN_BUF_MAX);
            for (j, a) in c.attaches.iter().enumerate() {
                pfds.push(PollFd::new(a.stream.as_fd(), PollFlags::POLLIN));
                srcs.push(Src::AttachConn(i, j));
                if let Some(fd) = a.stdin.as_ref().filter(|_| take_input) {
                    pfds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    srcs.push(Src::AttachIn(i, j));
                }
                for o in [&a.stdout, &a.stderr].into_iter().flatten() {
                    if !o.pending.is_empty() {
                        pfds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLOUT));
                        srcs.push(Src::AttachOut(i, j));
                    }
                }
            }
        }
        match nix::poll::poll(&mut pfds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                return Err(MonitorError::Sys {
                    step: "poll",
                    source: e,
                })
            }
        }
        let ready: Vec<bool> = pfds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(pfds);
        let mut hung_holders = Vec::new();
        let mut pipes = Vec::new();
        let mut accept = false;
        let mut stdins = Vec::new();
        for (src, r) in srcs.into_iter().zip(ready) {
            if !r {
                continue;
            }
            match src {
                Src::Signal => self.on_signals(),
                Src::Listener => accept = true,
                Src::Holder(i) => hung_holders.push(i),
                Src::Pipe(i) => pipes.push(i),
                Src::StdinOut(i) => stdins.push(i),
                Src::AttachIn(i, j) => {
                    self.read_attached_stdin(i, j);
                    stdins.push(i);
                }
                Src::AttachOut(i, j) => {
                    let a = &mut self.containers[i].attaches[j];
                    for o in [&mut a.stdout, &mut a.stderr] {
                        if o.as_mut().is_some_and(|o| !o.flush()) {
                            *o = None;
                        }
                    }
                }
                Src::AttachConn(i, j) => {
                    let a = &mut self.containers[i].attaches[j];
                    let mut b = [0u8; 512];
                    match nix::sys::socket::recv(
                        a.stream.as_raw_fd(),
                        &mut b,
                        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                    ) {
                        Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
                        Ok(n) if n > 0 => {}
                        _ => a.gone = true,
                    }
                }
            }
        }
        pipes.dedup();
        for i in pipes {
            self.drain(i, false);
        }
        stdins.dedup();
        for i in stdins {
            self.flush_stdin(i);
        }
        for i in 0..self.containers.len() {
            let c = &mut self.containers[i];
            let closed_stdin = c.attaches.iter().any(|a| a.gone && a.stdin.is_some());
            c.attaches.retain(|a| !a.gone);
            if closed_stdin {
                self.attached_stdin_closed(i);
            }
        }
        for i in hung_holders.into_iter().rev() {
            self.on_holder_readable(i);
        }
        if accept {
            self.accept_clients();
        }
        Ok(())
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let sig = info.ssi_signo as i32;
            if sig == libc::SIGCHLD {
                continue; // reaped at the top of the loop
            }
            // A stop signal from outside the pod (sender pid 0 when the sender is in an
            // ancestor PID namespace, or a host pid) stops and removes the pod; containers
            // sharing the monitor's PID namespace cannot signal it through the pod's
            // processes since the monitor is not visible... unless they share its
            // namespace, in which case only root with CAP_KILL could, as with pause.
            info!(pod = %self.plan.name, signal = sig, "stop signal received");
            self.begin_stop(None, true, None);
        }
    }

    fn on_holder_readable(&mut self, i: usize) {
        let h = self.holders.remove(i);
        match protocol::read_request(&h) {
            Ok((Request::Release, _)) => {
                let _ = protocol::write_response(&h, &Response::Ok);
            }
            Ok(_) => self.holders.insert(i, h),
            Err(_) => {
                // The foreground `podrun run` went away without releasing the pod.
                warn!(pod = %self.plan.name, "the command holding the pod exited; stopping the pod");
                self.begin_stop(None, true, None);
            }
        }
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(_) => return,
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            match protocol::read_request(&stream) {
                Ok((req, fds)) => self.handle(stream, req, fds),
                Err(e) => debug!(error = %e, "bad monitor request"),
            }
        }
    }

    fn handle(&mut self, stream: UnixStream, req: Request, fds: Vec<OwnedFd>) {
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

    /// Start a process in container `idx` (exec, or a hook when `stream` is None).
    fn spawn_exec(
        &mut self,
        idx: usize,
        args: Vec<String>,
        stdio: Option<Stdio>,
        stream: Option<UnixStream>,
    ) {
        self.spawn_exec_with(idx, args, stdio, stream, None)
    }

    fn spawn_exec_with(
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

    // ---- CRI-managed containers ----------------------------------------------------

    fn index_of(&self, id: &str) -> Option<usize> {
        self.containers.iter().position(|c| c.plan.id == id)
    }

    fn write_plan(&self) -> Result<(), String> {
        crate::state::write_json(&self.plan.state_dir.join(PLAN_FILE), &self.plan)
            .map_err(|e| e.to_string())
    }

    fn create_container(&mut self, plan: ContainerPlan) -> Result<(), String> {
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

    fn start_container(&mut self, id: &str) -> Result<(), String> {
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

    fn stop_container_request(&mut self, id: &str, timeout_secs: i64, stream: UnixStream) {
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

    fn remove_container(&mut self, id: &str, stream: UnixStream) {
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
    fn progress_requests(&mut self) {
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

    fn reopen_log(&mut self, id: &str) -> Result<(), String> {
        let log = self
            .index_of(id)
            .and_then(|i| self.containers[i].running.as_mut())
            .and_then(|r| r.log.as_mut())
            .ok_or_else(|| format!("container {id} is not running"))?;
        log.reopen().map_err(|e| e.to_string())
    }

    fn update_resources(
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

    /// `want` is (stdin, stdout, stderr); `fds` holds one descriptor per true entry.
    fn attach(&mut self, stream: UnixStream, id: &str, want: [bool; 3], fds: Vec<OwnedFd>) {
        let result = (|| {
            let idx = self
                .index_of(id)
                .ok_or_else(|| format!("container {id} not found"))?;
            let r = self.containers[idx]
                .running
                .as_ref()
                .ok_or_else(|| format!("container {id} is not running"))?;
            if fds.len() != want.iter().filter(|w| **w).count() {
                return Err("attach needs one descriptor per requested stream".to_owned());
            }
            if want[0] && (r.stdin.is_none() || r.stdin_close) {
                return Err(format!("container {id} has no stdin"));
            }
            Ok(idx)
        })();
        let idx = match result {
            Ok(idx) => idx,
            Err(message) => {
                let _ = protocol::write_response(&stream, &Response::Error { message });
                return;
            }
        };
        let mut fds = fds.into_iter();
        let mut next = |wanted: bool| if wanted { fds.next() } else { None };
        let stdin = next(want[0]);
        if let Some(fd) = &stdin {
            set_nonblocking(fd);
        }
        let stdout = next(want[1]).map(AttachedOutput::new);
        let stderr = next(want[2]).map(AttachedOutput::new);
        let _ = stream.set_read_timeout(None);
        if protocol::write_response(&stream, &Response::Ok).is_err() {
            return;
        }
        debug!(pod = %self.plan.name, container = %self.containers[idx].plan.name, "client attached");
        self.containers[idx].attaches.push(Attachment {
            stream,
            stdin,
            stdout,
            stderr,
            exit_code: None,
            finish_by: None,
            gone: false,
        });
    }

    fn read_attached_stdin(&mut self, i: usize, j: usize) {
        let c = &mut self.containers[i];
        let (Some(r), Some(a)) = (c.running.as_mut(), c.attaches.get_mut(j)) else {
            return;
        };
        let Some(fd) = &a.stdin else { return };
        let mut buf = [0u8; 16 * 1024];
        let room = STDIN_BUF_MAX
            .saturating_sub(r.stdin_buf.len())
            .min(buf.len());
        match nix::unistd::read(fd, &mut buf[..room.max(1)]) {
            Ok(n) if n > 0 => r.stdin_buf.extend_from_slice(&buf[..n]),
            Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
            _ => {
                a.stdin = None;
                self.attached_stdin_closed(i);
            }
        }
    }

    /// An attached client closed its stdin: with stdin_once the container's stdin is
    /// closed too (once what it sent is written), so the container sees EOF.
    fn attached_stdin_closed(&mut self, i: usize) {
        let c = &mut self.containers[i];
        if !c.plan.stdin_once {
            return;
        }
        if let Some(r) = c.running.as_mut() {
            r.stdin_close = true;
        }
        self.flush_stdin(i);
    }

    fn flush_stdin(&mut self, i: usize) {
        let Some(r) = self.containers[i].running.as_mut() else {
            return;
        };
        let Some(fd) = &r.stdin else {
            r.stdin_buf.clear();
            return;
        };
        while !r.stdin_buf.is_empty() {
            match nix::unistd::write(fd, &r.stdin_buf) {
                Ok(n) => {
                    r.stdin_buf.drain(..n);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return,
                Err(_) => {
                    // The container closed its stdin: nothing more can reach it.
                    r.stdin_buf.clear();
                    r.stdin = None;
                    return;
                }
            }
        }
        if r.stdin_close {
            r.stdin = None;
        }
    }

    fn resize(&mut self, id: &str, width: u16, height: u16) -> Result<(), String> {
        let idx = self
            .index_of(id)
            .ok_or_else(|| format!("container {id} not found"))?;
        let c = &self.containers[idx];
        if !c.plan.process.tty {
            return Err(format!("container {id} has no terminal"));
        }
        let master = c
            .running
            .as_ref()
            .and_then(|r| r.stdout.as_ref())
            .ok_or_else(|| format!("container {id} is not running"))?;
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(format!("resize terminal: {}", nix::Error::last()));
        }
        Ok(())
    }

    // ---- stopping ------------------------------------------------------------------

    fn begin_stop(&mut self, grace_secs: Option<u64>, remove: bool, waiter: Option<UnixStream>) {
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

    fn stop_container(&mut self, idx: usize) {
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

    fn signal_container(&mut self, idx: usize) {
        let c = &mut self.containers[idx];
        if let Some(r) = &c.running {
            c.stop_sent = true;
            let sig = Signal::try_from(c.plan.stop_signal).unwrap_or(Signal::SIGTERM);
            debug!(pod = %self.plan.name, container = %c.plan.name, signal = %sig, "signalling container");
            let _ = nix::sys::signal::kill(r.pid, sig);
        }
    }

    fn progress_stop(&mut self) {
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

    fn finished_stopping(&self) -> bool {
        self.stopping.is_some()
            && self.containers.iter().all(|c| c.running.is_none())
            && self.execs.is_empty()
    }

    /// Remove everything the pod owns on the host. Idempotent; also used by podrun to
    /// reap pods whose monitor died.
    fn teardown(&mut self) {
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

/// What the pod phase depends on, per container.
#[derive(Debug, Clone, Copy)]
struct ContainerView {
    kind: ContainerKind,
    started_once: bool,
    done: bool,
    exit_code: Option<i32>,
}

/// The pod phase as Kubernetes defines it: Failed once an init container has failed for
/// good; Pending until an app container has started; Succeeded or Failed once every app
/// container is done (by their exit codes); Running otherwise.
fn pod_phase(containers: &[ContainerView]) -> PodPhase {
    if containers
        .iter()
        .any(|c| c.kind == ContainerKind::Init && c.done && c.exit_code != Some(0))
    {
        return PodPhase::Failed;
    }
    let apps: Vec<&ContainerView> = containers
        .iter()
        .filter(|c| c.kind == ContainerKind::App)
        .collect();
    if apps.iter().all(|c| !c.started_once && !c.done) {
        return PodPhase::Pending;
    }
    if apps.iter().all(|c| c.done) {
        if apps.iter().all(|c| c.exit_code == Some(0)) {
            return PodPhase::Succeeded;
        }
        return PodPhase::Failed;
    }
    PodPhase::Running
}

/// Whether a container that exited is started again (the pod is not stopping).
fn should_restart(
    kind: ContainerKind,
    policy: crate::plan::RestartPolicy,
    exit_code: i32,
    apps_done: bool,
) -> bool {
    match kind {
        // Sidecars end with the pod's app containers, as in Kubernetes.
        ContainerKind::Sidecar => !apps_done,
        // Init containers must succeed; they are retried unless the pod never restarts.
        ContainerKind::Init => exit_code != 0 && policy != crate::plan::RestartPolicy::Never,
        ContainerKind::App => policy.restarts(exit_code),
    }
}

/// Answer a request that succeeds or fails with a message.
fn reply(stream: &UnixStream, result: Result<(), String>) {
    let resp = match result {
        Ok(()) => Response::Ok,
        Err(message) => Response::Error { message },
    };
    let _ = protocol::write_response(stream, &resp);
}

/// Copy container output to the attached clients: a tty container has one stream, which
/// goes to their stdout. A client whose side broke loses that output descriptor.
fn copy_to_attaches(attaches: &mut [Attachment], tty: bool, stream: Stream, data: &[u8]) {
    for a in attaches {
        let out = if tty || stream == Stream::Stdout {
            &mut a.stdout
        } else {
            &mut a.stderr
        };
        if out.as_mut().is_some_and(|o| !o.push(data)) {
            *out = None;
        }
    }
}

/// Write the pod's sysctls; the monitor is in the pod's network and IPC namespaces, so
/// namespaced keys apply to the pod only.
fn apply_sysctls(sysctls: &std::collections::BTreeMap<String, String>) -> Result<(), MonitorError> {
    for (name, value) in sysctls {
        let err = |message: String| MonitorError::Sysctl {
            name: name.clone(),
            message,
        };
        let path = crate::plan::sysctl_path(name).ok_or_else(|| err("invalid name".into()))?;
        std::fs::write(&path, value.as_bytes())
            .map_err(|e| err(format!("write {}: {e}", path.display())))?;
        debug!(sysctl = %name, value = %value, "sysctl set");
    }
    Ok(())
}

/// SIGKILL everything in cgroup `path` (frozen first, so nothing forks meanwhile) and
/// wait, briefly, for it to be empty.
fn kill_cgroup(cgroups: &dyn CgroupManager, path: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RestartPolicy::{Always, Never, OnFailure};
    use ContainerKind::{App, Init, Sidecar};

    fn v(
        kind: ContainerKind,
        started_once: bool,
        done: bool,
        exit_code: Option<i32>,
    ) -> ContainerView {
        ContainerView {
            kind,
            started_once,
            done,
            exit_code,
        }
    }

    #[test]
    fn phases_follow_kubernetes() {
        assert_eq!(
            pod_phase(&[v(Init, true, false, None), v(App, false, false, None)]),
            PodPhase::Pending
        );
        assert_eq!(
            pod_phase(&[v(Init, true, true, Some(1)), v(App, false, false, None)]),
            PodPhase::Failed
        );
        assert_eq!(
            pod_phase(&[v(Init, true, true, Some(0)), v(App, true, false, None)]),
            PodPhase::Running
        );
        assert_eq!(
            pod_phase(&[v(App, true, true, Some(0)), v(App, true, true, Some(0))]),
            PodPhase::Succeeded
        );
        assert_eq!(
            pod_phase(&[v(App, true, true, Some(0)), v(App, true, true, Some(2))]),
            PodPhase::Failed
        );
        assert_eq!(
            pod_phase(&[v(App, true, true, Some(0)), v(App, true, false, None)]),
            PodPhase::Running
        );
        // A running sidecar does not keep a finished pod running.
        assert_eq!(
            pod_phase(&[v(Sidecar, true, false, None), v(App, true, true, Some(0))]),
            PodPhase::Succeeded
        );
    }

    fn nonblocking_pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (r, w)
    }

    fn read_now(fd: &OwnedFd) -> Vec<u8> {
        set_nonblocking(fd);
        let mut out = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n) = nix::unistd::read(fd, &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn attached_output_queues_what_the_client_cannot_take_yet() {
        let (r, w) = nonblocking_pipe();
        let mut out = AttachedOutput::new(w);
        // Far more than a pipe holds: the rest waits, capped.
        let big = vec![b'x'; 3 * ATTACH_PENDING_MAX];
        assert!(out.push(&big));
        assert_eq!(out.pending.len(), ATTACH_PENDING_MAX);
        let mut got = read_now(&r).len();
        while !out.pending.is_empty() {
            assert!(out.flush());
            got += read_now(&r).len();
        }
        assert!(got > ATTACH_PENDING_MAX && got < big.len());
        // Order is kept: new data goes after what is pending.
        assert!(out.push(b"abc"));
        assert_eq!(read_now(&r), b"abc");
        // A client that went away breaks the output.
        drop(r);
        assert!(!out.push(b"more"));
    }

    #[test]
    fn output_goes_to_the_matching_attached_stream() {
        let (a, _peer) = UnixStream::pair().unwrap();
        let (out_r, out_w) = nonblocking_pipe();
        let (err_r, err_w) = nonblocking_pipe();
        let mut attaches = vec![Attachment {
            stream: a,
            stdin: None,
            stdout: Some(AttachedOutput::new(out_w)),
            stderr: Some(AttachedOutput::new(err_w)),
            exit_code: None,
            finish_by: None,
            gone: false,
        }];
        copy_to_attaches(&mut attaches, false, Stream::Stdout, b"o1 ");
        copy_to_attaches(&mut attaches, false, Stream::Stderr, b"e1 ");
        // A terminal has one stream: it all goes to stdout.
        copy_to_attaches(&mut attaches, true, Stream::Stderr, b"t1");
        assert_eq!(read_now(&out_r), b"o1 t1");
        assert_eq!(read_now(&err_r), b"e1 ");
        assert!(attaches[0].flushed());
        drop(err_r);
        copy_to_attaches(&mut attaches, false, Stream::Stderr, b"lost");
        assert!(attaches[0].stderr.is_none(), "broken output is dropped");
        assert!(attaches[0].stdout.is_some());
    }

    #[test]
    fn sysctls_are_refused_before_anything_is_written() {
        let bad: std::collections::BTreeMap<String, String> =
            [("net/../../etc/passwd".to_owned(), "x".to_owned())].into();
        let err = apply_sysctls(&bad).unwrap_err().to_string();
        assert!(err.contains("sysctl net/../../etc/passwd"), "{err}");
        assert!(apply_sysctls(&Default::default()).is_ok());
    }

    #[test]
    fn restarts_follow_policy_and_kind() {
        assert!(should_restart(App, Always, 0, false));
        assert!(!should_restart(App, OnFailure, 0, false));
        assert!(should_restart(App, OnFailure, 1, false));
        assert!(!should_restart(App, Never, 1, false));
        assert!(!should_restart(Init, Always, 0, false));
        assert!(should_restart(Init, Always, 1, false));
        assert!(should_restart(Init, OnFailure, 1, false));
        assert!(!should_restart(Init, Never, 1, false));
        assert!(should_restart(Sidecar, Never, 0, false));
        assert!(!should_restart(Sidecar, Always, 1, true));
    }
}
