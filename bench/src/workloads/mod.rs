//! The benchmark workloads, each run for podrun and its peers alternately on the same
//! inputs: the busybox bundle for the container lifecycle, the sidecar pod for pod
//! start, and N idle busybox pods for memory and density.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod cleanup;
mod lifecycle;
mod pod_start;
mod pods;
mod prepare;

pub use cleanup::{cleanup, remove_podman_pods, remove_podrun_pods};
pub use lifecycle::lifecycle;
pub use pod_start::pod_start;
pub use pods::pods;
pub use prepare::{ensure_image_archives, prepare};

/// Everything the workloads share: binaries, the work directory and the run's sizes.
pub struct Ctx {
    pub repo: PathBuf,
    pub work: PathBuf,
    pub podrun: PathBuf,
    pub runc: Option<PathBuf>,
    pub crun: Option<PathBuf>,
    pub podman: Option<PathBuf>,
    pub smoke: bool,
    pub rounds: usize,
    pub density: Vec<usize>,
    pub memory_pods: usize,
    pub peer_max_pods: usize,
    /// Where to write the perf report of a podrun pod start, when asked for.
    pub perf_out: Option<PathBuf>,
}

pub const CGROUP_ROOT: &str = "podrun-bench";

impl Ctx {
    pub fn podrun(&self) -> Command {
        self.podrun_at(&self.work.join("p").join("root"))
    }

    /// podrun with its own state, logs and cgroup root, and images and layers in `root`.
    pub fn podrun_at(&self, root: &Path) -> Command {
        let mut c = Command::new(&self.podrun);
        // Short names: the monitor socket path must fit in sockaddr_un.
        let d = self.work.join("p");
        c.arg("--root")
            .arg(root)
            .arg("--state")
            .arg(d.join("s"))
            .arg("--log-root")
            .arg(d.join("logs"))
            .args(["--cgroup-driver", "cgroupfs", "--cgroup-root", CGROUP_ROOT])
            // Loopback only, as podman's --network none; the CNI directory is a private
            // empty one so that nothing reads or writes the host's /etc/cni/net.d.
            .args(["--network", "none", "--cni-conf-dir"])
            .arg(d.join("cni"));
        c
    }

    /// podman with its storage, run root and config in the work directory, runc as its
    /// runtime and cgroupfs as its cgroup manager (no systemd here).
    pub fn podman(&self) -> Option<Command> {
        let bin = self.podman.as_ref()?;
        let d = self.work.join("podman");
        let mut c = Command::new(bin);
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--runtime")
            .arg(self.runc.as_deref().unwrap_or(Path::new("runc")))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        Some(c)
    }

    fn oci(&self, bin: &Path, name: &str) -> Command {
        let mut c = Command::new(bin);
        c.arg("--root").arg(self.work.join(format!("{name}-state")));
        c
    }

    pub fn runc(&self) -> Option<Command> {
        self.runc.as_ref().map(|b| self.oci(b, "runc"))
    }

    pub fn crun(&self) -> Option<Command> {
        self.crun.as_ref().map(|b| self.oci(b, "crun"))
    }

    fn bundle(&self) -> PathBuf {
        self.work.join("bundle")
    }

    fn sidecar_yaml(&self) -> PathBuf {
        self.work.join("sidecar-pod.yaml")
    }

    fn idle_yaml(&self, i: usize) -> PathBuf {
        self.work.join("pods").join(format!("bench-idle-{i}.yaml"))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
