//! Services: defaults (ClusterIP, TCP, targetPort = port, single-stack IPv4), port
//! checks, and a ClusterIP that never changes once set.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Value};

use super::generic::{self, Def};
use super::meta::{self, duplicate, invalid, invalid_go, not_supported, required};
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
    prepare_status_update: generic::no_prepare,
    prepare_update,
    field_value: generic::field_value,
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
    for p in meta::items_mut(&mut *spec, "ports") {
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

/// A service's cluster addresses as a list: `clusterIPs`, or `[clusterIP]` from an older
/// client that sent only that.
fn cluster_ips(spec: &Value) -> Vec<String> {
    match spec["clusterIPs"].as_array() {
        Some(ips) => ips
            .iter()
            .map(|ip| ip.as_str().unwrap_or_default().to_string())
            .collect(),
        None => spec["clusterIP"]
            .as_str()
            .filter(|ip| !ip.is_empty())
            .map(|ip| vec![ip.to_string()])
            .unwrap_or_default(),
    }
}

/// A Go `%#v` of a `[]string`, as kube-apiserver prints the value of a clusterIPs cause.
fn go_string_slice(spec: &Value, ips: &[String]) -> String {
    if spec["clusterIPs"].is_null() && ips.is_empty() {
        return "[]string(nil)".into();
    }
    let quoted: Vec<String> = ips.iter().map(|ip| format!("{ip:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// What an update keeps that the client may leave out: the allocated cluster addresses
/// and node ports (as kube-apiserver's patchAllocatedValues), so that `kubectl apply` of
/// a manifest without them does not try to change them.
fn prepare_update(obj: &mut Value, old: &Value) {
    let (spec, old_spec) = (&mut obj["spec"], &old["spec"]);
    if !spec.is_object() || spec["type"] == "ExternalName" || old_spec["type"] == "ExternalName" {
        return;
    }
    if spec["clusterIP"].as_str().is_none_or(str::is_empty) && !old_spec["clusterIP"].is_null() {
        spec["clusterIP"] = old_spec["clusterIP"].clone();
    }
    if spec["clusterIPs"].as_array().is_none_or(Vec::is_empty) && !old_spec["clusterIPs"].is_null()
    {
        spec["clusterIPs"] = old_spec["clusterIPs"].clone();
    }
    let node_ports = |t: &Value| matches!(t.as_str(), Some("NodePort" | "LoadBalancer"));
    if node_ports(&spec["type"]) && node_ports(&old_spec["type"]) {
        let old_ports = old_spec["ports"].as_array().cloned().unwrap_or_default();
        for p in meta::items_mut(&mut *spec, "ports") {
            if p["nodePort"].as_i64().unwrap_or(0) != 0 {
                continue;
            }
            let same = old_ports.iter().find(|o| {
                o["port"] == p["port"]
                    && o["protocol"].as_str().unwrap_or("TCP")
                        == p["protocol"].as_str().unwrap_or("TCP")
            });
            if let Some(n) = same.map(|o| &o["nodePort"]).filter(|n| !n.is_null()) {
                p["nodePort"] = n.clone();
            }
        }
    }
}

/// validateUpgradeDowngradeClusterIPs: the primary address never changes, and a
/// secondary one may only be added or released, unless the service is or becomes an
/// ExternalName one, or stays headless.
fn validate_update(obj: &Value, old: &Value) -> Vec<Cause> {
    let (spec, old_spec) = (&obj["spec"], &old["spec"]);
    if spec["type"] == "ExternalName" || old_spec["type"] == "ExternalName" {
        return Vec::new();
    }
    let (new_ips, old_ips) = (cluster_ips(spec), cluster_ips(old_spec));
    let headless = |ips: &[String]| ips.len() == 1 && ips[0] == "None";
    if headless(&new_ips) && headless(&old_ips) {
        return Vec::new();
    }
    let shown = go_string_slice(spec, &new_ips);
    let changed = |f: &str| invalid_go(f, &shown, "may not change once set");
    let mut causes = Vec::new();
    if old_ips.len() == new_ips.len() {
        for (i, ip) in old_ips.iter().enumerate() {
            if *ip != new_ips[i] {
                causes.push(changed(&format!("spec.clusterIPs[{i}]")));
            }
        }
    } else if new_ips.is_empty() {
        causes.push(invalid_go(
            "spec.clusterIPs[0]",
            &shown,
            "primary clusterIP can not be unset",
        ));
    } else if !old_ips.is_empty() && new_ips[0] != old_ips[0] {
        causes.push(changed("spec.clusterIPs[0]"));
    }
    causes
}
