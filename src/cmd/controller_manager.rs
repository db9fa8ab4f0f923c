//! `podrun controller-manager`: the scheduler and the controllers against any API server.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

pub fn run(kubeconfig: &Path, node_cidrs: &super::server::NodeCidrArgs) -> Result<ExitCode> {
    let node_cidrs = node_cidrs.config()?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("--kubeconfig {}", kubeconfig.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .with_context(|| format!("--kubeconfig {}", kubeconfig.display()))?;
        let client = kube::Client::try_from(config)
            .with_context(|| format!("a client for {}", kubeconfig.display()))?;
        let server = client
            .apiserver_version()
            .await
            .with_context(|| format!("reaching the API server of {}", kubeconfig.display()))?;
        tracing::info!(
            "podrun controller-manager: controllers and scheduler against Kubernetes {} ({})",
            server.git_version,
            kubeconfig.display()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        podrun_control::controllers::manager::run_standalone(client, node_cidrs, stop).await;
        tracing::info!("podrun controller-manager: stopped");
        Ok(ExitCode::SUCCESS)
    })
}
