//! A real registry for tests: Debian's `docker-registry` (the CNCF distribution server)
//! on a free loopback port with its storage in a temp dir, optionally behind basic auth,
//! and a small distribution-API client that pushes the project's OCI archives to it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// apt-get install, without letting the package start its own service (as Debian's
/// docker-registry would, on port 5000): policy-rc.d says no while it runs.
pub fn apt_install(pkg: &str) -> bool {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let added = !policy.exists()
        && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok()
        && Command::new("chmod")
            .args(["+x", "/usr/sbin/policy-rc.d"])
            .status()
            .is_ok_and(|s| s.success());
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", pkg])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut ok = install();
    if !ok {
        // The package lists may be missing on a fresh machine.
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(Stdio::null())
            .status();
        ok = install();
    }
    if added {
        let _ = std::fs::remove_file(policy);
    }
    ok
}

/// Install the registry if it is missing (once per test binary: apt holds a lock);
/// false if that is impossible here.
pub fn ensure_registry_installed() -> bool {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *INSTALLED.get_or_init(|| {
        Path::new(REGISTRY_BIN).exists()
            || (apt_install("docker-registry") && Path::new(REGISTRY_BIN).exists())
    })
}

/// A registry process on a free loopback port, killed by PID when dropped.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub ip: String,
    /// Basic-auth credentials the registry demands (htpasswd), if any.
    basic: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

/// `htpasswd -B` from apache2-utils (installed if missing): the registry wants bcrypt.
fn htpasswd_line(user: &str, password: &str) -> Option<String> {
    let run = || {
        Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let out = run().or_else(|| {
        apt_install("apache2-utils");
        run()
    })?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with(None).unwrap()
    }

    /// A registry behind basic auth; None if htpasswd is unavailable.
    pub fn start_basic(user: &str, password: &str) -> Option<Registry> {
        Self::start_with(Some((user.to_string(), password.to_string())))
    }

    pub fn start_with(basic: Option<(String, String)>) -> Option<Registry> {
        Self::start_at("127.0.0.1", basic)
    }

    /// A registry listening on `ip` (an address of a test's own network).
    pub fn start_at(ip: &str, basic: Option<(String, String)>) -> Option<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("podrun-registry-")
            .tempdir()
            .unwrap();
        let port = TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {ip}:{port}\n  secret: podrun-test\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = &basic {
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{}\n", htpasswd_line(u, p)?)).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: podrun-test\n    path: {}\n",
                file.display()
            ));
        }
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("start docker-registry");
        let reg = Registry {
            child,
            port,
            ip: ip.to_owned(),
            basic,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match ureq::get(&format!("{}/v2/", reg.url()))
                .timeout(Duration::from_secs(2))
                .call()
            {
                Ok(_) | Err(ureq::Error::Status(401, _)) => break,
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "registry did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(reg)
    }

    pub fn authorized(&self, req: ureq::Request) -> ureq::Request {
        match &self.basic {
            Some((u, p)) => {
                use base64::Engine;
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                req.set("Authorization", &format!("Basic {b}"))
            }
            None => req,
        }
    }

    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Push an OCI image layout (unpacked from `archive`) as `repo:tag`: every blob through
    /// a monolithic upload (POST, then PUT ?digest=), then the manifest. Returns the
    /// manifest digest.
    pub fn push_oci_archive(&self, archive: &Path, repo: &str, tag: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        self.push_oci_layout(dir.path(), repo, tag)
    }

    /// Push the first image of an unpacked OCI image layout as `repo:tag`; returns the
    /// manifest digest.
    pub fn push_oci_layout(&self, dir: &Path, repo: &str, tag: &str) -> String {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let desc = &index["manifests"][0];
        let blob = |d: &str| dir.join("blobs/sha256").join(&d[7..]);
        let manifest_digest = desc["digest"].as_str().unwrap();
        let manifest_bytes = std::fs::read(blob(manifest_digest)).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
        let mut digests = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
        for l in manifest["layers"].as_array().unwrap() {
            digests.push(l["digest"].as_str().unwrap().to_string());
        }
        for d in digests {
            let resp = self
                .authorized(ureq::post(&format!(
                    "{}/v2/{repo}/blobs/uploads/",
                    self.url()
                )))
                .call()
                .expect("start upload");
            assert_eq!(resp.status(), 202);
            let location = resp
                .header("Location")
                .expect("upload location")
                .to_string();
            let location = if location.starts_with('/') {
                format!("{}{location}", self.url())
            } else {
                location
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let data = std::fs::read(blob(&d)).unwrap();
            let resp = self
                .authorized(ureq::put(&format!("{location}{sep}digest={d}")))
                .set("Content-Type", "application/octet-stream")
                .send_bytes(&data)
                .expect("upload blob");
            assert_eq!(resp.status(), 201, "blob {d}");
        }
        let media = desc["mediaType"].as_str().unwrap();
        let resp = self
            .authorized(ureq::put(&format!(
                "{}/v2/{repo}/manifests/{tag}",
                self.url()
            )))
            .set("Content-Type", media)
            .send_bytes(&manifest_bytes)
            .expect("put manifest");
        assert_eq!(resp.status(), 201);
        manifest_digest.to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Only the process this test started, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
