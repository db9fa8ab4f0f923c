//! Pod name reservations shared by every process using one state dir (`podrun run`,
//! `podrun rm`, the CRI agent): one file per `<namespace>_<name>` in `<state>/names/`
//! holding the id of the pod that owns the name.
//!
//! A reservation is created atomically (a temp file holding the id is hard-linked into
//! place, and `link` fails if the name exists), so of several processes racing for one
//! name exactly one wins. While its pod is being created the creator holds an `flock` on
//! the file; an entry that is not locked and whose pod state is gone was left by a
//! crash and may be reclaimed. Checking and reclaiming happen under `<state>/names.lock`,
//! so two processes never both reclaim the same entry.
//!
//! ```text
//!   reserve ──▶ [creating: file locked] ──set_holder(id)──▶ keep() ──▶ [held: pod state exists]
//!      │                 │ drop (failure)                                     │ teardown
//!      ▼                 ▼                                                    ▼
//!   Taken(id)         removed                                              removed
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// The name is held by a pod (its id; empty while that pod is being created).
    #[error("name {key:?} is reserved for {holder:?}")]
    Taken { key: String, holder: String },
    #[error("{step}: {source}")]
    Io {
        step: String,
        source: std::io::Error,
    },
}

fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> NameError {
    let step = step.into();
    move |source| NameError::Io { step, source }
}

/// A name being reserved: released when dropped unless [`Reservation::keep`] is called.
#[derive(Debug)]
pub struct Reservation {
    path: PathBuf,
    file: Option<File>,
}

impl Reservation {
    /// Record the id of the pod that owns the name.
    pub fn set_holder(&mut self, id: &str) -> Result<(), NameError> {
        let f = self.file.as_mut().expect("reservation is open");
        let step = format!("write {}", self.path.display());
        f.set_len(0).map_err(io(&step))?;
        f.rewind().map_err(io(&step))?;
        f.write_all(id.as_bytes()).map_err(io(&step))
    }

    /// The pod exists now: keep the name (its teardown releases it) and drop the lock.
    pub fn keep(mut self) {
        self.file = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else {
            return;
        };
        // Only our own entry: a teardown may have removed it already, and then another
        // process may hold the name.
        let Some(dir) = self.path.parent() else {
            return;
        };
        let Ok(_dir_lock) = lock_dir(dir) else {
            return;
        };
        let ours = |m: &fs::Metadata| (m.dev(), m.ino());
        if let (Ok(a), Ok(b)) = (file.metadata(), fs::symlink_metadata(&self.path)) {
            if ours(&a) == ours(&b) {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Take an exclusive lock on `file` (blocking, or failing at once with `nonblock`).
fn flock(file: &File, nonblock: bool) -> std::io::Result<bool> {
    let mut op = libc::LOCK_EX;
    if nonblock {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if nonblock => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// The lock serialising checks and reclaims of `dir` (`<state>/names.lock`, beside the
/// directory so the directory holds only reservations).
fn lock_dir(dir: &Path) -> Result<File, NameError> {
    let path = dir.with_extension("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(format!("open {}", path.display())))?;
    flock(&f, false).map_err(io(format!("lock {}", path.display())))?;
    Ok(f)
}

/// Whether the entry at `path` is stale: not being created (no lock on it) and its
/// holder's pod is gone. Returns the holder's id either way.
fn inspect(path: &Path, pod_exists: &dyn Fn(&str) -> bool) -> std::io::Result<(String, bool)> {
    let mut f = File::open(path)?;
    let mut holder = String::new();
    let _ = f.read_to_string(&mut holder);
    let holder = holder.trim().to_owned();
    if !flock(&f, true)? {
        return Ok((holder, false));
    }
    let stale = holder.is_empty() || !pod_exists(&holder);
    Ok((holder, stale))
}

/// Reserve `key` in `dir`. `pod_exists(id)` says whether the pod holding an existing
/// entry still exists; if not, the entry is reclaimed.
pub fn reserve(
    dir: &Path,
    key: &str,
    pod_exists: &dyn Fn(&str) -> bool,
) -> Result<Reservation, NameError> {
    crate::state::validate_path_component("name key", key).map_err(|m| NameError::Io {
        step: format!("reserve {key:?}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, m),
    })?;
    fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let path = dir.join(key);
    let _dir_lock = lock_dir(dir)?;
    match inspect(&path, pod_exists) {
        Ok((holder, false)) => {
            return Err(NameError::Taken {
                key: key.to_owned(),
                holder,
            })
        }
        Ok((_, true)) => {
            fs::remove_file(&path).map_err(io(format!("reclaim {}", path.display())))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("read {}", path.display()))(e)),
    }
    // Created aside, locked, then linked into place: the entry appears already locked.
    let tmp = dir.with_file_name(format!(
        ".{}.{key}.{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("names"),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("create {}", tmp.display())))?;
    let linked = flock(&file, false).and_then(|_| fs::hard_link(&tmp, &path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Reservation {
            path,
            file: Some(file),
        }),
        // Only a process not taking the lock (an older podrun) can get here.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(NameError::Taken {
            key: key.to_owned(),
            holder: String::new(),
        }),
        Err(e) => Err(io(format!("reserve {}", path.display()))(e)),
    }
}

/// Remove every stale entry of `dir` (see [`reserve`]); returns the keys removed.
pub fn reap_stale(dir: &Path, pod_exists: &dyn Fn(&str) -> bool) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let Ok(_dir_lock) = lock_dir(dir) else {
        return Vec::new();
    };
    let mut reaped = Vec::new();
    for e in entries.flatten() {
        if let Ok((_, true)) = inspect(&e.path(), pod_exists) {
            if fs::remove_file(e.path()).is_ok() {
                reaped.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reservation_per_name() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("names");
        let live = |_: &str| true;
        let mut a = reserve(&dir, "default_web", &live).unwrap();
        // Being created (locked, no holder yet): taken.
        assert!(matches!(
            reserve(&dir, "default_web", &|_| false),
            Err(NameError::Taken { .. })
        ));
        a.set_holder("id1").unwrap();
        a.keep();
        match reserve(&dir, "default_web", &live) {
            Err(NameError::Taken { holder, .. }) => assert_eq!(holder, "id1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read_to_string(dir.join("default_web")).unwrap(), "id1");
        // Only the reservation itself is in the directory.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn failed_creation_releases_the_name() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("names");
        let r = reserve(&dir, "default_web", &|_| true).unwrap();
        drop(r);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        reserve(&dir, "default_web", &|_| true).unwrap().keep();
    }

    #[test]
    fn stale_entries_are_reclaimed() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("names");
        // A crash while creating: an unlocked, empty entry.
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("default_a"), "").unwrap();
        // A pod that is gone.
        fs::write(dir.join("default_b"), "gone").unwrap();
        fs::write(dir.join("default_c"), "alive").unwrap();
        let exists = |id: &str| id == "alive";
        let mut r = reserve(&dir, "default_a", &exists).unwrap();
        r.set_holder("new").unwrap();
        r.keep();
        assert_eq!(fs::read_to_string(dir.join("default_a")).unwrap(), "new");
        let exists = |id: &str| id == "alive" || id == "new";
        assert_eq!(reap_stale(&dir, &exists), vec!["default_b".to_owned()]);
        assert!(matches!(
            reserve(&dir, "default_c", &exists),
            Err(NameError::Taken { .. })
        ));
    }

    #[test]
    fn racing_threads_get_one_reservation() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("names");
        let won = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    if let Ok(r) = reserve(&dir, "default_web", &|_| false) {
                        won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        // Held (locked) until the end of the race.
                        std::mem::forget(r);
                    }
                });
            }
        });
        assert_eq!(won.into_inner(), 1);
    }
}
