//! `podrun agent`: recover the sandboxes of an earlier run, then serve the CRI on a unix
//! socket until SIGTERM or SIGINT. Pods are not touched when the agent stops: their
//! monitors are independent processes, and the next agent finds them again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use podrun_cri_proto::v1 as cri;
use podrun_runtime::pod::{PodRuntime, RuntimeConfig};
use podrun_runtime::status::ContainerState;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tracing::{info, warn};

use crate::server::{monitor_status, Cri, CriService};
use crate::store;
use crate::transport::AuthorityFix;

pub struct AgentConfig {
    pub runtime: RuntimeConfig,
    pub socket: PathBuf,
    pub stream_addr: SocketAddr,
    /// The kubelet half, when the agent joins a control plane.
    pub kubelet: Option<crate::kubelet::KubeletConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("runtime: {0}")]
    Runtime(#[from] podrun_runtime::pod::PodError),
    #[error("{step}: {source}")]
    Io {
        step: String,
        source: std::io::Error,
    },
    #[error("image store: {0}")]
    Image(#[from] podrun_runtime::image::ImageError),
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("kubelet: {0}")]
    Kubelet(#[from] crate::kubelet::KubeletError),
}

/// Rebuild the store from the pods' state directories: sandboxes the CRI created, with
/// their containers. A sandbox without its record, or a container record the monitor
/// does not know, was half-created when an earlier agent died: it is removed.
pub fn recover(cri: &Cri) -> Result<(), AgentError> {
    // Leftovers of `podrun run` pods and orphaned network namespaces go first.
    for pod in cri.rt.reap()? {
        warn!(pod = %pod, "removed leftovers of a pod whose monitor was gone");
    }
    for id in cri.rt.reap_half_created() {
        warn!(sandbox = %id, "removed a sandbox whose creation was interrupted");
    }
    for pod in cri.rt.list()? {
        if !pod.plan.managed {
            continue;
        }
        let Some((sandbox, containers)) = store::read_sandbox(&pod.plan) else {
            warn!(sandbox = %pod.plan.id, "reaping a sandbox whose creation did not finish");
            let _ = cri.rt.stop(&pod, Some(0), true);
            continue;
        };
        let status = monitor_status(&pod.plan.state_dir);
        let known: Vec<String> = status
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.id.clone()).collect())
            .unwrap_or_default();
        let sandbox_id = sandbox.id.clone();
        cri.store.add_sandbox(sandbox.clone());
        for c in containers {
            if status.is_some() && !known.contains(&c.id) {
                warn!(container = %c.id, sandbox = %sandbox_id, "reaping a container whose creation did not finish");
                let _ =
                    std::fs::remove_file(store::container_record_path(&pod.plan.state_dir, &c.id));
                let _ = std::fs::remove_dir_all(cri.rt.config.paths.container_data(&c.id));
                continue;
            }
            let key = store::container_name_key(&sandbox, &c.config);
            cri.store.add_container(c, key);
        }
        info!(sandbox = %sandbox_id, alive = status.is_some(), "sandbox recovered");
    }
    Ok(())
}

/// Emit STOPPED events for containers that exit on their own, for kubelet's evented PLEG.
async fn watch_exits(cri: Arc<Cri>) {
    let mut running: std::collections::HashSet<String> = Default::default();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sandboxes = cri.store.sandboxes();
        let Ok(now) = tokio::task::spawn_blocking(move || {
            let mut now = Vec::new();
            for sb in sandboxes {
                if let Some(st) = monitor_status(&sb.plan.state_dir) {
                    for c in st.containers {
                        if matches!(c.state, ContainerState::Running { .. }) {
                            now.push((c.id, sb.id.clone()));
                        }
                    }
                }
            }
            now
        })
        .await
        else {
            continue;
        };
        let ids: std::collections::HashSet<String> = now.iter().map(|(c, _)| c.clone()).collect();
        for gone in running.difference(&ids) {
            if let Some(c) = cri.store.find_container(gone) {
                cri.emit(
                    &c.id,
                    &c.sandbox_id,
                    cri::ContainerEventType::ContainerStoppedEvent,
                )
                .await;
            }
        }
        running = ids;
    }
}

pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let io = |step: String| move |source| AgentError::Io { step, source };
    let rt = PodRuntime::new(config.runtime.clone())?;
    let images = Arc::new(podrun_runtime::image::ImageStore::open(
        &config.runtime.paths.root,
    )?);
    let cri = Arc::new(Cri::new(rt));
    let c2 = cri.clone();
    tokio::task::spawn_blocking(move || recover(&c2))
        .await
        .map_err(|e| AgentError::Io {
            step: "recover".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
    let stream = crate::streaming::StreamServer::start(
        config.stream_addr,
        Arc::new(crate::server::exec_streams(cri.clone())),
    )
    .await
    .map_err(io(format!(
        "start the streaming server on {}",
        config.stream_addr
    )))?;
    let stream_addr = stream.local_addr();
    let _ = cri.stream.set(stream);

    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    match std::fs::remove_file(&config.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("remove stale {}", config.socket.display()))(e)),
    }
    let listener = tokio::net::UnixListener::bind(&config.socket)
        .map_err(io(format!("bind {}", config.socket.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("chmod {}", config.socket.display())))?;
    }
    let network = match &config.runtime.network {
        podrun_runtime::network::NetworkMode::None => "none".to_owned(),
        podrun_runtime::network::NetworkMode::Cni { conf_dirs, .. } => {
            format!(
                "cni ({})",
                conf_dirs
                    .first()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            )
        }
    };
    info!(
        socket = %config.socket.display(),
        cgroup_driver = crate::server::driver_name(config.runtime.cgroup_driver),
        network = %network,
        stream_server = %stream_addr,
        sandboxes = cri.store.sandboxes().len(),
        "podrun agent serving CRI v1"
    );
    tokio::spawn(watch_exits(cri.clone()));
    let images = crate::image_service::ImageService::new(
        images,
        config.runtime.hosts_dir.clone(),
        config.runtime.paths.root.clone(),
    )
    .with_in_use({
        // Every pod's plan lists its containers: the agent's and `podrun run`'s.
        let rt = cri.rt.clone();
        Arc::new(move || {
            rt.list()
                .unwrap_or_default()
                .iter()
                .flat_map(|p| p.plan.containers.iter().map(|c| c.image_id.clone()))
                .collect()
        })
    });
    let kubelet_failure = Arc::new(std::sync::Mutex::new(None));
    if let Some(k) = config.kubelet.clone() {
        let stop = cri.shutdown.subscribe();
        let cri = cri.clone();
        let failure = kubelet_failure.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::kubelet::run(k, stop).await {
                tracing::error!(error = %e, "kubelet");
                if let Ok(mut f) = failure.lock() {
                    *f = Some(e);
                }
                let _ = cri.shutdown.send(true);
            }
        });
    }
    let shutdown_cri = cri.clone();
    let mut stopped = cri.shutdown.subscribe();
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = stopped.changed() => {}
        }
        info!("stopping the agent; pods keep running");
        let _ = shutdown_cri.shutdown.send(true);
    };
    tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(
            crate::server::log_failures::LogFailures::new,
        ))
        .add_service(
            cri::runtime_service_server::RuntimeServiceServer::new(CriService(cri.clone()))
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(32 << 20),
        )
        .add_service(
            cri::image_service_server::ImageServiceServer::new(images)
                .max_decoding_message_size(16 << 20),
        )
        // Go, Java and C++ clients name the socket path as :authority (see transport).
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new)),
            shutdown,
        )
        .await?;
    let _ = std::fs::remove_file(&config.socket);
    if let Some(e) = kubelet_failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e.into());
    }
    Ok(())
}
