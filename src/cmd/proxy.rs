//! `podrun proxy`: the Service proxy on its own, against any API server, as kube-proxy
//! runs (the agent runs the same proxy in-process).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use podrun_agent::proxy::{self, ProxyConfig};

pub fn run(kubeconfig: &Path, cfg: ProxyConfig) -> Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("--kubeconfig {}", kubeconfig.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .with_context(|| format!("--kubeconfig {}", kubeconfig.display()))?;
        let client = kube::Client::try_from(config)
            .with_context(|| format!("a client for {}", kubeconfig.display()))?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        });
        proxy::run(client, cfg, rx).await.context("service proxy")?;
        tracing::info!("podrun proxy: stopped; the rules stay in place");
        Ok(ExitCode::SUCCESS)
    })
}

pub fn cleanup(nft: Option<PathBuf>) -> Result<ExitCode> {
    proxy::cleanup(nft).context("deleting the service proxy's rules")?;
    Ok(ExitCode::SUCCESS)
}
