//! Rows as kubectl shows them, checked against what kube-apiserver's printers produce.

use super::*;
use chrono::{Duration, TimeZone};
#[test]
fn durations_read_as_kubectl_prints_them() {
    let d = chrono::Duration::seconds;
    for (s, want) in [
        (0, "0s"),
        (59, "59s"),
        (119, "119s"),
        (125, "2m5s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (8 * 3600, "8h"),
        (50 * 3600, "2d2h"),
        (10 * 86400, "10d"),
        (800 * 86400, "2y70d"),
        (3000 * 86400, "8y"),
    ] {
        assert_eq!(human_duration(d(s)), want, "{s}");
    }
}

#[test]
fn unknown_kinds_get_name_and_created_at() {
    let o = json!({ "metadata": { "name": "x", "creationTimestamp": "2026-01-01T00:00:00Z" } });
    let t = table(
        "example.com",
        "Widget",
        &[o],
        json!({}),
        IncludeObject::None,
        Utc::now(),
    );
    assert_eq!(t["columnDefinitions"][1]["name"], "Created At");
    assert_eq!(t["rows"][0]["cells"], json!(["x", "2026-01-01T00:00:00Z"]));
    assert!(t["rows"][0].get("object").is_none());
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap()
}

fn ago(d: Duration) -> String {
    (now() - d).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn strs(cells: &[Value]) -> Vec<String> {
    cells
        .iter()
        .map(|c| match c {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

#[test]
fn human_duration_follows_upstream_steps() {
    let cases = [
        (Duration::seconds(-5), "<invalid>"),
        (Duration::milliseconds(-500), "0s"),
        (Duration::seconds(0), "0s"),
        (Duration::seconds(59), "59s"),
        (Duration::seconds(119), "119s"),
        (Duration::seconds(123), "2m3s"),
        (Duration::seconds(300), "5m"),
        (Duration::minutes(15), "15m"),
        (Duration::minutes(179), "179m"),
        (Duration::minutes(184), "3h4m"),
        (Duration::hours(5), "5h"),
        (Duration::hours(20), "20h"),
        (Duration::hours(76), "3d4h"),
        (Duration::hours(72), "3d"),
        (Duration::days(30), "30d"),
        (Duration::days(365 * 2 + 5), "2y5d"),
        (Duration::days(365 * 3), "3y"),
        (Duration::days(365 * 9), "9y"),
    ];
    for (d, want) in cases {
        assert_eq!(human_duration(d), want, "{d:?}");
    }
}

fn pod(status: Value) -> Value {
    json!({
        "metadata": {"name": "web", "creationTimestamp": ago(Duration::minutes(5))},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
        "status": status,
    })
}

fn pod_row(o: &Value) -> Vec<String> {
    strs(&cells("", "Pod", o, now()))
}

#[test]
fn pod_running_with_restarts() {
    let o = pod(json!({
        "phase": "Running",
        "podIPs": [{"ip": "10.0.0.5"}],
        "containerStatuses": [
            {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}},
             "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(Duration::seconds(90))}}},
            {"name": "b", "ready": false, "restartCount": 0, "state": {"running": {}}},
        ]
    }));
    assert_eq!(
        pod_row(&o),
        [
            "web",
            "1/2",
            "Running",
            "2 (90s ago)",
            "5m",
            "10.0.0.5",
            "n1",
            "<none>",
            "<none>"
        ]
    );
}

#[test]
fn pod_waiting_reason_wins() {
    let o = pod(json!({
        "phase": "Pending",
        "containerStatuses": [
            {"name": "a", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}},
            {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}},
        ]
    }));
    let row = pod_row(&o);
    assert_eq!(row[1..4], ["1/2", "ImagePullBackOff", "0"]);
    assert_eq!(row[5], "<none>");
}

#[test]
fn pod_init_states() {
    let mut o = pod(json!({
        "phase": "Pending",
        "initContainerStatuses": [
            {"name": "i1", "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
            {"name": "i2", "restartCount": 0, "state": {"running": {}}},
        ],
        "containerStatuses": [
            {"name": "a", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}},
        ]
    }));
    o["spec"]["initContainers"] = json!([{"name": "i1"}, {"name": "i2"}]);
    assert_eq!(pod_row(&o)[2], "Init:1/2");

    o["status"]["initContainerStatuses"][1]["state"] =
        json!({"waiting": {"reason": "CrashLoopBackOff"}});
    assert_eq!(pod_row(&o)[2], "Init:CrashLoopBackOff");

    o["status"]["initContainerStatuses"][1]["state"] = json!({"terminated": {"exitCode": 3}});
    assert_eq!(pod_row(&o)[2], "Init:ExitCode:3");

    o["status"]["initContainerStatuses"][1]["state"] =
        json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
    assert_eq!(pod_row(&o)[2], "Init:OOMKilled");
}

#[test]
fn pod_completed_failed_and_terminating() {
    let done = pod(json!({
        "phase": "Succeeded",
        "containerStatuses": [
            {"name": "a", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        ]
    }));
    assert_eq!(pod_row(&done)[1..3], ["0/2", "Completed"]);
    let t = table(
        "",
        "Pod",
        std::slice::from_ref(&done),
        json!({}),
        IncludeObject::None,
        now(),
    );
    assert_eq!(t["rows"][0]["conditions"][0]["type"], "Completed");

    let failed = pod(json!({
        "phase": "Failed",
        "containerStatuses": [
            {"name": "a", "restartCount": 0, "state": {"terminated": {"exitCode": 2}}},
        ]
    }));
    assert_eq!(pod_row(&failed)[2], "ExitCode:2");

    let mut deleting = pod(json!({
        "phase": "Running",
        "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}]
    }));
    deleting["metadata"]["deletionTimestamp"] = json!(ago(Duration::seconds(1)));
    assert_eq!(pod_row(&deleting)[2], "Terminating");

    // A finished pod being deleted keeps its final status.
    let mut done = done;
    done["metadata"]["deletionTimestamp"] = json!(ago(Duration::seconds(1)));
    assert_eq!(pod_row(&done)[2], "Completed");
}

#[test]
fn pod_completed_with_a_running_container_is_not_ready_or_running() {
    let mut o = pod(json!({
        "phase": "Running",
        "containerStatuses": [
            {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
            {"name": "b", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        ]
    }));
    assert_eq!(pod_row(&o)[2], "NotReady");
    o["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
    assert_eq!(pod_row(&o)[2], "Running");
}

#[test]
fn pod_sidecar_counts_and_readiness_gates() {
    let mut o = pod(json!({
        "phase": "Running",
        "conditions": [{"type": "Initialized", "status": "True"}, {"type": "example.com/lb", "status": "True"}],
        "initContainerStatuses": [
            {"name": "proxy", "ready": true, "started": true, "restartCount": 1, "state": {"running": {}}},
        ],
        "containerStatuses": [
            {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
            {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}},
        ]
    }));
    o["spec"]["initContainers"] = json!([{"name": "proxy", "restartPolicy": "Always"}]);
    o["spec"]["readinessGates"] =
        json!([{"conditionType": "example.com/lb"}, {"conditionType": "x"}]);
    let row = pod_row(&o);
    assert_eq!(row[1..4], ["3/3", "Running", "1"]);
    assert_eq!(row[8], "1/2");
}

#[test]
fn node_status_roles_and_addresses() {
    let o = json!({
        "metadata": {"name": "n1", "creationTimestamp": ago(Duration::days(3)),
                     "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "worker"}},
        "spec": {"unschedulable": true},
        "status": {
            "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": "n1"}],
            "nodeInfo": {"kubeletVersion": "v1.30.0", "osImage": "Debian GNU/Linux 12", "kernelVersion": "6.1.0"},
        }
    });
    assert_eq!(
        strs(&cells("", "Node", &o, now())),
        [
            "n1",
            "Ready,SchedulingDisabled",
            "control-plane,worker",
            "3d",
            "v1.30.0",
            "192.168.1.10",
            "<none>",
            "Debian GNU/Linux 12",
            "6.1.0",
            "<unknown>"
        ]
    );
    let bare = json!({"metadata": {"name": "n2"}});
    let row = strs(&cells("", "Node", &bare, now()));
    assert_eq!(row[1..4], ["Unknown", "<none>", "<unknown>"]);
}

#[test]
fn services() {
    let o = json!({
        "metadata": {"name": "web", "creationTimestamp": ago(Duration::hours(2))},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web", "a": "b"},
                 "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]}
    });
    assert_eq!(
        strs(&cells("", "Service", &o, now())),
        [
            "web",
            "NodePort",
            "10.96.0.10",
            "<none>",
            "80:30080/TCP,53/UDP",
            "120m",
            "a=b,app=web"
        ]
    );
    let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.11"]}});
    assert_eq!(strs(&cells("", "Service", &lb, now()))[3], "<pending>");
    let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer"},
                    "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"hostname": "x.example"}]}}});
    let row = strs(&cells("", "Service", &lb, now()));
    assert_eq!(row[2..5], ["<none>", "1.2.3.4,x.example", "<none>"]);
    let en = json!({"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "db.example"}});
    assert_eq!(strs(&cells("", "Service", &en, now()))[3], "db.example");
}

#[test]
fn endpoints_show_three_then_more() {
    let o = json!({
        "metadata": {"name": "web"},
        "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]}]
    });
    assert_eq!(
        strs(&cells("", "Endpoints", &o, now()))[1],
        "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more..."
    );
    let empty = json!({"metadata": {"name": "web"}});
    assert_eq!(strs(&cells("", "Endpoints", &empty, now()))[1], "<none>");
    let headless =
        json!({"metadata": {"name": "db"}, "subsets": [{"addresses": [{"ip": "10.0.0.7"}]}]});
    assert_eq!(
        strs(&cells("", "Endpoints", &headless, now()))[1],
        "10.0.0.7"
    );
    let v6 = json!({"metadata": {"name": "v6"}, "subsets": [{"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 80}]}]});
    assert_eq!(strs(&cells("", "Endpoints", &v6, now()))[1], "[fd00::1]:80");
}

#[test]
fn small_core_kinds() {
    let cm = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
    assert_eq!(cells("", "ConfigMap", &cm, now())[1], json!(3));
    let s = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "MQ=="}});
    assert_eq!(
        strs(&cells("", "Secret", &s, now()))[..3],
        ["s", "Opaque", "1"]
    );
    let sa = json!({"metadata": {"name": "default"}});
    assert_eq!(cells("", "ServiceAccount", &sa, now())[1], json!(0));
    let ns = json!({"metadata": {"name": "kube-system", "creationTimestamp": ago(Duration::seconds(30))},
                    "status": {"phase": "Active"}});
    assert_eq!(
        strs(&cells("", "Namespace", &ns, now())),
        ["kube-system", "Active", "30s"]
    );
}

#[test]
fn events() {
    let o = json!({
        "metadata": {"name": "web.17a"},
        "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{a}"},
        "reason": "Pulled", "type": "Normal", "message": "Pulled image \n",
        "source": {"component": "kubelet", "host": "n1"},
        "firstTimestamp": ago(Duration::minutes(10)), "lastTimestamp": ago(Duration::minutes(2)), "count": 4
    });
    assert_eq!(
        strs(&cells("", "Event", &o, now())),
        [
            "2m",
            "Normal",
            "Pulled",
            "pod/web",
            "spec.containers{a}",
            "kubelet, n1",
            "Pulled image",
            "10m",
            "4",
            "web.17a"
        ]
    );
    let new = json!({
        "metadata": {"name": "e2"}, "involvedObject": {"kind": "Node"}, "eventTime": ago(Duration::seconds(5)),
        "reportingComponent": "sched", "type": "Warning", "reason": "X", "message": "m"
    });
    let row = strs(&cells("", "Event", &new, now()));
    assert_eq!(row[..4], ["5s", "Warning", "X", "node"]);
    assert_eq!(row[5], "sched");
    assert_eq!(row[8], "1");
}

#[test]
fn workloads() {
    let d = json!({
        "metadata": {"name": "web", "creationTimestamp": ago(Duration::hours(30))},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}, {"name": "s", "image": "busybox"}]}}},
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
    });
    assert_eq!(
        strs(&cells("apps", "Deployment", &d, now())),
        [
            "web",
            "2/3",
            "3",
            "2",
            "30h",
            "nginx,s",
            "nginx:1.25,busybox",
            "app=web"
        ]
    );
    let rs =
        json!({"metadata": {"name": "web-1"}, "spec": {"replicas": 2}, "status": {"replicas": 2}});
    assert_eq!(
        strs(&cells("apps", "ReplicaSet", &rs, now())),
        ["web-1", "2", "2", "0", "<unknown>", "", "", "<none>"]
    );
}

#[test]
fn leases_slices_and_pdbs() {
    let l = json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}});
    assert_eq!(
        strs(&cells("coordination.k8s.io", "Lease", &l, now()))[1],
        "n1"
    );
    let es = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4",
                    "ports": [{"port": 80}, {"name": "x"}],
                    "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]},
                                  {"addresses": ["10.0.0.3"]}, {"addresses": ["10.0.0.4"]}]});
    assert_eq!(
        strs(&cells("discovery.k8s.io", "EndpointSlice", &es, now()))[1..4],
        ["IPv4", "80,x", "10.0.0.1,10.0.0.2,10.0.0.3 + 1 more..."]
    );
    let p = json!({"metadata": {"name": "p"}, "spec": {"minAvailable": "50%"}, "status": {"disruptionsAllowed": 1}});
    assert_eq!(
        strs(&cells("policy", "PodDisruptionBudget", &p, now()))[1..4],
        ["50%", "N/A", "1"]
    );
}

#[test]
fn default_table_and_include_object() {
    assert_eq!(columns("example.com", "Widget")[1].name, "Created At");
    assert_eq!(columns("example.com", "Widget")[1].type_, "date");
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                   "metadata": {"name": "w", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"x": 1}});
    assert_eq!(
        strs(&cells("example.com", "Widget", &w, now())),
        ["w", "2026-01-01T00:00:00Z"]
    );

    let meta = json!({"resourceVersion": "42", "continue": "abc"});
    let t = table(
        "example.com",
        "Widget",
        std::slice::from_ref(&w),
        meta,
        IncludeObject::Metadata,
        now(),
    );
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(t["metadata"]["resourceVersion"], "42");
    assert_eq!(t["metadata"]["continue"], "abc");
    assert_eq!(t["columnDefinitions"][0]["format"], "name");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "w");
    assert!(t["rows"][0]["object"].get("spec").is_none());

    let t = table(
        "example.com",
        "Widget",
        std::slice::from_ref(&w),
        Value::Null,
        IncludeObject::Object,
        now(),
    );
    assert_eq!(t["rows"][0]["object"], w);
    let t = table(
        "example.com",
        "Widget",
        &[w],
        Value::Null,
        IncludeObject::None,
        now(),
    );
    assert!(t["rows"][0].get("object").is_none());
}

#[test]
fn every_printer_has_one_cell_per_column() {
    let kinds = [
        ("", "Pod"),
        ("", "Node"),
        ("", "Namespace"),
        ("", "Service"),
        ("", "Endpoints"),
        ("", "ConfigMap"),
        ("", "Secret"),
        ("", "ServiceAccount"),
        ("", "Event"),
        ("apps", "ReplicaSet"),
        ("apps", "DaemonSet"),
        ("apps", "Deployment"),
        ("coordination.k8s.io", "Lease"),
        ("discovery.k8s.io", "EndpointSlice"),
        ("policy", "PodDisruptionBudget"),
        ("x.io", "Y"),
    ];
    let empty = json!({"metadata": {"name": "a"}});
    for (g, k) in kinds {
        assert_eq!(
            columns(g, k).len(),
            cells(g, k, &empty, now()).len(),
            "{g}/{k}"
        );
    }
}

#[test]
fn finished_pods_rows_are_completed_and_say_why() {
    let row = |phase: &str| {
        let t = table(
            "",
            "Pod",
            &[pod(json!({"phase": phase}))],
            json!({}),
            IncludeObject::None,
            now(),
        );
        t["rows"][0].get("conditions").cloned()
    };
    let failed = row("Failed").expect("a failed pod's row has conditions");
    assert_eq!(
        failed,
        json!([{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}])
    );
    assert_eq!(row("Succeeded").unwrap()[0]["reason"], json!("Succeeded"));
    assert_eq!(row("Running"), None);
}

#[test]
fn event_columns_in_kube_apiservers_order_and_series_counts() {
    let names: Vec<&str> = columns("", "Event").iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "Last Seen",
            "Type",
            "Reason",
            "Object",
            "Subobject",
            "Source",
            "Message",
            "First Seen",
            "Count",
            "Name"
        ]
    );
    let o = json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"},
        "eventTime": ago(Duration::minutes(9)), "reportingComponent": "ctl", "reportingInstance": "ctl-1",
        "series": {"count": 7, "lastObservedTime": ago(Duration::minutes(1))}, "count": 0});
    let row = strs(&cells("", "Event", &o, now()));
    assert_eq!(row[0], "60s");
    assert_eq!(row[5], "ctl, ctl-1");
    assert_eq!(row[7], "9m");
    assert_eq!(row[8], "7");
}

#[test]
fn endpoint_slice_ports_by_number_name_or_star() {
    let es = json!({"metadata": {"name": "s"}, "addressType": "IPv4",
        "ports": [{"port": 80}, {"name": "dns"}, {}, {"port": 9}]});
    assert_eq!(
        strs(&cells("discovery.k8s.io", "EndpointSlice", &es, now()))[2..4],
        ["80,dns,* + 1 more...", "<unset>"]
    );
}
