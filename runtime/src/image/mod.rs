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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use archive::{ArchiveIndex, ImagePlan, LayerSource};
use reference::Reference;
use unpack::{Compression, LayerOps, LinuxLayerOps};

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

    /// Import every image in an OCI archive or docker-archive.
    pub fn load_archive(&self, path: &Path) -> Result<Vec<Image>, ImageError> {
        let gc = self.lock("gc.lock", FlockArg::LockShared)?;
        let result = self.load_archive_locked(path);
        drop(gc);
        if result.is_err() {
            // Content stored before the failure is unreferenced: sweep it now if no other
            // load is in flight (they may be about to use it), else the next GC will.
            if let Ok(gc) = self.lock("gc.lock", FlockArg::LockExclusiveNonblock) {
                if let Err(e) = self.sweep() {
                    tracing::warn!(error = %e, "garbage collection after failed load");
                }
                drop(gc);
            }
        }
        result
    }

    fn load_archive_locked(&self, path: &Path) -> Result<Vec<Image>, ImageError> {
        let file = File::open(path).map_err(io_err("open image archive", path))?;
        let mut magic = [0u8; 4];
        let n = read_prefix(&file, &mut magic).map_err(io_err("read image archive", path))?;
        // A compressed archive (`docker save | gzip`) is decompressed once to a temp file so
        // its members can be read by offset.
        let mut decompressed = TempGuard(None);
        let file = if Compression::detect(&magic[..n]) == Compression::None {
            file
        } else {
            let tmp = self.tmp_dir().join(temp_name("archive"));
            decompressed.0 = Some(tmp.clone());
            let mut out = File::create(&tmp).map_err(io_err("create temp archive", &tmp))?;
            let mut reader = unpack::decompress(file).map_err(io_err("decompress", path))?;
            io::copy(&mut reader, &mut out).map_err(io_err("decompress image archive", path))?;
            File::open(&tmp).map_err(io_err("open temp archive", &tmp))?
        };
        let index = ArchiveIndex::open(file, path)?;
        let plans = archive::plan(&index)?;
        let mut records = Vec::new();
        for plan in plans {
            records.push(self.import(&index, plan)?);
        }
        drop(decompressed);
        self.commit(records)
    }

    /// Store the blobs and layers of one image and build its record (not yet visible).
    fn import(&self, index: &ArchiveIndex, plan: ImagePlan) -> Result<ImageRecord, ImageError> {
        let config_digest = plan.config_digest.clone();
        self.store_blob_bytes(&config_digest, &plan.config)?;
        let oci: OciImage =
            serde_json::from_slice(&plan.config).map_err(|source| ImageError::Json {
                what: "image config",
                source,
            })?;
        let diff_ids = oci.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() != plan.layers.len() {
            return Err(ImageError::LayerCountMismatch {
                diff_ids: diff_ids.len(),
                layers: plan.layers.len(),
            });
        }
        let chains = chain_ids(&diff_ids);
        let mut layer_blobs = Vec::new();
        let mut layer_media = Vec::new();
        let mut size = 0;
        for (i, layer) in plan.layers.iter().enumerate() {
            let (digest, len, compression) = self.store_layer_blob(index, layer)?;
            size += len;
            self.ensure_layer(i, &digest, &diff_ids[i], &chains[i])?;
            layer_media.push((digest.clone(), len, compression));
            layer_blobs.push(digest);
        }
        let (manifest_digest, from_registry) = match &plan.manifest {
            Some((digest, bytes)) => {
                self.store_blob_bytes(digest, bytes)?;
                (digest.clone(), true)
            }
            None => {
                // A docker-archive ships no manifest; write one so the image can be exported
                // or pushed like any other.
                let bytes = synthesize_manifest(&config_digest, plan.config.len(), &layer_media);
                let digest = archive::sha256_digest(&bytes);
                self.store_blob_bytes(&digest, &bytes)?;
                (digest, false)
            }
        };
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for name in &plan.names {
            if let Some(t) = name.tag_form() {
                push_unique(&mut repo_tags, t);
            }
            if from_registry {
                push_unique(
                    &mut repo_digests,
                    format!("{}@{manifest_digest}", name.name()),
                );
            }
        }
        Ok(ImageRecord {
            image: Image {
                id: config_digest.clone(),
                repo_tags,
                repo_digests,
                size,
                created: oci.created,
                layers: diff_ids,
            },
            manifest_digest,
            config_digest,
            layer_blobs,
            chain_ids: chains,
        })
    }

    /// Copy a layer blob out of the archive into the content store, verifying it.
    /// Returns its digest, size and compression.
    fn store_layer_blob(
        &self,
        index: &ArchiveIndex,
        layer: &LayerSource,
    ) -> Result<(String, u64, Compression), ImageError> {
        if let Some(digest) = &layer.digest {
            let dest = self.blob_path(digest);
            if let Ok(m) = fs::metadata(&dest) {
                let mut magic = [0u8; 4];
                let f = File::open(&dest).map_err(io_err("open blob", &dest))?;
                let n = read_prefix(&f, &mut magic).map_err(io_err("read blob", &dest))?;
                return Ok((digest.clone(), m.len(), Compression::detect(&magic[..n])));
            }
        }
        let mut reader = index.reader(&layer.member)?;
        let tmp = self.tmp_dir().join(temp_name("blob"));
        let mut guard = TempGuard(Some(tmp.clone()));
        let mut out = File::create(&tmp).map_err(io_err("create temp blob", &tmp))?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut magic = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(io_err("read layer from archive", index.path()))?;
            if n == 0 {
                break;
            }
            if magic.len() < 4 {
                magic.extend_from_slice(&buf[..n.min(4)]);
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(io_err("write temp blob", &tmp))?;
            len += n as u64;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(expected) = &layer.size {
            if *expected != len {
                return Err(ImageError::SizeMismatch {
                    digest: layer.digest.clone().unwrap_or_else(|| actual.clone()),
                    expected: *expected,
                    actual: len,
                });
            }
        }
        if let Some(expected) = &layer.digest {
            if *expected != actual {
                return Err(ImageError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        out.sync_all().map_err(io_err("fsync temp blob", &tmp))?;
        let dest = self.blob_path(&actual);
        fs::rename(&tmp, &dest).map_err(io_err("rename blob into place", &dest))?;
        guard.disarm();
        Ok((actual, len, Compression::detect(&magic)))
    }

    /// Write a small verified blob (config, manifest) unless the store has it already.
    fn store_blob_bytes(&self, digest: &str, data: &[u8]) -> Result<(), ImageError> {
        archive::blob_member(digest)?;
        archive::verify_bytes(digest, None, data)?;
        let dest = self.blob_path(digest);
        if dest.exists() {
            return Ok(());
        }
        write_atomic(&self.tmp_dir(), &dest, data)
    }

    /// Unpack layer `i` into `layers/<chain id>` unless it is there already. Two loaders may
    /// race here: each unpacks to its own temp dir and the loser of the rename drops its copy.
    fn ensure_layer(
        &self,
        i: usize,
        blob_digest: &str,
        diff_id: &str,
        chain_id: &str,
    ) -> Result<(), ImageError> {
        let final_dir = self.layer_path(chain_id);
        if final_dir.join("diff").is_dir() {
            return Ok(());
        }
        let tmp = self.tmp_dir().join(temp_name("layer"));
        let _guard = TempGuard(Some(tmp.clone()));
        let diff = tmp.join("diff");
        fs::create_dir_all(&diff).map_err(io_err("create layer temp dir", &diff))?;
        let blob = self.blob_path(blob_digest);
        let file = File::open(&blob).map_err(io_err("open layer blob", &blob))?;
        let stats = unpack::unpack_layer_with(io::BufReader::new(file), &diff, self.ops.as_ref())?;
        if stats.diff_id != diff_id {
            return Err(ImageError::DiffIdMismatch {
                index: i,
                expected: diff_id.to_string(),
                actual: stats.diff_id,
            });
        }
        tracing::debug!(chain_id, diff_id, entries = stats.entries, "layer unpacked");
        match fs::rename(&tmp, &final_dir) {
            Ok(()) => Ok(()),
            Err(_) if final_dir.join("diff").is_dir() => Ok(()),
            Err(e) => Err(io_err("rename layer into place", &final_dir)(e)),
        }
    }

    /// Make the imported records visible, moving their tags away from older images.
    fn commit(&self, records: Vec<ImageRecord>) -> Result<Vec<Image>, ImageError> {
        let _meta = self.lock("meta.lock", FlockArg::LockExclusive)?;
        let mut existing: HashMap<String, ImageRecord> = self
            .records()?
            .into_iter()
            .map(|r| (r.image.id.clone(), r))
            .collect();
        let mut changed: BTreeSet<String> = BTreeSet::new();
        let mut out_ids = Vec::new();
        for rec in records {
            // The content this record pins must still exist: only a GC could have removed
            // it, and GC waits for loads, so this guards against outside tampering.
            for c in &rec.chain_ids {
                if !self.layer_path(c).join("diff").is_dir() {
                    return Err(ImageError::ContentMissing {
                        id: rec.image.id.clone(),
                        what: format!("layer {c}"),
                    });
                }
            }
            for other in existing.values_mut() {
                if other.image.id == rec.image.id {
                    continue;
                }
                let before = other.image.repo_tags.len();
                other
                    .image
                    .repo_tags
                    .retain(|t| !rec.image.repo_tags.contains(t));
                if other.image.repo_tags.len() != before {
                    changed.insert(other.image.id.clone());
                }
            }
            let merged = match existing.remove(&rec.image.id) {
                Some(mut old) => {
                    for t in rec.image.repo_tags {
                        push_unique(&mut old.image.repo_tags, t);
                    }
                    for d in rec.image.repo_digests {
                        push_unique(&mut old.image.repo_digests, d);
                    }
                    old
                }
                None => rec,
            };
            changed.insert(merged.image.id.clone());
            out_ids.push(merged.image.id.clone());
            existing.insert(merged.image.id.clone(), merged);
        }
        for id in &changed {
            if let Some(rec) = existing.get(id) {
                self.write_record(rec)?;
            }
        }
        Ok(out_ids
            .iter()
            .filter_map(|id| existing.get(id).map(|r| r.image.clone()))
            .collect())
    }

    fn write_record(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        let data = serde_json::to_vec_pretty(rec).map_err(|source| ImageError::Json {
            what: "image record",
            source,
        })?;
        write_atomic(&self.tmp_dir(), &self.record_path(rec.hex()), &data)
    }

    fn records(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("list images", &dir))? {
            let e = e.map_err(io_err("list images", &dir))?;
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let data = match fs::read(&p) {
                Ok(d) => d,
                // Removed between listing and reading.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read image record", &p)(e)),
            };
            let rec: ImageRecord =
                serde_json::from_slice(&data).map_err(|source| ImageError::Json {
                    what: "image record",
                    source,
                })?;
            out.push(rec);
        }
        out.sort_by(|a, b| a.image.id.cmp(&b.image.id));
        Ok(out)
    }

    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        Ok(self.records()?.into_iter().map(|r| r.image).collect())
    }

    pub fn get(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        Ok(self.resolve(reference)?.map(|(r, _)| r.image))
    }

    fn resolve(&self, reference: &str) -> Result<Option<(ImageRecord, Addressed)>, ImageError> {
        let records = self.records()?;
        let is_hex = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let by_prefix = |prefix: &str| -> Result<Option<(ImageRecord, Addressed)>, ImageError> {
            let mut found = records.iter().filter(|r| r.hex().starts_with(prefix));
            match (found.next(), found.next()) {
                (Some(r), None) => Ok(Some((r.clone(), Addressed::Id))),
                (None, _) => Ok(None),
                (Some(_), Some(_)) => Err(ImageError::AmbiguousId(reference.to_string())),
            }
        };
        if let Some(hex) = reference.strip_prefix("sha256:") {
            if hex.len() >= 12 && hex.len() <= 64 && is_hex(hex) {
                return by_prefix(hex);
            }
            return Err(ImageError::InvalidReference {
                reference: reference.to_string(),
                reason: "an image id is sha256: followed by 12 to 64 lowercase hex characters"
                    .into(),
            });
        }
        if reference.len() == 64 && is_hex(reference) {
            return by_prefix(reference);
        }
        let parsed = reference::parse(reference);
        if let Ok(r) = &parsed {
            if let Some(d) = r.digest_form() {
                if let Some(rec) = records.iter().find(|x| x.image.repo_digests.contains(&d)) {
                    return Ok(Some((rec.clone(), Addressed::Digest(r.clone()))));
                }
            } else if let Some(t) = r.tag_form() {
                if let Some(rec) = records.iter().find(|x| x.image.repo_tags.contains(&t)) {
                    return Ok(Some((rec.clone(), Addressed::Tag(t))));
                }
            }
        }
        if reference.len() >= 12 && is_hex(reference) {
            return by_prefix(reference);
        }
        parsed.map(|_| None)
    }

    /// Untag or delete, then collect the content no image uses any more.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let _gc = self.lock("gc.lock", FlockArg::LockExclusive)?;
        {
            let _meta = self.lock("meta.lock", FlockArg::LockExclusive)?;
            let (mut rec, how) = self
                .resolve(reference)?
                .ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
            let delete = match how {
                Addressed::Id => true,
                Addressed::Tag(tag) => {
                    rec.image.repo_tags.retain(|t| *t != tag);
                    let repo = tag.rsplit_once(':').map(|(r, _)| r).unwrap_or(&tag);
                    let repo_still_tagged = rec
                        .image
                        .repo_tags
                        .iter()
                        .any(|t| t.rsplit_once(':').map(|(r, _)| r) == Some(repo));
                    if !repo_still_tagged {
                        let prefix = format!("{repo}@");
                        rec.image.repo_digests.retain(|d| !d.starts_with(&prefix));
                    }
                    rec.image.repo_tags.is_empty()
                }
                Addressed::Digest(r) => {
                    let name = r.name();
                    let prefix = format!("{name}@");
                    rec.image.repo_digests.retain(|d| !d.starts_with(&prefix));
                    rec.image
                        .repo_tags
                        .retain(|t| t.rsplit_once(':').map(|(n, _)| n) != Some(name.as_str()));
                    rec.image.repo_tags.is_empty()
                }
            };
            if delete {
                let p = self.record_path(rec.hex());
                fs::remove_file(&p).map_err(io_err("remove image record", &p))?;
                tracing::info!(image = %rec.image.id, "image removed");
            } else {
                self.write_record(&rec)?;
                tracing::info!(image = %rec.image.id, reference, "image untagged");
            }
        }
        self.sweep()
    }

    /// Delete blobs, layers and temp files no image record references. The caller holds the
    /// GC lock exclusively, so no load is in flight.
    fn sweep(&self) -> Result<(), ImageError> {
        let _meta = self.lock("meta.lock", FlockArg::LockExclusive)?;
        let records = self.records()?;
        let mut blobs: BTreeSet<String> = BTreeSet::new();
        let mut layers: BTreeSet<String> = BTreeSet::new();
        for r in &records {
            blobs.insert(id_hex(&r.manifest_digest).to_string());
            blobs.insert(id_hex(&r.config_digest).to_string());
            blobs.extend(r.layer_blobs.iter().map(|d| id_hex(d).to_string()));
            layers.extend(r.chain_ids.iter().map(|d| id_hex(d).to_string()));
        }
        let tmp = self.tmp_dir();
        let sweep_dir = |dir: &Path, keep: &BTreeSet<String>| -> Result<(), ImageError> {
            for e in fs::read_dir(dir).map_err(io_err("list store directory", dir))? {
                let e = e.map_err(io_err("list store directory", dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                // Rename first so a half-deleted layer is never visible under its chain id.
                let doomed = tmp.join(temp_name("gc"));
                fs::rename(e.path(), &doomed).map_err(io_err("move to trash", &e.path()))?;
                unpack::remove_tree(&doomed).map_err(io_err("remove unused content", &doomed))?;
                tracing::debug!(name, "unused content removed");
            }
            Ok(())
        };
        sweep_dir(&self.blobs_dir(), &blobs)?;
        sweep_dir(&self.root.join("layers"), &layers)?;
        sweep_dir(&tmp, &BTreeSet::new())?;
        // Per-blob download locks: no pull is in flight, so nobody waits on them.
        let locks = self.root.join("locks");
        for e in fs::read_dir(&locks).map_err(io_err("list store directory", &locks))? {
            let e = e.map_err(io_err("list store directory", &locks))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("blob-") && name.ends_with(".lock") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Remove images that have neither a tag nor a repo digest, except those in `keep`
    /// (image ids in use), then collect unreferenced blobs and layers. Returns the removed ids.
    pub fn prune(&self, keep: &[String]) -> Result<Vec<String>, ImageError> {
        let _gc = self.lock("gc.lock", FlockArg::LockExclusive)?;
        let mut removed = Vec::new();
        {
            let _meta = self.lock("meta.lock", FlockArg::LockExclusive)?;
            for rec in self.records()? {
                if !rec.image.repo_tags.is_empty()
                    || !rec.image.repo_digests.is_empty()
                    || keep.contains(&rec.image.id)
                {
                    continue;
                }
                let p = self.record_path(rec.hex());
                fs::remove_file(&p).map_err(io_err("remove image record", &p))?;
                tracing::info!(image = %rec.image.id, "untagged image pruned");
                removed.push(rec.image.id);
            }
        }
        self.sweep()?;
        Ok(removed)
    }

    /// The image's whole OCI config document, for `podrun image inspect`.
    pub fn config_document(&self, image: &Image) -> Result<serde_json::Value, ImageError> {
        let path = self.blob_path(&image.id);
        let data = fs::read(&path).map_err(io_err("read image config", &path))?;
        serde_json::from_slice(&data).map_err(|source| ImageError::Json {
            what: "image config",
            source,
        })
    }

    pub fn config(&self, image: &Image) -> Result<ImageConfig, ImageError> {
        let path = self.blob_path(&image.id);
        let data = fs::read(&path).map_err(io_err("read image config", &path))?;
        let oci: OciImage = serde_json::from_slice(&data).map_err(|source| ImageError::Json {
            what: "image config",
            source,
        })?;
        let c = oci.config.unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|s| !s.is_empty()),
            user: c.user.filter(|s| !s.is_empty()),
            stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
            labels: c.labels.unwrap_or_default(),
            exposed_ports: c
                .exposed_ports
                .map(|m| m.into_keys().collect())
                .unwrap_or_default(),
        })
    }

    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        chain_ids(&image.layers)
            .iter()
            .map(|c| {
                let dir = self.layer_path(c).join("diff");
                if dir.is_dir() {
                    Ok(dir)
                } else {
                    Err(ImageError::ContentMissing {
                        id: image.id.clone(),
                        what: format!("unpacked layer {c}"),
                    })
                }
            })
            .collect()
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
