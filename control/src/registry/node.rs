//! Nodes (cluster-scoped, written by their agent).

use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

use super::generic::{self, Def};
use super::ResourceInfo;

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        subresources: &["status"],
    },
    decode: generic::decode::<Node>,
    default,
    validate: generic::no_checks,
    validate_update: generic::no_update_checks,
    status: true,
    generation: false,
    // Nodes register with their status.
    initial_status: |n| n.get("status").cloned().unwrap_or(json!({})),
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: |o, p| generic::field_value_or(o, p, "false"),
    fields: &["spec.unschedulable"],
};

/// SetDefaults_NodeStatus: allocatable is the capacity until the node says otherwise.
fn default(obj: &mut Value) {
    let Some(status) = obj.get_mut("status").filter(|s| s.is_object()) else {
        return;
    };
    if status["allocatable"].is_null() && status["capacity"].is_object() {
        status["allocatable"] = status["capacity"].clone();
    }
}
