//! The privileged boundary of container setup: every mount, pivot_root and mknod the runtime
//! makes goes through the `Syscall` trait, so the setup logic is unit-tested against
//! `RecordingSyscall` without root, and `LinuxSyscall` does the real thing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

pub type Result<T> = std::result::Result<T, nix::Error>;

pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<()>;
    fn pivot_root(&self, new_root: &Path) -> Result<()>;
    fn mknod(&self, path: &Path, kind: SFlag, mode: u32, major: u64, minor: u64) -> Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> Result<()>;
    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<()>;
    /// Create an empty regular file (a bind-mount target) if nothing exists at `path`.
    fn touch(&self, path: &Path) -> Result<()>;
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<()>;
}

/// The real syscalls.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn io_to_nix(e: std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<()> {
        nix::mount::umount2(target, flags)
    }
    fn pivot_root(&self, new_root: &Path) -> Result<()> {
        // pivot_root(".", ".") stacks the old root on top of the new one; detaching it
        // leaves only the new root, without needing a directory for the old one.
        nix::unistd::chdir(new_root)?;
        nix::unistd::pivot_root(".", ".")?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
        nix::unistd::chdir("/")
    }
    fn mknod(&self, path: &Path, kind: SFlag, mode: u32, major: u64, minor: u64) -> Result<()> {
        nix::sys::stat::mknod(
            path,
            kind,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::makedev(major, minor),
        )?;
        // mknod is filtered by the umask; devices must end up with the exact mode.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
    }
    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r.map_err(io_to_nix),
        }
    }
    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(io_to_nix)
    }
    fn touch(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if std::fs::symlink_metadata(path).is_ok() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            self.mkdir_all(parent, 0o755)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map(drop)
            .map_err(io_to_nix)
    }
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<()> {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
    }
}

/// One recorded call of `RecordingSyscall`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount(PathBuf),
    PivotRoot(PathBuf),
    Mknod(PathBuf, u64, u64),
    Symlink(PathBuf, PathBuf),
    MkdirAll(PathBuf),
    Touch(PathBuf),
    Chown(PathBuf, u32, u32),
}

/// A fake that records every call and succeeds, except mounts of the `fail_fstype` type.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    pub calls: Mutex<Vec<Call>>,
    pub fail_fstype: Option<String>,
}

impl RecordingSyscall {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        if fstype.is_some() && fstype == self.fail_fstype.as_deref() {
            return Err(nix::Error::EPERM);
        }
        self.record(Call::Mount {
            source: source.map(Path::to_owned),
            target: target.to_owned(),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        });
        Ok(())
    }
    fn umount(&self, target: &Path, _flags: MntFlags) -> Result<()> {
        self.record(Call::Umount(target.to_owned()));
        Ok(())
    }
    fn pivot_root(&self, new_root: &Path) -> Result<()> {
        self.record(Call::PivotRoot(new_root.to_owned()));
        Ok(())
    }
    fn mknod(&self, path: &Path, _kind: SFlag, _mode: u32, major: u64, minor: u64) -> Result<()> {
        self.record(Call::Mknod(path.to_owned(), major, minor));
        Ok(())
    }
    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        self.record(Call::Symlink(target.to_owned(), link.to_owned()));
        Ok(())
    }
    fn mkdir_all(&self, path: &Path, _mode: u32) -> Result<()> {
        self.record(Call::MkdirAll(path.to_owned()));
        Ok(())
    }
    fn touch(&self, path: &Path) -> Result<()> {
        self.record(Call::Touch(path.to_owned()));
        Ok(())
    }
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<()> {
        self.record(Call::Chown(path.to_owned(), uid, gid));
        Ok(())
    }
}
