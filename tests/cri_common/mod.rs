//! Harness of the CRI integration tests: one `podrun agent` per test, on the test's own
//! roots (from [`common::Env`]) and a unix socket in its temp dir, driven through the
//! generated tonic clients exactly as kubelet or crictl would drive it.
//!
//! The agent is a child process killed by its PID when the test ends. Pod monitors
//! outlive the agent by design, so a test removes its sandboxes through the CRI first
//! ([`Agent::finish`] does it for whatever is left) and then checks that nothing leaked.
//! The scenarios follow the public critest validation specs (cri-tools `pkg/validate`),
//! written here in our own terms.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use podrun_cri_proto::v1;
use podrun_cri_proto::v1::image_service_client::ImageServiceClient;
use podrun_cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::common::Env;

pub const BUSYBOX: &str = "docker.io/library/busybox:latest";
pub const NGINX: &str = "docker.io/library/nginx:latest";

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A name unique within this test binary (and across binaries, by PID).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::SeqCst)
    )
}

/// A running `podrun agent` and clients connected to it.
pub struct Agent {
    pub env: Env,
    pub socket: PathBuf,
    pub rt: RuntimeServiceClient<Channel>,
    pub img: ImageServiceClient<Channel>,
    child: Option<Child>,
    log: PathBuf,
    finished: bool,
}

impl Agent {
    /// An agent on loopback-only pods (`--network none`) with `images` loaded.
    pub async fn start(images: &[&str]) -> Agent {
        let env = Env::new(images);
        Self::start_in(env).await
    }

    /// An agent on an existing instance: its roots, its network options.
    pub async fn start_in(env: Env) -> Agent {
        let socket = env.dir.path().join("cri.sock");
        let log = env.dir.path().join("agent.log");
        let (child, rt, img) = spawn(&env, &socket, &log, None).await;
        Agent {
            env,
            socket,
            rt,
            img,
            child: Some(child),
            log,
            finished: false,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// The agent's own log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL the agent by PID (a crash): pods and monitors stay.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
    }

    /// Start the agent again on the same roots and socket and reconnect the clients.
    pub async fn restart(&mut self) {
        self.restart_with_fault(None).await
    }

    /// Restart with `PODRUN_FAULT` set: the agent kills itself with SIGKILL when it
    /// reaches that point (see podrun_runtime::fault).
    pub async fn restart_with_fault(&mut self, fault: Option<&str>) {
        self.kill_hard();
        let _ = std::fs::remove_file(&self.socket);
        let (child, rt, img) = spawn(&self.env, &self.socket, &self.log, fault).await;
        self.child = Some(child);
        self.rt = rt;
        self.img = img;
    }

    /// Wait until the agent process has exited by itself (after a fault point).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "the agent did not die at its fault point"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM by PID and wait for the agent to exit.
    fn stop_agent(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > end => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }

    /// End of a test: remove every sandbox still known to the agent (through the CRI),
    /// stop the agent, and assert nothing leaked.
    pub async fn finish(mut self) {
        let sandboxes = self
            .rt
            .list_pod_sandbox(v1::ListPodSandboxRequest::default())
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        for s in sandboxes {
            self.remove_sandbox(&s.id).await;
        }
        let left = self.containers(None).await;
        assert!(
            left.is_empty(),
            "containers left without a sandbox: {left:?}"
        );
        self.stop_agent();
        self.finished = true;
        self.env.assert_no_leaks();
        let pinned: Vec<_> = std::fs::read_dir(self.env.state.join("netns"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(pinned.is_empty(), "pinned netns left: {pinned:?}");
    }

    // ---- sandboxes ----

    /// A sandbox config with unique metadata and a log directory in the test's dir.
    pub fn sandbox_config(&self, name: &str) -> v1::PodSandboxConfig {
        let uid = unique("uid");
        let log_dir = self
            .env
            .dir
            .path()
            .join("podlogs")
            .join(format!("default_{name}_{uid}"));
        std::fs::create_dir_all(&log_dir).unwrap();
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: name.to_string(),
                uid,
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels: HashMap::from([("test".to_string(), name.to_string())]),
            annotations: HashMap::from([("podrun.test/annotation".to_string(), "a".to_string())]),
            linux: Some(v1::LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    pub async fn run_sandbox(&mut self, config: &v1::PodSandboxConfig) -> String {
        let r = self
            .rt
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await;
        match r {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => panic!("RunPodSandbox: {e}\nagent log:\n{}", self.log()),
        }
    }

    /// A default sandbox: (id, config).
    pub async fn sandbox(&mut self, name: &str) -> (String, v1::PodSandboxConfig) {
        let cfg = self.sandbox_config(name);
        let id = self.run_sandbox(&cfg).await;
        (id, cfg)
    }

    pub async fn sandbox_status(
        &mut self,
        id: &str,
    ) -> Result<v1::PodSandboxStatus, tonic::Status> {
        self.rt
            .pod_sandbox_status(v1::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await
            .map(|r| r.into_inner().status.expect("status present"))
    }

    pub async fn list_sandboxes(
        &mut self,
        filter: Option<v1::PodSandboxFilter>,
    ) -> Vec<v1::PodSandbox> {
        self.rt
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items
    }

    pub async fn stop_sandbox(&mut self, id: &str) {
        self.rt
            .stop_pod_sandbox(v1::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}"));
    }

    /// Stop, then remove, as kubelet does.
    pub async fn remove_sandbox(&mut self, id: &str) {
        self.stop_sandbox(id).await;
        self.rt
            .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}"));
    }

    // ---- containers ----

    /// A container config running `command` in busybox, logging to `<name>.log`.
    pub fn container_config(&self, name: &str, command: &[&str]) -> v1::ContainerConfig {
        v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(v1::ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            labels: HashMap::from([("container".to_string(), name.to_string())]),
            annotations: HashMap::from([("podrun.test/c".to_string(), name.to_string())]),
            linux: Some(v1::LinuxContainerConfig {
                resources: Some(v1::LinuxContainerResources::default()),
                security_context: Some(v1::LinuxContainerSecurityContext::default()),
            }),
            ..Default::default()
        }
    }

    pub async fn try_create_container(
        &mut self,
        sandbox: &str,
        sandbox_config: &v1::PodSandboxConfig,
        config: v1::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.rt
            .create_container(v1::CreateContainerRequest {
                pod_sandbox_id: sandbox.to_string(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn create_container(
        &mut self,
        sandbox: &str,
        sandbox_config: &v1::PodSandboxConfig,
        config: v1::ContainerConfig,
    ) -> String {
        match self
            .try_create_container(sandbox, sandbox_config, config)
            .await
        {
            Ok(id) => id,
            Err(e) => panic!("CreateContainer: {e}\nagent log:\n{}", self.log()),
        }
    }

    pub async fn try_start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .start_container(v1::StartContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .map(|_| ())
    }

    pub async fn start_container(&mut self, id: &str) {
        if let Err(e) = self.try_start_container(id).await {
            panic!("StartContainer {id}: {e}\nagent log:\n{}", self.log());
        }
    }

    /// Create and start; waits until it runs. Returns the container ID.
    pub async fn run_container(
        &mut self,
        sandbox: &str,
        sandbox_config: &v1::PodSandboxConfig,
        config: v1::ContainerConfig,
    ) -> String {
        let id = self.create_container(sandbox, sandbox_config, config).await;
        self.start_container(&id).await;
        self.wait_container_state(&id, v1::ContainerState::ContainerRunning)
            .await;
        id
    }

    pub async fn container_status(
        &mut self,
        id: &str,
    ) -> Result<v1::ContainerStatus, tonic::Status> {
        self.rt
            .container_status(v1::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .map(|r| r.into_inner().status.expect("status present"))
    }

    /// Poll the container's status until it reaches `state` (one minute at most).
    pub async fn wait_container_state(
        &mut self,
        id: &str,
        state: v1::ContainerState,
    ) -> v1::ContainerStatus {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let st = self
                .container_status(id)
                .await
                .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"));
            if st.state == state as i32 {
                return st;
            }
            assert!(
                Instant::now() < end,
                "container {id} never reached {state:?}; last status {st:?}\nagent log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn containers(&mut self, filter: Option<v1::ContainerFilter>) -> Vec<v1::Container> {
        self.rt
            .list_containers(v1::ListContainersRequest { filter })
            .await
            .expect("ListContainers")
            .into_inner()
            .containers
    }

    pub async fn stop_container(&mut self, id: &str, timeout: i64) {
        self.rt
            .stop_container(v1::StopContainerRequest {
                container_id: id.to_string(),
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
    }

    pub async fn remove_container(&mut self, id: &str) {
        self.rt
            .remove_container(v1::RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
    }

    /// ExecSync with a timeout in seconds.
    pub async fn try_exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<v1::ExecSyncResponse, tonic::Status> {
        self.rt
            .exec_sync(v1::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// ExecSync that must succeed with exit code 0; returns stdout as text.
    pub async fn exec(&mut self, id: &str, cmd: &[&str]) -> String {
        let r = match self.try_exec(id, cmd, 30).await {
            Ok(r) => r,
            Err(e) => panic!("ExecSync {cmd:?}: {e}\nagent log:\n{}", self.log()),
        };
        assert_eq!(
            r.exit_code,
            0,
            "ExecSync {cmd:?} exited {}: stdout {:?} stderr {:?}",
            r.exit_code,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).into_owned()
    }

    /// ExecSync: (exit code, stdout, stderr); the call itself must succeed.
    pub async fn exec_any(&mut self, id: &str, cmd: &[&str]) -> (i32, String, String) {
        let r = self
            .try_exec(id, cmd, 30)
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"));
        (
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    }

    // ---- images ----

    pub async fn image_status(&mut self, image: &str) -> Option<v1::Image> {
        self.img
            .image_status(v1::ImageStatusRequest {
                image: Some(v1::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| panic!("ImageStatus {image}: {e}"))
            .into_inner()
            .image
    }

    pub async fn list_images(&mut self) -> Vec<v1::Image> {
        self.img
            .list_images(v1::ListImagesRequest::default())
            .await
            .expect("ListImages")
            .into_inner()
            .images
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A failed test still stops its agent (by PID); `Env`'s own drop then removes
        // the pods through the CLI. The leak check only makes sense after a clean end.
        let clean = !self.finished && !std::thread::panicking();
        self.stop_agent();
        if clean {
            panic!("test ended without Agent::finish(): sandboxes may be left behind");
        }
    }
}

/// Start `podrun agent` for `env` and connect both clients.
async fn spawn(
    env: &Env,
    socket: &Path,
    log: &Path,
    fault: Option<&str>,
) -> (
    Child,
    RuntimeServiceClient<Channel>,
    ImageServiceClient<Channel>,
) {
    let logfile = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = env.cmd(&[
        "agent",
        "--socket",
        socket.to_str().unwrap(),
        "--stream-addr",
        "127.0.0.1:0",
    ]);
    cmd.stdout(Stdio::from(logfile.try_clone().unwrap()))
        .stderr(Stdio::from(logfile))
        .env("RUST_LOG", "info");
    if let Some(f) = fault {
        cmd.env("PODRUN_FAULT", f);
    }
    let mut child = cmd.spawn().expect("spawn podrun agent");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "podrun agent exited early ({st}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if socket.exists() {
            if let Ok(ch) = connect(socket).await {
                let mut rt = RuntimeServiceClient::new(ch.clone());
                // The socket may exist a moment before the server answers.
                if rt
                    .version(v1::VersionRequest {
                        version: "v1".into(),
                    })
                    .await
                    .is_ok()
                {
                    return (child, rt, ImageServiceClient::new(ch));
                }
            }
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "podrun agent did not answer on {} within 30s:\n{}",
                socket.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gRPC channel over the unix socket (the URI is a placeholder tonic requires).
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The CRI log lines of a file: (timestamp, stream, tag, content).
pub fn parse_cri_log(path: &Path) -> Vec<(String, String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap_or_default().to_string();
            let stream = it.next().unwrap_or_default().to_string();
            let tag = it.next().unwrap_or_default().to_string();
            let content = it.next().unwrap_or_default().to_string();
            (ts, stream, tag, content)
        })
        .collect()
}

/// Wait for `f` to return Some (async), `timeout` at most.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- a CNI network of the test's own (podrun's plugins), for pod IPs and host ports ----

/// A bridge network on a 10.247.x.0/24 subnet, without masquerade.
pub type Net = crate::common::TestNet;

/// Give `env` its own CNI network (before the agent starts).
pub fn network(env: &mut Env) -> Net {
    crate::common::test_network(env, "prc", 247)
}

impl Net {
    /// No veth or IP reservation is left; then the bridge goes.
    pub fn assert_clean_and_remove(&self) {
        let ports = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .unwrap();
        let reservations: Vec<_> = walk_files(&self.ipam_dir)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .parse::<std::net::IpAddr>()
                    .is_ok()
            })
            .collect();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        assert!(
            String::from_utf8_lossy(&ports.stdout).trim().is_empty(),
            "veths left on {}: {}",
            self.bridge,
            String::from_utf8_lossy(&ports.stdout)
        );
        assert!(
            reservations.is_empty(),
            "IP reservations left: {reservations:?}"
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Also after a failed test: the bridge is the test's own.
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

fn walk_files(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk_files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// A bare HTTP/1.0 GET on 127.0.0.1:port; the response text, or None.
pub fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Identity of one of the test process's (the host's) namespaces, e.g. "net:[4026531992]".
pub fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}
