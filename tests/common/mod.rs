//! Shared harness of the integration tests: each test gets its own podrun instance (root,
//! state, log and cgroup roots), loads the project's test images, drives the real
//! `podrun` binary, and ends by checking that nothing leaked.

#![allow(dead_code)]

mod ran;
pub mod registry;

#[allow(unused_imports)] // each test binary uses some of them
pub use ran::{cannot_run, mark_ran, strict};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skip when not root (these tests need namespaces, mounts and cgroups); fail instead
/// under CI or PODRUN_TEST_STRICT=1.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            common::cannot_run(module_path!(), "needs root");
            return;
        }
    };
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn image_archive(name: &str) -> PathBuf {
    let p = repo().join("images/out").join(format!("{name}.tar"));
    assert!(
        p.exists(),
        "{} is missing: build the test images first with images/build.sh",
        p.display()
    );
    p
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub logs: PathBuf,
    pub cgroup_root: String,
    /// Global options selecting a CNI network (empty: no pod network).
    pub cni_args: Vec<String>,
}

impl Env {
    /// A fresh podrun instance with the given images loaded.
    pub fn new(images: &[&str]) -> Env {
        // Every test that drives podrun starts here, past its root and tool checks.
        mark_ran();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Short on purpose: the monitor socket lives at
        // <state>/pods/<64-hex id>/monitor.sock, and a unix socket path must fit in
        // sun_path (108 bytes), so a long TMPDIR would make every pod fail to start.
        let dir = tempfile::Builder::new()
            .prefix("prt-")
            .tempdir_in("/tmp")
            .unwrap();
        let env = Env {
            root: dir.path().join("root"),
            state: dir.path().join("state"),
            logs: dir.path().join("logs"),
            cgroup_root: format!("podrun-it-{}-{n}", std::process::id()),
            cni_args: Vec::new(),
            dir,
        };
        for img in images {
            let out = env.podrun(&["image", "load", image_archive(img).to_str().unwrap()]);
            assert!(
                out.status.success(),
                "image load {img}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        env
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_podrun"));
        c.arg("--root").arg(&self.root);
        c.arg("--state").arg(&self.state);
        c.arg("--log-root").arg(&self.logs);
        c.arg("--cgroup-root").arg(&self.cgroup_root);
        // Pods get only loopback unless a test gives them a CNI network of its own.
        if !self.cni_args.is_empty() {
            c.args(&self.cni_args);
        } else {
            c.env("PODRUN_NETWORK", "none");
        }
        c.args(args);
        // Tests only use images they load; nothing may reach for a registry outside.
        c.env("PODRUN_PULL", "never");
        // Registry settings are the test's own (empty unless it writes some), never the
        // host's /etc/podrun/certs.d.
        c.env("PODRUN_HOSTS_DIR", self.hosts_dir());
        c.stdin(std::process::Stdio::null());
        c
    }

    /// This instance's directory of <registry>/hosts.toml files.
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    pub fn podrun(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run podrun and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.podrun(args);
        assert!(
            out.status.success(),
            "podrun {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Write a manifest into the test dir and return its path.
    pub fn manifest(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, yaml).unwrap();
        p
    }

    pub fn pods_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["pods", "-o", "json"])).unwrap()
    }

    /// The status of one container of one pod, as `podrun pods -o json` reports it.
    pub fn container_status(&self, pod: &str, container: &str) -> Option<serde_json::Value> {
        let pods = self.pods_json();
        pods.as_array()?.iter().find(|p| p["name"] == pod)?["status_detail"]["containers"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == container)
            .cloned()
    }

    /// Poll until `f` returns Some or the timeout passes.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The cgroup directory of this instance's (only) pod in `hierarchy` (e.g. "pids").
    pub fn pod_cgroup(&self, hierarchy: &str) -> Option<PathBuf> {
        self.cgroup_dirs(hierarchy).into_iter().find(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("pod"))
        })
    }

    /// Assert that nothing of this instance is left on the host: monitor and container
    /// processes, mounts, cgroups, pod state, container layers, logs.
    pub fn assert_no_leaks(&self) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        // Processes whose command line or cwd mention this instance.
        let mut procs = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&dir) && cmdline.contains(" monitor ") {
                procs.push(format!("{pid}: {cmdline}"));
            }
        }
        assert!(procs.is_empty(), "leaked processes: {procs:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let leaked: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir)).collect();
        assert!(leaked.is_empty(), "leaked mounts: {leaked:?}");
        let mut cgroups = Vec::new();
        for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let p = h.path().join(&self.cgroup_root);
            if p.exists() {
                // The top-level dir may stay only if it has no pods below.
                let pods: Vec<_> = walk_dirs(&p)
                    .into_iter()
                    .filter(|d| {
                        d.file_name()
                            .is_some_and(|n| n.to_string_lossy().contains("pod"))
                    })
                    .collect();
                if !pods.is_empty() {
                    cgroups.push(format!("{}", pods[0].display()));
                }
            }
        }
        assert!(cgroups.is_empty(), "leaked cgroups: {cgroups:?}");
        for (what, p) in [
            ("pod state", self.state.join("pods")),
            ("containers", self.root.join("containers")),
            ("pod data", self.root.join("pods")),
            ("names", self.state.join("names")),
        ] {
            let left: Vec<_> = std::fs::read_dir(&p)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "leaked {what}: {left:?}");
        }
        let logs: Vec<_> = std::fs::read_dir(&self.logs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(logs.is_empty(), "leaked log dirs: {logs:?}");
    }
}

/// The state of a container status from `pods -o json`: its kind ("running", "waiting"
/// or "terminated") and its details.
pub fn state_of(c: &serde_json::Value) -> (String, serde_json::Value) {
    let obj = c["state"].as_object().cloned().unwrap_or_default();
    let (k, v) = obj
        .into_iter()
        .next()
        .unwrap_or_else(|| ("unknown".into(), serde_json::Value::Null));
    (k, v)
}

/// A field of a state's details, looked up as Kubernetes spells it (`exitCode`) and in
/// snake case (`exit_code`).
pub fn detail<'a>(d: &'a serde_json::Value, camel: &str) -> &'a serde_json::Value {
    if !d[camel].is_null() {
        return &d[camel];
    }
    let mut snake = String::new();
    for ch in camel.chars() {
        if ch.is_ascii_uppercase() {
            snake.push('_');
            snake.push(ch.to_ascii_lowercase());
        } else {
            snake.push(ch);
        }
    }
    &d[snake.as_str()]
}

/// The output of a command as text: (exit code, stdout, stderr).
pub fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Env {
    /// Write a manifest and `run -d` it; returns the manifest's path.
    pub fn run_pod(&self, file: &str, yaml: &str) -> PathBuf {
        let p = self.manifest(file, yaml);
        self.ok(&["run", "-d", p.to_str().unwrap()]);
        p
    }

    /// `exec -c CONTAINER POD -- CMD...`
    pub fn exec(&self, pod: &str, container: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", "-c", container, pod, "--"];
        args.extend_from_slice(cmd);
        self.podrun(&args)
    }

    /// `exec` that must succeed; returns stdout.
    pub fn exec_ok(&self, pod: &str, container: &str, cmd: &[&str]) -> String {
        let out = self.exec(pod, container, cmd);
        let (code, stdout, stderr) = text(&out);
        assert_eq!(
            code, 0,
            "exec {pod}/{container} {cmd:?}:\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout
    }

    /// Remove pods at once (grace period 0).
    pub fn rm(&self, pods: &[&str]) {
        let mut args = vec!["rm", "--grace-period", "0"];
        args.extend_from_slice(pods);
        self.ok(&args);
    }

    /// Run podrun and require failure; returns (exit code, stdout, stderr).
    pub fn fail(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.podrun(args);
        let t = text(&out);
        assert!(
            !out.status.success(),
            "podrun {args:?} should have failed:\nstdout: {}\nstderr: {}",
            t.1,
            t.2
        );
        t
    }

    /// The pod's entry of `pods -o json`.
    pub fn pod_json(&self, pod: &str) -> Option<serde_json::Value> {
        self.pods_json()
            .as_array()?
            .iter()
            .find(|p| p["name"] == pod)
            .cloned()
    }

    /// The pod phase (status_detail.phase).
    pub fn phase(&self, pod: &str) -> Option<String> {
        self.pod_json(pod)?["status_detail"]["phase"]
            .as_str()
            .map(str::to_owned)
    }

    /// Wait until a container is in state `kind` ("running", "waiting", "terminated");
    /// returns the whole container status.
    pub fn wait_state(
        &self,
        pod: &str,
        container: &str,
        kind: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        self.wait_for(&format!("{pod}/{container} {kind}"), timeout, || {
            let c = self.container_status(pod, container)?;
            (state_of(&c).0 == kind).then_some(c)
        })
    }

    /// The cgroup directories of this instance in one v1 hierarchy (or the v2 tree).
    pub fn cgroup_dirs(&self, hierarchy: &str) -> Vec<PathBuf> {
        let base = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(&self.cgroup_root);
        let mut v = walk_dirs(&base);
        if base.exists() {
            v.push(base);
        }
        v
    }
}

fn walk_dirs(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(d) = std::fs::read_dir(p) {
        for e in d.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(e.path());
                out.extend(walk_dirs(&e.path()));
            }
        }
    }
    out
}

impl Drop for Env {
    fn drop(&mut self) {
        // Best-effort removal of whatever a failed test left running, so one failure does
        // not leak into the next run: remove the pods through podrun itself.
        if let Ok(out) = self.cmd(&["pods", "-o", "json"]).output() {
            if let Ok(serde_json::Value::Array(pods)) =
                serde_json::from_slice::<serde_json::Value>(&out.stdout)
            {
                for p in pods {
                    if let (Some(n), Some(ns)) = (p["name"].as_str(), p["namespace"].as_str()) {
                        let _ = self
                            .cmd(&["rm", "-n", ns, "--grace-period", "0", n])
                            .output();
                    }
                }
            }
        }
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = h.path().join(&self.cgroup_root);
            let mut dirs = walk_dirs(&p);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
            let _ = std::fs::remove_dir(&p);
        }
    }
}

/// The directory of the podrun-bridge and podrun-portmap binaries of this build (built
/// on first use).
pub fn cni_plugin_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_podrun"))
        .parent()
        .unwrap()
        .to_owned();
    if !dir.join("podrun-bridge").exists() || !dir.join("podrun-portmap").exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "podrun-cni", "--bins"])
            .current_dir(repo())
            .status()
            .unwrap();
        assert!(status.success(), "building the CNI plugins failed");
    }
    dir
}

/// A test's own bridge network (podrun's plugins, no masquerade).
pub struct TestNet {
    pub bridge: String,
    /// "10.<second>.<third>." of the /24 the pods get addresses from.
    pub subnet_prefix: String,
    pub ipam_dir: PathBuf,
}

static TEST_NET: AtomicU32 = AtomicU32::new(0);

/// Give `env` a CNI network of its own: bridge `<tag><pid>n<k>` and a /24 in 10.<second>.x,
/// so suites running at the same time never share one.
pub fn test_network(env: &mut Env, tag: &str, second: u8) -> TestNet {
    let n = TEST_NET.fetch_add(1, Ordering::SeqCst);
    let id = (std::process::id() % 200) * 4 + n;
    let bridge = format!("{tag}{}n{n}", std::process::id() % 100000);
    let third = 10 + id % 240;
    let conf_dir = env.dir.path().join("net.d");
    let ipam_dir = env.dir.path().join("ipam");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": format!("{tag}{n}"),
        "plugins": [
            {"type": "podrun-bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.{second}.{third}.0/24")}]], "dataDir": ipam_dir}},
            {"type": "podrun-portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(
        conf_dir.join("10-test.conflist"),
        serde_json::to_vec_pretty(&conf).unwrap(),
    )
    .unwrap();
    env.cni_args = vec![
        "--network".into(),
        "cni".into(),
        "--cni-conf-dir".into(),
        conf_dir.to_string_lossy().into_owned(),
        "--cni-bin-dir".into(),
        cni_plugin_dir().to_string_lossy().into_owned(),
    ];
    TestNet {
        bridge,
        subnet_prefix: format!("10.{second}.{third}."),
        ipam_dir,
    }
}

impl TestNet {
    /// What pods of `env` left on this network: veths on the bridge, IP reservations
    /// and network namespaces pinned under the instance's state dir. Empty when clean.
    pub fn leftovers(&self, env: &Env) -> Vec<String> {
        let mut left = Vec::new();
        let ports = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .unwrap();
        let ports = String::from_utf8_lossy(&ports.stdout).trim().to_owned();
        if !ports.is_empty() {
            left.push(format!("veths on {}: {ports}", self.bridge));
        }
        let mut dirs = vec![self.ipam_dir.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() {
                    dirs.push(e.path());
                } else if name.parse::<std::net::IpAddr>().is_ok() {
                    left.push(format!("IP reservation {}", e.path().display()));
                }
            }
        }
        for e in std::fs::read_dir(env.state.join("netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            left.push(format!("pinned netns {}", e.path().display()));
        }
        left
    }

    /// Delete the test's bridge.
    pub fn remove(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
