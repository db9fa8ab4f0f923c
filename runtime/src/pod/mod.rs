//! Pods on this host, as `podrun run`, `down`, `exec` and friends see them: turning a Pod
//! manifest into a `PodPlan` (images resolved, users and env resolved, volumes prepared),
//! launching its monitor in fresh namespaces, finding pods again by name, stopping and
//! removing them, and reaping whatever a crash left behind.
//!
//! Creation registers an undo first and disarms it at the end, so a failure at any step
//! leaves nothing: no state, name reservation, cgroup, directory or process.

mod kube;
mod volumes;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use tracing::{info, warn};

use crate::cgroups::{CgroupManager, Driver};
use crate::image::ImageStore;
use crate::monitor::protocol::{Client, Request, Response};
use crate::monitor::{self, PLAN_FILE, SOCKET_FILE, STATUS_FILE};
use crate::names;
use crate::plan::PodPlan;
use crate::spec::{self, PodManifest};
use crate::state::{self, Paths};
use crate::status::{PodPhase, PodStatus};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("pod {0} already exists")]
    AlreadyExists(String),
    #[error("pod {0} not found")]
    NotFound(String),
    #[error("image: {0}")]
    Image(#[from] crate::image::ImageError),
    #[error("cgroups: {0}")]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("{step}: {source}")]
    Io {
        step: String,
        source: std::io::Error,
    },
    #[error("pod network: {0}")]
    Network(String),
    #[error("start the pod monitor: {0}")]
    Monitor(String),
    #[error(transparent)]
    Protocol(#[from] crate::monitor::protocol::ProtocolError),
    #[error(transparent)]
    State(#[from] state::StateError),
}

pub(crate) fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> PodError {
    let step = step.into();
    move |source| PodError::Io { step, source }
}

/// How this podrun instance runs pods.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub paths: Paths,
    pub cgroup_driver: Driver,
    /// Top-level cgroup name ("podrun"); pods go below it by QoS class.
    pub cgroup_root: String,
    /// Where Localhost seccomp profiles live (kubelet: <root>/seccomp).
    pub seccomp_root: PathBuf,
    /// The `podrun` binary that runs the monitor.
    pub monitor_exe: PathBuf,
    pub node_name: String,
    /// When `run` pulls images.
    pub pull: PullMode,
    /// containerd-style registry host configuration (mirrors, CAs, plain HTTP).
    pub hosts_dir: PathBuf,
    /// How pods get their network.
    pub network: crate::network::NetworkMode,
    /// pids.max of every pod cgroup podrun creates (kubelet's --pod-max-pids); None for
    /// no limit.
    pub pod_max_pids: Option<i64>,
}

/// When `podrun run` pulls a pod's images (podman's `--pull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullMode {
    /// Only images not in the store.
    Missing,
    Always,
    Never,
    /// Each container's imagePullPolicy, as kubelet applies it.
    Policy,
}

impl std::str::FromStr for PullMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "missing" => Ok(PullMode::Missing),
            "always" => Ok(PullMode::Always),
            "never" => Ok(PullMode::Never),
            "policy" => Ok(PullMode::Policy),
            other => Err(format!(
                "unknown value {other:?} (missing, always, never, policy)"
            )),
        }
    }
}

impl RuntimeConfig {
    pub fn new(paths: Paths) -> Self {
        Self {
            seccomp_root: paths.root.join("seccomp"),
            paths: paths.clone(),
            cgroup_driver: Driver::Cgroupfs,
            cgroup_root: "podrun".into(),
            monitor_exe: PathBuf::from("/proc/self/exe"),
            pull: PullMode::Missing,
            hosts_dir: PathBuf::from(crate::image::pull::DEFAULT_HOSTS_DIR),
            network: crate::network::NetworkMode::Cni {
                conf_dirs: vec![PathBuf::from(podrun_cni::DEFAULT_CONF_DIR)],
                bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
                cache_dir: paths.root.join("cni/results"),
            },
            node_name: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into()),
            pod_max_pids: None,
        }
    }
}

/// A pod found in the state directory.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub plan: PodPlan,
    pub status: Option<PodStatus>,
    /// The monitor answers on its socket.
    pub alive: bool,
}

impl PodInfo {
    pub fn phase(&self) -> PodPhase {
        match (&self.status, self.alive) {
            (Some(s), true) => s.phase,
            _ => PodPhase::Unknown,
        }
    }
    pub fn socket(&self) -> PathBuf {
        self.plan.state_dir.join(SOCKET_FILE)
    }
}

/// Runs the undo when dropped unless disarmed: every creation step registers one first.
pub(crate) struct Rollback<'a> {
    undo: Option<Box<dyn FnOnce() + 'a>>,
}

impl<'a> Rollback<'a> {
    pub(crate) fn new(f: impl FnOnce() + 'a) -> Self {
        Self {
            undo: Some(Box::new(f)),
        }
    }
    pub(crate) fn disarm(mut self) {
        self.undo = None;
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.undo.take() {
            f();
        }
    }
}

pub struct PodRuntime {
    pub config: RuntimeConfig,
    pub images: ImageStore,
    cgroups: Box<dyn CgroupManager>,
}

impl PodRuntime {
    pub fn new(config: RuntimeConfig) -> Result<Self, PodError> {
        let images = ImageStore::open(&config.paths.root)?;
        let cgroups = crate::cgroups::new_manager(config.cgroup_driver)?;
        Ok(Self {
            config,
            images,
            cgroups,
        })
    }

    /// With a CNI network: pin a network namespace for pod `id` and attach it (CNI ADD
    /// with these capability args); None without one. Nothing is left on failure.
    pub(crate) fn attach_pod_network(
        &self,
        id: &str,
        capability_args: serde_json::Value,
    ) -> Result<Option<crate::network::PodNetwork>, PodError> {
        use crate::network::{self, NetworkMode};
        let NetworkMode::Cni {
            conf_dirs,
            bin_dirs,
            cache_dir,
        } = &self.config.network
        else {
            return Ok(None);
        };
        let (list, installed) =
            network::load_or_install(conf_dirs).map_err(|e| PodError::Network(e.to_string()))?;
        if installed {
            warn!(dir = %conf_dirs[0].display(), "no CNI network configuration found: installed podrun's default network (bridge podrun0, 10.88.0.0/16)");
        }
        let netns = self.config.paths.state.join("netns").join(id);
        network::pin_netns(&netns).map_err(|e| PodError::Network(e.to_string()))?;
        match network::attach(&list, bin_dirs, cache_dir, id, &netns, capability_args) {
            Ok(n) => Ok(Some(n)),
            Err(e) => {
                network::unpin_netns(&netns);
                Err(PodError::Network(e.to_string()))
            }
        }
    }

    pub fn cgroups(&self) -> &dyn CgroupManager {
        self.cgroups.as_ref()
    }

    // ---- finding pods --------------------------------------------------------------

    pub fn list(&self) -> Result<Vec<PodInfo>, PodError> {
        let dir = self.config.paths.pods_state();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("read {}", dir.display()))(e)),
        };
        let mut pods = Vec::new();
        for e in entries.flatten() {
            let d = e.path();
            let Ok(Some(plan)) = state::read_json::<PodPlan>(&d.join(PLAN_FILE)) else {
                continue;
            };
            let status = state::read_json::<PodStatus>(&d.join(STATUS_FILE))
                .ok()
                .flatten();
            let alive = crate::monitor::protocol::connect(&d.join(SOCKET_FILE)).is_ok();
            pods.push(PodInfo {
                plan,
                status,
                alive,
            });
        }
        pods.sort_by(|a, b| {
            (&a.plan.namespace, &a.plan.name).cmp(&(&b.plan.namespace, &b.plan.name))
        });
        Ok(pods)
    }

    pub fn find(&self, namespace: &str, name: &str) -> Result<PodInfo, PodError> {
        self.list()?
            .into_iter()
            .find(|p| p.plan.namespace == namespace && p.plan.name == name)
            .ok_or_else(|| PodError::NotFound(format!("{namespace}/{name}")))
    }

    /// Fresh status straight from the monitor (falls back to the status file).
    pub fn status(&self, pod: &PodInfo) -> Option<PodStatus> {
        if let Ok(mut c) = Client::connect(&pod.socket()) {
            let _ = c.set_timeout(Some(Duration::from_secs(5)));
            if let Ok(Response::Status(s)) = c.call(&Request::Status) {
                return Some(s);
            }
        }
        pod.status.clone()
    }

    /// Remove what belongs to no live pod: pods whose monitor died (their processes,
    /// cgroups, directories, state), stale name reservations and orphaned container dirs.
    pub fn reap(&self) -> Result<Vec<String>, PodError> {
        let mut reaped = Vec::new();
        reaped.extend(self.reap_half_created());
        for pod in self.list()? {
            // CRI sandboxes belong to the agent: a dead monitor makes them NOTREADY, and
            // kubelet removes them through the agent.
            if pod.plan.managed {
                continue;
            }
            if !pod.alive {
                // A pod being created has a plan but no socket yet: give its monitor time.
                let young =
                    pod.plan.created_at > chrono::Utc::now() - chrono::Duration::seconds(60);
                let monitor_alive = pod
                    .status
                    .as_ref()
                    .is_some_and(|s| pid_alive(s.monitor_pid));
                if young && (pod.status.is_none() || monitor_alive) {
                    continue;
                }
                warn!(pod = %pod.plan.name, namespace = %pod.plan.namespace, "reaping pod whose monitor is gone");
                if let Some(pid) = pod
                    .status
                    .as_ref()
                    .map(|s| s.monitor_pid)
                    .filter(|p| pid_alive(*p))
                {
                    // Not answering but alive (hung): it must not keep running unowned.
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&cmdline)
                        .contains(&*pod.plan.state_dir.to_string_lossy())
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                monitor::teardown_pod(&pod.plan, self.cgroups.as_ref());
                reaped.push(format!("{}/{}", pod.plan.namespace, pod.plan.name));
            }
        }
        // Network namespaces pinned for pods that no longer exist (a crash between
        // pinning and writing the plan).
        let live: Vec<String> = self.list()?.into_iter().map(|p| p.plan.id).collect();
        for orphan in crate::network::orphaned_netns(&self.config.paths.state.join("netns"), &live)
        {
            let old = orphan
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default()
                > Duration::from_secs(60);
            if old {
                crate::network::unpin_netns(&orphan);
            }
        }
        // Name reservations whose pod state is gone (and not being created).
        names::reap_stale(&self.config.paths.names(), &|id: &str| {
            self.config.paths.pod_state(id).exists()
        });
        Ok(reaped)
    }

    // ---- creating pods -------------------------------------------------------------

    /// Run the pod: reserve its name, prepare it, start its monitor. Returns once the
    /// monitor is up; containers start in the background.
    pub fn run(&self, m: &PodManifest) -> Result<PodPlan, PodError> {
        let name = m.name().to_owned();
        let namespace = m.namespace().to_owned();
        // Atomic across processes: of several `podrun run` of one pod, one wins.
        let pod_exists = |id: &str| self.config.paths.pod_state(id).exists();
        let key = format!("{namespace}_{name}");
        let reserve = || match names::reserve(&self.config.paths.names(), &key, &pod_exists) {
            Ok(r) => Ok(Ok(r)),
            Err(names::NameError::Taken { holder, .. }) => Ok(Err(holder)),
            Err(names::NameError::Io { step, source }) => Err(PodError::Io { step, source }),
        };
        let exists = || PodError::AlreadyExists(format!("{namespace}/{name}"));
        let mut reservation = match reserve()? {
            Ok(r) => r,
            // Held by a pod whose monitor died: reap it, then the name is free.
            Err(holder) if !holder.is_empty() => {
                self.reap()?;
                reserve()?.map_err(|_| exists())?
            }
            Err(_) => return Err(exists()),
        };
        // A CRI sandbox of that name counts too.
        if self.find(&namespace, &name).is_ok() {
            return Err(exists());
        }
        crate::fault::point("run:name");
        let draft = self.prepare(m)?;
        let plan = &draft.plan;
        reservation.set_holder(&plan.id).map_err(|e| PodError::Io {
            step: "write name reservation".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        crate::fault::point("run:prepared");
        let undo = Rollback::new(|| monitor::teardown_pod(plan, self.cgroups.as_ref()));
        state::write_json(&plan.state_dir.join(PLAN_FILE), plan)?;
        crate::fault::point("run:plan");
        launch_monitor(plan, &self.config.monitor_exe)?;
        crate::fault::point("run:monitor");
        undo.disarm();
        let plan = draft.commit();
        reservation.keep();
        info!(pod = %plan.name, namespace = %plan.namespace, id = %plan.id, "pod started");
        Ok(plan)
    }

    // ---- stopping pods -------------------------------------------------------------

    /// Stop a pod gracefully; with `remove`, remove everything it owns. Waits until done.
    pub fn stop(
        &self,
        pod: &PodInfo,
        grace_secs: Option<u64>,
        remove: bool,
    ) -> Result<(), PodError> {
        if pod.alive {
            let grace = grace_secs.unwrap_or(pod.plan.termination_grace_period_secs);
            let mut c = Client::connect(&pod.socket())?;
            // The monitor answers once the containers are gone (and removed).
            c.set_timeout(Some(Duration::from_secs(grace + 60)))?;
            match c.call(&Request::Stop { grace_secs, remove }) {
                Ok(_) | Err(crate::monitor::protocol::ProtocolError::Closed) => {}
                Err(e) => return Err(e.into()),
            }
            if remove {
                // Wait for the monitor process itself to exit.
                if let Some(pid) = pod.status.as_ref().map(|s| s.monitor_pid) {
                    wait_exit_pidfd(pid, Duration::from_secs(5));
                    for _ in 0..500 {
                        // The monitor is our own child when this process started it.
                        let _ = nix::sys::wait::waitpid(
                            nix::unistd::Pid::from_raw(pid),
                            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                        );
                        if !pid_alive(pid) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        if remove {
            // Idempotent: finishes the job if the monitor died half-way, or was dead.
            monitor::teardown_pod(&pod.plan, self.cgroups.as_ref());
        }
        Ok(())
    }

    /// Run a command in a container with the given stdio; returns its exit code.
    /// Run a command in a container with the given stdio (three descriptors: stdin,
    /// stdout, stderr), or with a new terminal from the container's devpts whose master
    /// is sent over `stdio`'s single console socket. Returns the command's exit code.
    pub fn exec(
        &self,
        pod: &PodInfo,
        container: &str,
        args: Vec<String>,
        tty: bool,
        stdio: &[&OwnedFd],
    ) -> Result<i32, PodError> {
        let mut c = Client::connect(&pod.socket())?;
        let fds: Vec<i32> = stdio.iter().map(|f| f.as_raw_fd()).collect();
        c.send_with_fds(
            &Request::Exec {
                container: container.to_owned(),
                args,
                tty,
            },
            &fds,
        )?;
        loop {
            match c.recv()? {
                Response::Exited { exit_code } => return Ok(exit_code),
                Response::Started { .. } | Response::Ok | Response::Status(_) => continue,
                Response::Error { message } => return Err(PodError::Monitor(message)),
            }
        }
    }
}

/// Wait until `pid` exits (or `timeout`), woken by the kernel through a pidfd rather
/// than by polling; returns at once where pidfds are not available.
fn wait_exit_pidfd(pid: i32, timeout: Duration) {
    if pid <= 0 {
        return;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let mut pfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&fd),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = timeout.as_millis().min(u16::MAX as u128) as u16;
    let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms));
}

/// Whether `pid` is a live process (a zombie is not).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Start the pod monitor in new namespaces, detached from the caller's session, and wait
/// until it reports ready.
pub(crate) fn launch_monitor(plan: &PodPlan, exe: &Path) -> Result<(), PodError> {
    // The monitor makes its own mount namespace (keeping a handle on this one to undo the
    // pod's host mounts at teardown) and joins a pinned network namespace itself.
    let mut flags = CloneFlags::empty();
    if !plan.host_network {
        flags |= CloneFlags::CLONE_NEWUTS;
        if plan.network.is_none() {
            flags |= CloneFlags::CLONE_NEWNET;
        }
    }
    if !plan.host_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if plan.share_process_namespace && !plan.host_pid {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| PodError::Monitor(format!("pipe: {e}")))?;
    let log = plan.state_dir.join("monitor.log");
    let exe_c = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|_| PodError::Monitor("bad executable path".into()))?;
    let args: Vec<std::ffi::CString> = ["podrun", "monitor", "--ready-fd", "3"]
        .iter()
        .map(|s| std::ffi::CString::new(*s).unwrap())
        .chain(std::iter::once(
            std::ffi::CString::new(plan.state_dir.as_os_str().as_encoded_bytes()).unwrap(),
        ))
        .collect();
    let log_c = std::ffi::CString::new(log.as_os_str().as_encoded_bytes()).unwrap();
    let env: Vec<std::ffi::CString> = std::env::vars()
        // The monitor must reach the systemd this process reaches.
        .filter(|(k, _)| k == "RUST_LOG" || k == "PATH" || k == "DBUS_SYSTEM_BUS_ADDRESS")
        .chain(crate::fault::inherited())
        .map(|(k, v)| std::ffi::CString::new(format!("{k}={v}")).unwrap())
        .collect();
    // Everything the child needs is allocated here: after the clone of a multi-threaded
    // caller (the CRI agent) another thread may hold the allocator's lock forever.
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let ready_raw = ready_w.as_raw_fd();
    match crate::process::clone_fork(flags).map_err(|e| PodError::Monitor(format!("clone: {e}")))? {
        None => {
            // Child: only async-signal-safe calls until execve (the caller may have threads).
            // SAFETY: raw libc calls on descriptors and C strings prepared before the clone.
            unsafe {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                let logfd = libc::open(
                    log_c.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
                    0o600,
                );
                libc::dup2(null, 0);
                libc::dup2(if logfd >= 0 { logfd } else { null }, 1);
                libc::dup2(if logfd >= 0 { logfd } else { null }, 2);
                if ready_raw == 3 {
                    // dup2 onto itself keeps close-on-exec: clear it instead.
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else {
                    libc::dup2(ready_raw, 3);
                }
                libc::execve(exe_c.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        Some(pid) => {
            drop(ready_w);
            let mut out = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match nix::unistd::read(&ready_r, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        if out.contains(&b'\n') {
                            break;
                        }
                    }
                    Err(nix::Error::EINTR) => continue,
                    Err(_) => break,
                }
            }
            let line = String::from_utf8_lossy(&out).trim().to_owned();
            if line.starts_with("ok") {
                return Ok(());
            }
            let _ = nix::sys::wait::waitpid(pid, None);
            let detail = if line.is_empty() {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            } else {
                line
            };
            Err(PodError::Monitor(detail))
        }
    }
}
