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

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, info};

use crate::exec::{exec_plugin, find_plugin, Invocation};
use crate::ipam::{self, DiskStore, IpamConfig};
use crate::masq::{self, Backend};
use crate::netlink::{Link, LinkOps, Netlink, NetlinkError};
use crate::ns::{NetNs, NsError};
use crate::skel::{valid_ifname, CmdArgs, Command, Plugin};
use crate::spec::{
    code, Attachment, CniError, CniResult, Interface, IpConfig, Route, VALID_ATTACHMENTS_KEY,
};

/// The IPAM types handled inside the plugin instead of by executing a binary.
pub const BUILTIN_IPAM: &[&str] = &["host-local", "podrun-host-local"];

/// The bridge plugin's own configuration keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

impl BridgeConf {
    pub fn parse(raw: &Value) -> Result<BridgeConf, CniError> {
        let mut conf: BridgeConf = serde_json::from_value(raw.clone())
            .map_err(|e| CniError::invalid_config(format!("invalid bridge configuration: {e}")))?;
        if !valid_ifname(&conf.bridge) {
            return Err(CniError::invalid_config(format!(
                "invalid bridge name {:?}",
                conf.bridge
            )));
        }
        if let Some(mtu) = conf.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(CniError::invalid_config(format!("invalid mtu {mtu}")));
            }
        }
        // A default gateway needs the gateway address on the bridge.
        if conf.is_default_gateway {
            conf.is_gateway = true;
        }
        Ok(conf)
    }
}

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

/// Which IPAM the configuration selects.
enum Ipam {
    None,
    Builtin(IpamConfig),
    Delegate(PathBuf),
}

fn select_ipam(args: &CmdArgs) -> Result<Ipam, CniError> {
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

fn invocation(args: &CmdArgs) -> Invocation {
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
fn ipam_add(args: &CmdArgs, ipam: &Ipam) -> Result<CniResult, CniError> {
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

fn ipam_del(args: &CmdArgs, ipam: &Ipam) -> Result<(), CniError> {
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

/// Creates the bridge if missing (tolerating a concurrent creator), brings it up.
pub fn ensure_bridge(nl: &mut impl LinkOps, conf: &BridgeConf) -> Result<Link, CniError> {
    let link = match nl
        .link_by_name(&conf.bridge)
        .map_err(nl_err("look up bridge"))?
    {
        Some(link) => link,
        None => {
            match nl.create_bridge(&conf.bridge, conf.mtu) {
                Ok(()) => info!(bridge = %conf.bridge, "created bridge"),
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(nl_err("create bridge")(e)),
            }
            nl.link_by_name(&conf.bridge)
                .map_err(nl_err("look up bridge"))?
                .ok_or_else(|| {
                    CniError::internal(format!("bridge {} vanished after creation", conf.bridge))
                })?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(CniError::internal(format!(
            "{} already exists but is not a bridge",
            conf.bridge
        )));
    }
    if !link.up {
        nl.set_up(link.index).map_err(nl_err("bring bridge up"))?;
    }
    if conf.promisc_mode && !link.promisc {
        nl.set_promisc(link.index, true)
            .map_err(nl_err("set bridge promiscuous"))?;
    }
    Ok(link)
}

fn random_suffix() -> String {
    let mut buf = [0u8; 4];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        buf = (nanos ^ std::process::id()).to_ne_bytes();
    }
    hex::encode(buf)
}

/// Container-side state read back after setup.
struct ContainerSide {
    mac: String,
}

/// Creates the veth pair from inside the pod netns (container end `ifname`, host end
/// `host_name` placed in the host namespace), configures addresses and routes.
fn setup_container_side(
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
fn setup_container_iface(
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
fn teardown_container_side(netns_path: &str, ifname: &str) -> Result<(), CniError> {
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

fn write_sysfs(path: &str, value: &str) -> Result<(), CniError> {
    std::fs::write(path, value)
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("write {path}: {e}")))
}

/// Rolls an ADD back: everything here tolerates parts that were never created.
fn rollback(args: &CmdArgs, ipam: &Ipam, conf: &BridgeConf, masq_backend: Option<&Backend>) {
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
    fn add_inner(
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
            write_sysfs(
                &format!("/sys/class/net/{host_name}/brport/hairpin_mode"),
                "1",
            )?;
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
mod tests {
    use super::*;
    use crate::netlink::fake::FakeLinks;
    use serde_json::json;

    fn conf(v: Value) -> BridgeConf {
        BridgeConf::parse(&v).unwrap()
    }

    #[test]
    fn ensure_bridge_creates_once_and_reuses() {
        let mut nl = FakeLinks::new();
        let c = conf(json!({"bridge": "br9", "mtu": 1400, "promiscMode": true}));
        let first = ensure_bridge(&mut nl, &c).unwrap();
        let second = ensure_bridge(&mut nl, &c).unwrap();
        assert_eq!(first.index, second.index);
        let created = nl
            .calls
            .iter()
            .filter(|c| c.starts_with("create_bridge"))
            .count();
        assert_eq!(created, 1);
        let bridge = nl.links.iter().find(|l| l.name == "br9").unwrap();
        assert!(bridge.up && bridge.promisc);
        assert_eq!(bridge.mtu, 1400);
    }

    #[test]
    fn ensure_bridge_tolerates_a_concurrent_creator_and_rejects_non_bridges() {
        let mut nl = FakeLinks::new();
        nl.race_on_create = true;
        ensure_bridge(&mut nl, &conf(json!({"bridge": "br9"}))).unwrap();
        nl.push("eth9", Some("veth"));
        let err = ensure_bridge(&mut nl, &conf(json!({"bridge": "eth9"}))).unwrap_err();
        assert!(err.msg.contains("not a bridge"), "{}", err.msg);
    }

    #[test]
    fn container_iface_gets_addresses_routes_and_lo() {
        let mut nl = FakeLinks::new();
        let result = CniResult {
            ips: vec![IpConfig {
                address: "10.1.0.5/24".parse().unwrap(),
                gateway: None,
                interface: None,
            }],
            routes: vec![Route::new(
                "0.0.0.0/0".parse().unwrap(),
                Some("10.1.0.1".parse().unwrap()),
            )],
            ..Default::default()
        };
        let side =
            setup_container_iface(&mut nl, "eth0", "vethabc", Some(1450), None, &result).unwrap();
        let eth0 = nl.links.iter().find(|l| l.name == "eth0").unwrap().clone();
        assert_eq!(side.mac, eth0.mac);
        assert!(eth0.up);
        assert_eq!(eth0.mtu, 1450);
        assert!(nl.links.iter().find(|l| l.name == "lo").unwrap().up);
        assert_eq!(nl.addresses[0].address.to_string(), "10.1.0.5/24");
        assert_eq!(nl.routes[0].gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(nl.routes[0].oif, Some(eth0.index));
        // Addresses go on before the link comes up, routes after.
        let order: Vec<&str> = nl
            .calls
            .iter()
            .map(|c| c.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            order,
            [
                "create_veth",
                "add_address",
                "set_up",
                "set_up",
                "add_route"
            ]
        );
        // A second ADD for the same interface name is refused, not merged.
        assert!(setup_container_iface(&mut nl, "eth0", "vethdef", None, None, &result).is_err());
    }

    #[test]
    fn conf_defaults_and_validation() {
        let c = BridgeConf::parse(&json!({"isDefaultGateway": true})).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(c.is_gateway);
        assert!(BridgeConf::parse(&json!({"bridge": "this-name-is-too-long"})).is_err());
        assert!(BridgeConf::parse(&json!({"bridge": "a/b"})).is_err());
        assert!(BridgeConf::parse(&json!({"mtu": 10})).is_err());
        assert!(BridgeConf::parse(&json!({"ipMasq": "yes"})).is_err());
    }
}
