//! Endpoints.

use k8s_openapi::api::core::v1::Endpoints;
use serde_json::{json, Value};

use super::generic::{self, Def};
use super::{meta, ResourceInfo};

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        subresources: &[],
    },
    decode: generic::decode::<Endpoints>,
    default,
    validate: generic::no_checks,
    validate_update: generic::no_update_checks,
    status: false,
    generation: false,
    initial_status: generic::empty_status,
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: generic::field_value,
    fields: &[],
};

fn default(obj: &mut Value) {
    for s in meta::items_mut(&mut *obj, "subsets") {
        for p in meta::items_mut(&mut *s, "ports") {
            if p["protocol"].is_null() {
                p["protocol"] = json!("TCP");
            }
        }
    }
}
