//! Addresses for the attachment: the IPAM the configuration selects (host-local
//! built in, or a delegated plugin binary) and the ADD and DEL calls into it.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;

use super::BUILTIN_IPAM;
use crate::exec::{exec_plugin, find_plugin, Invocation};
use crate::ipam::{self, DiskStore, IpamConfig};
use crate::skel::{CmdArgs, Command};
use crate::spec::{code, CniError, CniResult, IpConfig};

/// Which IPAM the configuration selects.
pub(super) enum Ipam {
    None,
    Builtin(IpamConfig),
    Delegate(PathBuf),
}

pub(super) fn select_ipam(args: &CmdArgs) -> Result<Ipam, CniError> {
    let Some(raw) = &args.conf.ipam else {
        return Ok(Ipam::None);
    };
    let ipam_type = raw.get("type").and_then(Value::as_str).unwrap_or_default();
    if ipam_type.is_empty() {
        return Err(CniError::invalid_config("ipam has no type"));
    }
    if BUILTIN_IPAM.contains(&ipam_type) {
        return Ok(Ipam::Builtin(IpamConfig::parse(&args.conf.name, raw)?));
    }
    Ok(Ipam::Delegate(find_plugin(ipam_type, &args.path)?))
}

pub(super) fn invocation(args: &CmdArgs) -> Invocation {
    Invocation {
        container_id: args.container_id.clone(),
        netns: args.netns.clone(),
        ifname: args.ifname.clone(),
        args: args.args.clone(),
        path: args.path.clone(),
    }
}

/// Addresses the runtime asked for: `CNI_ARGS` `IP=a,b` and the `ips` capability.
fn requested_ips(args: &CmdArgs) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Some(list) = args.cni_args().get("IP") {
        out.extend(
            list.split(',')
                .filter_map(|s| s.trim().parse::<IpAddr>().ok()),
        );
    }
    if let Some(ips) = args
        .conf
        .runtime_config
        .as_ref()
        .and_then(|r| r.get("ips"))
        .and_then(Value::as_array)
    {
        for ip in ips.iter().filter_map(Value::as_str) {
            let addr = ip.split('/').next().unwrap_or(ip);
            out.extend(addr.parse::<IpAddr>().ok());
        }
    }
    out
}

/// Runs IPAM ADD, returning addresses, routes and DNS as a partial result.
pub(super) fn ipam_add(args: &CmdArgs, ipam: &Ipam) -> Result<CniResult, CniError> {
    match ipam {
        Ipam::None => Ok(CniResult::default()),
        Ipam::Builtin(config) => {
            let store = DiskStore::open(&config.data_dir)?;
            let allocs = ipam::allocate(
                &store,
                config,
                &args.container_id,
                &args.ifname,
                &requested_ips(args),
            )?;
            let mut routes = config.routes.clone();
            // Routes without a gateway go via the gateway of their address family.
            for route in routes.iter_mut().filter(|r| r.gw.is_none()) {
                route.gw = allocs
                    .iter()
                    .find(|a| a.address.addr().is_ipv4() == route.dst.addr().is_ipv4())
                    .and_then(|a| a.gateway);
            }
            Ok(CniResult {
                cni_version: args.conf.cni_version.clone(),
                interfaces: Vec::new(),
                ips: allocs
                    .into_iter()
                    .map(|a| IpConfig {
                        address: a.address,
                        gateway: a.gateway,
                        interface: None,
                    })
                    .collect(),
                routes,
                dns: config.dns(),
            })
        }
        Ipam::Delegate(plugin) => {
            let out = exec_plugin(plugin, Command::Add, &invocation(args), &args.stdin)?;
            let value: Value = serde_json::from_slice(&out).map_err(|e| {
                CniError::new(
                    code::DECODE_FAILURE,
                    format!("IPAM plugin returned an undecodable result: {e}"),
                )
            })?;
            CniResult::from_value(&value)
        }
    }
}

pub(super) fn ipam_del(args: &CmdArgs, ipam: &Ipam) -> Result<(), CniError> {
    match ipam {
        Ipam::None => Ok(()),
        Ipam::Builtin(config) => {
            let store = DiskStore::open(&config.data_dir)?;
            ipam::release(&store, &args.container_id, &args.ifname)?;
            Ok(())
        }
        Ipam::Delegate(plugin) => {
            exec_plugin(plugin, Command::Del, &invocation(args), &args.stdin).map(|_| ())
        }
    }
}
