//! Allocation, release and garbage collection of addresses against an [`IpamStore`].

use std::net::IpAddr;

use ipnet::IpNet;

use super::{IpamConfig, IpamError, IpamStore, RangeSet};

/// One allocated address with the gateway of the range it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

/// Allocates one address per range set for the attachment. An attachment that already
/// holds an address in a set gets it back, so a repeated ADD is stable. On failure the
/// addresses taken by this call are released again.
pub fn allocate(
    store: &dyn IpamStore,
    config: &IpamConfig,
    container_id: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> Result<Vec<Allocation>, IpamError> {
    let _lock = store.lock()?;
    let existing = store.get_by_id(container_id, ifname)?;
    let mut taken_now = Vec::new();
    let result = (|| {
        let mut out = Vec::new();
        for (index, set) in config.range_sets.iter().enumerate() {
            if let Some(ip) = existing.iter().copied().find(|ip| set.contains(*ip)) {
                out.push(allocation_for(set, ip));
                continue;
            }
            if let Some(ip) = requested.iter().copied().find(|ip| set.contains(*ip)) {
                if Some(ip) == set.range_for(ip).and_then(|r| r.gateway)
                    || !store.reserve(container_id, ifname, ip, index)?
                {
                    return Err(IpamError::AlreadyAllocated { ip });
                }
                taken_now.push(ip);
                out.push(allocation_for(set, ip));
                continue;
            }
            let ip = allocate_in_set(store, set, index, container_id, ifname)?;
            taken_now.push(ip);
            out.push(allocation_for(set, ip));
        }
        for ip in requested {
            if !config.range_sets.iter().any(|s| s.contains(*ip)) {
                return Err(IpamError::NotInRange { ip: *ip });
            }
        }
        Ok(out)
    })();
    if result.is_err() {
        for ip in taken_now {
            let _ = store.release(ip);
        }
    }
    result
}

fn allocation_for(set: &RangeSet, ip: IpAddr) -> Allocation {
    let range = set.range_for(ip).expect("ip is in set");
    let address = IpNet::new(ip, range.subnet.prefix_len()).expect("prefix from a valid subnet");
    Allocation {
        address,
        gateway: range.gateway,
    }
}

/// Round-robin: start right after the last reserved address so a just-released address
/// is not reused at once (stale conntrack or ARP entries would still point at it).
fn allocate_in_set(
    store: &dyn IpamStore,
    set: &RangeSet,
    index: usize,
    container_id: &str,
    ifname: &str,
) -> Result<IpAddr, IpamError> {
    let mut candidate = match store.last_reserved_ip(index)? {
        Some(last) if set.contains(last) => set.next_after(last),
        _ => set.0[0].range_start,
    };
    let size = set.size();
    let mut tried: u128 = 0;
    while tried < size {
        let is_gateway = set.range_for(candidate).and_then(|r| r.gateway) == Some(candidate);
        if !is_gateway && store.reserve(container_id, ifname, candidate, index)? {
            return Ok(candidate);
        }
        candidate = set.next_after(candidate);
        tried += 1;
    }
    Err(IpamError::Exhausted {
        index,
        range: set.describe(),
    })
}

/// Releases the attachment's addresses; nothing reserved is fine (DEL is idempotent).
pub fn release(
    store: &dyn IpamStore,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>, IpamError> {
    let _lock = store.lock()?;
    store.release_by_id(container_id, ifname)
}

/// Releases every reservation whose attachment is not in `valid` (the GC command).
pub fn garbage_collect(
    store: &dyn IpamStore,
    valid: &[(String, String)],
) -> Result<Vec<IpAddr>, IpamError> {
    let _lock = store.lock()?;
    let mut released = Vec::new();
    for r in store.list()? {
        if !valid
            .iter()
            .any(|(id, ifname)| *id == r.container_id && *ifname == r.ifname)
        {
            store.release(r.ip)?;
            released.push(r.ip);
        }
    }
    Ok(released)
}
