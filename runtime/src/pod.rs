//! Pods on this host, as `podrun run`, `down`, `exec` and friends see them: turning a Pod
//! manifest into a `PodPlan` (images resolved, users and env resolved, volumes prepared),
//! launching its monitor in fresh namespaces, finding pods again by name, stopping and
//! removing them, and reaping whatever a crash left behind.
//!
//! Creation registers an undo first and disarms it at the end, so a failure at any step
//! leaves nothing: no state, name reservation, cgroup, directory or process.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext, Volume};
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use tracing::{info, warn};

use crate::cgroups::{CgroupManager, Driver, QosClass, Resources};
use crate::image::{ImageConfig, ImageStore};
use crate::monitor::protocol::{Client, Request, Response};
use crate::monitor::{self, PLAN_FILE, SOCKET_FILE, STATUS_FILE};
use crate::names;
use crate::plan::{ContainerKind, ContainerPlan, PodPlan, ProcessSpec, RestartPolicy, TmpfsPlan};
use crate::rootfs::{
    MountPlan, Propagation, RootfsSpec, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS,
};
use crate::security::seccomp::SeccompProfile;
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

fn convert_qos(q: spec::QosClass) -> QosClass {
    match q {
        spec::QosClass::Guaranteed => QosClass::Guaranteed,
        spec::QosClass::Burstable => QosClass::Burstable,
        spec::QosClass::BestEffort => QosClass::BestEffort,
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

    /// Turn a manifest into a plan and materialise its files (hosts, resolv.conf,
    /// volumes). Nothing runs yet.
    pub fn prepare(&self, m: &PodManifest) -> Result<PodPlan, PodError> {
        Planner { rt: self, m }.plan()
    }

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
        let plan = self.prepare(m)?;
        if let Err(e) = reservation.set_holder(&plan.id) {
            monitor::teardown_pod(&plan, self.cgroups.as_ref());
            return Err(PodError::Io {
                step: "write name reservation".into(),
                source: std::io::Error::other(e.to_string()),
            });
        }
        let undo = Rollback::new(|| monitor::teardown_pod(&plan, self.cgroups.as_ref()));
        state::write_json(&plan.state_dir.join(PLAN_FILE), &plan)?;
        launch_monitor(&plan, &self.config.monitor_exe)?;
        undo.disarm();
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
        .filter(|(k, _)| k == "RUST_LOG" || k == "PATH")
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

// ---- planning -------------------------------------------------------------------------

struct Planner<'a> {
    rt: &'a PodRuntime,
    m: &'a PodManifest,
}

pub(crate) fn user_in_passwd(layers: &[PathBuf], name: &str) -> Option<(u32, u32)> {
    let text = read_image_file(layers, "etc/passwd")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

pub(crate) fn group_in_file(layers: &[PathBuf], name: &str) -> Option<u32> {
    let text = read_image_file(layers, "etc/group")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// Groups of /etc/group that list `user` as a member (supplementary groups from the image).
pub(crate) fn member_groups(layers: &[PathBuf], user: &str, uid: u32) -> Vec<u32> {
    let name = if user.is_empty() {
        read_image_file(layers, "etc/passwd").and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3 && f[2] == uid.to_string()).then(|| f[0].to_owned())
            })
        })
    } else {
        Some(user.to_owned())
    };
    let (Some(name), Some(text)) = (name, read_image_file(layers, "etc/group")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m == name)).then(|| f[2].parse().ok())?
        })
        .collect()
}

/// Read a file of the image as the merged rootfs would show it (top layer wins).
fn read_image_file(layers: &[PathBuf], rel: &str) -> Option<String> {
    layers.iter().rev().find_map(|l| {
        let p = crate::rootfs::secure_join(l, Path::new(rel)).ok()?;
        std::fs::read_to_string(p).ok()
    })
}

pub(crate) fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

impl Planner<'_> {
    fn source(&self) -> String {
        self.m.source.display().to_string()
    }

    fn invalid(&self, message: impl Into<String>) -> PodError {
        PodError::Invalid {
            file: self.source(),
            message: message.into(),
        }
    }

    fn plan(&self) -> Result<PodPlan, PodError> {
        let pod: &Pod = &self.m.pod;
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| self.invalid("spec: required"))?;
        let meta = &pod.metadata;
        let name = self.m.name().to_owned();
        let namespace = self.m.namespace().to_owned();
        let uid = meta
            .uid
            .clone()
            .unwrap_or_else(|| state::new_id()[..32].to_owned());
        let id = state::new_id();
        let paths = &self.rt.config.paths;
        let state_dir = paths.pod_state(&id);
        let data_dir = paths.pod_data(&id);
        std::fs::create_dir_all(&state_dir)
            .map_err(io(format!("create {}", state_dir.display())))?;
        let cleanup = Rollback::new(|| {
            let _ = std::fs::remove_dir_all(&state_dir);
            let _ = std::fs::remove_dir_all(&data_dir);
        });

        let host_network = spec.host_network.unwrap_or(false);
        let network = if host_network {
            None
        } else {
            self.attach_network(&id)?
        };
        let network_undo = Rollback::new(|| {
            if let Some(n) = &network {
                crate::network::teardown(&id, n);
            }
        });
        let pod_ip = network.as_ref().and_then(|n| n.pod_ip.clone());
        let hostname = if host_network {
            &self.rt.config.node_name
        } else {
            spec.hostname.as_ref().unwrap_or(&name)
        };
        let hostname = spec::truncate_pod_hostname(&name, hostname);
        let qos = convert_qos(spec::qos_class(pod));
        let cg = self.rt.cgroups.as_ref();
        let cgroup_path = cg.pod_path(&self.rt.config.cgroup_root, qos, &uid);
        let restart_policy = match spec.restart_policy.as_deref() {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        };

        let mut tmpfs = vec![TmpfsPlan {
            path: state_dir.join("shm"),
            size_bytes: Some(64 << 20),
            mode: 0o1777,
        }];
        let files = self.pod_files(&state_dir, &hostname, host_network, pod_ip.as_deref())?;
        let volumes = self.volumes(&state_dir, &data_dir, &mut tmpfs)?;
        let log_dir = paths.pod_logs(&namespace, &name, &uid);

        let mut containers = Vec::new();
        let init = spec.init_containers.iter().flatten().map(|c| {
            (
                c,
                if spec::is_native_sidecar(c) {
                    ContainerKind::Sidecar
                } else {
                    ContainerKind::Init
                },
            )
        });
        let apps = spec.containers.iter().map(|c| (c, ContainerKind::App));
        for (c, kind) in init.chain(apps) {
            containers.push(self.container(
                c,
                kind,
                &cgroup_path,
                &state_dir,
                &files,
                &volumes,
                qos,
                pod_ip.as_deref(),
                &hostname,
            )?);
        }

        cleanup.disarm();
        network_undo.disarm();
        Ok(PodPlan {
            id,
            name,
            namespace,
            uid,
            hostname,
            host_network,
            host_ipc: spec.host_ipc.unwrap_or(false),
            host_pid: spec.host_pid.unwrap_or(false),
            share_process_namespace: spec.share_process_namespace.unwrap_or(false),
            restart_policy,
            termination_grace_period_secs: spec
                .termination_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64,
            cgroup_driver: cg.driver(),
            cgroup_path,
            pod_resources: Resources {
                pids_limit: self.rt.config.pod_max_pids,
                ..spec::pod_resources(pod)
            },
            log_dir,
            state_dir: state_dir.clone(),
            data_dir: data_dir.clone(),
            tmpfs,
            containers,
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            source: Some(self.m.source.clone()),
            created_at: chrono::Utc::now(),
            network,
            backoff_base_ms: 10_000,
            managed: false,
            sysctls: Default::default(),
            external_cgroup: false,
            owns_log_dir: true,
        })
    }

    /// Pin a network namespace for the pod and attach it through CNI.
    fn attach_network(&self, id: &str) -> Result<Option<crate::network::PodNetwork>, PodError> {
        self.rt
            .attach_pod_network(id, crate::network::port_mappings(&self.m.pod))
    }

    /// /etc/hosts, /etc/hostname and /etc/resolv.conf of the pod, written to its state dir.
    fn pod_files(
        &self,
        state_dir: &Path,
        hostname: &str,
        host_network: bool,
        pod_ip: Option<&str>,
    ) -> Result<Vec<MountPlan>, PodError> {
        let spec = self.m.pod.spec.as_ref().unwrap();
        let mut hosts = if host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}\t{hostname}\n",
                pod_ip.unwrap_or("127.0.1.1")
            )
        };
        for alias in spec.host_aliases.iter().flatten() {
            hosts.push_str(&format!(
                "{}\t{}\n",
                alias.ip,
                alias.hostnames.clone().unwrap_or_default().join("\t")
            ));
        }
        let dns_policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let (mut nameservers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
        if dns_policy != "None" {
            // No cluster DNS on a single host: ClusterFirst falls back to the host's
            // resolver configuration, as kubelet does without --cluster-dns.
            for l in host_resolv.lines() {
                let mut f = l.split_whitespace();
                match f.next() {
                    Some("nameserver") => nameservers.extend(f.next().map(str::to_owned)),
                    Some("search") => searches.extend(f.map(str::to_owned)),
                    Some("options") => options.extend(f.map(str::to_owned)),
                    _ => {}
                }
            }
        }
        if let Some(cfg) = &spec.dns_config {
            nameservers.extend(cfg.nameservers.iter().flatten().cloned());
            searches.extend(cfg.searches.iter().flatten().cloned());
            for o in cfg.options.iter().flatten() {
                let Some(n) = &o.name else { continue };
                options.retain(|x: &String| x.split(':').next() != Some(n.as_str()));
                options.push(match &o.value {
                    Some(v) => format!("{n}:{v}"),
                    None => n.clone(),
                });
            }
        }
        let mut resolv = String::new();
        if !searches.is_empty() {
            resolv.push_str(&format!("search {}\n", searches.join(" ")));
        }
        for n in &nameservers {
            resolv.push_str(&format!("nameserver {n}\n"));
        }
        if !options.is_empty() {
            resolv.push_str(&format!("options {}\n", options.join(" ")));
        }
        let mut mounts = Vec::new();
        for (file, content, dest) in [
            ("hosts", hosts, "/etc/hosts"),
            ("hostname", format!("{hostname}\n"), "/etc/hostname"),
            ("resolv.conf", resolv, "/etc/resolv.conf"),
        ] {
            let path = state_dir.join(file);
            state::write_atomic(&path, content.as_bytes(), 0o644)?;
            mounts.push(MountPlan {
                source: path,
                destination: dest.into(),
                readonly: false,
                propagation: Propagation::Private,
                file: true,
            });
        }
        Ok(mounts)
    }

    /// Prepare every volume of the pod; returns name -> (host path, always read-only).
    fn volumes(
        &self,
        state_dir: &Path,
        data_dir: &Path,
        tmpfs: &mut Vec<TmpfsPlan>,
    ) -> Result<BTreeMap<String, (PathBuf, bool)>, PodError> {
        let spec = self.m.pod.spec.as_ref().unwrap();
        let fs_group = spec
            .security_context
            .as_ref()
            .and_then(|s| s.fs_group)
            .map(|g| g as u32);
        let mut out = BTreeMap::new();
        for (i, v) in spec.volumes.iter().flatten().enumerate() {
            let (path, ro) = self.volume(i, v, state_dir, data_dir, tmpfs, fs_group)?;
            out.insert(v.name.clone(), (path, ro));
        }
        Ok(out)
    }

    /// Volume `i` of the pod (`spec.volumes[i]` in messages).
    fn volume(
        &self,
        i: usize,
        v: &Volume,
        state_dir: &Path,
        data_dir: &Path,
        tmpfs: &mut Vec<TmpfsPlan>,
        fs_group: Option<u32>,
    ) -> Result<(PathBuf, bool), PodError> {
        use std::os::unix::fs::PermissionsExt;
        let field = format!("spec.volumes[{i}]");
        if let Some(e) = &v.empty_dir {
            if e.medium.as_deref() == Some("Memory") {
                let path = state_dir.join("volumes/empty-dir").join(&v.name);
                let size =
                    match &e.size_limit {
                        Some(q) => Some(spec::parse_quantity_bytes(&q.0).map_err(|err| {
                            self.invalid(format!("{field}.emptyDir.sizeLimit: {err}"))
                        })? as u64),
                        None => None,
                    };
                tmpfs.push(TmpfsPlan {
                    path: path.clone(),
                    size_bytes: size,
                    mode: if fs_group.is_some() { 0o2777 } else { 0o777 },
                });
                return Ok((path, false));
            }
            let path = data_dir.join("volumes/empty-dir").join(&v.name);
            std::fs::create_dir_all(&path)
                .map_err(io(format!("create emptyDir {}", path.display())))?;
            if let Some(g) = fs_group {
                let _ = nix::unistd::chown(&path, None, Some(nix::unistd::Gid::from_raw(g)));
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o2777));
            } else {
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
            }
            return Ok((path, false));
        }
        if let Some(h) = &v.host_path {
            let path = PathBuf::from(&h.path);
            if !path.is_absolute() {
                return Err(self.invalid(format!(
                    "{field}.hostPath.path: must be absolute, got {:?}",
                    h.path
                )));
            }
            let meta = std::fs::metadata(&path);
            use std::os::unix::fs::FileTypeExt;
            let ty = h.type_.as_deref().unwrap_or("");
            let bad =
                |what: &str| self.invalid(format!("{field}.hostPath: {} is not {what}", h.path));
            match ty {
                "" => {}
                "DirectoryOrCreate" => {
                    if meta.is_err() {
                        std::fs::create_dir_all(&path)
                            .map_err(io(format!("create hostPath {}", h.path)))?;
                    } else if meta.as_ref().is_ok_and(|m| !m.is_dir()) {
                        return Err(bad("a directory"));
                    }
                }
                "FileOrCreate" => {
                    if meta.is_err() {
                        if let Some(p) = path.parent() {
                            std::fs::create_dir_all(p)
                                .map_err(io(format!("create hostPath {}", h.path)))?;
                        }
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                            .map_err(io(format!("create hostPath {}", h.path)))?;
                    } else if meta.as_ref().is_ok_and(|m| !m.is_file()) {
                        return Err(bad("a file"));
                    }
                }
                "Directory" => {
                    if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
                        return Err(bad("an existing directory"));
                    }
                }
                "File" => {
                    if !meta.as_ref().is_ok_and(|m| m.is_file()) {
                        return Err(bad("an existing file"));
                    }
                }
                "Socket" => {
                    if !meta.as_ref().is_ok_and(|m| m.file_type().is_socket()) {
                        return Err(bad("a socket"));
                    }
                }
                "CharDevice" => {
                    if !meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) {
                        return Err(bad("a character device"));
                    }
                }
                "BlockDevice" => {
                    if !meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()) {
                        return Err(bad("a block device"));
                    }
                }
                other => {
                    return Err(
                        self.invalid(format!("{field}.hostPath.type: unknown type {other:?}"))
                    )
                }
            }
            return Ok((path, false));
        }
        let (kind, base) = if v.config_map.is_some() {
            ("configmap", data_dir)
        } else if v.secret.is_some() {
            // Secrets stay on the runtime tmpfs, never on persistent disk.
            ("secret", state_dir)
        } else if v.projected.is_some() {
            ("projected", state_dir)
        } else {
            return Err(self.invalid(format!("{field}: unsupported volume type (supported: emptyDir, hostPath, configMap, secret, projected)")));
        };
        let root = base.join("volumes").join(kind).join(&v.name);
        std::fs::create_dir_all(&root).map_err(io(format!("create volume {}", root.display())))?;
        for f in spec::volume_files(v, self.m)? {
            let (rel, data, mode) = f;
            let target = root.join(&rel);
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p).map_err(io(format!("create {}", p.display())))?;
            }
            state::write_atomic(&target, &data, mode)?;
            if let Some(g) = fs_group {
                let _ = nix::unistd::chown(&target, None, Some(nix::unistd::Gid::from_raw(g)));
            }
        }
        Ok((root, true))
    }

    fn resolve_image(
        &self,
        c: &Container,
        field: &str,
    ) -> Result<(crate::image::Image, ImageConfig, Vec<PathBuf>), PodError> {
        let image_ref = c.image.clone().unwrap_or_default();
        let policy = match self.rt.config.pull {
            PullMode::Missing => "IfNotPresent",
            PullMode::Always => "Always",
            PullMode::Never => "Never",
            PullMode::Policy => c.image_pull_policy.as_deref().unwrap_or(""),
        };
        let opts = crate::image::pull::PullOptions {
            hosts_dir: self.rt.config.hosts_dir.clone(),
            ..Default::default()
        };
        let img = self
            .rt
            .images
            .ensure(&image_ref, policy, &opts)
            .map_err(|e| match e {
                crate::image::ImageError::NeverPull(_) => self.invalid(format!(
                    "{field}.image: image {image_ref:?} of container {:?} is not in the local store and pulling is off: `podrun pull {image_ref}` or `podrun image load FILE` first",
                    c.name
                )),
                e => self.invalid(format!("{field}.image: container {:?}: {e}", c.name)),
            })?;
        let config = self.rt.images.config(&img)?;
        let layers = self.rt.images.layer_dirs(&img)?;
        Ok((img, config, layers))
    }

    #[allow(clippy::too_many_arguments)]
    fn container(
        &self,
        c: &Container,
        kind: ContainerKind,
        pod_cgroup: &str,
        state_dir: &Path,
        pod_files: &[MountPlan],
        volumes: &BTreeMap<String, (PathBuf, bool)>,
        qos: QosClass,
        pod_ip: Option<&str>,
        hostname: &str,
    ) -> Result<ContainerPlan, PodError> {
        let pod = &self.m.pod;
        let spec = pod.spec.as_ref().unwrap();
        let (img, config, layers) = self.resolve_image(c, &container_field(spec, c, kind))?;
        let id = state::new_id();
        let cfield = format!("container {:?}", c.name);
        let field = match spec
            .init_containers
            .iter()
            .flatten()
            .position(|x| x.name == c.name)
        {
            Some(i) if kind != ContainerKind::App => format!("spec.initContainers[{i}]"),
            _ => format!(
                "spec.containers[{}]",
                spec.containers
                    .iter()
                    .position(|x| x.name == c.name)
                    .unwrap_or(0)
            ),
        };

        let ctx = spec::EnvContext {
            pod,
            config_maps: &self.m.config_maps,
            secrets: &self.m.secrets,
            pod_ip,
            host_ip: None,
            node_name: &self.rt.config.node_name,
        };
        let env = spec::resolve_env(c, &config.env, &ctx)
            .map_err(|e| self.invalid(format!("{field}.env: {e}")))?;
        let args = spec::effective_command(c, &config.entrypoint, &config.cmd, &env)
            .map_err(|e| self.invalid(format!("{field}.command: {e}")))?;
        let mut env_strings: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !env.iter().any(|(k, _)| k == "PATH") {
            env_strings.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        if !env.iter().any(|(k, _)| k == "HOSTNAME") {
            env_strings.push(format!("HOSTNAME={hostname}"));
        }

        let psc: PodSecurityContext = spec.security_context.clone().unwrap_or_default();
        let sc: SecurityContext = c.security_context.clone().unwrap_or_default();
        let privileged = sc.privileged.unwrap_or(false);

        // User: securityContext first (container over pod), else the image's USER.
        let image_user = config.user.clone().unwrap_or_default();
        let (user_part, group_part) = match image_user.split_once(':') {
            Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
            None => (image_user.clone(), None),
        };
        let mut user_name = String::new();
        let (mut uid, mut gid) = (0u32, 0u32);
        if !user_part.is_empty() {
            if let Ok(n) = user_part.parse::<u32>() {
                uid = n;
                gid = user_in_passwd_by_uid(&layers, n).unwrap_or(0);
            } else {
                let (u, g) = user_in_passwd(&layers, &user_part).ok_or_else(|| {
                    self.invalid(format!(
                        "{cfield}: image user {user_part:?} not found in the image's /etc/passwd"
                    ))
                })?;
                uid = u;
                gid = g;
                user_name = user_part.clone();
            }
        }
        if let Some(g) = group_part {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => group_in_file(&layers, &g).ok_or_else(|| {
                    self.invalid(format!(
                        "{cfield}: image group {g:?} not found in the image's /etc/group"
                    ))
                })?,
            };
        }
        let run_as_user = sc.run_as_user.or(psc.run_as_user);
        if let Some(u) = run_as_user {
            uid = u as u32;
            user_name.clear();
            if sc.run_as_group.or(psc.run_as_group).is_none() {
                gid = user_in_passwd_by_uid(&layers, uid).unwrap_or(0);
            }
        }
        if let Some(g) = sc.run_as_group.or(psc.run_as_group) {
            gid = g as u32;
        }
        if sc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false) {
            if run_as_user.is_none() && !user_part.is_empty() && user_part.parse::<u32>().is_err() {
                return Err(self.invalid(format!("{cfield}: runAsNonRoot is set and the image has a non-numeric user ({user_part:?}), cannot verify the user is non-root")));
            }
            if uid == 0 {
                return Err(self.invalid(format!(
                    "{cfield}: runAsNonRoot is set and the container would run as root (uid 0)"
                )));
            }
        }
        let mut groups = member_groups(&layers, &user_name, uid);
        groups.extend(psc.supplemental_groups.iter().flatten().map(|g| *g as u32));
        groups.extend(psc.fs_group.map(|g| g as u32));
        groups.sort_unstable();
        groups.dedup();

        let caps = sc.capabilities.clone().unwrap_or_default();
        let capabilities = crate::security::capabilities::resolve(
            &caps.add.unwrap_or_default(),
            &caps.drop.unwrap_or_default(),
            privileged,
            uid,
        )
        .map_err(|e| self.invalid(format!("{cfield}: securityContext.capabilities: {e}")))?;
        let seccomp_field = sc.seccomp_profile.clone().or(psc.seccomp_profile.clone());
        let seccomp = if privileged {
            SeccompProfile::Unconfined
        } else {
            match seccomp_field {
                // Unset: the runtime's default profile, as podman and kubelet with
                // SeccompDefault do.
                None => SeccompProfile::RuntimeDefault,
                Some(p) => crate::security::seccomp::parse_profile(
                    &p.type_,
                    p.localhost_profile.as_deref(),
                    &self.rt.config.seccomp_root,
                )
                .map_err(|e| {
                    self.invalid(format!("{cfield}: securityContext.seccompProfile: {e}"))
                })?,
            }
        };
        // Compile now so a bad Localhost profile fails the pod start, not the container.
        crate::security::seccomp::compile(&seccomp, &capabilities)
            .map_err(|e| self.invalid(format!("{cfield}: seccomp: {e}")))?;
        let no_new_privs = !privileged && sc.allow_privilege_escalation == Some(false);

        // Mounts: pod files, termination log, volumes.
        let mut mounts: Vec<MountPlan> = pod_files.to_vec();
        let term_dir = state_dir.join("containers").join(&c.name);
        std::fs::create_dir_all(&term_dir).map_err(io(format!("create {}", term_dir.display())))?;
        let term_file = term_dir.join("termination-log");
        std::fs::write(&term_file, b"").map_err(io(format!("create {}", term_file.display())))?;
        mounts.push(MountPlan {
            source: term_file.clone(),
            destination: c
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into())
                .into(),
            readonly: false,
            propagation: Propagation::Private,
            file: true,
        });
        for (i, vm) in c.volume_mounts.iter().flatten().enumerate() {
            let field = format!("{field}.volumeMounts[{i}]");
            let (src, always_ro) = volumes.get(&vm.name).ok_or_else(|| {
                self.invalid(format!("{field}.name: no volume named {:?}", vm.name))
            })?;
            let mut source = src.clone();
            if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                let p = Path::new(sub);
                if p.is_absolute()
                    || p.components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(self.invalid(format!(
                        "{field}.subPath: must be a relative path without '..', got {sub:?}"
                    )));
                }
                source = crate::rootfs::secure_join(src, p)
                    .map_err(io(format!("resolve subPath {sub}")))?;
                if !source.exists() {
                    std::fs::create_dir_all(&source)
                        .map_err(io(format!("create subPath {}", source.display())))?;
                }
            }
            if !vm.mount_path.starts_with('/') {
                return Err(self.invalid(format!(
                    "{field}.mountPath: must be absolute, got {:?}",
                    vm.mount_path
                )));
            }
            let propagation = match vm.mount_propagation.as_deref() {
                None | Some("None") => Propagation::Private,
                Some("HostToContainer") => Propagation::Rslave,
                Some("Bidirectional") if privileged => Propagation::Rshared,
                Some("Bidirectional") => {
                    return Err(self.invalid(format!(
                        "{field}.mountPropagation: Bidirectional requires a privileged container"
                    )))
                }
                Some(other) => {
                    return Err(
                        self.invalid(format!("{field}.mountPropagation: unknown value {other:?}"))
                    )
                }
            };
            let file = std::fs::metadata(&source)
                .map(|m| !m.is_dir())
                .unwrap_or(false);
            mounts.push(MountPlan {
                source,
                destination: vm.mount_path.clone().into(),
                readonly: *always_ro || vm.read_only.unwrap_or(false),
                propagation,
                file,
            });
        }

        let cdir = self.rt.config.paths.container_data(&id);
        let unmasked = sc.proc_mount.as_deref() == Some("Unmasked");
        let rootfs = RootfsSpec {
            rootfs: cdir.join("rootfs"),
            layers: layers.clone(),
            upper: cdir.join("upper"),
            work: cdir.join("work"),
            readonly: sc.read_only_root_filesystem.unwrap_or(false),
            privileged,
            mounts,
            dev_shm: Some(state_dir.join("shm")),
            masked_paths: if privileged || unmasked {
                vec![]
            } else {
                DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()
            },
            readonly_paths: if privileged || unmasked {
                vec![]
            } else {
                DEFAULT_READONLY_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            },
        };
        let mut resources = spec::container_resources(c);
        resources.restrict_devices = !privileged;
        let exec_hook = |h: Option<&k8s_openapi::api::core::v1::LifecycleHandler>| {
            h.and_then(|h| h.exec.as_ref())
                .and_then(|e| e.command.clone())
        };
        let lifecycle = c.lifecycle.as_ref();
        let stop_signal = config
            .stop_signal
            .as_deref()
            .and_then(parse_signal)
            .unwrap_or(libc::SIGTERM);
        Ok(ContainerPlan {
            cgroup_path: self.rt.cgroups.container_path(pod_cgroup, &id),
            id,
            name: c.name.clone(),
            kind,
            image: c.image.clone().unwrap_or_default(),
            image_id: img.id.clone(),
            rootfs,
            process: ProcessSpec {
                args,
                env: env_strings,
                cwd: c
                    .working_dir
                    .clone()
                    .or(config.working_dir.clone())
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "/".into()),
                uid,
                gid,
                additional_gids: groups,
                capabilities,
                no_new_privs,
                oom_score_adj: Some(oom_score_adj(qos, c)),
                tty: c.tty.unwrap_or(false),
                hostname: None,
            },
            seccomp,
            resources,
            stop_signal,
            pre_stop: exec_hook(lifecycle.and_then(|l| l.pre_stop.as_ref())),
            post_start: exec_hook(lifecycle.and_then(|l| l.post_start.as_ref())),
            termination_message: Some(term_file),
            log_path: None,
            stdin: false,
            stdin_once: false,
        })
    }
}

pub(crate) fn user_in_passwd_by_uid(layers: &[PathBuf], uid: u32) -> Option<u32> {
    let text = read_image_file(layers, "etc/passwd")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2] == uid.to_string()).then(|| f[3].parse().ok())?
    })
}

/// The field path of a container in the pod spec, for error messages.
fn container_field(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    c: &Container,
    kind: ContainerKind,
) -> String {
    match spec
        .init_containers
        .iter()
        .flatten()
        .position(|x| x.name == c.name)
    {
        Some(i) if kind != ContainerKind::App => format!("spec.initContainers[{i}]"),
        _ => format!(
            "spec.containers[{}]",
            spec.containers
                .iter()
                .position(|x| x.name == c.name)
                .unwrap_or(0)
        ),
    }
}

/// kubelet's oom_score_adj policy by QoS class.
fn oom_score_adj(qos: QosClass, c: &Container) -> i32 {
    match qos {
        QosClass::Guaranteed => -997,
        QosClass::BestEffort => 1000,
        QosClass::Burstable => {
            let request = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("memory"))
                .and_then(|q| spec::parse_quantity_bytes(&q.0).ok())
                .unwrap_or(0);
            let total = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .next()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|k| k.parse::<i64>().ok())
                })
                .map(|kb| kb * 1024)
                .unwrap_or(1 << 34);
            let adj = 1000 - (1000 * request) / total.max(1);
            adj.clamp(2, 999) as i32
        }
    }
}
