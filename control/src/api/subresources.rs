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
