//! Rows of workloads and of the other groups' resources.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{age, col, label_selector_text, name, wide, Column, AGE, NAME};

const DEPLOYMENT: &[Column] = &[
    NAME,
    col("Ready", "Number of the pod with ready state"),
    Column { name: "Up-to-date", type_: "integer", format: "", description: "Total number of non-terminated pods targeted by this deployment that have the desired template spec.", priority: 0 },
    Column { name: "Available", type_: "integer", format: "", description: "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.", priority: 0 },
    AGE,
    wide("Containers", "Names of each container in the template."),
    wide("Images", "Images referenced by each container in the template."),
    wide("Selector", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
];
const REPLICASET: &[Column] = &[
    NAME,
    Column {
        name: "Desired",
        type_: "integer",
        format: "",
        description: "Replicas is the number of desired replicas.",
        priority: 0,
    },
    Column {
        name: "Current",
        type_: "integer",
        format: "",
        description: "Replicas is the most recently observed number of replicas.",
        priority: 0,
    },
    Column {
        name: "Ready",
        type_: "integer",
        format: "",
        description: "The number of ready replicas for this replica set.",
        priority: 0,
    },
    AGE,
    wide("Containers", "Names of each container in the template."),
    wide(
        "Images",
        "Images referenced by each container in the template.",
    ),
    wide(
        "Selector",
        "Selector is a label query over pods that should match the replica count.",
    ),
];
const DAEMONSET: &[Column] = &[
    NAME,
    Column { name: "Desired", type_: "integer", format: "", description: "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod).", priority: 0 },
    Column { name: "Current", type_: "integer", format: "", description: "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.", priority: 0 },
    Column { name: "Ready", type_: "integer", format: "", description: "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.", priority: 0 },
    Column { name: "Up-to-date", type_: "integer", format: "", description: "The total number of nodes that are running updated daemon pod", priority: 0 },
    Column { name: "Available", type_: "integer", format: "", description: "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)", priority: 0 },
    col("Node Selector", "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node. More info: https://kubernetes.io/docs/concepts/configuration/assign-pod-node/"),
    AGE,
    wide("Containers", "Names of each container in the template."),
    wide("Images", "Images referenced by each container in the template."),
    wide("Selector", "A label query over pods that are managed by the daemon set. Must match in order to be controlled. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"),
];
const LEASE: &[Column] = &[
    NAME,
    col(
        "Holder",
        "HolderIdentity contains the identity of the holder of a current lease.",
    ),
    AGE,
];
const ENDPOINTSLICE: &[Column] = &[
    NAME,
    col(
        "AddressType",
        "addressType specifies the type of address carried by this EndpointSlice.",
    ),
    col(
        "Ports",
        "ports specifies the list of network ports exposed by each endpoint in this slice.",
    ),
    col(
        "Endpoints",
        "endpoints is a list of unique endpoints in this slice.",
    ),
    AGE,
];
const PDB: &[Column] = &[
    NAME,
    col(
        "Min Available",
        "The minimum number of pods that must be available.",
    ),
    col(
        "Max Unavailable",
        "The maximum number of pods that may be unavailable.",
    ),
    Column {
        name: "Allowed Disruptions",
        type_: "integer",
        format: "",
        description: "Calculated number of pods that may be disrupted at this time.",
        priority: 0,
    },
    AGE,
];

const CSR: &[Column] = &[
    NAME,
    AGE,
    col(
        "SignerName",
        "Only use certificates from the specified signer.",
    ),
    col("Requestor", "Name of the user who created the request."),
    col(
        "RequestedDuration",
        "The duration of certificate that was requested.",
    ),
    col(
        "Condition",
        "The approval and issuance state of the request.",
    ),
];

/// A CertificateSigningRequest's state as kubectl shows it: Approved,Issued, Pending...
fn csr_condition(o: &Value) -> String {
    let mut parts: Vec<String> = o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str().map(str::to_string))
        .collect();
    if parts.is_empty() {
        parts.push("Pending".into());
    }
    if o["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty())
    {
        parts.push("Issued".into());
    }
    parts.join(",")
}

pub fn columns(kind: &str) -> Option<&'static [Column]> {
    Some(match kind {
        "CertificateSigningRequest" => CSR,
        "Deployment" => DEPLOYMENT,
        "ReplicaSet" => REPLICASET,
        "DaemonSet" => DAEMONSET,
        "Lease" => LEASE,
        "EndpointSlice" => ENDPOINTSLICE,
        "PodDisruptionBudget" => PDB,
        _ => return None,
    })
}

/// listWithMoreString: three shown and the rest counted, `<unset>` for none.
fn list_with_more(items: &[String]) -> String {
    match items.len() {
        0 => "<unset>".into(),
        1..=3 => items.join(","),
        n => format!("{} + {} more...", items[..3].join(","), n - 3),
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn containers_and_images(o: &Value) -> (String, String) {
    let cs = o["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
    let images: Vec<&str> = cs.iter().filter_map(|c| c["image"].as_str()).collect();
    (names.join(","), images.join(","))
}

fn int_or_na(v: &Value) -> Value {
    match v {
        Value::Null => json!("N/A"),
        Value::String(s) => json!(s),
        other => json!(other.to_string()),
    }
}

pub fn cells(kind: &str, o: &Value, now: DateTime<Utc>) -> Option<Vec<Value>> {
    let st = &o["status"];
    Some(match kind {
        "CertificateSigningRequest" => vec![
            json!(name(o)),
            age(o, now),
            o["spec"]["signerName"].clone(),
            o["spec"]["username"].clone(),
            json!(o["spec"]["expirationSeconds"]
                .as_i64()
                .map(|s| super::human_duration(chrono::Duration::seconds(s)))
                .unwrap_or_else(|| "<none>".into())),
            json!(csr_condition(o)),
        ],
        "Deployment" => {
            let (c, i) = containers_and_images(o);
            vec![
                json!(name(o)),
                json!(format!(
                    "{}/{}",
                    int(&st["readyReplicas"]),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                )),
                json!(int(&st["updatedReplicas"])),
                json!(int(&st["availableReplicas"])),
                age(o, now),
                json!(c),
                json!(i),
                json!(label_selector_text(&o["spec"]["selector"])),
            ]
        }
        "ReplicaSet" => {
            let (c, i) = containers_and_images(o);
            vec![
                json!(name(o)),
                json!(o["spec"]["replicas"].as_i64().unwrap_or(1)),
                json!(int(&st["replicas"])),
                json!(int(&st["readyReplicas"])),
                age(o, now),
                json!(c),
                json!(i),
                json!(label_selector_text(&o["spec"]["selector"])),
            ]
        }
        "DaemonSet" => {
            let (c, i) = containers_and_images(o);
            // labels.FormatLabels of spec.template.spec.nodeSelector.
            let sel: Vec<String> = o["spec"]["template"]["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            vec![
                json!(name(o)),
                json!(int(&st["desiredNumberScheduled"])),
                json!(int(&st["currentNumberScheduled"])),
                json!(int(&st["numberReady"])),
                json!(int(&st["updatedNumberScheduled"])),
                json!(int(&st["numberAvailable"])),
                json!(if sel.is_empty() {
                    "<none>".to_string()
                } else {
                    sel.join(",")
                }),
                age(o, now),
                json!(c),
                json!(i),
                json!(label_selector_text(&o["spec"]["selector"])),
            ]
        }
        "Lease" => vec![
            json!(name(o)),
            json!(o["spec"]["holderIdentity"].as_str().unwrap_or("<unknown>")),
            age(o, now),
        ],
        "EndpointSlice" => {
            // formatDiscoveryPorts: the number, else the name, else "*".
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match (p["port"].as_i64(), p["name"].as_str()) {
                    (Some(n), _) => n.to_string(),
                    (None, Some(name)) => name.to_string(),
                    (None, None) => "*".to_string(),
                })
                .collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let shown = list_with_more(&addrs);
            vec![
                json!(name(o)),
                o["addressType"].clone(),
                json!(list_with_more(&ports)),
                json!(shown),
                age(o, now),
            ]
        }
        "PodDisruptionBudget" => vec![
            json!(name(o)),
            int_or_na(&o["spec"]["minAvailable"]),
            int_or_na(&o["spec"]["maxUnavailable"]),
            json!(int(&st["disruptionsAllowed"])),
            age(o, now),
        ],
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_rows() {
        let d = json!({ "metadata": { "name": "web" }, "spec": { "replicas": 3, "selector": { "matchLabels": { "app": "web" } },
            "template": { "spec": { "containers": [{ "name": "nginx", "image": "nginx:1.25" }] } } },
            "status": { "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2 } });
        let c = cells("Deployment", &d, Utc::now()).unwrap();
        assert_eq!(c[1], "2/3");
        assert_eq!((c[2].as_i64(), c[3].as_i64()), (Some(3), Some(2)));
        assert_eq!(
            (c[5].as_str(), c[6].as_str(), c[7].as_str()),
            (Some("nginx"), Some("nginx:1.25"), Some("app=web"))
        );
    }
}
