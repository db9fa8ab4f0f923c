//! Process creation: forking a container's init (and `exec` processes) from the pod
//! monitor. The monitor is single-threaded, so the child can run ordinary Rust between the
//! clone and the execve. The child reports a setup failure as one message on a CLOEXEC
//! pipe, so the monitor learns of it synchronously; a successful execve closes that pipe.
//!
//! Nothing of podrun runs inside a container after execve: the child is made non-dumpable
//! before it joins the container (so container processes cannot open its
//! /proc/<pid>/exe, CVE-2019-5736), every inherited descriptor is marked close-on-exec,
//! and the working directory is checked to be inside the container's root
//! (CVE-2024-21626).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Pid, Uid};

use crate::plan::ProcessSpec;
use crate::rootfs::RootfsSpec;
use crate::security::capabilities;
use crate::syscall::LinuxSyscall;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        source: nix::Error,
    },
    /// The child failed before execve; the message is the child's own.
    #[error("{0}")]
    Start(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// The child of a clone from a process with other threads runs ordinary Rust before
    /// execve, and would hang on any lock (the allocator's) another thread held then.
    #[error(
        "refusing to clone a container process from a process with {threads} threads: \
         it must be single-threaded"
    )]
    MultiThreaded { threads: usize },
}

fn sys(step: &'static str) -> impl FnOnce(nix::Error) -> ProcessError {
    move |source| ProcessError::Sys { step, source }
}

/// The stdio a child gets as descriptors 0, 1 and 2.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The descriptors are a terminal: make it the controlling terminal.
    pub tty: bool,
}

/// What the child does once forked.
///
/// Each variant takes an optional console socket (one end of [`console_socketpair`]),
/// as runc's `--console-socket`: the process then gets a new terminal from the
/// container's own devpts (so `tty` names it inside the container) as its stdio and
/// controlling terminal, and the master end is sent back over the socket
/// ([`receive_terminal`]) before the process execs.
pub enum ChildSetup<'a> {
    /// A container's init: new mount namespace (and PID namespace, per the clone flags),
    /// build the rootfs and pivot into it.
    Container {
        rootfs: &'a RootfsSpec,
        console: Option<&'a OwnedFd>,
    },
    /// A container's init built from a fresh copy of the host's current mount namespace
    /// (the one behind `host_mnt`) rather than of the monitor's: CRI containers see host
    /// mounts made after their sandbox started (kubelet's volumes), as with runc.
    ContainerFromHost {
        rootfs: &'a RootfsSpec,
        host_mnt: &'a OwnedFd,
        console: Option<&'a OwnedFd>,
    },
    /// An exec process: join the mount namespace of the container's init.
    Join {
        mnt_ns: &'a OwnedFd,
        console: Option<&'a OwnedFd>,
    },
}

/// A raw clone that behaves like fork(2) but can create namespaces for the child.
/// Safe to use only from a single-threaded process (the pod monitor).
pub(crate) fn clone_fork(flags: CloneFlags) -> nix::Result<Option<Pid>> {
    // SAFETY: with no new stack the child continues on a copy-on-write copy of this one,
    // exactly as after fork(2); the monitor is single-threaded so no lock is held.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match ret {
        -1 => Err(nix::Error::last()),
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as i32))),
    }
}

/// Fork a child that sets itself up as `setup` says and execs `process`. `before_release`
/// runs in the parent with the child's PID while the child waits (to put it in its
/// cgroup). Returns the child's PID once it has exec'd.
pub fn spawn(
    clone_flags: CloneFlags,
    setup: ChildSetup<'_>,
    process: &ProcessSpec,
    seccomp: &[seccompiler::BpfProgram],
    stdio: Stdio,
    before_release: &mut dyn FnMut(Pid) -> Result<(), String>,
) -> Result<Pid, ProcessError> {
    if let Some(threads) = thread_count().filter(|n| *n > 1) {
        return Err(ProcessError::MultiThreaded { threads });
    }
    let (sync_r, sync_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    match clone_fork(clone_flags).map_err(sys("clone"))? {
        None => {
            drop(sync_w);
            drop(err_r);
            report_panics_to(&err_w);
            let msg = match child(&sync_r, setup, process, seccomp, &stdio) {
                Err(msg) => msg,
                Ok(never) => match never {},
            };
            let _ = nix::unistd::write(&err_w, msg.as_bytes());
            // SAFETY: _exit skips destructors and atexit handlers of the parent's copy.
            unsafe { libc::_exit(if msg.contains("not found") { 127 } else { 128 }) }
        }
        Some(pid) => {
            drop(sync_r);
            drop(err_w);
            drop(stdio);
            if let Err(msg) = before_release(pid) {
                kill_and_reap(pid);
                return Err(ProcessError::Start(msg));
            }
            nix::unistd::write(&sync_w, b"1").map_err(sys("release child"))?;
            drop(sync_w);
            let msg = read_all(&err_r);
            if !msg.is_empty() {
                // The child already exited; reap it so it is not reported as a container exit.
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(ProcessError::Start(
                    String::from_utf8_lossy(&msg).into_owned(),
                ));
            }
            Ok(pid)
        }
    }
}

/// What a start failure caused by a panic in the child says first.
pub const SETUP_PANICKED: &str = "container setup panicked";

/// Make a panic in this (child) process a start failure the monitor sees, whatever the
/// build's panic strategy: the hook runs before any unwinding, writes
/// "container setup panicked: <message> at <file:line>" to the error pipe and `_exit`s.
/// Unwinding would carry the child back into the monitor's code (its loop, its
/// destructors) in a copy of the monitor; aborting would leave the pipe empty, which
/// reads as a successful exec.
///
/// What the parent can tell apart: an error return or a panic before execve (a message
/// on the pipe), and a successful execve (the pipe closes empty). A child killed by a
/// signal before execve (the OOM killer, a SIGKILL fault point, an abort inside the hook)
/// also closes the pipe empty: it is indistinguishable from a container that exec'd and
/// was then killed, and is reported as such, the container's exit by that signal
/// (128 + n) once the monitor reaps it, so nothing is leaked and the restart policy
/// applies.
fn report_panics_to(err_w: &OwnedFd) {
    let fd = err_w.as_raw_fd();
    std::panic::set_hook(Box::new(move |info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = format!("{SETUP_PANICKED}: {what}{at}");
        // SAFETY: the error pipe stays open in the child until execve or _exit, and
        // the hook only ever runs in the child.
        let pipe = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = nix::unistd::write(pipe, msg.as_bytes());
        // SAFETY: as after any child failure: no destructor of the monitor's copy runs.
        unsafe { libc::_exit(128) }
    }));
}

/// Threads of this process (entries of /proc/self/task); None when /proc cannot tell.
pub fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|d| d.flatten().count())
}

fn kill_and_reap(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
}

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::Error::EINTR) => continue,
            Err(_) => return out,
        }
    }
}

enum Never {}

fn child(
    sync_r: &OwnedFd,
    setup: ChildSetup<'_>,
    process: &ProcessSpec,
    seccomp: &[seccompiler::BpfProgram],
    stdio: &Stdio,
) -> Result<Never, String> {
    // Nobody may open this process's /proc/<pid>/exe (the podrun binary) from inside.
    // SAFETY: plain prctl calls with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let mut b = [0u8; 1];
    match nix::unistd::read(sync_r, &mut b) {
        Ok(1) => {}
        _ => return Err("the pod monitor went away before the container started".into()),
    }
    // The monitor blocks and ignores signals for itself; both would survive execve.
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: resetting a disposition to default in a single-threaded child.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    crate::fault::point("child:setup");
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    for (fd, target) in [(&stdio.stdin, 0), (&stdio.stdout, 1), (&stdio.stderr, 2)] {
        // SAFETY: dup2 onto the standard descriptors of this (child) process.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return Err(format!("dup2 stdio: {}", nix::Error::last()));
        }
    }
    if stdio.tty {
        // SAFETY: ioctl on our own stdin, which is the terminal slave.
        unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    }
    // The terminal comes from the container's devpts: only once /dev/pts is the
    // container's (rootfs built and pivoted into, or its mount namespace joined).
    let console = match setup {
        ChildSetup::Container { rootfs, console } => {
            crate::rootfs::setup_rootfs(&LinuxSyscall, rootfs).map_err(|e| e.to_string())?;
            console
        }
        ChildSetup::ContainerFromHost {
            rootfs,
            host_mnt,
            console,
        } => {
            nix::sched::setns(host_mnt, CloneFlags::CLONE_NEWNS)
                .map_err(|e| format!("enter the host mount namespace: {e}"))?;
            nix::sched::unshare(CloneFlags::CLONE_NEWNS)
                .map_err(|e| format!("copy the host mount namespace: {e}"))?;
            crate::rootfs::setup_rootfs(&LinuxSyscall, rootfs).map_err(|e| e.to_string())?;
            console
        }
        ChildSetup::Join { mnt_ns, console } => {
            nix::sched::setns(mnt_ns, CloneFlags::CLONE_NEWNS)
                .map_err(|e| format!("join the container's mount namespace: {e}"))?;
            console
        }
    };
    if let Some(sock) = console {
        attach_new_terminal(sock, Uid::from_raw(process.uid))?;
    }
    if let Some(h) = &process.hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("sethostname {h:?}: {e}"))?;
    }
    finish_and_exec(process, seccomp)
}

/// Open a terminal pair on the container's /dev/ptmx, make the slave this process's
/// stdio and controlling terminal, owned by `uid` (as runc's fixStdioPermissions: the
/// process may not be root, and its terminal must be its own), and send the master over
/// `sock`.
fn attach_new_terminal(sock: &OwnedFd, uid: Uid) -> Result<(), String> {
    use nix::pty::{grantpt, posix_openpt, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| format!("open the container's /dev/ptmx: {e}"))?;
    grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let slave = open_terminal_peer(&master)?;
    // A size the caller knew before the process started waits on the socket already
    // ([`set_initial_terminal_size`]): apply it before anything in the container can ask.
    let mut size = [0u8; 4];
    if let Ok(4) = nix::sys::socket::recv(
        sock.as_raw_fd(),
        &mut size,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    ) {
        let rows = u16::from_ne_bytes([size[0], size[1]]);
        let cols = u16::from_ne_bytes([size[2], size[3]]);
        set_terminal_size(&master, rows, cols).map_err(|e| format!("size the terminal: {e}"))?;
    }
    // Keep the group (the devpts mount's gid=5, tty).
    nix::unistd::fchown(&slave, Some(uid), None)
        .map_err(|e| format!("chown the terminal to uid {uid}: {e}"))?;
    let fds = [master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(b"t")];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("send the terminal to the caller: {e}"))?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this (child) process.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(format!("dup2 terminal: {}", nix::Error::last()));
        }
    }
    // SAFETY: ioctl on our own stdin, now the terminal slave; we lead our session.
    unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    Ok(())
}

/// The slave of `master`: TIOCGPTPEER (Linux 4.13) opens it from the master itself, with
/// no path to resolve in the container's /dev; older kernels go through ptsname.
fn open_terminal_peer(master: &nix::pty::PtyMaster) -> Result<OwnedFd, String> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags.bits()) };
    if fd >= 0 {
        // SAFETY: the kernel just opened this descriptor for us.
        return Ok(unsafe { owned(fd) });
    }
    match nix::Error::last() {
        nix::Error::ENOTTY | nix::Error::EINVAL => {}
        e => return Err(format!("open the terminal's slave: {e}")),
    }
    let name = nix::pty::ptsname_r(master).map_err(|e| format!("ptsname: {e}"))?;
    nix::fcntl::open(name.as_str(), flags, nix::sys::stat::Mode::empty())
        .map_err(|e| format!("open {name}: {e}"))
}

/// A socket pair to pass a terminal over (see [`ChildSetup`]): the first end is the
/// caller's, for [`receive_terminal`]; the second goes to the process. Both close-on-exec.
pub fn console_socketpair() -> Result<(OwnedFd, OwnedFd), ProcessError> {
    nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(sys("console socket pair"))
}

/// Give the terminal the process will get its first size: written on the caller's end of
/// a [`console_socketpair`] before the process starts, it is set on the terminal before
/// the process runs, so its first look at the size (`stty size`, a shell's `$COLUMNS`)
/// never sees 0x0 while the caller races to resize it.
pub fn set_initial_terminal_size(sock: &OwnedFd, rows: u16, cols: u16) -> Result<(), ProcessError> {
    let mut size = [0u8; 4];
    size[0..2].copy_from_slice(&rows.to_ne_bytes());
    size[2..4].copy_from_slice(&cols.to_ne_bytes());
    let n = nix::sys::socket::send(
        sock.as_raw_fd(),
        &size,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    )
    .map_err(sys("send the terminal size"))?;
    if n != size.len() {
        return Err(ProcessError::Start(
            "the terminal size was cut short".into(),
        ));
    }
    Ok(())
}

/// Set the window size of a terminal (through its master or slave).
pub fn set_terminal_size(terminal: &impl AsFd, rows: u16, cols: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    if unsafe { libc::ioctl(terminal.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Receive a terminal master sent by `attach_new_terminal`.
pub fn receive_terminal(sock: &OwnedFd) -> Result<OwnedFd, ProcessError> {
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(sys("receive the terminal"))?;
    for c in msg.cmsgs().map_err(sys("receive the terminal"))? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor in our process.
                return Ok(unsafe { owned(*fd) });
            }
        }
    }
    Err(ProcessError::Start("the process sent no terminal".into()))
}

/// Raise (never lower) oom_score_adj: lowering needs CAP_SYS_RESOURCE, which some hosts
/// do not grant even to root, and a pod must not fail for it (containerd's
/// restrict_oom_score_adj).
fn raise_oom_score_adj(desired: i32) {
    let current = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    if desired > current {
        let _ = std::fs::write("/proc/self/oom_score_adj", desired.to_string());
    }
}

fn set_user(p: &ProcessSpec) -> Result<(), String> {
    // Keep the permitted set across setuid so the container's capabilities can be set
    // afterwards; the final capset decides what remains.
    capabilities::prepare_for_setuid().map_err(|e| e.to_string())?;
    let groups: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    let gid = Gid::from_raw(p.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setgid {}: {e}", p.gid))?;
    let uid = Uid::from_raw(p.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setuid {}: {e}", p.uid))?;
    Ok(())
}

fn install_seccomp(programs: &[seccompiler::BpfProgram]) -> Result<(), String> {
    crate::security::seccomp::install(programs).map_err(|e| format!("install seccomp filter: {e}"))
}

fn finish_and_exec(p: &ProcessSpec, seccomp: &[seccompiler::BpfProgram]) -> Result<Never, String> {
    if let Some(adj) = p.oom_score_adj {
        raise_oom_score_adj(adj);
    }
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN, so it goes in before
    // the capabilities are dropped; with it, as late as possible.
    if !p.no_new_privs {
        install_seccomp(seccomp)?;
    }
    set_user(p)?;
    capabilities::apply(&p.capabilities).map_err(|e| e.to_string())?;
    if p.no_new_privs {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("set no_new_privs: {}", nix::Error::last()));
        }
    }
    let cwd = if p.cwd.is_empty() { "/" } else { &p.cwd };
    nix::unistd::chdir(cwd).map_err(|e| format!("chdir to working directory {cwd:?}: {e}"))?;
    // A working directory reached through a leaked host descriptor would print as
    // "(unreachable)/..." (CVE-2024-21626): refuse to run there.
    match nix::unistd::getcwd() {
        Ok(d) if d.is_absolute() => {}
        _ => {
            return Err(format!(
                "working directory {cwd:?} is outside the container"
            ))
        }
    }
    let path = resolve_executable(&p.args, &p.env)?;
    let argv: Vec<CString> = p
        .args
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = p.env.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
    mark_all_cloexec();
    if p.no_new_privs {
        install_seccomp(seccomp)?;
    }
    let e = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
    Err(format!("exec {:?}: {e}", p.args[0]))
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("argument or environment entry contains a NUL byte: {s:?}"))
}

/// Mark every descriptor above stderr close-on-exec, so nothing the monitor holds (its
/// sockets, cgroup or state directories) reaches the container.
fn mark_all_cloexec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret != 0 {
        // Kernels before 5.11: walk /proc/self/fd.
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<RawFd> = dir
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect();
            for fd in fds.into_iter().filter(|fd| *fd > 2) {
                // SAFETY: setting FD_CLOEXEC on a descriptor number; a stale one fails harmlessly.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}

/// The exit code shells, runc and Docker give a command that could not be executed, for
/// a start failure whose failed step was the PATH lookup or the execve itself (the
/// messages made by `child`): 127 when it was not found, 126 when it was found but
/// could not be run. None for any other failure.
pub fn exec_failure_exit_code(message: &str) -> Option<u8> {
    if !message.starts_with("exec") {
        return None;
    }
    use nix::errno::Errno;
    let errno = |e: Errno| message.contains(&format!(": {e}"));
    if message.contains(NOT_IN_PATH) || errno(Errno::ENOENT) || errno(Errno::ENOTDIR) {
        Some(127)
    } else if errno(Errno::EACCES) || errno(Errno::ENOEXEC) || errno(Errno::EPERM) {
        Some(126)
    } else {
        None
    }
}

const NOT_IN_PATH: &str = "executable file not found in $PATH";

/// Find argv[0] the way execvp does, on the container's PATH (already pivoted).
fn resolve_executable(args: &[String], env: &[String]) -> Result<CString, String> {
    let Some(cmd) = args.first() else {
        return Err("no command to run".into());
    };
    if cmd.contains('/') {
        return cstring(cmd);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(cmd);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.metadata().map(|m| m.is_file()).unwrap_or(false)
        {
            return cstring(&candidate.to_string_lossy());
        }
    }
    Err(format!("exec: {cmd:?}: {NOT_IN_PATH}"))
}

/// Open a namespace of `pid` (e.g. "mnt", "pid") close-on-exec.
pub fn open_ns(pid: Pid, kind: &str) -> Result<OwnedFd, ProcessError> {
    let path = format!("/proc/{pid}/ns/{kind}");
    let fd = nix::fcntl::open(
        path.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys("open namespace"))?;
    Ok(fd)
}

/// Run `f` with this process's children created in the PID namespace `target`; the
/// monitor's own PID namespace is restored afterwards whatever `f` returns.
pub fn with_pid_ns_for_children<T>(
    target: Option<&OwnedFd>,
    f: impl FnOnce() -> Result<T, ProcessError>,
) -> Result<T, ProcessError> {
    let Some(target) = target else { return f() };
    let own = nix::fcntl::open(
        "/proc/self/ns/pid",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys("open namespace"))?;
    nix::sched::setns(target, CloneFlags::CLONE_NEWPID)
        .map_err(sys("join the container's PID namespace"))?;
    let result = f();
    nix::sched::setns(&own, CloneFlags::CLONE_NEWPID)
        .map_err(sys("restore the monitor's PID namespace"))?;
    result
}

/// Wrap a raw descriptor received over a socket.
///
/// # Safety
/// `fd` must be an open descriptor owned by nobody else.
pub unsafe fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: per the caller's contract.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `/dev/null` opened read-write, close-on-exec, for a process without stdin.
pub fn dev_null() -> Result<OwnedFd, ProcessError> {
    nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys("open /dev/null"))
}

/// A borrowed view, for callers holding raw descriptors.
pub fn borrow(fd: &OwnedFd) -> BorrowedFd<'_> {
    use std::os::fd::AsFd;
    fd.as_fd()
}

#[cfg(test)]
mod tests {
    use super::exec_failure_exit_code;

    #[test]
    fn exec_failures_exit_127_when_not_found_and_126_when_not_executable() {
        let not_found =
            super::resolve_executable(&["no-such-command".into()], &["PATH=/nonexistent".into()]);
        assert_eq!(exec_failure_exit_code(&not_found.unwrap_err()), Some(127));
        let execve = |e: nix::errno::Errno| format!("exec {:?}: {e}", "/x");
        assert_eq!(
            exec_failure_exit_code(&execve(nix::errno::Errno::ENOENT)),
            Some(127)
        );
        assert_eq!(
            exec_failure_exit_code(&execve(nix::errno::Errno::EACCES)),
            Some(126)
        );
        assert_eq!(
            exec_failure_exit_code(&execve(nix::errno::Errno::ENOEXEC)),
            Some(126)
        );
        assert_eq!(
            exec_failure_exit_code(
                "chdir to working directory \"/x\": ENOENT: No such file or directory"
            ),
            None
        );
    }
}
