//! The `podrun-bridge` plugin: a Linux bridge on the host, one veth pair per
//! attachment (container end named `CNI_IFNAME` inside the pod netns, host end on the
//! bridge), addresses and routes from IPAM, the gateway address on the bridge, and
//! masquerading for egress.
//!
//! ADD order, with each step undone if a later one fails:
//! ```text
//! ensure_bridge -> IPAM allocate -> setup_veth (in netns) -> attach host end
//!   -> addresses + routes (in netns) -> gateway on bridge -> masquerade
//! ```
//! DEL runs the reverse and treats anything already gone as done.

use std::path::Path;

use tracing::info;

use crate::exec::exec_plugin;
use crate::ipam::{self, DiskStore};
use crate::masq::{self, Backend};
use crate::netlink::{Netlink, NetlinkError};
use crate::ns::{NetNs, NsError};
use crate::skel::{CmdArgs, Command, Plugin};
use crate::spec::{code, Attachment, CniError, CniResult, VALID_ATTACHMENTS_KEY};

mod add;
mod address;
mod conf;
mod container;
mod host;

use add::rollback;
use address::{invocation, ipam_del, select_ipam, Ipam};
pub use conf::BridgeConf;
use container::teardown_container_side;
pub use host::ensure_bridge;

/// The IPAM types handled inside the plugin instead of by executing a binary.
pub const BUILTIN_IPAM: &[&str] = &["host-local", "podrun-host-local"];

fn nl_err(step: &str) -> impl Fn(NetlinkError) -> CniError + '_ {
    move |e| CniError::internal(format!("{step}: {e}"))
}

fn ns_err(e: NsError) -> CniError {
    match e {
        NsError::NotFound { .. } => CniError::new(code::UNKNOWN_CONTAINER, e.to_string()),
        _ => CniError::internal(e.to_string()),
    }
}

/// The bridge plugin. `masq_backend` is resolved once per run.
pub struct BridgePlugin {
    pub masq_backend: Option<Backend>,
}

impl Default for BridgePlugin {
    fn default() -> Self {
        BridgePlugin {
            masq_backend: Backend::detect(),
        }
    }
}

impl Plugin for BridgePlugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = BridgeConf::parse(&args.raw_conf())?;
        let ipam = select_ipam(args)?;
        match self.add_inner(args, &conf, &ipam) {
            Ok(r) => Ok(r),
            Err(e) => {
                rollback(args, &ipam, &conf, self.masq_backend.as_ref());
                Err(e)
            }
        }
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(&args.raw_conf())?;
        // A missing IPAM plugin on DEL would block cleanup forever; warn-free release
        // of what podrun owns still happens.
        let ipam = select_ipam(args)?;
        ipam_del(args, &ipam)?;
        teardown_container_side(&args.netns, &args.ifname)?;
        if conf.ip_masq {
            if let Some(backend) = &self.masq_backend {
                let tag = masq::attachment_tag(&args.conf.name, &args.container_id, &args.ifname);
                masq::teardown_masquerade(backend, &tag)
                    .map_err(|e| CniError::internal(e.to_string()))?;
            }
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(&args.raw_conf())?;
        let prev = args
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| CniError::invalid_config("CHECK needs prevResult"))?;
        let prev = CniResult::from_value(prev)?;
        let ipam = select_ipam(args)?;
        match &ipam {
            Ipam::Builtin(config) => {
                let store = DiskStore::open(&config.data_dir)?;
                let held =
                    crate::ipam::IpamStore::get_by_id(&store, &args.container_id, &args.ifname)?;
                for ip in &prev.ips {
                    if !held.contains(&ip.address.addr()) {
                        return Err(CniError::internal(format!(
                            "address {} is not reserved for this container",
                            ip.address
                        )));
                    }
                }
            }
            Ipam::Delegate(plugin) => {
                exec_plugin(plugin, Command::Check, &invocation(args), &args.stdin)?;
            }
            Ipam::None => {}
        }
        let mut nl = Netlink::open().map_err(nl_err("open netlink"))?;
        let bridge = nl
            .link_by_name(&conf.bridge)
            .map_err(nl_err("look up bridge"))?
            .ok_or_else(|| CniError::internal(format!("bridge {} does not exist", conf.bridge)))?;
        for iface in prev
            .interfaces
            .iter()
            .filter(|i| i.sandbox.is_empty() && i.name != conf.bridge)
        {
            let host = nl
                .link_by_name(&iface.name)
                .map_err(nl_err("look up host veth"))?
                .ok_or_else(|| {
                    CniError::internal(format!("host veth {} does not exist", iface.name))
                })?;
            if host.controller != Some(bridge.index) {
                return Err(CniError::internal(format!(
                    "host veth {} is not attached to {}",
                    iface.name, conf.bridge
                )));
            }
        }
        let netns = NetNs::open(Path::new(&args.netns)).map_err(ns_err)?;
        let ifname = args.ifname.clone();
        let expected = prev.clone();
        netns
            .run(move || -> Result<(), CniError> {
                let mut nl = Netlink::open().map_err(nl_err("open netlink in netns"))?;
                let link = nl
                    .link_by_name(&ifname)
                    .map_err(nl_err("look up container interface"))?
                    .ok_or_else(|| {
                        CniError::internal(format!("container interface {ifname} does not exist"))
                    })?;
                if link.kind.as_deref() != Some("veth") {
                    return Err(CniError::internal(format!("{ifname} is not a veth")));
                }
                if let Some(iface) = expected
                    .interfaces
                    .iter()
                    .find(|i| i.name == ifname && !i.mac.is_empty())
                {
                    if !iface.mac.eq_ignore_ascii_case(&link.mac) {
                        return Err(CniError::internal(format!(
                            "{ifname} has MAC {} not {}",
                            link.mac, iface.mac
                        )));
                    }
                }
                let addrs = nl
                    .addresses(Some(link.index))
                    .map_err(nl_err("list addresses"))?;
                for ip in &expected.ips {
                    if !addrs.iter().any(|a| a.address == ip.address) {
                        return Err(CniError::internal(format!(
                            "{ifname} lacks address {}",
                            ip.address
                        )));
                    }
                }
                for route in &expected.routes {
                    let routes = nl
                        .routes(route.dst.addr().is_ipv6())
                        .map_err(nl_err("list routes"))?;
                    if !routes.iter().any(|r| {
                        r.dst == route.dst && (route.gw.is_none() || r.gateway == route.gw)
                    }) {
                        return Err(CniError::internal(format!(
                            "route to {} is missing",
                            route.dst
                        )));
                    }
                }
                Ok(())
            })
            .map_err(ns_err)??;
        if conf.ip_masq {
            if let Some(backend) = &self.masq_backend {
                let tag = masq::attachment_tag(&args.conf.name, &args.container_id, &args.ifname);
                if !masq::has_masquerade(backend, &tag) {
                    return Err(CniError::internal("masquerade rules are missing"));
                }
            }
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(&args.raw_conf())?;
        let valid: Vec<Attachment> = match args.raw_conf().get(VALID_ATTACHMENTS_KEY) {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                CniError::invalid_config(format!("invalid {VALID_ATTACHMENTS_KEY}: {e}"))
            })?,
            None => Vec::new(),
        };
        match select_ipam(args)? {
            Ipam::Builtin(config) => {
                let store = DiskStore::open(&config.data_dir)?;
                let keep: Vec<(String, String)> = valid
                    .iter()
                    .map(|a| (a.container_id.clone(), a.ifname.clone()))
                    .collect();
                let released = ipam::garbage_collect(&store, &keep)?;
                if !released.is_empty() {
                    info!(network = %args.conf.name, released = released.len(), "garbage collected reservations");
                }
            }
            Ipam::Delegate(plugin) => {
                exec_plugin(&plugin, Command::Gc, &invocation(args), &args.stdin)?;
            }
            Ipam::None => {}
        }
        if conf.ip_masq {
            if let Some(backend) = &self.masq_backend {
                let keep: Vec<String> = valid
                    .iter()
                    .map(|a| masq::attachment_tag(&args.conf.name, &a.container_id, &a.ifname))
                    .collect();
                masq::garbage_collect(backend, &args.conf.name, &keep)
                    .map_err(|e| CniError::internal(e.to_string()))?;
            }
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(&args.raw_conf())?;
        if conf.ip_masq && self.masq_backend.is_none() {
            return Err(CniError::new(
                code::PLUGIN_NOT_AVAILABLE,
                "ipMasq needs nft or iptables, neither is installed",
            ));
        }
        match select_ipam(args)? {
            Ipam::Builtin(config) => {
                DiskStore::open(&config.data_dir)
                    .map_err(|e| CniError::new(code::PLUGIN_NOT_AVAILABLE, e.to_string()))?;
            }
            Ipam::Delegate(plugin) => {
                exec_plugin(&plugin, Command::Status, &invocation(args), &args.stdin)?;
            }
            Ipam::None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
