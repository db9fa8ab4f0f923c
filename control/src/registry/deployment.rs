//! Deployments: their rollout defaults (RollingUpdate 25 %/25 %, ten revisions, a
//! 600 s progress deadline) and the checks of workloads.

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{json, Value};

use super::generic::{self, Def};
use super::meta::not_supported;
use super::replicaset::{default_workload, validate_selector_unchanged, validate_workload};
use super::{Cause, ResourceInfo};

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &["status", "scale"],
    },
    decode: generic::decode::<Deployment>,
    default,
    validate,
    validate_update: validate_selector_unchanged,
    status: true,
    generation: true,
    initial_status: |_| json!({}),
    prepare_status_update: keep_labels,
    prepare_update: generic::no_prepare,
    field_value: generic::field_value,
    fields: &[],
};

fn default(obj: &mut Value) {
    default_workload(obj);
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    if spec["strategy"]["type"].is_null() {
        spec["strategy"]["type"] = json!("RollingUpdate");
    }
    if spec["strategy"]["type"] == "RollingUpdate" {
        let ru = &mut spec["strategy"]["rollingUpdate"];
        if ru["maxUnavailable"].is_null() {
            ru["maxUnavailable"] = json!("25%");
        }
        if ru["maxSurge"].is_null() {
            ru["maxSurge"] = json!("25%");
        }
    }
    if spec["revisionHistoryLimit"].is_null() {
        spec["revisionHistoryLimit"] = json!(10);
    }
    if spec["progressDeadlineSeconds"].is_null() {
        spec["progressDeadlineSeconds"] = json!(600);
    }
}

/// deploymentStatusStrategy: a status update changes neither the spec nor the labels.
fn keep_labels(obj: &mut Value, old: &Value) {
    match old["metadata"].get("labels") {
        Some(l) => obj["metadata"]["labels"] = l.clone(),
        None => {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("labels");
            }
        }
    }
}

fn validate(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_workload(obj);
    let t = obj["spec"]["strategy"]["type"]
        .as_str()
        .unwrap_or("RollingUpdate");
    if !["RollingUpdate", "Recreate"].contains(&t) {
        causes.push(not_supported(
            "spec.strategy.type",
            t,
            &["Recreate", "RollingUpdate"],
        ));
    }
    if t == "Recreate" && !obj["spec"]["strategy"]["rollingUpdate"].is_null() {
        causes.push(super::meta::forbidden(
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy `type` is 'Recreate'",
        ));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Strategy;

    #[test]
    fn defaults_and_a_selector_that_must_match() {
        let s = generic::Static(&DEF);
        let mut d = json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web", "namespace": "d" },
            "spec": { "selector": { "matchLabels": { "app": "web" } },
                      "template": { "metadata": { "labels": { "app": "web" } }, "spec": { "containers": [{ "name": "c", "image": "nginx:1" }] } } } });
        s.default(&mut d);
        s.prepare_for_create(&mut d);
        assert_eq!(
            d["spec"]["strategy"],
            json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": "25%", "maxSurge": "25%" } })
        );
        assert_eq!(
            (
                d["spec"]["replicas"].as_i64(),
                d["metadata"]["generation"].as_i64()
            ),
            (Some(1), Some(1))
        );
        assert!(s.validate(&d).is_empty(), "{:?}", s.validate(&d));
        let old = d.clone();
        d["spec"]["replicas"] = json!(3);
        s.prepare_for_update(&mut d, &old);
        assert_eq!(d["metadata"]["generation"], 2);
        d["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        let c = s.validate(&d);
        assert_eq!(c[0].field, "spec.template.metadata.labels");
        assert!(c[0]
            .message
            .contains("`selector` does not match template `labels`"));
    }
}
