//! `podrun server`: the control plane's API server.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use podrun_control::server::{self, ServerConfig};

use crate::{Cli, Command};

/// The root podrun uses when --root is not given: the server's admin kubeconfig is then
/// also written to /etc/podrun/admin.conf, where users look for it.
const DEFAULT_ROOT: &str = "/var/lib/podrun";
const ADMIN_CONF: &str = "/etc/podrun/admin.conf";

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
    } = &cli.command
    else {
        unreachable!("dispatched on Command::Server");
    };
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
