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
pub mod node;
pub mod podconfig;
pub mod pods;
pub mod prober;
pub mod status;
pub mod volumes;

use std::net::IpAddr;
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
}
