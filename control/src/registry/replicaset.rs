//! ReplicaSets, and the checks workloads share: a selector that matches the template.

use k8s_openapi::api::apps::v1::ReplicaSet;
use serde_json::{json, Value};

use super::generic::{self, Def};
use super::meta::{immutable, invalid, required};
use super::pod::{default_pod_spec, validate_pod_spec};
use super::{Cause, ResourceInfo};
use crate::api::selector::LabelSelector;

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        namespaced: true,
        short_names: &["rs"],
        categories: &["all"],
        subresources: &["status", "scale"],
    },
    decode: generic::decode::<ReplicaSet>,
    default: default_workload,
    validate: validate_workload,
    validate_update: validate_selector_unchanged,
    status: true,
    generation: true,
    initial_status: |_| json!({ "replicas": 0 }),
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: |o, p| generic::field_value_or(o, p, "0"),
    fields: &["status.replicas"],
};

pub fn default_workload(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if spec.is_object() && spec["replicas"].is_null() {
        spec["replicas"] = json!(1);
    }
    default_pod_spec(&mut spec["template"]["spec"]);
}

/// replicas, selector, and a template whose labels the selector matches.
pub fn validate_workload(obj: &Value) -> Vec<Cause> {
    let spec = &obj["spec"];
    let mut causes = Vec::new();
    if let Some(r) = spec["replicas"].as_i64() {
        if r < 0 {
            causes.push(invalid(
                "spec.replicas",
                &json!(r),
                "must be greater than or equal to 0",
            ));
        }
    }
    let sel = &spec["selector"];
    let empty = sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
        && sel["matchExpressions"]
            .as_array()
            .is_none_or(|m| m.is_empty());
    if sel.is_null() {
        causes.push(required("spec.selector"));
    } else if empty {
        causes.push(invalid(
            "spec.selector",
            sel,
            "empty selector is invalid for deployment",
        ));
    } else {
        match LabelSelector::from_json(sel) {
            Err(e) => causes.push(invalid("spec.selector", sel, &e.to_string())),
            Ok(s) => {
                let labels = crate::api::object::labels(&spec["template"]);
                if !s.matches(&labels) {
                    let shown: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
                    causes.push(super::meta::invalid_go(
                        "spec.template.metadata.labels",
                        &format!("map[string]string{{{}}}", shown.join(", ")),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        }
    }
    if spec["template"].is_null() {
        causes.push(required("spec.template"));
    } else {
        causes.extend(super::meta::check_labels(
            "spec.template.metadata.labels",
            &spec["template"]["metadata"]["labels"],
        ));
        causes.extend(validate_pod_spec(
            &spec["template"]["spec"],
            "spec.template.spec",
        ));
        if let Some(p) = spec["template"]["spec"]["restartPolicy"].as_str() {
            if p != "Always" {
                causes.push(super::meta::not_supported(
                    "spec.template.spec.restartPolicy",
                    p,
                    &["Always"],
                ));
            }
        }
    }
    causes
}

/// apps/v1 selectors may not change.
pub fn validate_selector_unchanged(obj: &Value, old: &Value) -> Vec<Cause> {
    if obj["spec"]["selector"] != old["spec"]["selector"] {
        return vec![immutable("spec.selector", &obj["spec"]["selector"])];
    }
    Vec::new()
}
