//! Namespaces: the `kubernetes` finalizer that keeps one until its contents are gone,
//! the Active/Terminating phase, and the name label kube-apiserver adds.

use k8s_openapi::api::core::v1::Namespace;
use serde_json::{json, Value};

use super::generic::{self, Def};
use super::ResourceInfo;

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        subresources: &["status", "finalize"],
    },
    decode: generic::decode::<Namespace>,
    default,
    validate: generic::no_checks,
    validate_update: generic::no_update_checks,
    status: true,
    generation: false,
    initial_status: |_| json!({ "phase": "Active" }),
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: generic::field_value,
    fields: &["status.phase"],
};

fn default(obj: &mut Value) {
    if let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) {
        obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    }
    if obj["spec"]["finalizers"].is_null() && obj["metadata"]["deletionTimestamp"].is_null() {
        obj["spec"]["finalizers"] = json!(["kubernetes"]);
    }
}
