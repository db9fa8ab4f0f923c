//! The container side: the veth end, its addresses and routes, and `lo`, set up and
//! torn down inside the pod's network namespace.

use std::path::Path;

use super::{nl_err, ns_err};
use crate::netlink::{LinkOps, Netlink};
use crate::ns::{NetNs, NsError};
use crate::spec::{CniError, CniResult};

/// Container-side state read back after setup.
pub(super) struct ContainerSide {
    pub(super) mac: String,
}

/// Creates the veth pair from inside the pod netns (container end `ifname`, host end
/// `host_name` placed in the host namespace), configures addresses and routes.
pub(super) fn setup_container_side(
    netns: &NetNs,
    host_ns: &NetNs,
    ifname: &str,
    host_name: &str,
    mtu: Option<u32>,
    result: &CniResult,
) -> Result<ContainerSide, CniError> {
    let host_fd = std::os::fd::AsRawFd::as_raw_fd(host_ns.file());
    netns
        .run(|| -> Result<ContainerSide, CniError> {
            let mut nl = Netlink::open().map_err(nl_err("open netlink in netns"))?;
            setup_container_iface(&mut nl, ifname, host_name, mtu, Some(host_fd), result)
        })
        .map_err(ns_err)?
}

/// Inside the pod netns: creates the veth pair (its peer `host_name` goes to the
/// namespace `host_fd`), adds the addresses, brings the interface and lo up, and adds
/// the routes.
pub(super) fn setup_container_iface(
    nl: &mut impl LinkOps,
    ifname: &str,
    host_name: &str,
    mtu: Option<u32>,
    host_fd: Option<std::os::fd::RawFd>,
    result: &CniResult,
) -> Result<ContainerSide, CniError> {
    if nl
        .link_by_name(ifname)
        .map_err(nl_err("look up container interface"))?
        .is_some()
    {
        return Err(CniError::internal(format!(
            "container interface {ifname} already exists"
        )));
    }
    nl.create_veth(ifname, host_name, mtu, host_fd)
        .map_err(nl_err("create veth pair"))?;
    let link = nl
        .link_by_name(ifname)
        .map_err(nl_err("look up container interface"))?
        .ok_or_else(|| CniError::internal(format!("container interface {ifname} vanished")))?;
    for ip in &result.ips {
        nl.add_address(link.index, ip.address)
            .map_err(nl_err("add container address"))?;
    }
    nl.set_up(link.index)
        .map_err(nl_err("bring container interface up"))?;
    if let Some(lo) = nl.link_by_name("lo").map_err(nl_err("look up lo"))? {
        if !lo.up {
            nl.set_up(lo.index).map_err(nl_err("bring lo up"))?;
        }
    }
    for route in &result.routes {
        nl.add_route(route.dst, route.gw, link.index, route.mtu)
            .map_err(nl_err("add container route"))?;
    }
    Ok(ContainerSide { mac: link.mac })
}

/// Deletes the container interface if the netns and the link still exist.
pub(super) fn teardown_container_side(netns_path: &str, ifname: &str) -> Result<(), CniError> {
    if netns_path.is_empty() {
        return Ok(());
    }
    let netns = match NetNs::open(Path::new(netns_path)) {
        Ok(ns) => ns,
        Err(NsError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(ns_err(e)),
    };
    netns
        .run(|| -> Result<(), CniError> {
            let mut nl = Netlink::open().map_err(nl_err("open netlink in netns"))?;
            if let Some(link) = nl
                .link_by_name(ifname)
                .map_err(nl_err("look up container interface"))?
            {
                match nl.delete_link(link.index) {
                    Err(e) if !e.is_not_found() => {
                        return Err(nl_err("delete container interface")(e))
                    }
                    _ => {}
                }
            }
            Ok(())
        })
        .map_err(ns_err)?
}
