//! The scheduler and the controllers of `podrun server`, driven by the tutorials'
//! kubectl commands verbatim (PyPI's kubectl 1.37) against three simulated nodes:
//! Deployments roll out, keep their history and roll back; a ReplicaSet heals; scale
//! spreads pods; cordon and drain move them; a node that stops heartbeating loses its
//! pods to the others.

mod server_common;

use std::collections::BTreeMap;
use std::time::Duration;

use server_common::simnode::SimNodes;
use server_common::{kubectls, mark_ran, wait_until, Kubectl, Server};

const NODES: [&str; 3] = ["w1-k8s", "w2-k8s", "w3-k8s"];

/// Long enough for a rollout on a loaded machine; each wait ends as soon as its
/// condition holds.
const ROLLOUT: Duration = Duration::from_secs(120);

fn setup(test: &str) -> Option<(Kubectl, Server, SimNodes)> {
    let k = kubectls(test)?.pop()?;
    mark_ran();
    let server = Server::start(&[]);
    let nodes = SimNodes::start(&server.kubeconfig, &NODES);
    Some((k, server, nodes))
}

/// Running pods by node, for pods whose name starts with `prefix`.
fn running_by_node(server: &Server, k: &Kubectl, prefix: &str) -> BTreeMap<String, usize> {
    let out = server.ok(
        k,
        &[
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.spec.nodeName} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ],
    );
    let mut by_node = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 3 && f[0].starts_with(prefix) && f[1] == "Running" {
            *by_node.entry(f[2].to_string()).or_insert(0) += 1;
        }
    }
    by_node
}

fn total(m: &BTreeMap<String, usize>) -> usize {
    m.values().sum()
}

fn finish(mut server: Server, mut nodes: SimNodes) {
    nodes.stop();
    server.stop();
}

#[test]
fn deployments_roll_out_record_history_and_roll_back() {
    let Some((k, server, nodes)) = setup("deployments_roll_out_record_history_and_roll_back")
    else {
        return;
    };
    let manifest = server.write(
        "rollout-nginx.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: rollout-nginx
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx-pods
  template:
    metadata:
      labels:
        app: nginx-pods
    spec:
      containers:
      - name: nginx
        image: nginx:1.15.12
",
    );
    let m = manifest.to_str().unwrap();
    server.ok(&k, &["apply", "-f", m, "--record"]);
    let status = server.ok(
        &k,
        &[
            "rollout",
            "status",
            "deployment",
            "rollout-nginx",
            "--timeout=120s",
        ],
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    let placed = running_by_node(&server, &k, "rollout-nginx-");
    assert_eq!(total(&placed), 3, "{placed:?}");

    server.ok(
        &k,
        &[
            "set",
            "image",
            "deployment",
            "rollout-nginx",
            "nginx=nginx:1.16.0",
            "--record",
        ],
    );
    let status = server.ok(
        &k,
        &[
            "rollout",
            "status",
            "deployment",
            "rollout-nginx",
            "--timeout=120s",
        ],
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    let images = server.ok(
        &k,
        &[
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
    );
    wait_until("the old pods to go", ROLLOUT, || {
        let images = server.ok(
            &k,
            &[
                "get",
                "pods",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ],
        );
        (images.split_whitespace().count() == 3
            && images.split_whitespace().all(|i| i == "nginx:1.16.0"))
        .then_some(())
    });
    let _ = images;

    let history = server.ok(&k, &["rollout", "history", "deployment", "rollout-nginx"]);
    let rev = |n: &str| {
        history
            .lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .unwrap_or_else(|| panic!("revision {n} missing:\n{history}"))
            .to_string()
    };
    assert!(rev("1").contains("kubectl apply"), "{history}");
    assert!(
        rev("2").contains("set image deployment rollout-nginx nginx=nginx:1.16.0"),
        "{history}"
    );

    let out = server.ok(
        &k,
        &[
            "rollout",
            "undo",
            "deployment",
            "rollout-nginx",
            "--to-revision=1",
        ],
    );
    assert!(out.contains("rolled back"), "{out}");
    let status = server.ok(
        &k,
        &[
            "rollout",
            "status",
            "deployment",
            "rollout-nginx",
            "--timeout=120s",
        ],
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    let image = server.ok(
        &k,
        &[
            "get",
            "deployment",
            "rollout-nginx",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    );
    assert_eq!(image.trim(), "nginx:1.15.12");
    let history = server.ok(&k, &["rollout", "history", "deployment", "rollout-nginx"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["2", "3"], "revision 1 became 3:\n{history}");
    let describe = server.ok(&k, &["describe", "deployment", "rollout-nginx"]);
    let new_rs = describe
        .lines()
        .find(|l| l.starts_with("NewReplicaSet:"))
        .unwrap_or_else(|| panic!("{describe}"));
    assert!(new_rs.contains("(3/3 replicas created)"), "{new_rs}");
    assert!(describe.contains("ScalingReplicaSet"), "{describe}");
    finish(server, nodes);
}

#[test]
fn replicasets_heal_and_scale_spreads_cordon_and_drain_move_pods() {
    let Some((k, server, nodes)) =
        setup("replicasets_heal_and_scale_spreads_cordon_and_drain_move_pods")
    else {
        return;
    };
    let rs = server.write(
        "rs.yaml",
        "apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: rs-nginx
spec:
  replicas: 3
  selector:
    matchLabels:
      app: rs-nginx
  template:
    metadata:
      labels:
        app: rs-nginx
    spec:
      containers:
      - name: nginx
        image: nginx
",
    );
    server.ok(&k, &["apply", "-f", rs.to_str().unwrap()]);
    let names = |server: &Server| -> Vec<String> {
        server
            .ok(
                &k,
                &[
                    "get",
                    "pods",
                    "-l",
                    "app=rs-nginx",
                    "-o",
                    "jsonpath={.items[*].metadata.name}",
                ],
            )
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    wait_until("three running pods", ROLLOUT, || {
        (total(&running_by_node(&server, &k, "rs-nginx-")) == 3).then_some(())
    });
    // A deleted pod is replaced.
    let first = names(&server);
    server.ok(&k, &["delete", "pod", &first[0]]);
    wait_until("a replacement", ROLLOUT, || {
        let now = names(&server);
        (now.len() == 3 && !now.contains(&first[0])).then_some(())
    });
    // A pod whose label is edited away is released and replaced.
    let victim = names(&server)[0].clone();
    server.ok(&k, &["label", "pod", &victim, "app=debug", "--overwrite"]);
    wait_until("the released pod to be replaced", ROLLOUT, || {
        (names(&server).len() == 3).then_some(())
    });
    let owners = server.ok(
        &k,
        &[
            "get",
            "pod",
            &victim,
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ],
    );
    assert!(
        owners.trim().is_empty() || owners.trim() == "[]",
        "still owned: {owners}"
    );
    server.ok(&k, &["delete", "pod", &victim]);

    // scale spreads over the workers.
    server.ok(
        &k,
        &[
            "create",
            "deployment",
            "echo-hname",
            "--image=sysnet4admin/echo-hname",
        ],
    );
    server.ok(&k, &["scale", "deployment", "echo-hname", "--replicas=10"]);
    let spread = wait_until("ten running echo-hname pods", ROLLOUT, || {
        let m = running_by_node(&server, &k, "echo-hname-");
        (total(&m) == 10).then_some(m)
    });
    assert_eq!(spread.len(), 3, "all three workers used: {spread:?}");
    assert!(
        spread.values().all(|n| *n >= 3),
        "spread evenly: {spread:?}"
    );

    // cordon: SchedulingDisabled, and no new pods there.
    server.ok(&k, &["cordon", "w1-k8s"]);
    let nodes_out = server.ok(&k, &["get", "nodes"]);
    let w1 = nodes_out.lines().find(|l| l.starts_with("w1-k8s")).unwrap();
    assert!(w1.contains("Ready,SchedulingDisabled"), "{nodes_out}");
    let on_w1 = spread["w1-k8s"];
    server.ok(&k, &["scale", "deployment", "echo-hname", "--replicas=16"]);
    let after = wait_until("sixteen running pods", ROLLOUT, || {
        let m = running_by_node(&server, &k, "echo-hname-");
        (total(&m) == 16).then_some(m)
    });
    assert_eq!(
        after["w1-k8s"], on_w1,
        "nothing new on the cordoned node: {after:?}"
    );

    // drain evicts everything from w3; the ReplicaSets bring the pods back elsewhere.
    let out = server.ok(&k, &["drain", "w3-k8s", "--ignore-daemonsets"]);
    assert!(out.contains("drained"), "{out}");
    let drained = wait_until("the drained pods to come back on w2", ROLLOUT, || {
        let m = running_by_node(&server, &k, "echo-hname-");
        (total(&m) == 16 && !m.contains_key("w3-k8s")).then_some(m)
    });
    assert_eq!(drained["w1-k8s"], on_w1, "{drained:?}");
    server.ok(&k, &["uncordon", "w1-k8s"]);
    server.ok(&k, &["uncordon", "w3-k8s"]);
    let nodes_out = server.ok(&k, &["get", "nodes"]);
    assert!(!nodes_out.contains("SchedulingDisabled"), "{nodes_out}");

    // Deleting the ReplicaSet takes its pods with it.
    server.ok(&k, &["delete", "rs", "rs-nginx"]);
    wait_until("the ReplicaSet's pods to go", ROLLOUT, || {
        names(&server).is_empty().then_some(())
    });
    finish(server, nodes);
}

#[test]
fn a_node_that_stops_heartbeating_loses_its_pods_to_the_others() {
    let Some((k, server, nodes)) =
        setup("a_node_that_stops_heartbeating_loses_its_pods_to_the_others")
    else {
        return;
    };
    // Short tolerations of the not-ready/unreachable taints, so that the eviction
    // follows the 40 s grace period at once rather than after 300 s.
    let d = server.write(
        "web.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 6
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      tolerations:
      - key: node.kubernetes.io/unreachable
        operator: Exists
        effect: NoExecute
        tolerationSeconds: 1
      - key: node.kubernetes.io/not-ready
        operator: Exists
        effect: NoExecute
        tolerationSeconds: 1
      containers:
      - name: web
        image: nginx
",
    );
    server.ok(&k, &["apply", "-f", d.to_str().unwrap()]);
    let before = wait_until("six running pods", ROLLOUT, || {
        let m = running_by_node(&server, &k, "web-");
        (total(&m) == 6).then_some(m)
    });
    assert!(before.contains_key("w2-k8s"), "{before:?}");
    nodes.power_off("w2-k8s");
    wait_until("w2-k8s to be NotReady", ROLLOUT, || {
        let out = server.ok(&k, &["get", "nodes"]);
        out.lines()
            .any(|l| l.starts_with("w2-k8s") && l.split_whitespace().nth(1) == Some("NotReady"))
            .then_some(())
    });
    let taints = server.ok(
        &k,
        &[
            "get",
            "node",
            "w2-k8s",
            "-o",
            "jsonpath={.spec.taints[*].key}",
        ],
    );
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
    // The pods on w2 are evicted (they stay Terminating: no kubelet confirms) and
    // replaced on the live nodes.
    let after = wait_until("six running pods off w2-k8s", ROLLOUT, || {
        let m = running_by_node(&server, &k, "web-");
        let live: usize = m
            .iter()
            .filter(|(n, _)| *n != "w2-k8s")
            .map(|(_, c)| c)
            .sum();
        (live == 6).then_some(m)
    });
    assert!(!after.contains_key("w2-k8s"), "{after:?}");
    finish(server, nodes);
}

#[test]
fn a_separate_controller_manager_drives_a_server_without_controllers() {
    let test = "a_separate_controller_manager_drives_a_server_without_controllers";
    let Some(k) = kubectls(test).and_then(|mut v| v.pop()) else {
        return;
    };
    mark_ran();
    let mut server = Server::start_full(&[], None, &["--controllers=false"]);
    let mut nodes = SimNodes::start(&server.kubeconfig, &NODES);
    server.ok(
        &k,
        &[
            "create",
            "deployment",
            "solo",
            "--image=nginx",
            "--replicas=2",
        ],
    );
    // Nothing happens without controllers: the server alone makes no ReplicaSet.
    let rs = server.ok(&k, &["get", "rs", "-o", "name"]);
    assert!(rs.trim().is_empty(), "{rs}");
    let log = server.root.join("controller-manager.log");
    let mut cm = std::process::Command::new(env!("CARGO_BIN_EXE_podrun"))
        .args(["controller-manager", "--kubeconfig"])
        .arg(&server.kubeconfig)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .expect("start podrun controller-manager");
    let placed = wait_until("two running pods", ROLLOUT, || {
        let m = running_by_node(&server, &k, "solo-");
        (total(&m) == 2).then_some(m)
    });
    assert_eq!(total(&placed), 2);
    let leases = server.ok(
        &k,
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    );
    assert!(
        leases.contains("kube-controller-manager") && leases.contains("kube-scheduler"),
        "{leases}"
    );
    // SIGTERM, by PID: it stops cleanly.
    let pid = nix::unistd::Pid::from_raw(cm.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_until("the controller-manager to exit", ROLLOUT, || {
        cm.try_wait().unwrap()
    });
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
    );
    nodes.stop();
    server.stop();
}
