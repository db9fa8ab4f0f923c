//! Simulated nodes for the control-plane tests: a thread that registers Nodes, renews
//! their Leases and Ready heartbeats, and does what a kubelet does to the pods bound to
//! them through the API (Running and Ready with a pod IP; a pod being deleted is
//! removed). A node can be made to stop, as a powered-off machine does.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

pub struct SimNodes {
    stopped: Arc<Mutex<HashSet<String>>>,
    quit: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimNodes {
    /// Registers `names` (2 CPUs, 4 GiB, 110 pods each) and keeps them alive.
    pub fn start(kubeconfig: &Path, names: &[&str]) -> SimNodes {
        let kubeconfig = kubeconfig.to_path_buf();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let stopped = Arc::new(Mutex::new(HashSet::new()));
        let quit = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, q) = (stopped.clone(), quit.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
                let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .unwrap();
                let client = Client::try_from(config).unwrap();
                for (i, n) in names.iter().enumerate() {
                    register(&client, n, i).await;
                }
                ready_tx.send(()).unwrap();
                let mut beat = 0u32;
                while !q.load(Ordering::Relaxed) {
                    let alive: Vec<(usize, String)> = {
                        let stopped = s.lock().unwrap();
                        names
                            .iter()
                            .enumerate()
                            .filter(|(_, n)| !stopped.contains(*n))
                            .map(|(i, n)| (i, n.clone()))
                            .collect()
                    };
                    if beat.is_multiple_of(10) {
                        for (_, n) in &alive {
                            heartbeat(&client, n).await;
                        }
                    }
                    beat += 1;
                    run_pods(&client, &alive).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("simulated nodes registered");
        SimNodes {
            stopped,
            quit,
            thread: Some(thread),
        }
    }

    /// The node stops heartbeating and stops running pods, as if powered off.
    pub fn power_off(&self, name: &str) {
        self.stopped.lock().unwrap().insert(name.to_string());
    }

    pub fn stop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

async fn register(client: &Client, name: &str, i: usize) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        "spec": {},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({"status": {
        "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        "addresses": [{"type": "InternalIP", "address": format!("10.250.0.{}", i + 1)},
                      {"type": "Hostname", "address": name}],
        "conditions": [ready_condition()],
        "nodeInfo": {"kubeletVersion": "v1.33.0", "containerRuntimeVersion": "podrun://sim",
            "kernelVersion": "", "osImage": "", "operatingSystem": "linux", "architecture": "amd64",
            "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""}
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn ready_condition() -> serde_json::Value {
    json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "kubelet is posting ready status", "lastHeartbeatTime": now(), "lastTransitionTime": now()})
}

async fn heartbeat(client: &Client, name: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
        "renewTime": MicroTime(jiff::Timestamp::now())}});
    if leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&renew))
        .await
        .is_err()
    {
        let mut lease: Lease = serde_json::from_value(renew).unwrap();
        lease.metadata.name = Some(name.to_string());
        let _ = leases.create(&PostParams::default(), &lease).await;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": {"conditions": [ready_condition()]}});
    let _ = nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await;
}

/// What a kubelet does for the pods bound to the live nodes.
async fn run_pods(client: &Client, alive: &[(usize, String)]) {
    let pods: Api<Pod> = Api::all(client.clone());
    let Ok(list) = pods.list(&ListParams::default()).await else {
        return;
    };
    let index: BTreeMap<&str, usize> = alive.iter().map(|(i, n)| (n.as_str(), *i)).collect();
    for (seq, pod) in list.items.iter().enumerate() {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let Some(&i) = index.get(node) else { continue };
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            let _ = api
                .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                .await;
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase == Some("Running") {
            continue;
        }
        let uid = pod.uid().unwrap_or_default();
        let host = uid
            .bytes()
            .fold(seq, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let ip = format!("172.16.{}.{}", i + 1, host % 250 + 2);
        let containers: Vec<serde_json::Value> = pod
            .spec
            .as_ref()
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| {
                        json!({
                "name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
                "restartCount": 0, "containerID": format!("podrun://{}-{}", uid, c.name),
                "state": {"running": {"startedAt": now()}}})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let status = json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": format!("10.250.0.{}", i + 1),
            "startTime": now(),
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now()},
                {"type": "Ready", "status": "True", "lastTransitionTime": now()},
            ],
            "containerStatuses": containers,
        }});
        let _ = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(status),
            )
            .await;
    }
}
