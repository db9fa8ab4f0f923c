//! [`MemStore`]: reservations in memory, for tests of the allocation logic.

use std::net::IpAddr;
use std::sync::Mutex;

use super::{IpamError, IpamStore, Reservation, StoreLock};

/// An in-memory store for tests of the allocation logic.
#[derive(Default)]
pub struct MemStore {
    lock: Mutex<()>,
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    reservations: Vec<Reservation>,
    last: std::collections::BTreeMap<usize, IpAddr>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl IpamStore for MemStore {
    fn lock(&self) -> Result<StoreLock<'_>, IpamError> {
        Ok(StoreLock::Mem(
            self.lock.lock().unwrap_or_else(|p| p.into_inner()),
        ))
    }

    fn reserve(
        &self,
        container_id: &str,
        ifname: &str,
        ip: IpAddr,
        range_set: usize,
    ) -> Result<bool, IpamError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.reservations.iter().any(|r| r.ip == ip) {
            return Ok(false);
        }
        state.reservations.push(Reservation {
            ip,
            container_id: container_id.into(),
            ifname: ifname.into(),
        });
        state.last.insert(range_set, ip);
        Ok(true)
    }

    fn last_reserved_ip(&self, range_set: usize) -> Result<Option<IpAddr>, IpamError> {
        Ok(self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last
            .get(&range_set)
            .copied())
    }

    fn release(&self, ip: IpAddr) -> Result<(), IpamError> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reservations
            .retain(|r| r.ip != ip);
        Ok(())
    }

    fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        Ok(self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reservations
            .clone())
    }
}
