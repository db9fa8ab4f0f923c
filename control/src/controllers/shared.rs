//! What the kube-rs controllers share: informers (one watch per resource, its cache read
//! by every controller and its changes fanned out to each), an event recorder, the pod
//! predicates upstream's controllers agree on, and expectations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, MicroTime, ObjectMeta, OwnerReference, Time,
};
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use super::manager::Task;

/// How many changes a slow subscriber may lag behind before the informer waits for it.
const BUFFER: usize = 4096;

/// A subscriber's stream of changed objects (see [`Informer::subscribe`]).
pub type Changes<K> = tokio_stream::wrappers::ReceiverStream<Arc<K>>;

/// One watch of a resource across all namespaces, as client-go's shared informer: a
/// cache ([`Store`]) and a stream of changed objects for each subscriber. Subscribe
/// before [`Informer::run`], which consumes the watch.
///
/// Unlike kube-runtime's shared reflector, deletions reach the subscribers too (a
/// ReplicaSet must hear that one of its pods went), including those missed while the
/// watch was down and found on the relist.
pub struct Informer<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    writer: Option<reflector::store::Writer<K>>,
    subscribers: Mutex<Vec<tokio::sync::mpsc::Sender<Arc<K>>>>,
    api: Api<K>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    pub fn new(client: &Client) -> Self {
        let writer = reflector::store::Writer::default();
        Informer {
            store: writer.as_reader(),
            writer: Some(writer),
            subscribers: Mutex::new(vec![]),
            api: Api::all(client.clone()),
        }
    }

    /// The cache; empty until the first list arrives ([`Store::wait_until_ready`]).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A stream of every object the watch sees added, modified, relisted or deleted (a
    /// deleted object arrives as it was last seen; the cache no longer holds it).
    pub fn subscribe(&self) -> Changes<K> {
        assert!(self.writer.is_some(), "subscribe before the informer runs");
        let (tx, rx) = tokio::sync::mpsc::channel(BUFFER);
        self.subscribers.lock().unwrap().push(tx);
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// The loop that keeps the cache and feeds the subscribers; runs until dropped.
    pub fn run(&mut self) -> Task {
        let mut writer = self.writer.take().expect("an informer runs once");
        let subscribers = std::mem::take(&mut *self.subscribers.lock().unwrap());
        let stream = watcher(self.api.clone(), watcher::Config::default()).default_backoff();
        let kind = K::kind(&()).to_string();
        let store = self.store.clone();
        Box::pin(async move {
            let mut stream = std::pin::pin!(stream);
            // Objects cached before a relist; those the relist does not return were
            // deleted while the watch was down.
            let mut before: HashMap<reflector::ObjectRef<K>, Arc<K>> = HashMap::new();
            while let Some(ev) = stream.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        debug!(kind, error = %e, "informer watch");
                        continue;
                    }
                };
                let mut send: Vec<Arc<K>> = vec![];
                match &ev {
                    watcher::Event::Init => {
                        before = store
                            .state()
                            .into_iter()
                            .map(|o| (reflector::ObjectRef::from_obj(o.as_ref()), o))
                            .collect();
                    }
                    watcher::Event::InitApply(o) => {
                        before.remove(&reflector::ObjectRef::from_obj(o));
                    }
                    watcher::Event::InitDone => {}
                    watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                        send.push(Arc::new(o.clone()))
                    }
                }
                writer.apply_watcher_event(&ev);
                if let watcher::Event::InitDone = ev {
                    send.extend(before.drain().map(|(_, o)| o));
                    send.extend(store.state());
                }
                for obj in send {
                    for tx in &subscribers {
                        // A subscriber that has gone (its controller stopped) is skipped.
                        let _ = tx.send(obj.clone()).await;
                    }
                }
            }
        })
    }
}

/// The informers the controllers and the scheduler read from, each watched once.
pub struct Informers {
    pub pods: Informer<Pod>,
    pub nodes: Informer<k8s_openapi::api::core::v1::Node>,
    pub replicasets: Informer<k8s_openapi::api::apps::v1::ReplicaSet>,
    pub deployments: Informer<k8s_openapi::api::apps::v1::Deployment>,
    pub services: Informer<k8s_openapi::api::core::v1::Service>,
    pub daemonsets: Informer<k8s_openapi::api::apps::v1::DaemonSet>,
}

impl Informers {
    pub fn new(client: &Client) -> Self {
        Informers {
            pods: Informer::new(client),
            nodes: Informer::new(client),
            replicasets: Informer::new(client),
            deployments: Informer::new(client),
            services: Informer::new(client),
            daemonsets: Informer::new(client),
        }
    }

    /// The watch loops; call after every controller has subscribed.
    pub fn run(&mut self) -> Vec<Task> {
        vec![
            self.pods.run(),
            self.nodes.run(),
            self.replicasets.run(),
            self.deployments.run(),
            self.services.run(),
            self.daemonsets.run(),
        ]
    }
}

/// The selector as kube-rs evaluates it; `None` when it cannot be parsed (an unknown
/// operator), which selects nothing, as upstream's controllers treat it.
pub fn selector(sel: &LabelSelector) -> Option<Selector> {
    Selector::try_from(sel.clone()).ok()
}

/// Whether `sel` selects an object with these labels. An empty selector selects
/// nothing here: a controller must never claim every pod of a namespace.
pub fn selects(sel: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    if empty {
        return false;
    }
    let none = BTreeMap::new();
    selector(sel).is_some_and(|s| s.matches(labels.unwrap_or(&none)))
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// An owner reference that makes `owner` the controller of an object, blocking the
/// owner's foreground deletion until the object is gone (as upstream's controllers set it).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod that counts toward its controller's replicas: not finished and not being
/// deleted.
pub fn pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// The pod's condition of this type, if set.
pub fn pod_condition<'a>(
    pod: &'a Pod,
    kind: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod_condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

/// Whether the pod has been ready for at least `min_ready_seconds` at `now`.
pub fn pod_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    let Some(c) = pod_condition(pod, "Ready").filter(|c| c.status == "True") else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    match &c.last_transition_time {
        Some(Time(t)) => *t + jiff::SignedDuration::from_secs(i64::from(min_ready_seconds)) <= now,
        None => false,
    }
}

/// `namespace/name` of an object, the key of the controllers' queues.
pub fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Writes core/v1 Events as client-go's recorder does: a repeat of the same event for
/// the same object bumps the count and lastTimestamp of the one already written rather
/// than writing another, so `kubectl describe` shows `(x5 over 2m)`.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: Option<String>,
    seen: Arc<Mutex<HashMap<String, Written>>>,
}

/// An event already written: its name, firstTimestamp and count.
type Written = (String, String, i32);

/// Repeats older than this start a new Event, as upstream's correlator window.
const SIMILAR_FOR: usize = 4096;

impl Recorder {
    pub fn new(client: Client, component: &str) -> Self {
        Recorder {
            client,
            component: component.to_string(),
            host: None,
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// An event about `obj` of type `Normal` or `Warning`; failures are logged, never
    /// returned: an event is never worth failing a reconcile for.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        kind: &str,
        reason: &str,
        message: &str,
    ) {
        self.publish_ref(&obj.object_ref(&()), kind, reason, message)
            .await
    }

    pub async fn publish_ref(
        &self,
        regarding: &ObjectReference,
        kind: &str,
        reason: &str,
        message: &str,
    ) {
        let ns = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let object = regarding.name.clone().unwrap_or_default();
        let ident = format!(
            "{}/{}/{}/{}/{}/{}",
            ns,
            regarding.kind.as_deref().unwrap_or(""),
            object,
            regarding.uid.as_deref().unwrap_or(""),
            reason,
            message
        );
        let now = jiff::Timestamp::now();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let previous = self.seen.lock().unwrap().get(&ident).cloned();
        if let Some((name, first, count)) = previous {
            let patch = serde_json::json!({
                "count": count + 1,
                "lastTimestamp": Time(now),
                "firstTimestamp": first,
            });
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    if let Some(e) = self.seen.lock().unwrap().get_mut(&ident) {
                        e.2 = count + 1;
                    }
                    return;
                }
                Err(e) => debug!(error = %e, "event patch; writing a new one"),
            }
        }
        let name = format!("{object}.{:x}", now.as_nanosecond());
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: regarding.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(kind.to_string()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            ..Default::default()
        };
        match events.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                let mut seen = self.seen.lock().unwrap();
                if seen.len() >= SIMILAR_FOR {
                    seen.clear();
                }
                seen.insert(ident, (name, now.to_string(), 1));
            }
            Err(e) => warn!(reason, error = %e, "writing an event"),
        }
    }
}

/// How long a controller trusts its own writes to show up in the informer's cache
/// before giving up on them, as upstream's ExpectationsTimeout.
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

/// What a controller has created or deleted and not yet seen in its cache. Until the
/// cache shows them, the controller must not act again on the same owner, or a burst of
/// watch events would create too many (upstream's ControllerExpectations, tracked by
/// name rather than by count so that a missed event cannot leave it stuck).
#[derive(Default)]
pub struct Expectations<N: Eq + Hash + Clone = String> {
    pending: Mutex<HashMap<String, Pending<N>>>,
}

struct Pending<N> {
    adds: HashSet<N>,
    dels: HashSet<N>,
    since: Instant,
}

impl<N: Eq + Hash + Clone> Expectations<N> {
    /// Records creations (by name) and deletions (by uid) made for `owner`.
    pub fn expect(&self, owner: &str, adds: &[N], dels: &[N]) {
        let mut p = self.pending.lock().unwrap();
        let e = p.entry(owner.to_string()).or_insert_with(|| Pending {
            adds: HashSet::new(),
            dels: HashSet::new(),
            since: Instant::now(),
        });
        e.adds.extend(adds.iter().cloned());
        e.dels.extend(dels.iter().cloned());
        e.since = Instant::now();
    }

    /// A creation that failed: it will never be seen.
    pub fn forget(&self, owner: &str, name: &N) {
        if let Some(e) = self.pending.lock().unwrap().get_mut(owner) {
            e.adds.remove(name);
            e.dels.remove(name);
        }
    }

    /// Whether everything expected for `owner` has been seen: `present` says whether
    /// the cache holds an object. Seen entries are dropped; a timed-out owner is
    /// satisfied.
    pub fn satisfied(&self, owner: &str, present: impl Fn(&N) -> bool) -> bool {
        self.satisfied_by(owner, &present, &present)
    }

    /// As [`Expectations::satisfied`], with creations seen once `added` holds and
    /// deletions once `remains` no longer does (a pod being deleted gracefully stays in
    /// the cache but no longer counts).
    pub fn satisfied_by(
        &self,
        owner: &str,
        added: impl Fn(&N) -> bool,
        remains: impl Fn(&N) -> bool,
    ) -> bool {
        let mut p = self.pending.lock().unwrap();
        let Some(e) = p.get_mut(owner) else {
            return true;
        };
        e.adds.retain(|n| !added(n));
        e.dels.retain(|n| remains(n));
        if (e.adds.is_empty() && e.dels.is_empty()) || e.since.elapsed() > EXPECTATIONS_TIMEOUT {
            p.remove(owner);
            return true;
        }
        false
    }

    /// The owner is gone: nothing more to wait for.
    pub fn delete(&self, owner: &str) {
        self.pending.lock().unwrap().remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_labels_and_expressions_and_empty_selects_nothing() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["front".into(), "edge".into()]),
            }]),
        };
        assert!(selects(
            &sel,
            Some(&labels(&[("app", "web"), ("tier", "edge")]))
        ));
        assert!(!selects(&sel, Some(&labels(&[("app", "web")]))));
        assert!(!selects(&sel, None));
        assert!(!selects(
            &LabelSelector::default(),
            Some(&labels(&[("app", "web")]))
        ));
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "x".into(),
                operator: "Sometimes".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(!selects(&bad, Some(&labels(&[("x", "1")]))));
    }

    #[test]
    fn expectations_hold_until_the_cache_shows_every_write() {
        let e: Expectations = Expectations::default();
        assert!(e.satisfied("ns/rs", |_| false));
        e.expect("ns/rs", &["a".into(), "b".into()], &["old".into()]);
        assert!(!e.satisfied("ns/rs", |n| n == "a" || n == "old"));
        assert!(!e.satisfied("ns/rs", |n| n == "a" || n == "b" || n == "old"));
        assert!(e.satisfied("ns/rs", |n| n == "a" || n == "b"));
        e.expect("ns/rs", &["c".into()], &[]);
        e.forget("ns/rs", &"c".to_string());
        assert!(e.satisfied("ns/rs", |_| false));
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now = jiff::Timestamp::now();
        let mut pod = Pod::default();
        assert!(!pod_available(&pod, 0, now));
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(Time(now - jiff::SignedDuration::from_secs(5))),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(pod_ready(&pod));
        assert!(pod_available(&pod, 0, now));
        assert!(pod_available(&pod, 5, now));
        assert!(!pod_available(&pod, 10, now));
    }
}
