//! `podrun dns`: the agent's cluster DNS on its own, against any API server (a test and
//! debugging aid; the agent serves the same thing).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use podrun_agent::dns::{self, DnsConfig};

pub struct DnsArgs<'a> {
    pub kubeconfig: &'a Path,
    pub listen: &'a [SocketAddr],
    pub domain: &'a str,
    pub upstream: &'a [SocketAddr],
    pub resolv_conf: &'a Path,
}

pub fn run(args: DnsArgs<'_>) -> Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(args.kubeconfig)
            .with_context(|| format!("--kubeconfig {}", args.kubeconfig.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .with_context(|| format!("--kubeconfig {}", args.kubeconfig.display()))?;
        let client = kube::Client::try_from(config)
            .with_context(|| format!("a client for {}", args.kubeconfig.display()))?;
        let mut cfg = DnsConfig::new(args.listen.to_vec());
        cfg.domain = args.domain.to_owned();
        cfg.upstream = if args.upstream.is_empty() {
            dns::upstream_from_resolv_conf(args.resolv_conf, args.listen)
                .context("--resolv-conf")?
        } else {
            args.upstream.to_vec()
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = stop_tx.send(true);
        });
        dns::serve(client, cfg, stop_rx).await?;
        tracing::info!("podrun dns: stopped");
        Ok(ExitCode::SUCCESS)
    })
}
