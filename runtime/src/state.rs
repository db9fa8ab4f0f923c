//! On-disk state: where podrun keeps pods, containers and their status, and the one way it
//! writes state files (atomically: temp file, fsync, rename), so a crash at any point leaves
//! either the old or the new content, never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse state file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Write `value` as JSON to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let data = serde_json::to_vec_pretty(value).map_err(|e| StateError::Write {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(path, &data, 0o600)
}

/// Write bytes to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Read a JSON state file. `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_reader(std::io::BufReader::new(f))
        .map(Some)
        .map_err(|source| StateError::Parse {
            path: path.to_owned(),
            source,
        })
}

/// The directories one podrun instance uses. Every path is derived from three roots so
/// tests and several instances run side by side.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Paths {
    /// Persistent data: images, layers, container upper dirs, volumes.
    pub root: PathBuf,
    /// Runtime state (tmpfs): pod and container state, monitor sockets.
    pub state: PathBuf,
    /// Container logs, /var/log/pods by default.
    pub log_root: PathBuf,
}

impl Paths {
    pub fn new(
        root: impl Into<PathBuf>,
        state: impl Into<PathBuf>,
        log_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            root: root.into(),
            state: state.into(),
            log_root: log_root.into(),
        }
    }
    pub fn pods_state(&self) -> PathBuf {
        self.state.join("pods")
    }
    /// Runtime state of one pod: plan, status, monitor socket, hosts/resolv.conf.
    pub fn pod_state(&self, id: &str) -> PathBuf {
        self.pods_state().join(id)
    }
    /// Name reservations: one file per `<namespace>_<name>` holding the pod id.
    pub fn names(&self) -> PathBuf {
        self.state.join("names")
    }
    /// Persistent data of one pod: volumes.
    pub fn pod_data(&self, id: &str) -> PathBuf {
        self.root.join("pods").join(id)
    }
    /// Persistent data of one container: overlay upper and work dirs, rootfs mount point.
    pub fn container_data(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }
    /// /var/log/pods/<ns>_<name>_<uid>
    pub fn pod_logs(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.log_root.join(format!("{namespace}_{name}_{uid}"))
    }
}

/// A new random 64-hex-digit id, as containerd and CRI-O use for sandboxes and containers.
pub fn new_id() -> String {
    let mut buf = [0u8; 32];
    let filled = File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_ok();
    if !filled {
        // /dev/urandom is always there on Linux; fall back to time and pid so ids stay unique.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes();
        buf[..16].copy_from_slice(&t);
        buf[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(buf)
}

/// Check an id or name used as a path component: no `/`, no `..`, no NUL, not empty.
pub fn validate_path_component(kind: &str, value: &str) -> Result<(), String> {
    if value.is_empty()
        || value == "."
        || value == ".."
        || value.contains('/')
        || value.contains('\0')
    {
        return Err(format!(
            "invalid {kind} {value:?}: must be a single path component"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/state.json");
        write_json(&p, &vec![1, 2, 3]).unwrap();
        let v: Vec<i32> = read_json(&p).unwrap().unwrap();
        assert_eq!(v, vec![1, 2, 3]);
        // no temp files left
        let names: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(read_json::<Vec<i32>>(&dir.path().join("missing"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn ids_are_unique_hex() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn path_components_are_checked() {
        assert!(validate_path_component("id", "abc").is_ok());
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(validate_path_component("id", bad).is_err(), "{bad}");
        }
    }
}
