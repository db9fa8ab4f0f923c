//! Where reservations live: the [`IpamStore`] trait the allocator works against.

use std::fs::File;
use std::net::IpAddr;
use std::sync::MutexGuard;

use super::IpamError;

/// A reservation as found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// Held while allocating; dropping it releases the lock.
pub enum StoreLock<'a> {
    /// An exclusive `flock` on the data directory's `lock` file (released on close).
    File(File),
    Mem(MutexGuard<'a, ()>),
}

/// Where reservations live. All methods except `lock` expect the caller to hold it.
pub trait IpamStore {
    fn lock(&self) -> Result<StoreLock<'_>, IpamError>;
    /// Records `ip` for the attachment; false when it is already taken.
    fn reserve(
        &self,
        container_id: &str,
        ifname: &str,
        ip: IpAddr,
        range_set: usize,
    ) -> Result<bool, IpamError>;
    fn last_reserved_ip(&self, range_set: usize) -> Result<Option<IpAddr>, IpamError>;
    fn release(&self, ip: IpAddr) -> Result<(), IpamError>;
    fn list(&self) -> Result<Vec<Reservation>, IpamError>;

    fn get_by_id(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.container_id == container_id && r.ifname == ifname)
            .map(|r| r.ip)
            .collect())
    }

    /// Releases every address of the attachment; releasing nothing is not an error.
    fn release_by_id(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let ips = self.get_by_id(container_id, ifname)?;
        for ip in &ips {
            self.release(*ip)?;
        }
        Ok(ips)
    }
}
