//! Secrets: type Opaque by default, stringData folded into data (base64) as
//! kube-apiserver does, keys checked, and `immutable` honoured.

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{json, Value};

use super::configmap;
use super::generic::{self, Def};
use super::meta::{check_config_keys, invalid};
use super::{Cause, ResourceInfo};

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    decode: generic::decode::<Secret>,
    default,
    validate,
    validate_update: configmap::validate_update,
    status: false,
    generation: false,
    initial_status: generic::empty_status,
    fields: &["type"],
};

fn default(obj: &mut Value) {
    if obj["type"].is_null() {
        obj["type"] = json!("Opaque");
    }
    if let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
        for (k, v) in sd.as_object().into_iter().flatten() {
            let text = v.as_str().unwrap_or_default();
            obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
}

fn validate(obj: &Value) -> Vec<Cause> {
    let mut causes = check_config_keys("data", &[&obj["data"]]);
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        let ok = v
            .as_str()
            .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
        if !ok {
            causes.push(invalid(
                &format!("data[{k}]"),
                v,
                "must be base64-encoded bytes",
            ));
        }
    }
    let size: usize = obj["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, v)| v.as_str().map(|s| s.len() * 3 / 4).unwrap_or(0))
        .sum();
    if size > 1024 * 1024 {
        causes.push(Cause {
            field: "data".into(),
            reason: "FieldValueTooLong",
            message: "Too long: may not be more than 1048576 bytes".into(),
        });
    }
    causes
}
