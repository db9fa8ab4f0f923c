//! The DaemonSet controller, as kube-controller-manager's daemon controller: one pod per
//! node that fits (nodeSelector, required node affinity, taints against tolerations),
//! pinned to its node by a required matchFields affinity for the scheduler to bind, the
//! tolerations upstream adds, pods of an old template replaced maxUnavailable at a time,
//! and the status counts. Revisions are told apart by the controller-revision-hash label
//! alone: no ControllerRevisions are written, so rollback by revision is not offered.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::manager::Task;
use super::nodelifecycle::tolerates;
use super::shared::{
    controller_of, controller_ref, key, pod_available, pod_ready, selects, Expectations, Informers,
};

pub const HASH_LABEL: &str = "controller-revision-hash";

/// How often every DaemonSet is reconciled from the caches.
pub const PERIOD: Duration = Duration::from_secs(1);

pub fn run(client: Client, informers: &Informers) -> Task {
    run_every(client, informers, PERIOD)
}

pub fn run_every(client: Client, informers: &Informers, period: Duration) -> Task {
    let c = Controller {
        client,
        daemonsets: informers.daemonsets.store(),
        nodes: informers.nodes.store(),
        pods: informers.pods.store(),
        expectations: Expectations::default(),
    };
    Box::pin(async move {
        let _ = c.daemonsets.wait_until_ready().await;
        let _ = c.nodes.wait_until_ready().await;
        let _ = c.pods.wait_until_ready().await;
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            for ds in c.daemonsets.state() {
                if let Err(e) = c.sync(&ds).await {
                    warn!(daemonset = %key(&ds.metadata), error = %e, "daemonset sync");
                }
            }
        }
    })
}

struct Controller {
    client: Client,
    daemonsets: Store<DaemonSet>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    expectations: Expectations,
}

/// The tolerations upstream adds to every daemon pod (AddOrUpdateDaemonPodTolerations).
pub fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut v = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        v.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    v
}

/// A stable hash of the template (FNV-1a of its JSON), in upstream's safe alphabet.
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(t).unwrap_or_default();
    let mut h: u32 = 0x811c9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|d| ALPHABET[usize::from(d - b'0') % ALPHABET.len()] as char)
        .collect()
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(x)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|x| x.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" {
                v > x
            } else {
                v < x
            }
        }
        _ => false,
    }
}

fn term_matches(t: &NodeSelectorTerm, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name" && requirement_matches(r, node.metadata.name.as_deref())
        })
}

/// (should run, should continue running) of the daemon pod on this node, as upstream's
/// NodeShouldRunDaemonPod: the node selector and required affinity must match; NoSchedule
/// and NoExecute taints must be tolerated to start, NoExecute ones to keep running.
pub fn should_run(pod_spec: &k8s_openapi::api::core::v1::PodSpec, node: &Node) -> (bool, bool) {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let selector_ok = pod_spec
        .node_selector
        .as_ref()
        .is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let affinity_ok = pod_spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)));
    if !selector_ok || !affinity_ok {
        return (false, false);
    }
    let tolerations = pod_spec.tolerations.as_deref().unwrap_or_default();
    let taints: &[Taint] = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let tolerated = |t: &Taint| tolerations.iter().any(|x| tolerates(x, t));
    let cont = taints
        .iter()
        .filter(|t| t.effect == "NoExecute")
        .all(tolerated);
    let start = cont
        && taints
            .iter()
            .filter(|t| t.effect == "NoSchedule")
            .all(tolerated);
    (start, cont)
}

/// The node a daemon pod is for: its nodeName, else its matchFields affinity.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = &spec.node_name {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// The template with the daemon tolerations, for the fit checks and the new pods.
fn daemon_pod_spec(ds: &DaemonSet) -> k8s_openapi::api::core::v1::PodSpec {
    let mut spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let mut tolerations = spec.tolerations.take().unwrap_or_default();
    for t in daemon_tolerations(spec.host_network.unwrap_or(false)) {
        // AddOrUpdateTolerationInPod: one per key and effect.
        tolerations.retain(|x| !(x.key == t.key && x.effect == t.effect));
        tolerations.push(t);
    }
    spec.tolerations = Some(tolerations);
    spec
}

fn max_unavailable(ds: &DaemonSet, desired: usize) -> usize {
    let v = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    let n = match v {
        IntOrString::Int(i) => i.max(0) as usize,
        IntOrString::String(s) => {
            let pct: usize = s.trim_end_matches('%').parse().unwrap_or(0);
            (desired * pct).div_ceil(100)
        }
    };
    // Upstream: when both are zero the update could never start; one at a time.
    n.max(1)
}

impl Controller {
    async fn sync(&self, ds: &DaemonSet) -> kube::Result<()> {
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let ns = ds.namespace().unwrap_or_default();
        let dskey = key(&ds.metadata);
        let uid = ds.uid().unwrap_or_default();
        let Some(spec) = ds.spec.as_ref() else {
            return Ok(());
        };
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
            .filter(|p| controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
            .filter(|p| selects(&spec.selector, p.metadata.labels.as_ref()))
            .collect();
        let present = |n: &String| pods.iter().any(|p| &p.name_any() == n);
        if !self.expectations.satisfied(&dskey, present) {
            return Ok(());
        }
        let pods: Vec<Arc<Pod>> = pods
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let hash = template_hash(&spec.template);
        let pod_spec = daemon_pod_spec(ds);
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = jiff::Timestamp::now();
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for p in &pods {
            if let Some(n) = target_node(p) {
                by_node.entry(n).or_default().push(p.clone());
            }
        }
        let (mut create, mut delete) = (Vec::<String>::new(), Vec::<Arc<Pod>>::new());
        let (mut desired, mut current, mut misscheduled, mut ready, mut available, mut updated) =
            (0, 0, 0, 0, 0, 0);
        let mut unavailable_nodes = 0usize;
        let mut old_pods: Vec<(bool, Arc<Pod>)> = vec![];
        for node in self.nodes.state() {
            let name = node.name_any();
            let (run, cont) = should_run(&pod_spec, &node);
            let on = by_node.remove(&name).unwrap_or_default();
            let failed: Vec<&Arc<Pod>> = on
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
                .collect();
            if run {
                desired += 1;
            }
            if run || (cont && !on.is_empty()) {
                // Failed pods are replaced; extra pods beyond the first go.
                delete.extend(failed.iter().map(|p| (*p).clone()));
                let live: Vec<&Arc<Pod>> = on
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed")
                    })
                    .collect();
                if live.is_empty() {
                    if run {
                        create.push(name.clone());
                        unavailable_nodes += 1;
                    }
                    continue;
                }
                delete.extend(live.iter().skip(1).map(|p| (*p).clone()));
                let p = live[0];
                if run {
                    current += 1;
                } else {
                    misscheduled += 1;
                }
                let is_ready = pod_ready(p);
                let is_available = pod_available(p, min_ready, now);
                if run && is_ready {
                    ready += 1;
                }
                if run && is_available {
                    available += 1;
                }
                if !is_available {
                    unavailable_nodes += 1;
                }
                let new = p.labels().get(HASH_LABEL) == Some(&hash);
                if new && run {
                    updated += 1;
                }
                if !new {
                    old_pods.push((is_available, p.clone()));
                }
            } else if !on.is_empty() {
                misscheduled += 1;
                delete.extend(on);
            }
        }
        // Pods whose node is gone.
        for (_, on) in by_node {
            delete.extend(on);
        }
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref())
            .is_none_or(|t| t == "RollingUpdate");
        if rolling {
            // Old pods that are not available go at once; available ones only while the
            // unavailable count stays within maxUnavailable.
            let mut budget = max_unavailable(ds, desired).saturating_sub(unavailable_nodes);
            for (is_available, p) in old_pods {
                if !is_available {
                    delete.push(p);
                } else if budget > 0 {
                    budget -= 1;
                    delete.push(p);
                }
            }
        }

        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let mut created = vec![];
        for node in &create {
            let mut labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(HASH_LABEL.into(), hash.clone());
            let mut ps = pod_spec.clone();
            let affinity = ps.affinity.get_or_insert_with(Default::default);
            let na = affinity.node_affinity.get_or_insert_with(Default::default);
            // ReplaceDaemonSetPodNodeNameNodeAffinity: exactly this node.
            na.required_during_scheduling_ignored_during_execution =
                Some(k8s_openapi::api::core::v1::NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.name".into(),
                            operator: "In".into(),
                            values: Some(vec![node.clone()]),
                        }]),
                        match_expressions: None,
                    }],
                });
            let mut pod = Pod {
                metadata: spec.template.metadata.clone().unwrap_or_default(),
                spec: Some(ps),
                status: None,
            };
            pod.metadata.name = None;
            pod.metadata.generate_name = Some(format!("{}-", ds.name_any()));
            pod.metadata.namespace = Some(ns.clone());
            pod.metadata.labels = Some(labels);
            pod.metadata.owner_references = Some(vec![controller_ref(ds)]);
            match pods_api.create(&PostParams::default(), &pod).await {
                Ok(p) => created.push(p.name_any()),
                Err(e) => {
                    warn!(daemonset = %dskey, node = %node, error = %e, "creating daemon pod")
                }
            }
        }
        self.expectations.expect(&dskey, &created, &[]);
        for p in &delete {
            let name = p.name_any();
            match pods_api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => info!(daemonset = %dskey, pod = %name, "daemon pod deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => warn!(daemonset = %dskey, pod = %name, error = %e, "deleting daemon pod"),
            }
        }

        let status = json!({ "status": {
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": available,
            "numberUnavailable": desired.saturating_sub(available),
            "updatedNumberScheduled": updated,
            "observedGeneration": ds.metadata.generation,
        }});
        let old = ds
            .status
            .as_ref()
            .map(|s| serde_json::to_value(s).unwrap_or_default());
        let unchanged = old.as_ref().is_some_and(|o| {
            status["status"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| o.get(k).unwrap_or(&json!(0)) == v)
        });
        if !unchanged {
            Api::<DaemonSet>::namespaced(self.client.clone(), &ns)
                .patch_status(
                    &ds.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use kube::api::ListParams;
    use serde_json::Value;

    use super::*;
    use crate::controllers::client::in_process;

    async fn until<F, Fut>(what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn node(client: &Client, name: &str, labels: Value, taints: Value) {
        let n: Node = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels },
            "spec": { "taints": taints },
        }))
        .unwrap();
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap();
    }

    async fn pods(client: &Client) -> Vec<Pod> {
        Api::<Pod>::namespaced(client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    async fn make_ready(client: &Client) {
        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        for p in pods(client).await {
            if pod_ready(&p) {
                continue;
            }
            let patch = json!({ "status": { "phase": "Running", "conditions": [
                { "type": "Ready", "status": "True" } ] } });
            let _ = api
                .patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
        }
    }

    fn nodes_of(pods: &[Pod]) -> Vec<String> {
        let mut v: Vec<String> = pods.iter().filter_map(target_node).collect();
        v.sort();
        v
    }

    /// One pod per fitting node (selector, taints vs tolerations), pinned by affinity,
    /// with the daemon tolerations and status counts; a new template replaces the pods
    /// one node at a time, waiting for the new pod to be available.
    #[tokio::test]
    async fn daemon_pods_fill_the_fitting_nodes_and_roll_one_at_a_time() {
        let (api, _stop) = crate::api::auth::token::memory_api().await;
        let client = in_process(api, crate::api::auth::CONTROLLER_MANAGER_USER);
        node(&client, "a", json!({"role": "agent"}), json!([])).await;
        node(
            &client,
            "b",
            json!({"role": "agent"}),
            json!([{ "key": "example.com/x", "effect": "NoSchedule" }]),
        )
        .await;
        node(&client, "c", json!({}), json!([])).await;
        node(
            &client,
            "d",
            json!({"role": "agent"}),
            json!([{ "key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule" }]),
        )
        .await;
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": { "name": "agent", "namespace": "default" },
            "spec": {
                "selector": { "matchLabels": { "app": "agent" } },
                "template": {
                    "metadata": { "labels": { "app": "agent" } },
                    "spec": { "nodeSelector": { "role": "agent" },
                              "containers": [{ "name": "c", "image": "agent:1" }] },
                },
            },
        }))
        .unwrap();
        let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
        dss.create(&PostParams::default(), &ds).await.unwrap();

        let mut informers = Informers::new(&client);
        let mut tasks = vec![run_every(
            client.clone(),
            &informers,
            Duration::from_millis(100),
        )];
        tasks.extend(informers.run());
        let _tasks: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();

        until("pods on a and d", || async {
            nodes_of(&pods(&client).await) == ["a", "d"]
        })
        .await;
        let ps = pods(&client).await;
        let p = &ps[0];
        assert_eq!(controller_of(&p.metadata).unwrap().name, "agent");
        let h1 = p.labels()[HASH_LABEL].clone();
        let tol = p.spec.as_ref().unwrap().tolerations.as_ref().unwrap();
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let t = tol.iter().find(|t| t.key.as_deref() == Some(key)).unwrap();
            assert_eq!(t.toleration_seconds, None, "{key}");
            assert_eq!(t.effect.as_deref(), Some("NoExecute"));
        }
        assert!(tol
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable")));
        assert!(!tol
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/network-unavailable")));

        make_ready(&client).await;
        until("status counts", || async {
            let s = dss.get("agent").await.unwrap().status.unwrap();
            s.desired_number_scheduled == 2
                && s.current_number_scheduled == 2
                && s.number_ready == 2
                && s.number_available == Some(2)
                && s.updated_number_scheduled == Some(2)
                && s.number_misscheduled == 0
                && s.observed_generation == Some(1)
        })
        .await;

        // A new image: one node at a time.
        let patch = json!({ "spec": { "template": { "spec": {
            "containers": [{ "name": "c", "image": "agent:2" }] } } } });
        dss.patch("agent", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        until("one new pod", || async {
            pods(&client)
                .await
                .iter()
                .any(|p| p.labels()[HASH_LABEL] != h1)
        })
        .await;
        // The new pod is not ready: the other old pod stays.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let ps = pods(&client).await;
        assert_eq!(
            ps.iter().filter(|p| p.labels()[HASH_LABEL] == h1).count(),
            1
        );
        assert_eq!(ps.len(), 2);
        until("every pod new and ready", || async {
            make_ready(&client).await;
            let ps = pods(&client).await;
            ps.len() == 2
                && ps
                    .iter()
                    .all(|p| p.labels()[HASH_LABEL] != h1 && pod_ready(p))
        })
        .await;
        assert_eq!(nodes_of(&pods(&client).await), ["a", "d"]);
        until("updated count", || async {
            let s = dss.get("agent").await.unwrap().status.unwrap();
            s.updated_number_scheduled == Some(2) && s.observed_generation == Some(2)
        })
        .await;

        // A node that stops matching loses its pod.
        Api::<Node>::all(client.clone())
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": {"role": "other"}}})),
            )
            .await
            .unwrap();
        until("the pod on a to go", || async {
            nodes_of(&pods(&client).await) == ["d"]
        })
        .await;
    }
}
