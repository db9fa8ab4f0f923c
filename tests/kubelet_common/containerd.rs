//! containerd as a node's CRI runtime: Debian's containerd 1.6 with its runc shim,
//! started inside the node's network namespace with a config of the test's own (root,
//! state, sockets, runc root, CNI and registry settings all under the node's temp dir,
//! only the overlayfs snapshotter), a pause image the test pushes to its registry, and
//! podrun's bridge plugin for the pod network. crictl looks at it through its socket;
//! it is stopped by PID and its shims must be gone after it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::registry::Registry;
use crate::common::{self, Env};

const CONTAINERD: &str = "containerd";
const SHIM: &str = "containerd-shim-runc-v2";
const RUNC: &str = "runc";
/// The reference CNI loopback plugin (containernetworking-plugins): containerd 1.6 sets
/// up every pod's `lo` with it.
const LOOPBACK: &[&str] = &["/usr/lib/cni/loopback", "/opt/cni/bin/loopback"];
/// crictl v1.29.0 beside the repository (see /work/shared/tools/README.md).
const CRICTL_XZ: &str = "../shared/tools/crictl-v1.29.0-linux-amd64.xz";

/// A program on PATH (or in the sbin directories a non-login PATH may lack).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// crictl: `$CRICTL`, else `target/tools/crictl` (scripts/setup.sh puts it there), else
/// unpacked there from the shared tools folder; None when none of them exists.
fn crictl_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CRICTL") {
        return Some(PathBuf::from(p));
    }
    let repo = common::repo();
    let unpacked = repo.join("target/tools/crictl");
    if unpacked.exists() {
        return Some(unpacked);
    }
    let xz = repo.join(CRICTL_XZ);
    if !xz.exists() {
        return None;
    }
    std::fs::create_dir_all(unpacked.parent()?).ok()?;
    let tmp = unpacked.with_extension(format!("tmp{}", std::process::id()));
    let ok = Command::new("xz")
        .arg("-dc")
        .arg(&xz)
        .stdout(std::fs::File::create(&tmp).ok()?)
        .status()
        .is_ok_and(|s| s.success());
    use std::os::unix::fs::PermissionsExt;
    if !ok || std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return None;
    }
    std::fs::rename(&tmp, &unpacked).ok()?;
    Some(unpacked)
}

/// What is missing for a containerd node here, if anything.
pub fn missing() -> Option<String> {
    for bin in [CONTAINERD, SHIM, RUNC] {
        if which(bin).is_none() {
            return Some(format!(
                "{bin} is not installed (scripts/setup.sh installs containerd and runc)"
            ));
        }
    }
    if !LOOPBACK.iter().any(|p| Path::new(p).is_file()) {
        return Some(
            "the CNI loopback plugin is not installed (containernetworking-plugins)".into(),
        );
    }
    if crictl_bin().is_none() {
        return Some(format!(
            "crictl v1.29.0 not found: set CRICTL=/path/to/crictl, or run scripts/setup.sh with {CRICTL_XZ} present"
        ));
    }
    None
}

/// sha256 of a file, as `sha256:<hex>`.
fn digest_of(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", p.display());
    let text = String::from_utf8_lossy(&out.stdout);
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// The sandbox image containerd's pods start with: busybox's layers under a config
/// whose entrypoint sleeps for good, pushed as `<registry>/podrun-test/pause:1`.
/// Returns that reference.
pub fn push_pause(registry: &Registry) -> String {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(common::image_archive("busybox"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "unpack busybox.tar");
    let blobs = dir.path().join("blobs/sha256");
    let read = |digest: &str| -> serde_json::Value {
        let p = blobs.join(digest.trim_start_matches("sha256:"));
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    };
    // A blob written under its own digest; returns (digest, size).
    let store = |v: &serde_json::Value| -> (String, usize) {
        let data = serde_json::to_vec(v).unwrap();
        let tmp = dir.path().join("blob.tmp");
        std::fs::write(&tmp, &data).unwrap();
        let digest = digest_of(&tmp);
        std::fs::rename(&tmp, blobs.join(digest.trim_start_matches("sha256:"))).unwrap();
        (digest, data.len())
    };
    let index_path = dir.path().join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    config["config"]["Entrypoint"] = serde_json::json!(["sleep", "2147483647"]);
    config["config"]["Cmd"] = serde_json::Value::Null;
    let (digest, size) = store(&config);
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    let (digest, size) = store(&manifest);
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    registry.push_oci_layout(dir.path(), "podrun-test/pause", "1");
    format!("{}/podrun-test/pause:1", registry.host())
}

/// One containerd, in a node's network namespace.
pub struct Containerd {
    child: Option<Child>,
    /// Everything of this containerd: config, root, state, sockets, CNI and registry
    /// settings, its log.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    crictl: PathBuf,
}

impl Containerd {
    /// Writes the config and starts containerd in `netns`; returns once its CRI plugin
    /// answers. The pod network is the one `env` was given (its conflist, written again
    /// at CNI 1.0.0, the newest containerd 1.6 reads), through podrun's bridge plugin.
    pub fn start(netns: &str, env: &Env, registry: &Registry, pause: &str) -> Containerd {
        let dir = env.dir.path().join("ctd");
        let cni_conf = dir.join("net.d");
        let cni_bin = dir.join("cni-bin");
        let certs = dir.join("certs.d");
        for d in [&cni_conf, &cni_bin, &certs] {
            std::fs::create_dir_all(d).unwrap();
        }
        let plugins = common::cni_plugin_dir();
        for p in ["podrun-bridge", "podrun-portmap"] {
            std::os::unix::fs::symlink(plugins.join(p), cni_bin.join(p)).unwrap();
        }
        let loopback = LOOPBACK.iter().find(|p| Path::new(p).is_file()).unwrap();
        std::os::unix::fs::symlink(loopback, cni_bin.join("loopback")).unwrap();
        let mut conf: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.dir.path().join("net.d/10-test.conflist")).unwrap(),
        )
        .unwrap();
        conf["cniVersion"] = "1.0.0".into();
        std::fs::write(
            cni_conf.join("10-test.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
        // docker.io is mirrored by the test's registry, which itself speaks plain HTTP.
        // containerd 1.6 refuses a hosts.toml without a [host] table.
        for (name, server) in [
            ("docker.io".to_owned(), "http://127.0.0.1:1".to_owned()),
            (registry.host(), registry.url()),
        ] {
            let d = certs.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("hosts.toml"),
                format!(
                    "server = \"{server}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                    registry.url()
                ),
            )
            .unwrap();
        }

        let socket = dir.join("c.sock");
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.native",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[{cri}]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # The test may run without CAP_SYS_RESOURCE (in a container itself): no OOM score
  # below containerd's own.
  restrict_oom_score_adj = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{state}/runc"
[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
  max_conf_num = 1
[{cri}.registry]
  config_path = "{certs}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
            dir = dir.display(),
            cni_bin = cni_bin.display(),
            cni_conf = cni_conf.display(),
            certs = certs.display(),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let crictl = crictl_bin().expect("crictl (checked by missing())");
        std::fs::write(
            dir.join("crictl.yaml"),
            format!(
                "runtime-endpoint: unix://{s}\nimage-endpoint: unix://{s}\ntimeout: 20\n",
                s = socket.display()
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let out = std::fs::File::create(&log).unwrap();
        // Only the network namespace is the node's: the cgroup filesystems and the mounts
        // stay the host's, as for the agent.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .arg(which(CONTAINERD).unwrap())
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start containerd");
        let mut c = Containerd {
            child: Some(child),
            dir,
            socket,
            log,
            crictl,
        };
        let deadline = Instant::now() + super::SLOW;
        loop {
            if c.crictl(&["info"]).status.success() {
                break;
            }
            let exited = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!("containerd did not come up ({exited:?}):\n{}", c.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn crictl(&self, args: &[&str]) -> Output {
        Command::new(&self.crictl)
            .arg("--config")
            .arg(self.dir.join("crictl.yaml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run crictl")
    }

    /// crictl that must succeed; its stdout.
    pub fn crictl_ok(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(
            out.status.success(),
            "crictl {args:?}: {}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The shims this containerd started that are still alive: `pid: cmdline`.
    pub fn shims(&self) -> Vec<String> {
        let socket = self.socket.to_string_lossy().into_owned();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&socket) {
                out.push(format!("{pid}: {cmdline}"));
            }
        }
        out
    }

    /// containerd holds no sandbox and no container.
    pub fn assert_empty(&self) {
        for what in [&["pods", "-q"][..], &["ps", "-a", "-q"][..]] {
            let left = self.crictl_ok(what);
            assert!(
                left.trim().is_empty(),
                "containerd still has (crictl {what:?}):\n{left}"
            );
        }
    }

    /// SIGTERM, and containerd must exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("containerd ignored SIGTERM:\n{}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Mounts of the host under this containerd's directory.
    pub fn mounts(&self) -> Vec<String> {
        let dir = self.dir.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&dir))
            .map(str::to_owned)
            .collect()
    }

    /// Removes containerd's root and state, unless something is still mounted there.
    pub fn remove_dirs(&self) {
        if self.mounts().is_empty() {
            for d in ["root", "state", "opt"] {
                let _ = std::fs::remove_dir_all(self.dir.join(d));
            }
        }
    }

    /// After a failed test: every pod removed through containerd, then containerd
    /// stopped; nothing here panics. A stopped containerd's directories only go.
    pub fn teardown(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = self.crictl(&["rmp", "-f", "-a"]);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let deadline = Instant::now() + Duration::from_secs(30);
                while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        self.remove_dirs();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}
