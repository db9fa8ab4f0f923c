//! The disruption controller (kube-controller-manager's disruption): the status of each
//! PodDisruptionBudget — how many of its pods are expected, healthy and must stay
//! healthy, and so how many the eviction API may take now.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tracing::warn;

use super::manager::Task;
use super::shared::{controller_of, pod_ready, selects, Informer, Informers};

/// How long an eviction's entry in status.disruptedPods holds the pod out of the
/// healthy count, as upstream's DeletionTimeout.
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);
const RESYNC: Duration = Duration::from_secs(5);

/// Runs the controller on pod, PDB and owner changes and every few seconds.
pub fn run(client: Client, informers: &Informers) -> Task {
    let pods = informers.pods.store();
    let rss = informers.replicasets.store();
    let deps = informers.deployments.store();
    let mut pdb_informer: Informer<PodDisruptionBudget> = Informer::new(&client);
    let pdbs = pdb_informer.store();
    let mut events = futures_util::stream::select_all([
        informers.pods.subscribe().map(|_| ()).boxed(),
        informers.replicasets.subscribe().map(|_| ()).boxed(),
        informers.deployments.subscribe().map(|_| ()).boxed(),
        pdb_informer.subscribe().map(|_| ()).boxed(),
    ]);
    let watch = pdb_informer.run();
    Box::pin(async move {
        let work = async move {
            let _ = tokio::join!(
                pods.wait_until_ready(),
                rss.wait_until_ready(),
                deps.wait_until_ready(),
                pdbs.wait_until_ready()
            );
            loop {
                let now = jiff::Timestamp::now();
                for pdb in pdbs.state() {
                    let status = status(&pdb, &pods.state(), &rss, &deps, now);
                    if pdb.status.as_ref() == Some(&status) {
                        continue;
                    }
                    let mut new = (*pdb).clone();
                    new.status = Some(status);
                    let ns = pdb.metadata.namespace.clone().unwrap_or_default();
                    let name = pdb.metadata.name.clone().unwrap_or_default();
                    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
                    if let Err(e) = api
                        .replace_status(&name, &PostParams::default(), &new)
                        .await
                    {
                        warn!(namespace = %ns, pdb = %name, error = %e, "pdb status");
                    }
                }
                if let Ok(None) = tokio::time::timeout(RESYNC, events.next()).await {
                    return;
                }
                while let Ok(Some(())) =
                    tokio::time::timeout(Duration::from_millis(50), events.next()).await
                {
                }
            }
        };
        tokio::join!(watch, work);
    })
}

/// The scale of a pod's controller, by its uid: a ReplicaSet's replicas, or its
/// Deployment's when the ReplicaSet belongs to one. `None` for other controllers.
fn owner_scale(
    pod: &Pod,
    rss: &Store<ReplicaSet>,
    deps: &Store<Deployment>,
) -> Option<(String, i32)> {
    let owner = controller_of(&pod.metadata)?;
    if owner.kind != "ReplicaSet" {
        return None;
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let rs = rss.get(&ObjectRef::new(&owner.name).within(ns))?;
    if rs.metadata.uid.as_deref() != Some(owner.uid.as_str()) {
        return None;
    }
    if let Some(d) = controller_of(&rs.metadata).filter(|d| d.kind == "Deployment") {
        let dep = deps.get(&ObjectRef::new(&d.name).within(ns))?;
        if dep.metadata.uid.as_deref() == Some(d.uid.as_str()) {
            let replicas = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            return Some((d.uid.clone(), replicas));
        }
        return None;
    }
    let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    Some((owner.uid.clone(), replicas))
}

/// An int-or-percent scaled to `total`, rounding up as upstream does.
fn scaled(v: &IntOrString, total: i32) -> i32 {
    match v {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((pct * i64::from(total) + 99) / 100) as i32
        }
    }
}

/// The status `pdb` should have now.
pub fn status(
    pdb: &PodDisruptionBudget,
    all_pods: &[Arc<Pod>],
    rss: &Store<ReplicaSet>,
    deps: &Store<Deployment>,
    now: jiff::Timestamp,
) -> PodDisruptionBudgetStatus {
    let spec = pdb.spec.clone().unwrap_or_default();
    let ns = pdb.metadata.namespace.as_deref();
    let pods: Vec<&Arc<Pod>> = match &spec.selector {
        Some(sel) => all_pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == ns)
            .filter(|p| selects(sel, p.metadata.labels.as_ref()))
            .collect(),
        None => vec![],
    };
    let old = pdb.status.clone().unwrap_or_default();

    // Evicted pods stay out of the healthy count until they are being deleted, are
    // gone, or the eviction timed out.
    let mut disrupted = BTreeMap::new();
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(t) = old.disrupted_pods.as_ref().and_then(|d| d.get(&name)) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let expires = t.0 + jiff::SignedDuration::try_from(DELETION_TIMEOUT).unwrap_or_default();
        if expires > now {
            disrupted.insert(name, t.clone());
        }
    }

    let current_healthy = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default()))
        .filter(|p| pod_ready(p))
        .count() as i32;

    let (expected, desired) = match (&spec.max_unavailable, &spec.min_available) {
        (None, Some(IntOrString::Int(min))) => (pods.len() as i32, *min),
        (max, min) => {
            let mut seen = HashSet::new();
            let mut expected = 0;
            for pod in &pods {
                if let Some((uid, scale)) = owner_scale(pod, rss, deps) {
                    if seen.insert(uid) {
                        expected += scale;
                    }
                }
            }
            let desired = match (max, min) {
                (Some(max), _) => (expected - scaled(max, expected)).max(0),
                (None, Some(min)) => scaled(min, expected),
                (None, None) => expected,
            };
            (expected, desired)
        }
    };
    let allowed = (current_healthy - desired).max(0);
    let (cond_status, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let generation = pdb.metadata.generation;
    let previous = old
        .conditions
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionAllowed"));
    let condition = match previous {
        Some(c) if c.status == cond_status && c.reason == reason => Condition {
            observed_generation: generation,
            ..c.clone()
        },
        _ => Condition {
            type_: "DisruptionAllowed".into(),
            status: cond_status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Time(now),
            observed_generation: generation,
        },
    };
    PodDisruptionBudgetStatus {
        current_healthy,
        desired_healthy: desired,
        disruptions_allowed: allowed,
        expected_pods: expected,
        observed_generation: generation,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        conditions: Some(vec![condition]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::token::memory_api;
    use crate::api::auth::CONTROLLER_MANAGER_USER;
    use crate::controllers::client::in_process;
    use crate::controllers::endpoints::tests::{eventually, make_pod, set_pod_status};
    use serde_json::json;

    #[tokio::test]
    async fn min_available_two_of_three() {
        let (api, _stop) = memory_api().await;
        let client = in_process(api, CONTROLLER_MANAGER_USER);
        for (i, name) in ["p1", "p2", "p3"].iter().enumerate() {
            make_pod(&client, name, json!({"app": "web"})).await;
            set_pod_status(&client, name, &format!("10.2.0.{i}"), true).await;
        }
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}
        }))
        .unwrap();
        pdbs.create(&PostParams::default(), &pdb).await.unwrap();
        let mut informers = Informers::new(&client);
        let mut tasks = vec![run(client.clone(), &informers)];
        tasks.extend(informers.run());
        let _h = tokio::spawn(futures_util::future::join_all(tasks));

        let s = eventually(|| async {
            let s = pdbs.get("web").await.unwrap().status?;
            (s.current_healthy == 3).then_some(s)
        })
        .await;
        assert_eq!(s.disruptions_allowed, 1);
        assert_eq!(s.desired_healthy, 2);
        assert_eq!(s.expected_pods, 3);
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(s.conditions.as_ref().unwrap()[0].reason, "SufficientPods");

        set_pod_status(&client, "p3", "10.2.0.2", false).await;
        let s = eventually(|| async {
            let s = pdbs.get("web").await.unwrap().status?;
            (s.current_healthy == 2).then_some(s)
        })
        .await;
        assert_eq!(s.disruptions_allowed, 0);
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InsufficientPods")
        );
    }
}
