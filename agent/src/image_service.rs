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
mod tests;
