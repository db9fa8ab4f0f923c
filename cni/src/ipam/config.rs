//! The IPAM section of a network configuration: `ranges` (or the legacy top-level
//! `subnet`, `rangeStart`, `rangeEnd`, `gateway`), `routes`, `dataDir` and `resolvConf`,
//! validated into range sets.

use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::{ip_to_u128, u128_to_ip, IpamError, DEFAULT_DATA_DIR};
use crate::spec::{Dns, Route};

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

    pub(super) fn range_for(&self, ip: IpAddr) -> Option<&Range> {
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
    pub(super) fn next_after(&self, ip: IpAddr) -> IpAddr {
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

    pub(super) fn size(&self) -> u128 {
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
