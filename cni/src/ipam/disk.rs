//! [`DiskStore`]: reservations in host-local's on-disk layout, so podrun and the
//! reference plugin can share one data directory.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{ip_to_u128, IpamError, IpamStore, Reservation, StoreLock};

/// host-local separates the container ID and the interface name with CRLF.
const LINE_BREAK: &str = "\r\n";
const LAST_IP_PREFIX: &str = "last_reserved_ip.";

/// The host-local on-disk layout.
pub struct DiskStore {
    dir: PathBuf,
}

impl DiskStore {
    /// Opens (creating) the data directory of one network.
    pub fn open(dir: &Path) -> Result<DiskStore, IpamError> {
        fs::create_dir_all(dir).map_err(|source| IpamError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(DiskStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }
}

impl IpamStore for DiskStore {
    fn lock(&self) -> Result<StoreLock<'_>, IpamError> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| IpamError::Lock {
                path: path.clone(),
                source,
            })?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(IpamError::Lock { path, source: err });
            }
        }
        Ok(StoreLock::File(file))
    }

    fn reserve(
        &self,
        container_id: &str,
        ifname: &str,
        ip: IpAddr,
        range_set: usize,
    ) -> Result<bool, IpamError> {
        let path = self.ip_path(ip);
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(source) => return Err(IpamError::Write { path, source }),
        };
        let content = format!("{}{LINE_BREAK}{ifname}", container_id.trim());
        if let Err(source) = file
            .write_all(content.as_bytes())
            .and_then(|_| file.sync_data())
        {
            let _ = fs::remove_file(&path);
            return Err(IpamError::Write { path, source });
        }
        let last = self.dir.join(format!("{LAST_IP_PREFIX}{range_set}"));
        let tmp = self.dir.join(format!(".{LAST_IP_PREFIX}{range_set}.tmp"));
        fs::write(&tmp, ip.to_string())
            .and_then(|_| fs::rename(&tmp, &last))
            .map_err(|source| IpamError::Write { path: last, source })?;
        Ok(true)
    }

    fn last_reserved_ip(&self, range_set: usize) -> Result<Option<IpAddr>, IpamError> {
        let path = self.dir.join(format!("{LAST_IP_PREFIX}{range_set}"));
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IpamError::Read { path, source }),
        }
    }

    fn release(&self, ip: IpAddr) -> Result<(), IpamError> {
        let path = self.ip_path(ip);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(IpamError::Write { path, source }),
        }
    }

    fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(IpamError::Read {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let Ok(content) = fs::read_to_string(entry.path()) else {
                continue;
            };
            let mut lines = content.split('\n').map(|l| l.trim_end_matches('\r').trim());
            let container_id = lines.next().unwrap_or_default().to_string();
            let ifname = lines.next().unwrap_or_default().to_string();
            out.push(Reservation {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|r| ip_to_u128(r.ip));
        Ok(out)
    }
}
