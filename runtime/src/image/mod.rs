//! The local image store: content-addressed blobs, layers unpacked once per chain ID, and
//! image records with their tags. It pulls from registries (`pull`, `registry`, `hosts`),
//! imports and exports OCI image archives and docker-archives (`archive`, `save`), and
//! hands the rest of podrun an image's config and its layer directories (overlay lowerdirs).
//!
//! Layout under the store root:
//! ```text
//! content/blobs/sha256/<hex>   manifests, configs and layer blobs, verified before renaming in
//! layers/<chainid-hex>/diff    one unpacked layer, usable as an overlayfs lowerdir on its own
//! images/<id-hex>.json         one image record: tags, repo digests, blobs and chain ids used
//! tmp/                         temp files and dirs, renamed into place only once complete
//! locks/gc.lock                shared by loads, exclusive for garbage collection
//! locks/meta.lock              exclusive around every change of image records
//! locks/blob-<hex>.lock        held while one pull downloads that blob; others wait on it
//! ```
//! Everything becomes visible by rename, so readers need no lock and a crash leaves at most
//! unreferenced content, which the next garbage collection removes.

pub mod archive;
pub mod hosts;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod save;
pub mod unpack;

#[cfg(test)]
mod fake_registry;
#[cfg(test)]
mod pull_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use reference::Reference;
use unpack::{Compression, LayerOps, LinuxLayerOps};

mod gc;
mod load;
mod records;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("image id prefix {0:?} matches more than one image")]
    AmbiguousId(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("image archive {path}: {reason}")]
    ArchiveFormat { path: PathBuf, reason: String },
    #[error("image archive {archive}: member {member} is missing")]
    MissingBlob { archive: PathBuf, member: String },
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("layer {index} diff id mismatch: config says {expected}, layer has {actual}")]
    DiffIdMismatch {
        index: usize,
        expected: String,
        actual: String,
    },
    #[error("image config has {diff_ids} diff ids but the manifest lists {layers} layers")]
    LayerCountMismatch { diff_ids: usize, layers: usize },
    #[error("unsafe layer entry {path}: {reason}")]
    UnsafeEntry { path: PathBuf, reason: String },
    #[error("lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("image {id}: {what} is missing from the store")]
    ContentMissing { id: String, what: String },
    /// A pull failed: which image, at which step, and why.
    #[error("pull {reference}: {step}: {cause}")]
    Pull {
        reference: String,
        step: String,
        cause: Box<ImageError>,
    },
    #[error("registry hosts config {path}: {reason}")]
    HostsConfig { path: PathBuf, reason: String },
    #[error("registry auth config {path}: {reason}")]
    AuthConfig { path: PathBuf, reason: String },
    #[error("GET {url}: HTTP {status}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
    RegistryHttp {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("connect to {url}: {reason}")]
    RegistryConnect { url: String, reason: String },
    #[error("read {url}: failed after {received} bytes: {reason}")]
    RegistryRead {
        url: String,
        received: u64,
        reason: String,
    },
    #[error("{url}: no data received for {seconds}s (stall timeout)")]
    Stalled { url: String, seconds: f64 },
    #[error("authenticate at {url}: {reason}")]
    RegistryAuth { url: String, reason: String },
    #[error("TLS setup for {endpoint}: {reason}")]
    Tls { endpoint: String, reason: String },
    #[error("no manifest for platform {platform} (the image index has: {available})")]
    NoMatchingPlatform { platform: String, available: String },
    #[error("unsupported manifest type {0:?}")]
    UnsupportedManifest(String),
    #[error("image {0:?} is not present locally and imagePullPolicy is Never")]
    NeverPull(String),
    #[error("invalid imagePullPolicy {0:?}: expected Always, IfNotPresent or Never")]
    InvalidPullPolicy(String),
    #[error("invalid platform {platform:?}: {reason}")]
    InvalidPlatform { platform: String, reason: String },
}

/// An image in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// `sha256:<config digest hex>`.
    pub id: String,
    /// Normalized, e.g. `docker.io/library/nginx:latest`.
    pub repo_tags: Vec<String>,
    /// `registry/repository@sha256:<manifest digest>`.
    pub repo_digests: Vec<String>,
    /// Sum of the compressed layer sizes.
    pub size: u64,
    pub created: Option<String>,
    /// Diff ids, bottom-most layer first.
    pub layers: Vec<String>,
}

/// The parts of an OCI image config that container creation needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
}

/// What the store keeps per image: the public view plus the content it pins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ImageRecord {
    image: Image,
    manifest_digest: String,
    config_digest: String,
    layer_blobs: Vec<String>,
    chain_ids: Vec<String>,
}

impl ImageRecord {
    fn hex(&self) -> &str {
        id_hex(&self.image.id)
    }
}

fn id_hex(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

/// The OCI config JSON, as far as podrun reads it. Docker writes `null` for empty lists.
#[derive(Debug, Default, Deserialize)]
struct OciImage {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: Option<OciConfig>,
    #[serde(default)]
    rootfs: Option<OciRootfs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OciConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct OciRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => archive::sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn temp_name(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{kind}-{}-{}-{nanos}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a temp file or tree on drop unless disarmed.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = unpack::remove_tree(&p) {
                tracing::warn!(path = %p.display(), error = %e, "could not remove temp path");
            }
        }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { op, path, source }
}

/// How a reference addressed an image, which decides what `remove` does.
enum Addressed {
    Id,
    Tag(String),
    Digest(Reference),
}

/// The local image store. Cheap to clone; all state is on disk.
#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
    ops: Arc<dyn LayerOps>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish()
    }
}

impl ImageStore {
    /// Open (creating if needed) the store under `root`, with the real privileged operations.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ImageError> {
        Self::open_with_ops(root, Arc::new(LinuxLayerOps::new()))
    }

    /// Open the store with the given privileged operations (a fake in tests).
    pub fn open_with_ops(
        root: impl Into<PathBuf>,
        ops: Arc<dyn LayerOps>,
    ) -> Result<Self, ImageError> {
        let store = ImageStore {
            root: root.into(),
            ops,
        };
        for dir in [
            store.blobs_dir(),
            store.root.join("layers"),
            store.root.join("images"),
            store.tmp_dir(),
            store.root.join("locks"),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create store directory", &dir))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("content/blobs/sha256")
    }
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs_dir().join(id_hex(digest))
    }
    fn layer_path(&self, chain_id: &str) -> PathBuf {
        self.root.join("layers").join(id_hex(chain_id))
    }
    fn record_path(&self, hex: &str) -> PathBuf {
        self.root.join("images").join(format!("{hex}.json"))
    }

    fn lock(&self, name: &str, arg: FlockArg) -> Result<Flock<File>, ImageError> {
        let path = self.root.join("locks").join(name);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        Flock::lock(file, arg).map_err(|(_, source)| ImageError::Lock { path, source })
    }
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

fn read_prefix(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        let k = file.read_at(&mut buf[n..], n as u64)?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// Temp file in `tmp_dir`, fsync, rename over `dest`.
fn write_atomic(tmp_dir: &Path, dest: &Path, data: &[u8]) -> Result<(), ImageError> {
    let tmp = tmp_dir.join(temp_name("write"));
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut f = File::create(&tmp).map_err(io_err("create temp file", &tmp))?;
    f.write_all(data).map_err(io_err("write temp file", &tmp))?;
    f.sync_all().map_err(io_err("fsync temp file", &tmp))?;
    fs::rename(&tmp, dest).map_err(io_err("rename into place", dest))?;
    guard.disarm();
    Ok(())
}

fn synthesize_manifest(
    config_digest: &str,
    config_size: usize,
    layers: &[(String, u64, Compression)],
) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(digest, size, c)| {
            let media = match c {
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
            };
            serde_json::json!({"mediaType": media, "digest": digest, "size": size})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": archive::MEDIA_OCI_MANIFEST,
        "config": {"mediaType": archive::MEDIA_OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    serde_json::to_vec(&manifest).unwrap_or_default()
}
