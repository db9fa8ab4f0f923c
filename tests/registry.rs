//! `podrun pull` against a real registry: Debian's `docker-registry` (the CNCF distribution
//! server) started on 127.0.0.1 with its storage in a temp dir. The project's busybox OCI
//! archive is pushed to it with a small distribution-API client written here, then pulled
//! by the podrun binary directly and through a docker.io mirror configured in hosts.toml.
//! Needs root (layers are unpacked with their owners and device nodes); installs the
//! registry with apt-get when it is missing and skips if that fails.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::is_root;
use common::registry::{ensure_registry_installed, Registry};

fn busybox_archive() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("images/out/busybox.tar");
    p.exists().then_some(p)
}

/// One podrun instance: its own root, state and log dirs.
struct Podrun {
    dir: tempfile::TempDir,
}

impl Podrun {
    fn new() -> Podrun {
        // Each test gets here past its checks for root, the registry and the image.
        common::mark_ran();
        Podrun {
            dir: tempfile::Builder::new()
                .prefix("prreg-")
                .tempdir_in("/tmp")
                .unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let d = self.dir.path();
        Command::new(env!("CARGO_BIN_EXE_podrun"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--state")
            .arg(d.join("state"))
            .arg("--log-root")
            .arg(d.join("logs"))
            .arg("--cgroup-root")
            .arg(format!("podrun-reg-{}", std::process::id()))
            .args(args)
            .env("HOME", d)
            .env_remove("DOCKER_CONFIG")
            .env_remove("PODRUN_REGISTRY_PASSWORD")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podrun {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn images(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["images", "-o", "json"])).unwrap()
    }

    fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }
}

/// Root, the registry package and the busybox archive, or a reason to skip.
fn prerequisites() -> Option<PathBuf> {
    if !is_root() {
        common::cannot_run("registry", "needs root");
        return None;
    }
    let Some(archive) = busybox_archive() else {
        common::cannot_run(
            "registry",
            "images/out/busybox.tar is missing (run images/build.sh)",
        );
        return None;
    };
    if !ensure_registry_installed() {
        common::cannot_run(
            "registry",
            "docker-registry is not installed and apt-get could not install it",
        );
        return None;
    }
    Some(archive)
}

#[test]
fn pull_from_a_local_registry_and_through_a_mirror() {
    let Some(archive) = prerequisites() else {
        return;
    };
    let reg = Registry::start();
    reg.push_oci_archive(&archive, "library/busybox", "latest");
    let reference = format!("{}/library/busybox:latest", reg.host());

    let p = Podrun::new();
    let hosts = p.hosts_dir();
    let hosts_arg = hosts.to_str().unwrap();
    let out = p.ok(&["pull", "--hosts-dir", hosts_arg, &reference]);
    assert!(
        out.contains("downloading") && out.contains("unpacked"),
        "{out}"
    );
    assert!(out.contains(&format!("Pulled {reference}")), "{out}");
    let images = p.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["repo_tags"][0], reference.as_str());
    let id = images[0]["id"].as_str().unwrap().to_string();
    assert!(images[0]["repo_digests"][0]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}/library/busybox@sha256:", reg.host())));

    // Again: the manifest is checked, no layer is downloaded.
    let out = p.ok(&["pull", "--hosts-dir", hosts_arg, &reference]);
    assert!(
        out.contains("already present") && !out.contains("downloading"),
        "{out}"
    );
    assert_eq!(p.images().len(), 1);

    // The pulled image has a usable config.
    let inspect: serde_json::Value =
        serde_json::from_str(&p.ok(&["image", "inspect", &reference])).unwrap();
    assert_eq!(inspect[0]["image"]["id"], id.as_str());
    assert!(inspect[0]["config"]["rootfs"]["diff_ids"].is_array());

    // A missing tag: one clear line naming the reference and the step; nothing stored.
    let missing = format!("{}/library/busybox:nope", reg.host());
    let out = p.run(&["pull", "--hosts-dir", hosts_arg, &missing]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pull {missing}: fetch manifest: GET")) && err.contains("HTTP 404"),
        "{err}"
    );
    assert_eq!(p.images().len(), 1);

    // Save, load elsewhere, prune.
    let saved = p.dir.path().join("busybox-oci.tar");
    p.ok(&["image", "save", "-o", saved.to_str().unwrap(), &reference]);
    let p3 = Podrun::new();
    p3.ok(&["image", "load", saved.to_str().unwrap()]);
    assert_eq!(p3.images()[0]["id"], id.as_str());
    p.ok(&["image", "prune"]);
    assert_eq!(p.images().len(), 1, "a tagged image survives prune");

    // Mirror: docker.io/library/busybox resolved through hosts.toml. The upstream is a
    // closed port, so the image can only have come from the mirror.
    let m = Podrun::new();
    let dir = m.hosts_dir().join("docker.io");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:1\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.url()
        ),
    )
    .unwrap();
    let out = m.ok(&[
        "pull",
        "--hosts-dir",
        m.hosts_dir().to_str().unwrap(),
        "busybox",
    ]);
    assert!(out.contains("Pulled busybox"), "{out}");
    let images = m.images();
    assert_eq!(
        images[0]["repo_tags"][0],
        "docker.io/library/busybox:latest"
    );
    assert_eq!(images[0]["id"], id.as_str());

    // Concurrent pulls of one image into one store from four processes.
    let c = Podrun::new();
    let children: Vec<_> = (0..4)
        .map(|_| {
            let d = c.dir.path();
            Command::new(env!("CARGO_BIN_EXE_podrun"))
                .arg("--root")
                .arg(d.join("root"))
                .args(["pull", "-q", "--hosts-dir", hosts_arg, &reference])
                .env("HOME", d)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for ch in children {
        let out = ch.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    }
    assert_eq!(c.images().len(), 1);
    assert_eq!(
        std::fs::read_dir(c.dir.path().join("root/tmp"))
            .unwrap()
            .count(),
        0,
        "no temp files left"
    );
}

#[test]
fn pull_from_a_registry_with_basic_auth() {
    let Some(archive) = prerequisites() else {
        return;
    };
    let Some(reg) = Registry::start_basic("alice", "s3cret") else {
        common::cannot_run(
            "pull_from_a_registry_with_basic_auth",
            "htpasswd (apache2-utils) is not available",
        );
        return;
    };
    reg.push_oci_archive(&archive, "private/busybox", "1");
    let reference = format!("{}/private/busybox:1", reg.host());
    let p = Podrun::new();
    let hosts = p.hosts_dir();
    let hosts_arg = hosts.to_str().unwrap();

    let out = p.run(&["pull", "--hosts-dir", hosts_arg, &reference]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pull {reference}: fetch manifest:"))
            && err.contains("username and password"),
        "{err}"
    );

    let out = p.run_env(
        &["pull", "-u", "alice", "--hosts-dir", hosts_arg, &reference],
        &[("PODRUN_REGISTRY_PASSWORD", "wrong")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(p.images().is_empty());

    let out = p.run_env(
        &["pull", "-u", "alice", "--hosts-dir", hosts_arg, &reference],
        &[("PODRUN_REGISTRY_PASSWORD", "s3cret")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Credentials from ~/.docker/config.json.
    let q = Podrun::new();
    let docker = q.dir.path().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    q.ok(&["pull", "--hosts-dir", hosts_arg, &reference]);
    assert_eq!(q.images().len(), 1);
}
