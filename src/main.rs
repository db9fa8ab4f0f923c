//! `podrun`: run Kubernetes pods on this host. Argument parsing and dispatch only; the
//! work is done by the podrun-runtime library.

mod cmd;
mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "podrun", version, about = "Run Kubernetes pods on this host")]
pub struct Cli {
    /// Persistent data: images, layers, container layers, volumes.
    #[arg(
        long,
        global = true,
        env = "PODRUN_ROOT",
        default_value = "/var/lib/podrun"
    )]
    root: PathBuf,
    /// Runtime state: pods, containers, monitor sockets.
    #[arg(
        long,
        global = true,
        env = "PODRUN_STATE",
        default_value = "/run/podrun"
    )]
    state: PathBuf,
    /// Container logs (CRI format).
    #[arg(
        long,
        global = true,
        env = "PODRUN_LOG_ROOT",
        default_value = "/var/log/pods"
    )]
    log_root: PathBuf,
    /// cgroup driver: cgroupfs or systemd.
    #[arg(
        long,
        global = true,
        env = "PODRUN_CGROUP_DRIVER",
        default_value = "cgroupfs"
    )]
    cgroup_driver: String,
    /// Name of the top-level cgroup pods are placed under.
    #[arg(
        long,
        global = true,
        env = "PODRUN_CGROUP_ROOT",
        default_value = "podrun"
    )]
    cgroup_root: String,
    /// Pod networking: cni (the CNI configuration) or none (loopback only).
    #[arg(long, global = true, env = "PODRUN_NETWORK", default_value = "cni")]
    network: String,
    /// CNI network configuration directory (.conf/.conflist files).
    #[arg(
        long,
        global = true,
        env = "PODRUN_CNI_CONF_DIR",
        default_value = "/etc/cni/net.d"
    )]
    cni_conf_dir: PathBuf,
    /// Directories with CNI plugin binaries, comma-separated.
    #[arg(
        long,
        global = true,
        env = "PODRUN_CNI_BIN_DIR",
        default_value = "/opt/cni/bin,/usr/lib/cni"
    )]
    cni_bin_dir: String,
    /// Directory of containerd-style <registry>/hosts.toml files (mirrors, CAs, plain
    /// HTTP), for every pull: `podrun pull`, `podrun run` and the agent's PullImage.
    #[arg(
        long,
        global = true,
        env = "PODRUN_HOSTS_DIR",
        default_value = podrun_runtime::image::pull::DEFAULT_HOSTS_DIR
    )]
    hosts_dir: PathBuf,
    /// Maximum number of processes in one pod (its cgroup's pids.max), as kubelet's
    /// --pod-max-pids; -1 for no limit.
    #[arg(
        long,
        global = true,
        env = "PODRUN_POD_MAX_PIDS",
        default_value_t = -1,
        allow_negative_numbers = true
    )]
    pod_max_pids: i64,
    /// Namespace of the pods named on the command line.
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Configuration file: defaults for these options (flags and PODRUN_* variables win).
    #[arg(long, global = true, env = "PODRUN_CONFIG", default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pod in a YAML file (with its ConfigMaps and Secrets).
    Run {
        /// Return once the containers are running instead of streaming their logs.
        #[arg(short, long)]
        detach: bool,
        /// When to pull images: missing (only those not in the store), always, never, or
        /// policy (each container's imagePullPolicy, as kubelet does).
        #[arg(long, env = "PODRUN_PULL", default_value = "missing")]
        pull: String,
        file: PathBuf,
    },
    /// List pods.
    Pods {
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// List containers.
    Ps {
        /// Include exited containers.
        #[arg(short, long)]
        all: bool,
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// Print a container's logs.
    Logs {
        #[arg(short, long)]
        follow: bool,
        #[arg(short, long)]
        container: Option<String>,
        /// Logs of the previous run of a restarted container.
        #[arg(short, long)]
        previous: bool,
        pod: String,
    },
    /// Run a command in a running container.
    Exec {
        #[arg(short, long)]
        interactive: bool,
        #[arg(short, long)]
        tty: bool,
        #[arg(short, long)]
        container: Option<String>,
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop and remove the pod of a YAML file.
    Down {
        file: PathBuf,
        /// Seconds to wait before killing (default: the pod's terminationGracePeriodSeconds).
        #[arg(long)]
        grace_period: Option<u64>,
    },
    /// Stop and remove pods by name.
    Rm {
        #[arg(required = true)]
        pods: Vec<String>,
        #[arg(long)]
        grace_period: Option<u64>,
    },
    /// Pull an image from a registry.
    Pull(cmd::image::PullArgs),
    /// Manage images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Remove images (same as `image rm`).
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// List images.
    Images {
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// OCI runtime bundles, as runc and crun run them.
    Oci {
        #[command(subcommand)]
        command: OciCommand,
    },
    /// Serve the Kubernetes CRI v1 (runtime and image services) on a unix socket, for
    /// crictl and kubelet; with --server or --kubeconfig, also be the node's kubelet.
    Agent {
        /// The CRI socket.
        #[arg(long, env = "PODRUN_SOCKET", default_value = "/run/podrun/podrun.sock")]
        socket: PathBuf,
        /// Address of the streaming server (exec, attach, port-forward); port 0 picks one.
        #[arg(long, env = "PODRUN_STREAM_ADDR", default_value = "127.0.0.1:0")]
        stream_addr: std::net::SocketAddr,
        #[command(flatten)]
        kubelet: Box<cmd::agent::KubeletArgs>,
    },
    /// The control plane: a Kubernetes API server that kubectl drives, on an embedded
    /// store (under --root, in server/) or etcd.
    Server {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        bind_address: std::net::IpAddr,
        /// HTTPS port.
        #[arg(long, default_value_t = 6443)]
        secure_port: u16,
        /// Address advertised to clients and nodes (default: the bind address, or the
        /// host's primary address).
        #[arg(long)]
        advertise_address: Option<std::net::IpAddr>,
        /// etcd v3 endpoints, comma-separated; the embedded store when not given.
        #[arg(long, value_delimiter = ',')]
        etcd_servers: Vec<String>,
        /// ClusterIP range of Services.
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cluster_ip_range: ipnet::IpNet,
        /// NodePort range of Services, inclusive.
        #[arg(long, default_value = "30000-32767")]
        service_node_port_range: String,
        /// Run the scheduler and the controllers in this process, each behind its own
        /// leader-election Lease (`--controllers=false` leaves them to another process).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        controllers: bool,
        #[command(flatten)]
        node_cidrs: cmd::server::NodeCidrArgs,
        #[command(subcommand)]
        action: Option<ServerAction>,
    },
    /// The scheduler and the controllers (ReplicaSets, Deployments, DaemonSets, node
    /// lifecycle, endpoints, disruption budgets, garbage collection) against any
    /// Kubernetes API server, each behind its leader-election Lease, as
    /// kube-controller-manager and kube-scheduler run. For use with `podrun server
    /// --controllers=false` or another API server.
    ControllerManager {
        /// The kubeconfig to reach the API server with.
        #[arg(long)]
        kubeconfig: PathBuf,
        #[command(flatten)]
        node_cidrs: cmd::server::NodeCidrArgs,
    },
    /// The Service proxy alone, as kube-proxy runs: Services and EndpointSlices of the
    /// API server programmed into nftables (table `ip podrun-proxy`) until SIGTERM.
    #[command(hide = true)]
    Proxy {
        /// The kubeconfig to reach the API server with.
        #[arg(long, required_unless_present = "cleanup")]
        kubeconfig: Option<PathBuf>,
        /// This node's name: endpoints on it are local for the Local traffic policies.
        #[arg(long, required_unless_present = "cleanup")]
        node_name: Option<String>,
        /// This node's addresses (NodePorts are served on every local address).
        #[arg(long)]
        node_ip: Vec<std::net::IpAddr>,
        /// The pods' addresses: traffic from elsewhere to a service is masqueraded.
        #[arg(long, default_value = "172.16.0.0/16")]
        cluster_cidr: ipnet::IpNet,
        /// ClusterIPs served on the node itself, left without rules.
        #[arg(long)]
        skip_cluster_ip: Vec<std::net::IpAddr>,
        /// The nft binary (default: found on PATH).
        #[arg(long)]
        nft: Option<PathBuf>,
        /// Delete the proxy's rules and exit.
        #[arg(long)]
        cleanup: bool,
    },
    /// Cluster DNS for Services and EndpointSlices, as the agent serves it, on its own.
    #[command(hide = true)]
    Dns {
        /// The kubeconfig to reach the API server with.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Address to answer on, UDP and TCP (repeat or comma-separate for several).
        #[arg(long, value_delimiter = ',', default_value = "0.0.0.0:53")]
        listen: Vec<std::net::SocketAddr>,
        /// The cluster domain.
        #[arg(long, default_value = "cluster.local")]
        domain: String,
        /// Resolvers for other names [default: the nameservers of --resolv-conf].
        #[arg(long, value_delimiter = ',')]
        upstream: Vec<std::net::SocketAddr>,
        /// Where the upstream resolvers are read from when --upstream is not given.
        #[arg(long, default_value = "/etc/resolv.conf")]
        resolv_conf: PathBuf,
    },
    /// The per-pod monitor (started by podrun itself).
    #[command(hide = true)]
    Monitor {
        #[arg(long)]
        ready_fd: Option<i32>,
        state_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ServerAction {
    /// Bootstrap tokens, which nodes join the cluster with (as `kubeadm token`).
    Token {
        /// The kubeconfig to reach the server with [default: <root>/server/admin.conf].
        #[arg(long, global = true)]
        kubeconfig: Option<PathBuf>,
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token and print it.
    Create {
        /// How long the token is valid, as 24h, 90m or 1h30m; 0 for ever.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the tokens.
    List,
    /// Delete tokens, named by id or as whole tokens.
    Delete {
        #[arg(required = true, value_name = "ID|TOKEN")]
        tokens: Vec<String>,
    },
}

#[derive(Subcommand)]
enum OciCommand {
    /// Create, start and wait for a container from a bundle's config.json, then delete it.
    Run {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        id: String,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image archive or a docker-archive.
    Load { file: PathBuf },
    /// List images.
    Ls {
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// Remove images.
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Pull an image from a registry.
    Pull(cmd::image::PullArgs),
    /// Print images and their OCI configs as JSON.
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove untagged images, then blobs and layers no image uses.
    Prune,
    /// Write images to an OCI archive.
    Save {
        #[arg(short, long)]
        output: PathBuf,
        #[arg(required = true)]
        images: Vec<String>,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = config::apply(&args) {
        eprintln!("podrun: {e:#}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    if matches!(
                        cli.command,
                        Command::Monitor { .. }
                            | Command::Agent { .. }
                            | Command::Server { .. }
                            | Command::ControllerManager { .. }
                            | Command::Proxy { .. }
                            | Command::Dns { .. }
                    ) {
                        "info"
                    } else {
                        "warn"
                    },
                )
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("podrun: {}", cmd::error_text(&e));
            ExitCode::from(1)
        }
    }
}
