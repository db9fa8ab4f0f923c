//! The CRI `ImageService`: list, inspect, pull and remove images in podrun's image store,
//! and report the image and container filesystems' usage. It behaves as containerd's CRI
//! plugin does: an image that is not there is no error for `ImageStatus` (the image is
//! unset) nor for `RemoveImage` (nothing to do), `PullImage` answers with the image id,
//! and `RemoveImage` drops every name of the image it resolves to.
//!
//! The store is synchronous and does file and network I/O, so every call runs on a
//! blocking thread.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use podrun_cri_proto::v1::{
    image_service_server, AuthConfig, FilesystemIdentifier, FilesystemUsage, Image,
    ImageFsInfoRequest, ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse,
    Int64Value, ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse,
    RemoveImageRequest, RemoveImageResponse, UInt64Value,
};
use podrun_runtime::image::hosts::Auth;
use podrun_runtime::image::pull::PullOptions;
use podrun_runtime::image::{self as store, reference, ImageError, ImageStore};
use tonic::{Request, Response, Status};

/// The CRI image service over one image store.
#[derive(Clone)]
pub struct ImageService {
    images: Arc<ImageStore>,
    /// containerd-style `certs.d` directory of per-registry settings.
    hosts_dir: PathBuf,
    /// podrun's data root; container writable layers live in `<root>/containers`.
    root: PathBuf,
    /// Ids of the images containers are built on: their layers must stay.
    in_use: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
}

impl ImageService {
    /// Report the images containers use (RemoveImage refuses those).
    pub fn with_in_use(mut self, f: Arc<dyn Fn() -> Vec<String> + Send + Sync>) -> Self {
        self.in_use = f;
        self
    }

    pub fn new(images: Arc<ImageStore>, hosts_dir: PathBuf, root: PathBuf) -> Self {
        ImageService {
            in_use: Arc::new(Vec::new),
            images,
            hosts_dir,
            root,
        }
    }

    /// Run a store call on a blocking thread.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&ImageStore) -> Result<T, Status> + Send + 'static,
    {
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || f(&images))
            .await
            .map_err(|e| Status::internal(format!("image store task failed: {e}")))?
    }
}

/// The image a request names, or InvalidArgument naming the missing field.
fn requested_image(spec: Option<&ImageSpec>, field: &str) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()).filter(|s| !s.is_empty()) {
        Some(image) => Ok(image.to_string()),
        None => Err(Status::invalid_argument(format!("{field} must be set"))),
    }
}

/// Find an image by tag, digest or (prefix of its) id. A name that cannot be an image
/// reference finds nothing, as in containerd, rather than failing the call.
fn lookup(images: &ImageStore, name: &str) -> Result<Option<store::Image>, Status> {
    match images.get(name) {
        Ok(found) => Ok(found),
        Err(ImageError::InvalidReference { .. }) => Ok(None),
        Err(e) => Err(status_of(&e, "image")),
    }
}

/// `User` of the image config as CRI wants it: a numeric user (before any `:group`)
/// is a uid, anything else a user name.
fn user_of(user: Option<&str>) -> (Option<Int64Value>, String) {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return (None, String::new());
    };
    let name = user.split(':').next().unwrap_or_default();
    match name.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

fn to_cri(images: &ImageStore, image: &store::Image) -> Result<Image, Status> {
    let config = images.config(image).map_err(|e| status_of(&e, "image"))?;
    let (uid, username) = user_of(config.user.as_deref());
    Ok(Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    })
}

/// Map a store error to a gRPC status. `field` names the request field that carried the
/// reference, for InvalidArgument.
fn status_of(e: &ImageError, field: &str) -> Status {
    let root = match e {
        ImageError::Pull { cause, .. } => cause.as_ref(),
        other => other,
    };
    let msg = e.to_string();
    match root {
        ImageError::InvalidReference { .. }
        | ImageError::InvalidDigest { .. }
        | ImageError::AmbiguousId(_)
        | ImageError::InvalidPlatform { .. } => Status::invalid_argument(format!("{field}: {msg}")),
        ImageError::NotFound(_) | ImageError::NoMatchingPlatform { .. } => Status::not_found(msg),
        ImageError::RegistryHttp { status: 404, .. } => Status::not_found(msg),
        ImageError::RegistryHttp { status: 401, .. } | ImageError::RegistryAuth { .. } => {
            Status::unauthenticated(msg)
        }
        ImageError::RegistryHttp { status: 403, .. } => Status::permission_denied(msg),
        ImageError::RegistryConnect { .. } | ImageError::Stalled { .. } => Status::unavailable(msg),
        ImageError::HostsConfig { .. } | ImageError::AuthConfig { .. } => {
            Status::failed_precondition(msg)
        }
        _ => Status::unknown(msg),
    }
}

/// The host part of CRI's `server_address`, which may be a bare host, a host:port or a
/// URL such as `https://index.docker.io/v1/`.
fn server_host(address: &str) -> &str {
    let rest = address.split_once("://").map(|(_, r)| r).unwrap_or(address);
    rest.split('/').next().unwrap_or_default()
}

/// Docker Hub goes by several host names; they are one registry for credentials.
fn same_registry(a: &str, b: &str) -> bool {
    let canon = |h: &str| match h {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            reference::DEFAULT_REGISTRY.to_string()
        }
        other => other.to_ascii_lowercase(),
    };
    canon(a) == canon(b)
}

/// Credentials from CRI's AuthConfig for an image in `registry`, in containerd's order:
/// username/password, then identity token, then `auth` (base64 of user:password). A
/// registry token, which containerd leaves unsupported, is sent as a bearer token. Given
/// a server_address for another registry, the credentials are not sent at all.
fn auth_of(auth: &AuthConfig, registry: &str) -> Result<Option<Auth>, Status> {
    if !auth.server_address.is_empty()
        && !same_registry(server_host(&auth.server_address), registry)
    {
        tracing::debug!(
            server_address = %auth.server_address,
            registry,
            "pull credentials are for another registry; not sent"
        );
        return Ok(None);
    }
    if !auth.username.is_empty() {
        return Ok(Some(Auth::Basic {
            username: auth.username.clone(),
            password: auth.password.clone(),
        }));
    }
    if !auth.identity_token.is_empty() {
        return Ok(Some(Auth::IdentityToken(auth.identity_token.clone())));
    }
    if !auth.auth.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .map_err(|e| Status::invalid_argument(format!("auth.auth is not base64: {e}")))?;
        let text = String::from_utf8(raw)
            .map_err(|_| Status::invalid_argument("auth.auth is not UTF-8"))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth.auth is not base64(user:password)"))?;
        return Ok(Some(Auth::Basic {
            username: username.to_string(),
            password: password.trim_end_matches('\0').to_string(),
        }));
    }
    if !auth.registry_token.is_empty() {
        return Ok(Some(Auth::RegistryToken(auth.registry_token.clone())));
    }
    Ok(None)
}

/// Bytes (allocated blocks) and inodes used below `dirs`, each inode counted once and
/// mount points below them not entered (a running container's rootfs is an overlay
/// mount over layers counted elsewhere).
fn disk_usage(dirs: &[PathBuf]) -> (u64, u64) {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    for top in dirs {
        let Ok(meta) = std::fs::symlink_metadata(top) else {
            continue;
        };
        let dev = meta.dev();
        let mut stack = vec![top.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(m) = entry.metadata() else { continue };
                if m.dev() != dev {
                    continue;
                }
                if seen.insert((m.dev(), m.ino())) {
                    bytes = bytes.saturating_add(m.blocks().saturating_mul(512));
                    inodes += 1;
                }
                if m.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
    }
    (bytes, inodes)
}

fn fs_usage(mountpoint: &Path, dirs: &[PathBuf], timestamp: i64) -> FilesystemUsage {
    let (bytes, inodes) = disk_usage(dirs);
    FilesystemUsage {
        timestamp,
        fs_id: Some(FilesystemIdentifier {
            mountpoint: mountpoint.display().to_string(),
        }),
        used_bytes: Some(UInt64Value { value: bytes }),
        inodes_used: Some(UInt64Value { value: inodes }),
    }
}

#[tonic::async_trait]
impl image_service_server::ImageService for ImageService {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = self
            .blocking(move |images| {
                let listed = match &filter {
                    Some(name) => lookup(images, name)?.into_iter().collect(),
                    None => images.list().map_err(|e| status_of(&e, "filter.image"))?,
                };
                let mut out = Vec::with_capacity(listed.len());
                for image in &listed {
                    match to_cri(images, image) {
                        Ok(i) => out.push(i),
                        // Removed while listing: leave it out.
                        Err(s) if s.code() == tonic::Code::Unknown => {
                            tracing::debug!(image = %image.id, error = %s.message(), "image skipped in list");
                        }
                        Err(s) => return Err(s),
                    }
                }
                Ok(out)
            })
            .await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let name = requested_image(req.image.as_ref(), "image.image")?;
        let verbose = req.verbose;
        let resp = self
            .blocking(move |images| {
                let Some(image) = lookup(images, &name)? else {
                    return Ok(ImageStatusResponse::default());
                };
                let cri = to_cri(images, &image)?;
                let mut info = HashMap::new();
                if verbose {
                    let spec = images
                        .config_document(&image)
                        .map_err(|e| status_of(&e, "image"))?;
                    let chain_id = store::chain_ids(&image.layers).pop().unwrap_or_default();
                    let doc = serde_json::json!({ "chainID": chain_id, "imageSpec": spec });
                    info.insert("info".to_string(), doc.to_string());
                }
                Ok(ImageStatusResponse {
                    image: Some(cri),
                    info,
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let req = request.into_inner();
        let name = requested_image(req.image.as_ref(), "image.image")?;
        let parsed = reference::parse(&name).map_err(|e| status_of(&e, "image.image"))?;
        let auth = match &req.auth {
            Some(a) => auth_of(a, &parsed.registry)?,
            None => None,
        };
        let hosts_dir = self.hosts_dir.clone();
        let image = self
            .blocking(move |images| {
                let opts = PullOptions {
                    auth,
                    hosts_dir,
                    ..PullOptions::default()
                };
                images
                    .pull(&name, &opts)
                    .map_err(|e| status_of(&e, "image.image"))
            })
            .await?;
        tracing::info!(reference = %parsed, image = %image.id, "image pulled over CRI");
        Ok(Response::new(PullImageResponse {
            image_ref: image.id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let name = requested_image(request.get_ref().image.as_ref(), "image.image")?;
        let in_use = self.in_use.clone();
        self.blocking(move |images| {
            let Some(image) = lookup(images, &name)? else {
                return Ok(());
            };
            // A container's overlay stands on the image's layers: removing them would
            // pull the floor from under it.
            if in_use().contains(&image.id) {
                return Err(Status::failed_precondition(format!(
                    "image {name:?} ({}) is used by a container; remove the container first",
                    image.id
                )));
            }
            // By id, so every tag and digest of the image goes, as in containerd.
            match images.remove(&image.id) {
                Ok(()) | Err(ImageError::NotFound(_)) => {
                    tracing::info!(image = %image.id, reference = %name, "image removed over CRI");
                    Ok(())
                }
                Err(e) => Err(status_of(&e, "image.image")),
            }
        })
        .await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let store_root = self.images.root().to_path_buf();
        let containers = self.root.join("containers");
        let resp = tokio::task::spawn_blocking(move || {
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            let image_dirs = [store_root.join("content"), store_root.join("layers")];
            ImageFsInfoResponse {
                image_filesystems: vec![fs_usage(&store_root, &image_dirs, timestamp)],
                container_filesystems: vec![fs_usage(
                    &containers,
                    std::slice::from_ref(&containers),
                    timestamp,
                )],
            }
        })
        .await
        .map_err(|e| Status::internal(format!("image filesystem usage task failed: {e}")))?;
        Ok(Response::new(resp))
    }
}

#[cfg(test)]
mod tests {
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

    async fn pull(
        svc: &ImageService,
        image: &str,
        auth: Option<AuthConfig>,
    ) -> Result<String, Status> {
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
}
