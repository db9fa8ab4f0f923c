//! Pod sync, as kubelet's pod workers do it: a watch on the pods bound to this node
//! feeds one worker per pod, and each worker drives its pod toward its spec through the
//! CRI only: a sandbox, the init containers in order, native sidecars, then the
//! containers, restarted by the pod's restart policy with back-off (CrashLoopBackOff),
//! images pulled by pull policy (ErrImagePull, ImagePullBackOff), volumes prepared and
//! kept current, the status written back, and graceful termination when the pod is
//! deleted, after which the pod object is removed. A relist of the runtime every second
//! (kubelet's PLEG) wakes the worker of a pod whose containers changed state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, Client};
use podrun_cri_proto::v1 as cri;
use serde_json::json;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::cri::{CriClient, POD_UID};
use super::events::{container_path, Recorder, NORMAL, WARNING};
use super::eviction::{self, Signal, Threshold};
use super::podconfig::{self, ContainerInputs, EnvSource, NodeContext, PodFiles};
use super::prober::{
    format_pod, run_hook, ProbeEvent, ProbeEventResult, ProbeManager, Target,
    REASON_FAILED_POST_START_HOOK, REASON_FAILED_PRE_STOP_HOOK,
};
use super::static_pods;
use super::status::{self, instances, is_sidecar, Observed, Waiting};
use super::volumes::{self, ApiSource};

/// kubelet's container restart back-off: 10 s doubling to 5 min, forgotten after a
/// container ran for 10 min.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// A pod is synced at least this often.
const RESYNC: Duration = Duration::from_secs(10);
/// The runtime relist period.
const RELIST: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
struct Backoff {
    delay: Duration,
    last: Instant,
}

/// What the pod workers share.
pub struct Kubelet {
    pub client: Client,
    pub cri: CriClient,
    pub ctx: NodeContext,
    pub state_dir: PathBuf,
    pub runtime_name: String,
    pub events: Recorder,
    backoffs: Mutex<HashMap<(String, String), Backoff>>,
    /// The pods this node runs, for the kubelet API's /pods.
    pods: Mutex<HashMap<String, Pod>>,
    /// Containers whose liveness or startup probe asked for a restart.
    restarts: Mutex<HashSet<(String, String)>>,
    /// Pod cgroups are kubelet's: the runtime creates them under the parent kubelet
    /// names and leaves them when the sandbox goes. One manager per set of hierarchies
    /// they may be in.
    cgroups: Vec<Box<dyn podrun_runtime::cgroups::CgroupManager>>,
    /// Liveness, readiness and startup probes of the running containers.
    pub probes: ProbeManager,
    /// Each pod worker's wake-up, for probe results.
    wakes: Mutex<HashMap<String, Arc<Notify>>>,
    /// The status last written for each static pod (their source holds none).
    static_status: Mutex<HashMap<String, k8s_openapi::api::core::v1::PodStatus>>,
    /// Where static pod manifests are read from.
    pub manifest_dir: Option<PathBuf>,
    /// The eviction signals whose thresholds are crossed now.
    pressure: Mutex<Vec<Signal>>,
    /// Pods ended here (evicted or refused) whose Failed phase the watch has not
    /// brought back yet: never restarted.
    ended: Mutex<HashSet<String>>,
}

struct Worker {
    pod: watch::Sender<Option<Pod>>,
    wake: Arc<Notify>,
}

impl Kubelet {
    /// The kubelet and the receiver of its probe events (see [`handle_probe_events`]).
    pub fn new(
        client: Client,
        cri: CriClient,
        ctx: NodeContext,
        state_dir: PathBuf,
        runtime_name: String,
    ) -> (Kubelet, tokio::sync::mpsc::UnboundedReceiver<ProbeEvent>) {
        let events = Recorder::new(client.clone(), &ctx.node_name);
        let (probes, probe_events) = ProbeManager::new();
        let k = Kubelet {
            client,
            cri,
            ctx,
            state_dir,
            runtime_name,
            events,
            backoffs: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            restarts: Mutex::new(HashSet::new()),
            cgroups: Vec::new(),
            probes,
            wakes: Mutex::new(HashMap::new()),
            static_status: Mutex::new(HashMap::new()),
            manifest_dir: None,
            pressure: Mutex::new(Vec::new()),
            ended: Mutex::new(HashSet::new()),
        };
        (k, probe_events)
    }

    fn wake(&self, uid: &str) {
        if let Some(w) = self.wakes.lock().ok().and_then(|m| m.get(uid).cloned()) {
            w.notify_one();
        }
    }

    fn pod_by_uid(&self, uid: &str) -> Option<Pod> {
        self.pods.lock().ok().and_then(|m| m.get(uid).cloned())
    }

    fn target(&self, pod_ip: &str, container_id: &str, c: &Container) -> Target {
        Target {
            pod_ip: pod_ip.parse().ok(),
            container_id: container_id.to_owned(),
            ports: c.ports.clone().unwrap_or_default(),
            cri: self.cri.clone(),
        }
    }

    pub fn with_cgroups(mut self, m: Box<dyn podrun_runtime::cgroups::CgroupManager>) -> Kubelet {
        self.cgroups.push(m);
        self
    }

    /// Removes the pod's cgroup, and the QoS cgroups above it when they are empty.
    fn remove_pod_cgroup(&self, uid: &str) {
        for m in &self.cgroups {
            for qos in ["Guaranteed", "Burstable", "BestEffort"] {
                let parent = podconfig::cgroup_parent_for(&self.ctx, uid, qos);
                let Ok(path) = podrun_runtime::planner::pod_cgroup_path(m.driver(), &parent) else {
                    continue;
                };
                // Both are no-ops for a cgroup that does not exist.
                if let Err(e) = m.remove(&path) {
                    warn!(uid, cgroup = %path, error = %e, "remove the pod cgroup");
                }
                podrun_runtime::cgroups::remove_empty_parents(m.as_ref(), &path);
            }
        }
    }

    /// The pods this node runs now.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Asks for a container to be restarted (a failed liveness or startup probe).
    pub fn request_restart(&self, uid: &str, container: &str) {
        if let Ok(mut r) = self.restarts.lock() {
            r.insert((uid.to_owned(), container.to_owned()));
        }
    }

    fn in_backoff(&self, key: &(String, String)) -> Option<Duration> {
        let m = self.backoffs.lock().ok()?;
        let b = m.get(key)?;
        let until = b.last + b.delay;
        let now = Instant::now();
        (now < until).then(|| until - now)
    }

    fn backoff_delay(&self, key: &(String, String)) -> Duration {
        self.backoffs
            .lock()
            .ok()
            .and_then(|m| m.get(key).map(|b| b.delay))
            .unwrap_or(BACKOFF_INITIAL)
    }

    fn bump_backoff(&self, key: (String, String)) {
        if let Ok(mut m) = self.backoffs.lock() {
            let delay = match m.get(&key) {
                Some(b) => (b.delay * 2).min(BACKOFF_MAX),
                None => BACKOFF_INITIAL,
            };
            m.insert(
                key,
                Backoff {
                    delay,
                    last: Instant::now(),
                },
            );
        }
    }

    fn clear_backoff(&self, key: &(String, String)) {
        if let Ok(mut m) = self.backoffs.lock() {
            m.remove(key);
        }
    }

    async fn sandboxes(&self, uid: &str) -> Result<Vec<cri::PodSandbox>, tonic::Status> {
        let mut rt = self.cri.runtime.clone();
        let r = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector: HashMap::from([(POD_UID.to_owned(), uid.to_owned())]),
                    ..Default::default()
                }),
            })
            .await?;
        let mut v = r.into_inner().items;
        v.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(v)
    }

    async fn containers(&self, uid: &str) -> Result<Vec<cri::ContainerStatus>, tonic::Status> {
        let mut rt = self.cri.runtime.clone();
        let list = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    label_selector: HashMap::from([(POD_UID.to_owned(), uid.to_owned())]),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        let mut out = Vec::with_capacity(list.len());
        for c in list {
            match rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: false,
                })
                .await
            {
                Ok(s) => out.extend(s.into_inner().status),
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        type_: &str,
        reason: &str,
        message: &str,
    ) {
        let path = container.map(|c| container_path(pod, c));
        self.events.record(pod, path, type_, reason, message).await;
    }

    /// Makes sure the image is there, by the container's pull policy.
    async fn ensure_image(&self, pod: &Pod, c: &Container) -> Result<String, Waiting> {
        let (_, _, uid) = podconfig::pod_key(pod);
        let image = c.image.clone().unwrap_or_default();
        let mut img = self.cri.image.clone();
        let spec = cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        };
        let present = img
            .image_status(cri::ImageStatusRequest {
                image: Some(spec.clone()),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().image)
            .map(|i| i.id);
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            let tagged = image
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':') && !last.ends_with(":latest"));
            if tagged || image.contains('@') {
                "IfNotPresent".into()
            } else {
                "Always".into()
            }
        });
        let name = c.name.as_str();
        match (policy.as_str(), &present) {
            ("Never", None) => {
                let msg =
                    format!("Container image {image:?} is not present with pull policy of Never");
                self.record(pod, Some(name), WARNING, "ErrImageNeverPull", &msg)
                    .await;
                return Err(Waiting {
                    reason: "ErrImageNeverPull".into(),
                    message: msg,
                });
            }
            ("Never" | "IfNotPresent", Some(id)) => {
                self.record(
                    pod,
                    Some(name),
                    NORMAL,
                    "Pulled",
                    &format!("Container image {image:?} already present on machine"),
                )
                .await;
                return Ok(id.clone());
            }
            _ => {}
        }
        let key = (uid, format!("image:{name}"));
        if self.in_backoff(&key).is_some() {
            let msg = format!("Back-off pulling image {image:?}");
            self.record(pod, Some(name), NORMAL, "BackOff", &msg).await;
            return Err(Waiting {
                reason: "ImagePullBackOff".into(),
                message: msg,
            });
        }
        self.record(
            pod,
            Some(name),
            NORMAL,
            "Pulling",
            &format!("Pulling image {image:?}"),
        )
        .await;
        let started = Instant::now();
        match img
            .pull_image(cri::PullImageRequest {
                image: Some(spec),
                auth: None,
                sandbox_config: None,
            })
            .await
        {
            Ok(r) => {
                self.clear_backoff(&key);
                let msg = format!(
                    "Successfully pulled image {image:?} in {:.3}s",
                    started.elapsed().as_secs_f64()
                );
                self.record(pod, Some(name), NORMAL, "Pulled", &msg).await;
                Ok(r.into_inner().image_ref)
            }
            Err(e) => {
                self.bump_backoff(key);
                let msg = format!("Failed to pull image {image:?}: {}", e.message());
                self.record(pod, Some(name), WARNING, "Failed", &msg).await;
                self.record(pod, Some(name), WARNING, "Failed", "Error: ErrImagePull")
                    .await;
                Err(Waiting {
                    reason: "ErrImagePull".into(),
                    message: msg,
                })
            }
        }
    }

    /// The configMaps and secrets a container's env refers to, from the API.
    async fn env_data(&self, pod: &Pod, c: &Container) -> EnvData {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let (cms, secrets) = podconfig::env_references(c);
        let src = ApiSource(self.client.clone());
        let mut data = EnvData::default();
        for n in cms {
            if let Ok(Some(d)) = volumes::Source::config_map(&src, &ns, &n).await {
                data.config_maps.insert(n, d);
            }
        }
        for n in secrets {
            if let Ok(Some(d)) = volumes::Source::secret(&src, &ns, &n).await {
                data.secrets.insert(n, d);
            }
        }
        data
    }

    /// Pulls, creates and starts one container.
    #[allow(clippy::too_many_arguments)]
    async fn start_container(
        &self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
        sandbox_id: &str,
        sandbox_config: &cri::PodSandboxConfig,
        pod_ip: &str,
        vols: &HashMap<String, PathBuf>,
        files: &PodFiles,
    ) -> Result<String, Waiting> {
        let image_ref = self.ensure_image(pod, c).await?;
        let name = c.name.as_str();
        let data = self.env_data(pod, c).await;
        let config_error = |message: String| Waiting {
            reason: "CreateContainerConfigError".into(),
            message,
        };
        let env = podconfig::resolve_env(pod, c, &self.ctx, pod_ip, &data).map_err(config_error)?;
        let image = if image_ref.is_empty() {
            c.image.clone().unwrap_or_default()
        } else {
            image_ref
        };
        let config = podconfig::container_config(
            &self.ctx,
            pod,
            c,
            &ContainerInputs {
                attempt,
                env,
                volumes: vols,
                files,
                image,
            },
        )
        .map_err(config_error)?;
        let mut rt = self.cri.runtime.clone();
        let id = match rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
        {
            Ok(r) => r.into_inner().container_id,
            Err(e) => {
                let msg = e.message().to_owned();
                self.record(pod, Some(name), WARNING, "Failed", &format!("Error: {msg}"))
                    .await;
                return Err(Waiting {
                    reason: "CreateContainerError".into(),
                    message: msg,
                });
            }
        };
        self.record(
            pod,
            Some(name),
            NORMAL,
            "Created",
            &format!("Created container: {name}"),
        )
        .await;
        if let Err(e) = rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            let msg = e.message().to_owned();
            self.record(pod, Some(name), WARNING, "Failed", &format!("Error: {msg}"))
                .await;
            return Err(Waiting {
                reason: "RunContainerError".into(),
                message: msg,
            });
        }
        self.record(
            pod,
            Some(name),
            NORMAL,
            "Started",
            &format!("Started container {name}"),
        )
        .await;
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let target = self.target(pod_ip, &id, c);
            if let Err(e) = run_hook(hook, &target, Duration::from_secs(30)).await {
                let (ns, pname, uid) = podconfig::pod_key(pod);
                let msg = e.message(name, &format_pod(&pname, &ns, &uid));
                self.record(
                    pod,
                    Some(name),
                    WARNING,
                    REASON_FAILED_POST_START_HOOK,
                    &msg,
                )
                .await;
                // As kubelet: a failed postStart hook kills the container.
                let _ = rt
                    .stop_container(cri::StopContainerRequest {
                        container_id: id.clone(),
                        timeout: 0,
                    })
                    .await;
                return Err(Waiting {
                    reason: "PostStartHookError".into(),
                    message: msg,
                });
            }
        }
        Ok(id)
    }

    /// Removes every instance of a container but the newest, which `kubectl logs
    /// --previous` reads.
    async fn prune_instances(&self, all: &[&cri::ContainerStatus]) {
        let mut rt = self.cri.runtime.clone();
        for old in all.iter().skip(1) {
            if old.state != cri::ContainerState::ContainerRunning as i32 {
                let _ = rt
                    .remove_container(cri::RemoveContainerRequest {
                        container_id: old.id.clone(),
                    })
                    .await;
            }
        }
    }

    async fn stop_container(&self, pod: &Pod, c: &cri::ContainerStatus, grace: i64, reason: &str) {
        let name = c
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        self.record(pod, Some(&name), NORMAL, "Killing", reason)
            .await;
        let mut rt = self.cri.runtime.clone();
        if let Err(e) = rt
            .stop_container(cri::StopContainerRequest {
                container_id: c.id.clone(),
                timeout: grace.max(0),
            })
            .await
        {
            warn!(container = %c.id, error = %e.message(), "stop container");
        }
    }

    /// One round of driving the pod toward its spec; returns when to look again.
    pub async fn sync(&self, pod: &Pod) -> Duration {
        // A static pod carries the status written last, for its transition times.
        let mut with_status;
        let pod = if static_pods::is_static(pod) {
            with_status = pod.clone();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            with_status.status = self
                .static_status
                .lock()
                .ok()
                .and_then(|m| m.get(&uid).cloned());
            &with_status
        } else {
            pod
        };
        match self.sync_inner(pod).await {
            Ok(next) => next,
            Err(e) => {
                warn!(pod = %pod.metadata.name.as_deref().unwrap_or(""), error = %e.message(), "pod sync");
                Duration::from_secs(2)
            }
        }
    }

    async fn sync_inner(&self, pod: &Pod) -> Result<Duration, tonic::Status> {
        let (ns, name, uid) = podconfig::pod_key(pod);
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut rt = self.cri.runtime.clone();
        let api_phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let terminal = api_phase == "Succeeded"
            || api_phase == "Failed"
            || self.ended.lock().is_ok_and(|e| e.contains(&uid));
        let sandboxes = self.sandboxes(&uid).await?;
        let ready = sandboxes
            .iter()
            .find(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
        let mut waiting: HashMap<String, Waiting> = HashMap::new();
        let mut next = RESYNC;
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();

        if terminal {
            // Done for good: containers stopped and the network released, the records
            // kept for logs until the pod is deleted.
            for c in self.containers(&uid).await? {
                if c.state == cri::ContainerState::ContainerRunning as i32 {
                    self.stop_container(pod, &c, 0, "Stopping container of a finished pod")
                        .await;
                }
            }
            let mut last_sandbox = None;
            for s in &sandboxes {
                if s.state == cri::PodSandboxState::SandboxReady as i32 {
                    let _ = rt
                        .stop_pod_sandbox(cri::StopPodSandboxRequest {
                            pod_sandbox_id: s.id.clone(),
                        })
                        .await;
                }
                if last_sandbox.is_none() {
                    last_sandbox = rt
                        .pod_sandbox_status(cri::PodSandboxStatusRequest {
                            pod_sandbox_id: s.id.clone(),
                            verbose: false,
                        })
                        .await
                        .ok()
                        .and_then(|r| r.into_inner().status);
                }
            }
            // The containers' final states; the phase stays as it is (once the API has
            // the terminal phase this node wrote).
            if api_phase == "Succeeded" || api_phase == "Failed" {
                let obs = self
                    .observe(pod, last_sandbox, &uid, HashMap::new())
                    .await?;
                self.write_status(pod, obs, HashMap::new()).await;
                return Ok(Duration::from_secs(60));
            }
            return Ok(Duration::from_secs(1));
        }

        // Admission under memory pressure: BestEffort pods are refused, as kubelet does.
        if sandboxes.is_empty()
            && status::qos_class(pod) == "BestEffort"
            && self.under_pressure(Signal::MemoryAvailable)
        {
            let msg = "The node had condition: [MemoryPressure]. ";
            self.record(pod, None, WARNING, "Evicted", msg).await;
            self.fail(pod, "Evicted", msg).await;
            return Ok(Duration::from_secs(1));
        }

        let (sandbox_id, sandbox_config) = match ready {
            Some(s) => {
                let attempt = s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
                (
                    s.id.clone(),
                    podconfig::sandbox_config(&self.ctx, pod, attempt, &host_resolv),
                )
            }
            None => {
                let attempt = sandboxes
                    .first()
                    .and_then(|s| s.metadata.as_ref())
                    .map(|m| m.attempt + 1)
                    .unwrap_or(0);
                if !sandboxes.is_empty() {
                    self.record(
                        pod,
                        None,
                        NORMAL,
                        "SandboxChanged",
                        "Pod sandbox changed, it will be killed and re-created.",
                    )
                    .await;
                }
                for s in &sandboxes {
                    let _ = rt
                        .stop_pod_sandbox(cri::StopPodSandboxRequest {
                            pod_sandbox_id: s.id.clone(),
                        })
                        .await;
                    let _ = rt
                        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                            pod_sandbox_id: s.id.clone(),
                        })
                        .await;
                }
                let config = podconfig::sandbox_config(&self.ctx, pod, attempt, &host_resolv);
                match rt
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler: spec.runtime_class_name.clone().unwrap_or_default(),
                    })
                    .await
                {
                    Ok(r) => (r.into_inner().pod_sandbox_id, config),
                    Err(e) => {
                        let msg = format!("Failed to create pod sandbox: {}", e.message());
                        self.record(pod, None, WARNING, "FailedCreatePodSandBox", &msg)
                            .await;
                        self.write_status(pod, Observed::default(), HashMap::new())
                            .await;
                        return Ok(Duration::from_secs(5));
                    }
                }
            }
        };
        let sandbox = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status;
        let pod_ips: Vec<String> = if spec.host_network.unwrap_or(false) {
            vec![self.ctx.node_ip.clone()]
        } else {
            sandbox
                .as_ref()
                .and_then(|s| s.network.as_ref())
                .map(|n| {
                    std::iter::once(n.ip.clone())
                        .chain(n.additional_ips.iter().map(|i| i.ip.clone()))
                        .filter(|i| !i.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let pod_ip = pod_ips.first().cloned().unwrap_or_default();

        // Volumes and the files kubelet manages, refreshed on every round.
        let pod_dir = podconfig::pod_dir(&self.state_dir, &uid);
        let vols = match volumes::prepare(pod, &pod_dir, &ApiSource(self.client.clone())).await {
            Ok(v) => v,
            Err(msg) => {
                self.record(pod, None, WARNING, "FailedMount", &msg).await;
                let obs = self.observe(pod, sandbox, &uid, HashMap::new()).await?;
                self.write_status(pod, obs, HashMap::new()).await;
                return Ok(Duration::from_secs(5));
            }
        };
        let files = if spec.host_network.unwrap_or(false) {
            PodFiles { etc_hosts: None }
        } else {
            let hosts = pod_dir.join("etc-hosts");
            let text = podconfig::etc_hosts(pod, &pod_ips);
            if std::fs::read_to_string(&hosts).ok().as_deref() != Some(text.as_str()) {
                if let Err(e) =
                    std::fs::create_dir_all(&pod_dir).and_then(|_| std::fs::write(&hosts, &text))
                {
                    warn!(pod = %name, error = %e, "/etc/hosts of the pod");
                }
            }
            PodFiles {
                etc_hosts: Some(hosts),
            }
        };

        let all = self.containers(&uid).await?;
        let obs_now = Observed {
            containers: all.clone(),
            ..Default::default()
        };
        let restarts: HashSet<String> = self
            .restarts
            .lock()
            .map(|mut r| {
                let mine: HashSet<String> = r
                    .iter()
                    .filter(|(u, _)| *u == uid)
                    .map(|(_, c)| c.clone())
                    .collect();
                r.retain(|(u, _)| *u != uid);
                mine
            })
            .unwrap_or_default();
        let grace = spec.termination_grace_period_seconds.unwrap_or(30);

        // What to start, in order: init containers one at a time, then the rest.
        let mut init_done = true;
        let mut plan: Vec<(&Container, u32)> = Vec::new();
        let inits = spec.init_containers.as_deref().unwrap_or(&[]);
        for ic in inits {
            let inst = instances(&obs_now, &ic.name);
            let latest = inst.first().copied();
            let running =
                latest.is_some_and(|c| c.state == cri::ContainerState::ContainerRunning as i32);
            let exited = latest.filter(|c| c.state == cri::ContainerState::ContainerExited as i32);
            if is_sidecar(ic) {
                match (latest, exited) {
                    (Some(_), None) if running => continue,
                    (None, _) => {
                        plan.push((ic, 0));
                        init_done = false;
                        break;
                    }
                    (Some(l), _) => {
                        let attempt = l.metadata.as_ref().map(|m| m.attempt + 1).unwrap_or(0);
                        plan.push((ic, attempt));
                        // A sidecar that ran once does not hold back the containers.
                        continue;
                    }
                }
            }
            match exited {
                Some(c) if c.exit_code == 0 => continue,
                Some(c) if policy != "Never" => {
                    plan.push((ic, c.metadata.as_ref().map(|m| m.attempt + 1).unwrap_or(0)));
                }
                Some(_) => {}
                None if latest.is_none() => plan.push((ic, 0)),
                None => {}
            }
            init_done = false;
            break;
        }
        if init_done {
            for c in &spec.containers {
                let inst = instances(&obs_now, &c.name);
                let Some(latest) = inst.first().copied() else {
                    plan.push((c, 0));
                    continue;
                };
                let attempt = latest.metadata.as_ref().map(|m| m.attempt + 1).unwrap_or(0);
                let state = cri::ContainerState::try_from(latest.state)
                    .unwrap_or(cri::ContainerState::ContainerUnknown);
                match state {
                    cri::ContainerState::ContainerRunning if restarts.contains(&c.name) => {
                        let (kind, probe_grace) = self
                            .probes
                            .restart_needed(&uid, &c.name)
                            .map(|(k, g)| (k.to_string().to_lowercase(), g))
                            .unwrap_or_else(|| ("liveness".into(), None));
                        let msg = if policy == "Never" {
                            format!("Container {} failed {kind} probe", c.name)
                        } else {
                            format!(
                                "Container {} failed {kind} probe, will be restarted",
                                c.name
                            )
                        };
                        self.stop_container(pod, latest, probe_grace.unwrap_or(grace), &msg)
                            .await;
                        self.probes.remove_container(&uid, &c.name);
                        next = Duration::from_millis(200);
                    }
                    cri::ContainerState::ContainerRunning => {}
                    cri::ContainerState::ContainerExited => {
                        let restart = match policy.as_str() {
                            "Always" => true,
                            "OnFailure" => latest.exit_code != 0,
                            _ => false,
                        };
                        if restart {
                            plan.push((c, attempt));
                        }
                    }
                    // Created but never started (an earlier agent stopped halfway), or
                    // unknown: replaced.
                    _ => {
                        let _ = rt
                            .remove_container(cri::RemoveContainerRequest {
                                container_id: latest.id.clone(),
                            })
                            .await;
                        plan.push((c, attempt.saturating_sub(1)));
                    }
                }
            }
        }

        for (c, attempt) in plan {
            let key = (uid.clone(), c.name.clone());
            let inst = instances(&obs_now, &c.name);
            if let Some(prev) = inst
                .first()
                .filter(|p| p.state == cri::ContainerState::ContainerExited as i32)
            {
                // A container that ran long enough starts with a clean slate.
                let ran = Duration::from_nanos((prev.finished_at - prev.started_at).max(0) as u64);
                if ran >= BACKOFF_RESET {
                    self.clear_backoff(&key);
                }
                if let Some(left) = self.in_backoff(&key) {
                    let delay = self.backoff_delay(&key);
                    let msg = format!(
                        "back-off {}s restarting failed container={} pod={name}_{ns}({uid})",
                        delay.as_secs(),
                        c.name
                    );
                    self.record(
                        pod,
                        Some(&c.name),
                        WARNING,
                        "BackOff",
                        &format!(
                            "Back-off restarting failed container {} in pod {name}_{ns}({uid})",
                            c.name
                        ),
                    )
                    .await;
                    waiting.insert(
                        c.name.clone(),
                        Waiting {
                            reason: "CrashLoopBackOff".into(),
                            message: msg,
                        },
                    );
                    next = next.min(left + Duration::from_millis(50));
                    continue;
                }
                self.bump_backoff(key.clone());
            }
            match self
                .start_container(
                    pod,
                    c,
                    attempt,
                    &sandbox_id,
                    &sandbox_config,
                    &pod_ip,
                    &vols,
                    &files,
                )
                .await
            {
                Ok(id) => {
                    self.probes
                        .add_container(&uid, &c.name, &id, c, self.target(&pod_ip, &id, c));
                    self.prune_instances(&inst).await;
                    next = next.min(Duration::from_secs(1));
                }
                Err(w) => {
                    let retry = if w.reason == "ErrImagePull" || w.reason == "ImagePullBackOff" {
                        self.in_backoff(&(uid.clone(), format!("image:{}", c.name)))
                            .unwrap_or(Duration::from_secs(1))
                    } else {
                        Duration::from_secs(5)
                    };
                    next = next.min(retry + Duration::from_millis(50));
                    waiting.insert(c.name.clone(), w);
                }
            }
        }
        let mut obs = self.observe(pod, sandbox, &uid, waiting.clone()).await?;
        // Probes run for every running container, those an earlier agent started too.
        for c in inits
            .iter()
            .filter(|c| is_sidecar(c))
            .chain(spec.containers.iter())
        {
            let inst = instances(&obs, &c.name);
            let Some(cur) = inst
                .first()
                .filter(|x| x.state == cri::ContainerState::ContainerRunning as i32)
            else {
                continue;
            };
            let started =
                std::time::UNIX_EPOCH + Duration::from_nanos(cur.started_at.max(0) as u64);
            self.probes.add_container_started_at(
                &uid,
                &c.name,
                &cur.id,
                c,
                self.target(&pod_ip, &cur.id, c),
                started,
            );
            if c.readiness_probe.is_some() {
                obs.ready
                    .insert(c.name.clone(), self.probes.ready(&uid, &c.name));
            }
            if c.startup_probe.is_some() {
                obs.started.insert(
                    c.name.clone(),
                    self.probes.started(&uid, &c.name).unwrap_or(false),
                );
            }
        }
        let phase = self.write_status(pod, obs, waiting).await;
        if !init_done || phase.as_deref() == Some("Pending") {
            next = next.min(Duration::from_secs(1));
        }
        Ok(next)
    }

    async fn observe(
        &self,
        _pod: &Pod,
        sandbox: Option<cri::PodSandboxStatus>,
        uid: &str,
        waiting: HashMap<String, Waiting>,
    ) -> Result<Observed, tonic::Status> {
        Ok(Observed {
            sandbox,
            containers: self.containers(uid).await?,
            waiting,
            ready: HashMap::new(),
            started: HashMap::new(),
            runtime_name: self.runtime_name.clone(),
            host_ip: Some(self.ctx.node_ip.clone()),
        })
    }

    /// Writes the status when it differs from what the API holds; returns the phase.
    async fn write_status(
        &self,
        pod: &Pod,
        mut obs: Observed,
        waiting: HashMap<String, Waiting>,
    ) -> Option<String> {
        if obs.runtime_name.is_empty() {
            obs.runtime_name = self.runtime_name.clone();
            obs.host_ip = Some(self.ctx.node_ip.clone());
        }
        if obs.waiting.is_empty() {
            obs.waiting = waiting;
        }
        let status = status::pod_status(pod, &obs, jiff::Timestamp::now());
        let phase = status.phase.clone();
        let (ns, name, uid) = podconfig::pod_key(pod);
        if pod.status.as_ref() == Some(&status) {
            return phase;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        // A static pod's status goes to its mirror, whose UID is the API's own.
        let patch = if static_pods::is_static(pod) {
            if let Ok(mut m) = self.static_status.lock() {
                m.insert(uid.clone(), status.clone());
            }
            json!({ "status": status })
        } else {
            json!({ "metadata": { "uid": uid }, "status": status })
        };
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(p) => {
                if let Ok(mut m) = self.pods.lock() {
                    m.insert(uid, p);
                }
            }
            Err(e) => debug!(pod = %name, error = %e, "pod status"),
        }
        phase
    }

    fn under_pressure(&self, signal: Signal) -> bool {
        self.pressure.lock().is_ok_and(|p| p.contains(&signal))
    }

    /// Ends the pod in phase Failed with a reason, as kubelet does for evictions.
    async fn fail(&self, pod: &Pod, reason: &str, message: &str) {
        let (ns, name, uid) = podconfig::pod_key(pod);
        if let Ok(mut e) = self.ended.lock() {
            e.insert(uid);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let patch =
            json!({ "status": { "phase": "Failed", "reason": reason, "message": message } });
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(pod = %name, error = %e, "pod status");
        }
    }

    /// Evicts a pod: its containers are killed at once and it ends Failed/Evicted.
    pub async fn evict(&self, pod: &Pod, signal: Signal) {
        let (_, name, uid) = podconfig::pod_key(pod);
        let msg = eviction::message(signal);
        info!(pod = %name, signal = signal.name(), "evicting a pod");
        self.record(pod, None, WARNING, "Evicted", &msg).await;
        if let Ok(cs) = self.containers(&uid).await {
            for c in cs
                .iter()
                .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            {
                let cname = c
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                self.stop_container(pod, c, 0, &format!("Stopping container {cname}"))
                    .await;
            }
        }
        self.fail(pod, "Evicted", &msg).await;
        self.wake(&uid);
    }

    /// Stops everything of the pod, gracefully, and removes it from the runtime.
    pub async fn terminate(&self, pod: &Pod, grace: i64) {
        let (_, name, uid) = podconfig::pod_key(pod);
        let mut rt = self.cri.runtime.clone();
        if let Ok(cs) = self.containers(&uid).await {
            let running: Vec<_> = cs
                .iter()
                .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
                .collect();
            let spec = pod.spec.clone().unwrap_or_default();
            let specs: Vec<Container> = spec
                .init_containers
                .clone()
                .unwrap_or_default()
                .into_iter()
                .chain(spec.containers.clone())
                .collect();
            let pod_ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default();
            let stops = running.iter().map(|c| {
                let cname = c
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let cspec = specs.iter().find(|s| s.name == cname).cloned();
                let pod_ip = pod_ip.clone();
                async move {
                    let started = Instant::now();
                    let hook = cspec
                        .as_ref()
                        .and_then(|s| s.lifecycle.as_ref())
                        .and_then(|l| l.pre_stop.clone());
                    if let (Some(hook), Some(cs)) = (hook, cspec.as_ref()) {
                        let target = self.target(&pod_ip, &c.id, cs);
                        let budget = Duration::from_secs(grace.max(0) as u64);
                        if let Err(e) = run_hook(&hook, &target, budget).await {
                            let (ns, pname, uid) = podconfig::pod_key(pod);
                            let msg = e.message(&cname, &format_pod(&pname, &ns, &uid));
                            self.record(
                                pod,
                                Some(&cname),
                                WARNING,
                                REASON_FAILED_PRE_STOP_HOOK,
                                &msg,
                            )
                            .await;
                        }
                    }
                    // The hook's time comes off the grace period, as kubelet counts it.
                    let left = grace - started.elapsed().as_secs() as i64;
                    self.stop_container(pod, c, left.max(2), &format!("Stopping container {cname}"))
                        .await
                }
            });
            futures_util::future::join_all(stops).await;
        }
        if let Ok(sbs) = self.sandboxes(&uid).await {
            for s in sbs {
                let _ = rt
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: s.id.clone(),
                    })
                    .await;
                if let Err(e) = rt
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: s.id.clone(),
                    })
                    .await
                {
                    warn!(pod = %name, sandbox = %s.id, error = %e.message(), "remove sandbox");
                }
            }
        }
        self.remove_pod_cgroup(&uid);
        let _ = std::fs::remove_dir_all(podconfig::pod_dir(&self.state_dir, &uid));
        let _ = std::fs::remove_dir_all(podconfig::log_directory(&self.ctx, pod));
        if let Ok(mut m) = self.backoffs.lock() {
            m.retain(|(u, _), _| *u != uid);
        }
        if let Ok(mut m) = self.pods.lock() {
            m.remove(&uid);
        }
        self.probes.remove_pod(&uid);
        if let Ok(mut m) = self.wakes.lock() {
            m.remove(&uid);
        }
        if let Ok(mut m) = self.static_status.lock() {
            m.remove(&uid);
        }
        if let Ok(mut m) = self.ended.lock() {
            m.remove(&uid);
        }
        self.events.forget(&uid);
        info!(pod = %name, uid = %uid, "pod terminated");
    }
}

#[derive(Default)]
struct EnvData {
    config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl EnvSource for EnvData {
    fn config_map(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.config_maps.get(name)
    }
    fn secret(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.secrets.get(name)
    }
}

/// The grace period of a pod being deleted: the deletion's, else the spec's.
pub fn grace_period(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0)
}

/// One pod's worker: syncs on changes and wake-ups until the pod is gone.
async fn work(k: Arc<Kubelet>, mut rx: watch::Receiver<Option<Pod>>, wake: Arc<Notify>) {
    let mut last: Option<Pod> = None;
    loop {
        let current = rx.borrow_and_update().clone();
        match current {
            None => {
                // Gone from the API (deleted at once, or the node no longer holds it).
                if let Some(p) = &last {
                    if static_pods::is_static(p) {
                        // Its manifest is gone: stopped as a deleted pod is.
                        k.terminate(p, grace_period(p)).await;
                        remove_mirror(&k, p).await;
                    } else {
                        k.terminate(p, grace_period(p).min(2)).await;
                    }
                }
                return;
            }
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                k.terminate(&p, grace_period(&p)).await;
                let (ns, name, uid) = podconfig::pod_key(&p);
                let api: Api<Pod> = Api::namespaced(k.client.clone(), &ns);
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&name, &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => {
                        warn!(pod = %name, error = %e, "delete the terminated pod");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                }
                return;
            }
            Some(p) => {
                if let Ok(mut m) = k.pods.lock() {
                    m.insert(p.metadata.uid.clone().unwrap_or_default(), p.clone());
                }
                if last.is_none() {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    if k.sandboxes(&uid).await.is_ok_and(|s| !s.is_empty()) {
                        info!(pod = %p.metadata.name.as_deref().unwrap_or(""), uid = %uid, "adopting the pod's sandbox");
                    }
                }
                let next = k.sync(&p).await;
                last = Some(p);
                tokio::select! {
                    r = rx.changed() => if r.is_err() {
                        // The watch loop stopped: the agent is shutting down, pods stay.
                        return;
                    },
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(next) => {}
                }
            }
        }
    }
}

/// Watches the pods bound to this node and runs a worker for each, until `shutdown`.
/// Pods keep running when the agent stops; the next agent adopts them.
pub async fn run(k: Arc<Kubelet>, mut shutdown: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(k.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", k.ctx.node_name));
    let mut stream = watcher(api, cfg).boxed();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut listing: Option<HashSet<String>> = None;
    // Orphans are judged only against a complete listing.
    let mut synced = false;
    let mut relist = tokio::time::interval(RELIST);
    let mut seen_states: HashMap<String, Vec<(String, i32)>> = HashMap::new();
    let mut ticks = 0u64;
    // Static pods, by UID; read every 20 s, as kubelet's file source checks.
    let mut statics: std::collections::BTreeMap<String, Pod> = Default::default();
    let mut file_check = tokio::time::interval(Duration::from_secs(20));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = file_check.tick() => {
                let Some(dir) = k.manifest_dir.clone() else { continue };
                let now = static_pods::read_dir(&dir, &k.ctx.node_name);
                for uid in statics.keys() {
                    if !now.contains_key(uid) {
                        // The worker stops the pod, then removes its mirror.
                        if let Some(w) = workers.get(uid) {
                            let _ = w.pod.send(None);
                        }
                    }
                }
                for (uid, p) in &now {
                    if !statics.contains_key(uid) {
                        info!(pod = %p.metadata.name.as_deref().unwrap_or(""), "static pod");
                        deliver(&k, &mut workers, p.clone());
                    }
                    ensure_mirror(&k, p).await;
                }
                statics = now;
            }
            _ = relist.tick() => {
                ticks += 1;
                workers.retain(|_, w| !w.pod.is_closed());
                let now = pleg(&k).await;
                for (uid, states) in &now {
                    if seen_states.get(uid) != Some(states) {
                        if let Some(w) = workers.get(uid) {
                            w.wake.notify_one();
                        }
                    }
                }
                // Sandboxes of pods the API does not hold (deleted while the agent was
                // down) are removed, once the first listing is complete.
                if synced && ticks % 10 == 1 && listing.is_none() {
                    for uid in now.keys() {
                        if !workers.contains_key(uid) && !statics.contains_key(uid) {
                            orphan(&k, uid).await;
                        }
                    }
                }
                seen_states = now;
            }
            ev = stream.next() => {
                let Some(ev) = ev else { return };
                match ev {
                    Ok(watcher::Event::Init) => listing = Some(HashSet::new()),
                    // Mirror pods are the API's view of static pods; those run from files.
                    Ok(watcher::Event::InitApply(p) | watcher::Event::Apply(p)) if static_pods::is_mirror(&p) => {
                        if p.metadata.deletion_timestamp.is_some() {
                            remove_mirror(&k, &p).await;
                        }
                    }
                    Ok(watcher::Event::Delete(p)) if static_pods::is_mirror(&p) => {}
                    Ok(watcher::Event::InitApply(p)) => {
                        if let Some(l) = listing.as_mut() {
                            l.insert(p.metadata.uid.clone().unwrap_or_default());
                        }
                        deliver(&k, &mut workers, p);
                    }
                    Ok(watcher::Event::InitDone) => {
                        let seen = listing.take().unwrap_or_default();
                        synced = true;
                        for (uid, w) in &workers {
                            if !seen.contains(uid) && !statics.contains_key(uid) {
                                let _ = w.pod.send(None);
                            }
                        }
                        for uid in pleg(&k).await.keys() {
                            if !seen.contains(uid) && !workers.contains_key(uid) && !statics.contains_key(uid) {
                                orphan(&k, uid).await;
                            }
                        }
                    }
                    Ok(watcher::Event::Apply(p)) => deliver(&k, &mut workers, p),
                    Ok(watcher::Event::Delete(p)) => {
                        let uid = p.metadata.uid.clone().unwrap_or_default();
                        if let Some(w) = workers.get(&uid) {
                            let _ = w.pod.send(None);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "pod watch");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}

/// Creates the mirror of a static pod when it is missing, or replaces one of another
/// version of the manifest.
async fn ensure_mirror(k: &Kubelet, p: &Pod) {
    let (ns, name, _) = podconfig::pod_key(p);
    let api: Api<Pod> = Api::namespaced(k.client.clone(), &ns);
    let hash = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(static_pods::CONFIG_HASH).cloned());
    match api.get_opt(&name).await {
        Ok(Some(m)) => {
            let current = m
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(static_pods::CONFIG_MIRROR).cloned());
            if current == hash && m.metadata.deletion_timestamp.is_none() {
                return;
            }
            if current.is_none() {
                warn!(pod = %name, "a pod that is not a mirror has the name of a static pod");
                return;
            }
            remove_mirror(k, &m).await;
        }
        Ok(None) => {}
        Err(e) => {
            debug!(pod = %name, error = %e, "mirror pod");
            return;
        }
    }
    let node_uid = Api::<k8s_openapi::api::core::v1::Node>::all(k.client.clone())
        .get_opt(&k.ctx.node_name)
        .await
        .ok()
        .flatten()
        .and_then(|n| n.metadata.uid)
        .unwrap_or_default();
    let mirror = static_pods::mirror(p, &node_uid);
    match api.create(&kube::api::PostParams::default(), &mirror).await {
        Ok(_) => {
            // The new mirror has no status yet: the next sync writes it all.
            let uid = p.metadata.uid.clone().unwrap_or_default();
            if let Ok(mut m) = k.static_status.lock() {
                m.remove(&uid);
            }
            k.wake(&uid);
        }
        Err(e) => debug!(pod = %name, error = %e, "create the mirror pod"),
    }
}

/// Deletes a mirror pod at once (its pod runs from the file, not from the API).
async fn remove_mirror(k: &Kubelet, p: &Pod) {
    let (ns, name, _) = podconfig::pod_key(p);
    let api: Api<Pod> = Api::namespaced(k.client.clone(), &ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    if let Err(e) = api.delete(&name, &dp).await {
        debug!(pod = %name, error = %e, "delete the mirror pod");
    }
}

fn deliver(k: &Arc<Kubelet>, workers: &mut HashMap<String, Worker>, p: Pod) {
    let uid = p.metadata.uid.clone().unwrap_or_default();
    if let Some(w) = workers.get(&uid) {
        if !w.pod.is_closed() {
            let _ = w.pod.send(Some(p));
            return;
        }
    }
    let (tx, rx) = watch::channel(Some(p));
    let wake = Arc::new(Notify::new());
    if let Ok(mut m) = k.wakes.lock() {
        m.insert(uid.clone(), wake.clone());
    }
    tokio::spawn(work(k.clone(), rx, wake.clone()));
    workers.insert(uid, Worker { pod: tx, wake });
}

/// Acts on probe results: events for failures and warnings, a restart for a failed
/// liveness or startup probe, and a status update when readiness changes.
pub async fn handle_probe_events(
    k: Arc<Kubelet>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ProbeEvent>,
) {
    while let Some(ev) = rx.recv().await {
        let pod = k.pod_by_uid(&ev.pod_uid);
        match &ev.result {
            ProbeEventResult::Unhealthy | ProbeEventResult::Warning => {
                if let (Some(pod), Some(reason)) = (&pod, ev.result.reason()) {
                    k.record(pod, Some(&ev.container_name), WARNING, reason, &ev.message)
                        .await;
                }
            }
            ProbeEventResult::RestartNeeded { .. } => {
                k.request_restart(&ev.pod_uid, &ev.container_name);
                k.wake(&ev.pod_uid);
            }
            ProbeEventResult::Success | ProbeEventResult::Failure => k.wake(&ev.pod_uid),
        }
    }
}

/// kubelet's eviction manager: every 10 s, the crossed thresholds become the node's
/// pressure, and one pod is evicted while any is crossed.
pub async fn evict_under_pressure(
    k: Arc<Kubelet>,
    thresholds: Vec<Threshold>,
    root_dir: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let dir = root_dir.clone();
        let Ok(host) = tokio::task::spawn_blocking(move || super::node::read_host(&dir)).await
        else {
            continue;
        };
        let crossed: Vec<Signal> = eviction::crossed(&thresholds, &host)
            .iter()
            .map(|t| t.signal)
            .collect();
        if let Ok(mut p) = k.pressure.lock() {
            p.clone_from(&crossed);
        }
        let Some(signal) = crossed.first().copied() else {
            continue;
        };
        let pods = k.pods();
        if let Some(victim) = eviction::rank(&pods).first() {
            k.evict(victim, signal).await;
        }
    }
}

/// The state of every container, per pod uid (sandboxes included).
async fn pleg(k: &Kubelet) -> HashMap<String, Vec<(String, i32)>> {
    let mut rt = k.cri.runtime.clone();
    let mut out: HashMap<String, Vec<(String, i32)>> = HashMap::new();
    if let Ok(r) = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
    {
        for s in r.into_inner().items {
            if let Some(uid) = s.labels.get(POD_UID) {
                out.entry(uid.clone()).or_default().push((s.id, s.state));
            }
        }
    }
    if let Ok(r) = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
    {
        for c in r.into_inner().containers {
            if let Some(uid) = c.labels.get(POD_UID) {
                out.entry(uid.clone()).or_default().push((c.id, c.state));
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// Removes the sandboxes of a pod the API no longer has.
async fn orphan(k: &Kubelet, uid: &str) {
    let mut rt = k.cri.runtime.clone();
    let Ok(sbs) = k.sandboxes(uid).await else {
        return;
    };
    for s in sbs {
        info!(sandbox = %s.id, uid, "removing the sandbox of a pod this node no longer runs");
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await;
        if let Some(md) = &s.metadata {
            let dir = k
                .ctx
                .pod_logs_dir
                .join(format!("{}_{}_{}", md.namespace, md.name, md.uid));
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    k.remove_pod_cgroup(uid);
    let _ = std::fs::remove_dir_all(podconfig::pod_dir(&k.state_dir, uid));
}
