//! The cluster zone: every DNS record the Kubernetes DNS specification derives from
//! Services and EndpointSlices, built once per change of either and then only read.
//!
//! A [`Zone`] is a pure value: [`Zone::build`] turns snapshots of the API objects into
//! an index of names, and [`Zone::resolve`] answers one question from it without any
//! I/O, so the whole record logic is tested without a network. Names are compared
//! case-insensitively (keys are lowercase); answers carry the owner name as the client
//! spelled it.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The version of the Kubernetes DNS schema answered at `dns-version.<domain>`.
const SCHEMA_VERSION: &str = "1.1.0";

/// How many CNAMEs inside the zone one answer follows before it stops.
const MAX_CNAME_CHAIN: usize = 8;

/// What the zone says about one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The name is not the cluster's: the upstream resolvers answer it.
    Forward,
    /// The cluster's own answer.
    Answer(Answer),
}

/// The sections of an answer from the cluster zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// Whether the answer is authoritative (false only while the zone is not yet synced).
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The last CNAME target of the answer when it points out of the cluster zone:
    /// the caller may complete the answer from upstream.
    pub external_target: Option<Name>,
}

impl Answer {
    fn new(rcode: ResponseCode) -> Self {
        Answer {
            rcode,
            authoritative: true,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            external_target: None,
        }
    }
}

/// The records of one name in the zone. A name with none of them still exists (an
/// empty non-terminal such as `<ns>.svc.<domain>`, or a service without addresses):
/// it answers NODATA, not NXDOMAIN.
#[derive(Debug, Default, Clone)]
struct Node {
    a: Vec<Ipv4Addr>,
    aaaa: Vec<Ipv6Addr>,
    cname: Option<Name>,
    srv: Vec<SrvRecord>,
}

#[derive(Debug, Clone)]
struct SrvRecord {
    port: u16,
    weight: u16,
    target: Name,
}

/// The cluster's DNS records, built from one snapshot of Services and EndpointSlices.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The cluster domain, lowercase, without the trailing dot (`cluster.local`).
    domain: String,
    apex: Name,
    ttl: u32,
    /// False until the first full list of both resources arrived: until then no name
    /// can be said not to exist, so the zone answers SERVFAIL.
    synced: bool,
    serial: u32,
    /// Names under the domain, lowercase without the trailing dot.
    names: HashMap<String, Node>,
    /// Reverse names (`4.3.2.1.in-addr.arpa`) of ClusterIPs and headless endpoints.
    reverse: HashMap<String, BTreeSet<NameKey>>,
    /// `dns-version.<domain>` and `pod.<domain>`, kept to compare without allocating.
    dns_version_key: String,
    pod_key: String,
}

/// A name ordered by its text, so PTR answers come in a stable order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct NameKey(String);

impl Zone {
    /// A zone that knows no object yet: names under `domain` answer SERVFAIL.
    pub fn unsynced(domain: &str, ttl: u32) -> Zone {
        let mut zone = Zone::empty(domain, ttl);
        zone.synced = false;
        zone
    }

    fn empty(domain: &str, ttl: u32) -> Zone {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let apex = fqdn(&domain).unwrap_or_else(|_| Name::root());
        let mut zone = Zone {
            domain,
            apex,
            ttl,
            synced: true,
            serial: 1,
            names: HashMap::new(),
            reverse: HashMap::new(),
            dns_version_key: String::new(),
            pod_key: String::new(),
        };
        zone.dns_version_key = zone.key_under(&["dns-version"]);
        zone.pod_key = zone.key_under(&["pod"]);
        zone.names.insert(zone.domain.clone(), Node::default());
        for sub in ["svc", "pod"] {
            let key = zone.key_under(&[sub]);
            zone.ensure_node(&key);
        }
        zone
    }

    /// Index every Service and EndpointSlice. `serial` is the SOA serial of the result
    /// (it should grow with every rebuild, as secondaries would expect).
    pub fn build<'a>(
        domain: &str,
        ttl: u32,
        serial: u32,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Zone {
        let mut zone = Zone::empty(domain, ttl);
        zone.serial = serial;
        // Slices by (namespace, service name).
        let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let Some(ns) = slice.metadata.namespace.as_deref() else {
                continue;
            };
            let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            by_service
                .entry((ns.to_owned(), svc.to_owned()))
                .or_default()
                .push(slice);
        }
        for service in services {
            let (Some(name), Some(ns)) = (
                service.metadata.name.as_deref(),
                service.metadata.namespace.as_deref(),
            ) else {
                continue;
            };
            let slices = by_service
                .get(&(ns.to_owned(), name.to_owned()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Err(e) = zone.add_service(service, ns, name, slices) {
                tracing::debug!(namespace = ns, service = name, error = %e, "service has no DNS name");
            }
        }
        zone
    }

    /// How many names (with or without records) the zone holds.
    pub fn len(&self) -> usize {
        self.names.len() + self.reverse.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether `name` is the cluster domain or under it.
    pub fn is_cluster_name(&self, name: &Name) -> bool {
        self.in_domain(&key_of(name))
    }

    fn in_domain(&self, key: &str) -> bool {
        key == self.domain
            || (key.len() > self.domain.len()
                && key.ends_with(&self.domain)
                && key.as_bytes()[key.len() - self.domain.len() - 1] == b'.')
    }

    fn key_under(&self, labels: &[&str]) -> String {
        let mut key = String::new();
        for label in labels {
            key.push_str(&label.to_ascii_lowercase());
            key.push('.');
        }
        key.push_str(&self.domain);
        key
    }

    /// Make `key` and every name between it and the domain exist.
    fn ensure_node(&mut self, key: &str) -> &mut Node {
        let mut rest = key;
        while let Some((_, parent)) = rest.split_once('.') {
            if parent.len() <= self.domain.len() {
                break;
            }
            self.names.entry(parent.to_owned()).or_default();
            rest = parent;
        }
        self.names.entry(key.to_owned()).or_default()
    }

    fn add_ptr(&mut self, ip: IpAddr, target: &Name) {
        self.reverse
            .entry(reverse_key(ip))
            .or_default()
            .insert(NameKey(target.to_ascii()));
    }

    fn add_service(
        &mut self,
        service: &Service,
        ns: &str,
        name: &str,
        slices: &[&EndpointSlice],
    ) -> Result<(), hickory_proto::ProtoError> {
        let svc_key = self.key_under(&[name, ns, "svc"]);
        let svc_name = fqdn(&svc_key)?;
        self.ensure_node(&svc_key);
        let Some(spec) = service.spec.as_ref() else {
            return Ok(());
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec.external_name.as_deref().filter(|t| !t.is_empty()) {
                let target = fqdn(target.trim_end_matches('.'))?;
                self.ensure_node(&svc_key).cname = Some(target);
            }
            return Ok(());
        }
        let mut cluster_ips: Vec<&str> = spec
            .cluster_ips
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(String::as_str)
            .collect();
        if cluster_ips.is_empty() {
            cluster_ips.extend(spec.cluster_ip.as_deref());
        }
        if cluster_ips.first() == Some(&"None") {
            return self.add_headless(service, ns, name, &svc_key, slices);
        }
        for ip in cluster_ips
            .iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
        {
            let node = self.ensure_node(&svc_key);
            match ip {
                IpAddr::V4(v4) => push_unique(&mut node.a, v4),
                IpAddr::V6(v6) => push_unique(&mut node.aaaa, v6),
            }
            self.add_ptr(ip, &svc_name);
        }
        for port in spec.ports.as_deref().unwrap_or_default() {
            let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let proto = port.protocol.as_deref().unwrap_or("TCP");
            let record = SrvRecord {
                port: number,
                weight: 100,
                target: svc_name.clone(),
            };
            let srv_key = self.key_under(&[
                &format!("_{port_name}"),
                &format!("_{proto}"),
                name,
                ns,
                "svc",
            ]);
            self.ensure_node(&srv_key).srv.push(record.clone());
            self.ensure_node(&svc_key).srv.push(record);
        }
        Ok(())
    }

    fn add_headless(
        &mut self,
        service: &Service,
        ns: &str,
        name: &str,
        svc_key: &str,
        slices: &[&EndpointSlice],
    ) -> Result<(), hickory_proto::ProtoError> {
        let publish_not_ready = service
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
        // (port name, protocol) -> (port, endpoint names)
        let mut srv: HashMap<(String, String), Vec<(u16, Name)>> = HashMap::new();
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let ports: Vec<(String, String, u16)> = slice
                .ports
                .as_deref()
                .unwrap_or_default()
                .iter()
                .filter_map(|p| {
                    let port_name = p.name.as_deref().filter(|n| !n.is_empty())?;
                    let number = u16::try_from(p.port?).ok()?;
                    let proto = p.protocol.as_deref().unwrap_or("TCP");
                    Some((port_name.to_owned(), proto.to_owned(), number))
                })
                .collect();
            for endpoint in &slice.endpoints {
                // A missing ready condition means ready, as the API documents.
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                if !ready && !publish_not_ready {
                    continue;
                }
                let ips: Vec<IpAddr> = endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect();
                let hostname = endpoint
                    .hostname
                    .as_deref()
                    .filter(|h| !h.is_empty() && !h.contains('.'));
                // One name per endpoint: its hostname, else its (first) address dashed.
                let Some(label) = hostname
                    .map(str::to_owned)
                    .or_else(|| ips.first().map(|ip| dashed(*ip)))
                else {
                    continue;
                };
                let ep_key = self.key_under(&[&label, name, ns, "svc"]);
                let ep_name = fqdn(&ep_key)?;
                for ip in &ips {
                    for key in [svc_key, ep_key.as_str()] {
                        let node = self.ensure_node(key);
                        match ip {
                            IpAddr::V4(v4) => push_unique(&mut node.a, *v4),
                            IpAddr::V6(v6) => push_unique(&mut node.aaaa, *v6),
                        }
                    }
                    self.add_ptr(*ip, &ep_name);
                }
                for (port_name, proto, number) in &ports {
                    let targets = srv.entry((port_name.clone(), proto.clone())).or_default();
                    if !targets.iter().any(|(p, t)| p == number && t == &ep_name) {
                        targets.push((*number, ep_name.clone()));
                    }
                }
            }
        }
        for ((port_name, proto), targets) in srv {
            let weight = srv_weight(targets.len());
            let records: Vec<SrvRecord> = targets
                .into_iter()
                .map(|(port, target)| SrvRecord {
                    port,
                    weight,
                    target,
                })
                .collect();
            let srv_key = self.key_under(&[
                &format!("_{port_name}"),
                &format!("_{proto}"),
                name,
                ns,
                "svc",
            ]);
            self.ensure_node(&srv_key)
                .srv
                .extend(records.iter().cloned());
            self.ensure_node(svc_key).srv.extend(records);
        }
        Ok(())
    }

    /// Answer one question. `qname` is the name as the client sent it.
    pub fn resolve(&self, qname: &Name, qtype: RecordType) -> Resolution {
        let key = key_of(qname);
        if is_reverse(&key) {
            return match self.reverse.get(&key) {
                Some(targets) if self.synced => {
                    let mut answer = Answer::new(ResponseCode::NoError);
                    if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                        for target in targets {
                            if let Ok(target) = Name::from_ascii(&target.0) {
                                answer
                                    .answers
                                    .push(self.record(qname, RData::PTR(PTR(target))));
                            }
                        }
                    }
                    Resolution::Answer(answer)
                }
                // Addresses the cluster does not own are the upstream resolvers' to answer.
                _ => Resolution::Forward,
            };
        }
        if !self.in_domain(&key) {
            return Resolution::Forward;
        }
        if !self.synced {
            let mut answer = Answer::new(ResponseCode::ServFail);
            answer.authoritative = false;
            return Resolution::Answer(answer);
        }
        let mut answer = Answer::new(ResponseCode::NoError);
        let mut owner = qname.clone();
        let mut key = key;
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(node) = self.lookup(&key) else {
                // After a CNAME too: the code speaks of the last name (RFC 6604).
                answer.rcode = ResponseCode::NXDomain;
                answer.authorities.push(self.soa());
                break;
            };
            if let Some(target) = node.cname.as_ref().filter(|_| qtype != RecordType::CNAME) {
                answer
                    .answers
                    .push(self.record(&owner, RData::CNAME(CNAME(target.clone()))));
                let target_key = key_of(target);
                if self.in_domain(&target_key) {
                    owner = target.clone();
                    key = target_key;
                    continue;
                }
                answer.external_target = Some(target.clone());
                break;
            }
            self.add_records(&mut answer, &owner, &key, &node, qtype);
            if answer.answers.is_empty() {
                // NODATA: the name exists, without records of this type.
                answer.authorities.push(self.soa());
            }
            break;
        }
        Resolution::Answer(answer)
    }

    /// The node of `key`, the computed one of a pod name, or the TXT-only schema name.
    fn lookup(&self, key: &str) -> Option<Cow<'_, Node>> {
        if let Some(node) = self.names.get(key) {
            return Some(Cow::Borrowed(node));
        }
        if key == self.dns_version_key {
            return Some(Cow::Owned(Node::default()));
        }
        // `<dashed-ip>.<ns>.pod.<domain>` answers the address it spells ("pods insecure").
        let rest = key.strip_suffix(&self.pod_key)?.strip_suffix('.')?;
        let (label, ns) = rest.split_once('.')?;
        if ns.is_empty() || ns.contains('.') {
            return None;
        }
        let mut node = Node::default();
        match undashed(label)? {
            IpAddr::V4(v4) => node.a.push(v4),
            IpAddr::V6(v6) => node.aaaa.push(v6),
        }
        Some(Cow::Owned(node))
    }

    fn add_records(
        &self,
        answer: &mut Answer,
        owner: &Name,
        key: &str,
        node: &Node,
        qtype: RecordType,
    ) {
        let any = qtype == RecordType::ANY;
        if any || qtype == RecordType::A {
            for ip in &node.a {
                answer.answers.push(self.record(owner, RData::A(A(*ip))));
            }
        }
        if any || qtype == RecordType::AAAA {
            for ip in &node.aaaa {
                answer
                    .answers
                    .push(self.record(owner, RData::AAAA(AAAA(*ip))));
            }
        }
        if any || qtype == RecordType::CNAME {
            if let Some(target) = &node.cname {
                answer
                    .answers
                    .push(self.record(owner, RData::CNAME(CNAME(target.clone()))));
            }
        }
        if any || qtype == RecordType::SRV {
            for srv in &node.srv {
                answer.answers.push(self.record(
                    owner,
                    RData::SRV(SRV::new(0, srv.weight, srv.port, srv.target.clone())),
                ));
                // The targets' addresses, so the client need not ask again.
                if let Some(target) = self.names.get(&key_of(&srv.target)) {
                    for ip in &target.a {
                        let record = self.record(&srv.target, RData::A(A(*ip)));
                        if !answer.additionals.contains(&record) {
                            answer.additionals.push(record);
                        }
                    }
                    for ip in &target.aaaa {
                        let record = self.record(&srv.target, RData::AAAA(AAAA(*ip)));
                        if !answer.additionals.contains(&record) {
                            answer.additionals.push(record);
                        }
                    }
                }
            }
        }
        if (any || qtype == RecordType::TXT) && key == self.dns_version_key {
            answer
                .answers
                .push(self.record(owner, RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()]))));
        }
        if (any || qtype == RecordType::SOA) && key == self.domain {
            answer.answers.push(self.soa());
        }
    }

    fn record(&self, owner: &Name, rdata: RData) -> Record {
        Record::from_rdata(owner.clone(), self.ttl, rdata)
    }

    /// The zone's SOA, in the authority section of negative answers (RFC 2308).
    pub fn soa(&self) -> Record {
        let mname = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(&self.apex))
            .unwrap_or_else(|_| self.apex.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.apex))
            .unwrap_or_else(|_| self.apex.clone());
        let soa = SOA::new(mname, rname, self.serial, 7200, 1800, 86400, self.ttl);
        Record::from_rdata(self.apex.clone(), self.ttl, RData::SOA(soa))
    }
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// SRV weights of `n` equal targets: their share of 100, at least 1.
fn srv_weight(n: usize) -> u16 {
    u16::try_from(100 / n.max(1)).unwrap_or(1).max(1)
}

/// The fully qualified name of a lowercase key.
fn fqdn(key: &str) -> Result<Name, hickory_proto::ProtoError> {
    let mut name = Name::from_ascii(key)?;
    name.set_fqdn(true);
    Ok(name)
}

/// A name's lookup key: lowercase, without the trailing dot.
pub(crate) fn key_of(name: &Name) -> String {
    let mut key = name.to_ascii().to_ascii_lowercase();
    if key.ends_with('.') {
        key.pop();
    }
    key
}

fn is_reverse(key: &str) -> bool {
    key.ends_with("in-addr.arpa") || key.ends_with("ip6.arpa")
}

/// The address as one DNS label: dots (IPv4) or colons (IPv6) turned to dashes.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The address a dashed label spells, if it spells one.
fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The reverse-lookup key of an address: `4.3.2.1.in-addr.arpa`, or the nibbles of an
/// IPv6 address under `ip6.arpa`.
fn reverse_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut key = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                key.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
                key.push('.');
                key.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
                key.push('.');
            }
            key.push_str("ip6.arpa");
            key
        }
    }
}
