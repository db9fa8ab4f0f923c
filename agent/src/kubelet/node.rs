//! The Node object and its heartbeats, as kubelet keeps them: registration with
//! capacity, allocatable, addresses and node info; conditions (Ready and the pressure
//! conditions) checked every 10 s and written when they change or once a minute; and the
//! node's Lease in kube-node-lease renewed every 10 s, which is what the control plane's
//! node lifecycle controller watches.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use podrun_cri_proto::v1 as cri;
use serde_json::json;
use tracing::{info, warn};

use super::cri::CriClient;
use super::eviction::{crossed, reserved, Signal, Threshold};

/// kubelet's node-status-update-frequency and lease renewal interval.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// The status is written at least this often even when nothing changed.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// kubelet's node lease duration.
pub const LEASE_SECONDS: i32 = 40;
/// The Kubernetes release whose kubelet API this agent serves.
pub const KUBELET_VERSION: &str = "v1.33.0";

/// What the host has, read from /proc and the filesystem.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostFacts {
    pub cpus: u64,
    pub memory_bytes: u64,
    pub memory_available: u64,
    pub disk_bytes: u64,
    pub disk_available: u64,
    pub pids_max: u64,
    pub pids_used: u64,
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
    pub kernel: String,
    pub os_image: String,
    pub arch: String,
}

/// What the CRI runtime says of itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeFacts {
    /// `<runtime_name>://<runtime_version>`.
    pub version: String,
    /// None when ready; the reason otherwise.
    pub not_ready: Option<String>,
}

/// The node's fixed settings.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
    pub max_pods: u32,
    pub cgroup_driver: String,
    pub taints: Vec<Taint>,
    pub labels: BTreeMap<String, String>,
    /// Hard eviction thresholds: they come off allocatable and set the pressure
    /// conditions.
    pub eviction: Vec<Threshold>,
}

pub fn read_host(root_dir: &Path) -> HostFacts {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    let (disk_bytes, disk_available) = nix::sys::statvfs::statvfs(root_dir)
        .map(|s| {
            let f = s.fragment_size();
            (s.blocks() * f, s.blocks_available() * f)
        })
        .unwrap_or((0, 0));
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let os_image = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".into());
    let pids_used = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count() as u64
        })
        .unwrap_or(0);
    HostFacts {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1),
        memory_bytes: kib("MemTotal:"),
        memory_available: kib("MemAvailable:"),
        disk_bytes,
        disk_available,
        pids_max: read("/proc/sys/kernel/pid_max").parse().unwrap_or(32768),
        pids_used,
        machine_id: read("/etc/machine-id"),
        system_uuid: read("/sys/class/dmi/id/product_uuid"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        os_image,
        arch: go_arch(std::env::consts::ARCH).to_owned(),
    }
}

/// Kubernetes names architectures as Go does.
pub fn go_arch(rust: &str) -> &str {
    match rust {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

pub async fn read_runtime(cri: &CriClient) -> RuntimeFacts {
    let mut rt = cri.runtime.clone();
    let version = match rt.version(cri::VersionRequest::default()).await {
        Ok(v) => {
            let v = v.into_inner();
            format!("{}://{}", v.runtime_name, v.runtime_version)
        }
        Err(e) => {
            return RuntimeFacts {
                version: String::new(),
                not_ready: Some(format!("container runtime is down: {}", e.message())),
            }
        }
    };
    let not_ready = match rt.status(cri::StatusRequest { verbose: false }).await {
        Ok(s) => {
            let conds = s
                .into_inner()
                .status
                .map(|s| s.conditions)
                .unwrap_or_default();
            let mut missing = Vec::new();
            for want in ["RuntimeReady", "NetworkReady"] {
                match conds.iter().find(|c| c.r#type == want) {
                    Some(c) if c.status => {}
                    Some(c) => missing.push(format!(
                        "{want}=false reason:{} message:{}",
                        c.reason, c.message
                    )),
                    None => missing.push(format!("{want} missing")),
                }
            }
            (!missing.is_empty()).then(|| {
                format!(
                    "container runtime status check may not have completed yet: {}",
                    missing.join(", ")
                )
            })
        }
        Err(e) => Some(format!(
            "container runtime status check failed: {}",
            e.message()
        )),
    };
    RuntimeFacts { version, not_ready }
}

fn quantity(v: u64) -> Quantity {
    Quantity(v.to_string())
}

fn kib_quantity(bytes: u64) -> Quantity {
    Quantity(format!("{}Ki", bytes / 1024))
}

/// The Node as registered: metadata, spec and the static part of its status.
pub fn node_object(s: &NodeSettings) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), s.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "kubernetes.io/arch".to_owned(),
            go_arch(std::env::consts::ARCH).to_owned(),
        ),
        ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "beta.kubernetes.io/arch".to_owned(),
            go_arch(std::env::consts::ARCH).to_owned(),
        ),
    ]);
    labels.extend(s.labels.clone());
    Node {
        metadata: kube::api::ObjectMeta {
            name: Some(s.name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "volumes.kubernetes.io/controller-managed-attach-detach".to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: (!s.taints.is_empty()).then(|| s.taints.clone()),
            ..Default::default()
        }),
        status: None,
    }
}

/// The status for this moment; the conditions keep their transition times from `prev`
/// when they did not change.
pub fn node_status(
    s: &NodeSettings,
    host: &HostFacts,
    runtime: &RuntimeFacts,
    prev: Option<&NodeStatus>,
    now: jiff::Timestamp,
) -> NodeStatus {
    let capacity = BTreeMap::from([
        ("cpu".to_owned(), quantity(host.cpus)),
        ("memory".to_owned(), kib_quantity(host.memory_bytes)),
        ("pods".to_owned(), quantity(s.max_pods as u64)),
        (
            "ephemeral-storage".to_owned(),
            kib_quantity(host.disk_bytes),
        ),
        ("hugepages-2Mi".to_owned(), quantity(0)),
    ]);
    let mut allocatable = capacity.clone();
    allocatable.insert(
        "memory".into(),
        kib_quantity(host.memory_bytes.saturating_sub(reserved(
            &s.eviction,
            Signal::MemoryAvailable,
            host.memory_bytes,
        ))),
    );
    // As kubelet: the eviction threshold comes off, and the result is in bytes.
    allocatable.insert(
        "ephemeral-storage".into(),
        quantity(host.disk_bytes.saturating_sub(reserved(
            &s.eviction,
            Signal::NodefsAvailable,
            host.disk_bytes,
        ))),
    );
    let crossed: Vec<Signal> = crossed(&s.eviction, host)
        .iter()
        .map(|t| t.signal)
        .collect();
    let memory_pressure = crossed.contains(&Signal::MemoryAvailable);
    let disk_pressure = crossed.contains(&Signal::NodefsAvailable);
    let pid_pressure = crossed.contains(&Signal::PidAvailable);
    let cond = |type_: &str, status: bool, reason: &str, message: &str| {
        let status = if status { "True" } else { "False" };
        let old = prev
            .and_then(|p| p.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
        let transition = match old {
            Some(o) if o.status == status => o.last_transition_time.clone(),
            _ => Some(Time(now)),
        };
        NodeCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: transition,
        }
    };
    let conditions = vec![
        if memory_pressure {
            cond(
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            cond(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if disk_pressure {
            cond(
                "DiskPressure",
                true,
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            cond(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        if pid_pressure {
            cond(
                "PIDPressure",
                true,
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            )
        } else {
            cond(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            )
        },
        match &runtime.not_ready {
            None => cond(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status",
            ),
            Some(why) => cond("Ready", false, "KubeletNotReady", why),
        },
    ];
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        conditions: Some(conditions),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: s.ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: s.name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(s.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            machine_id: host.machine_id.clone(),
            system_uuid: host.system_uuid.clone(),
            boot_id: host.boot_id.clone(),
            kernel_version: host.kernel.clone(),
            os_image: host.os_image.clone(),
            container_runtime_version: runtime.version.clone(),
            kubelet_version: KUBELET_VERSION.into(),
            kube_proxy_version: String::new(),
            operating_system: "linux".into(),
            architecture: host.arch.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// True when the status differs from the last one written in more than heartbeats.
pub fn changed(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    };
    strip(a) != strip(b)
}

/// Registers the node (or takes over its existing object, as a restarted kubelet does),
/// then keeps its status and Lease current until `shutdown`.
pub async fn run(
    client: Client,
    settings: NodeSettings,
    cri: CriClient,
    root_dir: std::path::PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    registered: tokio::sync::watch::Sender<Option<Node>>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut last: Option<(NodeStatus, std::time::Instant)> = None;
    let mut node_uid: Option<String> = None;
    loop {
        if node_uid.is_none() {
            match register(&nodes, &settings).await {
                Ok(n) => {
                    node_uid = n.metadata.uid.clone();
                    info!(node = %settings.name, "node registered");
                    let _ = registered.send(Some(n));
                }
                Err(e) => warn!(node = %settings.name, error = %e, "node registration"),
            }
        }
        if let Some(uid) = &node_uid {
            let host = read_host(&root_dir);
            let runtime = read_runtime(&cri).await;
            let status = node_status(
                &settings,
                &host,
                &runtime,
                last.as_ref().map(|(s, _)| s),
                jiff::Timestamp::now(),
            );
            let due = match &last {
                None => true,
                Some((prev, at)) => changed(prev, &status) || at.elapsed() >= REPORT_INTERVAL,
            };
            if due {
                let patch = json!({ "status": status });
                match nodes
                    .patch_status(
                        &settings.name,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(n) => {
                        last = Some((status, std::time::Instant::now()));
                        let _ = registered.send(Some(n));
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        warn!(node = %settings.name, "the Node object is gone: registering again");
                        node_uid = None;
                        last = None;
                        continue;
                    }
                    Err(e) => warn!(node = %settings.name, error = %e, "node status"),
                }
            }
            if let Err(e) = renew_lease(&leases, &settings.name, uid).await {
                warn!(node = %settings.name, error = %e, "node lease");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(STATUS_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn register(nodes: &Api<Node>, s: &NodeSettings) -> Result<Node, kube::Error> {
    match nodes.create(&PostParams::default(), &node_object(s)).await {
        Ok(n) => Ok(n),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // The node existed: bring its labels and taints up to date, as kubelet
            // reconciles its own labels on registration.
            let want = node_object(s);
            let mut patch = json!({ "metadata": { "labels": want.metadata.labels } });
            if !s.taints.is_empty() {
                patch["spec"] = json!({ "taints": s.taints });
            }
            nodes
                .patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
        Err(e) => Err(e),
    }
}

async fn renew_lease(leases: &Api<Lease>, node: &str, node_uid: &str) -> Result<(), kube::Error> {
    let now = MicroTime(jiff::Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(node.to_owned()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(now),
        ..Default::default()
    };
    match leases.get_opt(node).await? {
        Some(mut lease) => {
            lease.spec = Some(LeaseSpec {
                acquire_time: lease.spec.as_ref().and_then(|s| s.acquire_time.clone()),
                ..spec
            });
            leases.replace(node, &PostParams::default(), &lease).await?;
        }
        None => {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(node.to_owned()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: node.to_owned(),
                        uid: node_uid.to_owned(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> NodeSettings {
        NodeSettings {
            name: "w1-k8s".into(),
            ip: "192.168.1.101".parse().unwrap(),
            port: 10250,
            max_pods: 110,
            cgroup_driver: "cgroupfs".into(),
            taints: vec![],
            labels: BTreeMap::new(),
            eviction: super::super::eviction::defaults(),
        }
    }

    fn host() -> HostFacts {
        HostFacts {
            cpus: 2,
            memory_bytes: 4 << 30,
            memory_available: 3 << 30,
            disk_bytes: 100 << 30,
            disk_available: 50 << 30,
            pids_max: 32768,
            pids_used: 200,
            kernel: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            arch: "amd64".into(),
            ..Default::default()
        }
    }

    fn ready() -> RuntimeFacts {
        RuntimeFacts {
            version: "podrun://0.1.0".into(),
            not_ready: None,
        }
    }

    fn condition<'a>(s: &'a NodeStatus, t: &str) -> &'a NodeCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn capacity_allocatable_and_info() {
        let t = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let s = node_status(&settings(), &host(), &ready(), None, t);
        let cap = s.capacity.as_ref().unwrap();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, "4194304Ki");
        assert_eq!(cap["pods"].0, "110");
        let alloc = s.allocatable.as_ref().unwrap();
        assert_eq!(
            alloc["memory"].0,
            format!("{}Ki", 4 * 1024 * 1024 - 100 * 1024)
        );
        assert_eq!(
            alloc["ephemeral-storage"].0,
            ((100u64 << 30) * 9 / 10).to_string()
        );
        let info = s.node_info.as_ref().unwrap();
        assert_eq!(info.container_runtime_version, "podrun://0.1.0");
        assert_eq!(info.architecture, "amd64");
        assert_eq!(condition(&s, "Ready").status, "True");
        assert_eq!(
            condition(&s, "Ready").reason.as_deref(),
            Some("KubeletReady")
        );
        assert_eq!(condition(&s, "MemoryPressure").status, "False");
        let port = s.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port;
        assert_eq!(port, 10250);
        assert_eq!(s.addresses.unwrap()[0].address, "192.168.1.101");
    }

    #[test]
    fn transitions_keep_their_time_and_heartbeats_are_not_changes() {
        let t0 = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = jiff::Timestamp::from_second(1_700_000_010).unwrap();
        let a = node_status(&settings(), &host(), &ready(), None, t0);
        let b = node_status(&settings(), &host(), &ready(), Some(&a), t1);
        assert!(!changed(&a, &b));
        assert_eq!(condition(&b, "Ready").last_transition_time, Some(Time(t0)));
        assert_eq!(condition(&b, "Ready").last_heartbeat_time, Some(Time(t1)));
        let down = RuntimeFacts {
            version: "podrun://0.1.0".into(),
            not_ready: Some("container runtime is down".into()),
        };
        let c = node_status(&settings(), &host(), &down, Some(&b), t1);
        assert!(changed(&b, &c));
        assert_eq!(condition(&c, "Ready").status, "False");
        assert_eq!(condition(&c, "Ready").last_transition_time, Some(Time(t1)));
    }

    #[test]
    fn pressure_follows_the_eviction_thresholds() {
        let t = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let mut h = host();
        h.memory_available = 50 << 20;
        h.disk_available = 5 << 30;
        let s = node_status(&settings(), &h, &ready(), None, t);
        assert_eq!(condition(&s, "MemoryPressure").status, "True");
        assert_eq!(condition(&s, "DiskPressure").status, "True");
        assert_eq!(condition(&s, "PIDPressure").status, "False");
    }

    #[test]
    fn registration_carries_labels_and_taints() {
        let mut s = settings();
        s.taints.push(Taint {
            key: "node-role.kubernetes.io/control-plane".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        let n = node_object(&s);
        let labels = n.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "w1-k8s");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(n.spec.unwrap().taints.unwrap().len(), 1);
    }
}
