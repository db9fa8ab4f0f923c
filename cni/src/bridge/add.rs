//! ADD: the steps in the order of the module diagram, and the rollback that undoes
//! them when a later step fails.

use std::path::Path;

use ipnet::IpNet;
use tracing::debug;

use super::address::{ipam_add, ipam_del, Ipam};
use super::container::{setup_container_side, teardown_container_side};
use super::host::{ensure_bridge, random_suffix, write_sysfs};
use super::{nl_err, ns_err, BridgeConf, BridgePlugin};
use crate::masq::{self, Backend};
use crate::netlink::Netlink;
use crate::ns::NetNs;
use crate::skel::CmdArgs;
use crate::spec::{CniError, CniResult, Interface, Route};

/// Rolls an ADD back: everything here tolerates parts that were never created.
pub(super) fn rollback(
    args: &CmdArgs,
    ipam: &Ipam,
    conf: &BridgeConf,
    masq_backend: Option<&Backend>,
) {
    let _ = teardown_container_side(&args.netns, &args.ifname);
    let _ = ipam_del(args, ipam);
    if let (true, Some(backend)) = (conf.ip_masq, masq_backend) {
        let _ = masq::teardown_masquerade(
            backend,
            &masq::attachment_tag(&args.conf.name, &args.container_id, &args.ifname),
        );
    }
}

impl BridgePlugin {
    pub(super) fn add_inner(
        &self,
        args: &CmdArgs,
        conf: &BridgeConf,
        ipam: &Ipam,
    ) -> Result<CniResult, CniError> {
        let netns = NetNs::open(Path::new(&args.netns)).map_err(ns_err)?;
        let host_ns = NetNs::open(Path::new("/proc/thread-self/ns/net")).map_err(ns_err)?;
        let mut nl = Netlink::open().map_err(nl_err("open netlink"))?;
        let bridge = ensure_bridge(&mut nl, conf)?;

        let mut result = ipam_add(args, ipam)?;
        if matches!(ipam, Ipam::None) {
            result.cni_version = args.conf.cni_version.clone();
        }
        if conf.is_default_gateway {
            for ip in result.ips.clone() {
                let Some(gw) = ip.gateway else { continue };
                let default: IpNet = if gw.is_ipv4() {
                    "0.0.0.0/0".parse().unwrap()
                } else {
                    "::/0".parse().unwrap()
                };
                if !result.routes.iter().any(|r| r.dst == default) {
                    result.routes.push(Route::new(default, Some(gw)));
                }
            }
        }

        let host_name = format!("veth{}", random_suffix());
        let container = setup_container_side(
            &netns,
            &host_ns,
            &args.ifname,
            &host_name,
            conf.mtu,
            &result,
        )?;
        let host = nl
            .link_by_name(&host_name)
            .map_err(nl_err("look up host veth"))?
            .ok_or_else(|| {
                CniError::internal(format!("host veth {host_name} not found after creation"))
            })?;
        nl.set_controller(host.index, bridge.index)
            .map_err(nl_err("attach host veth to bridge"))?;
        nl.set_up(host.index)
            .map_err(nl_err("bring host veth up"))?;
        if conf.hairpin_mode {
            nl.set_hairpin(host.index, true)
                .map_err(nl_err("set hairpin mode on the host veth"))?;
        }

        if conf.is_gateway {
            for ip in &result.ips {
                let Some(gw) = ip.gateway else { continue };
                let gw_net = IpNet::new(gw, ip.address.prefix_len())
                    .map_err(|e| CniError::internal(e.to_string()))?;
                nl.add_address(bridge.index, gw_net)
                    .map_err(nl_err("add gateway address to bridge"))?;
                let key = if gw.is_ipv4() {
                    "/proc/sys/net/ipv4/ip_forward"
                } else {
                    "/proc/sys/net/ipv6/conf/all/forwarding"
                };
                if std::fs::read_to_string(key)
                    .map(|v| v.trim() != "1")
                    .unwrap_or(true)
                {
                    write_sysfs(key, "1")?;
                }
            }
        }
        if conf.ip_masq {
            let backend = self.masq_backend.as_ref().ok_or_else(|| {
                CniError::internal("ipMasq needs nft or iptables, neither is installed")
            })?;
            let tag = masq::attachment_tag(&args.conf.name, &args.container_id, &args.ifname);
            let ips: Vec<IpNet> = result.ips.iter().map(|i| i.address).collect();
            masq::setup_masquerade(backend, &tag, &ips)
                .map_err(|e| CniError::internal(e.to_string()))?;
        }

        // Bridge MAC is read last: it follows the lowest port MAC until set explicitly.
        let bridge_now = nl
            .link_by_index(bridge.index)
            .map_err(nl_err("look up bridge"))?
            .unwrap_or(bridge);
        result.interfaces = vec![
            Interface {
                name: bridge_now.name.clone(),
                mac: bridge_now.mac.clone(),
                ..Default::default()
            },
            Interface {
                name: host_name.clone(),
                mac: host.mac.clone(),
                ..Default::default()
            },
            Interface {
                name: args.ifname.clone(),
                mac: container.mac,
                sandbox: args.netns.clone(),
                ..Default::default()
            },
        ];
        for ip in result.ips.iter_mut() {
            ip.interface = Some(2);
        }
        debug!(container = %args.container_id, ifname = %args.ifname, host_veth = %host_name, "attached");
        Ok(result)
    }
}
