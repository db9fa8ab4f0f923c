//! discovery.k8s.io/v1 EndpointSlices.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use super::generic::{self, Def};
use super::meta::{self, not_supported, required};
use super::{Cause, ResourceInfo};

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    decode: generic::decode::<EndpointSlice>,
    default,
    validate,
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
    for p in meta::items_mut(&mut *obj, "ports") {
        if p["protocol"].is_null() {
            p["protocol"] = json!("TCP");
        }
    }
}

fn validate(obj: &Value) -> Vec<Cause> {
    match obj["addressType"].as_str() {
        None => vec![required("addressType")],
        Some(t) if !["IPv4", "IPv6", "FQDN"].contains(&t) => {
            vec![not_supported("addressType", t, &["FQDN", "IPv4", "IPv6"])]
        }
        Some(_) => Vec::new(),
    }
}
