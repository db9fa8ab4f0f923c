//! The deployment controller: owns the ReplicaSets of each Deployment (adopting and
//! releasing them by selector), creates the ReplicaSet of the current pod template,
//! moves replicas between old and new by the RollingUpdate or Recreate strategy, scales
//! them proportionally, prunes old ones beyond revisionHistoryLimit and reports the
//! status `kubectl rollout status` reads, as kube-controller-manager's. The pods
//! themselves are the ReplicaSet controller's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use super::manager::Task;
use super::shared::{self, Expectations, Informers, Recorder};

pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// How soon to look again while something is pending that sends no event (pods going
/// away, a write not yet in the cache).
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("replica set name {0} collides with one of another template")]
    Collision(String),
}

struct Ctx {
    client: Client,
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    recorder: Recorder,
    expectations: Expectations,
}

/// The controller's loop; subscribes to the informers now, so call before they run.
pub fn run(client: Client, informers: &Informers) -> Task {
    let rs_store = informers.replicasets.store();
    let mapper_rs = rs_store.clone();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        deployments: informers.deployments.store(),
        replicasets: rs_store,
        pods: informers.pods.store(),
        recorder: Recorder::new(client, "deployment-controller"),
        expectations: Expectations::default(),
    });
    let controller = Controller::for_shared_stream(
        informers.deployments.subscribe(),
        informers.deployments.store(),
    )
    .owns_shared_stream(informers.replicasets.subscribe())
    .watches_shared_stream(informers.pods.subscribe(), move |pod: Arc<Pod>| {
        deployment_of_pod(&mapper_rs, &pod)
    });
    Box::pin(async move {
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    debug!(error = %e, "deployment reconcile");
                }
            })
            .await
    })
}

/// The deployment owning the pod's ReplicaSet, if any.
fn deployment_of_pod(rss: &Store<ReplicaSet>, pod: &Pod) -> Option<ObjectRef<Deployment>> {
    let owner = shared::controller_of(&pod.metadata)?;
    if owner.kind != "ReplicaSet" {
        return None;
    }
    let ns = pod.metadata.namespace.clone()?;
    let rs = rss.get(&ObjectRef::new(&owner.name).within(&ns))?;
    let d = shared::controller_of(&rs.metadata)?;
    (d.kind == "Deployment").then(|| ObjectRef::new(&d.name).within(&ns))
}

fn error_policy(_d: Arc<Deployment>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    debug!(error = %e, "deployment sync failed; retrying");
    Action::requeue(RECHECK)
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

fn revision(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> (Option<jiff::Timestamp>, String) {
    (
        rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        rs.name_any(),
    )
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// An int-or-percent of `total`, rounded up or down as upstream's
/// GetScaledValueFromIntOrPercent.
fn scaled(v: Option<&IntOrString>, default: &str, total: i32, round_up: bool) -> i32 {
    let v = v
        .cloned()
        .unwrap_or_else(|| IntOrString::String(default.into()));
    match v {
        IntOrString::Int(i) => i,
        IntOrString::String(s) => {
            let Ok(p) = s.trim_end_matches('%').parse::<i64>() else {
                return 0;
            };
            let n = p * total as i64;
            (if round_up { (n + 99) / 100 } else { n / 100 }) as i32
        }
    }
}

/// maxSurge and maxUnavailable resolved against the replicas; both 0 would never
/// progress, so maxUnavailable becomes 1 (upstream's ResolveFenceposts).
fn fenceposts(d: &Deployment) -> (i32, i32) {
    if is_recreate(d) {
        return (0, 0);
    }
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let n = desired(d);
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), "25%", n, true);
    let unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), "25%", n, false);
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

fn max_surge(d: &Deployment) -> i32 {
    fenceposts(d).0
}

/// Upstream's ComputeHash: FNV-1a 32 of the template (and collision count), its decimal
/// form in the alphabet of rand.SafeEncodeString.
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(template).unwrap_or_default());
    if let Some(c) = collision_count {
        feed(&(c as u32).to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect()
}

fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(POD_TEMPLATE_HASH);
    }
    t
}

fn template_of(d: &Deployment) -> PodTemplateSpec {
    d.spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
}

fn rs_template(rs: &ReplicaSet) -> PodTemplateSpec {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default()
}

fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

/// Sets the annotations a ReplicaSet carries from its deployment; true if any changed.
/// Only the new ReplicaSet (`new_revision` given) takes the deployment's own annotations,
/// such as its change-cause; scaling an old one touches only the replica counts, as
/// upstream, so each revision keeps the change-cause it was made with.
fn set_rs_annotations(d: &Deployment, rs: &mut ReplicaSet, new_revision: Option<i64>) -> bool {
    let before = rs.metadata.annotations.clone();
    let a = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if new_revision.is_none() || k == LAST_APPLIED || k.starts_with("deployment.kubernetes.io/")
        {
            continue;
        }
        a.insert(k.clone(), v.clone());
    }
    if let Some(new) = new_revision {
        let old = a.get(REVISION).and_then(|r| r.parse::<i64>().ok());
        if old.is_none_or(|o| o < new) {
            if let Some(o) = old {
                let history = match a.get(REVISION_HISTORY) {
                    Some(h) if !h.is_empty() => format!("{h},{o}"),
                    _ => o.to_string(),
                };
                a.insert(REVISION_HISTORY.into(), history);
            }
            a.insert(REVISION.into(), new.to_string());
        }
    }
    let n = desired(d);
    a.insert(DESIRED_REPLICAS.into(), n.to_string());
    a.insert(MAX_REPLICAS.into(), (n + max_surge(d)).to_string());
    rs.metadata.annotations != before
}

/// The state of one deployment as the caches show it.
struct View {
    d: Arc<Deployment>,
    ns: String,
    new: Option<ReplicaSet>,
    old: Vec<ReplicaSet>,
}

impl View {
    fn all(&self) -> impl Iterator<Item = &ReplicaSet> {
        self.new.iter().chain(self.old.iter())
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_default();
    let key = shared::key(&d.metadata);
    let Some(d) = ctx
        .deployments
        .get(&ObjectRef::new(&d.name_any()).within(&ns))
    else {
        ctx.expectations.delete(&key);
        return Ok(Action::await_change());
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let sel = d
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    {
        // A selector of everything would claim every ReplicaSet of the namespace.
        ctx.recorder
            .publish(
                &*d,
                "Warning",
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            )
            .await;
        return Ok(Action::await_change());
    }
    let rss = ctx.replicasets.clone();
    if !ctx
        .expectations
        .satisfied(&key, |n| rss.get(&ObjectRef::new(n).within(&ns)).is_some())
    {
        return Ok(Action::requeue(RECHECK));
    }
    let owned = claim(&ctx, &d, &ns).await?;
    let mut view = View {
        d: d.clone(),
        ns,
        new: None,
        old: owned,
    };
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    if paused || scaling_event(&view) {
        sync_revision(&ctx, &mut view, false).await?;
        scale(&ctx, &mut view).await?;
        if paused {
            cleanup(&ctx, &view).await?;
        }
        return sync_status(&ctx, &view, false).await;
    }
    if is_recreate(&d) {
        recreate(&ctx, &mut view).await
    } else {
        rolling(&ctx, &mut view).await
    }
}

/// Adopts matching orphans and releases owned ReplicaSets the selector no longer
/// matches; returns the owned ones.
async fn claim(ctx: &Ctx, d: &Deployment, ns: &str) -> Result<Vec<ReplicaSet>, Error> {
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let sel = d
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let mut owned = vec![];
    for rs in ctx.replicasets.state() {
        if rs.metadata.namespace.as_deref() != Some(ns) {
            continue;
        }
        let matches = shared::selects(&sel, rs.metadata.labels.as_ref());
        match shared::controller_of(&rs.metadata) {
            Some(o) if o.uid == uid => {
                if matches {
                    owned.push((*rs).clone());
                } else {
                    let refs: Vec<_> = rs
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .filter(|o| o.uid != uid)
                        .cloned()
                        .collect();
                    let patch = serde_json::json!({"metadata": {
                        "ownerReferences": refs,
                        "resourceVersion": rs.metadata.resource_version,
                    }});
                    info!(replicaset = %rs.name_any(), "releasing replica set");
                    api.patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                }
            }
            None if matches && rs.metadata.deletion_timestamp.is_none() => {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(shared::controller_ref(d));
                let patch = serde_json::json!({"metadata": {
                    "ownerReferences": refs,
                    "resourceVersion": rs.metadata.resource_version,
                }});
                info!(replicaset = %rs.name_any(), "adopting replica set");
                let adopted = api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                owned.push(adopted);
            }
            _ => {}
        }
    }
    owned.sort_by_key(created);
    Ok(owned)
}

/// Any active ReplicaSet annotated for another replica count: the deployment was
/// scaled rather than changed.
fn scaling_event(v: &View) -> bool {
    let n = desired(&v.d).to_string();
    v.old
        .iter()
        .filter(|rs| replicas(rs) > 0)
        .any(|rs| annotation(&rs.metadata, DESIRED_REPLICAS).is_some_and(|a| a != n))
}

/// Splits the owned ReplicaSets into new and old, creating the new one if asked, and
/// brings revisions and annotations up to date (upstream's
/// getAllReplicaSetsAndSyncRevision).
async fn sync_revision(ctx: &Ctx, v: &mut View, create: bool) -> Result<(), Error> {
    let template = template_of(&v.d);
    let owned = std::mem::take(&mut v.old);
    let pos = owned
        .iter()
        .position(|rs| equal_ignore_hash(&rs_template(rs), &template));
    let mut old = owned;
    let existing = pos.map(|p| old.remove(p));
    let max_old = old.iter().map(revision).max().unwrap_or(0);
    let new_revision = max_old + 1;
    v.old = old;
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &v.ns);
    let min_ready = v.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
    if let Some(mut rs) = existing {
        let mut changed = set_rs_annotations(&v.d, &mut rs, Some(new_revision));
        if let Some(spec) = rs.spec.as_mut() {
            if spec.min_ready_seconds != min_ready {
                spec.min_ready_seconds = min_ready;
                changed = true;
            }
        }
        if changed {
            rs = api
                .replace(&rs.name_any(), &PostParams::default(), &rs)
                .await?;
        }
        let rev = revision(&rs);
        v.new = Some(rs);
        set_deployment_revision(ctx, v, rev).await?;
        return Ok(());
    }
    if !create {
        return Ok(());
    }
    let collision = v.d.status.as_ref().and_then(|s| s.collision_count);
    let hash = compute_hash(&template, collision);
    let name = format!("{}-{}", v.d.name_any(), hash);
    let mut t = template.clone();
    t.metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let mut selector =
        v.d.spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let mut rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(v.ns.clone()),
            labels: Some(labels),
            owner_references: Some(vec![shared::controller_ref(&*v.d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: min_ready,
            selector,
            template: Some(t),
        }),
        status: None,
    };
    set_rs_annotations(&v.d, &mut rs, Some(new_revision));
    let count = new_rs_replicas(&v.d, &v.old, None);
    rs.spec.as_mut().unwrap().replicas = Some(count);
    let key = shared::key(&v.d.metadata);
    ctx.expectations
        .expect(&key, std::slice::from_ref(&name), &[]);
    let created = match api.create(&PostParams::default(), &rs).await {
        Ok(c) => c,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            ctx.expectations.forget(&key, &name);
            let existing = api.get(&name).await?;
            let ours = shared::controller_of(&existing.metadata)
                .is_some_and(|o| Some(&o.uid) == v.d.metadata.uid.as_ref());
            if ours && equal_ignore_hash(&rs_template(&existing), &template) {
                // The cache had not shown it yet; the next sync finds it.
                return Err(Error::Collision(name));
            }
            let mut status = v.d.status.clone().unwrap_or_default();
            status.collision_count = Some(collision.unwrap_or(0) + 1);
            let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &v.ns);
            dapi.patch_status(
                &v.d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(
                    &serde_json::json!({"status": {"collisionCount": status.collision_count}}),
                ),
            )
            .await?;
            warn!(replicaset = %name, "hash collision; retrying with a new collision count");
            return Err(Error::Collision(name));
        }
        Err(e) => {
            ctx.expectations.forget(&key, &name);
            return Err(e.into());
        }
    };
    info!(deployment = %key, replicaset = %name, replicas = count, "created replica set");
    if count > 0 {
        ctx.recorder
            .publish(
                &*v.d,
                "Normal",
                "ScalingReplicaSet",
                &format!("Scaled up replica set {name} from 0 to {count}"),
            )
            .await;
    }
    let rev = revision(&created);
    v.new = Some(created);
    set_deployment_revision(ctx, v, rev).await?;
    // The Progressing condition says a new ReplicaSet was created.
    let mut status = v.d.status.clone().unwrap_or_default();
    set_condition(
        &mut status,
        "Progressing",
        "True",
        "NewReplicaSetCreated",
        &format!("Created new replica set \"{name}\""),
    );
    let d = update_status(ctx, v, status).await?;
    v.d = Arc::new(d);
    Ok(())
}

async fn set_deployment_revision(ctx: &Ctx, v: &mut View, rev: i64) -> Result<(), Error> {
    if annotation(&v.d.metadata, REVISION) == Some(rev.to_string()) {
        return Ok(());
    }
    let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &v.ns);
    let patch = serde_json::json!({"metadata": {"annotations": {REVISION: rev.to_string()}}});
    let d = dapi
        .patch(
            &v.d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    v.d = Arc::new(d);
    Ok(())
}

/// How many replicas the new ReplicaSet should have now (upstream's NewRSNewReplicas).
fn new_rs_replicas(d: &Deployment, old: &[ReplicaSet], new: Option<&ReplicaSet>) -> i32 {
    let n = desired(d);
    if is_recreate(d) {
        return n;
    }
    let current_new = new.map_or(0, replicas);
    let current: i32 = old.iter().map(replicas).sum::<i32>() + current_new;
    let max_total = n + max_surge(d);
    if current >= max_total {
        return current_new;
    }
    current_new + (max_total - current).min(n - current_new).max(0)
}

/// Scales one ReplicaSet and refreshes its replica annotations; records an event when
/// the size changed.
async fn scale_rs(ctx: &Ctx, v: &View, rs: &mut ReplicaSet, to: i32) -> Result<bool, Error> {
    let from = replicas(rs);
    let mut copy = rs.clone();
    let annotations = set_rs_annotations(&v.d, &mut copy, None);
    if from == to && !annotations {
        return Ok(false);
    }
    copy.spec.get_or_insert_with(Default::default).replicas = Some(to);
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &v.ns);
    *rs = api
        .replace(&copy.name_any(), &PostParams::default(), &copy)
        .await?;
    if from != to {
        let dir = if to > from { "up" } else { "down" };
        info!(replicaset = %rs.name_any(), from, to, "scaled replica set");
        ctx.recorder
            .publish(
                &*v.d,
                "Normal",
                "ScalingReplicaSet",
                &format!(
                    "Scaled {dir} replica set {} from {from} to {to}",
                    rs.name_any()
                ),
            )
            .await;
    }
    Ok(from != to)
}

/// Upstream's scale(): a deployment with one active ReplicaSet scales it; otherwise the
/// change in replicas is spread across the active ones in proportion to their size.
async fn scale(ctx: &Ctx, v: &mut View) -> Result<(), Error> {
    let n = desired(&v.d);
    let mut all: Vec<ReplicaSet> = v.all().cloned().collect();
    let active: Vec<usize> = (0..all.len()).filter(|&i| replicas(&all[i]) > 0).collect();
    let target = match active.len() {
        0 if v.new.is_some() => Some(0),
        0 if !v.old.is_empty() => Some(all.len() - 1),
        1 => Some(active[0]),
        _ => None,
    };
    if let Some(i) = target {
        if replicas(&all[i]) != n {
            scale_rs(ctx, v, &mut all[i], n).await?;
        }
        return store_back(v, all);
    }
    if active.is_empty() {
        return Ok(());
    }
    let saturated = v.new.as_ref().is_some_and(|rs| {
        annotation(&rs.metadata, DESIRED_REPLICAS) == Some(n.to_string())
            && replicas(rs) == n
            && available(rs) == n
    });
    if saturated {
        let start = usize::from(v.new.is_some());
        for rs in all.iter_mut().skip(start) {
            if replicas(rs) > 0 {
                scale_rs(ctx, v, rs, 0).await?;
            }
        }
        return store_back(v, all);
    }
    if is_recreate(&v.d) {
        return Ok(());
    }
    let surge = max_surge(&v.d);
    let allowed = if n > 0 { n + surge } else { 0 };
    let total: i32 = active.iter().map(|&i| replicas(&all[i])).sum();
    let to_add = allowed - total;
    let mut order = active.clone();
    // Larger first; ties go to the newer when adding, the older when removing.
    order.sort_by(|&a, &b| {
        let (ra, rb) = (replicas(&all[a]), replicas(&all[b]));
        rb.cmp(&ra).then_with(|| {
            if to_add > 0 {
                created(&all[b]).cmp(&created(&all[a]))
            } else {
                created(&all[a]).cmp(&created(&all[b]))
            }
        })
    });
    let status_replicas_d = v.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let mut sizes: BTreeMap<usize, i32> = BTreeMap::new();
    let mut added = 0;
    for &i in &order {
        let rs = &all[i];
        let mut proportion = 0;
        if to_add != 0 && to_add != added && replicas(rs) != 0 {
            let fraction = if n == 0 {
                -replicas(rs)
            } else {
                let annotated = annotation(&rs.metadata, MAX_REPLICAS)
                    .and_then(|a| a.parse::<i32>().ok())
                    .unwrap_or(status_replicas_d);
                if annotated == 0 {
                    0
                } else {
                    let size = replicas(rs) as f64 * (n + surge) as f64 / annotated as f64;
                    size.round() as i32 - replicas(rs)
                }
            };
            let allowed_left = to_add - added;
            proportion = if to_add > 0 {
                fraction.min(allowed_left)
            } else {
                fraction.max(allowed_left)
            };
        }
        sizes.insert(i, replicas(rs) + proportion);
        added += proportion;
    }
    if to_add != 0 {
        let first = order[0];
        let s = sizes.entry(first).or_default();
        *s = (*s + to_add - added).max(0);
    }
    for (i, size) in sizes {
        scale_rs(ctx, v, &mut all[i], size).await?;
    }
    store_back(v, all)
}

fn store_back(v: &mut View, mut all: Vec<ReplicaSet>) -> Result<(), Error> {
    if v.new.is_some() {
        v.new = Some(all.remove(0));
    }
    v.old = all;
    Ok(())
}

async fn rolling(ctx: &Ctx, v: &mut View) -> Result<Action, Error> {
    sync_revision(ctx, v, true).await?;
    let n = desired(&v.d);
    // Scale up the new ReplicaSet.
    if let Some(mut new) = v.new.clone() {
        let cur = replicas(&new);
        let to = if cur > n {
            n
        } else {
            new_rs_replicas(&v.d, &v.old, Some(&new))
        };
        if to != cur {
            let up = scale_rs(ctx, v, &mut new, to).await?;
            v.new = Some(new);
            if up {
                return sync_status(ctx, v, true).await;
            }
        }
    }
    // Scale down old ones, keeping the minimum available.
    if reconcile_old(ctx, v).await? {
        return sync_status(ctx, v, true).await;
    }
    if complete(&v.d, &calculate_status(v)) {
        cleanup(ctx, v).await?;
    }
    sync_status(ctx, v, true).await
}

async fn reconcile_old(ctx: &Ctx, v: &mut View) -> Result<bool, Error> {
    let old_count: i32 = v.old.iter().map(replicas).sum();
    if old_count == 0 {
        return Ok(false);
    }
    let all_count: i32 = v.all().map(replicas).sum();
    let (_, max_unavailable) = fenceposts(&v.d);
    let min_available = desired(&v.d) - max_unavailable;
    let new_unavailable = v.new.as_ref().map_or(0, |rs| replicas(rs) - available(rs));
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Ok(false);
    }
    // First the old replicas that are not available anyway.
    let mut old = std::mem::take(&mut v.old);
    let mut cleaned = 0;
    for rs in old.iter_mut() {
        if cleaned >= max_scaled_down {
            break;
        }
        let (spec, avail) = (replicas(rs), available(rs));
        if spec == 0 || avail >= spec {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(spec - avail);
        scale_rs(ctx, v, rs, spec - down).await?;
        cleaned += down;
    }
    // Then available ones, oldest first, down to the minimum available.
    let available_count: i32 = v.new.iter().chain(old.iter()).map(available).sum();
    let mut scaled = 0;
    if available_count > min_available {
        let total = available_count - min_available;
        for rs in old.iter_mut() {
            if scaled >= total {
                break;
            }
            let spec = replicas(rs);
            if spec == 0 {
                continue;
            }
            let down = spec.min(total - scaled);
            scale_rs(ctx, v, rs, spec - down).await?;
            scaled += down;
        }
    }
    v.old = old;
    Ok(cleaned + scaled > 0)
}

async fn recreate(ctx: &Ctx, v: &mut View) -> Result<Action, Error> {
    sync_revision(ctx, v, false).await?;
    let mut old = std::mem::take(&mut v.old);
    let mut scaled = false;
    for rs in old.iter_mut() {
        if replicas(rs) != 0 {
            scaled |= scale_rs(ctx, v, rs, 0).await?;
        }
    }
    v.old = old;
    if scaled {
        return sync_status(ctx, v, true).await;
    }
    if old_pods_running(ctx, v) {
        sync_status(ctx, v, true).await?;
        return Ok(Action::requeue(RECHECK));
    }
    if v.new.is_none() {
        sync_revision(ctx, v, true).await?;
        // sync_revision put the old ones back; they are all at 0 already.
    }
    if let Some(mut new) = v.new.clone() {
        let n = desired(&v.d);
        if replicas(&new) != n {
            scale_rs(ctx, v, &mut new, n).await?;
            v.new = Some(new);
        }
    }
    if complete(&v.d, &calculate_status(v)) {
        cleanup(ctx, v).await?;
    }
    sync_status(ctx, v, true).await
}

/// Whether any pod of an old ReplicaSet is still there (upstream counts every pod not
/// Succeeded or Failed, terminating ones too).
fn old_pods_running(ctx: &Ctx, v: &View) -> bool {
    if v.old.iter().any(|rs| status_replicas(rs) > 0) {
        return true;
    }
    let uids: Vec<&str> = v
        .old
        .iter()
        .filter_map(|rs| rs.metadata.uid.as_deref())
        .collect();
    ctx.pods.state().iter().any(|p| {
        p.metadata.namespace.as_deref() == Some(v.ns.as_str())
            && shared::controller_of(&p.metadata).is_some_and(|o| uids.contains(&o.uid.as_str()))
            && !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
    })
}

/// Deletes the oldest old ReplicaSets with no replicas beyond revisionHistoryLimit.
async fn cleanup(ctx: &Ctx, v: &View) -> Result<(), Error> {
    let limit =
        v.d.spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
    let mut alive: Vec<&ReplicaSet> = v
        .old
        .iter()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let diff = alive.len() as i32 - limit;
    if diff <= 0 {
        return Ok(());
    }
    alive.sort_by_key(|rs| (revision(rs), created(rs)));
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &v.ns);
    for rs in alive.into_iter().take(diff as usize) {
        let observed = rs.status.as_ref().and_then(|s| s.observed_generation);
        if status_replicas(rs) != 0
            || replicas(rs) != 0
            || rs.metadata.generation.unwrap_or(0) > observed.unwrap_or(0)
        {
            continue;
        }
        info!(replicaset = %rs.name_any(), "deleting old replica set beyond the history limit");
        match api.delete(&rs.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn condition<'a>(s: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.iter().flatten().find(|c| c.type_ == type_)
}

/// Sets a condition as upstream's SetDeploymentCondition: unchanged when status and
/// reason are the same; the transition time kept when only the reason changes.
fn set_condition(s: &mut DeploymentStatus, type_: &str, status: &str, reason: &str, msg: &str) {
    let now = Time(jiff::Timestamp::now());
    let mut cond = DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(msg.into()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    };
    let conds = s.conditions.get_or_insert_with(Vec::new);
    if let Some(cur) = conds.iter().find(|c| c.type_ == type_) {
        if cur.status == status && cur.reason.as_deref() == Some(reason) {
            return;
        }
        if cur.status == status {
            cond.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conds.retain(|c| c.type_ != type_);
    conds.push(cond);
}

fn calculate_status(v: &View) -> DeploymentStatus {
    let d = &v.d;
    let mut s = d.status.clone().unwrap_or_default();
    let total: i32 = v.all().map(replicas).sum();
    let avail: i32 = v.all().map(available).sum();
    s.observed_generation = d.metadata.generation;
    s.replicas = Some(v.all().map(status_replicas).sum());
    s.updated_replicas = Some(v.new.as_ref().map_or(0, status_replicas));
    s.ready_replicas = Some(v.all().map(ready).sum());
    s.available_replicas = Some(avail);
    s.unavailable_replicas = Some((total - avail).max(0));
    let (_, max_unavailable) = fenceposts(d);
    if avail >= desired(d) - max_unavailable {
        set_condition(
            &mut s,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        );
    } else {
        set_condition(
            &mut s,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        );
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let reason = condition(&s, "Progressing").and_then(|c| c.reason.clone());
    if paused && reason.as_deref() != Some("DeploymentPaused") {
        set_condition(
            &mut s,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused",
        );
    } else if !paused && reason.as_deref() == Some("DeploymentPaused") {
        set_condition(
            &mut s,
            "Progressing",
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed",
        );
    }
    // Zero for the optional counters is written as absent, as upstream's omitempty.
    for f in [
        &mut s.updated_replicas,
        &mut s.ready_replicas,
        &mut s.available_replicas,
        &mut s.unavailable_replicas,
        &mut s.replicas,
    ] {
        if *f == Some(0) {
            *f = None;
        }
    }
    s
}

fn count(v: Option<i32>) -> i32 {
    v.unwrap_or(0)
}

fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let n = desired(d);
    count(s.updated_replicas) == n
        && count(s.replicas) == n
        && count(s.available_replicas) == n
        && s.observed_generation >= d.metadata.generation
}

fn deadline(d: &Deployment) -> Option<i32> {
    let p = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    (p != i32::MAX).then_some(p)
}

fn timed_out(d: &Deployment, s: &DeploymentStatus) -> bool {
    let Some(secs) = deadline(d) else {
        return false;
    };
    let Some(c) = condition(s, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some("NewReplicaSetAvailable") => false,
        Some("ProgressDeadlineExceeded") => true,
        _ => c.last_update_time.as_ref().is_some_and(|t| {
            t.0 + jiff::SignedDuration::from_secs(secs as i64) < jiff::Timestamp::now()
        }),
    }
}

/// Computes and writes the status; with `progress`, also the Progressing condition
/// (upstream's syncRolloutStatus), requeueing to notice a missed deadline.
async fn sync_status(ctx: &Ctx, v: &View, progress: bool) -> Result<Action, Error> {
    let d = &v.d;
    let mut s = calculate_status(v);
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let new_name = v.new.as_ref().map(|rs| rs.name_any());
    if progress && !paused && deadline(d).is_some() {
        let cur = condition(&s, "Progressing").cloned();
        let done = count(s.replicas) == count(s.updated_replicas)
            && cur.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        if !done {
            let old = d.status.clone().unwrap_or_default();
            let old_old = count(old.replicas) - count(old.updated_replicas);
            let new_old = count(s.replicas) - count(s.updated_replicas);
            let progressing = count(s.updated_replicas) > count(old.updated_replicas)
                || old_old > new_old
                || count(s.ready_replicas) > count(old.ready_replicas)
                || count(s.available_replicas) > count(old.available_replicas);
            if complete(d, &s) {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet \"{n}\" has successfully progressed."),
                    None => "Deployment has successfully progressed.".into(),
                };
                set_condition(
                    &mut s,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &msg,
                );
            } else if progressing {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet \"{n}\" is progressing."),
                    None => format!("Deployment \"{}\" is progressing.", d.name_any()),
                };
                // Always a fresh lastUpdateTime: progress pushes the deadline out.
                let keep = cur
                    .as_ref()
                    .filter(|c| c.status == "True")
                    .and_then(|c| c.last_transition_time.clone());
                let now = Time(jiff::Timestamp::now());
                let conds = s.conditions.get_or_insert_with(Vec::new);
                conds.retain(|c| c.type_ != "Progressing");
                conds.push(DeploymentCondition {
                    type_: "Progressing".into(),
                    status: "True".into(),
                    reason: Some("ReplicaSetUpdated".into()),
                    message: Some(msg),
                    last_update_time: Some(now.clone()),
                    last_transition_time: keep.or(Some(now)),
                });
            } else if timed_out(d, &s) {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet \"{n}\" has timed out progressing."),
                    None => format!("Deployment \"{}\" has timed out progressing.", d.name_any()),
                };
                set_condition(
                    &mut s,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &msg,
                );
            }
        }
    }
    let action = requeue_stuck(d, &s);
    if Some(&s) != d.status.as_ref() {
        update_status(ctx, v, s).await?;
    }
    Ok(action)
}

/// When a rollout is under way, look again at its deadline (upstream's
/// requeueStuckDeployment).
fn requeue_stuck(d: &Deployment, s: &DeploymentStatus) -> Action {
    let Some(secs) = deadline(d) else {
        return Action::await_change();
    };
    let Some(c) = condition(s, "Progressing") else {
        return Action::await_change();
    };
    if complete(d, s) || timed_out(d, s) || c.reason.as_deref() == Some("DeploymentPaused") {
        return Action::await_change();
    }
    let Some(t) = c.last_update_time.as_ref() else {
        return Action::await_change();
    };
    let at = t.0 + jiff::SignedDuration::from_secs(secs as i64);
    let left = at.duration_since(jiff::Timestamp::now());
    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
    Action::requeue(left.max(RECHECK))
}

async fn update_status(ctx: &Ctx, v: &View, s: DeploymentStatus) -> Result<Deployment, Error> {
    let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &v.ns);
    let mut d = (*v.d).clone();
    d.status = Some(s);
    Ok(dapi
        .replace_status(&d.name_any(), &PostParams::default(), &d)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::in_process;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::api::ListParams;

    const NS: &str = "default";

    async fn start() -> (Client, impl Drop) {
        let (api, stop) = crate::api::auth::token::memory_api().await;
        let client = in_process(api, crate::api::auth::CONTROLLER_MANAGER_USER);
        let mut informers = Informers::new(&client);
        let mut tasks = vec![run(client.clone(), &informers)];
        tasks.extend(informers.run());
        let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
        struct Guard<G>(Vec<tokio::task::JoinHandle<()>>, #[allow(dead_code)] G);
        impl<G> Drop for Guard<G> {
            fn drop(&mut self) {
                for h in &self.0 {
                    h.abort();
                }
            }
        }
        (client, Guard(handles, stop))
    }

    fn deployment(name: &str, n: i32, image: &str, strategy: DeploymentStrategy) -> Deployment {
        let labels: BTreeMap<String, String> = [("app".to_string(), name.to_string())].into();
        Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                annotations: Some(
                    [
                        (
                            "kubernetes.io/change-cause".to_string(),
                            format!("image {image}"),
                        ),
                        (LAST_APPLIED.to_string(), "{}".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(n),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..Default::default()
                },
                strategy: Some(strategy),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            image: Some(image.into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rolling_strategy(surge: i32, unavailable: i32) -> DeploymentStrategy {
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(surge)),
                max_unavailable: Some(IntOrString::Int(unavailable)),
            }),
        }
    }

    async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(t) = f().await {
                return t;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn rss(client: &Client, app: &str) -> Vec<ReplicaSet> {
        let api: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
        let mut l = api
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap()
            .items;
        l.sort_by_key(revision);
        l
    }

    /// Plays the ReplicaSet controller and kubelet: every pod wanted is there and available.
    async fn settle(client: &Client, rs: &ReplicaSet) {
        let api: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
        let n = replicas(rs);
        let patch = serde_json::json!({"status": {
            "replicas": n, "readyReplicas": n, "availableReplicas": n,
            "fullyLabeledReplicas": n, "observedGeneration": rs.metadata.generation,
        }});
        api.patch_status(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    }

    async fn get(client: &Client, name: &str) -> Deployment {
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.get(name).await.unwrap()
    }

    async fn set_image(client: &Client, name: &str, image: &str) {
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let patch = serde_json::json!({
            "metadata": {"annotations": {"kubernetes.io/change-cause": format!("image {image}")}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}},
        });
        api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();
    }

    fn image(rs: &ReplicaSet) -> String {
        rs_template(rs).spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    }

    fn progressing(d: &Deployment) -> Option<String> {
        condition(d.status.as_ref()?, "Progressing").and_then(|c| c.reason.clone())
    }

    /// Drives replica sets to availability until the deployment's rollout completes,
    /// checking the surge and availability bounds at every step.
    async fn walk(client: &Client, name: &str, n: i32, surge: i32, unavailable: i32) {
        eventually("rollout completes", || async {
            let all = rss(client, name).await;
            let total: i32 = all.iter().map(replicas).sum();
            assert!(total <= n + surge, "{total} replicas exceed {n}+{surge}");
            let avail: i32 = all.iter().map(|rs| available(rs).min(replicas(rs))).sum();
            assert!(avail >= n - unavailable, "only {avail} available");
            for rs in &all {
                if status_replicas(rs) != replicas(rs) || available(rs) != replicas(rs) {
                    settle(client, rs).await;
                }
            }
            let d = get(client, name).await;
            let s = d.status.clone().unwrap_or_default();
            (progressing(&d).as_deref() == Some("NewReplicaSetAvailable")
                && s.observed_generation == d.metadata.generation
                && s.updated_replicas == Some(n)
                && s.available_replicas == Some(n)
                && s.replicas == Some(n))
            .then_some(())
        })
        .await;
    }

    #[tokio::test]
    async fn a_deployment_gets_one_replica_set_with_its_hash_and_revision_1() {
        let (client, _g) = start().await;
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(
            &PostParams::default(),
            &deployment("web", 3, "nginx:1", rolling_strategy(1, 0)),
        )
        .await
        .unwrap();
        let all = eventually("a replica set", || async {
            let l = rss(&client, "web").await;
            (!l.is_empty()).then_some(l)
        })
        .await;
        assert_eq!(all.len(), 1);
        let rs = &all[0];
        let hash = rs.labels().get(POD_TEMPLATE_HASH).cloned().unwrap();
        assert_eq!(rs.name_any(), format!("web-{hash}"));
        assert!(hash
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let spec = rs.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.selector.match_labels.unwrap()[POD_TEMPLATE_HASH], hash);
        assert_eq!(
            spec.template.unwrap().metadata.unwrap().labels.unwrap()[POD_TEMPLATE_HASH],
            hash
        );
        let a = rs.annotations();
        assert_eq!(a[REVISION], "1");
        assert_eq!(a[DESIRED_REPLICAS], "3");
        assert_eq!(a[MAX_REPLICAS], "4");
        assert_eq!(a["kubernetes.io/change-cause"], "image nginx:1");
        assert!(!a.contains_key(LAST_APPLIED));
        assert_eq!(shared::controller_of(&rs.metadata).unwrap().name, "web");
        walk(&client, "web", 3, 1, 3).await;
        let d = get(&client, "web").await;
        assert_eq!(d.annotations()[REVISION], "1");
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), NS);
        let msg = format!("Scaled up replica set {} from 0 to 3", rs.name_any());
        let found = events.list(&ListParams::default()).await.unwrap().items;
        assert!(found
            .iter()
            .any(|e| e.reason.as_deref() == Some("ScalingReplicaSet")
                && e.message.as_deref() == Some(msg.as_str())
                && e.source.as_ref().and_then(|s| s.component.as_deref())
                    == Some("deployment-controller")));
        let s = d.status.unwrap();
        assert_eq!(s.observed_generation, d.metadata.generation);
        assert_eq!(
            condition(&s, "Available").unwrap().reason.as_deref(),
            Some("MinimumReplicasAvailable")
        );
        // Nothing more is created.
        assert_eq!(rss(&client, "web").await.len(), 1);
    }

    #[tokio::test]
    async fn an_image_change_rolls_within_surge_and_rollback_reuses_the_old_replica_set() {
        let (client, _g) = start().await;
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(
            &PostParams::default(),
            &deployment("web", 3, "nginx:1", rolling_strategy(1, 0)),
        )
        .await
        .unwrap();
        walk(&client, "web", 3, 1, 3).await;
        set_image(&client, "web", "nginx:2").await;
        let all = eventually("a second replica set", || async {
            let l = rss(&client, "web").await;
            (l.len() == 2).then_some(l)
        })
        .await;
        // The new one surges by one; the old keeps everything until the new is available.
        assert_eq!(replicas(&all[1]), 1);
        assert_eq!(replicas(&all[0]), 3);
        assert_eq!(all[1].annotations()[REVISION], "2");
        assert_eq!(
            all[1].annotations()["kubernetes.io/change-cause"],
            "image nginx:2"
        );
        walk(&client, "web", 3, 1, 0).await;
        let all = rss(&client, "web").await;
        assert_eq!(replicas(&all[0]), 0);
        assert_eq!(replicas(&all[1]), 3);
        assert_eq!(image(&all[1]), "nginx:2");
        // Scaling the old one down left its change-cause as it was.
        assert_eq!(
            all[0].annotations()["kubernetes.io/change-cause"],
            "image nginx:1"
        );
        let d = get(&client, "web").await;
        assert_eq!(d.annotations()[REVISION], "2");
        let msg = condition(d.status.as_ref().unwrap(), "Progressing")
            .unwrap()
            .message
            .clone();
        assert_eq!(
            msg.unwrap(),
            format!(
                "ReplicaSet \"{}\" has successfully progressed.",
                all[1].name_any()
            )
        );

        // Undo: the template of revision 1 again.
        set_image(&client, "web", "nginx:1").await;
        let first = all[0].name_any();
        let back = eventually("revision 1 becomes 3", || async {
            let l = rss(&client, "web").await;
            l.into_iter()
                .find(|rs| rs.name_any() == first && rs.annotations()[REVISION] == "3")
        })
        .await;
        assert_eq!(back.annotations()[REVISION_HISTORY], "1");
        walk(&client, "web", 3, 1, 0).await;
        let all = rss(&client, "web").await;
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].name_any(), first);
        assert_eq!(replicas(&all[1]), 3);
        assert_eq!(replicas(&all[0]), 0);
        assert_eq!(get(&client, "web").await.annotations()[REVISION], "3");
    }

    #[tokio::test]
    async fn a_rolling_update_with_unavailability_scales_old_down_first() {
        let (client, _g) = start().await;
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(
            &PostParams::default(),
            &deployment("api", 4, "app:1", rolling_strategy(0, 2)),
        )
        .await
        .unwrap();
        walk(&client, "api", 4, 0, 4).await;
        set_image(&client, "api", "app:2").await;
        walk(&client, "api", 4, 0, 2).await;
        let all = rss(&client, "api").await;
        assert_eq!((replicas(&all[0]), replicas(&all[1])), (0, 4));
    }

    #[tokio::test]
    async fn revision_history_limit_prunes_the_oldest_empty_replica_sets() {
        let (client, _g) = start().await;
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let mut d = deployment("web", 1, "v:1", rolling_strategy(1, 0));
        d.spec.as_mut().unwrap().revision_history_limit = Some(1);
        api.create(&PostParams::default(), &d).await.unwrap();
        walk(&client, "web", 1, 1, 1).await;
        for v in ["v:2", "v:3"] {
            set_image(&client, "web", v).await;
            walk(&client, "web", 1, 1, 0).await;
        }
        let all = eventually("one old replica set kept", || async {
            let l = rss(&client, "web").await;
            (l.len() == 2).then_some(l)
        })
        .await;
        assert_eq!(image(&all[0]), "v:2");
        assert_eq!(image(&all[1]), "v:3");
    }

    #[tokio::test]
    async fn recreate_scales_old_to_zero_and_waits_before_the_new() {
        let (client, _g) = start().await;
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let strategy = DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        };
        api.create(
            &PostParams::default(),
            &deployment("db", 2, "db:1", strategy),
        )
        .await
        .unwrap();
        walk(&client, "db", 2, 0, 2).await;
        set_image(&client, "db", "db:2").await;
        let old = eventually("old scaled to 0", || async {
            let l = rss(&client, "db").await;
            (replicas(&l[0]) == 0).then(|| l[0].clone())
        })
        .await;
        // Its pods are still there: no new replica set yet.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rss(&client, "db").await.len(), 1);
        settle(&client, &old).await;
        let new = eventually("new replica set at full size", || async {
            let l = rss(&client, "db").await;
            (l.len() == 2 && replicas(&l[1]) == 2).then(|| l[1].clone())
        })
        .await;
        assert_eq!(image(&new), "db:2");
        walk(&client, "db", 2, 0, 2).await;
    }

    #[tokio::test]
    async fn a_paused_deployment_scales_but_does_not_roll() {
        let (client, _g) = start().await;
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(
            &PostParams::default(),
            &deployment("web", 2, "nginx:1", rolling_strategy(1, 0)),
        )
        .await
        .unwrap();
        walk(&client, "web", 2, 1, 2).await;
        let pause = serde_json::json!({"spec": {"paused": true, "replicas": 4}});
        api.patch("web", &PatchParams::default(), &Patch::Merge(&pause))
            .await
            .unwrap();
        set_image(&client, "web", "nginx:2").await;
        eventually("scaled while paused", || async {
            let l = rss(&client, "web").await;
            let d = get(&client, "web").await;
            (l.len() == 1
                && replicas(&l[0]) == 4
                && progressing(&d).as_deref() == Some("DeploymentPaused"))
            .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rss(&client, "web").await.len(), 1);
        let resume = serde_json::json!({"spec": {"paused": false}});
        api.patch("web", &PatchParams::default(), &Patch::Merge(&resume))
            .await
            .unwrap();
        walk(&client, "web", 4, 1, 4).await;
        let all = rss(&client, "web").await;
        assert_eq!(all.len(), 2);
        assert_eq!(image(&all[1]), "nginx:2");
    }

    #[tokio::test]
    async fn scaling_mid_rollout_is_proportional() {
        let (client, _g) = start().await;
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(
            &PostParams::default(),
            &deployment("web", 10, "a:1", rolling_strategy(3, 2)),
        )
        .await
        .unwrap();
        walk(&client, "web", 10, 3, 10).await;
        set_image(&client, "web", "a:2").await;
        // New gets 3 (surge) and old drops to 8 (unavailable 2): 11 of max 13... then scale.
        eventually("rollout started", || async {
            let l = rss(&client, "web").await;
            (l.len() == 2 && replicas(&l[1]) > 0 && replicas(&l[0]) < 10).then_some(())
        })
        .await;
        let scale = serde_json::json!({"spec": {"replicas": 20}});
        api.patch("web", &PatchParams::default(), &Patch::Merge(&scale))
            .await
            .unwrap();
        // 12 more spread by max-replicas 13: old 8 -> 8+6 and the leftover 4, new 3 -> 5.
        eventually("proportional sizes", || async {
            let l = rss(&client, "web").await;
            (replicas(&l[0]) == 18 && replicas(&l[1]) == 5).then_some(())
        })
        .await;
        // Availability lags the new size, so only the surge bound is checked.
        walk(&client, "web", 20, 3, 20).await;
    }

    #[tokio::test]
    async fn matching_orphans_are_adopted_and_unmatched_ones_released() {
        let (client, _g) = start().await;
        let d = deployment("web", 2, "nginx:1", rolling_strategy(1, 0));
        let spec = d.spec.clone().unwrap();
        let orphan = ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-manual".into()),
                namespace: Some(NS.into()),
                labels: spec.template.metadata.as_ref().unwrap().labels.clone(),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(2),
                selector: spec.selector.clone(),
                template: Some(spec.template.clone()),
                ..Default::default()
            }),
            status: None,
        };
        let rsapi: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
        rsapi.create(&PostParams::default(), &orphan).await.unwrap();
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(&PostParams::default(), &d).await.unwrap();
        walk(&client, "web", 2, 1, 2).await;
        let all = rss(&client, "web").await;
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name_any(), "web-manual");
        assert_eq!(shared::controller_of(&all[0].metadata).unwrap().name, "web");
        assert_eq!(all[0].annotations()[REVISION], "1");

        let relabel = serde_json::json!({"metadata": {"labels": {"app": "gone"}}});
        rsapi
            .patch(
                "web-manual",
                &PatchParams::default(),
                &Patch::Merge(&relabel),
            )
            .await
            .unwrap();
        eventually("released, and a new one made", || async {
            let gone = rsapi.get("web-manual").await.unwrap();
            let l = rss(&client, "web").await;
            (shared::controller_of(&gone.metadata).is_none()
                && l.len() == 1
                && l[0].name_any() != "web-manual")
                .then_some(())
        })
        .await;
    }

    #[tokio::test]
    async fn a_rollout_without_progress_times_out() {
        let (client, _g) = start().await;
        let mut d = deployment("slow", 1, "nginx:1", rolling_strategy(1, 0));
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(1);
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(&PostParams::default(), &d).await.unwrap();
        let d = eventually("ProgressDeadlineExceeded", || async {
            let d = get(&client, "slow").await;
            (progressing(&d).as_deref() == Some("ProgressDeadlineExceeded")).then_some(d)
        })
        .await;
        let c = condition(d.status.as_ref().unwrap(), "Progressing").unwrap();
        assert_eq!(c.status, "False");
        let rs = &rss(&client, "slow").await[0];
        assert_eq!(
            c.message.as_deref(),
            Some(
                format!(
                    "ReplicaSet \"{}\" has timed out progressing.",
                    rs.name_any()
                )
                .as_str()
            )
        );
    }

    #[test]
    fn hashes_are_stable_and_change_with_the_collision_count() {
        let t = template_of(&deployment("x", 1, "i", rolling_strategy(1, 0)));
        assert_eq!(compute_hash(&t, None), compute_hash(&t, None));
        assert_ne!(compute_hash(&t, None), compute_hash(&t, Some(1)));
    }
}
