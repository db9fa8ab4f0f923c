//! The CRI RuntimeService: one file per group of RPCs, named after what they act on
//! (sandbox_*, container_*, exec, stats, runtime_info). Calls on one sandbox are
//! serialised by a per-sandbox lock; calls on different sandboxes run in parallel, and
//! all blocking work (monitor sockets, filesystem, CNI) runs on blocking threads so no
//! call holds up the runtime for the others.
//!
//! Sandbox state machine (containerd's, with the monitor as the sandbox process):
//! ```text
//!   RunPodSandbox ──▶ READY ──StopPodSandbox / monitor gone──▶ NOTREADY ──Remove──▶ (gone)
//! ```
//! Container state machine:
//! ```text
//!   CreateContainer ──▶ CREATED ──Start──▶ RUNNING ──exit / Stop──▶ EXITED ──Remove──▶ (gone)
//! ```

mod container;
mod convert;
mod exec;
pub mod log_failures;
mod runtime_info;
mod sandbox;
mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use podrun_cri_proto::v1 as cri;
use podrun_runtime::monitor::protocol::{Client, ProtocolError, Request, Response};
use podrun_runtime::pod::{PodError, PodRuntime};
use podrun_runtime::status::PodStatus;
use tokio::sync::broadcast;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use tracing::warn;

use crate::store::Store;
use crate::streaming::StreamServer;

pub use runtime_info::{driver_name, RUNTIME_NAME};

/// The streaming server's callbacks into this server.
pub fn exec_streams(cri: Arc<Cri>) -> exec::CriStreams {
    exec::CriStreams(cri)
}

/// Shared state of the CRI server.
pub struct Cri {
    pub rt: Arc<PodRuntime>,
    pub store: Arc<Store>,
    pub stream: OnceLock<StreamServer>,
    pub events: broadcast::Sender<cri::ContainerEventResponse>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pod_cidr: Mutex<String>,
    /// Previous CPU samples per cgroup path, for usage_nano_cores.
    cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
    /// Set when the agent stops: long-lived calls (the event stream) end.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Per container: (STARTED sent, STOPPED sent).
    event_state: Mutex<HashMap<String, (bool, bool)>>,
}

#[derive(Clone)]
pub struct CriService(pub Arc<Cri>);

impl Cri {
    pub fn new(rt: PodRuntime) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            event_state: Mutex::new(HashMap::new()),
            shutdown: tokio::sync::watch::channel(false).0,
            rt: Arc::new(rt),
            store: Arc::new(Store::default()),
            stream: OnceLock::new(),
            events,
            locks: Mutex::new(HashMap::new()),
            pod_cidr: Mutex::new(String::new()),
            cpu_samples: Mutex::new(HashMap::new()),
        }
    }

    /// The lock serialising calls on one sandbox.
    pub fn sandbox_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut g = self.locks.lock().unwrap();
        g.entry(id.to_owned()).or_default().clone()
    }

    fn drop_lock(&self, id: &str) {
        self.locks.lock().unwrap().remove(id);
    }

    /// Publish STOPPED for a container that ran and exited without one being sent yet
    /// (before it is removed, so the event still carries its final status).
    pub async fn emit_missing_stop(self: &Arc<Self>, container_id: &str, sandbox_id: &str) {
        let missing = self
            .event_state
            .lock()
            .unwrap()
            .get(container_id)
            .is_some_and(|st| st.0 && !st.1);
        if missing {
            self.emit(
                container_id,
                sandbox_id,
                cri::ContainerEventType::ContainerStoppedEvent,
            )
            .await;
        }
    }

    /// Publish a container event with the sandbox's and its containers' statuses as
    /// they are now (kubelet's evented PLEG reads them). Each container's events follow
    /// its life: STOPPED once, and before DELETED whenever it ran (also when it exited
    /// on its own between two polls of the exit watcher).
    pub async fn emit(
        self: &Arc<Self>,
        container_id: &str,
        sandbox_id: &str,
        kind: cri::ContainerEventType,
    ) {
        use cri::ContainerEventType::*;
        let missing_stop = {
            let mut g = self.event_state.lock().unwrap();
            let st = g.entry(container_id.to_owned()).or_default();
            match kind {
                ContainerCreatedEvent => false,
                ContainerStartedEvent => {
                    st.0 = true;
                    false
                }
                ContainerStoppedEvent => {
                    if st.1 {
                        return;
                    }
                    st.1 = true;
                    false
                }
                ContainerDeletedEvent => {
                    let missing = st.0 && !st.1;
                    g.remove(container_id);
                    missing
                }
            }
        };
        if self.events.receiver_count() == 0 {
            return;
        }
        let sandbox_status = sandbox::status(
            self,
            cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
                verbose: false,
            },
        )
        .await
        .ok();
        let containers_statuses = match &sandbox_status {
            Some(r) => r.containers_statuses.clone(),
            None => container::statuses_in_sandbox(self, sandbox_id)
                .await
                .unwrap_or_default(),
        };
        let sandbox_status =
            sandbox_status
                .and_then(|r| r.status)
                .unwrap_or_else(|| cri::PodSandboxStatus {
                    id: sandbox_id.to_owned(),
                    state: cri::PodSandboxState::SandboxNotready as i32,
                    ..Default::default()
                });
        let kinds: &[cri::ContainerEventType] = if missing_stop {
            &[ContainerStoppedEvent, ContainerDeletedEvent]
        } else {
            std::slice::from_ref(&kind)
        };
        for k in kinds {
            let _ = self.events.send(cri::ContainerEventResponse {
                container_id: container_id.to_owned(),
                container_event_type: *k as i32,
                created_at: now_ns(),
                pod_sandbox_status: Some(sandbox_status.clone()),
                containers_statuses: containers_statuses.clone(),
            });
        }
    }
}

pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Map runtime errors to gRPC codes, in one place.
pub fn status_of(e: PodError) -> Status {
    match e {
        PodError::Invalid { file, message } => {
            Status::invalid_argument(format!("{file}: {message}"))
        }
        PodError::Spec(e) => Status::invalid_argument(e.to_string()),
        PodError::AlreadyExists(m) => Status::already_exists(format!("{m} already exists")),
        PodError::NotFound(m) => Status::not_found(format!("{m} not found")),
        PodError::Image(e) => Status::failed_precondition(format!("image: {e}")),
        e => Status::internal(e.to_string()),
    }
}

pub fn protocol_status(e: ProtocolError) -> Status {
    match e {
        ProtocolError::Remote(m) if m.contains("not found") => Status::not_found(m),
        ProtocolError::Remote(m) if m.contains("not in created state") => {
            Status::failed_precondition(m)
        }
        ProtocolError::Remote(m) if m.contains("not running") => Status::failed_precondition(m),
        ProtocolError::Remote(m) => Status::unknown(m),
        e => Status::unavailable(format!("pod monitor: {e}")),
    }
}

/// Run blocking work off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("blocking task: {e}")))?
}

pub fn monitor_socket(state_dir: &Path) -> PathBuf {
    state_dir.join(podrun_runtime::monitor::SOCKET_FILE)
}

/// One request/response with a pod monitor (blocking).
pub fn monitor_call(
    state_dir: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ProtocolError> {
    let mut c = Client::connect(&monitor_socket(state_dir))?;
    c.set_timeout(Some(timeout))?;
    c.call(req)
}

/// The monitor's current status, or None when it is gone.
pub fn monitor_status(state_dir: &Path) -> Option<PodStatus> {
    match monitor_call(state_dir, &Request::Status, Duration::from_secs(10)) {
        Ok(Response::Status(s)) => Some(s),
        Ok(_) => None,
        Err(e) => {
            if !matches!(e, ProtocolError::Connect { .. }) {
                warn!(dir = %state_dir.display(), error = %e, "pod monitor status");
            }
            None
        }
    }
}

type Res<T> = Result<GrpcResponse<T>, Status>;

fn ok<T>(t: T) -> Res<T> {
    Ok(GrpcResponse::new(t))
}

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for CriService {
    async fn version(&self, r: GrpcRequest<cri::VersionRequest>) -> Res<cri::VersionResponse> {
        ok(runtime_info::version(r.into_inner()))
    }
    async fn run_pod_sandbox(
        &self,
        r: GrpcRequest<cri::RunPodSandboxRequest>,
    ) -> Res<cri::RunPodSandboxResponse> {
        ok(sandbox::run(&self.0, r.into_inner()).await?)
    }
    async fn stop_pod_sandbox(
        &self,
        r: GrpcRequest<cri::StopPodSandboxRequest>,
    ) -> Res<cri::StopPodSandboxResponse> {
        ok(sandbox::stop(&self.0, r.into_inner()).await?)
    }
    async fn remove_pod_sandbox(
        &self,
        r: GrpcRequest<cri::RemovePodSandboxRequest>,
    ) -> Res<cri::RemovePodSandboxResponse> {
        ok(sandbox::remove(&self.0, r.into_inner()).await?)
    }
    async fn pod_sandbox_status(
        &self,
        r: GrpcRequest<cri::PodSandboxStatusRequest>,
    ) -> Res<cri::PodSandboxStatusResponse> {
        ok(sandbox::status(&self.0, r.into_inner()).await?)
    }
    async fn list_pod_sandbox(
        &self,
        r: GrpcRequest<cri::ListPodSandboxRequest>,
    ) -> Res<cri::ListPodSandboxResponse> {
        ok(sandbox::list(&self.0, r.into_inner()).await?)
    }
    async fn create_container(
        &self,
        r: GrpcRequest<cri::CreateContainerRequest>,
    ) -> Res<cri::CreateContainerResponse> {
        ok(container::create(&self.0, r.into_inner()).await?)
    }
    async fn start_container(
        &self,
        r: GrpcRequest<cri::StartContainerRequest>,
    ) -> Res<cri::StartContainerResponse> {
        ok(container::start(&self.0, r.into_inner()).await?)
    }
    async fn stop_container(
        &self,
        r: GrpcRequest<cri::StopContainerRequest>,
    ) -> Res<cri::StopContainerResponse> {
        ok(container::stop(&self.0, r.into_inner()).await?)
    }
    async fn remove_container(
        &self,
        r: GrpcRequest<cri::RemoveContainerRequest>,
    ) -> Res<cri::RemoveContainerResponse> {
        ok(container::remove(&self.0, r.into_inner()).await?)
    }
    async fn list_containers(
        &self,
        r: GrpcRequest<cri::ListContainersRequest>,
    ) -> Res<cri::ListContainersResponse> {
        ok(container::list(&self.0, r.into_inner()).await?)
    }
    async fn container_status(
        &self,
        r: GrpcRequest<cri::ContainerStatusRequest>,
    ) -> Res<cri::ContainerStatusResponse> {
        ok(container::status(&self.0, r.into_inner()).await?)
    }
    async fn update_container_resources(
        &self,
        r: GrpcRequest<cri::UpdateContainerResourcesRequest>,
    ) -> Res<cri::UpdateContainerResourcesResponse> {
        ok(container::update_resources(&self.0, r.into_inner()).await?)
    }
    async fn reopen_container_log(
        &self,
        r: GrpcRequest<cri::ReopenContainerLogRequest>,
    ) -> Res<cri::ReopenContainerLogResponse> {
        ok(container::reopen_log(&self.0, r.into_inner()).await?)
    }
    async fn exec_sync(&self, r: GrpcRequest<cri::ExecSyncRequest>) -> Res<cri::ExecSyncResponse> {
        ok(exec::exec_sync(&self.0, r.into_inner()).await?)
    }
    async fn exec(&self, r: GrpcRequest<cri::ExecRequest>) -> Res<cri::ExecResponse> {
        ok(exec::exec(&self.0, r.into_inner()).await?)
    }
    async fn attach(&self, r: GrpcRequest<cri::AttachRequest>) -> Res<cri::AttachResponse> {
        ok(exec::attach(&self.0, r.into_inner()).await?)
    }
    async fn port_forward(
        &self,
        r: GrpcRequest<cri::PortForwardRequest>,
    ) -> Res<cri::PortForwardResponse> {
        ok(exec::port_forward(&self.0, r.into_inner()).await?)
    }
    async fn container_stats(
        &self,
        r: GrpcRequest<cri::ContainerStatsRequest>,
    ) -> Res<cri::ContainerStatsResponse> {
        ok(stats::container_stats(&self.0, r.into_inner()).await?)
    }
    async fn list_container_stats(
        &self,
        r: GrpcRequest<cri::ListContainerStatsRequest>,
    ) -> Res<cri::ListContainerStatsResponse> {
        ok(stats::list_container_stats(&self.0, r.into_inner()).await?)
    }
    async fn pod_sandbox_stats(
        &self,
        r: GrpcRequest<cri::PodSandboxStatsRequest>,
    ) -> Res<cri::PodSandboxStatsResponse> {
        ok(stats::pod_sandbox_stats(&self.0, r.into_inner()).await?)
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: GrpcRequest<cri::ListPodSandboxStatsRequest>,
    ) -> Res<cri::ListPodSandboxStatsResponse> {
        ok(stats::list_pod_sandbox_stats(&self.0, r.into_inner()).await?)
    }
    async fn update_runtime_config(
        &self,
        r: GrpcRequest<cri::UpdateRuntimeConfigRequest>,
    ) -> Res<cri::UpdateRuntimeConfigResponse> {
        ok(runtime_info::update_runtime_config(
            &self.0,
            r.into_inner(),
        )?)
    }
    async fn status(&self, r: GrpcRequest<cri::StatusRequest>) -> Res<cri::StatusResponse> {
        ok(runtime_info::status(&self.0, r.into_inner()).await?)
    }
    async fn checkpoint_container(
        &self,
        _r: GrpcRequest<cri::CheckpointContainerRequest>,
    ) -> Res<cri::CheckpointContainerResponse> {
        Err(Status::unimplemented(
            "CheckpointContainer: podrun does not checkpoint containers",
        ))
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn get_container_events(
        &self,
        _r: GrpcRequest<cri::GetEventsRequest>,
    ) -> Res<Self::GetContainerEventsStream> {
        let mut rx = self.0.events.subscribe();
        let mut stop = self.0.shutdown.subscribe();
        let stream = async_stream::stream! {
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(ev) => yield Ok(ev),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = async { let _ = stop.wait_for(|s| *s).await.map(|_| ()); } => break,
                }
            }
        };
        ok(Box::pin(stream))
    }
    async fn list_metric_descriptors(
        &self,
        _r: GrpcRequest<cri::ListMetricDescriptorsRequest>,
    ) -> Res<cri::ListMetricDescriptorsResponse> {
        Err(Status::unimplemented(
            "ListMetricDescriptors: podrun serves stats through ListContainerStats and ListPodSandboxStats",
        ))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _r: GrpcRequest<cri::ListPodSandboxMetricsRequest>,
    ) -> Res<cri::ListPodSandboxMetricsResponse> {
        Err(Status::unimplemented(
            "ListPodSandboxMetrics: podrun serves stats through ListContainerStats and ListPodSandboxStats",
        ))
    }
    async fn runtime_config(
        &self,
        _r: GrpcRequest<cri::RuntimeConfigRequest>,
    ) -> Res<cri::RuntimeConfigResponse> {
        ok(runtime_info::runtime_config(&self.0))
    }
    async fn update_pod_sandbox_resources(
        &self,
        r: GrpcRequest<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Res<cri::UpdatePodSandboxResourcesResponse> {
        ok(sandbox::update_resources(&self.0, r.into_inner()).await?)
    }
}
