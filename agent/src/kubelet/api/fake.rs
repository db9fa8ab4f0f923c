//! A fake CRI runtime for the kubelet API's tests and the API server's: a
//! RuntimeService on a unix socket holding canned sandboxes and containers (labelled
//! as kubelet labels them), with a real streaming server behind Exec, Attach and
//! PortForward whose processes are fakes:
//!
//! - exec `echo ARGS...` writes ARGS and a newline to stdout; `cat` copies stdin to
//!   stdout; `fail CODE` writes `oops` to stderr and exits with CODE; anything else
//!   fails to start;
//! - attach copies stdin to stdout;
//! - a forwarded port answers each connection by echoing what it receives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use podrun_cri_proto::v1 as cri;
use podrun_cri_proto::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status};

use crate::kubelet::cri::{CriClient, CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID};
use crate::streaming::{AsyncStream, BoxFuture, StreamRuntime, StreamServer, Streams};

/// Usage figures of a fake container.
#[derive(Clone, Copy, Debug, Default)]
pub struct FakeUsage {
    pub cpu_ns: u64,
    pub nano_cores: u64,
    pub working_set: u64,
}

#[derive(Default)]
struct Inner {
    sandboxes: Vec<cri::PodSandbox>,
    containers: Vec<cri::Container>,
    log_paths: HashMap<String, PathBuf>,
    usage: HashMap<String, FakeUsage>,
    /// Created-at clock: each object is one second newer than the last.
    clock: i64,
    /// Whether ListPodSandboxStats answers Unimplemented (an older runtime).
    no_sandbox_stats: bool,
    calls: Vec<String>,
}

/// The fake runtime, serving until dropped.
pub struct FakeCri {
    pub endpoint: String,
    inner: Arc<Mutex<Inner>>,
    _streaming: Arc<StreamServer>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCri {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const BASE_TIME: i64 = 1_714_557_600_000_000_000; // 2024-05-01T10:00:00Z

impl FakeCri {
    /// Serves on `dir/cri.sock`, with the streaming server on 127.0.0.1.
    pub async fn start(dir: &Path) -> std::io::Result<FakeCri> {
        let socket = dir.join("cri.sock");
        let listener = tokio::net::UnixListener::bind(&socket)?;
        let streaming = Arc::new(
            StreamServer::start(
                "127.0.0.1:0".parse().expect("an address"),
                Arc::new(FakeProcesses),
            )
            .await?,
        );
        let inner = Arc::new(Mutex::new(Inner::default()));
        let svc = Service {
            inner: inner.clone(),
            streaming: streaming.clone(),
        };
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(RuntimeServiceServer::new(svc))
                .serve_with_incoming(incoming)
                .await
            {
                tracing::warn!(error = %e, "fake CRI server");
            }
        });
        Ok(FakeCri {
            endpoint: format!("unix://{}", socket.display()),
            inner,
            _streaming: streaming,
            task,
        })
    }

    /// A client of this runtime.
    pub fn client(&self) -> CriClient {
        crate::kubelet::cri::connect(&self.endpoint).expect("a unix endpoint")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ready sandbox for the pod; its id.
    pub fn add_sandbox(&self, namespace: &str, name: &str, uid: &str) -> String {
        let mut g = self.lock();
        g.clock += 1;
        let id = format!("sandbox-{}", g.clock);
        let labels = HashMap::from([
            (POD_NAMESPACE.to_string(), namespace.to_string()),
            (POD_NAME.to_string(), name.to_string()),
            (POD_UID.to_string(), uid.to_string()),
        ]);
        let created_at = BASE_TIME + g.clock * 1_000_000_000;
        g.sandboxes.push(cri::PodSandbox {
            id: id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            state: cri::PodSandboxState::SandboxReady as i32,
            created_at,
            labels,
            ..Default::default()
        });
        id
    }

    /// A container of the sandbox, running or exited, whose CRI log is `log_path`; its id.
    pub fn add_container(
        &self,
        sandbox: &str,
        name: &str,
        log_path: &Path,
        running: bool,
    ) -> String {
        let mut g = self.lock();
        g.clock += 1;
        let id = format!("{name}-{}", g.clock);
        let mut labels = g
            .sandboxes
            .iter()
            .find(|s| s.id == sandbox)
            .map(|s| s.labels.clone())
            .unwrap_or_default();
        labels.insert(CONTAINER_NAME.to_string(), name.to_string());
        let attempt = g
            .containers
            .iter()
            .filter(|c| {
                c.pod_sandbox_id == sandbox
                    && c.labels.get(CONTAINER_NAME).map(String::as_str) == Some(name)
            })
            .count() as u32;
        let created_at = BASE_TIME + g.clock * 1_000_000_000;
        g.containers.push(cri::Container {
            id: id.clone(),
            pod_sandbox_id: sandbox.into(),
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            state: state(running),
            created_at,
            labels,
            ..Default::default()
        });
        g.log_paths.insert(id.clone(), log_path.to_path_buf());
        id
    }

    /// The container runs again, or exits.
    pub fn set_running(&self, id: &str, running: bool) {
        if let Some(c) = self.lock().containers.iter_mut().find(|c| c.id == id) {
            c.state = state(running);
        }
    }

    pub fn set_usage(&self, id: &str, usage: FakeUsage) {
        self.lock().usage.insert(id.to_string(), usage);
    }

    /// ListPodSandboxStats answers Unimplemented from now on.
    pub fn without_sandbox_stats(&self) {
        self.lock().no_sandbox_stats = true;
    }

    /// The RPCs served so far, by name (`Exec`, `ListContainers`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }
}

fn state(running: bool) -> i32 {
    if running {
        cri::ContainerState::ContainerRunning as i32
    } else {
        cri::ContainerState::ContainerExited as i32
    }
}

fn labels_match(want: &HashMap<String, String>, have: &HashMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

#[derive(Clone)]
struct Service {
    inner: Arc<Mutex<Inner>>,
    streaming: Arc<StreamServer>,
}

impl Service {
    fn lock(&self, call: &str) -> std::sync::MutexGuard<'_, Inner> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.calls.push(call.to_string());
        g
    }

    fn container_stats(g: &Inner, c: &cri::Container) -> cri::ContainerStats {
        let u = g.usage.get(&c.id).copied().unwrap_or_default();
        let ts = BASE_TIME + 100 * 1_000_000_000;
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: c.metadata.clone(),
                labels: c.labels.clone(),
                annotations: HashMap::new(),
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: Some(cri::UInt64Value { value: u.cpu_ns }),
                usage_nano_cores: Some(cri::UInt64Value {
                    value: u.nano_cores,
                }),
                psi: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: Some(cri::UInt64Value {
                    value: u.working_set,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "the fake runtime has no {what}"
    )))
}

#[tonic::async_trait]
impl RuntimeService for Service {
    async fn version(
        &self,
        _r: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake".into(),
            runtime_version: "0".into(),
            runtime_api_version: "v1".into(),
        }))
    }
    async fn run_pod_sandbox(
        &self,
        _r: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        unimplemented("RunPodSandbox")
    }
    async fn stop_pod_sandbox(
        &self,
        _r: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        unimplemented("StopPodSandbox")
    }
    async fn remove_pod_sandbox(
        &self,
        _r: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        unimplemented("RemovePodSandbox")
    }
    async fn pod_sandbox_status(
        &self,
        _r: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        unimplemented("PodSandboxStatus")
    }
    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        let g = self.lock("ListPodSandbox");
        let items = g
            .sandboxes
            .iter()
            .filter(|s| f.id.is_empty() || s.id == f.id)
            .filter(|s| f.state.as_ref().is_none_or(|st| st.state == s.state))
            .filter(|s| labels_match(&f.label_selector, &s.labels))
            .cloned()
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }
    async fn create_container(
        &self,
        _r: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        unimplemented("CreateContainer")
    }
    async fn start_container(
        &self,
        _r: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        unimplemented("StartContainer")
    }
    async fn stop_container(
        &self,
        _r: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        unimplemented("StopContainer")
    }
    async fn remove_container(
        &self,
        _r: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        unimplemented("RemoveContainer")
    }
    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        let g = self.lock("ListContainers");
        let containers = g
            .containers
            .iter()
            .filter(|c| f.id.is_empty() || c.id == f.id)
            .filter(|c| f.pod_sandbox_id.is_empty() || c.pod_sandbox_id == f.pod_sandbox_id)
            .filter(|c| f.state.as_ref().is_none_or(|st| st.state == c.state))
            .filter(|c| labels_match(&f.label_selector, &c.labels))
            .cloned()
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }
    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let id = r.into_inner().container_id;
        let g = self.lock("ContainerStatus");
        let c = g
            .containers
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(cri::ContainerStatus {
                id: c.id.clone(),
                metadata: c.metadata.clone(),
                state: c.state,
                created_at: c.created_at,
                labels: c.labels.clone(),
                log_path: g
                    .log_paths
                    .get(&c.id)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                ..Default::default()
            }),
            info: HashMap::new(),
        }))
    }
    async fn update_container_resources(
        &self,
        _r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        unimplemented("UpdateContainerResources")
    }
    async fn reopen_container_log(
        &self,
        _r: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        unimplemented("ReopenContainerLog")
    }
    async fn exec_sync(
        &self,
        _r: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        unimplemented("ExecSync")
    }
    async fn exec(
        &self,
        r: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let r = r.into_inner();
        drop(self.lock("Exec"));
        self.streaming.get_exec(&r).map(Response::new)
    }
    async fn attach(
        &self,
        r: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let r = r.into_inner();
        drop(self.lock("Attach"));
        self.streaming.get_attach(&r).map(Response::new)
    }
    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let r = r.into_inner();
        drop(self.lock("PortForward"));
        self.streaming.get_port_forward(&r).map(Response::new)
    }
    async fn container_stats(
        &self,
        _r: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        unimplemented("ContainerStats")
    }
    async fn list_container_stats(
        &self,
        _r: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let g = self.lock("ListContainerStats");
        let stats = g
            .containers
            .iter()
            .map(|c| Self::container_stats(&g, c))
            .collect();
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }
    async fn pod_sandbox_stats(
        &self,
        _r: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        unimplemented("PodSandboxStats")
    }
    async fn list_pod_sandbox_stats(
        &self,
        _r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let g = self.lock("ListPodSandboxStats");
        if g.no_sandbox_stats {
            return unimplemented("ListPodSandboxStats");
        }
        let stats = g
            .sandboxes
            .iter()
            .map(|s| {
                let containers: Vec<cri::ContainerStats> = g
                    .containers
                    .iter()
                    .filter(|c| c.pod_sandbox_id == s.id)
                    .map(|c| Self::container_stats(&g, c))
                    .collect();
                let sum =
                    |f: fn(&cri::ContainerStats) -> u64| -> u64 { containers.iter().map(f).sum() };
                let cpu_ns = sum(|c| {
                    c.cpu
                        .as_ref()
                        .and_then(|c| c.usage_core_nano_seconds.as_ref())
                        .map_or(0, |v| v.value)
                });
                let cores = sum(|c| {
                    c.cpu
                        .as_ref()
                        .and_then(|c| c.usage_nano_cores.as_ref())
                        .map_or(0, |v| v.value)
                });
                let ws = sum(|c| {
                    c.memory
                        .as_ref()
                        .and_then(|m| m.working_set_bytes.as_ref())
                        .map_or(0, |v| v.value)
                });
                let ts = BASE_TIME + 100 * 1_000_000_000;
                cri::PodSandboxStats {
                    attributes: Some(cri::PodSandboxAttributes {
                        id: s.id.clone(),
                        metadata: s.metadata.clone(),
                        labels: s.labels.clone(),
                        annotations: HashMap::new(),
                    }),
                    linux: Some(cri::LinuxPodSandboxStats {
                        cpu: Some(cri::CpuUsage {
                            timestamp: ts,
                            usage_core_nano_seconds: Some(cri::UInt64Value { value: cpu_ns }),
                            usage_nano_cores: Some(cri::UInt64Value { value: cores }),
                            psi: None,
                        }),
                        memory: Some(cri::MemoryUsage {
                            timestamp: ts,
                            working_set_bytes: Some(cri::UInt64Value { value: ws }),
                            ..Default::default()
                        }),
                        containers,
                        ..Default::default()
                    }),
                    windows: None,
                }
            })
            .collect();
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }
    async fn update_runtime_config(
        &self,
        _r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        unimplemented("UpdateRuntimeConfig")
    }
    async fn status(
        &self,
        _r: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        unimplemented("Status")
    }
    async fn checkpoint_container(
        &self,
        _r: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        unimplemented("CheckpointContainer")
    }
    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;
    async fn get_container_events(
        &self,
        _r: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        unimplemented("GetContainerEvents")
    }
    async fn list_metric_descriptors(
        &self,
        _r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        unimplemented("ListMetricDescriptors")
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        unimplemented("ListPodSandboxMetrics")
    }
    async fn runtime_config(
        &self,
        _r: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        unimplemented("RuntimeConfig")
    }
    async fn update_pod_sandbox_resources(
        &self,
        _r: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        unimplemented("UpdatePodSandboxResources")
    }
}

/// The processes behind the fake's streaming server.
struct FakeProcesses;

impl StreamRuntime for FakeProcesses {
    fn exec(
        &self,
        _container_id: String,
        cmd: Vec<String>,
        _tty: bool,
        mut streams: Streams,
    ) -> BoxFuture<Result<i32, String>> {
        Box::pin(async move {
            let io = |e: std::io::Error| e.to_string();
            match cmd.first().map(String::as_str) {
                Some("echo") => {
                    if let Some(o) = streams.stdout.as_mut() {
                        o.write_all(format!("{}\n", cmd[1..].join(" ")).as_bytes())
                            .await
                            .map_err(io)?;
                        o.flush().await.map_err(io)?;
                    }
                    Ok(0)
                }
                Some("cat") => {
                    if let (Some(i), Some(o)) = (streams.stdin.as_mut(), streams.stdout.as_mut()) {
                        tokio::io::copy(i, o).await.map_err(io)?;
                        o.flush().await.map_err(io)?;
                    }
                    Ok(0)
                }
                Some("fail") => {
                    if let Some(e) = streams.stderr.as_mut() {
                        e.write_all(b"oops\n").await.map_err(io)?;
                        e.flush().await.map_err(io)?;
                    }
                    Ok(cmd.get(1).and_then(|c| c.parse().ok()).unwrap_or(1))
                }
                other => Err(format!("executable file {other:?} not found in $PATH")),
            }
        })
    }

    fn attach(
        &self,
        _container_id: String,
        _tty: bool,
        mut streams: Streams,
    ) -> BoxFuture<Result<(), String>> {
        Box::pin(async move {
            if let (Some(i), Some(o)) = (streams.stdin.as_mut(), streams.stdout.as_mut()) {
                tokio::io::copy(i, o).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    fn port_forward(
        &self,
        _sandbox_id: String,
        _port: u16,
    ) -> BoxFuture<Result<Box<dyn AsyncStream>, String>> {
        Box::pin(async move {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(theirs);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
            Ok(Box::new(ours) as Box<dyn AsyncStream>)
        })
    }
}
