//! The scheduler, as kube-scheduler's default profile does it in small: each pending pod
//! is checked against every node by the filters (unschedulable, taints and tolerations,
//! node selector and required affinity, host ports, resources against allocatable), the
//! nodes that pass are scored (least allocated, spread of one owner's pods, preferred
//! affinity, PreferNoSchedule taints) and the pod is bound to the best through
//! pods/binding. A pod that fits nowhere gets `PodScheduled=False` and a FailedScheduling
//! event saying why, node by node, and is tried again when nodes or pods change.
//!
//! Bindings are "assumed" at once, so the next pod sees the node's new load before the
//! watch brings the bound pod back.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, Node, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference, Pod, Taint,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info};

use super::manager::Task;
use super::shared::{controller_of, Informers, Recorder};
use crate::registry::pod::parse_quantity;

/// The name pods ask for in `spec.schedulerName` (and get by default).
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// An unschedulable pod is tried again at least this often, even with no change seen
/// (upstream flushes its unschedulable queue on a timer too).
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(30);

/// An assumed binding the cache has not shown after this long is forgotten.
const ASSUME_TTL: Duration = Duration::from_secs(60);

/// What a container that requests nothing counts as when scoring (upstream's non-zero
/// defaults), so that pods without requests still spread by load.
const DEFAULT_CPU: i128 = 100_000_000; // 100m in 10^-9 cores
const DEFAULT_MEMORY: i128 = 200 * 1024 * 1024 * 1_000_000_000; // 200Mi in 10^-9 bytes

/// One unit of a resource in [`parse_quantity`]'s scale.
const ONE: i128 = 1_000_000_000;

/// Runs the scheduler until dropped.
pub fn run(client: Client, informers: &Informers) -> Task {
    let pod_changes = informers.pods.subscribe();
    let node_changes = informers.nodes.subscribe();
    let mut s = Scheduler {
        recorder: Recorder::new(client.clone(), SCHEDULER_NAME),
        client,
        pods: informers.pods.store(),
        nodes: informers.nodes.store(),
        assumed: HashMap::new(),
        unschedulable: HashMap::new(),
        turn: 0,
    };
    Box::pin(async move {
        s.pods.wait_until_ready().await.ok();
        s.nodes.wait_until_ready().await.ok();
        s.run(pod_changes, node_changes).await
    })
}

/// A pod bound by this scheduler that the cache may not show bound yet.
struct Assumed {
    node: String,
    at: Instant,
}

struct Scheduler {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    recorder: Recorder,
    /// By pod uid.
    assumed: HashMap<String, Assumed>,
    /// Pods that fit nowhere, by uid, with when they were last tried.
    unschedulable: HashMap<String, (PodKey, Instant)>,
    /// Breaks ties between equally good nodes in turn.
    turn: usize,
}

type PodKey = (String, String);

fn pod_key(pod: &Pod) -> PodKey {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Whether this scheduler should place the pod.
fn needs_scheduling(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let ours = spec
        .scheduler_name
        .as_deref()
        .is_none_or(|n| n.is_empty() || n == SCHEDULER_NAME);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    ours && spec.node_name.as_deref().is_none_or(str::is_empty)
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

impl Scheduler {
    async fn run(
        &mut self,
        pod_changes: impl futures_util::Stream<Item = Arc<Pod>> + Unpin,
        node_changes: impl futures_util::Stream<Item = Arc<Node>> + Unpin,
    ) {
        let mut pod_changes = pod_changes;
        let mut node_changes = node_changes;
        let mut queue: VecDeque<PodKey> = VecDeque::new();
        let mut queued: HashSet<PodKey> = HashSet::new();
        for p in self.pods.state() {
            if needs_scheduling(&p) && queued.insert(pod_key(&p)) {
                queue.push_back(pod_key(&p));
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            if queue.is_empty() {
                tokio::select! {
                    Some(p) = pod_changes.next() => self.on_pod(&p, &mut queue, &mut queued),
                    Some(_) = node_changes.next() => self.retry_all(&mut queue, &mut queued, Duration::ZERO),
                    _ = tick.tick() => self.retry_all(&mut queue, &mut queued, RETRY_UNSCHEDULABLE),
                }
            }
            // Take in whatever else has arrived before placing the next batch.
            while let Some(Some(p)) = pod_changes.next().now_or_never() {
                self.on_pod(&p, &mut queue, &mut queued);
            }
            let mut nodes_changed = false;
            while let Some(Some(_)) = node_changes.next().now_or_never() {
                nodes_changed = true;
            }
            if nodes_changed {
                self.retry_all(&mut queue, &mut queued, Duration::ZERO);
            }
            if queue.is_empty() {
                continue;
            }
            let mut snapshot = self.snapshot();
            // A batch at a time, so that changes keep coming in under load.
            for _ in 0..256 {
                let Some(key) = queue.pop_front() else { break };
                queued.remove(&key);
                self.schedule_one(&key, &mut snapshot).await;
            }
        }
    }

    fn on_pod(&mut self, pod: &Pod, queue: &mut VecDeque<PodKey>, queued: &mut HashSet<PodKey>) {
        let key = pod_key(pod);
        let uid = pod.uid().unwrap_or_default();
        let gone = self
            .pods
            .get(&kube::runtime::reflector::ObjectRef::new(&key.1).within(&key.0))
            .is_none_or(|p| p.uid() != pod.uid());
        if gone {
            self.unschedulable.remove(&uid);
            if self.assumed.remove(&uid).is_some()
                || pod.spec.as_ref().is_some_and(|s| s.node_name.is_some())
            {
                // Room freed on a node: the pods that did not fit may now.
                self.retry_all(queue, queued, Duration::ZERO);
            }
            return;
        }
        if !needs_scheduling(pod) {
            self.unschedulable.remove(&uid);
            if matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ) || pod.metadata.deletion_timestamp.is_some()
            {
                self.retry_all(queue, queued, Duration::ZERO);
            }
            return;
        }
        if self.assumed.contains_key(&uid) || self.unschedulable.contains_key(&uid) {
            return;
        }
        if queued.insert(key.clone()) {
            queue.push_back(key);
        }
    }

    /// Moves the unschedulable pods last tried at least `age` ago back to the queue.
    fn retry_all(
        &mut self,
        queue: &mut VecDeque<PodKey>,
        queued: &mut HashSet<PodKey>,
        age: Duration,
    ) {
        let now = Instant::now();
        self.unschedulable.retain(|_, (key, at)| {
            if now.duration_since(*at) < age {
                return true;
            }
            if queued.insert(key.clone()) {
                queue.push_back(key.clone());
            }
            false
        });
        self.assumed
            .retain(|_, a| now.duration_since(a.at) < ASSUME_TTL);
    }

    /// Every node with what is placed on it: the cache, plus the bindings assumed.
    fn snapshot(&mut self) -> Vec<NodeInfo> {
        let mut infos: Vec<NodeInfo> = self.nodes.state().into_iter().map(NodeInfo::new).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let index: HashMap<String, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        for pod in self.pods.state() {
            let uid = pod.uid().unwrap_or_default();
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty());
            let node = match bound {
                Some(n) => {
                    self.assumed.remove(&uid);
                    n
                }
                None => match self.assumed.get(&uid) {
                    Some(a) => a.node.clone(),
                    None => continue,
                },
            };
            if let Some(&i) = index.get(&node) {
                infos[i].add(&pod);
            }
        }
        infos
    }

    async fn schedule_one(&mut self, key: &PodKey, snapshot: &mut [NodeInfo]) {
        let Some(pod) = self
            .pods
            .get(&kube::runtime::reflector::ObjectRef::new(&key.1).within(&key.0))
        else {
            return;
        };
        let uid = pod.uid().unwrap_or_default();
        if !needs_scheduling(&pod) || self.assumed.contains_key(&uid) {
            return;
        }
        let want = PodDemand::of(&pod);
        match place(&pod, &want, snapshot, &mut self.turn) {
            Ok(i) => {
                let node = snapshot[i].name.clone();
                match self.bind(&pod, &node).await {
                    Ok(()) => {
                        snapshot[i].add(&pod);
                        self.assumed.insert(
                            uid,
                            Assumed {
                                node: node.clone(),
                                at: Instant::now(),
                            },
                        );
                        debug!(pod = %format!("{}/{}", key.0, key.1), node = %node, "bound");
                        self.recorder
                            .publish(
                                pod.as_ref(),
                                "Normal",
                                "Scheduled",
                                &format!("Successfully assigned {}/{} to {node}", key.0, key.1),
                            )
                            .await;
                    }
                    Err(e) => {
                        // Bound elsewhere meanwhile, or gone: the watch says which.
                        debug!(pod = %key.1, error = %e, "binding");
                    }
                }
            }
            Err(message) => {
                info!(pod = %format!("{}/{}", key.0, key.1), %message, "unschedulable");
                self.unschedulable
                    .insert(uid, (key.clone(), Instant::now()));
                self.mark_unschedulable(&pod, &message).await;
                self.recorder
                    .publish(pod.as_ref(), "Warning", "FailedScheduling", &message)
                    .await;
            }
        }
    }

    async fn bind(&self, pod: &Pod, node: &str) -> Result<(), kube::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let binding = Binding {
            metadata: ObjectMeta {
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                kind: Some("Node".into()),
                api_version: Some("v1".into()),
                name: Some(node.to_string()),
                ..Default::default()
            },
        };
        api.create_subresource::<_, serde_json::Value>(
            "binding",
            &pod.name_any(),
            &PostParams::default(),
            &binding,
        )
        .await
        .map(|_| ())
    }

    async fn mark_unschedulable(&self, pod: &Pod, message: &str) {
        let current = super::shared::pod_condition(pod, "PodScheduled");
        if current.is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message)) {
            return;
        }
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let patch = json!({
            "status": {
                "conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": null,
                    "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
                }]
            }
        });
        if let Err(e) = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            debug!(pod = %pod.name_any(), error = %e, "marking unschedulable");
        }
    }
}

use futures_util::FutureExt;

/// A node and what is placed on it.
struct NodeInfo {
    name: String,
    node: Arc<Node>,
    allocatable: BTreeMap<String, i128>,
    requested: BTreeMap<String, i128>,
    /// Requests as scored: containers without requests count the non-zero defaults.
    scored_cpu: i128,
    scored_memory: i128,
    pods: usize,
    /// (protocol, hostIP, hostPort) in use.
    ports: HashSet<(String, String, i32)>,
    /// How many pods of each controller (by uid) are here.
    owners: HashMap<String, usize>,
}

impl NodeInfo {
    fn new(node: Arc<Node>) -> Self {
        let status = node.status.clone().unwrap_or_default();
        let quantities = status.allocatable.or(status.capacity).unwrap_or_default();
        let allocatable = quantities
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), parse_quantity(&v.0)?)))
            .collect();
        NodeInfo {
            name: node.name_any(),
            node,
            allocatable,
            requested: BTreeMap::new(),
            scored_cpu: 0,
            scored_memory: 0,
            pods: 0,
            ports: HashSet::new(),
            owners: HashMap::new(),
        }
    }

    fn add(&mut self, pod: &Pod) {
        let d = PodDemand::of(pod);
        for (k, v) in &d.requests {
            *self.requested.entry(k.clone()).or_default() += v;
        }
        self.scored_cpu += d.scored_cpu;
        self.scored_memory += d.scored_memory;
        self.pods += 1;
        self.ports.extend(d.ports.iter().cloned());
        if let Some(o) = controller_of(&pod.metadata) {
            *self.owners.entry(o.uid.clone()).or_default() += 1;
        }
    }
}

/// What a pod asks of a node.
struct PodDemand {
    requests: BTreeMap<String, i128>,
    scored_cpu: i128,
    scored_memory: i128,
    ports: Vec<(String, String, i32)>,
}

impl PodDemand {
    /// The pod's effective requests, as upstream computes them: the sum over the app
    /// containers and the sidecars (init containers that keep running), or the largest
    /// ordinary init container with the sidecars started before it if that is more,
    /// plus the pod overhead. A container's limit stands in for a request it lacks.
    fn of(pod: &Pod) -> PodDemand {
        let spec = pod.spec.clone().unwrap_or_default();
        let of_container = |c: &k8s_openapi::api::core::v1::Container| -> BTreeMap<String, i128> {
            let r = c.resources.clone().unwrap_or_default();
            let mut out: BTreeMap<String, i128> = BTreeMap::new();
            for (k, v) in r.limits.unwrap_or_default() {
                if let Some(q) = parse_quantity(&v.0) {
                    out.insert(k, q);
                }
            }
            for (k, v) in r.requests.unwrap_or_default() {
                if let Some(q) = parse_quantity(&v.0) {
                    out.insert(k, q);
                }
            }
            out
        };
        let add = |a: &mut BTreeMap<String, i128>, b: &BTreeMap<String, i128>| {
            for (k, v) in b {
                *a.entry(k.clone()).or_default() += v;
            }
        };
        let mut sum: BTreeMap<String, i128> = BTreeMap::new();
        let mut scored_cpu = 0;
        let mut scored_memory = 0;
        let mut score = |r: &BTreeMap<String, i128>| {
            scored_cpu += r.get("cpu").copied().unwrap_or(DEFAULT_CPU);
            scored_memory += r.get("memory").copied().unwrap_or(DEFAULT_MEMORY);
        };
        for c in &spec.containers {
            let r = of_container(c);
            score(&r);
            add(&mut sum, &r);
        }
        let mut sidecars: BTreeMap<String, i128> = BTreeMap::new();
        let mut init_peak: BTreeMap<String, i128> = BTreeMap::new();
        for c in spec.init_containers.iter().flatten() {
            let r = of_container(c);
            if c.restart_policy.as_deref() == Some("Always") {
                score(&r);
                add(&mut sidecars, &r);
                add(&mut sum, &r);
            } else {
                let mut during = sidecars.clone();
                add(&mut during, &r);
                for (k, v) in during {
                    let e = init_peak.entry(k).or_default();
                    *e = (*e).max(v);
                }
            }
        }
        for (k, v) in init_peak {
            let e = sum.entry(k).or_default();
            *e = (*e).max(v);
        }
        for (k, v) in spec.overhead.unwrap_or_default() {
            if let Some(q) = parse_quantity(&v.0) {
                *sum.entry(k).or_default() += q;
            }
        }
        let ports = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let hp = p.host_port.filter(|h| *h > 0)?;
                Some((
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                    hp,
                ))
            })
            .collect();
        PodDemand {
            requests: sum,
            scored_cpu,
            scored_memory,
            ports,
        }
    }
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok =
            t.key.as_deref().is_none_or(str::is_empty) || t.key.as_deref() == Some(&taint.key);
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            // Equal, the default
            _ => {
                t.key.as_deref().is_some_and(|k| !k.is_empty())
                    && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
            }
        };
        effect_ok && key_ok && value_ok
    })
}

/// Whether a node's labels (and name, for matchFields) satisfy a requirement.
fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(x)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|x| x.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > x
            } else {
                v < x
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let exprs = term.match_expressions.clone().unwrap_or_default();
    let fields = term.match_fields.clone().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        // An empty term matches nothing.
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_holds(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let v = (r.key == "metadata.name").then(|| node.metadata.name.as_deref().unwrap_or(""));
            requirement_holds(r, v)
        })
}

fn affinity_allows(pod: &Pod, node: &Node) -> bool {
    let spec = pod.spec.as_ref();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector_ok = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let required = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok =
        required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)));
    selector_ok && affinity_ok
}

/// Why the node cannot take the pod, as kube-scheduler's filter plugins word it; empty
/// when it can. The first plugin that fails decides, as upstream.
fn filter(pod: &Pod, want: &PodDemand, info: &NodeInfo) -> Vec<String> {
    let node = &info.node;
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    if unschedulable {
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerates(&tolerations, &taint) {
            return vec!["node(s) were unschedulable".into()];
        }
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    if let Some(t) = taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerates(&tolerations, t))
    {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or("")
        )];
    }
    if !affinity_allows(pod, node) {
        return vec!["node(s) didn't match Pod's node affinity/selector".into()];
    }
    let conflict = want.ports.iter().any(|(proto, ip, port)| {
        info.ports.iter().any(|(p2, ip2, port2)| {
            p2 == proto && port2 == port && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
        })
    });
    if conflict {
        return vec!["node(s) didn't have free ports for the requested pod ports".into()];
    }
    let mut reasons = vec![];
    let max_pods = info.allocatable.get("pods").copied().unwrap_or(0) / ONE;
    if info.pods as i128 + 1 > max_pods {
        reasons.push("Too many pods".to_string());
    }
    for (res, amount) in &want.requests {
        if *amount == 0 {
            continue;
        }
        let have = info.allocatable.get(res).copied().unwrap_or(0);
        let used = info.requested.get(res).copied().unwrap_or(0);
        if used + amount > have {
            reasons.push(format!("Insufficient {res}"));
        }
    }
    reasons
}

/// The node to bind to, or the FailedScheduling message.
fn place(
    pod: &Pod,
    want: &PodDemand,
    nodes: &[NodeInfo],
    turn: &mut usize,
) -> Result<usize, String> {
    if nodes.is_empty() {
        return Err("no nodes available to schedule pods".into());
    }
    let mut fits = vec![];
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    for (i, info) in nodes.iter().enumerate() {
        let reasons = filter(pod, want, info);
        if reasons.is_empty() {
            fits.push(i);
        }
        for r in reasons {
            *why.entry(r).or_default() += 1;
        }
    }
    if fits.is_empty() {
        // Sorted as whole strings, count first, as upstream's FitError words it.
        let mut parts: Vec<String> = why.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        return Err(format!(
            "0/{} nodes are available: {}.",
            nodes.len(),
            parts.join(", ")
        ));
    }
    let owner = controller_of(&pod.metadata).map(|o| o.uid.clone());
    let max_same = owner
        .as_ref()
        .map(|o| {
            fits.iter()
                .map(|&i| nodes[i].owners.get(o).copied().unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let preferred = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .clone()
        })
        .unwrap_or_default();
    let affinity_raw: Vec<i64> = fits
        .iter()
        .map(|&i| {
            preferred
                .iter()
                .filter(|p| term_matches(&p.preference, &nodes[i].node))
                .map(|p| i64::from(p.weight))
                .sum()
        })
        .collect();
    let affinity_max = affinity_raw.iter().copied().max().unwrap_or(0);
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let soft_taints: Vec<i64> = fits
        .iter()
        .map(|&i| {
            nodes[i]
                .node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(&tolerations, t))
                .count() as i64
        })
        .collect();
    let soft_max = soft_taints.iter().copied().max().unwrap_or(0);

    let mut best: Vec<usize> = vec![];
    let mut best_score = i64::MIN;
    for (j, &i) in fits.iter().enumerate() {
        let n = &nodes[i];
        let least = |alloc: Option<&i128>, used: i128| -> i64 {
            let alloc = alloc.copied().unwrap_or(0);
            if alloc <= 0 || used > alloc {
                return 0;
            }
            ((alloc - used) * 100 / alloc) as i64
        };
        let fit = (least(n.allocatable.get("cpu"), n.scored_cpu + want.scored_cpu)
            + least(
                n.allocatable.get("memory"),
                n.scored_memory + want.scored_memory,
            ))
            / 2;
        let spread = match &owner {
            Some(o) if max_same > 0 => {
                let here = n.owners.get(o).copied().unwrap_or(0) as i64;
                (max_same as i64 - here) * 100 / max_same as i64
            }
            _ => 100,
        };
        let affinity = if affinity_max > 0 {
            affinity_raw[j] * 100 / affinity_max
        } else {
            0
        };
        let taint = if soft_max > 0 {
            (soft_max - soft_taints[j]) * 100 / soft_max
        } else {
            100
        };
        // PodTopologySpread weighs twice the others upstream.
        let score = fit + 2 * spread + affinity + taint;
        if score > best_score {
            best_score = score;
            best.clear();
        }
        if score == best_score {
            best.push(i);
        }
    }
    *turn = turn.wrapping_add(1);
    Ok(best[*turn % best.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, extra: serde_json::Value) -> NodeInfo {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"}}
        });
        if let (Some(a), Some(b)) = (n.as_object_mut(), extra.as_object()) {
            for (k, v) in b {
                match (a.get_mut(k), v) {
                    (Some(serde_json::Value::Object(x)), serde_json::Value::Object(y)) => {
                        x.extend(y.clone())
                    }
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        NodeInfo::new(Arc::new(serde_json::from_value(n).unwrap()))
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut p = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        if let Some(s) = spec.as_object() {
            p["spec"].as_object_mut().unwrap().extend(s.clone());
        }
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn filters_explain_every_node_that_cannot_take_the_pod() {
        let nodes = vec![
            node("w1", "2", json!({"spec": {"unschedulable": true}})),
            node("w2", "100m", json!({})),
            node(
                "m",
                "4",
                json!({"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
            ),
        ];
        let p = pod(
            json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "500m"}}}]}),
        );
        let err = place(&p, &PodDemand::of(&p), &nodes, &mut 0).unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 1 node(s) were unschedulable."
        );
        // Tolerating the taint opens the control-plane node.
        let p = pod(json!({
            "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "500m"}}}],
            "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]
        }));
        assert_eq!(place(&p, &PodDemand::of(&p), &nodes, &mut 0), Ok(2));
    }

    #[test]
    fn reasons_sort_as_whole_strings_count_first() {
        let nodes = vec![
            node("w1", "100m", json!({})),
            node("w2", "100m", json!({})),
            node("w3", "2", json!({"spec": {"unschedulable": true}})),
        ];
        let p = pod(
            json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "500m"}}}]}),
        );
        assert_eq!(
            place(&p, &PodDemand::of(&p), &nodes, &mut 0).unwrap_err(),
            "0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient cpu."
        );
    }

    #[test]
    fn selectors_affinity_and_host_ports_filter() {
        let mut nodes = vec![
            node(
                "w1",
                "2",
                json!({"metadata": {"labels": {"disk": "ssd", "gen": "3"}}}),
            ),
            node("w2", "2", json!({})),
        ];
        let p = pod(json!({"nodeSelector": {"disk": "ssd"}}));
        assert_eq!(place(&p, &PodDemand::of(&p), &nodes, &mut 0), Ok(0));
        let p = pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["2"]}]}]}}}}),
        );
        assert_eq!(place(&p, &PodDemand::of(&p), &nodes, &mut 0), Ok(0));
        let p = pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["w2"]}]}]}}}}),
        );
        assert_eq!(place(&p, &PodDemand::of(&p), &nodes, &mut 0), Ok(1));
        // A host port in use on w1 sends the next such pod to w2, then nowhere.
        let hp = pod(
            json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        );
        nodes[0].add(&hp);
        assert_eq!(place(&hp, &PodDemand::of(&hp), &nodes, &mut 0), Ok(1));
        nodes[1].add(&hp);
        assert_eq!(
            place(&hp, &PodDemand::of(&hp), &nodes, &mut 0).unwrap_err(),
            "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
        );
    }

    #[test]
    fn one_owners_pods_spread_and_load_prefers_the_emptier_node() {
        let mut nodes = vec![
            node("w1", "2", json!({})),
            node("w2", "2", json!({})),
            node("w3", "2", json!({})),
        ];
        let owned = |name: &str| -> Pod {
            let mut p = pod(json!({}));
            p.metadata.name = Some(name.into());
            p.metadata.owner_references = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: "rs".into(),
                    uid: "u1".into(),
                    controller: Some(true),
                    block_owner_deletion: None,
                },
            ]);
            p
        };
        let mut turn = 0;
        let mut counts = [0; 3];
        for i in 0..9 {
            let p = owned(&format!("p{i}"));
            let at = place(&p, &PodDemand::of(&p), &nodes, &mut turn).unwrap();
            nodes[at].add(&p);
            counts[at] += 1;
        }
        assert_eq!(counts, [3, 3, 3]);
        // A loaded node loses to an empty one for an unowned pod.
        let heavy = pod(
            json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1500m"}}}]}),
        );
        nodes[0].add(&heavy);
        nodes[1].add(&heavy);
        let p = pod(json!({}));
        assert_eq!(place(&p, &PodDemand::of(&p), &nodes, &mut turn), Ok(2));
    }

    #[test]
    fn requests_count_sidecars_init_peaks_and_limits() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "image": "i", "resources": {"requests": {"cpu": "100m"}}},
                {"name": "b", "image": "i", "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}}}
            ],
            "initContainers": [
                {"name": "side", "image": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
                {"name": "setup", "image": "i", "resources": {"requests": {"cpu": "1"}}}
            ]
        }));
        let d = PodDemand::of(&p);
        // max(100m + 200m + 50m, 50m + 1) = 1050m
        assert_eq!(d.requests["cpu"], 1_050_000_000);
        assert_eq!(d.requests["memory"], 64 * 1024 * 1024 * ONE);
    }

    #[tokio::test]
    async fn pending_pods_are_bound_or_told_why_not() {
        use crate::api::auth::SCHEDULER_USER;
        use crate::controllers::client::in_process;
        use k8s_openapi::api::core::v1::Event;
        use kube::api::ListParams;
        let (api, _stop) = crate::api::auth::token::memory_api().await;
        let client = in_process(api, SCHEDULER_USER);
        let nodes: Api<Node> = Api::all(client.clone());
        let n: Node = serde_json::from_value(json!({"metadata": {"name": "w1"}})).unwrap();
        nodes.create(&PostParams::default(), &n).await.unwrap();
        nodes
            .patch_status(
                "w1",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"}}}),
                ),
            )
            .await
            .unwrap();
        let mut informers = Informers::new(&client);
        let task = run(client.clone(), &informers);
        let running = tokio::spawn(futures_util::future::join_all(vec![
            task,
            informers.pods.run(),
            informers.nodes.run(),
        ]));
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let mut small = pod(
            json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "500m"}}}]}),
        );
        small.metadata.name = Some("small".into());
        let mut big = pod(
            json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "2"}}}]}),
        );
        big.metadata.name = Some("big".into());
        pods.create(&PostParams::default(), &small).await.unwrap();
        pods.create(&PostParams::default(), &big).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = pods.get("small").await.unwrap();
            let b = pods.get("big").await.unwrap();
            let bound = s.spec.as_ref().and_then(|s| s.node_name.clone());
            let sched =
                super::super::shared::pod_condition(&s, "PodScheduled").map(|c| c.status.clone());
            let why = super::super::shared::pod_condition(&b, "PodScheduled")
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
            if let (Some("w1"), Some("True"), Some((status, reason, message))) =
                (bound.as_deref(), sched.as_deref(), why.clone())
            {
                assert_eq!(status, "False");
                assert_eq!(reason.as_deref(), Some("Unschedulable"));
                assert_eq!(
                    message.as_deref(),
                    Some("0/1 nodes are available: 1 Insufficient cpu.")
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "small {bound:?} {sched:?}; big {why:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        let reasons: Vec<(String, String)> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| {
                (
                    e.reason.unwrap_or_default(),
                    e.involved_object.name.unwrap_or_default(),
                )
            })
            .collect();
        assert!(
            reasons.contains(&("Scheduled".into(), "small".into())),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("FailedScheduling".into(), "big".into())),
            "{reasons:?}"
        );
        // More room on the node: the pod that did not fit is tried again and bound.
        nodes
            .patch_status(
                "w1",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"allocatable": {"cpu": "4"}}})),
            )
            .await
            .unwrap();
        loop {
            let b = pods.get("big").await.unwrap();
            if b.spec.and_then(|s| s.node_name).as_deref() == Some("w1") {
                break;
            }
            assert!(
                Instant::now() < deadline + Duration::from_secs(10),
                "big not retried"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running.abort();
    }

    #[test]
    fn tolerations_match_as_upstream() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let t = |v: serde_json::Value| -> Vec<Toleration> { serde_json::from_value(v).unwrap() };
        assert!(tolerates(&t(json!([{"key": "k", "value": "v"}])), &taint));
        assert!(tolerates(
            &t(json!([{"key": "k", "operator": "Exists", "effect": "NoSchedule"}])),
            &taint
        ));
        assert!(tolerates(&t(json!([{"operator": "Exists"}])), &taint));
        assert!(!tolerates(&t(json!([{"key": "k", "value": "w"}])), &taint));
        assert!(!tolerates(
            &t(json!([{"key": "k", "operator": "Exists", "effect": "NoExecute"}])),
            &taint
        ));
    }
}
