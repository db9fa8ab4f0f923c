//! Secrets: type Opaque by default, stringData folded into data (base64) as
//! kube-apiserver does, keys checked, and `immutable` honoured.

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{json, Value};

use super::configmap;
use super::generic::{self, Def};
use super::meta::{check_config_keys, immutable, invalid, required};
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
    validate_update,
    status: false,
    generation: false,
    initial_status: generic::empty_status,
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: generic::field_value,
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

/// The keys each built-in secret type must carry, as ValidateSecret checks them.
fn required_keys(obj: &Value) -> Vec<Cause> {
    let data = &obj["data"];
    let has = |k: &str| data.get(k).is_some_and(|v| !v.is_null());
    let mut causes = Vec::new();
    match obj["type"].as_str().unwrap_or("Opaque") {
        "kubernetes.io/tls" => {
            for k in ["tls.crt", "tls.key"] {
                if !has(k) {
                    causes.push(required(&format!("data[{k}]")));
                }
            }
        }
        "kubernetes.io/dockerconfigjson" if !has(".dockerconfigjson") => {
            causes.push(required("data[.dockerconfigjson]"));
        }
        "kubernetes.io/dockercfg" if !has(".dockercfg") => {
            causes.push(required("data[.dockercfg]"));
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            causes.push(required("data[username]"));
            causes.push(required("data[password]"));
        }
        "kubernetes.io/ssh-auth" if data["ssh-privatekey"].as_str().is_none_or(str::is_empty) => {
            causes.push(required("data[ssh-privatekey]"));
        }
        "kubernetes.io/service-account-token"
            if obj["metadata"]["annotations"]["kubernetes.io/service-account.name"]
                .as_str()
                .is_none_or(str::is_empty) =>
        {
            causes.push(required(
                "metadata.annotations[kubernetes.io/service-account.name]",
            ));
        }
        _ => {}
    }
    causes
}

/// A secret's type never changes; its data freezes with `immutable`, as a ConfigMap's.
fn validate_update(obj: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if obj["type"] != old["type"] {
        causes.push(immutable("type", &obj["type"]));
    }
    causes.extend(configmap::validate_update(obj, old));
    causes
}

fn validate(obj: &Value) -> Vec<Cause> {
    let mut causes = check_config_keys("data", &obj["data"]);
    causes.extend(required_keys(obj));
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
