//! `podrun agent`: the CRI server, and with `--server` or `--kubeconfig` the node's
//! kubelet as well.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use podrun_agent::kubelet::{ApiAccess, KubeletConfig, DEFAULT_MAX_PODS, DEFAULT_PORT};

use crate::Cli;

/// The kubelet half's options, named as kubelet's where they match.
#[derive(clap::Args, Debug, Clone)]
pub struct KubeletArgs {
    /// The API server to join, as https://HOST:6443 (with --token).
    #[arg(long, env = "PODRUN_SERVER", requires = "token")]
    server: Option<String>,
    /// A bootstrap token (`podrun server token create`), exchanged for the node's own
    /// credential on first start.
    #[arg(
        long,
        env = "PODRUN_TOKEN",
        requires = "server",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The cluster CA to trust the server with [default: <root>/server/pki/ca.crt,
    /// which exists on the control-plane host].
    #[arg(long, env = "PODRUN_CERTIFICATE_AUTHORITY")]
    certificate_authority: Option<PathBuf>,
    /// A kubeconfig with the node's credential, instead of --server and --token.
    #[arg(long, env = "PODRUN_KUBECONFIG", conflicts_with = "server")]
    kubeconfig: Option<PathBuf>,
    /// The node's name [default: the hostname].
    #[arg(long, env = "PODRUN_NODE_NAME")]
    node_name: Option<String>,
    /// The node's InternalIP [default: the address the API server is reached from].
    #[arg(long, env = "PODRUN_NODE_IP")]
    node_ip: Option<IpAddr>,
    /// The CRI runtime the pods run on [default: this agent's own socket].
    #[arg(long, env = "PODRUN_RUNTIME_ENDPOINT")]
    runtime_endpoint: Option<String>,
    /// The kubelet API's address.
    #[arg(long, env = "PODRUN_KUBELET_ADDRESS", default_value = "0.0.0.0")]
    address: IpAddr,
    /// The kubelet API's port.
    #[arg(long = "kubelet-port", env = "PODRUN_KUBELET_PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Pods this node accepts.
    #[arg(long, env = "PODRUN_MAX_PODS", default_value_t = DEFAULT_MAX_PODS)]
    max_pods: u32,
    /// Static pods: Pod manifests the node runs on its own, mirrored to the API.
    #[arg(
        long,
        env = "PODRUN_POD_MANIFEST_PATH",
        default_value = "/etc/podrun/manifests"
    )]
    pod_manifest_path: PathBuf,
    /// Hard eviction thresholds, as kubelet's: signal<quantity or percent, comma-separated.
    #[arg(
        long,
        env = "PODRUN_EVICTION_HARD",
        default_value = "memory.available<100Mi,nodefs.available<10%,pid.available<10%"
    )]
    eviction_hard: String,
    /// Taints the node registers with, as key[=value]:Effect, comma-separated.
    #[arg(long, value_delimiter = ',')]
    register_with_taints: Vec<String>,
    /// Labels the node registers with, as key=value, comma-separated.
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Run this node's part of the cluster network: the pod CIDR the control plane
    /// assigns, routes to the other nodes' pods, Services and cluster DNS.
    #[arg(long, env = "PODRUN_CLUSTER_NETWORK", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    cluster_network: bool,
    /// The pod network of the whole cluster (the server's --cluster-cidr): pod traffic
    /// leaving it is masqueraded.
    #[arg(long, env = "PODRUN_CLUSTER_CIDR", default_value = "172.16.0.0/16")]
    cluster_cidr: ipnet::IpNet,
    /// How pod traffic crosses between nodes: host-gw (routes through the nodes'
    /// addresses; nodes share a link) or vxlan (a tunnel; nodes need only reach each other).
    #[arg(
        long,
        alias = "backend",
        env = "PODRUN_NETWORK_BACKEND",
        default_value = "host-gw"
    )]
    network_backend: podrun_agent::network::Backend,
    /// The cluster DNS servers written to pods' resolv.conf (comma-separated); this
    /// node's agent answers on the first.
    #[arg(
        long,
        env = "PODRUN_CLUSTER_DNS",
        value_delimiter = ',',
        default_value = "10.96.0.10"
    )]
    cluster_dns: Vec<std::net::IpAddr>,
    /// The cluster's DNS domain.
    #[arg(long, env = "PODRUN_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
        .to_lowercase()
}

/// `key[=value]:Effect`.
fn parse_taint(s: &str) -> Result<podrun_agent::kubelet::Taint> {
    let (kv, effect) = s
        .rsplit_once(':')
        .with_context(|| format!("--register-with-taints {s:?}: expected key[=value]:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        bail!("--register-with-taints {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (kv, None),
    };
    if key.is_empty() {
        bail!("--register-with-taints {s:?}: the key is empty");
    }
    Ok(podrun_agent::kubelet::Taint {
        key: key.to_owned(),
        value,
        effect: effect.to_owned(),
        time_added: None,
    })
}

fn kubelet_config(cli: &Cli, socket: &Path, a: &KubeletArgs) -> Result<Option<KubeletConfig>> {
    let access = match (&a.kubeconfig, &a.server, &a.token) {
        (Some(path), _, _) => ApiAccess::Kubeconfig(path.clone()),
        (None, Some(server), Some(token)) => ApiAccess::Bootstrap {
            server: server.clone(),
            token: token.clone(),
            ca_file: a
                .certificate_authority
                .clone()
                .unwrap_or_else(|| cli.root.join("server/pki/ca.crt")),
        },
        _ => return Ok(None),
    };
    let node_name = a.node_name.clone().unwrap_or_else(hostname);
    if node_name.is_empty()
        || node_name.len() > 253
        || !node_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        bail!("--node-name {node_name:?}: must be a lowercase DNS subdomain name");
    }
    let mut labels = BTreeMap::new();
    for l in &a.node_labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--node-labels {l:?}: expected key=value"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok(Some(KubeletConfig {
        node_name,
        access,
        runtime_endpoint: a
            .runtime_endpoint
            .clone()
            .unwrap_or_else(|| format!("unix://{}", socket.display())),
        state_dir: cli.root.join("agent"),
        address: a.address,
        port: a.port,
        node_ip: a.node_ip,
        pod_manifest_path: a.pod_manifest_path.clone(),
        max_pods: a.max_pods,
        cgroup_driver: cli.cgroup_driver.clone(),
        root_dir: cli.root.clone(),
        cgroup_root: format!("/{}", cli.cgroup_root),
        pod_logs_dir: cli.log_root.clone(),
        taints: a
            .register_with_taints
            .iter()
            .map(|t| parse_taint(t))
            .collect::<Result<_>>()?,
        labels,
        eviction_hard: podrun_agent::kubelet::eviction::parse(&a.eviction_hard)
            .map_err(anyhow::Error::msg)?,
        cluster_network: a.cluster_network.then_some(a.cluster_cidr),
        network_backend: a.network_backend,
        cluster_dns: a.cluster_dns.clone(),
        cluster_domain: a.cluster_domain.trim_end_matches('.').to_owned(),
    }))
}

pub fn agent(
    cli: &Cli,
    socket: &Path,
    stream_addr: &SocketAddr,
    kubelet: &KubeletArgs,
) -> Result<ExitCode> {
    let runtime = super::runtime_config(cli)?;
    let config = podrun_agent::AgentConfig {
        runtime,
        socket: socket.to_owned(),
        stream_addr: *stream_addr,
        kubelet: kubelet_config(cli, socket, kubelet)?,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("podrun-agent")
        .build()
        .context("start the async runtime")?
        .block_on(podrun_agent::run(config))
        .context("podrun agent")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints() {
        let t = parse_taint("node-role.kubernetes.io/control-plane:NoSchedule").unwrap();
        assert_eq!(t.key, "node-role.kubernetes.io/control-plane");
        assert_eq!(t.value, None);
        let t = parse_taint("dedicated=gpu:NoExecute").unwrap();
        assert_eq!(t.value.as_deref(), Some("gpu"));
        assert!(parse_taint("x:Sometimes").is_err());
        assert!(parse_taint("novalue").is_err());
    }
}
