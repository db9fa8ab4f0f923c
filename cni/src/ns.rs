//! Running code inside another network namespace.
//!
//! `setns` changes the namespace of the calling thread only, and a thread that has
//! switched must never run anything else afterwards. So every switch happens on a
//! fresh OS thread that enters the namespace, runs one closure and exits; the caller's
//! thread never changes namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("network namespace {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("failed to open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("failed to start namespace thread: {0}")]
    Spawn(std::io::Error),
    #[error("namespace thread panicked")]
    Panicked,
}

/// An open handle on a network namespace.
pub struct NetNs {
    path: PathBuf,
    file: File,
}

impl NetNs {
    pub fn open(path: &Path) -> Result<NetNs, NsError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NsError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                NsError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Ok(NetNs {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The network namespace of this process (its initial thread).
    pub fn current() -> Result<NetNs, NsError> {
        // /proc/self/ns/net would be this thread's namespace; the host namespace is the
        // one the process started in, which the main thread keeps.
        Self::open(Path::new(&format!(
            "/proc/{}/task/{}/ns/net",
            std::process::id(),
            std::process::id()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on a dedicated thread that has entered this namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T, NsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, || {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NsError::Enter {
                            path: self.path.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .map_err(NsError::Spawn)?;
            handle.join().map_err(|_| NsError::Panicked)?
        })
    }
}
