use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use podrun_cri_proto::v1::image_service_server::ImageService as _;
use podrun_cri_proto::v1::ImageFilter;
use podrun_runtime::image::archive::sha256_digest;
use podrun_runtime::image::unpack::RecordingLayerOps;

use super::*;

/// One ustar member: header, data, padding to a block.
fn tar_member(out: &mut Vec<u8>, name: &str, data: &[u8], dir: bool) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0width$o}\0", width = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, if dir { 0o755 } else { 0o644 });
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, data.len() as u64);
    octal(&mut h, 136, 12, 1_700_000_000);
    h[156] = if dir { b'5' } else { b'0' };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn tar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        tar_member(&mut out, name, data, name.ends_with('/'));
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A one-layer image: (config, layer).
fn image_parts(user: &str, marker: &str) -> (Vec<u8>, Vec<u8>) {
    let layer = tar(&[("bin/", b""), ("bin/app", marker.as_bytes())]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"User": user, "Cmd": ["/bin/app"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]},
    }))
    .unwrap();
    (config, layer)
}

/// A docker-archive (`docker save` format) of one image with `tags`.
fn docker_archive(path: &Path, user: &str, tags: &[&str]) -> String {
    let (config, layer) = image_parts(user, path.to_str().unwrap());
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json", "RepoTags": tags, "Layers": ["layer.tar"],
    }]))
    .unwrap();
    let archive = tar(&[
        ("manifest.json", &manifest),
        ("config.json", &config),
        ("layer.tar", &layer),
    ]);
    std::fs::write(path, archive).unwrap();
    sha256_digest(&config)
}

fn service(dir: &Path) -> ImageService {
    let store =
        ImageStore::open_with_ops(dir.join("store"), Arc::new(RecordingLayerOps::default()))
            .unwrap();
    ImageService::new(Arc::new(store), dir.join("certs.d"), dir.join("store"))
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn status(svc: &ImageService, image: &str, verbose: bool) -> ImageStatusResponse {
    svc.image_status(Request::new(ImageStatusRequest {
        image: spec(image),
        verbose,
    }))
    .await
    .unwrap()
    .into_inner()
}

async fn list(svc: &ImageService, filter: Option<&str>) -> Vec<Image> {
    svc.list_images(Request::new(ListImagesRequest {
        filter: filter.map(|f| ImageFilter { image: spec(f) }),
    }))
    .await
    .unwrap()
    .into_inner()
    .images
}

async fn remove(svc: &ImageService, image: &str) -> Result<(), Status> {
    svc.remove_image(Request::new(RemoveImageRequest { image: spec(image) }))
        .await
        .map(|_| ())
}

#[test]
fn users_split_into_uid_or_name() {
    assert_eq!(user_of(None), (None, String::new()));
    assert_eq!(user_of(Some("")), (None, String::new()));
    assert_eq!(
        user_of(Some("1000:1000")),
        (Some(Int64Value { value: 1000 }), String::new())
    );
    assert_eq!(user_of(Some("nginx:www")), (None, "nginx".to_string()));
    assert_eq!(
        user_of(Some("0")),
        (Some(Int64Value { value: 0 }), String::new())
    );
}

#[test]
fn auth_config_maps_like_containerd() {
    let basic = |u: &str, p: &str| {
        Some(Auth::Basic {
            username: u.into(),
            password: p.into(),
        })
    };
    let a = AuthConfig {
        username: "u".into(),
        password: "p".into(),
        identity_token: "id".into(),
        ..Default::default()
    };
    assert_eq!(auth_of(&a, "r.example").unwrap(), basic("u", "p"));
    let a = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("al:pw:x"),
        ..Default::default()
    };
    assert_eq!(auth_of(&a, "r.example").unwrap(), basic("al", "pw:x"));
    let a = AuthConfig {
        identity_token: "refresh".into(),
        ..Default::default()
    };
    assert_eq!(
        auth_of(&a, "r.example").unwrap(),
        Some(Auth::IdentityToken("refresh".into()))
    );
    let a = AuthConfig {
        registry_token: "bearer".into(),
        ..Default::default()
    };
    assert_eq!(
        auth_of(&a, "r.example").unwrap(),
        Some(Auth::RegistryToken("bearer".into()))
    );
    assert_eq!(auth_of(&AuthConfig::default(), "r.example").unwrap(), None);
    // Credentials for another registry are not sent; Docker Hub's aliases match.
    let a = AuthConfig {
        username: "u".into(),
        password: "p".into(),
        server_address: "https://other.example/v2/".into(),
        ..Default::default()
    };
    assert_eq!(auth_of(&a, "r.example").unwrap(), None);
    let a = AuthConfig {
        server_address: "https://index.docker.io/v1/".into(),
        ..a
    };
    assert_eq!(auth_of(&a, "docker.io").unwrap(), basic("u", "p"));
    let a = AuthConfig {
        auth: "not base64!".into(),
        ..Default::default()
    };
    assert_eq!(
        auth_of(&a, "r.example").unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test]
async fn list_status_remove_and_fs_info_over_a_loaded_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path());
    let archive = tmp.path().join("app.tar");
    let id = docker_archive(
        &archive,
        "1000:1000",
        &["registry.test/app:1", "registry.test/app:stable"],
    );
    let other = tmp.path().join("web.tar");
    let other_id = docker_archive(&other, "www-data", &["registry.test/web:1"]);
    svc.images.load_archive(&archive).unwrap();
    svc.images.load_archive(&other).unwrap();

    let all = list(&svc, None).await;
    assert_eq!(all.len(), 2);
    let app = all.iter().find(|i| i.id == id).unwrap();
    assert_eq!(
        app.repo_tags,
        vec!["registry.test/app:1", "registry.test/app:stable"]
    );
    assert_eq!(app.uid, Some(Int64Value { value: 1000 }));
    assert_eq!(app.username, "");
    assert_eq!(app.spec.as_ref().unwrap().image, id);
    assert!(app.size > 0);
    assert!(!app.pinned);
    let web = all.iter().find(|i| i.id == other_id).unwrap();
    assert_eq!((web.uid, web.username.as_str()), (None, "www-data"));

    // Filters match by reference or id; unknown or malformed ones match nothing.
    let by_tag = list(&svc, Some("registry.test/app:stable")).await;
    assert_eq!(by_tag.iter().map(|i| &i.id).collect::<Vec<_>>(), [&id]);
    let by_id = list(&svc, Some(&other_id)).await;
    assert_eq!(by_id.iter().map(|i| &i.id).collect::<Vec<_>>(), [&other_id]);
    assert!(list(&svc, Some("registry.test/app:nope")).await.is_empty());
    assert!(list(&svc, Some("UPPER/case")).await.is_empty());

    // Status: found with verbose info, not found without an error.
    let s = status(&svc, "registry.test/app:1", true).await;
    assert_eq!(s.image.as_ref().unwrap().id, id);
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["User"], "1000:1000");
    assert!(info["chainID"].as_str().unwrap().starts_with("sha256:"));
    let s = status(&svc, &id[7..19], false).await;
    assert_eq!(s.image.unwrap().id, id);
    assert!(s.info.is_empty());
    let s = status(&svc, "registry.test/missing:1", true).await;
    assert!(s.image.is_none() && s.info.is_empty());
    let err = svc
        .image_status(Request::new(ImageStatusRequest {
            image: None,
            verbose: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("image.image"), "{}", err.message());

    // Usage of the store and of the (empty) container layers.
    let fs = svc
        .image_fs_info(Request::new(ImageFsInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    let image_fs = &fs.image_filesystems[0];
    assert!(image_fs.timestamp > 0);
    assert_eq!(
        image_fs.fs_id.as_ref().unwrap().mountpoint,
        tmp.path().join("store").display().to_string()
    );
    assert!(image_fs.used_bytes.as_ref().unwrap().value > 0);
    assert!(image_fs.inodes_used.as_ref().unwrap().value > 0);
    let ctr_fs = &fs.container_filesystems[0];
    assert_eq!(ctr_fs.inodes_used.as_ref().unwrap().value, 0);

    // Removing by one tag removes the whole image, as containerd does; again is fine.
    remove(&svc, "registry.test/app:1").await.unwrap();
    assert!(status(&svc, "registry.test/app:stable", false)
        .await
        .image
        .is_none());
    remove(&svc, "registry.test/app:1").await.unwrap();
    remove(&svc, &other_id).await.unwrap();
    remove(&svc, &other_id).await.unwrap();
    assert!(list(&svc, None).await.is_empty());
    let err = remove(&svc, "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let fs = svc
        .image_fs_info(Request::new(ImageFsInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    // Only the store's empty directories remain.
    let after = fs.image_filesystems[0].inodes_used.as_ref().unwrap().value;
    assert!(after < image_fs.inodes_used.as_ref().unwrap().value);
    assert_eq!(after, 2, "content/blobs and content/blobs/sha256");
}

/// A registry on 127.0.0.1 serving one image under `repo:tag`, asking for Basic
/// credentials `user:secret` when `basic` is set. One request per connection.
fn serve_registry(repo: &'static str, tag: &'static str, basic: bool) -> (String, String) {
    let (config, layer) = image_parts("0", "pulled");
    let id = sha256_digest(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": sha256_digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let mut routes: HashMap<String, (Vec<u8>, &'static str)> = HashMap::new();
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    routes.insert(
        format!("/v2/{repo}/manifests/{tag}"),
        (manifest.clone(), manifest_type),
    );
    routes.insert(
        format!("/v2/{repo}/manifests/{}", sha256_digest(&manifest)),
        (manifest, manifest_type),
    );
    for blob in [config, layer] {
        routes.insert(
            format!("/v2/{repo}/blobs/{}", sha256_digest(&blob)),
            (blob, "application/octet-stream"),
        );
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:secret")
    );
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default();
            let path = path.split('?').next().unwrap_or_default().to_string();
            let mut authorized = !basic;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("authorization") && v.trim() == expected {
                        authorized = true;
                    }
                }
            }
            let (status, extra, body, ctype): (&str, &str, Vec<u8>, &str) = if !authorized {
                (
                        "401 Unauthorized",
                        "WWW-Authenticate: Basic realm=\"test\"\r\n",
                        b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\"}]}".to_vec(),
                        "application/json",
                    )
            } else if path == "/v2/" {
                ("200 OK", "", b"{}".to_vec(), "application/json")
            } else if let Some((body, ctype)) = routes.get(&path) {
                ("200 OK", "", body.clone(), ctype)
            } else {
                (
                        "404 Not Found",
                        "",
                        b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"manifest unknown\"}]}".to_vec(),
                        "application/json",
                    )
            };
            let head = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
            let _ = conn.write_all(head.as_bytes());
            if method != "HEAD" {
                let _ = conn.write_all(&body);
            }
            let _ = conn.flush();
            let mut rest = Vec::new();
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_millis(10)));
            let _ = reader.read_to_end(&mut rest);
        }
    });
    (host, id)
}

async fn pull(svc: &ImageService, image: &str, auth: Option<AuthConfig>) -> Result<String, Status> {
    svc.pull_image(Request::new(PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    }))
    .await
    .map(|r| r.into_inner().image_ref)
}

#[tokio::test]
async fn pull_returns_the_image_id_and_maps_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path());
    let (host, id) = serve_registry("team/app", "v1", false);
    let image = format!("{host}/team/app:v1");
    assert_eq!(pull(&svc, &image, None).await.unwrap(), id);
    let s = status(&svc, &image, false).await.image.unwrap();
    assert_eq!(s.id, id);
    assert_eq!(s.uid, Some(Int64Value { value: 0 }));
    assert_eq!(s.repo_digests.len(), 1, "{:?}", s.repo_digests);
    // The repo digest finds the image, and removing by it removes the image.
    let by_digest = s.repo_digests[0].clone();
    assert_eq!(status(&svc, &by_digest, false).await.image.unwrap().id, id);
    remove(&svc, &by_digest).await.unwrap();
    assert!(list(&svc, None).await.is_empty());

    let err = pull(&svc, &format!("{host}/team/app:v2"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
    let err = pull(&svc, "Not A Reference", None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("image.image"), "{}", err.message());
    let err = pull(&svc, "", None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn pull_sends_auth_config_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(tmp.path());
    let (host, id) = serve_registry("private/app", "v1", true);
    let image = format!("{host}/private/app:v1");
    let err = pull(&svc, &image, None).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "{}",
        err.message()
    );
    let wrong = AuthConfig {
        username: "user".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull(&svc, &image, Some(wrong)).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ),
        "{err:?}"
    );
    let right = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("user:secret"),
        server_address: host.clone(),
        ..Default::default()
    };
    assert_eq!(pull(&svc, &image, Some(right)).await.unwrap(), id);
}
