//! The scale and eviction subresources, and authorization of resource requests.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use serde_json::{json, Value};

use super::codec::{self, json_response, Body};
use super::object;
use super::patch;
use super::request::{Query, ResourceRequest, Verb};
use super::selector::LabelSelector;
use super::status::ApiError;
use super::storage::{self, DeleteOptions, WriteOptions};
use super::{auth, Api};
use crate::registry::Strategy;

/// The selector of a workload's spec as the Scale status shows it: the string form.
fn selector_string(sel: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e["operator"].as_str().unwrap_or_default() {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.sort();
    parts.join(",")
}

/// autoscaling/v1 Scale of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let m = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": { "replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1) },
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_string(&obj["spec"]["selector"]),
        },
    })
}

impl Api {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn scale<B>(
        self: &Arc<Self>,
        s: &dyn Strategy,
        ns: Option<&str>,
        name: &str,
        verb: Verb,
        headers: &HeaderMap,
        body: B,
        q: &Query,
        user: &auth::User,
    ) -> Result<Response<Body>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if verb == Verb::Get {
            let obj = self.get_object(s, ns, name).await?;
            return Ok(json_response(StatusCode::OK, &scale_of(&obj)));
        }
        let t = storage::target(s.info(), name);
        let body = codec::read_body(body).await?;
        let kind = if verb == Verb::Patch {
            Some(codec::patch_kind(headers)?)
        } else {
            None
        };
        let desired = if kind.is_none() {
            Some(codec::decode_object(headers, &body)?)
        } else {
            None
        };
        let opts = super::handlers::write_options(q, headers, user)?;
        let updated = self
            .guaranteed_update(s, ns, name, None, &opts, |old| {
                let cur = scale_of(old);
                let want = match (&desired, kind) {
                    (Some(d), _) => d.clone(),
                    (None, Some(codec::PatchKind::Json)) => patch::json_patch(&cur, &body)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?,
                    (None, _) => patch::merge_patch(&cur, &body)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?,
                };
                if let Some(rv) = object::resource_version(&want) {
                    if Some(rv) != object::resource_version(old) {
                        return Err(ApiError::modified(&t));
                    }
                }
                let replicas = want["spec"]["replicas"].as_i64().ok_or_else(|| {
                    ApiError::invalid(
                        &t,
                        &[crate::registry::Cause {
                            field: "spec.replicas".into(),
                            reason: "FieldValueRequired",
                            message: "Required value".into(),
                        }],
                    )
                })?;
                if replicas < 0 {
                    return Err(ApiError::invalid(
                        &t,
                        &[crate::registry::Cause {
                            field: "spec.replicas".into(),
                            reason: "FieldValueInvalid",
                            message: format!(
                                "Invalid value: {replicas}: must be greater than or equal to 0"
                            ),
                        }],
                    ));
                }
                let mut new = old.clone();
                new["spec"]["replicas"] = json!(replicas);
                Ok(new)
            })
            .await?;
        Ok(json_response(StatusCode::OK, &scale_of(&updated)))
    }

    /// POST pods/<name>/eviction: a delete that PodDisruptionBudgets may refuse.
    pub(super) async fn evict(
        &self,
        s: &dyn Strategy,
        ns: Option<&str>,
        name: &str,
        eviction: &Value,
        _headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        let pod = self.get_object(s, ns, name).await?;
        let labels = object::labels(&pod);
        let finished = matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        if let (Some(pdbs), false) = (self.strategy("policy", "poddisruptionbudgets"), finished) {
            let opts = super::handlers::ListOptions::default();
            let (budgets, _, _, _) = self.list_objects(pdbs, ns, &opts).await?;
            let matching: Vec<&Value> = budgets
                .iter()
                .filter(|b| {
                    LabelSelector::from_json(&b["spec"]["selector"])
                        .map(|sel| !sel.is_empty() && sel.matches(&labels))
                        .unwrap_or(false)
                })
                .collect();
            if matching.len() > 1 {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
            if let Some(b) = matching.first() {
                let bname = object::name(b).unwrap_or_default().to_string();
                let opts = WriteOptions {
                    manager: "kube-apiserver".into(),
                    ..Default::default()
                };
                let pod_name = name.to_string();
                self.guaranteed_update(pdbs, ns, &bname, Some("status"), &opts, |cur| {
                    let observed = cur["status"]["observedGeneration"].as_i64().unwrap_or(0);
                    let generation = cur["metadata"]["generation"].as_i64().unwrap_or(0);
                    let allowed = cur["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
                    if observed < generation || allowed <= 0 {
                        return Err(ApiError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "TooManyRequests",
                            format!("Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {bname} needs {} healthy pods and has {} currently",
                                cur["status"]["desiredHealthy"].as_i64().unwrap_or(0),
                                cur["status"]["currentHealthy"].as_i64().unwrap_or(0)),
                        ));
                    }
                    let mut new = cur.clone();
                    new["status"]["disruptionsAllowed"] = json!(allowed - 1);
                    new["status"]["disruptedPods"][&pod_name] = json!(object::timestamp(chrono::Utc::now()));
                    Ok(new)
                })
                .await?;
            }
        }
        let opts = DeleteOptions {
            grace_period: eviction["deleteOptions"]["gracePeriodSeconds"].as_i64(),
            uid: eviction["deleteOptions"]["preconditions"]["uid"]
                .as_str()
                .map(str::to_string),
            ..Default::default()
        };
        self.delete_object(s, ns, name, &opts).await.map(|_| ())
    }

    /// Whether the user may do what the request asks (the object-level checks of Node
    /// restriction happen in the writes).
    /// The node authorizer's graph, in small: a node reads a Secret or ConfigMap only
    /// when a pod bound to it uses it, and lists or watches one only by name (kubelet
    /// watches each one with `fieldSelector=metadata.name=<name>`).
    pub(super) async fn node_may_read(
        &self,
        user: &auth::User,
        r: &ResourceRequest,
        q: &Query,
    ) -> Result<(), ApiError> {
        let Some(node) = user.node() else {
            return Ok(());
        };
        if !r.group.is_empty() || !matches!(r.resource.as_str(), "secrets" | "configmaps") {
            return Ok(());
        }
        let by_selector = q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .filter(|n| !n.contains(',') && !n.is_empty());
        let name = r.name.as_deref().or(by_selector);
        let deny = |why: &str| {
            ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"\" in the namespace \"{}\": {why}",
                r.resource,
                name.unwrap_or_default(),
                user.name,
                r.verb.as_str(),
                r.resource,
                r.namespace.as_deref().unwrap_or_default(),
            ))
        };
        let (Some(name), Some(ns)) = (name, r.namespace.as_deref()) else {
            return Err(deny("a node reads these one by one, by name"));
        };
        let pods = self
            .strategy("", "pods")
            .ok_or_else(|| ApiError::internal("pods are not served"))?;
        let opts = super::handlers::ListOptions {
            fields: Some(
                super::selector::FieldSelector::parse(&format!("spec.nodeName={node}"))
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            ),
            ..Default::default()
        };
        let (bound, _, _, _) = self.list_objects(pods, Some(ns), &opts).await?;
        let secret = r.resource == "secrets";
        if bound.iter().any(|p| uses(p, secret, name)) {
            Ok(())
        } else {
            Err(deny(&format!(
                "no relationship found between node '{node}' and this object"
            )))
        }
    }

    pub(super) fn authorize(&self, user: &auth::User, r: &ResourceRequest) -> Result<(), ApiError> {
        let attrs = auth::RequestAttributes {
            verb: r.verb.as_str().to_string(),
            namespace: r.namespace.clone().unwrap_or_default(),
            resource: r.resource.clone(),
            subresource: r.subresource.clone().unwrap_or_default(),
            name: r.name.clone().unwrap_or_default(),
            api_group: r.group.clone(),
        };
        match auth::authorize(user, &attrs) {
            auth::Decision::Allow => Ok(()),
            auth::Decision::Deny(reason) => Err(ApiError::forbidden(reason)),
        }
    }
}

/// Whether a pod uses the Secret (or ConfigMap) `name`: in a volume (projected ones
/// too), in a container's env or envFrom, or as an image pull secret.
pub(super) fn uses(pod: &Value, secret: bool, name: &str) -> bool {
    let spec = &pod["spec"];
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let (vol_key, vol_name, src_key, env_key, from_key) = if secret {
        (
            "secret",
            "secretName",
            "secret",
            "secretKeyRef",
            "secretRef",
        )
    } else {
        (
            "configMap",
            "name",
            "configMap",
            "configMapKeyRef",
            "configMapRef",
        )
    };
    let volumes = list(&spec["volumes"]).into_iter().any(|v| {
        v[vol_key][vol_name] == name
            || list(&v["projected"]["sources"])
                .iter()
                .any(|s| s[src_key]["name"] == name)
    });
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| list(&spec[*k]))
        .any(|c| {
            list(&c["env"])
                .iter()
                .any(|e| e["valueFrom"][env_key]["name"] == name)
                || list(&c["envFrom"])
                    .iter()
                    .any(|e| e[from_key]["name"] == name)
        });
    let pull = secret
        && list(&spec["imagePullSecrets"])
            .iter()
            .any(|s| s["name"] == name);
    volumes || containers || pull
}

#[cfg(test)]
mod node_read_tests {
    use super::*;

    #[test]
    fn a_pod_uses_what_its_volumes_env_and_pull_secrets_name() {
        let pod = json!({ "spec": {
            "volumes": [
                { "name": "a", "secret": { "secretName": "vol-secret" } },
                { "name": "b", "configMap": { "name": "vol-cm" } },
                { "name": "c", "projected": { "sources": [
                    { "secret": { "name": "proj-secret" } }, { "configMap": { "name": "proj-cm" } } ] } },
            ],
            "initContainers": [{ "name": "i", "envFrom": [{ "secretRef": { "name": "init-secret" } }] }],
            "containers": [{ "name": "c", "env": [
                { "name": "X", "valueFrom": { "configMapKeyRef": { "name": "env-cm", "key": "k" } } } ] }],
            "imagePullSecrets": [{ "name": "pull" }],
        }});
        for s in ["vol-secret", "proj-secret", "init-secret", "pull"] {
            assert!(uses(&pod, true, s), "{s}");
        }
        for c in ["vol-cm", "proj-cm", "env-cm"] {
            assert!(uses(&pod, false, c), "{c}");
        }
        assert!(!uses(&pod, true, "vol-cm"));
        assert!(!uses(&pod, false, "vol-secret"));
        assert!(!uses(&pod, true, "other"));
    }
}
