//! ConfigMaps: keys checked, and nothing changes once `immutable` is set.

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::Value;

use super::generic::{self, Def};
use super::meta::{check_config_keys, forbidden, invalid};
use super::{Cause, ResourceInfo};

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
    },
    decode: generic::decode::<ConfigMap>,
    default: generic::no_defaults,
    validate,
    validate_update,
    status: false,
    generation: false,
    initial_status: generic::empty_status,
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: generic::field_value,
    fields: &[],
};

/// ValidateConfigMap's key checks: each key at `data[key]` or `binaryData[key]`, and no
/// key in both maps.
fn validate(obj: &Value) -> Vec<Cause> {
    let mut causes = check_config_keys("data", &obj["data"]);
    for k in obj["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        if obj["binaryData"].get(k).is_some() {
            causes.push(invalid(
                &format!("data[{k}]"),
                &Value::from(k.as_str()),
                "duplicate of key present in binaryData",
            ));
        }
    }
    causes.extend(check_config_keys("binaryData", &obj["binaryData"]));
    causes
}

/// Shared with Secrets: data and the flag itself are frozen once `immutable` is true.
pub fn validate_update(obj: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if old["immutable"] == true {
        if obj["immutable"] != true {
            causes.push(forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
        for f in ["data", "binaryData", "stringData"] {
            if obj[f] != old[f] && !(f == "stringData" && obj[f].is_null()) {
                causes.push(forbidden(f, "field is immutable when `immutable` is set"));
            }
        }
    }
    causes
}
