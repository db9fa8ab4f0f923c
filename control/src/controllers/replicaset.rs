//! The ReplicaSet controller, as kube-controller-manager's: it keeps `spec.replicas`
//! active pods matching the selector, adopts matching orphans and releases pods whose
//! labels stop matching, deletes the least valuable pods first, and reports status.
//!
//! Writes are remembered as [`Expectations`] until the pod cache shows them, so a burst
//! of watch events never makes it create or delete twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{debug, warn};

use super::manager::Task;
use super::shared::{
    controller_of, controller_ref, key, pod_active, pod_available, pod_ready, selects,
    Expectations, Informers, Recorder,
};

/// At most this many pods are created or deleted in one sync (upstream's burstReplicas).
const BURST: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("replicaset {rs}: {source}")]
    Api {
        rs: String,
        #[source]
        source: kube::Error,
    },
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    expectations: Expectations,
    recorder: Recorder,
}

/// The controller's loop; it reads ReplicaSets and pods from the shared informers.
pub fn run(client: Client, informers: &Informers) -> Task {
    let rs_store = informers.replicasets.store();
    let pods = informers.pods.store();
    let owners = rs_store.clone();
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "replicaset-controller"),
        client,
        pods: pods.clone(),
        expectations: Expectations::default(),
    });
    let controller = Controller::for_shared_stream(informers.replicasets.subscribe(), rs_store)
        .watches_shared_stream(informers.pods.subscribe(), move |pod: Arc<Pod>| {
            owners_of(&owners, &pod)
        });
    Box::pin(async move {
        pods.wait_until_ready().await.ok();
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    debug!(error = %e, "replicaset reconcile");
                }
            })
            .await
    })
}

/// The ReplicaSets a pod change concerns: its controller if that is a ReplicaSet, else
/// every ReplicaSet of its namespace whose selector matches it (an orphan to adopt).
fn owners_of(rs_store: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(&pod.metadata) {
        if owner.kind == "ReplicaSet" && owner.api_version == "apps/v1" {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return vec![];
    }
    rs_store
        .state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
        .filter(|rs| {
            rs.spec
                .as_ref()
                .is_some_and(|s| selects(&s.selector, pod.metadata.labels.as_ref()))
        })
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

fn error_policy(_rs: Arc<ReplicaSet>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(error = %e, "replicaset sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let rs_key = key(&rs.metadata);
    let err = |source| Error::Api {
        rs: rs_key.clone(),
        source,
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let in_ns: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let cached = |n: &String| in_ns.iter().any(|p| p.metadata.name.as_ref() == Some(n));
    let remains = |n: &String| {
        in_ns
            .iter()
            .any(|p| p.metadata.name.as_ref() == Some(n) && p.metadata.deletion_timestamp.is_none())
    };
    let satisfied = ctx.expectations.satisfied_by(&rs_key, cached, remains);
    let spec = rs.spec.clone().unwrap_or_default();
    let uid = rs.uid().unwrap_or_default();
    let deleting = rs.metadata.deletion_timestamp.is_some();

    // Claim: keep ours that match, release ours that do not, adopt matching orphans.
    let mut owned: Vec<Arc<Pod>> = vec![];
    for pod in &in_ns {
        let matches = selects(&spec.selector, pod.metadata.labels.as_ref());
        match controller_of(&pod.metadata) {
            Some(o) if o.uid == uid => {
                if matches {
                    owned.push(pod.clone());
                } else if let Err(e) = release(&pods_api, pod, &uid).await {
                    debug!(rs = %rs_key, pod = %pod.name_any(), error = %e, "releasing");
                }
            }
            None if matches && !deleting && pod.metadata.deletion_timestamp.is_none() => {
                match adopt(&pods_api, pod, &rs).await {
                    Ok(p) => owned.push(Arc::new(p)),
                    Err(e) => debug!(rs = %rs_key, pod = %pod.name_any(), error = %e, "adopting"),
                }
            }
            _ => {}
        }
    }
    let active: Vec<Arc<Pod>> = owned.iter().filter(|p| pod_active(p)).cloned().collect();

    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    if satisfied && !deleting {
        if active.len() < want {
            let n = (want - active.len()).min(BURST);
            create_pods(&ctx, &pods_api, &rs, &rs_key, n).await;
        } else if active.len() > want {
            let n = (active.len() - want).min(BURST);
            let mut ranked = active.clone();
            ranked.sort_by(|a, b| deletion_rank(a, b));
            let doomed: Vec<Arc<Pod>> = ranked.into_iter().take(n).collect();
            let names: Vec<String> = doomed.iter().map(|p| p.name_any()).collect();
            ctx.expectations.expect(&rs_key, &[], &names);
            for pod in doomed {
                let pname = pod.name_any();
                match pods_api.delete(&pname, &DeleteParams::default()).await {
                    Ok(_) => {
                        ctx.recorder
                            .publish(
                                rs.as_ref(),
                                "Normal",
                                "SuccessfulDelete",
                                &format!("Deleted pod: {pname}"),
                            )
                            .await
                    }
                    Err(e) => {
                        ctx.expectations.forget(&rs_key, &pname);
                        if !is_not_found(&e) {
                            ctx.recorder
                                .publish(
                                    rs.as_ref(),
                                    "Warning",
                                    "FailedDelete",
                                    &format!("Error deleting: {e}"),
                                )
                                .await;
                        }
                    }
                }
            }
        }
    }

    let status = status_of(&rs, &active);
    if rs.status.as_ref() != Some(&status) {
        let rss: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        match rss
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(err(e)),
        }
    }
    // Pods become available minReadySeconds after they become ready, with no event
    // to say so: look again then.
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    if min_ready > 0 && status.ready_replicas != status.available_replicas {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if !ctx.expectations.satisfied_by(&rs_key, |_| false, |_| true) {
        // Still waiting for the cache: a pod event normally wakes us first.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(Action::await_change())
}

/// Creates `n` pods in batches of 1, 2, 4, ... so that a failing create (quota, a bad
/// template) costs one call, not `n` (upstream's slow start).
async fn create_pods(ctx: &Ctx, pods_api: &Api<Pod>, rs: &ReplicaSet, rs_key: &str, n: usize) {
    let mut left = n;
    let mut batch = 1;
    while left > 0 {
        let size = batch.min(left);
        let pod = pod_from(rs);
        let pp = PostParams::default();
        let results =
            futures_util::future::join_all((0..size).map(|_| pods_api.create(&pp, &pod))).await;
        let mut failed = false;
        for r in results {
            match r {
                Ok(p) => {
                    let pname = p.name_any();
                    ctx.expectations
                        .expect(rs_key, std::slice::from_ref(&pname), &[]);
                    ctx.recorder
                        .publish(
                            rs,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {pname}"),
                        )
                        .await;
                }
                Err(e) => {
                    failed = true;
                    ctx.recorder
                        .publish(
                            rs,
                            "Warning",
                            "FailedCreate",
                            &format!("Error creating: {e}"),
                        )
                        .await;
                }
            }
        }
        if failed {
            return;
        }
        left -= size;
        batch *= 2;
    }
}

/// A new pod from the ReplicaSet's template, owned by it.
fn pod_from(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![controller_ref(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Adds the ReplicaSet as the pod's controller, if the pod is still an orphan (the
/// resourceVersion makes a concurrent change a conflict rather than a double owner).
async fn adopt(pods_api: &Api<Pod>, pod: &Pod, rs: &ReplicaSet) -> Result<Pod, kube::Error> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(controller_ref(rs));
    let patch = json!({
        "metadata": {
            "resourceVersion": pod.metadata.resource_version,
            "ownerReferences": refs,
        }
    });
    pods_api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
}

/// Drops the ReplicaSet's reference from a pod whose labels no longer match.
async fn release(pods_api: &Api<Pod>, pod: &Pod, uid: &str) -> Result<Pod, kube::Error> {
    let refs: Vec<_> = pod
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != uid)
        .collect();
    let patch = json!({
        "metadata": {
            "resourceVersion": pod.metadata.resource_version,
            "ownerReferences": refs,
        }
    });
    pods_api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Orders pods so the ones to delete first come first, as upstream's ActivePods ranking:
/// not yet on a node, then Pending before Unknown before Running, not ready before
/// ready, ready for less time, more restarts, and newer.
fn deletion_rank(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| !n.is_empty())
    };
    let phase = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    };
    let ready_since = |p: &Pod| {
        super::shared::pod_condition(p, "Ready")
            .filter(|c| c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
    };
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
            .unwrap_or(0)
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    assigned(a)
        .cmp(&assigned(b))
        .then(phase(a).cmp(&phase(b)))
        .then(pod_ready(a).cmp(&pod_ready(b)))
        // Ready more recently goes first (a later timestamp sorts first).
        .then(ready_since(b).cmp(&ready_since(a)))
        .then(restarts(b).cmp(&restarts(a)))
        .then(created(b).cmp(&created(a)))
}

fn status_of(rs: &ReplicaSet, active: &[Arc<Pod>]) -> ReplicaSetStatus {
    let spec = rs.spec.clone().unwrap_or_default();
    let template_labels: BTreeMap<String, String> = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let now = jiff::Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
    let fully_labeled = count(&|p: &Pod| {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    });
    let ready = count(&|p: &Pod| pod_ready(p));
    let available = count(&|p: &Pod| pod_available(p, min_ready, now));
    let old = rs.status.clone().unwrap_or_default();
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions: old.conditions,
        terminating_replicas: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::CONTROLLER_MANAGER_USER;
    use crate::controllers::client::in_process;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ListParams;
    use std::time::Instant;

    async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn rs(name: &str, replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}
                }
            }
        }))
        .unwrap()
    }

    async fn pods_of(api: &Api<Pod>, app: &str) -> Vec<Pod> {
        api.list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap()
            .items
    }

    #[tokio::test]
    async fn a_replicaset_keeps_its_count_adopts_releases_and_reports() {
        let (api, _stop) = crate::api::auth::token::memory_api().await;
        let client = in_process(api, CONTROLLER_MANAGER_USER);
        let mut informers = Informers::new(&client);
        let mut tasks = vec![run(client.clone(), &informers)];
        tasks.extend(informers.run());
        let running = tokio::spawn(futures_util::future::join_all(tasks));

        let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        // An orphan that matches is adopted and counts toward the three.
        let orphan: Pod = serde_json::from_value(json!({
            "metadata": {"name": "orphan", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &orphan).await.unwrap();
        let created = rss
            .create(&PostParams::default(), &rs("web", 3))
            .await
            .unwrap();
        let uid = created.uid().unwrap();
        let all = eventually("three pods", async || {
            let p = pods_of(&pods, "web").await;
            (p.len() == 3).then_some(p)
        })
        .await;
        assert!(all.iter().any(|p| p.name_any() == "orphan"));
        for p in &all {
            assert_eq!(controller_of(&p.metadata).unwrap().uid, uid);
        }
        // Ready pods show in the status.
        for p in &all {
            let status = PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(jiff::Timestamp::now())),
                    ..Default::default()
                }]),
                ..Default::default()
            };
            pods.patch_status(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
        }
        eventually("status", async || {
            let s = rss.get("web").await.unwrap().status?;
            (s.replicas == 3
                && s.ready_replicas == Some(3)
                && s.available_replicas == Some(3)
                && s.fully_labeled_replicas == Some(3)
                && s.observed_generation == Some(1))
            .then_some(())
        })
        .await;
        // The count held while the cache caught up: no burst of extra pods.
        assert_eq!(pods_of(&pods, "web").await.len(), 3);

        // A deleted pod is replaced.
        pods.delete("orphan", &DeleteParams::default())
            .await
            .unwrap();
        eventually("a replacement", async || {
            let p = pods_of(&pods, "web").await;
            (p.len() == 3 && p.iter().all(|p| p.name_any() != "orphan")).then_some(())
        })
        .await;

        // A pod whose label is edited away is released and replaced.
        let victim = pods_of(&pods, "web")
            .await
            .into_iter()
            .find(pod_ready)
            .unwrap()
            .name_any();
        pods.patch(
            &victim,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "debug"}}})),
        )
        .await
        .unwrap();
        eventually("release", async || {
            let p = pods.get(&victim).await.unwrap();
            p.metadata
                .owner_references
                .unwrap_or_default()
                .is_empty()
                .then_some(())
        })
        .await;
        eventually("replacement of the released pod", async || {
            (pods_of(&pods, "web").await.len() == 3).then_some(())
        })
        .await;

        // Scaling down deletes the not-ready (new) pods before the ready ones.
        let ready_before = pods_of(&pods, "web")
            .await
            .iter()
            .filter(|p| pod_ready(p))
            .count();
        assert_eq!(ready_before, 1);
        rss.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
        let left = eventually("scale down", async || {
            let p = pods_of(&pods, "web").await;
            (p.len() == 2).then_some(p)
        })
        .await;
        assert_eq!(
            left.iter().filter(|p| pod_ready(p)).count(),
            ready_before,
            "the ready pod stays"
        );
        running.abort();
    }

    #[test]
    fn deletion_ranks_unassigned_and_unready_pods_first() {
        let pod = |name: &str, node: Option<&str>, ready: bool| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"nodeName": node, "containers": []},
                "status": {"phase": if node.is_some() {"Running"} else {"Pending"},
                    "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            }))
            .unwrap()
        };
        let mut pods = [
            pod("ready", Some("n1"), true),
            pod("unready", Some("n1"), false),
            pod("unassigned", None, false),
        ];
        pods.sort_by(deletion_rank);
        let names: Vec<_> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["unassigned", "unready", "ready"]);
    }
}
