//! A small synchronous rtnetlink client: just the link, address and route operations
//! the bridge plugin needs. A socket talks to the network namespace it was opened in,
//! so code that works inside a pod's netns opens its own [`Netlink`] on the namespace
//! thread (see [`crate::ns`]).

use std::net::IpAddr;
use std::os::fd::RawFd;

use ipnet::IpNet;
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    LinkProtoInfoBridge,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("failed to open netlink socket: {0}")]
    Open(std::io::Error),
    #[error("netlink {op} failed: {source}")]
    Request {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("netlink {op}: undecodable reply: {detail}")]
    Decode { op: &'static str, detail: String },
}

impl NetlinkError {
    /// The errno the kernel answered with, if the failure came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH)
        )
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// What the plugin needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: String,
    pub up: bool,
    pub promisc: bool,
    pub controller: Option<u32>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mtu: 0,
            mac: String::new(),
            up: msg.header.flags.contains(LinkFlags::Up),
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            controller: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Address(a) => link.mac = format_mac(a),
                LinkAttribute::Controller(c) if *c != 0 => link.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub address: IpNet,
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// Who installed it (`proto` in `ip route`): the kernel, boot, or a program's own
    /// number, by which it finds its routes again.
    pub protocol: u8,
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One rtnetlink socket in the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket.bind_auto().map_err(NetlinkError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Open)?;
        // Extended acks give the kernel's reason in errors; best effort.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends one request and collects every inner message until the ack or the end of
    /// the dump.
    fn request(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        // Non-dump requests always ask for an ack, so the reply loop has an end even
        // for GET requests that answer with a single message.
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|source| NetlinkError::Request { op, source })?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|source| NetlinkError::Request { op, source })?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| NetlinkError::Decode {
                        op,
                        detail: e.to_string(),
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(NetlinkError::Decode {
                        op,
                        detail: "zero-length message".into(),
                    });
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(err) => {
                        if err.code.is_none() {
                            if !dump {
                                return Ok(out);
                            }
                            continue;
                        }
                        return Err(NetlinkError::Request {
                            op,
                            source: err.to_io(),
                        });
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                    }
                    _ => {}
                }
            }
        }
    }

    // ---- links ----

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.request(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, or None when there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request("get link", RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request("get link", RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge; EEXIST is reported so the caller can decide.
    pub fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            "create bridge",
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Creates a dummy link (an address of the host's own that no wire carries);
    /// EEXIST is reported so the caller can decide.
    pub fn create_dummy(&mut self, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        self.request(
            "create dummy link",
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Creates a veth pair `name` (here) and `peer_name`, the peer going straight into
    /// the namespace `peer_netns_fd` when given.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        mtu: Option<u32>,
        peer_netns_fd: Option<RawFd>,
    ) -> Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        if let Some(mtu) = mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(fd) = peer_netns_fd {
            peer.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            "create veth",
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    fn set_link(
        &mut self,
        op: &'static str,
        index: u32,
        edit: impl FnOnce(&mut LinkMessage),
    ) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        edit(&mut msg);
        self.request(op, RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)?;
        Ok(())
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_link("set link up", index, |m| {
            m.header.flags |= LinkFlags::Up;
            m.header.change_mask |= LinkFlags::Up;
        })
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<()> {
        self.set_link("set promisc", index, |m| {
            if on {
                m.header.flags |= LinkFlags::Promisc;
            }
            m.header.change_mask |= LinkFlags::Promisc;
        })
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.set_link("set mtu", index, |m| {
            m.attributes.push(LinkAttribute::Mtu(mtu))
        })
    }

    pub fn set_controller(&mut self, index: u32, controller: u32) -> Result<()> {
        self.set_link("attach to bridge", index, |m| {
            m.attributes.push(LinkAttribute::Controller(controller))
        })
    }

    /// Hairpin mode on a bridge port (traffic may leave by the port it came in on), set
    /// over netlink as `bridge link set hairpin on` does: an AF_BRIDGE RTM_SETLINK with
    /// IFLA_BRPORT_MODE in IFLA_PROTINFO. Unlike sysfs, this needs no /sys of the
    /// namespace the port lives in.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        /// IFLA_BRPORT_MODE of linux/if_link.h.
        const IFLA_BRPORT_MODE: u16 = 4;
        self.set_link("set hairpin mode", index, |m| {
            m.header.interface_family = AddressFamily::Bridge;
            m.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
                LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(on)])),
            ]));
        })
    }

    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request("delete link", RouteNetlinkMessage::DelLink(msg), NLM_F_ACK)?;
        Ok(())
    }

    // ---- addresses ----

    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>> {
        let replies = self.request(
            "list addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            // IFA_LOCAL is the interface's own address on point-to-point links; use
            // IFA_ADDRESS otherwise.
            let mut addr = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = addr {
                if let Ok(net) = IpNet::new(ip, a.header.prefix_len) {
                    out.push(Address {
                        index: a.header.index,
                        address: net,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Adds an address; an identical existing address is fine.
    pub fn add_address(&mut self, index: u32, address: IpNet) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(address.addr());
        msg.header.prefix_len = address.prefix_len();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(address.addr()));
        msg.attributes
            .push(AddressAttribute::Address(address.addr()));
        if let IpNet::V4(v4) = address {
            msg.attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
        match self.request(
            "add address",
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.is_exists() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Removes an address; one already gone is fine.
    pub fn delete_address(&mut self, index: u32, address: IpNet) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(address.addr());
        msg.header.prefix_len = address.prefix_len();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(address.addr()));
        match self.request(
            "delete address",
            RouteNetlinkMessage::DelAddress(msg),
            NLM_F_ACK,
        ) {
            Err(e) if e.is_not_found() || e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    // ---- routes ----

    pub fn routes(&mut self, v6: bool) -> Result<Vec<RouteEntry>> {
        let mut req = RouteMessage::default();
        req.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self.request(
            "list routes",
            RouteNetlinkMessage::GetRoute(req),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let mut dst = None;
            let mut gateway = None;
            let mut oif = None;
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Destination(a) => dst = route_addr(a),
                    RouteAttribute::Gateway(a) => gateway = route_addr(a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let zero: IpAddr = if v6 {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            };
            let Ok(dst) = IpNet::new(dst.unwrap_or(zero), r.header.destination_prefix_length)
            else {
                continue;
            };
            out.push(RouteEntry {
                dst,
                gateway,
                oif,
                protocol: r.header.protocol.into(),
            });
        }
        Ok(out)
    }

    /// Adds a route in the main table; an identical existing route is fine.
    pub fn add_route(
        &mut self,
        dst: IpNet,
        gateway: Option<IpAddr>,
        oif: u32,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(dst.addr());
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    dst.network(),
                )));
        }
        if let Some(gw) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        if let Some(mtu) = mtu {
            msg.attributes.push(RouteAttribute::Metrics(vec![
                netlink_packet_route::route::RouteMetric::Mtu(mtu),
            ]));
        }
        match self.request(
            "add route",
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.is_exists() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

impl Netlink {
    /// Adds (or replaces) a unicast route in the main table tagged with `protocol`:
    /// through `gateway`, out of `oif` when given; `onlink` says the gateway is on the
    /// link even though no address of the link's subnet covers it.
    pub fn replace_route(
        &mut self,
        dst: IpNet,
        gateway: IpAddr,
        oif: Option<u32>,
        protocol: u8,
        onlink: bool,
    ) -> Result<()> {
        let mut msg = route_message(dst, protocol);
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
        if let Some(oif) = oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if onlink {
            msg.header.flags = netlink_packet_route::route::RouteFlags::Onlink;
        }
        self.request(
            "replace route",
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    /// Deletes the main table's route to `dst`; gone already is fine.
    pub fn delete_route(&mut self, dst: IpNet, protocol: u8) -> Result<()> {
        let msg = route_message(dst, protocol);
        match self.request(
            "delete route",
            RouteNetlinkMessage::DelRoute(msg),
            NLM_F_ACK,
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// A neighbour (ARP/NDP) or forwarding-database entry of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The IP address (neighbours) or the remote endpoint (fdb entries).
    pub ip: Option<IpAddr>,
    pub mac: String,
    pub permanent: bool,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    (bytes.len() == 6).then_some(bytes)
}

impl Netlink {
    /// Creates a VXLAN link with id `vni` on UDP `port`, its tunnels leaving from `local`
    /// (out of `parent` when given), with learning off: its forwarding entries are all
    /// programmed. EEXIST is reported so the caller can decide.
    pub fn create_vxlan(
        &mut self,
        name: &str,
        vni: u32,
        local: IpAddr,
        port: u16,
        parent: Option<u32>,
        mtu: Option<u32>,
    ) -> Result<()> {
        use netlink_packet_route::link::{InfoData, InfoVxlan};
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut data = vec![
            InfoVxlan::Id(vni),
            InfoVxlan::Port(port),
            InfoVxlan::Learning(false),
        ];
        match local {
            IpAddr::V4(a) => data.push(InfoVxlan::Local(a)),
            IpAddr::V6(a) => data.push(InfoVxlan::Local6(a)),
        }
        if let Some(p) = parent {
            data.push(InfoVxlan::Link(p));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.request(
            "create vxlan link",
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    fn neighbour_message(
        family: AddressFamily,
        index: u32,
        ip: Option<IpAddr>,
        mac: Option<&[u8]>,
    ) -> netlink_packet_route::neighbour::NeighbourMessage {
        use netlink_packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        if family == AddressFamily::Bridge {
            msg.header.flags = NeighbourFlags::Own;
        }
        if let Some(mac) = mac {
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        }
        if let Some(ip) = ip {
            msg.attributes
                .push(NeighbourAttribute::Destination(match ip {
                    IpAddr::V4(a) => NeighbourAddress::Inet(a),
                    IpAddr::V6(a) => NeighbourAddress::Inet6(a),
                }));
        }
        msg
    }

    /// A permanent neighbour entry: `ip` is at `mac` on the link.
    pub fn replace_neighbour(&mut self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<()> {
        let msg = Self::neighbour_message(family_of(ip), index, Some(ip), Some(mac));
        self.request(
            "replace neighbour",
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    pub fn delete_neighbour(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        let msg = Self::neighbour_message(family_of(ip), index, Some(ip), None);
        match self.request(
            "delete neighbour",
            RouteNetlinkMessage::DelNeighbour(msg),
            NLM_F_ACK,
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// A forwarding entry of a VXLAN link: frames for `mac` go to the tunnel endpoint
    /// `dst`.
    pub fn replace_fdb(&mut self, index: u32, mac: &[u8], dst: IpAddr) -> Result<()> {
        let msg = Self::neighbour_message(AddressFamily::Bridge, index, Some(dst), Some(mac));
        self.request(
            "replace fdb entry",
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    pub fn delete_fdb(&mut self, index: u32, mac: &[u8], dst: IpAddr) -> Result<()> {
        let msg = Self::neighbour_message(AddressFamily::Bridge, index, Some(dst), Some(mac));
        match self.request(
            "delete fdb entry",
            RouteNetlinkMessage::DelNeighbour(msg),
            NLM_F_ACK,
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The neighbour (`bridge` false) or forwarding (`bridge` true) entries of a link.
    pub fn neighbours(&mut self, index: u32, bridge: bool) -> Result<Vec<Neighbour>> {
        use netlink_packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
        };
        let mut req = NeighbourMessage::default();
        req.header.family = if bridge {
            AddressFamily::Bridge
        } else {
            AddressFamily::Unspec
        };
        let replies = self.request(
            "list neighbours",
            RouteNetlinkMessage::GetNeighbour(req),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index {
                continue;
            }
            if bridge != (n.header.family == AddressFamily::Bridge) {
                continue;
            }
            let mut e = Neighbour {
                ip: None,
                mac: String::new(),
                permanent: n.header.state == NeighbourState::Permanent,
            };
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        e.ip = Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        e.ip = Some(IpAddr::V6(*v6))
                    }
                    // Forwarding entries' tunnel endpoints come undecoded.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        e.ip = match b.len() {
                            4 => <[u8; 4]>::try_from(&b[..]).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(&b[..]).ok().map(IpAddr::from),
                            _ => None,
                        }
                    }
                    NeighbourAttribute::LinkLayerAddress(mac) => e.mac = format_mac(mac),
                    _ => {}
                }
            }
            out.push(e);
        }
        Ok(out)
    }
}

fn route_message(dst: IpNet, protocol: u8) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(dst.addr());
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(protocol);
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = RouteScope::Universe;
    if dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                dst.network(),
            )));
    }
    msg
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The link, address and route operations the plugins use, so their logic can run
/// against [`fake::FakeLinks`] in unit tests. [`Netlink`] is the real one.
pub trait LinkOps {
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>>;
    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>>;
    fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<()>;
    fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        mtu: Option<u32>,
        peer_netns_fd: Option<RawFd>,
    ) -> Result<()>;
    fn set_up(&mut self, index: u32) -> Result<()>;
    fn set_promisc(&mut self, index: u32, on: bool) -> Result<()>;
    fn set_controller(&mut self, index: u32, controller: u32) -> Result<()>;
    fn delete_link(&mut self, index: u32) -> Result<()>;
    fn add_address(&mut self, index: u32, address: IpNet) -> Result<()>;
    fn add_route(
        &mut self,
        dst: IpNet,
        gateway: Option<IpAddr>,
        oif: u32,
        mtu: Option<u32>,
    ) -> Result<()>;
}

impl LinkOps for Netlink {
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        Netlink::link_by_name(self, name)
    }
    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        Netlink::link_by_index(self, index)
    }
    fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<()> {
        Netlink::create_bridge(self, name, mtu)
    }
    fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        mtu: Option<u32>,
        peer_netns_fd: Option<RawFd>,
    ) -> Result<()> {
        Netlink::create_veth(self, name, peer_name, mtu, peer_netns_fd)
    }
    fn set_up(&mut self, index: u32) -> Result<()> {
        Netlink::set_up(self, index)
    }
    fn set_promisc(&mut self, index: u32, on: bool) -> Result<()> {
        Netlink::set_promisc(self, index, on)
    }
    fn set_controller(&mut self, index: u32, controller: u32) -> Result<()> {
        Netlink::set_controller(self, index, controller)
    }
    fn delete_link(&mut self, index: u32) -> Result<()> {
        Netlink::delete_link(self, index)
    }
    fn add_address(&mut self, index: u32, address: IpNet) -> Result<()> {
        Netlink::add_address(self, index, address)
    }
    fn add_route(
        &mut self,
        dst: IpNet,
        gateway: Option<IpAddr>,
        oif: u32,
        mtu: Option<u32>,
    ) -> Result<()> {
        Netlink::add_route(self, dst, gateway, oif, mtu)
    }
}

/// An in-memory namespace that records every call, for unit tests.
pub mod fake {
    use super::*;

    #[derive(Debug, Default)]
    pub struct FakeLinks {
        pub links: Vec<Link>,
        pub addresses: Vec<Address>,
        pub routes: Vec<RouteEntry>,
        pub calls: Vec<String>,
        /// When set, `create_bridge` fails with EEXIST after adding the link, as when
        /// another plugin run created it first.
        pub race_on_create: bool,
        next_index: u32,
    }

    impl FakeLinks {
        pub fn new() -> Self {
            let mut f = FakeLinks {
                next_index: 1,
                ..Default::default()
            };
            f.push("lo", Some("loopback"));
            f
        }

        pub fn push(&mut self, name: &str, kind: Option<&str>) -> u32 {
            self.next_index += 1;
            let index = self.next_index;
            self.links.push(Link {
                index,
                name: name.into(),
                kind: kind.map(String::from),
                mtu: 1500,
                mac: format!("02:00:00:00:00:{index:02x}"),
                up: false,
                promisc: false,
                controller: None,
            });
            index
        }

        fn get(&mut self, index: u32) -> Result<&mut Link> {
            self.links
                .iter_mut()
                .find(|l| l.index == index)
                .ok_or_else(|| NetlinkError::Request {
                    op: "fake",
                    source: std::io::Error::from_raw_os_error(libc::ENODEV),
                })
        }
    }

    fn exists() -> NetlinkError {
        NetlinkError::Request {
            op: "fake",
            source: std::io::Error::from_raw_os_error(libc::EEXIST),
        }
    }

    impl LinkOps for FakeLinks {
        fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
            Ok(self.links.iter().find(|l| l.name == name).cloned())
        }
        fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
            Ok(self.links.iter().find(|l| l.index == index).cloned())
        }
        fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<()> {
            self.calls.push(format!("create_bridge {name} {mtu:?}"));
            if self.links.iter().any(|l| l.name == name) {
                return Err(exists());
            }
            let index = self.push(name, Some("bridge"));
            if let Some(mtu) = mtu {
                self.get(index)?.mtu = mtu;
            }
            if self.race_on_create {
                return Err(exists());
            }
            Ok(())
        }
        fn create_veth(
            &mut self,
            name: &str,
            peer_name: &str,
            mtu: Option<u32>,
            _fd: Option<RawFd>,
        ) -> Result<()> {
            self.calls
                .push(format!("create_veth {name} {peer_name} {mtu:?}"));
            if self.links.iter().any(|l| l.name == name) {
                return Err(exists());
            }
            let index = self.push(name, Some("veth"));
            self.get(index)?.mtu = mtu.unwrap_or(1500);
            Ok(())
        }
        fn set_up(&mut self, index: u32) -> Result<()> {
            self.calls.push(format!("set_up {index}"));
            self.get(index)?.up = true;
            Ok(())
        }
        fn set_promisc(&mut self, index: u32, on: bool) -> Result<()> {
            self.calls.push(format!("set_promisc {index} {on}"));
            self.get(index)?.promisc = on;
            Ok(())
        }
        fn set_controller(&mut self, index: u32, controller: u32) -> Result<()> {
            self.calls
                .push(format!("set_controller {index} {controller}"));
            self.get(index)?.controller = Some(controller);
            Ok(())
        }
        fn delete_link(&mut self, index: u32) -> Result<()> {
            self.calls.push(format!("delete_link {index}"));
            self.get(index)?;
            self.links.retain(|l| l.index != index);
            self.addresses.retain(|a| a.index != index);
            Ok(())
        }
        fn add_address(&mut self, index: u32, address: IpNet) -> Result<()> {
            self.calls.push(format!("add_address {index} {address}"));
            self.get(index)?;
            if !self
                .addresses
                .iter()
                .any(|a| a.index == index && a.address == address)
            {
                self.addresses.push(Address { index, address });
            }
            Ok(())
        }
        fn add_route(
            &mut self,
            dst: IpNet,
            gateway: Option<IpAddr>,
            oif: u32,
            _mtu: Option<u32>,
        ) -> Result<()> {
            self.calls
                .push(format!("add_route {dst} {gateway:?} {oif}"));
            self.get(oif)?;
            self.routes.push(RouteEntry {
                dst,
                gateway,
                oif: Some(oif),
                protocol: 3,
            });
            Ok(())
        }
    }
}
