//! host-local compatible IP address management: the IPAM configuration (`ranges`,
//! legacy top-level `subnet`, `rangeStart`/`rangeEnd`, `gateway`, `routes`, `dataDir`),
//! the round-robin allocator, and the reservation store.
//!
//! The store is a trait so the allocator is tested against [`MemStore`] without root;
//! [`DiskStore`] keeps the reference plugin's on-disk layout exactly (one file per IP
//! named by the address holding `"<container id>\r\n<ifname>"`, `last_reserved_ip.<n>`
//! per range set, and a `lock` file taken with `flock`), so podrun and the reference
//! host-local can share one data directory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::spec::{code, CniError};

mod allocate;
mod config;
mod disk;
mod mem;
mod store;

pub use allocate::{allocate, garbage_collect, release, Allocation};
pub use config::{IpamConfig, Range, RangeSet};
pub use disk::DiskStore;
pub use mem::MemStore;
pub use store::{IpamStore, Reservation, StoreLock};

/// Where host-local keeps reservations when `dataDir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid IPAM configuration: {0}")]
    InvalidConfig(String),
    #[error("failed to lock IPAM store {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to read IPAM store {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to write IPAM store {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "failed to allocate for range {index}: no IP addresses available in range set: {range}"
    )]
    Exhausted { index: usize, range: String },
    #[error("requested IP {ip} is not in any configured range")]
    NotInRange { ip: IpAddr },
    #[error("requested IP {ip} is already allocated")]
    AlreadyAllocated { ip: IpAddr },
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        let code = match &e {
            IpamError::InvalidConfig(_) => code::INVALID_NETWORK_CONFIG,
            IpamError::Lock { .. } | IpamError::Read { .. } | IpamError::Write { .. } => {
                code::IO_FAILURE
            }
            _ => code::INTERNAL,
        };
        CniError::new(code, e.to_string())
    }
}

pub(crate) fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Builds an address of the same family as `family`.
pub(crate) fn u128_to_ip(value: u128, family: IpAddr) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

#[cfg(test)]
mod tests;
