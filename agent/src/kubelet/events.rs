//! core/v1 Events about pods, as kubelet records them (source `kubelet` on its host,
//! the container named in `involvedObject.fieldPath`), so that `kubectl describe pod`
//! and `kubectl get events` show Pulling, Pulled, Created, Started, Killing, BackOff,
//! Unhealthy and the failures. A repeat of the same event bumps its count instead of
//! adding another object.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tracing::debug;

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// (namespace, uid, fieldPath, reason, message) of an event.
type EventKey = (String, String, String, String, String);

pub struct Recorder {
    client: Client,
    node: String,
    /// The event object and its count, per key.
    seen: Mutex<HashMap<EventKey, (String, i32)>>,
}

/// The fieldPath of a container, as kubelet writes it.
pub fn container_path(pod: &Pod, name: &str) -> String {
    let spec = pod.spec.as_ref();
    if spec
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == name))
    {
        format!("spec.initContainers{{{name}}}")
    } else {
        format!("spec.containers{{{name}}}")
    }
}

impl Recorder {
    pub fn new(client: Client, node: &str) -> Recorder {
        Recorder {
            client,
            node: node.to_owned(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event; failures are logged, never returned: events are best effort,
    /// as upstream.
    pub async fn record(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        type_: &str,
        reason: &str,
        message: &str,
    ) {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = (
            ns.clone(),
            uid.clone(),
            field_path.clone().unwrap_or_default(),
            reason.to_owned(),
            message.to_owned(),
        );
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let now = jiff::Timestamp::now();
        let repeat = self.seen.lock().ok().and_then(|m| m.get(&key).cloned());
        if let Some((event_name, count)) = repeat {
            let patch = json!({ "count": count + 1, "lastTimestamp": Time(now) });
            if api
                .patch(&event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                if let Ok(mut m) = self.seen.lock() {
                    m.insert(key, (event_name, count + 1));
                }
                return;
            }
        }
        let event_name = format!("{name}.{:x}", now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(ns),
                uid: Some(uid),
                resource_version: pod.metadata.resource_version.clone(),
                field_path,
            },
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(type_.to_owned()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            count: Some(1),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                if let Ok(mut m) = self.seen.lock() {
                    // Bounded: old keys go when the map grows large.
                    if m.len() > 4096 {
                        m.clear();
                    }
                    m.insert(key, (event_name, 1));
                }
            }
            Err(e) => debug!(error = %e, reason, "event not recorded"),
        }
    }

    /// Forgets a pod's events (it is gone).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.seen.lock() {
            m.retain(|k, _| k.1 != uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_name_the_container_list() {
        let pod: Pod = serde_json::from_value(json!({
            "spec": {
                "initContainers": [{ "name": "setup" }],
                "containers": [{ "name": "app" }],
            }
        }))
        .unwrap();
        assert_eq!(container_path(&pod, "setup"), "spec.initContainers{setup}");
        assert_eq!(container_path(&pod, "app"), "spec.containers{app}");
    }
}
