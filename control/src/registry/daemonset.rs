//! DaemonSets: apps/v1 with upstream's defaults (RollingUpdate with maxUnavailable 1 and
//! maxSurge 0, revisionHistoryLimit 10, the template defaulted as a pod) and the
//! workload checks ReplicaSets use.

use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::{json, Value};

use super::generic::{self, Def};
use super::pod::default_pod_spec;
use super::replicaset::{validate_selector_unchanged, validate_workload};
use super::ResourceInfo;

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        plural: "daemonsets",
        singular: "daemonset",
        namespaced: true,
        short_names: &["ds"],
        categories: &["all"],
        subresources: &["status"],
    },
    decode: generic::decode::<DaemonSet>,
    default: default_daemonset,
    validate: validate_workload,
    validate_update: validate_selector_unchanged,
    status: true,
    generation: true,
    initial_status: |_| {
        json!({
            "currentNumberScheduled": 0,
            "numberMisscheduled": 0,
            "desiredNumberScheduled": 0,
            "numberReady": 0,
        })
    },
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: generic::field_value,
    fields: &[],
};

fn default_daemonset(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    if spec["updateStrategy"]["type"].is_null() {
        spec["updateStrategy"]["type"] = json!("RollingUpdate");
    }
    if spec["updateStrategy"]["type"] == "RollingUpdate" {
        let ru = &mut spec["updateStrategy"]["rollingUpdate"];
        if ru["maxUnavailable"].is_null() {
            ru["maxUnavailable"] = json!(1);
        }
        if ru["maxSurge"].is_null() {
            ru["maxSurge"] = json!(0);
        }
    }
    if spec["revisionHistoryLimit"].is_null() {
        spec["revisionHistoryLimit"] = json!(10);
    }
    default_pod_spec(&mut spec["template"]["spec"]);
}
