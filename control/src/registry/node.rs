//! Nodes (cluster-scoped, written by their agent).

use k8s_openapi::api::core::v1::Node;
use serde_json::json;

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
    default: generic::no_defaults,
    validate: generic::no_checks,
    validate_update: generic::no_update_checks,
    status: true,
    generation: false,
    // Nodes register with their status.
    initial_status: |n| n.get("status").cloned().unwrap_or(json!({})),
    fields: &["spec.unschedulable"],
};
