//! The garbage collector (kube-controller-manager's garbagecollector): a metadata-only
//! graph of every listable, watchable, deletable resource, kept by one metadata watcher
//! per resource. Objects whose owners are all gone are deleted in the background, dangling
//! owner references next to live ones are removed, owners deleted with the `orphan`
//! finalizer release their dependents, and owners deleted with `foregroundDeletion` lose
//! that finalizer once their blocking dependents are gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::PartialObjectMeta;
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::manager::Task;

/// How often the whole graph is looked at without a change.
const SWEEP: Duration = Duration::from_secs(10);
/// How often discovery is asked again for resources served later (CRDs).
const REDISCOVER: Duration = Duration::from_secs(60);

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// A resource the collector watches: where it lives and whether it is namespaced.
#[derive(Clone, Debug)]
struct Resource {
    ar: ApiResource,
    namespaced: bool,
}

/// One object of the graph, metadata only.
#[derive(Clone, Debug)]
struct Node {
    resource: Arc<Resource>,
    namespace: Option<String>,
    name: String,
    uid: String,
    resource_version: Option<String>,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// (group, kind) -> resource, to look owners up by their reference.
    kinds: HashMap<(String, String), Arc<Resource>>,
}

type Shared = Arc<Mutex<Graph>>;

/// Runs the garbage collector until dropped.
pub fn run(client: Client) -> Task {
    Box::pin(async move {
        let graph: Shared = Arc::default();
        let changed = Arc::new(Notify::new());
        let mut watched: HashSet<String> = HashSet::new();
        let mut watchers = Vec::new();
        let mut next_discovery = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_discovery {
                match discover(&client).await {
                    Ok(resources) => {
                        for r in resources {
                            let key = format!("{}/{}", r.ar.group, r.ar.plural);
                            graph
                                .lock()
                                .unwrap()
                                .kinds
                                .insert((r.ar.group.clone(), r.ar.kind.clone()), r.clone());
                            if watched.insert(key) {
                                watchers.push(tokio::spawn(watch(
                                    client.clone(),
                                    r,
                                    graph.clone(),
                                    changed.clone(),
                                )));
                            }
                        }
                        next_discovery = tokio::time::Instant::now() + REDISCOVER;
                    }
                    Err(e) => {
                        warn!(error = %e, "garbage collector discovery");
                        next_discovery = tokio::time::Instant::now() + Duration::from_secs(5);
                    }
                }
            }
            let _ = tokio::time::timeout(SWEEP, changed.notified()).await;
            // Let a burst of changes settle before a pass.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let snapshot = {
                let g = graph.lock().unwrap();
                (
                    g.nodes.values().cloned().collect::<Vec<_>>(),
                    g.kinds.clone(),
                )
            };
            if collect(&client, &snapshot.0, &snapshot.1).await {
                // Something was changed: look again soon even without an event.
                changed.notify_one();
            }
        }
    })
}

/// The resources to collect: preferred versions that can be listed, watched and deleted.
async fn discover(client: &Client) -> Result<Vec<Arc<Resource>>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            let events =
                ar.plural == "events" && (ar.group.is_empty() || ar.group == "events.k8s.io");
            if events
                || ![verbs::LIST, verbs::WATCH, verbs::DELETE]
                    .iter()
                    .all(|v| caps.supports_operation(v))
            {
                continue;
            }
            let namespaced = caps.scope == Scope::Namespaced;
            out.push(Arc::new(Resource { ar, namespaced }));
        }
    }
    Ok(out)
}

fn node(resource: &Arc<Resource>, meta: &ObjectMeta) -> Option<Node> {
    Some(Node {
        resource: resource.clone(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        resource_version: meta.resource_version.clone(),
        owners: meta.owner_references.clone().unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
    })
}

/// Keeps the graph's part for one resource, waking the collector on changes.
async fn watch(client: Client, resource: Arc<Resource>, graph: Shared, changed: Arc<Notify>) {
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &resource.ar);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let same = |n: &Node| Arc::ptr_eq(&n.resource, &resource);
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(ev) = stream.next().await {
        let ev: Event<PartialObjectMeta<DynamicObject>> = match ev {
            Ok(ev) => ev,
            Err(e) => {
                debug!(resource = %resource.ar.plural, error = %e, "garbage collector watch");
                continue;
            }
        };
        let mut g = graph.lock().unwrap();
        match ev {
            Event::Init => seen.clear(),
            Event::InitApply(o) => {
                if let Some(n) = node(&resource, &o.metadata) {
                    seen.insert(n.uid.clone());
                    g.nodes.insert(n.uid.clone(), n);
                }
            }
            Event::InitDone => {
                // Objects deleted while the watch was down.
                g.nodes.retain(|uid, n| !same(n) || seen.contains(uid));
                seen.clear();
            }
            Event::Apply(o) => {
                if let Some(n) = node(&resource, &o.metadata) {
                    g.nodes.insert(n.uid.clone(), n);
                }
            }
            Event::Delete(o) => {
                if let Some(uid) = &o.metadata.uid {
                    g.nodes.remove(uid);
                }
            }
        }
        drop(g);
        changed.notify_one();
    }
}

fn api_of(client: &Client, r: &Resource, namespace: Option<&str>) -> Api<DynamicObject> {
    match (r.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &r.ar),
        _ => Api::all_with(client.clone(), &r.ar),
    }
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Whether an owner exists: true, false, or None when that cannot be told (unknown kind,
/// API error). The graph answers first; an owner missing from it is asked for, as the
/// graph may lag behind.
async fn owner_exists(
    client: &Client,
    nodes: &HashMap<&str, &Node>,
    kinds: &HashMap<(String, String), Arc<Resource>>,
    dependent: &Node,
    owner: &OwnerReference,
    cache: &mut HashMap<String, Option<bool>>,
) -> Option<bool> {
    // A namespaced owner counts only in its dependent's namespace.
    if let Some(o) = nodes.get(owner.uid.as_str()) {
        if !o.resource.namespaced || o.namespace == dependent.namespace {
            return Some(true);
        }
    }
    let cache_key = format!(
        "{}/{}",
        dependent.namespace.as_deref().unwrap_or(""),
        owner.uid
    );
    if let Some(known) = cache.get(&cache_key) {
        return *known;
    }
    let key = (group_of(&owner.api_version).to_string(), owner.kind.clone());
    let found = match kinds.get(&key) {
        None => None,
        // A cluster-scoped dependent cannot have a namespaced owner: as upstream, absent.
        Some(r) if r.namespaced && dependent.namespace.is_none() => Some(false),
        Some(r) => {
            // A namespaced owner is in its dependent's namespace.
            let api = api_of(client, r, dependent.namespace.as_deref());
            match api.get_metadata_opt(&owner.name).await {
                Ok(Some(o)) => Some(o.metadata.uid.as_deref() == Some(owner.uid.as_str())),
                Ok(None) => Some(false),
                Err(e) => {
                    warn!(owner = %owner.name, kind = %owner.kind, error = %e, "garbage collector owner lookup");
                    None
                }
            }
        }
    };
    cache.insert(cache_key, found);
    found
}

async fn delete(client: &Client, n: &Node, policy: PropagationPolicy) -> bool {
    let api = api_of(client, &n.resource, n.namespace.as_deref());
    let dp = DeleteParams {
        propagation_policy: Some(policy.clone()),
        preconditions: Some(Preconditions {
            uid: Some(n.uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&n.name, &dp).await {
        Ok(_) => {
            info!(kind = %n.resource.ar.kind, namespace = ?n.namespace, name = %n.name, ?policy, "garbage collector deleted");
            true
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => false,
        Err(e) => {
            warn!(kind = %n.resource.ar.kind, name = %n.name, error = %e, "garbage collector delete");
            false
        }
    }
}

async fn patch_meta(client: &Client, n: &Node, meta: serde_json::Value) -> bool {
    let api = api_of(client, &n.resource, n.namespace.as_deref());
    // The uid guards against a same-named successor, the resourceVersion against a list
    // (finalizers, ownerReferences) changed since the graph saw it; a conflict is retried
    // on the next pass, when the watch has brought the newer object.
    let mut meta = meta;
    meta["uid"] = json!(n.uid);
    if let Some(rv) = &n.resource_version {
        meta["resourceVersion"] = json!(rv);
    }
    match api
        .patch_metadata(
            &n.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": meta})),
        )
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => false,
        Err(e) => {
            warn!(kind = %n.resource.ar.kind, name = %n.name, error = %e, "garbage collector patch");
            false
        }
    }
}

async fn set_owners(client: &Client, n: &Node, keep: Vec<OwnerReference>) -> bool {
    info!(kind = %n.resource.ar.kind, namespace = ?n.namespace, name = %n.name, "garbage collector removing owner references");
    patch_meta(client, n, json!({"ownerReferences": keep})).await
}

async fn drop_finalizer(client: &Client, n: &Node, finalizer: &str) -> bool {
    let rest: Vec<&String> = n.finalizers.iter().filter(|f| *f != finalizer).collect();
    info!(kind = %n.resource.ar.kind, namespace = ?n.namespace, name = %n.name, finalizer, "garbage collector removing finalizer");
    patch_meta(client, n, json!({"finalizers": rest})).await
}

/// One pass over a snapshot of the graph. Returns whether anything was changed.
async fn collect(
    client: &Client,
    snapshot: &[Node],
    kinds: &HashMap<(String, String), Arc<Resource>>,
) -> bool {
    let nodes: HashMap<&str, &Node> = snapshot.iter().map(|n| (n.uid.as_str(), n)).collect();
    let mut dependents: HashMap<&str, Vec<&Node>> = HashMap::new();
    for n in snapshot {
        for o in &n.owners {
            dependents.entry(o.uid.as_str()).or_default().push(n);
        }
    }
    let mut acted = false;

    // Owners being deleted that wait on the collector.
    for owner in snapshot.iter().filter(|n| n.deleting) {
        let deps = dependents
            .get(owner.uid.as_str())
            .cloned()
            .unwrap_or_default();
        if owner.finalizers.iter().any(|f| f == ORPHAN) {
            for d in &deps {
                let keep = d
                    .owners
                    .iter()
                    .filter(|o| o.uid != owner.uid)
                    .cloned()
                    .collect();
                acted |= set_owners(client, d, keep).await;
            }
            acted |= drop_finalizer(client, owner, ORPHAN).await;
        } else if owner.finalizers.iter().any(|f| f == FOREGROUND) {
            let mut blocking = false;
            for d in &deps {
                let blocks = d
                    .owners
                    .iter()
                    .any(|o| o.uid == owner.uid && o.block_owner_deletion == Some(true));
                blocking |= blocks;
                if !d.deleting {
                    let policy = if dependents.contains_key(d.uid.as_str()) {
                        PropagationPolicy::Foreground
                    } else {
                        PropagationPolicy::Background
                    };
                    acted |= delete(client, d, policy).await;
                }
            }
            if !blocking {
                acted |= drop_finalizer(client, owner, FOREGROUND).await;
            }
        }
    }

    // Dependents whose owners are gone.
    let mut cache = HashMap::new();
    for n in snapshot
        .iter()
        .filter(|n| !n.owners.is_empty() && !n.deleting)
    {
        let mut dangling = Vec::new();
        // An owner that cannot be told about counts as live: nothing is deleted for it.
        for o in &n.owners {
            let exists = owner_exists(client, &nodes, kinds, n, o, &mut cache).await;
            if exists == Some(false) {
                dangling.push(o.uid.clone());
            }
        }
        if dangling.is_empty() {
            continue;
        }
        if dangling.len() == n.owners.len() {
            // As upstream: the dependent's own finalizers say how its dependents go.
            let policy = if n.finalizers.iter().any(|f| f == ORPHAN) {
                PropagationPolicy::Orphan
            } else if n.finalizers.iter().any(|f| f == FOREGROUND) {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            };
            acted |= delete(client, n, policy).await;
        } else {
            let keep = n
                .owners
                .iter()
                .filter(|o| !dangling.contains(&o.uid))
                .cloned()
                .collect();
            acted |= set_owners(client, n, keep).await;
        }
    }
    acted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::token::memory_api;
    use crate::api::auth::CONTROLLER_MANAGER_USER;
    use crate::controllers::client::in_process;
    use crate::controllers::endpoints::tests::eventually;
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::api::PostParams;

    fn owner_ref(kind: &str, api_version: &str, name: &str, uid: &str) -> serde_json::Value {
        json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
               "controller": true, "blockOwnerDeletion": true})
    }

    /// A ReplicaSet owning two pods, with the collector running.
    async fn setup() -> (Client, Api<ReplicaSet>, Api<Pod>, impl Drop) {
        let (api, stop) = memory_api().await;
        let client = in_process(api, CONTROLLER_MANAGER_USER);
        let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "rs"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "a"}},
                     "template": {"metadata": {"labels": {"app": "a"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .unwrap();
        let rs = rss.create(&PostParams::default(), &rs).await.unwrap();
        let uid = rs.metadata.uid.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        for name in ["p1", "p2"] {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"app": "a"},
                             "ownerReferences": [owner_ref("ReplicaSet", "apps/v1", "rs", &uid)]},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}
            }))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
        }
        let h = tokio::spawn(run(client.clone()));
        (client, rss, pods, Abort(h, stop))
    }

    struct Abort<T>(tokio::task::JoinHandle<()>, T);
    impl<T> Drop for Abort<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    async fn gone(pods: &Api<Pod>, names: &[&str]) {
        for n in names {
            eventually(|| async { pods.get_opt(n).await.unwrap().is_none().then_some(()) }).await;
        }
    }

    fn policy(p: PropagationPolicy) -> DeleteParams {
        DeleteParams {
            propagation_policy: Some(p),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn background_deletion_removes_dependents() {
        let (_c, rss, pods, _g) = setup().await;
        rss.delete("rs", &policy(PropagationPolicy::Background))
            .await
            .unwrap();
        gone(&pods, &["p1", "p2"]).await;
    }

    #[tokio::test]
    async fn orphan_deletion_keeps_dependents_without_the_reference() {
        let (_c, rss, pods, _g) = setup().await;
        rss.delete("rs", &policy(PropagationPolicy::Orphan))
            .await
            .unwrap();
        eventually(|| async { rss.get_opt("rs").await.unwrap().is_none().then_some(()) }).await;
        for n in ["p1", "p2"] {
            let p = pods.get(n).await.unwrap();
            assert!(
                p.metadata.owner_references.unwrap_or_default().is_empty(),
                "{n}"
            );
        }
        // The pods stay: a later pass does not take them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(pods.get_opt("p1").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn foreground_deletion_removes_dependents_then_the_owner() {
        let (_c, rss, pods, _g) = setup().await;
        rss.delete("rs", &policy(PropagationPolicy::Foreground))
            .await
            .unwrap();
        // The owner waits, marked deleting, until its pods are gone.
        let rs = rss.get_opt("rs").await.unwrap();
        if let Some(rs) = rs {
            assert!(rs.metadata.deletion_timestamp.is_some());
        }
        gone(&pods, &["p1", "p2"]).await;
        eventually(|| async { rss.get_opt("rs").await.unwrap().is_none().then_some(()) }).await;
    }

    #[tokio::test]
    async fn foreground_owner_waits_for_a_blocking_dependent() {
        let (_c, rss, pods, _g) = setup().await;
        // p1 cannot go until its own finalizer is removed.
        pods.patch(
            "p1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
        )
        .await
        .unwrap();
        rss.delete("rs", &policy(PropagationPolicy::Foreground))
            .await
            .unwrap();
        gone(&pods, &["p2"]).await;
        eventually(|| async {
            let p = pods.get("p1").await.unwrap();
            p.metadata.deletion_timestamp.map(|_| ())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rs = rss.get("rs").await.unwrap();
        assert!(rs.metadata.deletion_timestamp.is_some());
        assert_eq!(rs.metadata.finalizers, Some(vec![FOREGROUND.to_string()]));
        pods.patch(
            "p1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
        gone(&pods, &["p1"]).await;
        eventually(|| async { rss.get_opt("rs").await.unwrap().is_none().then_some(()) }).await;
    }

    #[tokio::test]
    async fn dangling_reference_is_removed_next_to_a_live_one() {
        let (client, rss, _pods, _g) = setup().await;
        let live = rss.get("rs").await.unwrap().metadata.uid.unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "cm", "ownerReferences": [
                owner_ref("ReplicaSet", "apps/v1", "rs", &live),
                owner_ref("ReplicaSet", "apps/v1", "dead", "0000-dead"),
            ]}
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        eventually(|| async {
            let refs = cms.get("cm").await.unwrap().metadata.owner_references?;
            (refs.len() == 1).then_some(refs)
        })
        .await;
        let refs = cms
            .get("cm")
            .await
            .unwrap()
            .metadata
            .owner_references
            .unwrap();
        assert_eq!(refs[0].uid, live);
    }

    #[tokio::test]
    async fn object_without_live_owners_is_deleted() {
        let (client, _rss, _pods, _g) = setup().await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "cm", "ownerReferences": [
                owner_ref("ReplicaSet", "apps/v1", "rs", "0000-other-uid"),
            ]}
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        eventually(|| async { cms.get_opt("cm").await.unwrap().is_none().then_some(()) }).await;
    }
}
