//! Services: defaults (ClusterIP, TCP, targetPort = port, single-stack IPv4), port
//! checks, and a ClusterIP that never changes once set.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Value};

use super::generic::{self, Def};
use super::meta::{duplicate, immutable, invalid, not_supported, required};
use super::{Cause, ResourceInfo};

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        subresources: &["status"],
    },
    decode: generic::decode::<Service>,
    default,
    validate,
    validate_update,
    status: true,
    generation: false,
    initial_status: |_| json!({ "loadBalancer": {} }),
    fields: &["spec.clusterIP", "spec.type"],
};

const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

fn default(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    if spec["type"].is_null() {
        spec["type"] = json!("ClusterIP");
    }
    if spec["sessionAffinity"].is_null() {
        spec["sessionAffinity"] = json!("None");
    }
    for p in spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if p["protocol"].is_null() {
            p["protocol"] = json!("TCP");
        }
        if p["targetPort"].is_null() {
            p["targetPort"] = p["port"].clone();
        }
    }
    if spec["type"] != "ExternalName" {
        if spec["ipFamilies"].is_null() {
            spec["ipFamilies"] = json!(["IPv4"]);
        }
        if spec["ipFamilyPolicy"].is_null() {
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
        if spec["internalTrafficPolicy"].is_null() {
            spec["internalTrafficPolicy"] = json!("Cluster");
        }
    }
    if matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
        && spec["externalTrafficPolicy"].is_null()
    {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
}

fn validate(obj: &Value) -> Vec<Cause> {
    let spec = &obj["spec"];
    let mut causes = Vec::new();
    let t = spec["type"].as_str().unwrap_or("ClusterIP");
    if !TYPES.contains(&t) {
        causes.push(not_supported("spec.type", t, TYPES));
    }
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    let headless = spec["clusterIP"] == "None";
    if ports.is_empty() && t != "ExternalName" && !headless {
        causes.push(required("spec.ports"));
    }
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        match p["port"].as_i64() {
            Some(n) if (1..=65535).contains(&n) => {}
            _ => causes.push(invalid(
                &format!("{f}.port"),
                &p["port"],
                "must be between 1 and 65535, inclusive",
            )),
        }
        let name = p["name"].as_str().unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(required(&format!("{f}.name")));
        }
        if !name.is_empty() && !names.insert(name.to_string()) {
            causes.push(duplicate(&format!("{f}.name"), &json!(name)));
        }
        if let Some(proto) = p["protocol"].as_str() {
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                causes.push(not_supported(
                    &format!("{f}.protocol"),
                    proto,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
        if t == "ClusterIP" && !p["nodePort"].is_null() && p["nodePort"] != 0 {
            causes.push(super::meta::forbidden(
                &format!("{f}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    if let Some(sa) = spec["sessionAffinity"].as_str() {
        if !["ClientIP", "None"].contains(&sa) {
            causes.push(not_supported(
                "spec.sessionAffinity",
                sa,
                &["ClientIP", "None"],
            ));
        }
    }
    if t == "ExternalName" && spec["externalName"].as_str().is_none_or(str::is_empty) {
        causes.push(required("spec.externalName"));
    }
    causes.extend(
        super::meta::check_labels("spec.selector", &spec["selector"])
            .into_iter()
            .filter(|c| c.reason != "FieldValueInvalid" || !c.message.contains("must be a string")),
    );
    causes
}

fn validate_update(obj: &Value, old: &Value) -> Vec<Cause> {
    let (new_ip, old_ip) = (&obj["spec"]["clusterIP"], &old["spec"]["clusterIP"]);
    let changing_type = obj["spec"]["type"] != old["spec"]["type"];
    if old_ip.as_str().is_some_and(|s| !s.is_empty()) && new_ip != old_ip && !changing_type {
        return vec![immutable("spec.clusterIPs[0]", new_ip)];
    }
    Vec::new()
}
