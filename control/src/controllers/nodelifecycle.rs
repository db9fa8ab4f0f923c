//! The node lifecycle controller and the taint eviction controller, as
//! kube-controller-manager's nodelifecycle and tainteviction: a node whose kubelet stops
//! renewing its Lease and posting status goes Unknown after the grace period and its pods
//! not ready; node conditions become taints (NoExecute not-ready/unreachable, the
//! NoSchedule condition taints and unschedulable); pods that do not tolerate a node's
//! NoExecute taints are deleted, at once or when their tolerationSeconds run out.
//! Zone-based rate limiting of evictions is not done: every node is handled alike.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::manager::Task;
use super::shared::{Informers, Recorder};

pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
const LEASE_NAMESPACE: &str = "kube-node-lease";
const NO_EXECUTE: &str = "NoExecute";
const NO_SCHEDULE: &str = "NoSchedule";

/// Condition type and status → the NoSchedule taint it stands for (TaintNodesByCondition).
const CONDITION_TAINTS: &[(&str, &str, &str)] = &[
    ("Ready", "False", TAINT_NOT_READY),
    ("Ready", "Unknown", TAINT_UNREACHABLE),
    (
        "MemoryPressure",
        "True",
        "node.kubernetes.io/memory-pressure",
    ),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    (
        "NetworkUnavailable",
        "True",
        "node.kubernetes.io/network-unavailable",
    ),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
];

/// The conditions a kubelet posts, each set Unknown when it stops.
const KUBELET_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// The periods of the controller; upstream's defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often node health is looked at (--node-monitor-period).
    pub monitor_period: Duration,
    /// How long a node may go without a Lease renewal or status before it is Unknown
    /// (--node-monitor-grace-period).
    pub grace_period: Duration,
    /// How often pods on NoExecute-tainted nodes are looked at.
    pub eviction_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(40),
            eviction_period: Duration::from_secs(1),
        }
    }
}

pub fn run(client: Client, informers: &Informers) -> Task {
    run_with(client, informers, Config::default())
}

pub fn run_with(client: Client, informers: &Informers, config: Config) -> Task {
    let mut c = Controller {
        nodes: informers.nodes.store(),
        pods: informers.pods.store(),
        recorder: Recorder::new(client.clone(), "node-controller"),
        client,
        config,
        health: HashMap::new(),
        evicted: HashSet::new(),
        first_tainted: HashMap::new(),
    };
    Box::pin(async move {
        let _ = c.nodes.wait_until_ready().await;
        let _ = c.pods.wait_until_ready().await;
        let mut monitor = tokio::time::interval(c.config.monitor_period);
        let mut eviction = tokio::time::interval(c.config.eviction_period);
        loop {
            tokio::select! {
                _ = monitor.tick() => c.monitor().await,
                _ = eviction.tick() => c.evict().await,
            }
        }
    })
}

/// What was last seen of a node's heartbeats, and when (by this controller's clock, as
/// upstream, so that clock skew between nodes and controller does not matter).
struct Health {
    probe: (Option<Timestamp>, Option<Timestamp>),
    observed: Instant,
    ready: Option<String>,
}

struct Controller {
    client: Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
    recorder: Recorder,
    config: Config,
    health: HashMap<String, Health>,
    /// Pods already deleted (by UID), so that each gets one delete and one event.
    evicted: HashSet<String>,
    /// When a NoExecute taint without timeAdded was first seen: (node, key) → time.
    first_tainted: HashMap<(String, String), Timestamp>,
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

impl Controller {
    async fn monitor(&mut self) {
        let leases: HashMap<String, Timestamp> =
            match Api::<Lease>::namespaced(self.client.clone(), LEASE_NAMESPACE)
                .list(&ListParams::default())
                .await
            {
                Ok(l) => l
                    .items
                    .into_iter()
                    .filter_map(|l| {
                        let t = l.spec.as_ref()?.renew_time.as_ref()?.0;
                        Some((l.name_any(), t))
                    })
                    .collect(),
                Err(e) => {
                    warn!(error = %e, "node leases");
                    HashMap::new()
                }
            };
        let nodes = self.nodes.state();
        let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        self.health.retain(|n, _| names.contains(n));
        self.first_tainted.retain(|(n, _), _| names.contains(n));
        for node in nodes {
            if let Err(e) = self.monitor_node(&node, leases.get(&node.name_any())).await {
                warn!(node = %node.name_any(), error = %e, "node lifecycle");
            }
        }
    }

    async fn monitor_node(&mut self, node: &Node, lease: Option<&Timestamp>) -> kube::Result<()> {
        let name = node.name_any();
        let heartbeat = condition(node, "Ready")
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        let probe = (lease.copied(), heartbeat);
        let now = Instant::now();
        let h = self.health.entry(name.clone()).or_insert(Health {
            probe,
            observed: now,
            ready: None,
        });
        if h.probe != probe {
            h.probe = probe;
            h.observed = now;
        }
        let stale = now.duration_since(h.observed) > self.config.grace_period;
        let mut node = node.clone();
        let ready_now = condition(&node, "Ready").map(|c| c.status.clone());
        if stale && ready_now.as_deref() != Some("Unknown") {
            node = self.mark_unknown(&node).await?;
            self.mark_pods_not_ready(&name).await;
        }
        let ready = condition(&node, "Ready").map(|c| c.status.clone());
        let h = self.health.get_mut(&name).expect("inserted above");
        if h.ready != ready {
            let was = h.ready.replace(ready.clone().unwrap_or_default());
            match ready.as_deref() {
                Some("True") => {
                    self.recorder
                        .publish(
                            &node,
                            "Normal",
                            "NodeReady",
                            &format!("Node {name} status is now: NodeReady"),
                        )
                        .await
                }
                _ if was.as_deref() == Some("True") || stale => {
                    self.recorder
                        .publish(
                            &node,
                            "Normal",
                            "NodeNotReady",
                            &format!("Node {name} status is now: NodeNotReady"),
                        )
                        .await
                }
                _ => {}
            }
        }
        self.update_taints(&node).await
    }

    /// Every kubelet condition Unknown, as upstream's tryUpdateNodeHealth when the grace
    /// period has passed; the heartbeat times are kept.
    async fn mark_unknown(&self, node: &Node) -> kube::Result<Node> {
        let now = Time(Timestamp::now());
        let mut conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for type_ in KUBELET_CONDITIONS {
            let (reason, message) = ("NodeStatusUnknown", "Kubelet stopped posting node status.");
            match conditions.iter_mut().find(|c| c.type_ == *type_) {
                Some(c) => {
                    c.status = "Unknown".into();
                    c.reason = Some(reason.into());
                    c.message = Some(message.into());
                    c.last_transition_time = Some(now.clone());
                }
                None => conditions.push(NodeCondition {
                    type_: type_.to_string(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: Some(now.clone()),
                    last_transition_time: Some(now.clone()),
                }),
            }
        }
        info!(node = %node.name_any(), "kubelet stopped posting node status");
        let patch = json!({
            "metadata": { "resourceVersion": node.resource_version() },
            "status": { "conditions": conditions },
        });
        Api::<Node>::all(self.client.clone())
            .patch_status(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
    }

    /// Every pod on the node Ready=False (upstream's MarkPodsNotReady).
    async fn mark_pods_not_ready(&self, node: &str) {
        let now = Time(Timestamp::now());
        for pod in self.pods.state() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
                continue;
            }
            let Some(status) = pod.status.as_ref() else {
                continue;
            };
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                continue;
            }
            let mut conditions = status.conditions.clone().unwrap_or_default();
            let Some(c) = conditions.iter_mut().find(|c| c.type_ == "Ready") else {
                continue;
            };
            if c.status == "False" {
                continue;
            }
            c.status = "False".into();
            c.last_transition_time = Some(now.clone());
            let patch = json!({
                "metadata": { "resourceVersion": pod.resource_version() },
                "status": { "conditions": conditions },
            });
            let ns = pod.namespace().unwrap_or_default();
            if let Err(e) = Api::<Pod>::namespaced(self.client.clone(), &ns)
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                warn!(pod = %pod.name_any(), namespace = %ns, error = %e, "marking pod not ready");
            }
        }
    }

    /// The taints the conditions and spec.unschedulable call for, others left as they are.
    async fn update_taints(&self, node: &Node) -> kube::Result<()> {
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let want = desired_taints(node, &current, Timestamp::now());
        if want == current {
            return Ok(());
        }
        debug!(node = %node.name_any(), ?want, "node taints");
        let patch = json!({
            "metadata": { "resourceVersion": node.resource_version() },
            "spec": { "taints": want },
        });
        Api::<Node>::all(self.client.clone())
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
    }

    /// The taint eviction pass: each pod bound to a node with NoExecute taints is deleted
    /// when a taint is not tolerated or its tolerationSeconds have run out.
    async fn evict(&mut self) {
        let now = Timestamp::now();
        let nodes: HashMap<String, std::sync::Arc<Node>> = self
            .nodes
            .state()
            .into_iter()
            .map(|n| (n.name_any(), n))
            .collect();
        let pods = self.pods.state();
        let live: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        self.evicted.retain(|u| live.contains(u));
        for pod in pods {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(n) = nodes.get(node) else { continue };
            let taints: Vec<Taint> = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.effect == NO_EXECUTE)
                .map(|mut t| {
                    if t.time_added.is_none() {
                        let first = *self
                            .first_tainted
                            .entry((node.clone(), t.key.clone()))
                            .or_insert(now);
                        t.time_added = Some(Time(first));
                    }
                    t
                })
                .collect();
            if taints.is_empty() {
                continue;
            }
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            let Some(deadline) = eviction_time(&taints, &tolerations) else {
                continue;
            };
            if deadline > now {
                continue;
            }
            let uid = pod.uid().unwrap_or_default();
            if self.evicted.contains(&uid) {
                continue;
            }
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            self.recorder
                .publish(
                    pod.as_ref(),
                    "Normal",
                    "TaintManagerEviction",
                    &format!("Marking for deletion Pod {ns}/{name}"),
                )
                .await;
            let params = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match Api::<Pod>::namespaced(self.client.clone(), &ns)
                .delete(&name, &params)
                .await
            {
                Ok(_) => {
                    info!(pod = %name, namespace = %ns, node = %node, "evicted for a NoExecute taint");
                    self.evicted.insert(uid);
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                    self.evicted.insert(uid);
                }
                Err(e) => warn!(pod = %name, namespace = %ns, error = %e, "taint eviction"),
            }
        }
    }
}

/// The node's taints with the controlled ones as its conditions call for: existing ones
/// are kept as they are (their timeAdded too), missing ones added, stale ones removed.
pub fn desired_taints(node: &Node, current: &[Taint], now: Timestamp) -> Vec<Taint> {
    let mut want: Vec<(String, &str)> = vec![];
    for (type_, status, key) in CONDITION_TAINTS {
        if condition(node, type_).is_some_and(|c| c.status == *status) {
            want.push((key.to_string(), NO_SCHEDULE));
        }
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        want.push((TAINT_UNSCHEDULABLE.to_string(), NO_SCHEDULE));
    }
    match condition(node, "Ready").map(|c| c.status.as_str()) {
        Some("False") => want.push((TAINT_NOT_READY.to_string(), NO_EXECUTE)),
        Some("Unknown") => want.push((TAINT_UNREACHABLE.to_string(), NO_EXECUTE)),
        _ => {}
    }
    let controlled = |t: &Taint| {
        (t.effect == NO_SCHEDULE
            && (CONDITION_TAINTS.iter().any(|(_, _, k)| *k == t.key)
                || t.key == TAINT_UNSCHEDULABLE))
            || (t.effect == NO_EXECUTE && (t.key == TAINT_NOT_READY || t.key == TAINT_UNREACHABLE))
    };
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !controlled(t) || want.iter().any(|(k, e)| *k == t.key && *e == t.effect))
        .cloned()
        .collect();
    for (key, effect) in want {
        if !out.iter().any(|t| t.key == key && t.effect == effect) {
            out.push(Taint {
                key,
                effect: effect.to_string(),
                value: None,
                // Upstream stamps only the NoExecute taints, which eviction times from.
                time_added: (effect == NO_EXECUTE).then_some(Time(now)),
            });
        }
    }
    out
}

/// Whether a toleration tolerates a taint (upstream's ToleratesTaint).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// When a pod must go for these NoExecute taints (each with timeAdded): now-or-earlier
/// when one is not tolerated, else the earliest timeAdded + the shortest tolerationSeconds
/// of the tolerations matching that taint; `None` when all are tolerated forever.
pub fn eviction_time(taints: &[Taint], tolerations: &[Toleration]) -> Option<Timestamp> {
    let mut at: Option<Timestamp> = None;
    for taint in taints {
        let added = taint
            .time_added
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let when = if matching.is_empty() {
            Some(Timestamp::MIN)
        } else {
            matching
                .iter()
                .filter_map(|t| t.toleration_seconds)
                .min()
                .map(|s| added + jiff::SignedDuration::from_secs(s.max(0)))
        };
        if let Some(w) = when {
            at = Some(at.map_or(w, |a: Timestamp| a.min(w)));
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Event;
    use kube::api::PostParams;
    use serde_json::Value;

    use super::*;
    use crate::controllers::client::in_process;

    fn taint_keys(node: &Node) -> Vec<String> {
        let mut k: Vec<String> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        k.sort();
        k
    }

    async fn until<F, Fut>(what: &str, secs: u64, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn create<K>(client: &Client, ns: Option<&str>, v: Value) -> K
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns.unwrap_or("default"));
        api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
            .await
            .unwrap()
    }

    async fn node(client: &Client, name: &str, taints: Value) {
        let nodes: Api<Node> = Api::all(client.clone());
        let n: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": name },
            "spec": { "taints": taints },
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &n).await.unwrap();
        post_ready(client, name, "2020-01-01T00:00:00Z").await;
    }

    /// What the kubelet does: Ready=True with a heartbeat.
    async fn post_ready(client: &Client, name: &str, heartbeat: &str) {
        let patch = json!({ "status": { "conditions": [
            { "type": "Ready", "status": "True", "reason": "KubeletReady",
              "lastHeartbeatTime": heartbeat, "lastTransitionTime": heartbeat },
            { "type": "MemoryPressure", "status": "False",
              "lastHeartbeatTime": heartbeat, "lastTransitionTime": heartbeat },
        ]}});
        Api::<Node>::all(client.clone())
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    async fn renew(client: &Client, name: &str, at: &str) {
        let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
        let l = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": { "name": name, "namespace": LEASE_NAMESPACE },
            "spec": { "holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": at },
        });
        if leases.get_opt(name).await.unwrap().is_some() {
            leases
                .patch(name, &PatchParams::default(), &Patch::Merge(&l))
                .await
                .unwrap();
        } else {
            leases
                .create(&PostParams::default(), &serde_json::from_value(l).unwrap())
                .await
                .unwrap();
        }
    }

    async fn pod(client: &Client, name: &str, node: &str, tolerations: Value) -> Pod {
        let p: Pod = create(
            client,
            None,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name },
                "spec": { "nodeName": node, "tolerations": tolerations,
                          "containers": [{ "name": "c", "image": "busybox" }] },
            }),
        )
        .await;
        let patch = json!({ "status": { "phase": "Running", "conditions": [
            { "type": "Ready", "status": "True" },
        ]}});
        Api::<Pod>::namespaced(client.clone(), "default")
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        p
    }

    async fn gone(client: &Client, name: &str) -> bool {
        match Api::<Pod>::namespaced(client.clone(), "default")
            .get_opt(name)
            .await
            .unwrap()
        {
            None => true,
            Some(p) => p.metadata.deletion_timestamp.is_some(),
        }
    }

    fn start(client: &Client, config: Config) -> Vec<tokio::task::JoinHandle<()>> {
        let mut informers = Informers::new(client);
        let mut tasks = vec![run_with(client.clone(), &informers, config)];
        tasks.extend(informers.run());
        tasks.into_iter().map(tokio::spawn).collect()
    }

    async fn ensure_lease_namespace(client: &Client) {
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        if nss.get_opt(LEASE_NAMESPACE).await.unwrap().is_none() {
            let ns = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": LEASE_NAMESPACE },
            }))
            .unwrap();
            nss.create(&PostParams::default(), &ns).await.unwrap();
        }
    }

    /// A node whose Lease is not renewed goes Unknown, unreachable-tainted, its pods not
    /// ready; a renewed Lease and a posted status take the taints away.
    #[tokio::test]
    async fn a_stale_lease_makes_the_node_unknown_and_unreachable_until_renewed() {
        let (api, _stop) = crate::api::auth::token::memory_api().await;
        let client = in_process(Arc::clone(&api), crate::api::auth::CONTROLLER_MANAGER_USER);
        ensure_lease_namespace(&client).await;
        node(&client, "n1", json!([])).await;
        renew(&client, "n1", "2020-01-01T00:00:00.000000Z").await;
        pod(&client, "p1", "n1", json!([])).await;
        let _tasks = start(
            &client,
            Config {
                monitor_period: Duration::from_millis(100),
                grace_period: Duration::from_millis(800),
                eviction_period: Duration::from_millis(100),
            },
        );
        let nodes: Api<Node> = Api::all(client.clone());
        until("the node to go Unknown and unreachable", 20, || async {
            let n = nodes.get("n1").await.unwrap();
            condition(&n, "Ready").is_some_and(|c| c.status == "Unknown")
                && taint_keys(&n)
                    == [
                        "node.kubernetes.io/unreachable:NoExecute",
                        "node.kubernetes.io/unreachable:NoSchedule",
                    ]
        })
        .await;
        let n = nodes.get("n1").await.unwrap();
        for type_ in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            let c = condition(&n, type_).unwrap();
            assert_eq!(c.status, "Unknown", "{type_}");
        }
        let ready = condition(&n, "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(
            ready.message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );
        assert_eq!(
            ready.last_heartbeat_time.as_ref().unwrap().0,
            "2020-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        let unreachable = n
            .spec
            .as_ref()
            .unwrap()
            .taints
            .as_ref()
            .unwrap()
            .iter()
            .find(|t| t.effect == NO_EXECUTE)
            .unwrap();
        assert!(unreachable.time_added.is_some());
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        until("the pod to be marked not ready", 10, || async {
            let p = pods.get("p1").await.unwrap();
            p.status
                .unwrap()
                .conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False")
        })
        .await;
        // The default 300 s toleration keeps the pod for now.
        assert!(!gone(&client, "p1").await);
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        until("a NodeNotReady event", 10, || async {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("NodeNotReady"))
        })
        .await;

        let now = Timestamp::now().to_string();
        renew(&client, "n1", &now).await;
        post_ready(&client, "n1", &now).await;
        until("the taints to go", 20, || async {
            taint_keys(&nodes.get("n1").await.unwrap()).is_empty()
        })
        .await;
    }

    /// Pods on a node with a NoExecute taint: one not tolerating it goes at once, one
    /// tolerating it for 2 s goes after about 2 s, one tolerating it forever stays.
    #[tokio::test]
    async fn no_execute_taints_evict_pods_by_their_tolerations() {
        let (api, _stop) = crate::api::auth::token::memory_api().await;
        let client = in_process(Arc::clone(&api), crate::api::auth::CONTROLLER_MANAGER_USER);
        ensure_lease_namespace(&client).await;
        // Whole seconds: a Time holds no more.
        let added = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
        node(
            &client,
            "n2",
            json!([{ "key": "example.com/evict", "effect": "NoExecute", "timeAdded": added.to_string() }]),
        )
        .await;
        pod(&client, "plain", "n2", json!([])).await;
        pod(
            &client,
            "short",
            "n2",
            json!([{ "key": "example.com/evict", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2 }]),
        )
        .await;
        pod(&client, "forever", "n2", json!([{ "operator": "Exists" }])).await;
        let _tasks = start(
            &client,
            Config {
                monitor_period: Duration::from_millis(100),
                grace_period: Duration::from_secs(3600),
                eviction_period: Duration::from_millis(100),
            },
        );
        until("the intolerant pod to go", 10, || gone(&client, "plain")).await;
        until("the 2 s pod to go", 10, || gone(&client, "short")).await;
        let took = Timestamp::now().duration_since(added);
        assert!(
            took >= jiff::SignedDuration::from_secs(2),
            "went after {took:?}"
        );
        assert!(
            took < jiff::SignedDuration::from_secs(6),
            "went after {took:?}"
        );
        // A few more passes: the pod tolerating forever is still there.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!gone(&client, "forever").await);
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        let list = events.list(&ListParams::default()).await.unwrap().items;
        assert!(list
            .iter()
            .any(|e| e.reason.as_deref() == Some("TaintManagerEviction")
                && e.message.as_deref() == Some("Marking for deletion Pod default/plain")));
    }

    #[test]
    fn tolerations_match_as_upstream() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: NO_EXECUTE.into(),
            time_added: None,
        };
        let t = |v: Value| -> Toleration { serde_json::from_value(v).unwrap() };
        assert!(tolerates(&t(json!({"operator": "Exists"})), &taint));
        assert!(tolerates(&t(json!({"key": "k", "value": "v"})), &taint));
        assert!(!tolerates(&t(json!({"key": "k", "value": "w"})), &taint));
        assert!(!tolerates(
            &t(json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"})),
            &taint
        ));
        assert!(tolerates(
            &t(json!({"key": "k", "operator": "Exists", "effect": "NoExecute"})),
            &taint
        ));
        assert!(!tolerates(
            &t(json!({"key": "j", "operator": "Exists"})),
            &taint
        ));
    }

    #[test]
    fn ready_false_swaps_unreachable_for_not_ready() {
        let old = Time("2020-01-01T00:00:00Z".parse().unwrap());
        let n: Node = serde_json::from_value(json!({
            "metadata": { "name": "n" },
            "spec": { "unschedulable": true },
            "status": { "conditions": [{ "type": "Ready", "status": "False" }] },
        }))
        .unwrap();
        let current = vec![
            Taint {
                key: TAINT_UNREACHABLE.into(),
                effect: NO_EXECUTE.into(),
                value: None,
                time_added: Some(old.clone()),
            },
            Taint {
                key: "other".into(),
                effect: NO_EXECUTE.into(),
                value: None,
                time_added: None,
            },
        ];
        let got = desired_taints(&n, &current, Timestamp::now());
        let mut keys: Vec<String> = got
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "node.kubernetes.io/not-ready:NoExecute",
                "node.kubernetes.io/not-ready:NoSchedule",
                "node.kubernetes.io/unschedulable:NoSchedule",
                "other:NoExecute",
            ]
        );
    }
}
