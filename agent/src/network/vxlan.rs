//! The VXLAN backend, for nodes that do not share a link (as flannel's vxlan): each node
//! has a tunnel link [`LINK`] whose address is the network address of its pod range and
//! whose MAC it publishes in its Node's [`MAC_ANNOTATION`]. For every other node the
//! agent programs a route to its range via its tunnel address (on-link), a permanent
//! neighbour entry for that address at its MAC, and a forwarding entry sending that MAC
//! to the node's own address. Learning is off: every entry comes from the Nodes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use podrun_cni::netlink::{parse_mac, Netlink, NetlinkError};

use super::routes::{other_nodes, Hop};

/// The tunnel link: VNI 1, as flannel's `flannel.1`.
pub const LINK: &str = "podrun.1";
pub const VNI: u32 = 1;
/// The Linux kernel's VXLAN port, which flannel uses too.
pub const PORT: u16 = 8472;
/// The VXLAN header and the outer IPv4/UDP/Ethernet headers.
const OVERHEAD: u32 = 50;
/// Where each node publishes its tunnel link's MAC.
pub const MAC_ANNOTATION: &str = "podrun.io/vtep-mac";

/// Another node as the tunnel sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub cidr: IpNet,
    /// Its tunnel link's address: the network address of its range.
    pub vtep: IpAddr,
    pub mac: Vec<u8>,
    pub node_ip: IpAddr,
}

/// The other nodes that have a range, an address and a published MAC.
pub fn peers(nodes: &[Node], me: &str, own: Option<IpNet>) -> Vec<Peer> {
    other_nodes(nodes, me, own)
        .into_iter()
        .filter_map(|(n, cidr, node_ip)| {
            let mac = n
                .metadata
                .annotations
                .as_ref()?
                .get(MAC_ANNOTATION)
                .and_then(|m| parse_mac(m))?;
            Some(Peer {
                cidr,
                vtep: cidr.network(),
                mac,
                node_ip,
            })
        })
        .collect()
}

/// The routes to the peers' ranges through the tunnel link `index`.
pub fn routes(peers: &[Peer], index: u32) -> BTreeMap<IpNet, Hop> {
    peers
        .iter()
        .map(|p| {
            (
                p.cidr,
                Hop {
                    via: p.vtep,
                    oif: Some(index),
                },
            )
        })
        .collect()
}

/// The tunnel link for this node (made when missing, its MTU the underlying link's less
/// the encapsulation), with the network address of `own` on it. Returns its index and
/// MAC.
pub fn ensure_link(
    nl: &mut Netlink,
    node_ip: IpAddr,
    own: IpNet,
) -> Result<(u32, String), NetlinkError> {
    let link = match nl.link_by_name(LINK)? {
        Some(l) => l,
        None => {
            let parent = nl
                .addresses(None)?
                .into_iter()
                .find(|a| a.address.addr() == node_ip)
                .map(|a| a.index);
            let mtu = match parent {
                Some(i) => nl.link_by_index(i)?.map(|l| l.mtu.saturating_sub(OVERHEAD)),
                None => None,
            };
            match nl.create_vxlan(LINK, VNI, node_ip, PORT, parent, mtu) {
                Err(e) if !e.is_exists() => return Err(e),
                _ => {}
            }
            nl.link_by_name(LINK)?.ok_or_else(|| NetlinkError::Decode {
                op: "create vxlan link",
                detail: format!("{LINK} vanished"),
            })?
        }
    };
    let addr = IpNet::new(
        own.network(),
        if own.network().is_ipv4() { 32 } else { 128 },
    )
    .expect("full prefix");
    for a in nl.addresses(Some(link.index))? {
        if a.address != addr {
            nl.delete_address(link.index, a.address)?;
        }
    }
    nl.add_address(link.index, addr)?;
    nl.set_up(link.index)?;
    Ok((link.index, link.mac))
}

/// Brings the tunnel link's neighbour and forwarding entries to `peers`.
pub fn reconcile_entries(nl: &mut Netlink, index: u32, peers: &[Peer]) -> Result<(), NetlinkError> {
    for n in nl.neighbours(index, false)? {
        if !n.permanent {
            continue;
        }
        if let Some(ip) = n.ip {
            if !peers.iter().any(|p| p.vtep == ip) {
                nl.delete_neighbour(index, ip)?;
            }
        }
    }
    for f in nl.neighbours(index, true)? {
        let (Some(dst), Some(mac)) = (f.ip, parse_mac(&f.mac)) else {
            continue;
        };
        if !peers.iter().any(|p| p.mac == mac && p.node_ip == dst) {
            nl.delete_fdb(index, &mac, dst)?;
        }
    }
    for p in peers {
        nl.replace_fdb(index, &p.mac, p.node_ip)?;
        nl.replace_neighbour(index, p.vtep, &p.mac)?;
    }
    Ok(())
}

/// Removes the tunnel link (its entries and routes go with it).
pub fn remove_link(nl: &mut Netlink) -> Result<(), NetlinkError> {
    if let Some(l) = nl.link_by_name(LINK)? {
        nl.delete_link(l.index)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidr: &str, ip: &str, mac: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.annotations = mac.map(|m| [(MAC_ANNOTATION.to_string(), m.to_string())].into());
        n.spec = Some(NodeSpec {
            pod_cidr: Some(cidr.into()),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            }]),
            ..Default::default()
        });
        n
    }

    #[test]
    fn peers_need_a_published_mac_and_route_through_the_tunnel() {
        let nodes = vec![
            node(
                "w1",
                "172.16.1.0/24",
                "10.0.0.11",
                Some("02:00:00:00:00:01"),
            ),
            node(
                "w2",
                "172.16.2.0/24",
                "10.0.0.12",
                Some("02:00:00:00:00:02"),
            ),
            node("w3", "172.16.3.0/24", "10.0.0.13", None),
            node("w4", "172.16.4.0/24", "10.0.0.14", Some("not-a-mac")),
        ];
        let p = peers(&nodes, "w1", Some("172.16.1.0/24".parse().unwrap()));
        assert_eq!(
            p,
            vec![Peer {
                cidr: "172.16.2.0/24".parse().unwrap(),
                vtep: "172.16.2.0".parse().unwrap(),
                mac: vec![2, 0, 0, 0, 0, 2],
                node_ip: "10.0.0.12".parse().unwrap(),
            }]
        );
        let r = routes(&p, 9);
        assert_eq!(
            r[&"172.16.2.0/24".parse::<IpNet>().unwrap()],
            Hop {
                via: "172.16.2.0".parse().unwrap(),
                oif: Some(9)
            }
        );
    }
}
