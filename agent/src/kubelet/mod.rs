//! The kubelet half of the agent: it joins a control plane (a bootstrap token exchanged
//! for the node's own client certificate), registers the Node and renews its Lease,
//! runs the pods bound to the node through a CRI client, writes their status, and
//! serves the kubelet API (logs, exec, attach, port-forward) that the API server
//! proxies to. It speaks the Kubernetes API through kube-rs and k8s-openapi, so it can
//! join kube-apiserver as well as `podrun server`, and drives pods only through CRI, so
//! it can drive containerd as well as podrun's own runtime.

pub mod api;
pub mod bootstrap;
pub mod cri;
pub mod events;
pub mod eviction;
pub mod node;
pub mod podconfig;
pub mod pods;
pub mod prober;
pub mod static_pods;
pub mod status;
pub mod volumes;

use std::net::IpAddr;

pub use k8s_openapi::api::core::v1::Taint;
use std::path::PathBuf;

/// kubelet's default for `--max-pods`.
pub const DEFAULT_MAX_PODS: u32 = 110;
/// kubelet's API port.
pub const DEFAULT_PORT: u16 = 10250;

/// How the agent reaches the API server.
#[derive(Clone, Debug)]
pub enum ApiAccess {
    /// A kubeconfig with the node's own credential.
    Kubeconfig(PathBuf),
    /// Join with a bootstrap token: the server's URL and its CA, to trust it with.
    Bootstrap {
        server: String,
        token: String,
        ca_file: PathBuf,
    },
}

#[derive(Clone, Debug)]
pub struct KubeletConfig {
    pub node_name: String,
    pub access: ApiAccess,
    /// The CRI endpoint pods are run through (`unix:///...`).
    pub runtime_endpoint: String,
    /// The node's credential and the kubelet API's serving certificate live here.
    pub state_dir: PathBuf,
    /// The kubelet API's address and port.
    pub address: IpAddr,
    pub port: u16,
    /// The node's InternalIP; found from the route to the API server when not given.
    pub node_ip: Option<IpAddr>,
    /// Static pods.
    pub pod_manifest_path: PathBuf,
    pub max_pods: u32,
    /// `cgroupfs` or `systemd`, as reported in the Node's info.
    pub cgroup_driver: String,
    /// Where to check disk space for the Node's ephemeral-storage capacity.
    pub root_dir: PathBuf,
    /// The cgroup the pods' QoS cgroups go under (kubelet's --cgroup-root).
    pub cgroup_root: String,
    /// Containers' log files (kubelet writes /var/log/pods).
    pub pod_logs_dir: PathBuf,
    /// Registered with the Node (kubelet's --register-with-taints and --node-labels).
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Hard eviction thresholds (kubelet's --eviction-hard).
    pub eviction_hard: Vec<eviction::Threshold>,
    /// The cluster CIDR when this node runs its part of the cluster network (pod CIDR,
    /// routes, Services, DNS); None leaves the network to others.
    pub cluster_network: Option<ipnet::IpNet>,
    /// How pod traffic crosses between nodes.
    pub network_backend: crate::network::Backend,
    /// kubelet's --cluster-dns and --cluster-domain.
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("{0}")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("{0}")]
    Cri(#[from] cri::CriError),
    #[error("container runtime at {endpoint}: {message}")]
    Runtime { endpoint: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node IP: {0}")]
    NodeIp(String),
    #[error("kubelet API: {0}")]
    Api(String),
}

/// The address this host reaches `url` from: the node's InternalIP, as kubelet picks it
/// when `--node-ip` is not given.
pub fn route_source(url: &http::Uri) -> Result<IpAddr, KubeletError> {
    let host = url
        .host()
        .ok_or_else(|| KubeletError::NodeIp(format!("{url}: no host")))?
        .trim_matches(['[', ']']);
    let port = url.port_u16().unwrap_or(443);
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| KubeletError::NodeIp(format!("{host}: {e}")))?
        .next()
        .ok_or_else(|| KubeletError::NodeIp(format!("{host}: no address")))?;
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = std::net::UdpSocket::bind(bind).map_err(|e| KubeletError::NodeIp(e.to_string()))?;
    sock.connect(target)
        .map_err(|e| KubeletError::NodeIp(format!("no route to {target}: {e}")))?;
    let ip = sock
        .local_addr()
        .map_err(|e| KubeletError::NodeIp(e.to_string()))?
        .ip();
    if ip.is_loopback() && !target.ip().is_loopback() {
        return Err(KubeletError::NodeIp(format!(
            "the route to {target} leaves from loopback"
        )));
    }
    Ok(ip)
}

/// Joins the cluster and runs the node until `shutdown`: the Node and its Lease, the
/// pods bound to it, and the kubelet API.
pub async fn run(
    cfg: KubeletConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), KubeletError> {
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| KubeletError::Io { path, source }
    };
    std::fs::create_dir_all(&cfg.state_dir).map_err(io(&cfg.state_dir))?;
    let (client, kube_config) =
        bootstrap::client(&cfg.access, &cfg.node_name, &cfg.state_dir).await?;
    let cri = cri::connect(&cfg.runtime_endpoint)?;
    // The runtime may still be starting (it is this agent's own socket, or a service).
    let mut version = None;
    let mut last_err = String::new();
    for _ in 0..60 {
        match cri
            .runtime
            .clone()
            .version(podrun_cri_proto::v1::VersionRequest::default())
            .await
        {
            Ok(v) => {
                version = Some(v.into_inner());
                break;
            }
            Err(e) => last_err = e.message().to_owned(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let version = version.ok_or_else(|| KubeletError::Runtime {
        endpoint: cfg.runtime_endpoint.clone(),
        message: last_err,
    })?;
    let node_ip = match cfg.node_ip {
        Some(ip) => ip,
        None => route_source(&kube_config.cluster_url)?,
    };
    let host = node::read_host(&cfg.root_dir);
    let settings = node::NodeSettings {
        name: cfg.node_name.clone(),
        ip: node_ip,
        port: cfg.port,
        max_pods: cfg.max_pods,
        cgroup_driver: cfg.cgroup_driver.clone(),
        taints: cfg.taints.clone(),
        labels: cfg.labels.clone(),
        eviction: cfg.eviction_hard.clone(),
    };
    tracing::info!(
        node = %cfg.node_name,
        server = %kube_config.cluster_url,
        node_ip = %node_ip,
        runtime = %format!("{}://{}", version.runtime_name, version.runtime_version),
        "kubelet starting"
    );
    let (registered_tx, mut registered) = tokio::sync::watch::channel(None);
    let node_task = tokio::spawn(node::run(
        client.clone(),
        settings,
        cri.clone(),
        cfg.root_dir.clone(),
        shutdown.clone(),
        registered_tx,
    ));
    // Pods are run once the node exists, as kubelet does.
    while registered.borrow_and_update().is_none() {
        if registered.changed().await.is_err() {
            return Ok(());
        }
    }
    let ctx = podconfig::NodeContext {
        node_name: cfg.node_name.clone(),
        node_ip: node_ip.to_string(),
        cgroup_root: cfg.cgroup_root.clone(),
        cgroup_driver: cfg.cgroup_driver.clone(),
        pod_logs_dir: cfg.pod_logs_dir.clone(),
        memory_capacity: host.memory_bytes,
        cluster_dns: cfg.cluster_dns.clone(),
        cluster_domain: cfg.cluster_domain.clone(),
    };
    if let Some(cluster_cidr) = cfg.cluster_network {
        let (ready_tx, mut ready) = tokio::sync::watch::channel(None);
        tokio::spawn(crate::network::run(
            client.clone(),
            crate::network::ClusterNetConfig {
                node_name: cfg.node_name.clone(),
                node_ip,
                backend: cfg.network_backend,
                cluster_cidr,
                cluster_dns: cfg.cluster_dns.first().copied(),
            },
            cri.clone(),
            ready_tx,
            shutdown.clone(),
        ));
        // Pods get addresses from the node's range: wait a while for the control plane
        // to assign it, as a network plugin holds pods until it is ready.
        let wait = ready.wait_for(|r| r.is_some());
        if tokio::time::timeout(std::time::Duration::from_secs(20), wait)
            .await
            .is_err()
        {
            tracing::warn!(
                node = %cfg.node_name,
                "no pod CIDR from the control plane after 20 s; pods use the runtime's own network"
            );
        }
        // Services, as kube-proxy programs them; the cluster DNS address is answered
        // here, so it gets no rules.
        let proxy = crate::proxy::ProxyConfig {
            node_name: cfg.node_name.clone(),
            node_ips: vec![node_ip],
            cluster_cidr,
            skip_cluster_ips: cfg.cluster_dns.first().copied().into_iter().collect(),
            nft: None,
        };
        let (c, stop) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::proxy::run(c, proxy, stop).await {
                tracing::error!(error = %e, "service proxy stopped");
            }
        });
        if let Some(dns) = cfg.cluster_dns.first().copied() {
            let mut dns_cfg = crate::dns::DnsConfig::new(vec![std::net::SocketAddr::new(dns, 53)]);
            dns_cfg.domain = cfg.cluster_domain.clone();
            tokio::spawn(serve_dns(client.clone(), dns_cfg, shutdown.clone()));
        }
    }
    let driver = match cfg.cgroup_driver.as_str() {
        "systemd" => podrun_runtime::cgroups::Driver::Systemd,
        _ => podrun_runtime::cgroups::Driver::Cgroupfs,
    };
    let (mut kubelet, probe_events) = pods::Kubelet::new(
        client,
        cri,
        ctx,
        cfg.state_dir.clone(),
        version.runtime_name,
    );
    kubelet.manifest_dir = Some(cfg.pod_manifest_path.clone());
    match podrun_runtime::cgroups::new_manager(driver) {
        Ok(m) => kubelet = kubelet.with_cgroups(m),
        Err(e) => tracing::warn!(error = %e, "cgroups: pod cgroups will not be removed"),
    }
    if driver == podrun_runtime::cgroups::Driver::Cgroupfs {
        let config = podrun_runtime::cgroups::ManagerConfig::default();
        if let Some(m) = hybrid_unified_manager(&config) {
            kubelet = kubelet.with_cgroups(m);
        }
    }
    let kubelet = std::sync::Arc::new(kubelet);
    tokio::spawn(pods::handle_probe_events(kubelet.clone(), probe_events));
    tokio::spawn(pods::evict_under_pressure(
        kubelet.clone(),
        cfg.eviction_hard.clone(),
        cfg.root_dir.clone(),
        shutdown.clone(),
    ));

    // The kubelet API, for the API server's logs, exec, attach and port-forward.
    let client_ca = cluster_ca_pem(&kube_config)?;
    let (cert, key) = serving_cert(&cfg.state_dir, &cfg.node_name, node_ip)?;
    let tls =
        api::tls_config(&client_ca, &cert, &key).map_err(|e| KubeletError::Api(e.to_string()))?;
    let addr = std::net::SocketAddr::new(cfg.address, cfg.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| KubeletError::Io {
            path: PathBuf::from(format!("kubelet API on {addr}")),
            source,
        })?;
    tracing::info!(addr = %addr, "kubelet API serving");
    let k2 = kubelet.clone();
    let api_task = tokio::spawn(api::serve(
        listener,
        tls,
        kubelet.cri.clone(),
        std::sync::Arc::new(move || k2.pods()),
        shutdown.clone(),
    ));
    pods::run(kubelet, shutdown).await;
    let _ = node_task.await;
    let _ = api_task.await;
    Ok(())
}

/// Cluster DNS until `shutdown`; started again when it fails (its address may not be
/// on the node yet).
async fn serve_dns(
    client: kube::Client,
    cfg: crate::dns::DnsConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match crate::dns::serve(client.clone(), cfg.clone(), shutdown.clone()).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "cluster DNS; starting again in 2 s"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

/// On a hybrid host, a manager of the unified mount. podrun's runtime leaves that mount
/// alone, but runc (under containerd or CRI-O) makes the pods' cgroups there as well as
/// in the v1 hierarchies, and kubelet removes them from both.
fn hybrid_unified_manager(
    config: &podrun_runtime::cgroups::ManagerConfig,
) -> Option<Box<dyn podrun_runtime::cgroups::CgroupManager>> {
    use podrun_runtime::cgroups::{self, Hierarchy, HostFs, V2Manager};
    let text = std::fs::read_to_string(&config.mountinfo).ok()?;
    let (hierarchy, table) = cgroups::detect_from(&text).ok()?;
    if hierarchy != Hierarchy::Hybrid {
        return None;
    }
    let fs = std::sync::Arc::new(HostFs::new(&config.mount_root));
    let m = V2Manager::from_mounts(&table, &config.mount_root, fs).ok()?;
    Some(Box::new(m))
}

/// The cluster CA of the kubeconfig, as PEM: the kubelet API trusts client
/// certificates it signed (the API server's).
fn cluster_ca_pem(config: &kube::Config) -> Result<String, KubeletError> {
    use base64::Engine;
    let ders: Vec<Vec<u8>> = match (&config.root_cert, &config.root_cert_file) {
        (Some(ders), _) => ders.clone(),
        (None, Some(file)) => {
            let pem = std::fs::read_to_string(file).map_err(|source| KubeletError::Io {
                path: file.clone(),
                source,
            })?;
            return Ok(pem);
        }
        (None, None) => Vec::new(),
    };
    if ders.is_empty() {
        return Err(KubeletError::Api(
            "the kubeconfig names no certificate authority; the kubelet API needs it to check clients".into(),
        ));
    }
    let mut pem = String::new();
    for der in ders {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    Ok(pem)
}

/// The kubelet API's self-signed serving certificate, kept under the state directory
/// and made again when the node's address changed.
fn serving_cert(
    state_dir: &std::path::Path,
    node: &str,
    ip: IpAddr,
) -> Result<(String, String), KubeletError> {
    let dir = state_dir.join("pki");
    let (crt, key, stamp) = (
        dir.join("kubelet.crt"),
        dir.join("kubelet.key"),
        dir.join("kubelet.ip"),
    );
    if let (Ok(c), Ok(k), Ok(s)) = (
        std::fs::read_to_string(&crt),
        std::fs::read_to_string(&key),
        std::fs::read_to_string(&stamp),
    ) {
        if s.trim() == ip.to_string() {
            return Ok((c, k));
        }
    }
    let (c, k) = api::self_signed(node, &[ip]).map_err(|e| KubeletError::Api(e.to_string()))?;
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| KubeletError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .map_err(io(&key))?;
    std::io::Write::write_all(&mut f, k.as_bytes()).map_err(io(&key))?;
    std::fs::write(&crt, &c).map_err(io(&crt))?;
    std::fs::write(&stamp, ip.to_string()).map_err(io(&stamp))?;
    Ok((c, k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use podrun_runtime::cgroups::ManagerConfig;

    /// A temp dir stands in for /sys/fs/cgroup, with the mounts `lines` lists.
    fn mounts(lines: &[&str]) -> (tempfile::TempDir, ManagerConfig) {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path().display().to_string();
        let mut text = String::new();
        for (i, l) in lines.iter().enumerate() {
            std::fs::create_dir_all(tmp.path().join(l.split(' ').next().unwrap())).unwrap();
            text.push_str(&format!("{i} 0 0:{i} / {r}/{l}\n"));
        }
        std::fs::write(tmp.path().join("mountinfo"), text).unwrap();
        let config = ManagerConfig {
            mount_root: tmp.path().to_path_buf(),
            mountinfo: tmp.path().join("mountinfo"),
        };
        (tmp, config)
    }

    #[test]
    fn the_unified_mount_of_a_hybrid_host_is_cleaned_too() {
        let (tmp, config) = mounts(&[
            "memory rw - cgroup cgroup rw,memory",
            "unified rw - cgroup2 cgroup2 rw",
        ]);
        let m = hybrid_unified_manager(&config).expect("a hybrid host");
        // What runc leaves in the unified mount once the pod's containers are gone.
        let pod = tmp.path().join("unified/r/kubepods/besteffort/pod1");
        std::fs::create_dir_all(pod.join("sandbox")).unwrap();
        m.remove("r/kubepods/besteffort/pod1").unwrap();
        podrun_runtime::cgroups::remove_empty_parents(m.as_ref(), "r/kubepods/besteffort/pod1");
        assert!(!tmp.path().join("unified/r").exists());
        assert!(tmp.path().join("unified").exists());

        let (_tmp, legacy) = mounts(&["memory rw - cgroup cgroup rw,memory"]);
        assert!(hybrid_unified_manager(&legacy).is_none());
        let (_tmp, unified) = mounts(&["unified rw - cgroup2 cgroup2 rw"]);
        assert!(hybrid_unified_manager(&unified).is_none());
    }
}
