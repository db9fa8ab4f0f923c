//! Routes to the other nodes' pod ranges (host-gw): what they should be, from the
//! Nodes, and bringing the main table there. Only routes carrying
//! [`ROUTE_PROTOCOL`] are podrun's, so nothing another program installed is touched.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

use podrun_cni::netlink::{Netlink, NetlinkError};

/// podrun's route protocol number (`proto 152` in `ip route`): above the numbers
/// rtnetlink and routing daemons use.
pub const ROUTE_PROTOCOL: u8 = 152;

/// Where a node's pod range is reached: through `via`, and with VXLAN out of the
/// tunnel link `oif` (the gateway being the remote tunnel endpoint, on-link).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub via: IpAddr,
    pub oif: Option<u32>,
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.oif {
            Some(i) => write!(f, "via {} dev #{i} onlink", self.via),
            None => write!(f, "via {}", self.via),
        }
    }
}

/// A route of podrun's as the table holds it: destination, gateway, output link.
pub type Installed = (IpNet, Option<IpAddr>, Option<u32>);

/// The main table as the reconciler sees it; the real one is netlink.
pub trait RouteTable {
    /// podrun's routes: destination, gateway, output link.
    fn ours(&mut self) -> Result<Vec<Installed>, NetlinkError>;
    fn replace(&mut self, dst: IpNet, hop: Hop) -> Result<(), NetlinkError>;
    fn delete(&mut self, dst: IpNet) -> Result<(), NetlinkError>;
}

impl RouteTable for Netlink {
    fn ours(&mut self) -> Result<Vec<Installed>, NetlinkError> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            out.extend(
                self.routes(v6)?
                    .into_iter()
                    .filter(|r| r.protocol == ROUTE_PROTOCOL)
                    .map(|r| (r.dst, r.gateway, r.oif)),
            );
        }
        Ok(out)
    }

    fn replace(&mut self, dst: IpNet, hop: Hop) -> Result<(), NetlinkError> {
        self.replace_route(dst, hop.via, hop.oif, ROUTE_PROTOCOL, hop.oif.is_some())
    }

    fn delete(&mut self, dst: IpNet) -> Result<(), NetlinkError> {
        self.delete_route(dst, ROUTE_PROTOCOL)
    }
}

/// The node's InternalIP (else its first address).
pub fn node_address(node: &Node) -> Option<IpAddr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    addrs
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .or_else(|| addrs.first())
        .and_then(|a| a.address.parse().ok())
}

/// Each other node's pod range through that node's address. A range overlapping this
/// node's own (`own`) is never routed away.
pub fn desired_routes(nodes: &[Node], me: &str, own: Option<IpNet>) -> BTreeMap<IpNet, IpAddr> {
    other_nodes(nodes, me, own)
        .into_iter()
        .map(|(_, cidr, ip)| (cidr, ip))
        .collect()
}

/// The other nodes with a pod range (not overlapping `own`) and an address.
pub fn other_nodes<'a>(
    nodes: &'a [Node],
    me: &str,
    own: Option<IpNet>,
) -> Vec<(&'a Node, IpNet, IpAddr)> {
    let mut out = Vec::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(me) {
            continue;
        }
        let (Some(cidr), Some(ip)) = (super::pod_cidr(n), node_address(n)) else {
            continue;
        };
        if own.is_some_and(|o| o.contains(&cidr.network()) || cidr.contains(&o.network())) {
            continue;
        }
        out.push((n, cidr.trunc(), ip));
    }
    out
}

/// Brings podrun's routes to `want`: missing or changed ones replaced, others deleted.
/// Returns what changed, for the log.
pub fn reconcile(
    table: &mut impl RouteTable,
    want: &BTreeMap<IpNet, Hop>,
) -> Result<Vec<String>, NetlinkError> {
    let have = table.ours()?;
    let mut changes = Vec::new();
    for (dst, via, _) in &have {
        if !want.contains_key(dst) {
            table.delete(*dst)?;
            changes.push(format!("deleted {dst} via {}", fmt_via(via)));
        }
    }
    for (dst, hop) in want {
        // Without a link asked for, the kernel picks the one the gateway is on.
        let same = |(d, v, o): &Installed| {
            d == dst && *v == Some(hop.via) && (hop.oif.is_none() || *o == hop.oif)
        };
        if !have.iter().any(same) {
            table.replace(*dst, *hop)?;
            changes.push(format!("{dst} {hop}"));
        }
    }
    Ok(changes)
}

fn fmt_via(via: &Option<IpAddr>) -> String {
    via.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    #[derive(Default)]
    struct Fake {
        routes: BTreeMap<IpNet, Hop>,
        calls: Vec<String>,
    }

    impl RouteTable for Fake {
        fn ours(&mut self) -> Result<Vec<Installed>, NetlinkError> {
            // The kernel reports the link it picked.
            Ok(self
                .routes
                .iter()
                .map(|(d, h)| (*d, Some(h.via), Some(h.oif.unwrap_or(2))))
                .collect())
        }
        fn replace(&mut self, dst: IpNet, hop: Hop) -> Result<(), NetlinkError> {
            self.calls.push(format!("replace {dst} {hop}"));
            self.routes.insert(dst, hop);
            Ok(())
        }
        fn delete(&mut self, dst: IpNet) -> Result<(), NetlinkError> {
            self.calls.push(format!("delete {dst}"));
            self.routes.remove(&dst);
            Ok(())
        }
    }

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.spec = Some(NodeSpec {
            pod_cidr: cidr.map(str::to_owned),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            addresses: ip.map(|ip| {
                vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: name.into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.into(),
                    },
                ]
            }),
            ..Default::default()
        });
        n
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn every_other_node_with_a_range_and_an_address_is_routed() {
        let nodes = vec![
            node("w1", Some("172.16.1.0/24"), Some("10.0.0.11")),
            node("w2", Some("172.16.2.0/24"), Some("10.0.0.12")),
            node("w3", None, Some("10.0.0.13")),
            node("w4", Some("172.16.4.0/24"), None),
            // Claims this node's range: never routed away.
            node("bad", Some("172.16.1.0/25"), Some("10.0.0.99")),
        ];
        let want = desired_routes(&nodes, "w1", Some(net("172.16.1.0/24")));
        assert_eq!(
            want,
            BTreeMap::from([(net("172.16.2.0/24"), "10.0.0.12".parse().unwrap())])
        );
    }

    #[test]
    fn reconcile_adds_moves_and_removes_only_what_differs() {
        let mut t = Fake::default();
        let hop = |ip: &str| Hop {
            via: ip.parse().unwrap(),
            oif: None,
        };
        let mut want = BTreeMap::from([
            (net("172.16.2.0/24"), hop("10.0.0.12")),
            (net("172.16.3.0/24"), hop("10.0.0.13")),
        ]);
        assert_eq!(reconcile(&mut t, &want).unwrap().len(), 2);
        t.calls.clear();
        // Nothing changed: nothing done.
        assert!(reconcile(&mut t, &want).unwrap().is_empty());
        assert!(t.calls.is_empty());
        // A node moved and one left.
        want.insert(net("172.16.2.0/24"), hop("10.0.0.22"));
        want.remove(&net("172.16.3.0/24"));
        reconcile(&mut t, &want).unwrap();
        assert_eq!(
            t.calls,
            vec![
                "delete 172.16.3.0/24",
                "replace 172.16.2.0/24 via 10.0.0.22"
            ]
        );
        // Moving to a tunnel link is a change too.
        t.calls.clear();
        let tunnel = Hop {
            via: "172.16.2.0".parse().unwrap(),
            oif: Some(7),
        };
        want.insert(net("172.16.2.0/24"), tunnel);
        reconcile(&mut t, &want).unwrap();
        assert_eq!(
            t.calls,
            vec!["replace 172.16.2.0/24 via 172.16.2.0 dev #7 onlink"]
        );
        assert!(reconcile(&mut t, &want).unwrap().is_empty());
        reconcile(&mut t, &BTreeMap::new()).unwrap();
        assert!(t.routes.is_empty());
    }
}
