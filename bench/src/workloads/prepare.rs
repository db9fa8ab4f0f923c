//! Inputs shared by every workload: images in each system's store, the busybox
//! bundle, the pod YAML files and podman's containers.conf.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::Ctx;
use crate::sys;

const IMAGES: [&str; 3] = ["busybox", "nginx", "curl"];

/// Images into podrun's and podman's stores, the busybox bundle, the pod YAML files and
/// podman's containers.conf: everything identical that the workloads read.
pub fn prepare(ctx: &Ctx) -> Result<()> {
    ensure_image_archives(ctx)?;
    let out = ctx.repo.join("images/out");
    for d in ["p/cni", "podman/root", "podman/run", "podman/tmp", "pods"] {
        std::fs::create_dir_all(ctx.work.join(d))?;
    }
    std::fs::write(
        ctx.work.join("podman/containers.conf"),
        // The host's hard nofile limit is 20000 and there is no CAP_SYS_RESOURCE to
        // raise it, so podman's default of 1048576 would make every container fail.
        "[containers]\n\
         default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
         [engine]\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"file\"\n",
    )?;
    for i in IMAGES {
        let tar = out.join(format!("{i}.tar"));
        sys::timed(ctx.podrun().args(["image", "load"]).arg(&tar))
            .with_context(|| format!("podrun image load {i}"))?;
        if let Some(mut p) = ctx.podman() {
            sys::timed(p.args(["load", "-i"]).arg(&tar))
                .with_context(|| format!("podman load {i}"))?;
        }
    }
    make_bundle(ctx, &out.join("busybox.tar"))?;
    // The example pod without its `ports` list: a containerPort without hostPort only
    // documents the port in Kubernetes, but podman 4.3 refuses it with --network none.
    let example = std::fs::read_to_string(ctx.repo.join("examples/sidecar-pod.yaml"))?;
    let mut yaml = String::new();
    let mut in_ports = false;
    for line in example.lines() {
        if line == "    ports:" {
            in_ports = true;
            continue;
        }
        if in_ports && (line.starts_with("    - ") || line.starts_with("      ")) {
            continue;
        }
        in_ports = false;
        yaml.push_str(line);
        yaml.push('\n');
    }
    std::fs::write(ctx.sidecar_yaml(), yaml)?;
    Ok(())
}

/// The example images' OCI archives in images/out, built when one is missing.
pub fn ensure_image_archives(ctx: &Ctx) -> Result<()> {
    let out = ctx.repo.join("images/out");
    if IMAGES
        .iter()
        .any(|i| !out.join(format!("{i}.tar")).is_file())
    {
        progress!("building the example images (images/build.sh)");
        sys::timed(Command::new("bash").arg(ctx.repo.join("images/build.sh")))?;
    }
    Ok(())
}

/// bundle/rootfs from the layers of the busybox OCI archive, and a config.json equal
/// to `runc spec`'s default except that it runs /bin/true without a terminal and sets
/// no ambient capabilities: the kernel raises an ambient capability only when it is
/// also inheritable, which runc's default omits; runc ignores that failure, podrun
/// reports it.
fn make_bundle(ctx: &Ctx, archive: &Path) -> Result<()> {
    let oci = ctx.work.join("busybox-oci");
    let rootfs = ctx.bundle().join("rootfs");
    std::fs::create_dir_all(&oci)?;
    std::fs::create_dir_all(&rootfs)?;
    sys::timed(
        Command::new("tar")
            .arg("xf")
            .arg(archive)
            .arg("-C")
            .arg(&oci),
    )?;
    let blob = |digest: &str| -> PathBuf {
        oci.join("blobs")
            .join(digest.replacen(':', "/", 1).replace("..", ""))
    };
    let read = |p: PathBuf| -> Result<Value> {
        Ok(serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
        )?)
    };
    let index = read(oci.join("index.json"))?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json: no manifest")?;
    let manifest = read(blob(manifest_digest))?;
    let layers = manifest["layers"]
        .as_array()
        .context("manifest: no layers")?;
    for layer in layers {
        let digest = layer["digest"].as_str().context("layer digest")?;
        sys::timed(
            Command::new("tar")
                .arg("xzf")
                .arg(blob(digest))
                .arg("-C")
                .arg(&rootfs),
        )?;
    }
    std::fs::write(
        ctx.bundle().join("config.json"),
        serde_json::to_vec_pretty(&bundle_config())?,
    )?;
    Ok(())
}

fn bundle_config() -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/true"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_config_runs_true_without_terminal() {
        let c = bundle_config();
        assert_eq!(c["process"]["args"], json!(["/bin/true"]));
        assert_eq!(c["process"]["terminal"], json!(false));
        assert_eq!(c["root"]["path"], json!("rootfs"));
    }
}
