//! host-local compatible IP address management: the IPAM configuration (`ranges`,
//! legacy top-level `subnet`, `rangeStart`/`rangeEnd`, `gateway`, `routes`, `dataDir`),
//! the round-robin allocator, and the reservation store.
//!
//! The store is a trait so the allocator is tested against [`MemStore`] without root;
//! [`DiskStore`] keeps the reference plugin's on-disk layout exactly (one file per IP
//! named by the address holding `"<container id>\r\n<ifname>"`, `last_reserved_ip.<n>`
//! per range set, and a `lock` file taken with `flock`), so podrun and the reference
//! host-local can share one data directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::spec::{code, CniError, Dns, Route};

/// Where host-local keeps reservations when `dataDir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// host-local separates the container ID and the interface name with CRLF.
const LINE_BREAK: &str = "\r\n";
const LAST_IP_PREFIX: &str = "last_reserved_ip.";

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

// ---------------------------------------------------------------------------------
// Configuration

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: String,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpamConf {
    #[serde(rename = "type", default)]
    ipam_type: String,
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    resolv_conf: Option<PathBuf>,
}

/// One contiguous allocation range inside a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    pub gateway: Option<IpAddr>,
}

impl Range {
    fn from_raw(raw: &RawRange) -> Result<Range, IpamError> {
        let subnet: IpNet = raw
            .subnet
            .parse()
            .map_err(|_| IpamError::InvalidConfig(format!("invalid subnet {:?}", raw.subnet)))?;
        // The subnet is a network, not an address in it: 10.0.0.5/24 means 10.0.0.0/24.
        let subnet = subnet.trunc();
        let (first, last) = usable_bounds(&subnet)?;
        let range_start = raw.range_start.unwrap_or(first);
        let range_end = raw.range_end.unwrap_or(last);
        for (what, ip) in [("rangeStart", range_start), ("rangeEnd", range_end)] {
            if !subnet.contains(&ip)
                || ip_to_u128(ip) < ip_to_u128(first)
                || ip_to_u128(ip) > ip_to_u128(last)
            {
                return Err(IpamError::InvalidConfig(format!(
                    "{what} {ip} is not a usable address of {subnet}"
                )));
            }
        }
        if ip_to_u128(range_start) > ip_to_u128(range_end) {
            return Err(IpamError::InvalidConfig(format!(
                "rangeStart {range_start} is after rangeEnd {range_end}"
            )));
        }
        // host-local defaults the gateway to the first usable address of the subnet.
        let gateway = Some(raw.gateway.unwrap_or(first));
        if let Some(gw) = gateway {
            if !subnet.contains(&gw) {
                return Err(IpamError::InvalidConfig(format!(
                    "gateway {gw} is not in {subnet}"
                )));
            }
        }
        Ok(Range {
            subnet,
            range_start,
            range_end,
            gateway,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let v = ip_to_u128(ip);
        self.subnet.contains(&ip)
            && v >= ip_to_u128(self.range_start)
            && v <= ip_to_u128(self.range_end)
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.subnet.contains(&other.subnet.network())
            || other.subnet.contains(&self.subnet.network())
    }
}

/// First and last assignable address: the network address and (for IPv4) the broadcast
/// address are never handed out. /31 and /32 use every address, per RFC 3021.
fn usable_bounds(subnet: &IpNet) -> Result<(IpAddr, IpAddr), IpamError> {
    let net = ip_to_u128(subnet.network());
    let bcast = ip_to_u128(subnet.broadcast());
    let (first, last) = match subnet {
        IpNet::V4(n) if n.prefix_len() >= 31 => (net, bcast),
        IpNet::V4(_) => (net + 1, bcast - 1),
        IpNet::V6(n) if n.prefix_len() >= 127 => (net, bcast),
        IpNet::V6(_) => (net + 1, bcast),
    };
    if first > last {
        return Err(IpamError::InvalidConfig(format!(
            "subnet {subnet} has no usable addresses"
        )));
    }
    let family = subnet.network();
    Ok((u128_to_ip(first, family), u128_to_ip(last, family)))
}

/// A set of ranges one address is taken from (the inner array of `ranges`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| r.contains(ip))
    }

    fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// The reference plugin prints range sets as "start-end,start-end".
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|r| format!("{}-{}", r.range_start, r.range_end))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Next address after `ip` inside the set, wrapping to the first range.
    fn next_after(&self, ip: IpAddr) -> IpAddr {
        for (i, r) in self.0.iter().enumerate() {
            if r.contains(ip) {
                if ip == r.range_end {
                    return self.0[(i + 1) % self.0.len()].range_start;
                }
                return u128_to_ip(ip_to_u128(ip) + 1, ip);
            }
        }
        self.0[0].range_start
    }

    fn size(&self) -> u128 {
        self.0
            .iter()
            .map(|r| ip_to_u128(r.range_end) - ip_to_u128(r.range_start) + 1)
            .sum()
    }
}

/// A validated host-local IPAM configuration.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub ipam_type: String,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

impl IpamConfig {
    /// Parses the `ipam` object of network `network_name`.
    pub fn parse(network_name: &str, ipam: &Value) -> Result<IpamConfig, IpamError> {
        let raw: RawIpamConf = serde_json::from_value(ipam.clone())
            .map_err(|e| IpamError::InvalidConfig(e.to_string()))?;
        let mut raw_sets = raw.ranges.clone();
        if let Some(subnet) = &raw.subnet {
            // The pre-`ranges` form: one range at top level, placed first like host-local.
            raw_sets.insert(
                0,
                vec![RawRange {
                    subnet: subnet.clone(),
                    range_start: raw.range_start,
                    range_end: raw.range_end,
                    gateway: raw.gateway,
                }],
            );
        }
        if raw_sets.is_empty() {
            return Err(IpamError::InvalidConfig("no IP ranges specified".into()));
        }
        let mut range_sets = Vec::new();
        for raw_set in &raw_sets {
            if raw_set.is_empty() {
                return Err(IpamError::InvalidConfig("empty range set".into()));
            }
            let set = raw_set
                .iter()
                .map(Range::from_raw)
                .collect::<Result<Vec<_>, _>>()?;
            let v4 = set[0].subnet.network().is_ipv4();
            if set.iter().any(|r| r.subnet.network().is_ipv4() != v4) {
                return Err(IpamError::InvalidConfig(
                    "a range set mixes IPv4 and IPv6".into(),
                ));
            }
            range_sets.push(RangeSet(set));
        }
        let all: Vec<&Range> = range_sets.iter().flat_map(|s| s.0.iter()).collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.overlaps(b) {
                    return Err(IpamError::InvalidConfig(format!(
                        "ranges {} and {} overlap",
                        a.subnet, b.subnet
                    )));
                }
            }
        }
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
            .join(network_name);
        Ok(IpamConfig {
            ipam_type: raw.ipam_type,
            range_sets,
            routes: raw.routes,
            data_dir,
            resolv_conf: raw.resolv_conf,
        })
    }

    /// Reads nameservers, domain, search and options from `resolvConf`, when set.
    pub fn dns(&self) -> Dns {
        let Some(path) = &self.resolv_conf else {
            return Dns::default();
        };
        let Ok(text) = fs::read_to_string(path) else {
            return Dns::default();
        };
        let mut dns = Dns::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => dns.nameservers.extend(words.next().map(String::from)),
                Some("domain") => dns.domain = words.next().map(String::from),
                Some("search") => dns.search = words.map(String::from).collect(),
                Some("options") => dns.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        dns
    }
}

// ---------------------------------------------------------------------------------
// Store

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

// ---------------------------------------------------------------------------------
// Allocation

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
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(ipam: Value) -> IpamConfig {
        IpamConfig::parse("net", &ipam).unwrap()
    }

    #[test]
    fn defaults_follow_host_local() {
        let c = conf(json!({"type": "host-local", "subnet": "10.244.1.0/29"}));
        let r = &c.range_sets[0].0[0];
        assert_eq!(r.range_start.to_string(), "10.244.1.1");
        assert_eq!(r.range_end.to_string(), "10.244.1.6");
        assert_eq!(r.gateway.unwrap().to_string(), "10.244.1.1");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/networks/net"));
    }

    #[test]
    fn bad_configs_are_rejected() {
        for bad in [
            json!({"subnet": "10.0.0.0/33"}),
            json!({"subnet": "nonsense"}),
            json!({}),
            json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}),
            json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}),
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}),
            json!({"ranges": [[]]}),
        ] {
            assert!(IpamConfig::parse("n", &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_robin_skips_gateway_and_exhausts_a_slash_29() {
        let store = MemStore::new();
        let c = conf(json!({"subnet": "10.244.1.0/29"}));
        let mut got = Vec::new();
        for i in 0..5 {
            let a = allocate(&store, &c, &format!("c{i}"), "eth0", &[]).unwrap();
            got.push(a[0].address.to_string());
            assert_eq!(a[0].gateway.unwrap().to_string(), "10.244.1.1");
        }
        assert_eq!(
            got,
            [
                "10.244.1.2/29",
                "10.244.1.3/29",
                "10.244.1.4/29",
                "10.244.1.5/29",
                "10.244.1.6/29"
            ]
        );
        let err = allocate(&store, &c, "c9", "eth0", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to allocate for range 0: no IP addresses available in range set: 10.244.1.1-10.244.1.6"
        );
        // Released addresses are reused only after the rest of the range.
        release(&store, "c1", "eth0").unwrap();
        let a = allocate(&store, &c, "c9", "eth0", &[]).unwrap();
        assert_eq!(a[0].address.to_string(), "10.244.1.3/29");
    }

    #[test]
    fn repeated_add_returns_the_same_address() {
        let store = MemStore::new();
        let c = conf(json!({"subnet": "10.244.2.0/24"}));
        let a = allocate(&store, &c, "c", "eth0", &[]).unwrap();
        let b = allocate(&store, &c, "c", "eth0", &[]).unwrap();
        assert_eq!(a, b);
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn multiple_range_sets_and_requested_ip() {
        let store = MemStore::new();
        let c = conf(json!({"ranges": [
            [{"subnet": "10.244.3.0/24", "rangeStart": "10.244.3.10", "rangeEnd": "10.244.3.20"}],
            [{"subnet": "fd00::/120"}]
        ]}));
        let a = allocate(&store, &c, "c", "eth0", &["10.244.3.15".parse().unwrap()]).unwrap();
        assert_eq!(a[0].address.to_string(), "10.244.3.15/24");
        assert_eq!(a[1].address.to_string(), "fd00::2/120");
        let err = allocate(&store, &c, "d", "eth0", &["10.244.3.15".parse().unwrap()]).unwrap_err();
        assert!(matches!(err, IpamError::AlreadyAllocated { .. }));
        // The failed call released what it took in the second set.
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let store = MemStore::new();
        let c = conf(json!({"subnet": "10.244.4.0/24"}));
        allocate(&store, &c, "keep", "eth0", &[]).unwrap();
        allocate(&store, &c, "drop", "eth0", &[]).unwrap();
        let released = garbage_collect(&store, &[("keep".into(), "eth0".into())]).unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(store.list().unwrap()[0].container_id, "keep");
    }

    #[test]
    fn disk_store_uses_host_local_layout() {
        let dir = tempfile::tempdir().unwrap();
        let c = conf(json!({"subnet": "10.244.5.0/24", "dataDir": dir.path()}));
        let store = DiskStore::open(&c.data_dir).unwrap();
        let a = allocate(&store, &c, "abc", "eth0", &[]).unwrap();
        let ip = a[0].address.addr().to_string();
        assert_eq!(
            fs::read_to_string(c.data_dir.join(&ip)).unwrap(),
            "abc\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(c.data_dir.join("last_reserved_ip.0")).unwrap(),
            ip
        );
        assert!(c.data_dir.join("lock").exists());
        assert_eq!(release(&store, "abc", "eth0").unwrap().len(), 1);
        assert_eq!(release(&store, "abc", "eth0").unwrap().len(), 0);
        assert!(!c.data_dir.join(&ip).exists());
    }
}
