//! The Endpoints and EndpointSlice controllers (kube-controller-manager's endpoint and
//! endpointslice): for each Service with a selector, the addresses of the pods it
//! selects, written as the Endpoints named as the service and as the EndpointSlices
//! labelled with its name. Both look at the whole state on every change (and on a timer,
//! since deletions are not streamed), and write only what differs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Node, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tracing::{debug, warn};

use super::manager::Task;
use super::shared::{controller_ref, pod_ready, Informer, Informers};

/// Label naming the service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Set on Endpoints and slices of headless services, as upstream does.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Endpoints held by a leader election are not a service's and are never touched.
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";
/// Upstream's default --max-endpoints-per-slice.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// How often everything is looked at again without a change (deletions are not streamed).
const RESYNC: Duration = Duration::from_secs(5);
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Waits for a change on any of `streams` (or the resync), then for the burst to settle.
async fn next_round(events: &mut (impl Stream<Item = ()> + Unpin)) -> bool {
    if let Ok(None) = tokio::time::timeout(RESYNC, events.next()).await {
        return false;
    }
    // Coalesce the burst that usually follows one change.
    while let Ok(Some(())) = tokio::time::timeout(Duration::from_millis(50), events.next()).await {}
    true
}

/// The Endpoints controller; reads pods and services from the shared informers.
pub fn run(client: Client, informers: &Informers) -> Task {
    let pods = informers.pods.store();
    let services = informers.services.store();
    let mut endpoints_informer: Informer<Endpoints> = Informer::new(&client);
    let endpoints = endpoints_informer.store();
    let events = futures_util::stream::select_all([
        informers.pods.subscribe().map(|_| ()).boxed(),
        informers.services.subscribe().map(|_| ()).boxed(),
        endpoints_informer.subscribe().map(|_| ()).boxed(),
    ]);
    let watch = endpoints_informer.run();
    Box::pin(async move {
        let work = async move {
            let mut events = events;
            let (_, _, _) = tokio::join!(
                pods.wait_until_ready(),
                services.wait_until_ready(),
                endpoints.wait_until_ready()
            );
            loop {
                sync_endpoints(&client, &pods, &services, &endpoints).await;
                if !next_round(&mut events).await {
                    return;
                }
            }
        };
        tokio::join!(watch, work);
    })
}

/// The EndpointSlice controller; reads pods, nodes and services from the shared informers.
pub fn run_slices(client: Client, informers: &Informers) -> Task {
    let pods = informers.pods.store();
    let nodes = informers.nodes.store();
    let services = informers.services.store();
    let mut slice_informer: Informer<EndpointSlice> = Informer::new(&client);
    let slices = slice_informer.store();
    let events = futures_util::stream::select_all([
        informers.pods.subscribe().map(|_| ()).boxed(),
        informers.services.subscribe().map(|_| ()).boxed(),
        slice_informer.subscribe().map(|_| ()).boxed(),
    ]);
    let watch = slice_informer.run();
    Box::pin(async move {
        let work = async move {
            let mut events = events;
            let (_, _, _, _) = tokio::join!(
                pods.wait_until_ready(),
                services.wait_until_ready(),
                slices.wait_until_ready(),
                nodes.wait_until_ready()
            );
            loop {
                sync_slices(&client, &pods, &nodes, &services, &slices).await;
                if !next_round(&mut events).await {
                    return;
                }
            }
        };
        tokio::join!(watch, work);
    })
}

/// The pods `svc` selects (a service without a selector selects none here).
fn selected<'a>(svc: &Service, pods: &'a [Arc<Pod>]) -> Vec<&'a Arc<Pod>> {
    let ns = svc.metadata.namespace.as_deref();
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return vec![];
    };
    let mut out: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == ns)
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            sel.iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

fn has_selector(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// Upstream's ShouldPodBeInEndpoints: an IP, not finished, and not terminating unless
/// terminating pods are wanted.
fn should_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    if status
        .and_then(|s| s.pod_ip.as_deref())
        .is_none_or(str::is_empty)
    {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

/// The port a service port reaches on this pod: an integer target port, or the
/// container port of that name; `None` when the pod has no such named port.
fn target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(i)) => Some(*i),
        Some(IntOrString::String(name)) => {
            if let Ok(i) = name.parse::<i32>() {
                return Some(i);
            }
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|cp| {
                    (cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then_some(cp.container_port)
                })
            })
        }
    }
}

/// (name, port, protocol, appProtocol) of each service port on this pod.
fn pod_ports(svc: &Service, pod: &Pod) -> Vec<(Option<String>, i32, String, Option<String>)> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    let mut out: Vec<_> = ports
        .iter()
        .filter_map(|p| {
            Some((
                p.name.clone().filter(|n| !n.is_empty()),
                target_port(p, pod)?,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.app_protocol.clone(),
            ))
        })
        .collect();
    out.sort();
    out
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The pod's hostname in the service's DNS, when it asked for this service as subdomain.
fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_ref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace)
        .then(|| host.clone())
}

/// The labels of the service, with the headless marker.
fn labels(svc: &Service) -> BTreeMap<String, String> {
    let mut l = svc.metadata.labels.clone().unwrap_or_default();
    let headless = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    if headless {
        l.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        l.remove(HEADLESS_LABEL);
    }
    l
}

/// The subsets of `svc`'s Endpoints: addresses grouped by the ports they serve.
pub fn subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let publish = publish_not_ready(svc);
    type Group = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<PortKey, Group> = BTreeMap::new();
    for pod in selected(svc, pods) {
        if !should_be_in_endpoints(pod, publish) {
            continue;
        }
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let ports = pod_ports(svc, pod);
        let has_ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .is_some_and(|p| !p.is_empty());
        if has_ports && ports.is_empty() {
            continue;
        }
        let addr = EndpointAddress {
            ip,
            hostname: hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_ref(pod)),
        };
        let group = groups.entry(ports).or_default();
        if publish || pod_ready(pod) {
            group.0.push(addr);
        } else {
            group.1.push(addr);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol, app_protocol)| EndpointPort {
                            name,
                            port,
                            protocol: Some(protocol),
                            app_protocol,
                        })
                        .collect()
                }),
            }
        })
        .collect()
}

async fn sync_endpoints(
    client: &Client,
    pods: &Store<Pod>,
    services: &Store<Service>,
    endpoints: &Store<Endpoints>,
) {
    let pods = pods.state();
    let services = services.state();
    let by_key: HashMap<(String, String), &Arc<Service>> = services
        .iter()
        .map(|s| {
            (
                (
                    s.metadata.namespace.clone().unwrap_or_default(),
                    s.metadata.name.clone().unwrap_or_default(),
                ),
                s,
            )
        })
        .collect();
    let existing: HashMap<(String, String), Arc<Endpoints>> = endpoints
        .state()
        .into_iter()
        .map(|e| {
            (
                (
                    e.metadata.namespace.clone().unwrap_or_default(),
                    e.metadata.name.clone().unwrap_or_default(),
                ),
                e,
            )
        })
        .collect();
    for ((ns, name), svc) in &by_key {
        if !has_selector(svc) || svc.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let subsets = subsets(svc, &pods);
        let labels = labels(svc);
        let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
        let result = match existing.get(&(ns.clone(), name.clone())) {
            Some(old)
                if old.subsets.clone().unwrap_or_default() == subsets
                    && old.metadata.labels.clone().unwrap_or_default() == labels =>
            {
                continue
            }
            Some(old) => {
                let mut new = (**old).clone();
                new.subsets = Some(subsets);
                new.metadata.labels = Some(labels);
                api.replace(name, &PostParams::default(), &new).await
            }
            None => {
                let mut new = Endpoints::default();
                new.metadata.name = Some(name.clone());
                new.metadata.labels = Some(labels);
                new.subsets = Some(subsets);
                api.create(&PostParams::default(), &new).await
            }
        };
        match result {
            Ok(_) => debug!(namespace = %ns, service = %name, "endpoints updated"),
            Err(e) => warn!(namespace = %ns, service = %name, error = %e, "endpoints"),
        }
    }
    // Endpoints whose service is gone go with it.
    for ((ns, name), ep) in &existing {
        let held = ep
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(LEADER_ANNOTATION));
        if held || by_key.contains_key(&(ns.clone(), name.clone())) {
            continue;
        }
        let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => debug!(namespace = %ns, service = %name, "endpoints deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => warn!(namespace = %ns, service = %name, error = %e, "endpoints"),
        }
    }
}

type PortKey = Vec<(Option<String>, i32, String, Option<String>)>;

/// The slices `svc` should have: (addressType, ports, endpoints), at most
/// [`MAX_ENDPOINTS_PER_SLICE`] endpoints each.
pub fn desired_slices(
    svc: &Service,
    pods: &[Arc<Pod>],
    nodes: &Store<Node>,
) -> Vec<(String, PortKey, Vec<Endpoint>)> {
    let publish = publish_not_ready(svc);
    let families: Vec<String> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| vec!["IPv4".into()]);
    let mut groups: BTreeMap<(String, PortKey), Vec<Endpoint>> = BTreeMap::new();
    let selected = selected(svc, pods);
    for family in &families {
        for pod in &selected {
            if !should_be_in_endpoints(pod, true) {
                continue;
            }
            let status = pod.status.as_ref();
            let mut ips: Vec<String> = status
                .and_then(|s| s.pod_ips.as_ref())
                .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
                .unwrap_or_default();
            if ips.is_empty() {
                ips.extend(status.and_then(|s| s.pod_ip.clone()));
            }
            let v6 = family == "IPv6";
            let Some(ip) = ips.into_iter().find(|ip| ip.contains(':') == v6) else {
                continue;
            };
            let ports = pod_ports(svc, pod);
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let serving = pod_ready(pod);
            let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            let zone = node_name.as_ref().and_then(|n| {
                nodes
                    .get(&kube::runtime::reflector::ObjectRef::new(n))?
                    .metadata
                    .labels
                    .as_ref()?
                    .get(ZONE_LABEL)
                    .cloned()
            });
            groups
                .entry((family.clone(), ports))
                .or_default()
                .push(Endpoint {
                    addresses: vec![ip],
                    conditions: Some(EndpointConditions {
                        ready: Some(publish || (serving && !terminating)),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    hostname: hostname(svc, pod),
                    node_name,
                    target_ref: Some(pod_ref(pod)),
                    zone,
                    ..Default::default()
                });
        }
    }
    let mut out = vec![];
    for ((family, ports), mut eps) in groups {
        eps.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push((family.clone(), ports.clone(), chunk.to_vec()));
        }
    }
    if out.is_empty() {
        // A placeholder, as upstream keeps one slice per service even with no endpoints.
        out.push((families[0].clone(), vec![], vec![]));
    }
    out
}

fn slice_ports(ports: &PortKey) -> Option<Vec<SlicePort>> {
    Some(
        ports
            .iter()
            .map(|(name, port, protocol, app_protocol)| SlicePort {
                name: Some(name.clone().unwrap_or_default()),
                port: Some(*port),
                protocol: Some(protocol.clone()),
                app_protocol: app_protocol.clone(),
            })
            .collect(),
    )
}

fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut l = labels(svc);
    l.insert(
        SERVICE_NAME_LABEL.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    l.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    l
}

async fn sync_slices(
    client: &Client,
    pods: &Store<Pod>,
    nodes: &Store<Node>,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
) {
    let pods = pods.state();
    let services = services.state();
    let present: std::collections::HashSet<(String, String)> = services
        .iter()
        .map(|s| {
            (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut owned: HashMap<(String, String), Vec<Arc<EndpointSlice>>> = HashMap::new();
    for s in slices.state() {
        let l = s.metadata.labels.clone().unwrap_or_default();
        if l.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
            continue;
        }
        let Some(svc) = l.get(SERVICE_NAME_LABEL) else {
            continue;
        };
        owned
            .entry((
                s.metadata.namespace.clone().unwrap_or_default(),
                svc.clone(),
            ))
            .or_default()
            .push(s);
    }
    for svc in &services {
        if !has_selector(svc) || svc.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let mut existing = owned
            .remove(&(ns.clone(), name.clone()))
            .unwrap_or_default();
        let labels = slice_labels(svc);
        let owner = controller_ref(&**svc);
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        let mut to_write = vec![];
        for (family, ports, eps) in desired_slices(svc, &pods, nodes) {
            let ports = slice_ports(&ports);
            let same_shape = |s: &EndpointSlice| s.address_type == family && s.ports == ports;
            // An identical slice stays; else one of the same shape is rewritten.
            if let Some(i) = existing.iter().position(|s| {
                same_shape(s)
                    && s.endpoints == eps
                    && s.metadata.labels.as_ref() == Some(&labels)
                    && s.metadata.owner_references.as_ref() == Some(&vec![owner.clone()])
            }) {
                existing.swap_remove(i);
                continue;
            }
            to_write.push((family, ports, eps));
        }
        for (family, ports, eps) in to_write {
            let result = match existing.iter().position(|s| s.address_type == family) {
                Some(i) => {
                    let mut s = (*existing.swap_remove(i)).clone();
                    s.ports = ports;
                    s.endpoints = eps;
                    s.metadata.labels = Some(labels.clone());
                    s.metadata.owner_references = Some(vec![owner.clone()]);
                    let n = s.metadata.name.clone().unwrap_or_default();
                    api.replace(&n, &PostParams::default(), &s).await
                }
                None => {
                    let mut s = EndpointSlice {
                        address_type: family,
                        endpoints: eps,
                        ports,
                        ..Default::default()
                    };
                    s.metadata.generate_name = Some(format!("{name}-"));
                    s.metadata.labels = Some(labels.clone());
                    s.metadata.owner_references = Some(vec![owner.clone()]);
                    api.create(&PostParams::default(), &s).await
                }
            };
            if let Err(e) = result {
                warn!(namespace = %ns, service = %name, error = %e, "endpointslice");
            }
        }
        for s in existing {
            delete_slice(&api, &s).await;
        }
    }
    // Slices of services that are gone; a service without a selector keeps what it has.
    for ((ns, svc), list) in owned {
        if present.contains(&(ns.clone(), svc)) {
            continue;
        }
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        for s in list {
            delete_slice(&api, &s).await;
        }
    }
}

async fn delete_slice(api: &Api<EndpointSlice>, s: &EndpointSlice) {
    let name = s.metadata.name.clone().unwrap_or_default();
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => warn!(slice = %name, error = %e, "endpointslice delete"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::auth::token::memory_api;
    use crate::api::auth::CONTROLLER_MANAGER_USER;
    use crate::controllers::client::in_process;
    use kube::api::{ListParams, Patch, PatchParams};
    use serde_json::json;

    /// Polls `f` until it gives a value, for at most 20 s.
    pub(crate) async fn eventually<T, F, Fut>(mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn make_pod(client: &Client, name: &str, labels: serde_json::Value) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox",
                "ports": [{"name": "http", "containerPort": 8080}]}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }

    /// Writes what a kubelet would: the pod running with this IP, ready or not.
    pub(crate) async fn set_pod_status(client: &Client, name: &str, ip: &str, ready: bool) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn endpoints_and_slices_follow_pods() {
        let (api, _stop) = memory_api().await;
        let client = in_process(api, CONTROLLER_MANAGER_USER);
        let mut informers = Informers::new(&client);
        let mut tasks = vec![
            run(client.clone(), &informers),
            run_slices(client.clone(), &informers),
        ];
        tasks.extend(informers.run());
        let _h = tokio::spawn(futures_util::future::join_all(tasks));

        let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        }))
        .unwrap();
        svcs.create(&PostParams::default(), &svc).await.unwrap();
        make_pod(&client, "p1", json!({"app": "web"})).await;
        make_pod(&client, "p2", json!({"app": "web"})).await;
        make_pod(&client, "other", json!({"app": "db"})).await;
        set_pod_status(&client, "p1", "10.1.0.1", true).await;
        set_pod_status(&client, "p2", "10.1.0.2", true).await;
        set_pod_status(&client, "other", "10.1.0.3", true).await;

        let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
        let ep = eventually(|| async {
            let ep = eps.get_opt("web").await.unwrap()?;
            let s = ep.subsets.clone()?;
            (s.len() == 1 && s[0].addresses.as_ref()?.len() == 2).then_some(ep)
        })
        .await;
        let subset = &ep.subsets.as_ref().unwrap()[0];
        let addrs = subset.addresses.as_ref().unwrap();
        assert_eq!(addrs[0].ip, "10.1.0.1");
        assert_eq!(addrs[0].node_name.as_deref(), Some("n1"));
        assert_eq!(
            addrs[0].target_ref.as_ref().unwrap().name.as_deref(),
            Some("p1")
        );
        // The named target port is the container's.
        assert_eq!(subset.ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(
            ep.metadata
                .labels
                .as_ref()
                .unwrap()
                .get("team")
                .map(String::as_str),
            Some("a")
        );

        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let lp = ListParams::default().labels("kubernetes.io/service-name=web");
        let slice = eventually(|| async {
            let list = slices.list(&lp).await.unwrap().items;
            (list.len() == 1 && list[0].endpoints.len() == 2).then(|| list[0].clone())
        })
        .await;
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(
            slice.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL],
            MANAGED_BY
        );
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(8080));
        assert_eq!(
            slice.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Service"
        );
        assert!(slice.metadata.name.as_ref().unwrap().starts_with("web-"));

        // Not ready: into notReadyAddresses, and ready=false in the slice.
        set_pod_status(&client, "p2", "10.1.0.2", false).await;
        eventually(|| async {
            let ep = eps.get_opt("web").await.unwrap()?;
            let s = &ep.subsets.clone()?[0];
            let nr = s.not_ready_addresses.as_ref()?;
            (s.addresses.as_ref()?.len() == 1 && nr[0].ip == "10.1.0.2").then_some(())
        })
        .await;
        eventually(|| async {
            let list = slices.list(&lp).await.unwrap().items;
            let e = list
                .first()?
                .endpoints
                .iter()
                .find(|e| e.addresses[0] == "10.1.0.2")?;
            let c = e.conditions.as_ref()?;
            (c.ready == Some(false) && c.serving == Some(false)).then_some(())
        })
        .await;

        // The service goes, and its Endpoints and slices with it.
        svcs.delete("web", &DeleteParams::default()).await.unwrap();
        eventually(|| async { eps.get_opt("web").await.unwrap().is_none().then_some(()) }).await;
        eventually(|| async {
            slices
                .list(&lp)
                .await
                .unwrap()
                .items
                .is_empty()
                .then_some(())
        })
        .await;
    }
}
