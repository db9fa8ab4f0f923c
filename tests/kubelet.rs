//! `podrun agent` as the node's kubelet: agents join `podrun server` with a bootstrap
//! token, each in a network namespace of its own, and real kubectl runs pods on them:
//! `get nodes`, `run`, `get pods -o wide`, `describe`, restarts and back-off, image pull
//! failures, graceful deletion, an agent killed and restarted. Every test ends with the
//! leak check on every node.

// Both harnesses carry the record of which tests ran.
#![allow(clippy::duplicate_mod)]

mod common;
mod kubelet_common;
mod server_common;

use kubelet_common::Cluster;
use serde_json::Value;

fn container_status(p: &Value) -> Option<&Value> {
    p["status"]["containerStatuses"].get(0)
}

fn waiting_reason(p: &Value) -> Option<String> {
    container_status(p)?["state"]["waiting"]["reason"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn nodes_join_and_run_pods() {
    let Some(mut c) = Cluster::start("nodes_join_and_run_pods", &["w1-k8s", "w2-k8s"]) else {
        return;
    };

    // The nodes as kubectl shows them.
    let nodes: Value = serde_json::from_str(&c.ok(&["get", "nodes", "-o", "json"])).unwrap();
    for n in nodes["items"].as_array().unwrap() {
        let name = n["metadata"]["name"].as_str().unwrap();
        let info = &n["status"]["nodeInfo"];
        assert!(
            info["containerRuntimeVersion"]
                .as_str()
                .unwrap()
                .starts_with("podrun://"),
            "{info}"
        );
        assert_eq!(info["operatingSystem"], "linux");
        assert_eq!(n["status"]["capacity"]["pods"], "110");
        let ip = n["status"]["addresses"][0]["address"].as_str().unwrap();
        let node = c.nodes.iter().find(|x| x.name == name).unwrap();
        assert_eq!(
            ip, node.ip,
            "the InternalIP is the address the server is reached from"
        );
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/hostname"], name);
        // The node's Lease is renewed in kube-node-lease.
        let lease = c.ok(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            name,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        assert_eq!(lease, name);
    }
    let wide = c.ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.contains("podrun://"), "{wide}");

    // kubectl run, as the tutorials do it: the image comes through the node's mirror.
    c.ok(&["run", "nginx-pod", "--image=nginx"]);
    let (ip, node) = c.wait_pod("nginx-pod", "Running with an IP", |p| {
        (p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()).then(|| {
            (
                p["status"]["podIP"].as_str().unwrap().to_owned(),
                p["spec"]["nodeName"].as_str().unwrap().to_owned(),
            )
        })
    });
    let wide = c.ok(&["get", "pods", "-o", "wide"]);
    let line = wide.lines().find(|l| l.starts_with("nginx-pod")).unwrap();
    assert!(
        line.contains(&ip) && line.contains(&node) && line.contains("1/1"),
        "{wide}"
    );
    let n = c.nodes.iter().find(|n| n.name == node).unwrap();
    assert!(
        ip.starts_with(&n.net.subnet_prefix),
        "{ip} is in {node}'s pod network"
    );
    // The pod answers on its IP, from its node.
    let got = n.exec(&["curl", "-s", "-m", "10", &format!("http://{ip}/")]);
    assert!(
        String::from_utf8_lossy(&got.stdout)
            .to_lowercase()
            .contains("nginx"),
        "curl {ip}: {}{}",
        String::from_utf8_lossy(&got.stdout),
        String::from_utf8_lossy(&got.stderr)
    );
    let pod = c.pod("nginx-pod").unwrap();
    let cs = container_status(&pod).unwrap();
    assert!(
        cs["containerID"].as_str().unwrap().starts_with("podrun://"),
        "{cs}"
    );
    assert_eq!(cs["ready"], true);
    assert_eq!(cs["started"], true);
    assert!(cs["imageID"].as_str().unwrap().contains("sha256:"), "{cs}");
    assert_eq!(pod["status"]["qosClass"], "BestEffort");
    assert_eq!(pod["status"]["hostIP"], n.ip.as_str());
    for cond in [
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodReadyToStartContainers",
    ] {
        let ok = pod["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["type"] == cond && x["status"] == "True");
        assert!(ok, "{cond} is True: {}", pod["status"]);
    }
    let described = c.ok(&["describe", "pod", "nginx-pod"]);
    for reason in ["Scheduled", "Pulling", "Pulled", "Created", "Started"] {
        assert!(
            described.contains(reason),
            "describe shows {reason}:\n{described}"
        );
    }

    // A container that keeps failing: restarts with growing back-off.
    c.ok(&[
        "run",
        "crash",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "echo dying; exit 3",
    ]);
    c.wait_pod("crash", "CrashLoopBackOff after two restarts", |p| {
        let cs = container_status(p)?;
        (cs["restartCount"].as_i64()? >= 2
            && waiting_reason(p).as_deref() == Some("CrashLoopBackOff"))
        .then_some(())
    });
    let pod = c.pod("crash").unwrap();
    let last = &container_status(&pod).unwrap()["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 3, "{last}");
    assert_eq!(last["reason"], "Error", "{last}");
    let described = c.ok(&["describe", "pod", "crash"]);
    assert!(described.contains("BackOff"), "{described}");
    // Logs through the API server and the node's kubelet API: the last run's, and the
    // one before.
    assert!(c.ok(&["logs", "crash"]).contains("dying"));
    assert!(c.ok(&["logs", "crash", "--previous"]).contains("dying"));

    // An image no registry has.
    let missing = format!("{}/nope/missing:1", c.registry.host());
    c.ok(&["run", "nope", &format!("--image={missing}")]);
    c.wait_pod("nope", "ImagePullBackOff", |p| {
        (waiting_reason(p).as_deref() == Some("ImagePullBackOff")).then_some(())
    });
    let described = c.ok(&["describe", "pod", "nope"]);
    assert!(described.contains("Failed to pull image"), "{described}");

    // Run to completion.
    c.ok(&[
        "run",
        "once",
        "--image=busybox",
        "--restart=Never",
        "--",
        "true",
    ]);
    c.wait_pod("once", "Succeeded", |p| {
        (p["status"]["phase"] == "Succeeded").then_some(())
    });
    let pod = c.pod("once").unwrap();
    assert_eq!(
        container_status(&pod).unwrap()["state"]["terminated"]["reason"],
        "Completed"
    );

    // Graceful deletion: the kubelet stops the pod, then removes the object.
    c.ok(&["delete", "pod", "nginx-pod", "--wait=true"]);
    assert!(c.pod("nginx-pod").is_none());

    // An agent killed with -9 and started again adopts the pods it ran.
    c.ok(&["run", "keeper", "--image=busybox", "--", "sleep", "3600"]);
    let (node, id) = c.wait_pod("keeper", "Running", |p| {
        (p["status"]["phase"] == "Running").then(|| {
            (
                p["spec"]["nodeName"].as_str().unwrap().to_owned(),
                container_status(p).unwrap()["containerID"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
    });
    let n = c.node(&node);
    n.kill_hard();
    let before = n.log_text().len();
    n.restart();
    let n = c.nodes.iter().find(|x| x.name == node).unwrap();
    server_common::wait_until(
        "the restarted agent to adopt keeper",
        kubelet_common::SLOW,
        || {
            let log = n.log_text();
            log[before..]
                .lines()
                .any(|l| l.contains("adopting the pod's sandbox") && l.contains("keeper"))
                .then_some(())
        },
    );
    // exec through the API server, after the agent's restart.
    let out = c.ok(&[
        "exec",
        "keeper",
        "--",
        "sh",
        "-c",
        "echo hello from $(hostname)",
    ]);
    assert_eq!(out.trim(), "hello from keeper");
    let pod = c.pod("keeper").unwrap();
    assert_eq!(pod["status"]["phase"], "Running");
    let cs = container_status(&pod).unwrap();
    assert_eq!(
        cs["containerID"].as_str().unwrap(),
        id,
        "the same container, adopted"
    );
    assert_eq!(cs["restartCount"], 0);

    c.finish();
}

/// The Ready condition's status.
fn ready(p: &Value) -> Option<&str> {
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
}

#[test]
fn probes_gate_readiness_and_restart_the_unhealthy() {
    let Some(c) = Cluster::start(
        "probes_gate_readiness_and_restart_the_unhealthy",
        &["p1-k8s"],
    ) else {
        return;
    };
    // Ready only once /tmp/ready exists (3 s in); alive while /tmp/ok exists (until 8 s
    // in, then it fails and is restarted, which starts the clock again).
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: busybox
    command: ["sh", "-c", "rm -f /tmp/ready; touch /tmp/ok; (sleep 3; touch /tmp/ready; sleep 5; rm /tmp/ok) & exec httpd -f -p 8080 -h /tmp"]
    readinessProbe:
      httpGet: { path: /ready, port: 8080 }
      periodSeconds: 1
    livenessProbe:
      exec: { command: ["test", "-f", "/tmp/ok"] }
      periodSeconds: 1
      failureThreshold: 2
"#;
    let out = c
        .server
        .kubectl_stdin(&c.k, &["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Running but not Ready while the readiness probe fails.
    c.wait_pod("probed", "Running and not Ready", |p| {
        (p["status"]["phase"] == "Running" && ready(p) == Some("False")).then_some(())
    });
    c.wait_pod("probed", "Ready once the probe passes", |p| {
        (ready(p) == Some("True")).then_some(())
    });
    // The liveness probe fails: the container is restarted.
    c.wait_pod("probed", "a restart after the liveness probe failed", |p| {
        (container_status(p)?["restartCount"].as_i64()? >= 1).then_some(())
    });
    let described = c.ok(&["describe", "pod", "probed"]);
    assert!(described.contains("Readiness probe failed"), "{described}");
    assert!(described.contains("Liveness probe failed"), "{described}");
    assert!(
        described.contains("failed liveness probe, will be restarted"),
        "{described}"
    );
    c.finish();
}

#[test]
fn config_secrets_downward_api_and_memory_limits() {
    let Some(c) = Cluster::start("config_secrets_downward_api_and_memory_limits", &["c1-k8s"])
    else {
        return;
    };
    c.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=MODE=fast",
        "--from-literal=app.conf=color=blue",
    ]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=s3cr3t",
    ]);
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata:
  name: configured
  labels: { app: configured, tier: backend }
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: busybox
    command: ["sleep", "3600"]
    env:
    - { name: MODE, valueFrom: { configMapKeyRef: { name: settings, key: MODE } } }
    - { name: PASSWORD, valueFrom: { secretKeyRef: { name: creds, key: password } } }
    - { name: NODE, valueFrom: { fieldRef: { fieldPath: spec.nodeName } } }
    - { name: POD_IP, valueFrom: { fieldRef: { fieldPath: status.podIP } } }
    - { name: GREETING, value: "mode-$(MODE)" }
    resources: { limits: { memory: 64Mi, cpu: 500m } }
    volumeMounts:
    - { name: conf, mountPath: /etc/app }
    - { name: creds, mountPath: /etc/creds, readOnly: true }
    - { name: info, mountPath: /etc/info }
    - { name: scratch, mountPath: /scratch }
  volumes:
  - { name: conf, configMap: { name: settings, items: [{ key: app.conf, path: app.conf }] } }
  - { name: creds, secret: { secretName: creds, defaultMode: 0400 } }
  - { name: info, downwardAPI: { items: [{ path: labels, fieldRef: { fieldPath: metadata.labels } }] } }
  - { name: scratch, emptyDir: {} }
---
apiVersion: v1
kind: Pod
metadata:
  name: hog
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: busybox
    command: ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived"]
    resources: { limits: { memory: 32Mi } }
"#;
    let out = c
        .server
        .kubectl_stdin(&c.k, &["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ip = c.wait_pod("configured", "Running", |p| {
        (p["status"]["phase"] == "Running")
            .then(|| p["status"]["podIP"].as_str().unwrap_or("").to_owned())
    });
    let env = c.ok(&["exec", "configured", "--", "env"]);
    for want in [
        "MODE=fast",
        "PASSWORD=s3cr3t",
        "NODE=c1-k8s",
        "GREETING=mode-fast",
        &format!("POD_IP={ip}"),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} in:\n{env}");
    }
    let files = c.ok(&["exec", "configured", "--", "sh", "-c", "cat /etc/app/app.conf; echo; cat /etc/creds/password; echo; cat /etc/info/labels; echo; stat -L -c %a /etc/creds/password; touch /scratch/x && echo writable"]);
    assert!(files.contains("color=blue"), "{files}");
    assert!(files.contains("s3cr3t"), "{files}");
    assert!(
        files.contains("app=\"configured\"") && files.contains("tier=\"backend\""),
        "{files}"
    );
    assert!(files.contains("400"), "{files}");
    assert!(files.contains("writable"), "{files}");
    let pod = c.pod("configured").unwrap();
    // Limits only: requests default to them, so the pod is Guaranteed.
    assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    // A changed ConfigMap reaches the running pod's volume.
    c.ok(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"app.conf":"color=green"}}"#,
    ]);
    server_common::wait_until(
        "the volume to show the new ConfigMap",
        kubelet_common::SLOW,
        || {
            let out = c.kubectl(&["exec", "configured", "--", "cat", "/etc/app/app.conf"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("color=green")
                .then_some(())
        },
    );

    // Over its memory limit: killed by the kernel, reported as OOMKilled.
    c.wait_pod("hog", "OOMKilled", |p| {
        let t = &container_status(p)?["state"]["terminated"];
        (t["reason"] == "OOMKilled").then_some(())
    });
    assert_eq!(c.pod("hog").unwrap()["status"]["phase"], "Failed");
    c.finish();
}

#[test]
fn static_pods_run_from_manifest_files() {
    let Some(c) = Cluster::start("static_pods_run_from_manifest_files", &["s1-k8s"]) else {
        return;
    };
    let node = &c.nodes[0];
    let manifest = node.manifests.join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: web\n    image: busybox\n    command: [\"httpd\", \"-f\", \"-p\", \"8080\"]\n",
    )
    .unwrap();
    // A bad manifest next to it is skipped, and named in the log.
    std::fs::write(node.manifests.join("broken.yaml"), "kind: Deployment\n").unwrap();
    // The mirror pod shows the static pod, named after the node, running.
    let (uid, id) = c.wait_pod("web-s1-k8s", "the mirror Running", |p| {
        (p["status"]["phase"] == "Running").then(|| {
            (
                p["metadata"]["uid"].as_str().unwrap().to_owned(),
                container_status(p).unwrap()["containerID"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
    });
    let pod = c.pod("web-s1-k8s").unwrap();
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/config.source"],
        "file"
    );
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert!(
        node.log_text().contains("broken.yaml"),
        "{}",
        node.log_text()
    );
    // Deleting the mirror does not stop the pod; the mirror comes back.
    c.ok(&["delete", "pod", "web-s1-k8s", "--wait=false"]);
    c.wait_pod("web-s1-k8s", "a new mirror", |p| {
        (p["metadata"]["uid"] != uid.as_str() && p["status"]["phase"] == "Running").then_some(())
    });
    let pod = c.pod("web-s1-k8s").unwrap();
    assert_eq!(
        container_status(&pod).unwrap()["containerID"],
        id.as_str(),
        "the same container"
    );
    // Removing the file stops the pod and removes the mirror.
    std::fs::remove_file(&manifest).unwrap();
    server_common::wait_until("the static pod to go", kubelet_common::SLOW, || {
        c.pod("web-s1-k8s").is_none().then_some(())
    });
    c.finish();
}

/// Running pods of a Deployment's pods by node, from `get pods -o wide`.
fn running_by_node(c: &Cluster, prefix: &str) -> std::collections::BTreeMap<String, usize> {
    let out = c.ok(&[
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.spec.nodeName} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    let mut by_node = std::collections::BTreeMap::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 3 && f[0].starts_with(prefix) && f[1] == "Running" {
            *by_node.entry(f[2].to_owned()).or_insert(0) += 1;
        }
    }
    by_node
}

#[test]
fn deployments_roll_out_and_drain_on_real_nodes() {
    let Some(c) = Cluster::start(
        "deployments_roll_out_and_drain_on_real_nodes",
        &["d1-k8s", "d2-k8s"],
    ) else {
        return;
    };
    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=4",
        "--",
        "sleep",
        "3600",
    ]);
    server_common::wait_until("4 running pods on both nodes", kubelet_common::SLOW, || {
        let by = running_by_node(&c, "web-");
        (by.values().sum::<usize>() == 4 && by.len() == 2).then_some(())
    });
    // A new template rolls out through real restarts of real pods.
    c.ok(&["set", "image", "deployment/web", "busybox=nginx"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    // The old pods terminate gracefully (sleep ignores SIGTERM: the grace period runs out).
    server_common::wait_until("only the new pods", kubelet_common::SLOW, || {
        let images = c.ok(&[
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ]);
        let all: Vec<&str> = images.split_whitespace().collect();
        (all.len() == 4 && all.iter().all(|i| *i == "nginx")).then_some(())
    });
    // Drain one node: its pods come up on the other.
    c.ok(&["drain", "d1-k8s", "--ignore-daemonsets", "--timeout=120s"]);
    server_common::wait_until("all pods on d2-k8s", kubelet_common::SLOW, || {
        let by = running_by_node(&c, "web-");
        (by.get("d2-k8s") == Some(&4) && by.len() == 1).then_some(())
    });
    c.ok(&["uncordon", "d1-k8s"]);
    c.ok(&["delete", "deployment", "web"]);
    c.finish();
}

#[test]
fn a_stopped_agent_makes_its_node_unknown_and_its_pods_move() {
    let Some(mut c) = Cluster::start(
        "a_stopped_agent_makes_its_node_unknown_and_its_pods_move",
        &["u1-k8s", "u2-k8s"],
    ) else {
        return;
    };
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: mover
spec:
  replicas: 2
  selector: { matchLabels: { app: mover } }
  template:
    metadata: { labels: { app: mover } }
    spec:
      terminationGracePeriodSeconds: 2
      tolerations:
      - { key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2 }
      - { key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2 }
      containers:
      - { name: app, image: busybox, command: ["sleep", "3600"] }
"#;
    let out = c
        .server
        .kubectl_stdin(&c.k, &["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server_common::wait_until("a pod on each node", kubelet_common::SLOW, || {
        let by = running_by_node(&c, "mover-");
        (by.len() == 2).then_some(())
    });
    // The agent stops (its pods keep running); its Lease is no longer renewed.
    c.node("u1-k8s").stop();
    server_common::wait_until("u1-k8s to turn Unknown", kubelet_common::SLOW, || {
        let s = c.ok(&[
            "get",
            "node",
            "u1-k8s",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (s == "Unknown").then_some(())
    });
    server_common::wait_until("both pods running on u2-k8s", kubelet_common::SLOW, || {
        let by = running_by_node(&c, "mover-");
        (by.get("u2-k8s") == Some(&2)).then_some(())
    });
    // Back again: the node is Ready, and the pod evicted while it was away is stopped
    // and removed by its kubelet.
    c.node("u1-k8s").restart();
    c.wait_ready(&["u1-k8s"]);
    server_common::wait_until("the evicted pod to be gone", kubelet_common::SLOW, || {
        let out = c.ok(&["get", "pods", "-o", "jsonpath={.items[*].spec.nodeName}"]);
        (!out.contains("u1-k8s")).then_some(())
    });
    c.ok(&["delete", "deployment", "mover"]);
    c.finish();
}

#[test]
fn memory_pressure_refuses_and_evicts_pods() {
    // A threshold no host meets: the node is under memory pressure from the start.
    let Some(c) = Cluster::start_with_args(
        "memory_pressure_refuses_and_evicts_pods",
        &["e1-k8s"],
        &["--eviction-hard", "memory.available<1000Ti"],
    ) else {
        return;
    };
    server_common::wait_until("MemoryPressure=True", kubelet_common::SLOW, || {
        let s = c.ok(&[
            "get",
            "node",
            "e1-k8s",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"MemoryPressure\")].status}",
        ]);
        (s == "True").then_some(())
    });
    // Bound by name (the scheduler would keep pods off a node under pressure).
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata: { name: besteffort }
spec:
  nodeName: e1-k8s
  containers: [{ name: c, image: busybox, command: ["sleep", "3600"] }]
---
apiVersion: v1
kind: Pod
metadata: { name: burstable }
spec:
  nodeName: e1-k8s
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: busybox
    command: ["sleep", "3600"]
    resources: { requests: { memory: 8Mi } }
"#;
    let out = c
        .server
        .kubectl_stdin(&c.k, &["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (pod, message) in [
        ("besteffort", "The node had condition: [MemoryPressure]."),
        ("burstable", "The node was low on resource: memory."),
    ] {
        let status = c.wait_pod(pod, "Failed/Evicted", |p| {
            (p["status"]["phase"] == "Failed" && p["status"]["reason"] == "Evicted")
                .then(|| p["status"].clone())
        });
        assert!(
            status["message"].as_str().unwrap_or("").contains(message),
            "{pod}: {status}"
        );
    }
    // Evicted pods are not restarted; their containers are stopped.
    let described = c.ok(&["describe", "pod", "burstable"]);
    assert!(described.contains("Evicted"), "{described}");
    c.finish();
}
