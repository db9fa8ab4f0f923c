//! Shared fixtures for the root-only CNI tests: network namespaces, a unique bridge
//! name and subnet per test, plugin invocation exactly as libcni does it (environment
//! plus stdin), and the leak checks every test ends with.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

// One implementation for both crates' integration tests.
#[path = "../../../tests/common/ran.rs"]
mod ran;

#[allow(unused_imports)] // each test binary uses some of them
pub use ran::{cannot_run, mark_ran, strict};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns false (and says why) when the test cannot run here; fails instead when
/// [`strict`].
pub fn require_root(test: &str) -> bool {
    let reason = if !is_root() {
        "needs root"
    } else if Command::new("ip").arg("-V").output().is_err() {
        "iproute2 is not installed"
    } else {
        return true;
    };
    cannot_run(test, reason);
    false
}

pub fn plugin_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_podrun-bridge"))
}

fn unique() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A network namespace created with `ip netns add`, deleted on drop.
pub struct TestNetns {
    pub name: String,
    pub deleted: bool,
}

impl TestNetns {
    pub fn new() -> TestNetns {
        let name = format!("podrun-cni-test-{}-{}", std::process::id(), unique());
        sh("ip", &["netns", "add", &name]);
        TestNetns {
            name,
            deleted: false,
        }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn delete(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
            self.deleted = true;
        }
    }

    /// `ip -j` output inside the namespace.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j", "-n", &self.name];
        full.extend_from_slice(args);
        // A missing device is an answer (Null), not a test failure.
        let out = Command::new("ip").args(&full).output().unwrap();
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Runs a command that must succeed and returns its stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One plugin invocation's outcome.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub json: Value,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "plugin failed: {}", self.stdout);
        self
    }

    pub fn error_code(&self) -> u64 {
        assert_ne!(
            self.code, 0,
            "plugin unexpectedly succeeded: {}",
            self.stdout
        );
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code in {:?}", self.stdout))
    }
}

/// Invokes `plugin` like libcni: `CNI_*` environment, configuration on stdin.
pub fn invoke(plugin: &Path, env: &[(&str, &str)], stdin: &Value) -> Run {
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.to_string().as_bytes());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Run {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
    }
}

/// A test network: unique bridge and network name, a 10.244.x.0/24 (or given)
/// subnet, and a private IPAM data directory.
pub struct TestNetwork {
    pub name: String,
    pub bridge: String,
    pub subnet: String,
    pub data_dir: tempfile::TempDir,
}

impl TestNetwork {
    pub fn new(subnet: &str) -> TestNetwork {
        // Every test that attaches anything starts here, past its root and tool checks.
        mark_ran();
        let n = unique();
        let pid = std::process::id() % 100000;
        TestNetwork {
            name: format!("podrun-test-{pid}-{n}"),
            bridge: format!("pcni{pid}{n}"),
            subnet: subnet.to_string(),
            data_dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn conf(&self, version: &str, plugin_type: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.name,
            "type": plugin_type,
            "bridge": self.bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            // Masquerade needs nft or iptables; without either the rest is still tested.
            "ipMasq": podrun_cni::masq::Backend::detect().is_some(),
            "hairpinMode": true,
            "mtu": 1400,
            "ipam": {
                "type": "host-local",
                "subnet": self.subnet,
                "dataDir": self.data_dir.path(),
            }
        })
    }

    pub fn reservation_dir(&self) -> PathBuf {
        self.data_dir.path().join(&self.name)
    }

    /// Files naming an IP in the data dir (leaves `lock` and `last_reserved_ip.*`).
    pub fn reservations(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.reservation_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    pub fn ports(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-j", "link", "show", "master", &self.bridge])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn bridge_exists(&self) -> bool {
        Command::new("ip")
            .args(["link", "show", &self.bridge])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Rule counts are only observable with nft; iptables-only hosts skip them.
    pub fn nft_available() -> bool {
        matches!(
            podrun_cni::masq::Backend::detect(),
            Some(podrun_cni::masq::Backend::Nft(_))
        )
    }

    /// This network's masquerade rules, as the detected backend lists them. A chain
    /// or table that does not exist holds none; any other listing failure fails
    /// the test, so a broken listing can never read as "no rules left".
    pub fn masq_rules(&self) -> usize {
        use podrun_cni::masq::Backend;
        let tag = format!("podrun:{}:", self.name);
        let (prog, args): (_, &[&str]) = match Backend::detect() {
            None => return 0,
            Some(Backend::Nft(nft)) => (nft, &["list", "chain", "ip", "podrun", "postrouting"]),
            Some(Backend::Iptables { v4, .. }) => (v4, &["-w", "-t", "nat", "-S"]),
        };
        let is_iptables = args[0] == "-w";
        let out = Command::new(&prog)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", prog.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            assert!(
                stderr.contains("No such file or directory"),
                "listing masquerade rules with {} {args:?} failed ({}): {stderr}",
                prog.display(),
                out.status
            );
            return 0;
        }
        // iptables tags a chain of its own per attachment; count the jumps to it.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&tag) && (!is_iptables || l.starts_with("-A POSTROUTING ")))
            .count()
    }

    /// Asserts no veth, reservation or rule is left, then removes the bridge and
    /// asserts it is gone.
    pub fn assert_clean_and_remove(&self) {
        assert_eq!(
            self.ports(),
            Vec::<String>::new(),
            "veths left on {}",
            self.bridge
        );
        assert_eq!(
            self.reservations(),
            Vec::<String>::new(),
            "reservations left"
        );
        assert_eq!(self.masq_rules(), 0, "masquerade rules left");
        self.remove_bridge();
        assert!(!self.bridge_exists(), "bridge {} left", self.bridge);
    }

    pub fn remove_bridge(&self) {
        if self.bridge_exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        // A failed test must not leave rules behind for the next run.
        if let Some(backend) = podrun_cni::masq::Backend::detect() {
            let _ = podrun_cni::masq::garbage_collect(&backend, &self.name, &[]);
        }
        self.remove_bridge();
    }
}

/// The `CNI_*` environment for one attachment.
pub fn env<'a>(
    command: &'a str,
    id: &'a str,
    netns: &'a str,
    ifname: &'a str,
    path: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", path),
    ]
}

pub fn assert_netns_gone(name: &str) {
    assert!(
        !Path::new(&format!("/run/netns/{name}")).exists(),
        "netns {name} leaked"
    );
}
