//! Pull tests against the in-process fake registry: no root, no network beyond 127.0.0.1.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::archive::{sha256_digest, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};
use super::fake_registry::{AuthMode, FakeRegistry, Fault};
use super::hosts::{self, Auth, Credentials};
use super::pull::{PlatformSpec, ProgressEvent, PullOptions, PullPolicy};
use super::registry::parse_challenge;
use super::unpack::RecordingLayerOps;
use super::*;
use base64::Engine;

fn tar_layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An image pushed to the fake registry: (config digest, manifest digest, layer digests).
struct Pushed {
    id: String,
    manifest: String,
    layers: Vec<String>,
}

fn push_image(
    reg: &FakeRegistry,
    repo: &str,
    tag: Option<&str>,
    arch: &str,
    marker: &str,
) -> Pushed {
    let plain = [
        tar_layer(&[("etc/os-release", "ID=fake\n")]),
        tar_layer(&[("app/marker", marker)]),
    ];
    let blobs: Vec<Vec<u8>> = plain.iter().map(|l| gzip(l)).collect();
    let diff_ids: Vec<String> = plain.iter().map(|l| sha256_digest(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux", "created": "2024-05-01T00:00:00Z",
        "config": {"Cmd": ["/app/run"], "Env": [format!("MARKER={marker}")], "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cfg = reg.put_blob(&config);
    let layers: Vec<String> = blobs.iter().map(|b| reg.put_blob(b)).collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": cfg, "size": config.len()},
        "layers": blobs.iter().zip(&layers).map(|(b, d)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": b.len()
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let m = reg.put_manifest(repo, tag, MEDIA_OCI_MANIFEST, &manifest);
    Pushed {
        id: cfg,
        manifest: m,
        layers,
    }
}

struct Env {
    _dir: tempfile::TempDir,
    store: ImageStore,
    hosts_dir: std::path::PathBuf,
    root: std::path::PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = ImageStore::open_with_ops(&root, Arc::new(RecordingLayerOps::default())).unwrap();
    let hosts_dir = dir.path().join("certs.d");
    fs::create_dir_all(&hosts_dir).unwrap();
    fs::write(dir.path().join("no-config.json"), "{}").unwrap();
    Env {
        store,
        hosts_dir,
        root,
        _dir: dir,
    }
}

impl Env {
    fn opts(&self) -> PullOptions<'static> {
        PullOptions {
            hosts_dir: self.hosts_dir.clone(),
            docker_config: Some(self.root.parent().unwrap().join("no-config.json")),
            retries: 0,
            retry_backoff: Duration::from_millis(10),
            stall_timeout: Duration::from_secs(5),
            ..PullOptions::default()
        }
    }
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn assert_nothing_left(e: &Env) {
    assert!(e.store.list().unwrap().is_empty(), "no image");
    assert_eq!(count(&e.root.join("content/blobs/sha256")), 0, "no blobs");
    assert_eq!(count(&e.root.join("layers")), 0, "no layers");
    assert_eq!(count(&e.root.join("tmp")), 0, "no temp files");
}

#[test]
fn pull_by_tag_stores_unpacks_and_reuses() {
    let reg = FakeRegistry::start();
    let p = push_image(&reg, "team/app", Some("v1"), "amd64", "one");
    let e = env();
    let events = std::sync::Mutex::new(Vec::new());
    let record = |ev: &ProgressEvent| events.lock().unwrap().push(ev.clone());
    let mut opts = e.opts();
    opts.progress = Some(&record);
    let reference = format!("{}/team/app:v1", reg.host());
    let img = e.store.pull(&reference, &opts).unwrap();
    assert_eq!(img.id, p.id);
    assert_eq!(img.repo_tags, vec![reference.clone()]);
    assert_eq!(
        img.repo_digests,
        vec![format!("{}/team/app@{}", reg.host(), p.manifest)]
    );
    let dirs = e.store.layer_dirs(&img).unwrap();
    assert_eq!(dirs.len(), 2);
    assert_eq!(
        fs::read_to_string(dirs[1].join("app/marker")).unwrap(),
        "one"
    );
    let cfg = e.store.config(&img).unwrap();
    assert_eq!(cfg.env, vec!["MARKER=one"]);
    assert_eq!(cfg.user.as_deref(), Some("1000"));
    assert_eq!(e.store.get(&reference).unwrap().unwrap().id, p.id);
    let evs = events.lock().unwrap().clone();
    assert!(matches!(&evs[0], ProgressEvent::Resolved { layers: 2, .. }));
    for l in &p.layers {
        assert!(evs.contains(&ProgressEvent::LayerUnpacked { digest: l.clone() }));
        assert_eq!(reg.blob_gets(l), 1);
    }

    // Pulling again fetches the manifest but no layer.
    let again = e.store.pull(&reference, &e.opts()).unwrap();
    assert_eq!(again.id, p.id);
    for l in &p.layers {
        assert_eq!(reg.blob_gets(l), 1, "layer {l} downloaded twice");
    }
    // A temp file left by a pull that was killed is cleared by the next pull.
    fs::write(e.root.join("tmp/pull-stale"), b"partial").unwrap();
    e.store.pull(&reference, &e.opts()).unwrap();
    assert_eq!(count(&e.root.join("tmp")), 0);
    // By digest too, with no new download.
    let by_digest = format!("{}/team/app@{}", reg.host(), p.manifest);
    assert_eq!(e.store.pull(&by_digest, &e.opts()).unwrap().id, p.id);
    assert_eq!(e.store.list().unwrap().len(), 1);
}

#[test]
fn index_selects_the_requested_platform() {
    let reg = FakeRegistry::start();
    let amd = push_image(&reg, "multi", None, "amd64", "amd");
    let arm = push_image(&reg, "multi", None, "arm64", "arm");
    let size = |d: &str| {
        // Manifest sizes: refetch from the registry's own store through a digest lookup.
        let url = format!("http://{}/v2/multi/manifests/{d}", reg.host());
        ureq::get(&url).call().unwrap().into_string().unwrap().len()
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
        "manifests": [
            {"mediaType": MEDIA_OCI_MANIFEST, "digest": arm.manifest, "size": size(&arm.manifest),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": MEDIA_OCI_MANIFEST, "digest": amd.manifest, "size": size(&amd.manifest),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": MEDIA_OCI_MANIFEST, "digest": amd.manifest, "size": size(&amd.manifest),
             "platform": {"os": "unknown", "architecture": "unknown"}},
        ],
    }))
    .unwrap();
    let index_digest = reg.put_manifest("multi", Some("latest"), MEDIA_OCI_INDEX, &index);
    let e = env();
    let reference = format!("{}/multi", reg.host());

    let mut opts = e.opts();
    opts.platform = "linux/arm64".parse().unwrap();
    let img = e.store.pull(&reference, &opts).unwrap();
    assert_eq!(img.id, arm.id);
    // The repo digest is the index's, as Docker and containerd record it.
    assert_eq!(
        img.repo_digests,
        vec![format!("{}/multi@{index_digest}", reg.host())]
    );

    opts.platform = "linux/amd64".parse().unwrap();
    let img = e.store.pull(&reference, &opts).unwrap();
    assert_eq!(img.id, amd.id);
    assert_eq!(e.store.get(&reference).unwrap().unwrap().id, amd.id);

    opts.platform = "linux/s390x".parse().unwrap();
    let err = e.store.pull(&reference, &opts).unwrap_err().to_string();
    assert!(err.contains("select platform"), "{err}");
    assert!(
        err.contains("linux/arm64/v8, linux/amd64") && !err.contains("unknown"),
        "{err}"
    );
}

#[test]
fn bearer_token_auth_with_credentials_and_config_json() {
    let reg = FakeRegistry::start();
    let p = push_image(&reg, "private/app", Some("1.0"), "amd64", "secret");
    reg.set_auth(AuthMode::Bearer {
        credentials: Some(("alice".into(), "s3cret".into())),
        token: "tok-123".into(),
    });
    let e = env();
    let reference = format!("{}/private/app:1.0", reg.host());

    let err = e.store.pull(&reference, &e.opts()).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("pull {reference}: fetch manifest:")),
        "{err}"
    );
    assert!(err.contains("token request failed: HTTP 401"), "{err}");
    assert_nothing_left(&e);

    let mut opts = e.opts();
    opts.auth = Some(Auth::Basic {
        username: "alice".into(),
        password: "s3cret".into(),
    });
    assert_eq!(e.store.pull(&reference, &opts).unwrap().id, p.id);
    // The token was fetched once and reused for every later request of that pull.
    let token_gets = reg
        .log()
        .iter()
        .filter(|l| l.starts_with("GET /token"))
        .count();
    assert_eq!(token_gets, 2, "{:?}", reg.log());

    // Credentials from a Docker config.json.
    let e2 = env();
    let cfg = e2.root.parent().unwrap().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    let mut opts = e2.opts();
    opts.docker_config = Some(cfg);
    assert_eq!(e2.store.pull(&reference, &opts).unwrap().id, p.id);
}

#[test]
fn identity_and_registry_tokens() {
    let reg = FakeRegistry::start();
    let p = push_image(&reg, "idt/app", Some("1"), "amd64", "i");
    reg.set_auth(AuthMode::IdentityToken {
        refresh_token: "refresh-xyz".into(),
        token: "access-1".into(),
    });
    let reference = format!("{}/idt/app:1", reg.host());
    let e = env();
    let mut opts = e.opts();
    opts.auth = Some(Auth::IdentityToken("refresh-xyz".into()));
    assert_eq!(e.store.pull(&reference, &opts).unwrap().id, p.id);
    assert!(reg.log().iter().any(|l| l.starts_with("POST /token")));

    // A registry token is sent up front: no challenge round trip.
    let e = env();
    let before = reg.log().len();
    opts.auth = Some(Auth::RegistryToken("access-1".into()));
    opts.hosts_dir = e.hosts_dir.clone();
    assert_eq!(e.store.pull(&reference, &opts).unwrap().id, p.id);
    assert!(reg.log()[before..].iter().all(|l| !l.contains("/token")));

    let e = env();
    opts.auth = Some(Auth::IdentityToken("stale".into()));
    opts.hosts_dir = e.hosts_dir.clone();
    let err = e.store.pull(&reference, &opts).unwrap_err().to_string();
    assert!(err.contains("token request failed: HTTP 401"), "{err}");
}

#[test]
fn basic_auth() {
    let reg = FakeRegistry::start();
    let p = push_image(&reg, "app", Some("latest"), "amd64", "b");
    reg.set_auth(AuthMode::Basic {
        username: "bob".into(),
        password: "pw".into(),
    });
    let e = env();
    let reference = format!("{}/app", reg.host());
    let err = e.store.pull(&reference, &e.opts()).unwrap_err().to_string();
    assert!(err.contains("username and password"), "{err}");

    let mut opts = e.opts();
    opts.auth = Some(Auth::Basic {
        username: "bob".into(),
        password: "wrong".into(),
    });
    let err = e.store.pull(&reference, &opts).unwrap_err().to_string();
    assert!(
        err.contains("HTTP 401") && err.contains("credentials rejected"),
        "{err}"
    );
    assert_nothing_left(&e);

    opts.auth = Some(Auth::Basic {
        username: "bob".into(),
        password: "pw".into(),
    });
    assert_eq!(e.store.pull(&reference, &opts).unwrap().id, p.id);
}

#[test]
fn not_found_and_malformed_references() {
    let reg = FakeRegistry::start();
    let e = env();
    let reference = format!("{}/nope:1", reg.host());
    let err = e.store.pull(&reference, &e.opts()).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "pull {reference}: fetch manifest: GET http://{}/v2/nope/manifests/1: HTTP 404 (MANIFEST_UNKNOWN: manifest unknown)",
            reg.host()
        )
    );
    let err = e
        .store
        .pull("docker.io/Library/x", &e.opts())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid reference \"docker.io/Library/x\""),
        "{err}"
    );
    let err = e.store.pull("app:", &e.opts()).unwrap_err().to_string();
    assert!(err.starts_with("invalid reference \"app:\""), "{err}");
    assert_nothing_left(&e);
}

#[test]
fn unknown_host_is_reported_as_such() {
    let e = env();
    let dir = e.hosts_dir.join("registry.invalid");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("hosts.toml"),
        "server = \"http://registry.invalid\"\n",
    )
    .unwrap();
    let err = e
        .store
        .pull("registry.invalid/app:1", &e.opts())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("pull registry.invalid/app:1: fetch manifest: connect to http://registry.invalid/v2/app/manifests/1: unknown host"),
        "{err}"
    );
    assert_nothing_left(&e);
}

#[test]
fn server_errors_are_retried_then_reported() {
    let reg = FakeRegistry::start();
    let p = push_image(&reg, "flaky", Some("latest"), "amd64", "f");
    let e = env();
    let reference = format!("{}/flaky", reg.host());
    reg.fault("/manifests/latest", Fault::Status(503));
    reg.fault(&format!("/blobs/{}", p.layers[0]), Fault::Status(500));
    let mut opts = e.opts();
    opts.retries = 2;
    assert_eq!(e.store.pull(&reference, &opts).unwrap().id, p.id);
    assert_eq!(reg.blob_gets(&p.layers[0]), 2);

    let e = env();
    for _ in 0..3 {
        reg.fault("/manifests/latest", Fault::Status(500));
    }
    opts.hosts_dir = e.hosts_dir.clone();
    opts.retries = 1;
    let err = e.store.pull(&reference, &opts).unwrap_err().to_string();
    assert!(
        err.contains("fetch manifest") && err.contains("HTTP 500"),
        "{err}"
    );
    assert_nothing_left(&e);
}

#[test]
fn digest_mismatch_and_truncated_layers_leave_nothing() {
    let reg = FakeRegistry::start();
    let p = push_image(&reg, "bad", Some("latest"), "amd64", "x");
    let reference = format!("{}/bad", reg.host());

    let e = env();
    reg.fault(&format!("/blobs/{}", p.layers[1]), Fault::Corrupt);
    let err = e.store.pull(&reference, &e.opts()).unwrap_err().to_string();
    let short = &p.layers[1][7..19];
    assert!(
        err.contains(&format!("fetch layer {short}: digest mismatch")),
        "{err}"
    );
    assert_nothing_left(&e);

    let e = env();
    reg.fault(&format!("/blobs/{}", p.layers[0]), Fault::Truncate(10));
    let err = e.store.pull(&reference, &e.opts()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("fetch layer {}", &p.layers[0][7..19]))
            && err.contains("after 10 bytes"),
        "{err}"
    );
    assert_nothing_left(&e);

    // One interruption with a retry allowed: the download starts over and succeeds.
    reg.fault(&format!("/blobs/{}", p.layers[0]), Fault::Truncate(5));
    let mut opts = e.opts();
    opts.retries = 1;
    assert_eq!(e.store.pull(&reference, &opts).unwrap().id, p.id);
}

#[test]
fn stalled_download_times_out() {
    let reg = FakeRegistry::start();
    let p = push_image(&reg, "slow", Some("latest"), "amd64", "s");
    let e = env();
    reg.fault(
        &format!("/blobs/{}", p.layers[0]),
        Fault::Stall(Duration::from_secs(5)),
    );
    let mut opts = e.opts();
    opts.stall_timeout = Duration::from_millis(400);
    // The stall (5 s) outlasts the timeout (400 ms): the error names the timeout, not a
    // finished or broken download.
    let err = e
        .store
        .pull(&format!("{}/slow", reg.host()), &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("stall timeout"), "{err}");
    assert_nothing_left(&e);
}

#[test]
fn mirrors_in_order_with_upstream_fallback() {
    let mirror_empty = FakeRegistry::start();
    let mirror = FakeRegistry::start();
    let p = push_image(&mirror, "library/busybox", Some("latest"), "amd64", "m");
    let e = env();
    let dir = e.hosts_dir.join("docker.io");
    fs::create_dir_all(&dir).unwrap();
    // The upstream is a closed port: everything must come from the mirrors.
    fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:1\"\n\n[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            mirror_empty.host(),
            mirror.host()
        ),
    )
    .unwrap();
    let img = e.store.pull("busybox", &e.opts()).unwrap();
    assert_eq!(img.id, p.id);
    assert_eq!(img.repo_tags, vec!["docker.io/library/busybox:latest"]);
    assert!(mirror_empty.log()[0].contains("/v2/library/busybox/manifests/latest?ns=docker.io"));
    assert!(mirror.log().iter().any(|l| l.contains("ns=docker.io")));

    // With the mirrors failing, the upstream is tried last and its failure reported.
    let e2 = env();
    let dir = e2.hosts_dir.join("docker.io");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n[host.\"http://127.0.0.1:1\"]\n",
            mirror.host()
        ),
    )
    .unwrap();
    assert_eq!(e2.store.pull("busybox", &e2.opts()).unwrap().id, p.id);
}

#[test]
fn concurrent_pulls_share_one_download() {
    let reg = FakeRegistry::start();
    let p = push_image(&reg, "shared", Some("latest"), "amd64", "c");
    let e = env();
    let reference = format!("{}/shared", reg.host());
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| e.store.pull(&reference, &e.opts()).unwrap());
        }
    });
    for l in &p.layers {
        assert_eq!(reg.blob_gets(l), 1, "{l}: {:?}", reg.log());
    }
    assert_eq!(e.store.list().unwrap().len(), 1);
    assert_eq!(count(&e.root.join("tmp")), 0);
}

#[test]
fn pull_policies() {
    let reg = FakeRegistry::start();
    let p = push_image(&reg, "pol", Some("1"), "amd64", "p");
    let e = env();
    let reference = format!("{}/pol:1", reg.host());
    let err = e.store.ensure(&reference, "Never", &e.opts()).unwrap_err();
    assert!(matches!(err, ImageError::NeverPull(_)), "{err}");
    assert!(reg.log().is_empty());
    // Default for a non-latest tag is IfNotPresent: pulls once, then uses the local image.
    assert_eq!(e.store.ensure(&reference, "", &e.opts()).unwrap().id, p.id);
    let n = reg.log().len();
    assert_eq!(
        e.store
            .ensure(&reference, "IfNotPresent", &e.opts())
            .unwrap()
            .id,
        p.id
    );
    assert_eq!(
        e.store.ensure(&reference, "Never", &e.opts()).unwrap().id,
        p.id
    );
    assert_eq!(reg.log().len(), n);
    // Always asks the registry again.
    assert_eq!(
        e.store.ensure(&reference, "Always", &e.opts()).unwrap().id,
        p.id
    );
    assert!(reg.log().len() > n);
    assert!(matches!(
        e.store.ensure(&reference, "Sometimes", &e.opts()),
        Err(ImageError::InvalidPullPolicy(_))
    ));
    assert_eq!(
        PullPolicy::for_image("", "nginx").unwrap(),
        PullPolicy::Always
    );
    assert_eq!(
        PullPolicy::for_image("", "nginx:1.27").unwrap(),
        PullPolicy::IfNotPresent
    );
}

#[test]
fn prune_removes_untagged_images_and_their_content() {
    let reg = FakeRegistry::start();
    push_image(&reg, "keep", Some("1"), "amd64", "k");
    let gone = push_image(&reg, "gone", Some("1"), "amd64", "g");
    let e = env();
    e.store
        .pull(&format!("{}/keep:1", reg.host()), &e.opts())
        .unwrap();
    let img = e
        .store
        .pull(&format!("{}/gone:1", reg.host()), &e.opts())
        .unwrap();
    // Untag by removing the tag reference: the record stays only while it has a digest.
    assert!(e.store.prune(&[]).unwrap().is_empty());
    let mut rec_path = e.root.join("images");
    rec_path.push(format!("{}.json", id_hex(&img.id)));
    let mut rec: serde_json::Value = serde_json::from_slice(&fs::read(&rec_path).unwrap()).unwrap();
    rec["image"]["repo_tags"] = serde_json::json!([]);
    rec["image"]["repo_digests"] = serde_json::json!([]);
    fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();
    // An image in use is kept even when untagged.
    assert!(e
        .store
        .prune(std::slice::from_ref(&gone.id))
        .unwrap()
        .is_empty());
    assert_eq!(e.store.prune(&[]).unwrap(), vec![gone.id.clone()]);
    assert_eq!(e.store.list().unwrap().len(), 1);
    assert!(!e
        .root
        .join("content/blobs/sha256")
        .join(id_hex(&gone.layers[1]))
        .exists());
}

#[test]
fn save_writes_a_loadable_oci_archive() {
    let reg = FakeRegistry::start();
    let p = push_image(&reg, "saved", Some("2"), "amd64", "sv");
    let e = env();
    let reference = format!("{}/saved:2", reg.host());
    e.store.pull(&reference, &e.opts()).unwrap();
    let out = e.root.parent().unwrap().join("saved.tar");
    e.store.save(&[reference.as_str()], &out).unwrap();
    let e2 = env();
    let loaded = e2.store.load_archive(&out).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id, p.id);
    assert_eq!(loaded[0].repo_tags, vec![reference]);
}

#[test]
fn hosts_toml_and_defaults() {
    let d = tempfile::tempdir().unwrap();
    let eps = hosts::endpoints(d.path(), "docker.io").unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].api, "https://registry-1.docker.io/v2");
    assert_eq!(
        hosts::endpoints(d.path(), "localhost:5000").unwrap()[0].api,
        "http://localhost:5000/v2"
    );
    assert_eq!(
        hosts::endpoints(d.path(), "127.0.0.2:5000").unwrap()[0].api,
        "http://127.0.0.2:5000/v2"
    );
    assert_eq!(
        hosts::endpoints(d.path(), "[::1]:5000").unwrap()[0].api,
        "http://[::1]:5000/v2"
    );
    assert_eq!(
        hosts::endpoints(d.path(), "quay.io").unwrap()[0].api,
        "https://quay.io/v2"
    );
    let dir = d.path().join("quay.io");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("hosts.toml"),
        r#"
server = "https://quay.io"
[host."https://z-mirror.local:8443"]
  capabilities = ["pull"]
  skip_verify = true
[host."https://a-mirror.local/custom/v2"]
  ca = ["mirror.pem"]
  override_path = true
"#,
    )
    .unwrap();
    let eps = hosts::endpoints(d.path(), "quay.io").unwrap();
    let apis: Vec<&str> = eps.iter().map(|e| e.api.as_str()).collect();
    // File order, not alphabetical: mirrors are tried as listed.
    assert_eq!(
        apis,
        [
            "https://z-mirror.local:8443/v2",
            "https://a-mirror.local/custom/v2",
            "https://quay.io/v2"
        ]
    );
    assert!(eps[0].pull && !eps[0].resolve && eps[0].skip_verify);
    assert_eq!(eps[1].ca, vec![dir.join("mirror.pem")]);
    assert!(eps[2].upstream);
    fs::write(dir.join("hosts.toml"), "server = 1").unwrap();
    let err = hosts::endpoints(d.path(), "quay.io")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hosts.toml") && err.contains("server must be a string"),
        "{err}"
    );
}

#[test]
fn challenges_credentials_and_platforms_parse() {
    let c = parse_challenge(
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
    )
    .unwrap();
    assert_eq!(c.scheme, "Bearer");
    assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
    assert_eq!(c.param("service"), Some("registry.docker.io"));
    assert_eq!(c.param("scope"), Some("repository:library/nginx:pull"));
    let c = parse_challenge(r#"Basic realm="x, y", charset=UTF-8"#).unwrap();
    assert_eq!(c.param("realm"), Some("x, y"));
    assert_eq!(c.param("charset"), Some("UTF-8"));

    let creds = Credentials::parse(
        br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},
            "reg.local:5000":{"identitytoken":"idt"}}}"#,
    )
    .unwrap();
    assert_eq!(
        creds.get("docker.io"),
        Some(&Auth::Basic {
            username: "u".into(),
            password: "p".into()
        })
    );
    assert_eq!(creds.get("registry-1.docker.io"), creds.get("docker.io"));
    assert_eq!(
        creds.get("reg.local:5000"),
        Some(&Auth::IdentityToken("idt".into()))
    );
    assert!(format!("{:?}", creds.get("docker.io")).contains("***"));
    assert!(Credentials::parse(br#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());

    let p: PlatformSpec = "linux/arm64/v8".parse().unwrap();
    assert_eq!(p.variant.as_deref(), Some("v8"));
    assert!("linux".parse::<PlatformSpec>().is_err());
    assert!("linux//".parse::<PlatformSpec>().is_err());
    assert!(hosts::is_loopback("127.1.2.3:80") && hosts::is_loopback("localhost"));
    assert!(!hosts::is_loopback("10.0.0.1:5000") && !hosts::is_loopback("localhost.example"));
}

/// A CA and a leaf certificate for 127.0.0.1 made with the openssl command, or None.
fn make_certs(dir: &Path) -> Option<()> {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .ok()?;
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=podrun test CA",
    ]) && run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    ok.then_some(())
}

#[test]
fn https_registry_with_hosts_ca_and_skip_verify() {
    let certs = tempfile::tempdir().unwrap();
    if make_certs(certs.path()).is_none() {
        eprintln!("skipped: the openssl command is not available");
        return;
    }
    let reg = FakeRegistry::start_tls(
        &certs.path().join("leaf.pem"),
        &certs.path().join("leaf.key"),
    );
    let p = push_image(&reg, "tls/app", Some("1"), "amd64", "t");
    let reference = format!("{}/tls/app:1", reg.host());
    let write_hosts = |e: &Env, extra: &str| {
        let dir = e.hosts_dir.join(reg.host());
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("hosts.toml"),
            format!("server = \"https://{}\"\n{extra}", reg.host()),
        )
        .unwrap();
    };

    // Loopback would default to plain HTTP; hosts.toml asks for HTTPS, with no CA: refused.
    let e = env();
    write_hosts(&e, "");
    let err = e.store.pull(&reference, &e.opts()).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "connect to https://{}/v2/tls/app/manifests/1",
            reg.host()
        )) && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert_nothing_left(&e);

    let e = env();
    write_hosts(
        &e,
        &format!("ca = \"{}\"\n", certs.path().join("ca.pem").display()),
    );
    assert_eq!(e.store.pull(&reference, &e.opts()).unwrap().id, p.id);

    let e = env();
    write_hosts(&e, "skip_verify = true\n");
    assert_eq!(e.store.pull(&reference, &e.opts()).unwrap().id, p.id);
}
