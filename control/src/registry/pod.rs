//! Pods: the defaults of SetDefaults_PodSpec and the admission plugins every cluster
//! runs (ServiceAccount, DefaultTolerationSeconds, Priority), spec validation shared
//! with the templates of workloads, and the narrow set of fields an update may change.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::generic::{self, Def};
use super::meta::{self, duplicate, invalid, not_supported, required};
use super::{Cause, ResourceInfo};

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        subresources: &[
            "status",
            "log",
            "exec",
            "attach",
            "portforward",
            "binding",
            "eviction",
        ],
    },
    decode: generic::decode::<Pod>,
    default: default_pod,
    validate,
    validate_update,
    status: true,
    generation: false,
    initial_status,
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: |o, p| match p {
        "spec.hostNetwork" => generic::field_value_or(o, p, "false"),
        _ => generic::field_value(o, p),
    },
    fields: &[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ],
};

fn set_default(obj: &mut Value, key: &str, v: Value) {
    if let Some(o) = obj.as_object_mut() {
        if o.get(key).is_none_or(Value::is_null) {
            o.insert(key.into(), v);
        }
    }
}

/// The pull policy kubelet gets when none is given: Always for `:latest` or no tag.
fn pull_policy(image: &str) -> &'static str {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':') {
        _ if image.contains('@') => "IfNotPresent",
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_container(c: &mut Value) {
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    let image = c["image"].as_str().unwrap_or("").to_string();
    set_default(c, "imagePullPolicy", json!(pull_policy(&image)));
    set_default(c, "resources", json!({}));
    for p in meta::items_mut(&mut *c, "ports") {
        set_default(p, "protocol", json!("TCP"));
    }
    for e in meta::items_mut(&mut *c, "env") {
        if e["valueFrom"]["fieldRef"].is_object() {
            set_default(&mut e["valueFrom"]["fieldRef"], "apiVersion", json!("v1"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if c[probe].is_object() {
            let p = &mut c[probe];
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
            if p["httpGet"].is_object() {
                set_default(&mut p["httpGet"], "path", json!("/"));
                set_default(&mut p["httpGet"], "scheme", json!("HTTP"));
            }
        }
    }
}

/// SetDefaults_PodSpec and its containers and volumes: for pods and templates alike.
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        for c in meta::items_mut(&mut *spec, list) {
            default_container(c);
        }
    }
    for v in meta::items_mut(&mut *spec, "volumes") {
        for kind in ["secret", "configMap", "projected", "downwardAPI"] {
            if v[kind].is_object() {
                set_default(&mut v[kind], "defaultMode", json!(420));
            }
        }
        if v["hostPath"].is_object() {
            set_default(&mut v["hostPath"], "type", json!(""));
        }
    }
}

/// SetDefaults_Pod's part for pods alone (templates do not get it): requests default to
/// limits, and service links are on.
fn default_pod_only(spec: &mut Value) {
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        for c in meta::items_mut(&mut *spec, list) {
            let Some(limits) = c["resources"]["limits"].as_object().cloned() else {
                continue;
            };
            let res = &mut c["resources"];
            if !res["requests"].is_object() {
                res["requests"] = json!({});
            }
            for (k, v) in limits {
                set_default(&mut res["requests"], &k, v);
            }
        }
    }
}

fn default_pod(obj: &mut Value) {
    let spec = &mut obj["spec"];
    default_pod_spec(spec);
    if spec.is_object() {
        default_pod_only(spec);
    }
    // Admission: ServiceAccount, Priority, DefaultTolerationSeconds.
    if spec.is_object() {
        let sa = spec["serviceAccountName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
        spec["serviceAccountName"] = json!(sa);
        spec["serviceAccount"] = json!(sa);
        set_default(spec, "priority", json!(0));
        set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
        let mut tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let has = tolerations.iter().any(|t| {
                (t["key"] == key || t["key"].is_null() && t["operator"] == "Exists")
                    && (t["effect"] == "NoExecute" || t["effect"].is_null())
            });
            if !has {
                tolerations.push(json!({ "key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 }));
            }
        }
        spec["tolerations"] = json!(tolerations);
    }
}

/// Guaranteed, Burstable or BestEffort, as the QoS class of the pod's containers'
/// requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten())
    {
        let req = &c["resources"]["requests"];
        let lim = &c["resources"]["limits"];
        for r in ["cpu", "memory"] {
            let (q, l) = (req[r].as_str().or(lim[r].as_str()), lim[r].as_str());
            if q.is_some() || l.is_some() {
                any = true;
            }
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn initial_status(obj: &Value) -> Value {
    json!({ "phase": "Pending", "qosClass": qos_class(&obj["spec"]) })
}

fn check_port(field: &str, p: &Value) -> Option<Cause> {
    match p.as_i64() {
        Some(n) if (1..=65535).contains(&n) => None,
        _ => Some(invalid(field, p, "must be between 1 and 65535, inclusive")),
    }
}

/// What IsValidPortName reports of a container port's name (an IANA service name).
pub fn port_name_errors(n: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if n.len() > 15 {
        errs.push("must be no more than 15 characters".to_string());
    }
    if !n
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !n.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if n.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if n.starts_with('-') || n.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

const QUANTITY_MSG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// A resource quantity in units of 10^-9 (rounded up), or None when the string is not
/// a quantity: a signed decimal number with a binary (Ki..Ei), decimal (n..E) or
/// exponent (e3) suffix.
pub fn parse_quantity(q: &str) -> Option<i128> {
    let (neg, body) = match q.as_bytes().first()? {
        b'-' => (true, &q[1..]),
        b'+' => (false, &q[1..]),
        _ => (false, q),
    };
    let split = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || int.len() + frac.len() > 30 {
        return None;
    }
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    // value = digits * 10^-frac.len() * scale; scale as (multiplier, power of ten).
    let (mul, exp10): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        e if e.starts_with(['e', 'E']) => {
            (1, e[1..].parse::<i32>().ok().filter(|x| x.abs() <= 18)?)
        }
        _ => return None,
    };
    let exp = exp10 + 9 - frac.len() as i32;
    let value = if exp >= 0 {
        digits
            .checked_mul(mul)?
            .checked_mul(10i128.checked_pow(exp as u32)?)?
    } else {
        let d = 10i128.checked_pow((-exp) as u32)?;
        let n = digits.checked_mul(mul)?;
        (n + d - 1) / d
    };
    Some(if neg { -value } else { value })
}

/// ValidateResourceRequirements: quantities that parse, none negative, and no request
/// above its limit.
fn validate_resources(at: &str, r: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut parsed = |kind: &str| {
        let mut out = Vec::new();
        for (name, q) in r[kind].as_object().into_iter().flatten() {
            let field = format!("{at}.{kind}[{name}]");
            let text = q
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| q.to_string());
            match parse_quantity(&text) {
                None => causes.push(invalid(&field, &json!(text), QUANTITY_MSG)),
                Some(v) if v < 0 => causes.push(invalid(
                    &field,
                    &json!(text),
                    "must be greater than or equal to 0",
                )),
                Some(v) => out.push((name.clone(), text, v)),
            }
        }
        out
    };
    let limits = parsed("limits");
    let requests = parsed("requests");
    for (name, text, v) in &requests {
        if let Some((_, ltext, l)) = limits.iter().find(|(n, _, _)| n == name) {
            if v > l {
                causes.push(invalid(
                    &format!("{at}.requests[{name}]"),
                    &json!(text),
                    &format!("must be less than or equal to {name} limit of {ltext}"),
                ));
            }
        }
    }
    causes
}

/// A pod spec's checks: for pods at `spec`, for templates at `spec.template.spec`.
pub fn validate_pod_spec(spec: &Value, at: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        causes.push(required(&format!("{at}.containers")));
    }
    let mut names = HashSet::new();
    for (list, items) in [
        (
            "initContainers",
            spec["initContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        ),
        ("containers", containers),
    ] {
        for (i, c) in items.iter().enumerate() {
            let f = format!("{at}.{list}[{i}]");
            match c["name"].as_str() {
                None | Some("") => causes.push(required(&format!("{f}.name"))),
                Some(n) => {
                    causes.extend(meta::check_label(&format!("{f}.name"), n));
                    if !names.insert(n.to_string()) {
                        causes.push(duplicate(&format!("{f}.name"), &json!(n)));
                    }
                }
            }
            causes.extend(validate_resources(
                &format!("{f}.resources"),
                &c["resources"],
            ));
            if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
                causes.push(required(&format!("{f}.image")));
            }
            if let Some(p) = c["imagePullPolicy"].as_str() {
                if !["Always", "IfNotPresent", "Never"].contains(&p) {
                    causes.push(not_supported(
                        &format!("{f}.imagePullPolicy"),
                        p,
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
            }
            let mut port_names = HashSet::new();
            for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                if let Some(n) = p["name"].as_str().filter(|n| !n.is_empty()) {
                    let field = format!("{f}.ports[{j}].name");
                    let errs = port_name_errors(n);
                    if !errs.is_empty() {
                        causes.extend(errs.iter().map(|m| invalid(&field, &json!(n), m)));
                    } else if !port_names.insert(n.to_string()) {
                        causes.push(duplicate(&field, &json!(n)));
                    }
                }
                causes.extend(check_port(
                    &format!("{f}.ports[{j}].containerPort"),
                    &p["containerPort"],
                ));
                if !p["hostPort"].is_null() && p["hostPort"] != 0 {
                    causes.extend(check_port(
                        &format!("{f}.ports[{j}].hostPort"),
                        &p["hostPort"],
                    ));
                }
                if let Some(proto) = p["protocol"].as_str() {
                    if !["TCP", "UDP", "SCTP"].contains(&proto) {
                        causes.push(not_supported(
                            &format!("{f}.ports[{j}].protocol"),
                            proto,
                            &["SCTP", "TCP", "UDP"],
                        ));
                    }
                }
            }
        }
    }
    if let Some(r) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&r) {
            causes.push(not_supported(
                &format!("{at}.restartPolicy"),
                r,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(d) = spec["dnsPolicy"].as_str() {
        if !["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"].contains(&d) {
            causes.push(not_supported(
                &format!("{at}.dnsPolicy"),
                d,
                &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
            ));
        }
    }
    let mut vols = HashSet::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let n = v["name"].as_str().unwrap_or("");
        let f = format!("{at}.volumes[{i}].name");
        if n.is_empty() {
            causes.push(required(&f));
        } else if !vols.insert(n.to_string()) {
            causes.push(duplicate(&f, &json!(n)));
        }
    }
    causes
}

fn validate(obj: &Value) -> Vec<Cause> {
    validate_pod_spec(&obj["spec"], "spec")
}

/// The spec with what an update may change blanked out.
fn frozen(spec: &Value, old_node: bool) -> Value {
    let mut s = spec.clone();
    for list in ["containers", "initContainers"] {
        for c in meta::items_mut(&mut s, list) {
            c["image"] = Value::Null;
        }
    }
    if let Some(o) = s.as_object_mut() {
        o.remove("activeDeadlineSeconds");
        o.remove("tolerations");
        // Binding sets the node once.
        if !old_node {
            o.remove("nodeName");
        }
    }
    s
}

fn validate_update(obj: &Value, old: &Value) -> Vec<Cause> {
    let old_node = old["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    if frozen(&obj["spec"], old_node) != frozen(&old["spec"], old_node) {
        return vec![meta::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        )];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Strategy;

    fn pod() -> Value {
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p", "namespace": "d" },
                "spec": { "containers": [{ "name": "web", "image": "nginx" }, { "name": "s", "image": "busybox:1.36", "ports": [{ "containerPort": 80 }] }] } })
    }

    #[test]
    fn defaults_are_those_kube_apiserver_applies() {
        let s = generic::Static(&DEF);
        let mut p = pod();
        s.default(&mut p);
        s.prepare_for_create(&mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            p["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(p["spec"]["containers"][1]["ports"][0]["protocol"], "TCP");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        // Defaulting adds no null members for lists the pod does not have.
        let c0 = p["spec"]["containers"][0].as_object().unwrap();
        assert!(
            !c0.contains_key("ports") && !c0.contains_key("env"),
            "{c0:?}"
        );
        let spec = p["spec"].as_object().unwrap();
        assert!(!spec.contains_key("volumes") && !spec.contains_key("initContainers"));
        assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(
            p["status"],
            json!({ "phase": "Pending", "qosClass": "BestEffort" })
        );
        assert!(s.validate(&p).is_empty(), "{:?}", s.validate(&p));
    }

    #[test]
    fn bad_pods_get_causes_naming_the_field() {
        let s = generic::Static(&DEF);
        let mut p = pod();
        p["spec"]["containers"][1]["name"] = json!("web");
        p["spec"]["containers"][0]["image"] = json!("");
        p["spec"]["restartPolicy"] = json!("Sometimes");
        let fields: Vec<String> = s.validate(&p).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "spec.containers[0].image",
                "spec.containers[1].name",
                "spec.restartPolicy"
            ]
        );
    }

    #[test]
    fn updates_may_change_images_but_not_the_rest() {
        let s = generic::Static(&DEF);
        let old = pod();
        let mut new = pod();
        new["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert!(s.validate_update(&new, &old).is_empty());
        new["spec"]["containers"][0]["name"] = json!("other");
        assert_eq!(s.validate_update(&new, &old)[0].field, "spec");
    }

    fn created(spec: Value) -> Value {
        let s = generic::Static(&DEF);
        let mut p = json!({ "metadata": { "name": "p", "namespace": "d" }, "spec": spec });
        s.default(&mut p);
        s.prepare_for_create(&mut p);
        p
    }

    #[test]
    fn pull_policies_dns_and_service_links() {
        let p = created(json!({"containers": [
            {"name": "a", "image": "reg:5000/x"},
            {"name": "b", "image": "x@sha256:00"}]}));
        let spec = &p["spec"];
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(spec["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["priority"], 0);
        assert_eq!(spec["serviceAccount"], "default");
        assert_eq!(spec["tolerations"][1]["tolerationSeconds"], 300);
    }

    #[test]
    fn requests_default_to_limits_and_set_the_qos_class() {
        let g = created(json!({"containers": [{"name": "a", "image": "i",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}));
        assert_eq!(g["status"]["qosClass"], "Guaranteed");
        assert_eq!(
            g["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"})
        );
        let b = created(json!({"containers": [{"name": "a", "image": "i",
            "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}}}]}));
        assert_eq!(b["status"]["qosClass"], "Burstable");
        assert_eq!(
            b["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "100m", "memory": "1Gi"})
        );
    }

    #[test]
    fn common_errors_read_as_kube_apiservers() {
        let s = generic::Static(&DEF);
        let p = created(json!({"containers": []}));
        let causes = s.validate(&p);
        assert_eq!(causes, [required("spec.containers")]);

        let p = created(json!({"restartPolicy": "Sometimes", "containers": [
            {"name": "a", "image": "i", "imagePullPolicy": "Maybe",
             "ports": [{"containerPort": 70000, "name": "80"}, {"containerPort": 81, "name": "http"}, {"containerPort": 82, "name": "http"}]},
            {"name": "a"}]}));
        let got: Vec<(String, String)> = s
            .validate(&p)
            .into_iter()
            .map(|c| (c.field, c.message))
            .collect();
        let want = [
            ("spec.containers[0].imagePullPolicy", "Unsupported value: \"Maybe\": supported values: \"Always\", \"IfNotPresent\", \"Never\""),
            ("spec.containers[0].ports[0].name", "Invalid value: \"80\": must contain at least one letter (a-z)"),
            ("spec.containers[0].ports[0].containerPort", "Invalid value: 70000: must be between 1 and 65535, inclusive"),
            ("spec.containers[0].ports[2].name", "Duplicate value: \"http\""),
            ("spec.containers[1].name", "Duplicate value: \"a\""),
            ("spec.containers[1].image", "Required value"),
            ("spec.restartPolicy", "Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""),
        ];
        for (f, m) in want {
            assert!(
                got.contains(&(f.to_string(), m.to_string())),
                "missing {f}: {m} in {got:?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:?}");
    }

    #[test]
    fn updates_keep_status_and_may_add_tolerations() {
        let s = generic::Static(&DEF);
        let old = created(json!({"containers": [{"name": "a", "image": "nginx:1"}]}));
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("nginx:2");
        new["spec"]["tolerations"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "k", "operator": "Exists"}));
        new["status"] = json!({"phase": "Running"});
        s.prepare_for_update(&mut new, &old);
        assert_eq!(new["status"]["phase"], "Pending");
        assert!(s.validate_update(&new, &old).is_empty());
        let mut bad = old.clone();
        bad["spec"]["restartPolicy"] = json!("Never");
        let causes = s.validate_update(&bad, &old);
        assert_eq!(causes.len(), 1);
        assert!(causes[0].message.starts_with(
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
        ));
    }

    #[test]
    fn field_selectors() {
        let s = generic::Static(&DEF);
        let mut p = created(json!({"containers": [{"name": "a", "image": "i"}], "nodeName": "n1"}));
        p["status"]["podIP"] = json!("10.0.0.1");
        assert_eq!(s.field(&p, "spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(s.field(&p, "status.phase").as_deref(), Some("Pending"));
        assert_eq!(s.field(&p, "status.podIP").as_deref(), Some("10.0.0.1"));
        assert_eq!(s.field(&p, "spec.hostNetwork").as_deref(), Some("false"));
        assert_eq!(s.field(&p, "spec.bogus"), None);
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("100m"), Some(100_000_000));
        assert_eq!(parse_quantity("0.1"), parse_quantity("100m"));
        assert_eq!(parse_quantity("1Gi"), Some((1i128 << 30) * 1_000_000_000));
        assert_eq!(parse_quantity("1e3"), parse_quantity("1k"));
        assert_eq!(parse_quantity("1.5Ki"), Some(1536 * 1_000_000_000));
        assert!(parse_quantity("-1").is_some_and(|v| v < 0));
        for bad in ["abc", "1.2.3", "5X", "", ".", "1Gii"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_quantities_and_requests_over_limits() {
        let s = generic::Static(&DEF);
        let p = created(json!({"containers": [{"name": "a", "image": "i",
            "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "2", "memory": "lots"}}}]}));
        let causes = s.validate(&p);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.containers[0].resources.requests[memory]",
                "spec.containers[0].resources.requests[cpu]"
            ]
        );
        assert!(causes[0]
            .message
            .starts_with("Invalid value: \"lots\": quantities must match the regular expression"));
        assert_eq!(
            causes[1].message,
            "Invalid value: \"2\": must be less than or equal to cpu limit of 1"
        );
        let p = created(json!({"containers": [{"name": "a", "image": "i",
            "resources": {"limits": {"memory": "1Gi"}, "requests": {"memory": "512Mi", "cpu": "-1"}}}]}));
        let causes = s.validate(&p);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(
            causes[0].field,
            "spec.containers[0].resources.requests[cpu]"
        );
        assert_eq!(
            causes[0].message,
            "Invalid value: \"-1\": must be greater than or equal to 0"
        );
    }
}
