//! Rows of the core/v1 resources besides pods.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{age, col, name, selector_text, since, wide, Column, AGE, NAME};

const NODE: &[Column] = &[
    NAME,
    col("Status", "The status of the node"),
    col("Roles", "The roles of the node"),
    AGE,
    col("Version", "Kubelet Version reported by the node."),
    wide("Internal-IP", "List of internal IPs."),
    wide("External-IP", "List of external IPs."),
    wide("OS-Image", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
    wide("Kernel-Version", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
    wide("Container-Runtime", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
];
const NAMESPACE: &[Column] = &[NAME, col("Status", "The status of the namespace"), AGE];
const SERVICE: &[Column] = &[
    NAME,
    col("Type", "type determines how the Service is exposed."),
    col("Cluster-IP", "clusterIP is the IP address of the service and is usually assigned randomly."),
    col("External-IP", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
    col("Port(s)", "The list of ports that are exposed by this service."),
    AGE,
    wide("Selector", "Route service traffic to pods with label keys and values matching this selector."),
];
const ENDPOINTS: &[Column] = &[
    NAME,
    col(
        "Endpoints",
        "Endpoints is the list of endpoints for each subset.",
    ),
    AGE,
];
const CONFIGMAP: &[Column] = &[
    NAME,
    Column {
        name: "Data",
        type_: "integer",
        format: "",
        description: "Data contains the configuration data.",
        priority: 0,
    },
    AGE,
];
const SECRET: &[Column] = &[
    NAME,
    col("Type", "The type of the secret"),
    Column {
        name: "Data",
        type_: "integer",
        format: "",
        description: "The number of keys in the data.",
        priority: 0,
    },
    AGE,
];
const SERVICEACCOUNT: &[Column] = &[NAME, Column { name: "Secrets", type_: "integer", format: "", description: "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.", priority: 0 }, AGE];
const EVENT: &[Column] = &[
    col("Last Seen", "Time when last this event was observed."),
    col("Type", "Type of this event (Normal, Warning), new types could be added in the future."),
    col("Reason", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
    col("Object", "The object that this event is about."),
    wide("Subobject", "The field of the object this event is about."),
    wide("Source", "The component reporting this event."),
    col("Message", "A human-readable description of the status of this operation."),
    wide("First Seen", "The time at which the event was first recorded."),
    Column { name: "Count", type_: "string", format: "", description: "The number of times this event has occurred.", priority: 1 },
    Column { name: "Name", type_: "string", format: "name", description: "The name of the event.", priority: 1 },
];

pub fn columns(kind: &str) -> Option<&'static [Column]> {
    Some(match kind {
        "Node" => NODE,
        "Namespace" => NAMESPACE,
        "Service" => SERVICE,
        "Endpoints" => ENDPOINTS,
        "ConfigMap" => CONFIGMAP,
        "Secret" => SECRET,
        "ServiceAccount" => SERVICEACCOUNT,
        "Event" => EVENT,
        _ => return None,
    })
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

fn count(v: &Value) -> usize {
    v.as_object()
        .map(|m| m.len())
        .or(v.as_array().map(Vec::len))
        .unwrap_or(0)
}

pub fn cells(kind: &str, o: &Value, now: DateTime<Utc>) -> Option<Vec<Value>> {
    let n = json!(name(o));
    Some(match kind {
        "Node" => node(o, now),
        "Namespace" => vec![n, o["status"]["phase"].clone(), age(o, now)],
        "Service" => service(o, now),
        "Endpoints" => vec![n, json!(endpoints_text(o)), age(o, now)],
        "ConfigMap" => vec![
            n,
            json!(count(&o["data"]) + count(&o["binaryData"])),
            age(o, now),
        ],
        "Secret" => vec![n, o["type"].clone(), json!(count(&o["data"])), age(o, now)],
        "ServiceAccount" => vec![n, json!(count(&o["secrets"])), age(o, now)],
        "Event" => event(o, now),
        _ => return None,
    })
}

fn node(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let conds = o["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut status = match conds.iter().find(|c| c["type"] == "Ready") {
        Some(c) if c["status"] == "True" => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o["spec"]["unschedulable"] == true {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = Vec::new();
    for (k, v) in o["metadata"]["labels"].as_object().into_iter().flatten() {
        if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
            if !r.is_empty() {
                roles.push(r.to_string());
            }
        } else if k == "kubernetes.io/role" {
            if let Some(r) = v.as_str().filter(|r| !r.is_empty()) {
                roles.push(r.to_string());
            }
        }
    }
    roles.sort();
    roles.dedup();
    let info = &o["status"]["nodeInfo"];
    let addr = |t: &str| {
        let ips: Vec<&str> = o["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["type"] == t)
            .filter_map(|a| a["address"].as_str())
            .collect();
        none_if_empty(ips.join(","))
    };
    let unknown = |v: &Value| {
        v.as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("<unknown>")
            .to_string()
    };
    vec![
        json!(name(o)),
        json!(status),
        json!(none_if_empty(roles.join(","))),
        age(o, now),
        json!(info["kubeletVersion"].as_str().unwrap_or("")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(unknown(&info["osImage"])),
        json!(unknown(&info["kernelVersion"])),
        json!(unknown(&info["containerRuntimeVersion"])),
    ]
}

fn service(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let spec = &o["spec"];
    let t = spec["type"].as_str().unwrap_or("ClusterIP");
    let external: Vec<String> = spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let external = match t {
        "ClusterIP" | "NodePort" => none_if_empty(external.join(",")),
        "LoadBalancer" => {
            let mut ips = external.clone();
            for i in o["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(x) = i["ip"].as_str().or(i["hostname"].as_str()) {
                    ips.push(x.to_string());
                }
            }
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        "ExternalName" => spec["externalName"].as_str().unwrap_or("").to_string(),
        _ => "<unknown>".into(),
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64().filter(|n| *n != 0) {
                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    vec![
        json!(name(o)),
        json!(t),
        json!(spec["clusterIP"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("<none>")),
        json!(external),
        json!(none_if_empty(ports.join(","))),
        age(o, now),
        json!(selector_text(&spec["selector"])),
    ]
}

/// `10.0.0.1:80,10.0.0.2:80 + 1 more...`, as the Endpoints printer abbreviates.
/// formatEndpoints: for each subset, each port with every address (a subset without
/// ports lists bare addresses), three shown and the rest counted.
fn endpoints_text(o: &Value) -> String {
    let subsets = o["subsets"].as_array().cloned().unwrap_or_default();
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut all = Vec::new();
    for s in &subsets {
        let addrs: Vec<&str> = s["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a["ip"].as_str().unwrap_or(""))
            .collect();
        let ports: Vec<i64> = s["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["port"].as_i64().unwrap_or(0))
            .collect();
        if ports.is_empty() {
            all.extend(addrs.iter().map(|a| a.to_string()));
            continue;
        }
        for p in &ports {
            for a in &addrs {
                // net.JoinHostPort: IPv6 addresses in brackets.
                all.push(if a.contains(':') {
                    format!("[{a}]:{p}")
                } else {
                    format!("{a}:{p}")
                });
            }
        }
    }
    let shown = all.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if all.len() > 3 {
        format!("{shown} + {} more...", all.len() - 3)
    } else {
        shown
    }
}

fn event(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let last = if o["series"].is_object() {
        since(&o["series"]["lastObservedTime"], now)
    } else if o["lastTimestamp"].is_string() {
        since(&o["lastTimestamp"], now)
    } else {
        since(&o["eventTime"], now)
    };
    let first = if o["firstTimestamp"].is_string() {
        since(&o["firstTimestamp"], now)
    } else {
        since(&o["eventTime"], now)
    };
    let io = &o["involvedObject"];
    let kind = io["kind"].as_str().unwrap_or("").to_lowercase();
    let object = match io["name"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => format!("{kind}/{n}"),
        None => kind,
    };
    // The series' count wins; a singleton event of the new API has none and counts once.
    let count = if o["series"].is_object() {
        o["series"]["count"].as_i64().unwrap_or(0)
    } else {
        o["count"].as_i64().filter(|c| *c != 0).unwrap_or(1)
    };
    let first_set = |a: &Value, b: &Value| {
        a.as_str()
            .filter(|s| !s.is_empty())
            .or(b.as_str())
            .unwrap_or("")
            .to_string()
    };
    let source = {
        let c = first_set(&o["source"]["component"], &o["reportingComponent"]);
        let h = first_set(&o["source"]["host"], &o["reportingInstance"]);
        match (c.is_empty(), h.is_empty()) {
            (true, _) => String::new(),
            (false, true) => c,
            (false, false) => format!("{c}, {h}"),
        }
    };
    vec![
        json!(last),
        o["type"].clone(),
        o["reason"].clone(),
        json!(object),
        json!(io["fieldPath"].as_str().unwrap_or("")),
        json!(source),
        json!(o["message"].as_str().unwrap_or("").trim()),
        json!(first),
        json!(count),
        json!(name(o)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_nodes_and_endpoints_read_as_kubectl_shows_them() {
        let now = Utc::now();
        let svc = json!({ "metadata": { "name": "web" }, "spec": { "type": "NodePort", "clusterIP": "10.96.0.9", "ports": [{ "port": 80, "nodePort": 30080, "protocol": "TCP" }], "selector": { "app": "web" } } });
        let c = cells("Service", &svc, now).unwrap();
        assert_eq!(
            (
                c[1].as_str(),
                c[2].as_str(),
                c[3].as_str(),
                c[4].as_str(),
                c[6].as_str()
            ),
            (
                Some("NodePort"),
                Some("10.96.0.9"),
                Some("<none>"),
                Some("80:30080/TCP"),
                Some("app=web")
            )
        );
        let node = json!({ "metadata": { "name": "w1", "labels": { "node-role.kubernetes.io/control-plane": "" } }, "spec": { "unschedulable": true },
            "status": { "conditions": [{ "type": "Ready", "status": "True" }], "nodeInfo": { "kubeletVersion": "v1.33.0" } } });
        let c = cells("Node", &node, now).unwrap();
        assert_eq!(
            (c[1].as_str(), c[2].as_str(), c[4].as_str()),
            (
                Some("Ready,SchedulingDisabled"),
                Some("control-plane"),
                Some("v1.33.0")
            )
        );
        let ep = json!({ "metadata": { "name": "e" }, "subsets": [{ "addresses": [{ "ip": "1.1.1.1" }, { "ip": "1.1.1.2" }, { "ip": "1.1.1.3" }, { "ip": "1.1.1.4" }], "ports": [{ "port": 80 }] }] });
        assert_eq!(
            endpoints_text(&ep),
            "1.1.1.1:80,1.1.1.2:80,1.1.1.3:80 + 1 more..."
        );
    }
}
