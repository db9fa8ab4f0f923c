//! A cluster on this machine: `podrun server` and a registry on a bridge the test
//! creates, and one `podrun agent` per node, each in a network namespace of its own
//! joined to that bridge by a veth, with its own root, state, log and cgroup roots and
//! its own pod network inside the namespace. Nothing leaves the machine: the addresses
//! live only on the test's bridge and in its namespaces. Everything is stopped by PID
//! and checked for leaks at the end. A node's agent drives podrun's own runtime, or
//! containerd started beside it in the node's namespace ([`Runtime`]).

#![allow(dead_code)]

pub mod containerd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::registry::Registry;
use crate::common::{self, Env, TestNet};
use crate::server_common::{kubectls, wait_until, Kubectl, Server};

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// The CRI runtime the nodes' agents run their pods on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// The agent's own socket.
    Podrun,
    /// A containerd of the node's own (`--runtime-endpoint`).
    Containerd,
}

/// How long a node or a pod may take to come up on a busy machine; every wait ends as
/// soon as its condition holds.
pub const SLOW: Duration = Duration::from_secs(120);

fn sh(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Node {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub env: Env,
    pub net: TestNet,
    pub socket: PathBuf,
    /// Its static pod manifests.
    pub manifests: PathBuf,
    child: Option<Child>,
    pub log: PathBuf,
    args: Vec<String>,
    /// The node's containerd, when it is the runtime.
    pub containerd: Option<containerd::Containerd>,
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // nsenter switches only the network namespace; `ip netns exec` would also remount
        // /sys, hiding the cgroup filesystems.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", env!("CARGO_BIN_EXE_podrun")]);
        cmd.arg("--root").arg(&self.env.root);
        cmd.arg("--state").arg(&self.env.state);
        cmd.arg("--log-root").arg(&self.env.logs);
        cmd.arg("--cgroup-root").arg(&self.env.cgroup_root);
        cmd.args(&self.env.cni_args);
        cmd.env("PODRUN_HOSTS_DIR", self.env.hosts_dir());
        cmd.arg("agent").args(&self.args);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start podrun agent"));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, as a crash: the pods' monitors live on.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            // nsenter execs podrun, so the child's PID is the agent's.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the agent stops, the pods keep running.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!(
                        "the agent of {} ignored SIGTERM:\n{}",
                        self.name,
                        self.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Runs a command inside the node's network namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .args(args)
            .output()
            .unwrap()
    }

    /// What the node's pods left: veths on its pod bridge, IP reservations, pinned
    /// network namespaces, and the instance's processes, mounts, cgroups and files.
    pub fn assert_no_leaks(&self) {
        let ports = self.exec(&["ip", "-o", "link", "show", "master", &self.net.bridge]);
        let ports = String::from_utf8_lossy(&ports.stdout).trim().to_owned();
        assert!(
            ports.is_empty(),
            "{}: veths left on {}: {ports}",
            self.name,
            self.net.bridge
        );
        let mut left = Vec::new();
        let mut dirs = vec![self.net.ipam_dir.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() {
                    dirs.push(e.path());
                } else if name.parse::<std::net::IpAddr>().is_ok() {
                    left.push(e.path());
                }
            }
        }
        assert!(
            left.is_empty(),
            "{}: IP reservations left: {left:?}",
            self.name
        );
        let pinned: Vec<_> = std::fs::read_dir(self.env.state.join("netns"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            pinned.is_empty(),
            "{}: pinned netns left: {pinned:?}",
            self.name
        );
        self.env.assert_no_leaks();
        // The kubelet's own files of pods: volumes and /etc/hosts.
        let pods: Vec<_> = std::fs::read_dir(self.env.root.join("agent/pods"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            pods.is_empty(),
            "{}: kubelet pod dirs left: {pods:?}",
            self.name
        );
    }
}

pub struct Cluster {
    pub k: Kubectl,
    pub server: Server,
    pub registry: Registry,
    pub nodes: Vec<Node>,
    pub bridge: String,
    /// "10.201.<n>." of the nodes' network.
    pub prefix: String,
    pub token: String,
    /// The sandbox image of containerd nodes.
    pause: Option<String>,
    /// The nodes' pods are on the cluster network (podrun's own bridge `podrun0` in each
    /// node's namespace, addresses from the node's pod CIDR).
    cluster_net: bool,
}

impl Cluster {
    /// A server and `names.len()` joined nodes, all Ready; None when kubectl is missing
    /// (after cannot_run).
    pub fn start(test: &str, names: &[&str]) -> Option<Cluster> {
        Self::start_full(test, names, Runtime::Podrun, &[], false)
    }

    /// As [`Cluster::start`], with the nodes' pods on the cluster network: podrun's own
    /// CNI network in each node's pod CIDR, routes between nodes, Services and DNS.
    pub fn start_network(test: &str, names: &[&str], agent_args: &[&str]) -> Option<Cluster> {
        Self::start_full(test, names, Runtime::Podrun, agent_args, true)
    }

    /// As [`Cluster::start`], with more `podrun agent` flags for every node.
    pub fn start_with_args(test: &str, names: &[&str], agent_args: &[&str]) -> Option<Cluster> {
        Self::start_full(test, names, Runtime::Podrun, agent_args, false)
    }

    /// As [`Cluster::start`], with the nodes' pods run by `runtime`; None (after
    /// cannot_run) when it is not installed here.
    pub fn start_with(test: &str, names: &[&str], runtime: Runtime) -> Option<Cluster> {
        Self::start_full(test, names, runtime, &[], false)
    }

    fn start_full(
        test: &str,
        names: &[&str],
        runtime: Runtime,
        agent_args: &[&str],
        cluster_net: bool,
    ) -> Option<Cluster> {
        let k = kubectls(test)?.pop()?;
        if !common::is_root() {
            common::cannot_run(test, "needs root");
            return None;
        }
        if runtime == Runtime::Containerd {
            if let Some(why) = containerd::missing() {
                common::cannot_run(test, &why);
                return None;
            }
        }
        crate::server_common::mark_ran();
        let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let id = (std::process::id() % 50) * 5 + n;
        let third = 10 + id % 240;
        let prefix = format!("10.201.{third}.");
        let bridge = format!("pkb{}x{n}", std::process::id() % 100000);
        must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{prefix}1/24"),
            "dev",
            &bridge,
        ]);
        must(&["ip", "link", "set", &bridge, "up"]);
        let gateway = format!("{prefix}1");

        let registry = Registry::start_at(&gateway, None).expect("registry");
        for img in ["busybox", "nginx", "curl"] {
            registry.push_oci_archive(
                &common::image_archive(img),
                &format!("library/{img}"),
                "latest",
            );
        }
        let pause = (runtime == Runtime::Containerd).then(|| containerd::push_pause(&registry));
        let server = Server::start_on(&gateway, &[], None, &[]);
        let token = String::from_utf8_lossy(
            &Command::new(env!("CARGO_BIN_EXE_podrun"))
                .arg("--root")
                .arg(&server.root)
                .args(["server", "token", "create"])
                .output()
                .unwrap()
                .stdout,
        )
        .trim()
        .to_owned();
        assert!(!token.is_empty(), "token create gave nothing");
        let mut cluster = Cluster {
            k,
            server,
            registry,
            nodes: Vec::new(),
            bridge,
            prefix,
            token,
            pause,
            cluster_net,
        };
        for (i, name) in names.iter().enumerate() {
            cluster.add_node(name, i as u32, agent_args);
        }
        cluster.wait_ready(names);
        Some(cluster)
    }

    fn add_node(&mut self, name: &str, i: u32, extra: &[&str]) {
        let netns = format!("{}n{i}", self.bridge);
        let host_if = format!("{}v{i}", self.bridge);
        let ip = format!("{}{}", self.prefix, 11 + i);
        must(&["ip", "netns", "add", &netns]);
        must(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        must(&["ip", "link", "set", &host_if, "master", &self.bridge, "up"]);
        must(&[
            "ip",
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
        must(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        let mut env = Env::new(&[]);
        let net = if self.cluster_net {
            let conf_dir = env.dir.path().join("net.d");
            std::fs::create_dir_all(&conf_dir).unwrap();
            env.cni_args = vec![
                "--network".into(),
                "cni".into(),
                "--cni-conf-dir".into(),
                conf_dir.to_string_lossy().into_owned(),
                "--cni-bin-dir".into(),
                common::cni_plugin_dir().to_string_lossy().into_owned(),
            ];
            TestNet {
                bridge: "podrun0".into(),
                subnet_prefix: String::new(),
                ipam_dir: env.root.join("cni/networks"),
            }
        } else {
            common::test_network(&mut env, "pk", 203)
        };
        // docker.io is mirrored by the test's registry, as a node offline would have it.
        let mirror = env.hosts_dir().join("docker.io");
        std::fs::create_dir_all(&mirror).unwrap();
        std::fs::write(
            mirror.join("hosts.toml"),
            format!(
                "server = \"http://127.0.0.1:1\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                self.registry.url()
            ),
        )
        .unwrap();
        let socket = env.dir.path().join("cri.sock");
        let manifests = env.dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let args = vec![
            "--pod-manifest-path".to_owned(),
            manifests.to_string_lossy().into_owned(),
            "--socket".to_owned(),
            socket.to_string_lossy().into_owned(),
            "--server".to_owned(),
            format!("https://{}1:{}", self.prefix, self.server.port),
            "--token".to_owned(),
            self.token.clone(),
            "--certificate-authority".to_owned(),
            self.server
                .root
                .join("server/pki/ca.crt")
                .to_string_lossy()
                .into_owned(),
            "--node-name".to_owned(),
            name.to_owned(),
        ];
        let mut args = args;
        args.extend(extra.iter().map(|a| a.to_string()));
        // Thresholds about the test's pods, not the machine's disk: a shared build
        // host's filesystem may well be under kubelet's default 10 %.
        if !extra.contains(&"--eviction-hard") {
            args.extend([
                "--eviction-hard".to_owned(),
                "memory.available<100Mi,nodefs.available<512Mi,pid.available<5%".to_owned(),
            ]);
        }
        let log = env.dir.path().join("agent.log");
        let node = Node {
            name: name.to_owned(),
            netns,
            ip,
            env,
            net,
            socket,
            manifests,
            child: None,
            log,
            args,
            containerd: None,
        };
        // The node is the cluster's before anything can fail, so teardown finds it.
        self.nodes.push(node);
        let node = self.nodes.last_mut().unwrap();
        if let Some(pause) = &self.pause {
            let c = containerd::Containerd::start(&node.netns, &node.env, &self.registry, pause);
            node.args
                .extend(["--runtime-endpoint".to_owned(), c.endpoint()]);
            node.containerd = Some(c);
        }
        node.spawn();
    }

    pub fn node(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("a node of the cluster")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.server.kubectl(&self.k, args)
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.server.ok(&self.k, args)
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s.push_str(&format!("--- agent {} ---\n{}\n", n.name, n.log_text()));
            if let Some(c) = &n.containerd {
                // Its warnings and errors: it says every plugin it loads at info level.
                let log = c.log_text();
                let problems: Vec<&str> =
                    log.lines().filter(|l| !l.contains("level=info")).collect();
                s.push_str(&format!(
                    "--- containerd of {}, warnings and errors ---\n{}\n",
                    n.name,
                    problems.join("\n")
                ));
            }
        }
        s
    }

    /// Waits for the nodes to be Ready.
    pub fn wait_ready(&self, names: &[&str]) {
        let deadline = Instant::now() + SLOW;
        loop {
            let out = self.kubectl(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if names
                .iter()
                .all(|n| text.lines().any(|l| l == format!("{n}=True")))
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the nodes {names:?} are not Ready; kubectl says:\n{text}{}\n{}\n--- server ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.logs(),
                    self.server.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A pod's JSON, None when it does not exist.
    pub fn pod(&self, name: &str) -> Option<serde_json::Value> {
        let out = self.kubectl(&["get", "pod", name, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Waits until `f` holds for the pod's JSON; says what it saw last when it does not.
    pub fn wait_pod<T>(
        &self,
        name: &str,
        what: &str,
        mut f: impl FnMut(&serde_json::Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + SLOW;
        let mut last = None;
        loop {
            if let Some(p) = self.pod(name) {
                if let Some(v) = f(&p) {
                    return v;
                }
                last = Some(p);
            }
            if Instant::now() > deadline {
                panic!(
                    "pod {name}: {what} did not happen; last seen:\n{}\n{}",
                    serde_json::to_string_pretty(&last).unwrap_or_default(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Deletes everything and checks every node for leaks; stops what it started.
    pub fn finish(mut self) {
        let _ = self.kubectl(&["delete", "pods", "--all", "--wait=false"]);
        wait_until("every pod to be gone", SLOW, || {
            let out = self.kubectl(&["get", "pods", "-o", "name"]);
            (out.status.success() && out.stdout.is_empty()).then_some(())
        });
        for n in &mut self.nodes {
            n.stop();
        }
        for n in &mut self.nodes {
            if let Some(c) = &mut n.containerd {
                c.assert_empty();
                c.stop();
                let shims = c.shims();
                assert!(
                    shims.is_empty(),
                    "{}: containerd shims left: {shims:?}",
                    n.name
                );
            }
        }
        for n in &self.nodes {
            n.assert_no_leaks();
            if let Some(c) = &n.containerd {
                c.remove_dirs();
            }
        }
        self.teardown();
    }

    fn teardown(&mut self) {
        for n in &mut self.nodes {
            n.kill_hard();
            if let Some(c) = &mut n.containerd {
                c.teardown();
            }
            // A cluster network's bridge is inside the node's namespace and goes with it.
            if !self.cluster_net {
                n.net.remove();
            }
            let _ = sh(&["ip", "netns", "del", &n.netns]);
            // The kubelet's QoS cgroups go with the instance's cgroup root.
            for h in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                remove_tree(&h.path().join(&n.env.cgroup_root));
            }
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}

/// rmdir a cgroup tree bottom-up (empty cgroups only).
fn remove_tree(p: &Path) {
    if let Ok(d) = std::fs::read_dir(p) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
        let _ = std::fs::remove_dir(p);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}
