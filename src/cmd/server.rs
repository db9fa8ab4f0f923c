//! `podrun server`: the control plane's API server, and `podrun server token`, a client
//! of it that manages bootstrap tokens as `kubeadm token` does.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use podrun_control::api::auth::token::{self, BootstrapToken, TokenInfo};
use podrun_control::client::ApiClient;
use podrun_control::server::{self, ServerConfig};

use crate::{Cli, Command, ServerAction, TokenAction};

/// The root podrun uses when --root is not given: the server's admin kubeconfig is then
/// also written to /etc/podrun/admin.conf, where users look for it.
const DEFAULT_ROOT: &str = "/var/lib/podrun";
const ADMIN_CONF: &str = "/etc/podrun/admin.conf";

/// Node IPAM, as kube-controller-manager's `--allocate-node-cidrs`, `--cluster-cidr` and
/// `--node-cidr-mask-size`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeCidrArgs {
    /// Give every Node its own pod range (spec.podCIDR) from --cluster-cidr.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub allocate_node_cidrs: bool,
    /// The pod network of the whole cluster.
    #[arg(long, default_value = podrun_control::controllers::nodeipam::DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: ipnet::IpNet,
    /// The prefix length of each Node's range.
    #[arg(long, default_value_t = podrun_control::controllers::nodeipam::DEFAULT_MASK_SIZE)]
    pub node_cidr_mask_size: u8,
}

impl NodeCidrArgs {
    pub fn config(&self) -> Result<Option<podrun_control::controllers::nodeipam::CidrConfig>> {
        if !self.allocate_node_cidrs {
            return Ok(None);
        }
        Ok(Some(
            podrun_control::controllers::nodeipam::CidrConfig::new(
                self.cluster_cidr,
                self.node_cidr_mask_size,
            )?,
        ))
    }
}

fn node_port_range(s: &str) -> Result<(u16, u16)> {
    let (lo, hi) = s
        .split_once('-')
        .with_context(|| format!("--service-node-port-range: {s:?} is not of the form LOW-HIGH"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .with_context(|| format!("--service-node-port-range: {lo:?} is not a port"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .with_context(|| format!("--service-node-port-range: {hi:?} is not a port"))?;
    if lo == 0 || lo > hi {
        bail!("--service-node-port-range: {s:?} is empty or starts at 0");
    }
    Ok((lo, hi))
}

pub fn server(cli: &Cli) -> Result<ExitCode> {
    let Command::Server {
        bind_address,
        secure_port,
        advertise_address,
        etcd_servers,
        service_cluster_ip_range,
        service_node_port_range,
        controllers,
        node_cidrs,
        action,
    } = &cli.command
    else {
        unreachable!("dispatched on Command::Server");
    };
    if let Some(ServerAction::Token { kubeconfig, action }) = action {
        // The serving flags are the server's; given with `token` they would be ignored.
        let serving_flags_given = bind_address.to_string() != "0.0.0.0"
            || *secure_port != 6443
            || advertise_address.is_some()
            || !etcd_servers.is_empty()
            || service_cluster_ip_range.to_string() != "10.96.0.0/12"
            || service_node_port_range != "30000-32767"
            || !*controllers;
        if serving_flags_given {
            bail!(
                "podrun server token: --bind-address, --secure-port, --advertise-address, \
                 --etcd-servers and the service ranges are flags of the server itself; \
                 the token commands reach it through the admin kubeconfig"
            );
        }
        return token_command(cli, kubeconfig.as_deref(), action);
    }
    let config = ServerConfig {
        root: cli.root.join("server"),
        bind_address: *bind_address,
        secure_port: *secure_port,
        advertise_address: *advertise_address,
        etcd_servers: etcd_servers
            .iter()
            .filter(|e| !e.is_empty())
            .cloned()
            .collect(),
        service_cluster_ip_range: *service_cluster_ip_range,
        service_node_port_range: node_port_range(service_node_port_range)?,
        admin_kubeconfig_copy: (cli.root == Path::new(DEFAULT_ROOT)).then(|| ADMIN_CONF.into()),
        controllers: *controllers,
        node_cidrs: node_cidrs.config()?,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("podrun-server")
        .build()
        .context("start the async runtime")?
        .block_on(async {
            let stop = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("installing a SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            server::run(config, stop).await
        })
        .context("podrun server")?;
    Ok(ExitCode::SUCCESS)
}

/// `podrun server token create|list|delete`: requests to the server as the kubeconfig's
/// user (the admin by default).
fn token_command(cli: &Cli, kubeconfig: Option<&Path>, action: &TokenAction) -> Result<ExitCode> {
    // A client like any other: `token list | head` ends quietly.
    super::default_sigpipe();
    let path = kubeconfig
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cli.root.join("server").join("admin.conf"));
    // Parse the flags before reaching for the server.
    let expires = match action {
        TokenAction::Create { ttl, .. } => {
            let d = token::parse_duration(ttl).context("--ttl")?;
            if d.is_zero() {
                None
            } else {
                let d = chrono::Duration::from_std(d).context("--ttl")?;
                Some(chrono::Utc::now() + d)
            }
        }
        _ => None,
    };
    let ids = match action {
        TokenAction::Delete { tokens } => tokens
            .iter()
            .map(|t| BootstrapToken::id_of(t))
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    let client = ApiClient::from_kubeconfig(&path)?;
    let secrets = format!("/api/v1/namespaces/{}/secrets", token::NAMESPACE);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match action {
        TokenAction::Create { description, .. } => {
            let t = BootstrapToken::generate();
            rt.block_on(client.post(&secrets, &t.secret_with(expires, description)))
                .context("failed to create the bootstrap token")?;
            println!("{}.{}", t.id, t.secret);
        }
        TokenAction::List => {
            let list = rt.block_on(client.get(&secrets))?;
            let now = chrono::Utc::now();
            let none = |s: String| if s.is_empty() { "<none>".into() } else { s };
            let rows = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(TokenInfo::from_secret)
                .map(|t| {
                    let (ttl, expires) = match t.expires {
                        Some(e) => (
                            token::short_duration(e - now),
                            e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        ),
                        None => ("<forever>".into(), "<never>".into()),
                    };
                    vec![
                        t.token,
                        ttl,
                        expires,
                        none(t.usages.join(",")),
                        none(t.description),
                        none(t.extra_groups.join(",")),
                    ]
                })
                .collect();
            print_table(
                &[
                    "TOKEN",
                    "TTL",
                    "EXPIRES",
                    "USAGES",
                    "DESCRIPTION",
                    "EXTRA GROUPS",
                ],
                rows,
            );
        }
        TokenAction::Delete { .. } => {
            for id in ids {
                let name = token::secret_name(&id);
                rt.block_on(client.delete(&format!("{secrets}/{name}")))
                    .with_context(|| format!("failed to delete bootstrap token {id:?}"))?;
                println!("bootstrap token {id:?} deleted");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Columns three spaces apart, as kubeadm's tables are.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let header = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (c, w) in r.iter().zip(&widths) {
            line.push_str(&format!("{c:<w$}   "));
        }
        println!("{}", line.trim_end());
    }
}
