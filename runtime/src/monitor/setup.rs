//! Setting the pod up as the monitor starts: its own mount namespace, the pod's network
//! namespace, hostname, loopback, tmpfs volumes, sysctls, the pod cgroup, signal handling
//! and the control socket.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use chrono::Utc;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::debug;

use super::protocol::{self};
use super::{io, sys, Container, Monitor, MonitorError, CONTAINER_CREATED, SOCKET_FILE};
use crate::plan::PodPlan;

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
    pub(super) fn new(plan: PodPlan) -> Result<Self, MonitorError> {
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
}

/// Write the pod's sysctls; the monitor is in the pod's network and IPC namespaces, so
/// namespaced keys apply to the pod only.
pub(super) fn apply_sysctls(
    sysctls: &std::collections::BTreeMap<String, String>,
) -> Result<(), MonitorError> {
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
