//! The pod row: READY, the STATUS kubectl users know (Init:0/1, CrashLoopBackOff,
//! Completed, Terminating), RESTARTS with the time of the last one, and the wide columns.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{age, col, name, since, wide, Column, AGE, NAME};

pub const COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "The aggregate readiness state of this pod for accepting traffic."),
    col("Status", "The aggregate status of the containers in this pod."),
    col("Restarts", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
    AGE,
    wide("IP", "The IP address assigned to the pod."),
    wide("Node", "The name of the node this pod is scheduled on."),
    wide("Nominated Node", "The name of the node nominated for this pod, if any."),
    wide("Readiness Gates", "The readiness gates of the pod."),
];

fn last_restart(c: &Value) -> Option<DateTime<Utc>> {
    c["lastState"]["terminated"]["finishedAt"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn exit_text(t: &Value, prefix: &str) -> String {
    match t["signal"].as_i64().filter(|s| *s != 0) {
        Some(s) => format!("{prefix}Signal:{s}"),
        None => format!("{prefix}ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
    }
}

pub fn cells(pod: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let spec = &pod["spec"];
    let status = &pod["status"];
    let mut restarts = 0;
    let mut last: Option<DateTime<Utc>> = None;
    let mut note = |c: &Value, restarts: &mut i64| {
        *restarts += c["restartCount"].as_i64().unwrap_or(0);
        if let Some(t) = last_restart(c) {
            if last.is_none_or(|l| t > l) {
                last = Some(t);
            }
        }
    };
    let init_specs = spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| c["name"] == name && c["restartPolicy"] == "Always")
    };
    let mut total = spec["containers"].as_array().map(Vec::len).unwrap_or(0) as i64;
    total += init_specs
        .iter()
        .filter(|c| c["restartPolicy"] == "Always")
        .count() as i64;
    let mut ready = 0;
    let mut reason = status["reason"]
        .as_str()
        .or(status["phase"].as_str())
        .unwrap_or("")
        .to_string();
    let mut initializing = false;
    let inits = status["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, c) in inits.iter().enumerate() {
        note(c, &mut restarts);
        let term = &c["state"]["terminated"];
        let waiting = &c["state"]["waiting"];
        let cname = c["name"].as_str().unwrap_or("");
        if term.is_object() && term["exitCode"].as_i64() == Some(0) {
            continue;
        }
        if sidecar(cname) && c["started"] == true {
            if c["ready"] == true {
                ready += 1;
            }
            continue;
        }
        if term.is_object() {
            reason = match term["reason"].as_str().filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None => exit_text(term, "Init:"),
            };
        } else if let Some(r) = waiting["reason"]
            .as_str()
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }
    let initialized = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    if !initializing || initialized {
        restarts = 0;
        for c in inits
            .iter()
            .filter(|c| sidecar(c["name"].as_str().unwrap_or("")))
        {
            note(c, &mut restarts);
        }
        let mut running = false;
        for c in status["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .rev()
        {
            note(c, &mut restarts);
            let (w, t) = (&c["state"]["waiting"], &c["state"]["terminated"]);
            if let Some(r) = w["reason"].as_str().filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if let Some(r) = t["reason"].as_str().filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if t.is_object() {
                reason = exit_text(t, "");
            } else if c["ready"] == true && c["state"]["running"].is_object() {
                running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && running {
            let pod_ready = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
        }
    }
    let terminal = matches!(status["phase"].as_str(), Some("Succeeded" | "Failed"));
    if pod["metadata"]["deletionTimestamp"].is_string() {
        if status["reason"] == "NodeLost" {
            reason = "Unknown".into();
        } else if !terminal {
            reason = "Terminating".into();
        }
    }
    let restarts_text = match last {
        Some(t) if restarts != 0 => {
            format!("{restarts} ({} ago)", since(&json!(t.to_rfc3339()), now))
        }
        _ => restarts.to_string(),
    };
    let none = |v: &Value| {
        v.as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("<none>")
            .to_string()
    };
    let ip = status["podIPs"][0]["ip"]
        .as_str()
        .map(|s| json!(s))
        .unwrap_or(json!(none(&status["podIP"])));
    let gates = match spec["readinessGates"].as_array() {
        Some(g) if !g.is_empty() => {
            let conds = status["conditions"].as_array().cloned().unwrap_or_default();
            let met = g
                .iter()
                .filter(|gate| {
                    conds
                        .iter()
                        .any(|c| c["type"] == gate["conditionType"] && c["status"] == "True")
                })
                .count();
            format!("{met}/{}", g.len())
        }
        _ => "<none>".into(),
    };
    vec![
        json!(name(pod)),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_text),
        age(pod, now),
        ip,
        json!(none(&spec["nodeName"])),
        json!(none(&status["nominatedNodeName"])),
        json!(gates),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: Value) -> Value {
        json!({ "metadata": { "name": "p", "creationTimestamp": "2026-01-01T00:00:00Z" },
                "spec": { "initContainers": [{ "name": "init" }], "containers": [{ "name": "a" }, { "name": "b" }] },
                "status": status })
    }

    fn status_of(p: &Value) -> (String, String, String) {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = cells(p, now);
        (
            c[1].as_str().unwrap().into(),
            c[2].as_str().unwrap().into(),
            c[3].as_str().unwrap().into(),
        )
    }

    #[test]
    fn pending_initializing_running_crashing_and_terminating() {
        assert_eq!(
            status_of(&pod(json!({ "phase": "Pending" }))),
            ("0/2".into(), "Pending".into(), "0".into())
        );
        let init = pod(
            json!({ "phase": "Pending", "initContainerStatuses": [{ "name": "init", "state": { "running": {} }, "restartCount": 0 }] }),
        );
        assert_eq!(status_of(&init).1, "Init:0/1");
        let crash = pod(json!({ "phase": "Running",
            "initContainerStatuses": [{ "name": "init", "state": { "terminated": { "exitCode": 0 } } }],
            "containerStatuses": [
                { "name": "a", "ready": true, "state": { "running": {} }, "restartCount": 0 },
                { "name": "b", "ready": false, "restartCount": 4, "state": { "waiting": { "reason": "CrashLoopBackOff" } },
                  "lastState": { "terminated": { "exitCode": 1, "finishedAt": "2026-01-01T00:05:00Z" } } }] }));
        assert_eq!(
            status_of(&crash),
            ("1/2".into(), "CrashLoopBackOff".into(), "4 (5m ago)".into())
        );
        let mut gone = crash.clone();
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:09:00Z");
        assert_eq!(status_of(&gone).1, "Terminating");
    }
}
