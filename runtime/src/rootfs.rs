//! A container's root filesystem: the overlay over the image layers, the standard
//! kernel filesystems (/proc, /dev, /sys), the pod's shared files and volumes, then
//! pivot_root and the masked and read-only paths. Runs inside the container's new mount
//! namespace, before any of the container's own code, so nothing here can be raced by it.
//!
//! Every mount target inside the rootfs is resolved with `secure_join`, which follows
//! symlinks as if the rootfs were `/`: an image cannot point /proc or a volume target at a
//! host path.

use std::collections::VecDeque;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::SFlag;
use serde::{Deserialize, Serialize};

use crate::syscall::Syscall;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("resolve {path} in the container rootfs: {source}")]
    Resolve {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{step} {target}: {source}")]
    Mount {
        step: &'static str,
        target: PathBuf,
        source: nix::Error,
    },
}

/// Paths containerd masks by default (bind /dev/null over files, an empty read-only tmpfs
/// over directories), so a container cannot read kernel internals through them.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths containerd makes read-only by default.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Propagation {
    #[default]
    Private,
    /// Host mounts made later appear in the container (HostToContainer).
    Rslave,
    /// Both ways (Bidirectional; privileged only).
    Rshared,
}

/// One mount into the container, destination relative to the container's `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub readonly: bool,
    #[serde(default)]
    pub propagation: Propagation,
    /// The source is a file (the target is created as a file, not a directory).
    #[serde(default)]
    pub file: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// Where the overlay is mounted (inside the container's mount namespace only).
    pub rootfs: PathBuf,
    /// Image layers, bottom-most first.
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub readonly: bool,
    pub privileged: bool,
    /// Mount a new /proc (false when sharing the host's PID namespace would still mount
    /// proc; kept for completeness of the plan).
    pub mounts: Vec<MountPlan>,
    /// The pod's /dev/shm (a tmpfs in the monitor's mount namespace), bind-mounted.
    pub dev_shm: Option<PathBuf>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
}

/// Resolve `unsafe_path` inside `root` as if `root` were `/`: `..` stops at root and
/// symlinks (absolute or relative) are followed within root. The result is always under
/// `root`. Missing components are taken literally.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> std::io::Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut queue: VecDeque<PathBuf> = unsafe_path
        .components()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(part) = queue.pop_front() {
        match part.components().next() {
            None | Some(Component::RootDir) | Some(Component::CurDir) => continue,
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            Some(Component::Prefix(_)) => continue,
            Some(Component::Normal(name)) => {
                let candidate = root.join(&resolved).join(name);
                match std::fs::symlink_metadata(&candidate) {
                    Ok(m) if m.file_type().is_symlink() => {
                        links += 1;
                        if links > 255 {
                            return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                        }
                        let target = std::fs::read_link(&candidate)?;
                        if target.is_absolute() {
                            resolved = PathBuf::new();
                        }
                        for c in target.components().rev() {
                            queue.push_front(PathBuf::from(c.as_os_str()));
                        }
                    }
                    _ => resolved.push(name),
                }
            }
        }
    }
    Ok(root.join(resolved))
}

fn merr(step: &'static str, target: &Path) -> impl FnOnce(nix::Error) -> RootfsError {
    let target = target.to_owned();
    move |source| RootfsError::Mount {
        step,
        target,
        source,
    }
}

fn join(root: &Path, p: &str) -> Result<PathBuf, RootfsError> {
    secure_join(root, Path::new(p)).map_err(|source| RootfsError::Resolve {
        path: PathBuf::from(p),
        source,
    })
}

/// The overlay mount options; lowerdir lists the top-most layer first.
pub fn overlay_options(spec: &RootfsSpec) -> String {
    let lower: Vec<String> = spec
        .layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        spec.upper.display(),
        spec.work.display()
    )
}

const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Mount points of this mount namespace, from /proc/self/mountinfo (octal escapes
/// decoded).
fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            let mut out = Vec::new();
            let b = p.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' && i + 3 < b.len() {
                    if let Ok(v) = u8::from_str_radix(&p[i + 1..i + 4], 8) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
                out.push(b[i]);
                i += 1;
            }
            PathBuf::from(std::ffi::OsString::from_vec(out))
        })
        .collect()
}

/// The host mounts that Bidirectional (rshared) volumes come from: the deepest mount
/// point containing each source. `/` and mounts holding the rootfs are never kept
/// shared, so the container's own mounts cannot reach the host through them.
fn shared_sources(spec: &RootfsSpec, points: &[PathBuf]) -> Vec<PathBuf> {
    spec.mounts
        .iter()
        .filter(|m| m.propagation == Propagation::Rshared)
        .filter_map(|m| {
            points
                .iter()
                .filter(|p| m.source.starts_with(p))
                .max_by_key(|p| p.as_os_str().len())
                .cloned()
        })
        .filter(|p| p != Path::new("/") && !spec.rootfs.starts_with(p))
        .collect()
}

/// Build the container's filesystem and pivot into it. The caller is already in a new
/// mount namespace.
pub fn setup_rootfs(sys: &dyn Syscall, spec: &RootfsSpec) -> Result<(), RootfsError> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Nothing mounted below may propagate back to the host, except through the shared
    // mounts that Bidirectional volumes come from.
    let keep = shared_sources(spec, &mount_points());
    if keep.is_empty() {
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
        )
        .map_err(merr("make / rslave", Path::new("/")))?;
    } else {
        for p in mount_points() {
            if keep.iter().any(|k| p.starts_with(k)) {
                continue;
            }
            // One at a time (not recursive), so the kept mounts stay in their host
            // peer group; mounts that vanished meanwhile do not matter.
            let _ = sys.mount(None, &p, None, MsFlags::MS_SLAVE, None);
        }
    }

    let root = &spec.rootfs;
    if spec.layers.is_empty() {
        // A bundle rootfs (OCI entry point): bind it so it is a mount point for pivot_root.
        sys.mount(
            Some(root),
            root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(merr("bind rootfs", root))?;
    } else {
        let opts = overlay_options(spec);
        sys.mount(
            Some(Path::new("overlay")),
            root,
            Some("overlay"),
            MsFlags::empty(),
            Some(&opts),
        )
        .map_err(merr("mount overlay rootfs", root))?;
    }

    let proc_dir = join(root, "/proc")?;
    sys.mkdir_all(&proc_dir, 0o555)
        .map_err(merr("mkdir", &proc_dir))?;
    sys.mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        nodev,
        None,
    )
    .map_err(merr("mount proc", &proc_dir))?;

    let dev = join(root, "/dev")?;
    sys.mkdir_all(&dev, 0o755).map_err(merr("mkdir", &dev))?;
    sys.mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(merr("mount /dev", &dev))?;
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        sys.mknod(&p, SFlag::S_IFCHR, 0o666, *major, *minor)
            .map_err(merr("mknod", &p))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
        ("ptmx", "pts/ptmx"),
    ] {
        let p = dev.join(link);
        sys.symlink(Path::new(target), &p)
            .map_err(merr("symlink", &p))?;
    }
    let pts = dev.join("pts");
    sys.mkdir_all(&pts, 0o755).map_err(merr("mkdir", &pts))?;
    sys.mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(merr("mount devpts", &pts))?;
    let shm = dev.join("shm");
    sys.mkdir_all(&shm, 0o1777).map_err(merr("mkdir", &shm))?;
    match &spec.dev_shm {
        Some(src) => sys
            .mount(
                Some(src),
                &shm,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(merr("bind /dev/shm", &shm))?,
        None => sys
            .mount(
                Some(Path::new("shm")),
                &shm,
                Some("tmpfs"),
                nodev,
                Some("mode=1777,size=65536k"),
            )
            .map_err(merr("mount /dev/shm", &shm))?,
    }
    let mqueue = dev.join("mqueue");
    sys.mkdir_all(&mqueue, 0o755)
        .map_err(merr("mkdir", &mqueue))?;
    sys.mount(
        Some(Path::new("mqueue")),
        &mqueue,
        Some("mqueue"),
        nodev,
        None,
    )
    .map_err(merr("mount mqueue", &mqueue))?;

    let sys_dir = join(root, "/sys")?;
    sys.mkdir_all(&sys_dir, 0o555)
        .map_err(merr("mkdir", &sys_dir))?;
    let mut sysfs_flags = nodev;
    if !spec.privileged {
        sysfs_flags |= MsFlags::MS_RDONLY;
    }
    sys.mount(
        Some(Path::new("sysfs")),
        &sys_dir,
        Some("sysfs"),
        sysfs_flags,
        None,
    )
    .map_err(merr("mount sysfs", &sys_dir))?;

    // Parents before children, so a volume inside another volume is not hidden by it.
    let mut mounts: Vec<&MountPlan> = spec.mounts.iter().collect();
    mounts.sort_by_key(|m| m.destination.components().count());
    for m in mounts {
        bind_mount(sys, root, m)?;
    }

    sys.pivot_root(root).map_err(merr("pivot_root", root))?;

    for p in &spec.masked_paths {
        mask_path(sys, Path::new(p))?;
    }
    for p in &spec.readonly_paths {
        readonly_path(sys, Path::new(p))?;
    }
    if spec.readonly {
        let slash = Path::new("/");
        sys.mount(
            None,
            slash,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None,
        )
        .map_err(merr("remount / read-only", slash))?;
    }
    Ok(())
}

fn bind_mount(sys: &dyn Syscall, root: &Path, m: &MountPlan) -> Result<(), RootfsError> {
    let dest_str = m.destination.to_string_lossy();
    let target = join(root, &dest_str)?;
    if m.file {
        sys.touch(&target)
            .map_err(merr("create mount target", &target))?;
    } else {
        sys.mkdir_all(&target, 0o755)
            .map_err(merr("mkdir", &target))?;
    }
    sys.mount(
        Some(&m.source),
        &target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(merr("bind mount", &target))?;
    let prop = match m.propagation {
        Propagation::Private => MsFlags::MS_PRIVATE,
        Propagation::Rslave => MsFlags::MS_SLAVE,
        Propagation::Rshared => MsFlags::MS_SHARED,
    };
    sys.mount(None, &target, None, prop | MsFlags::MS_REC, None)
        .map_err(merr("set propagation", &target))?;
    if m.readonly {
        sys.mount(
            None,
            &target,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        )
        .map_err(merr("remount read-only", &target))?;
    }
    Ok(())
}

fn mask_path(sys: &dyn Syscall, p: &Path) -> Result<(), RootfsError> {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return Ok(()); // nothing to mask
    };
    if meta.is_dir() {
        sys.mount(
            Some(Path::new("tmpfs")),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0"),
        )
        .map_err(merr("mask", p))
    } else {
        sys.mount(
            Some(Path::new("/dev/null")),
            p,
            None,
            MsFlags::MS_BIND,
            None,
        )
        .map_err(merr("mask", p))
    }
}

fn readonly_path(sys: &dyn Syscall, p: &Path) -> Result<(), RootfsError> {
    if std::fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    sys.mount(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
        .map_err(merr("bind read-only path", p))?;
    sys.mount(
        Some(p),
        p,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None,
    )
    .map_err(merr("remount read-only path", p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};

    #[test]
    fn secure_join_stays_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("rel/x")).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/./b")).unwrap(),
            root.join("a/b")
        );
        assert!(secure_join(root, Path::new("/loop/x")).is_err());
    }

    fn spec(root: &Path) -> RootfsSpec {
        RootfsSpec {
            rootfs: root.to_owned(),
            layers: vec![PathBuf::from("/l/0"), PathBuf::from("/l/1")],
            upper: PathBuf::from("/c/upper"),
            work: PathBuf::from("/c/work"),
            readonly: true,
            privileged: false,
            mounts: vec![
                MountPlan {
                    source: PathBuf::from("/vol/data"),
                    destination: PathBuf::from("/data/sub"),
                    readonly: true,
                    propagation: Propagation::Private,
                    file: false,
                },
                MountPlan {
                    source: PathBuf::from("/vol/outer"),
                    destination: PathBuf::from("/data"),
                    readonly: false,
                    propagation: Propagation::Private,
                    file: false,
                },
            ],
            dev_shm: Some(PathBuf::from("/pod/shm")),
            masked_paths: vec![],
            readonly_paths: vec![],
        }
    }

    #[test]
    fn setup_order_overlay_first_pivot_then_readonly() {
        let dir = tempfile::tempdir().unwrap();
        let sys = RecordingSyscall::default();
        setup_rootfs(&sys, &spec(dir.path())).unwrap();
        let calls = sys.calls();
        let overlay = calls.iter().position(|c| matches!(c, Call::Mount { fstype: Some(t), data: Some(d), .. } if t == "overlay" && d == "lowerdir=/l/1:/l/0,upperdir=/c/upper,workdir=/c/work")).expect("overlay mount");
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot(_)))
            .unwrap();
        let outer = calls.iter().position(|c| matches!(c, Call::Mount { source: Some(s), .. } if s == Path::new("/vol/outer"))).unwrap();
        let inner = calls
            .iter()
            .position(
                |c| matches!(c, Call::Mount { source: Some(s), .. } if s == Path::new("/vol/data")),
            )
            .unwrap();
        assert!(
            overlay < outer && outer < inner && inner < pivot,
            "{calls:#?}"
        );
        let last = calls.last().unwrap();
        assert!(
            matches!(last, Call::Mount { flags, .. } if flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT))
        );
        // sysfs read-only for unprivileged containers; standard devices created
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { fstype: Some(t), flags, .. } if t == "sysfs" && flags.contains(MsFlags::MS_RDONLY))));
        assert!(calls.contains(&Call::Mknod(dir.path().join("dev/null"), 1, 3)));
    }

    #[test]
    fn mount_failure_names_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let sys = RecordingSyscall {
            fail_fstype: Some("overlay".into()),
            ..Default::default()
        };
        let err = setup_rootfs(&sys, &spec(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("mount overlay rootfs"), "{err}");
    }

    #[test]
    fn hostile_symlink_target_is_resolved_inside_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("data")).unwrap();
        let sys = RecordingSyscall::default();
        setup_rootfs(&sys, &spec(dir.path())).unwrap();
        for c in sys.calls() {
            if let Call::Mount { target, .. } = c {
                assert!(
                    target.starts_with(dir.path()) || target == Path::new("/"),
                    "{target:?}"
                );
            }
        }
    }
}
