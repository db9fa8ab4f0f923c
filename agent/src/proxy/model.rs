//! The proxy's view of the cluster: Services and their EndpointSlices, held by
//! service, and reduced to service ports with the endpoints this node may use.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Session affinity's default timeout (`sessionAffinityConfig.clientIP.timeoutSeconds`).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// A Service, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One endpoint of a service port, as its EndpointSlice says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub node_name: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// One port of a Service, with everything its rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub service: ServiceKey,
    /// The port's name ("" for the single unnamed port).
    pub port_name: String,
    /// `tcp`, `udp` or `sctp`, as nft spells it.
    pub protocol: &'static str,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// `spec.externalIPs` and the load balancer's ingress IPs.
    pub external_ips: Vec<Ipv4Addr>,
    /// ClientIP session affinity: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub internal_local: bool,
    pub external_local: bool,
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Reached from outside the cluster's IPs: a NodePort, external or load balancer IPs.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

/// Everything the watches have seen: Services and their EndpointSlices.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub services: BTreeMap<ServiceKey, Service>,
    /// By the service they name, then by slice name.
    pub slices: BTreeMap<ServiceKey, BTreeMap<String, EndpointSlice>>,
    /// Which service each slice (namespace, name) was filed under.
    slice_owner: BTreeMap<(String, String), ServiceKey>,
}

fn service_key(svc: &Service) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        svc.metadata.namespace.as_deref()?,
        svc.metadata.name.as_deref()?,
    ))
}

fn slice_id(slice: &EndpointSlice) -> Option<(String, String)> {
    Some((
        slice.metadata.namespace.clone()?,
        slice.metadata.name.clone()?,
    ))
}

impl Snapshot {
    /// Records a Service; returns its key when anything changed.
    pub fn apply_service(&mut self, svc: Service) -> Option<ServiceKey> {
        let key = service_key(&svc)?;
        if self.services.get(&key) == Some(&svc) {
            return None;
        }
        self.services.insert(key.clone(), svc);
        Some(key)
    }

    pub fn delete_service(&mut self, svc: &Service) -> Option<ServiceKey> {
        let key = service_key(svc)?;
        self.services.remove(&key).map(|_| key)
    }

    /// Records a slice; returns the services it changed (two when its label moved).
    pub fn apply_slice(&mut self, slice: EndpointSlice) -> Vec<ServiceKey> {
        let Some(id) = slice_id(&slice) else {
            return Vec::new();
        };
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|name| ServiceKey::new(&id.0, name));
        let mut changed = Vec::new();
        if let Some(old) = self.slice_owner.get(&id).cloned() {
            if Some(&old) != owner.as_ref() {
                changed.extend(self.remove_slice(&id));
            } else if self.slices.get(&old).and_then(|s| s.get(&id.1)) == Some(&slice) {
                return Vec::new();
            }
        }
        if let Some(owner) = owner {
            self.slices
                .entry(owner.clone())
                .or_default()
                .insert(id.1.clone(), slice);
            self.slice_owner.insert(id, owner.clone());
            changed.push(owner);
        }
        changed
    }

    pub fn delete_slice(&mut self, slice: &EndpointSlice) -> Option<ServiceKey> {
        self.remove_slice(&slice_id(slice)?)
    }

    fn remove_slice(&mut self, id: &(String, String)) -> Option<ServiceKey> {
        let owner = self.slice_owner.remove(id)?;
        if let Some(slices) = self.slices.get_mut(&owner) {
            slices.remove(&id.1);
            if slices.is_empty() {
                self.slices.remove(&owner);
            }
        }
        Some(owner)
    }

    /// Replaces every Service (a watch's fresh listing); returns the keys that changed.
    pub fn replace_services(&mut self, services: Vec<Service>) -> BTreeSet<ServiceKey> {
        let mut changed: BTreeSet<ServiceKey> = self.services.keys().cloned().collect();
        let old = std::mem::take(&mut self.services);
        for svc in services {
            let Some(key) = service_key(&svc) else {
                continue;
            };
            if old.get(&key) == Some(&svc) {
                changed.remove(&key);
            } else {
                changed.insert(key.clone());
            }
            self.services.insert(key, svc);
        }
        changed
    }

    /// Replaces every slice (a watch's fresh listing); returns the services that changed.
    pub fn replace_slices(&mut self, slices: Vec<EndpointSlice>) -> BTreeSet<ServiceKey> {
        let old = std::mem::take(&mut self.slices);
        self.slice_owner.clear();
        for slice in slices {
            self.apply_slice(slice);
        }
        let mut changed = BTreeSet::new();
        for key in old.keys().chain(self.slices.keys()) {
            if old.get(key) != self.slices.get(key) {
                changed.insert(key.clone());
            }
        }
        changed
    }

    /// The ports of a service that get rules: none for a service that is gone, headless,
    /// of type ExternalName, without an IPv4 ClusterIP, or whose ClusterIP is in `skip`.
    pub fn service_ports(&self, key: &ServiceKey, skip: &[IpAddr]) -> Vec<ServicePort> {
        let Some(svc) = self.services.get(key) else {
            return Vec::new();
        };
        let slices: Vec<&EndpointSlice> = self
            .slices
            .get(key)
            .map(|s| s.values().collect())
            .unwrap_or_default();
        service_ports(key, svc, &slices, skip)
    }
}

fn service_ports(
    key: &ServiceKey,
    svc: &Service,
    slices: &[&EndpointSlice],
    skip: &[IpAddr],
) -> Vec<ServicePort> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let cluster_ip = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .find_map(|ip| ip.parse::<Ipv4Addr>().ok());
    let Some(cluster_ip) = cluster_ip else {
        return Vec::new();
    };
    if skip.contains(&IpAddr::V4(cluster_ip)) {
        return Vec::new();
    }
    let mut external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    external_ips.extend(
        svc.status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()),
    );
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let node_ports_apply = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let Some(protocol) = nft_protocol(p.protocol.as_deref()) else {
            continue;
        };
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let port_name = p.name.clone().unwrap_or_default();
        out.push(ServicePort {
            service: key.clone(),
            endpoints: endpoints(slices, &port_name, protocol),
            port_name,
            protocol,
            cluster_ip,
            port,
            node_port: p
                .node_port
                .filter(|_| node_ports_apply)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0),
            external_ips: external_ips.clone(),
            affinity_timeout,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        });
    }
    out
}

fn nft_protocol(p: Option<&str>) -> Option<&'static str> {
    match p.unwrap_or("TCP") {
        "TCP" => Some("tcp"),
        "UDP" => Some("udp"),
        "SCTP" => Some("sctp"),
        _ => None,
    }
}

/// The endpoints of the service port named `port_name`: the slices' ports carry the
/// number a named targetPort resolved to, matched by name and protocol. An address
/// listed twice (in two slices) counts once, ready if either says so.
fn endpoints(slices: &[&EndpointSlice], port_name: &str, protocol: &str) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && nft_protocol(p.protocol.as_deref()) == Some(protocol)
        });
        let Some(port) = port
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(ip) = ep
                .addresses
                .first()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let cond = ep.conditions.as_ref();
            // Unset ready means ready; unset serving follows ready (discovery/v1).
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let new = Endpoint {
                ip,
                port,
                node_name: ep.node_name.clone(),
                ready,
                serving,
                terminating,
            };
            match out.iter_mut().find(|e| e.ip == ip && e.port == port) {
                Some(old) if !old.ready && ready => *old = new,
                Some(_) => {}
                None => out.push(new),
            }
        }
    }
    out.sort_by_key(|e| (e.ip, e.port));
    out
}
