//! Pulling images from a registry into the store, and Kubernetes' `imagePullPolicy`.
//!
//! ```text
//! parse reference ─▶ endpoints (hosts.toml) + credentials (config.json, AuthConfig)
//!   ─▶ GET manifest by tag/digest ─(index/list)─▶ pick platform ─▶ GET manifest by digest
//!   ─▶ GET config ─▶ GET layers (in parallel, one download per digest across processes)
//!   ─▶ unpack each layer once per chain id ─▶ store manifest ─▶ commit the image record
//! ```
//! Blobs are verified against digest and size before they are renamed into the store, and
//! the image record is written last, so a failed pull leaves no visible image; the content
//! it did store is unreferenced and swept right away when no other pull or load is running.

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::FlockArg;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::archive::{self, Descriptor, ManifestJson, MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX};
use super::hosts::{self, Auth, Credentials};
use super::reference::{self, Reference};
use super::registry::{self, RegistryClient, RetryPolicy};
use super::{
    chain_ids, id_hex, io_err, temp_name, Image, ImageError, ImageRecord, ImageStore, OciImage,
    TempGuard,
};

/// Default directory of per-registry `hosts.toml` files.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/podrun/certs.d";

/// `os/architecture[/variant]`, as in `--platform linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// This host's platform, in OCI's names.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        PlatformSpec {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    fn matches(&self, p: &IndexPlatform) -> bool {
        if p.os != self.os || p.architecture != self.architecture {
            return false;
        }
        // arm64 images usually say v8 or nothing; both mean the same.
        let norm = |v: Option<&str>| match (self.architecture.as_str(), v) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        match &self.variant {
            None => true,
            Some(v) => norm(Some(v)) == norm(p.variant.as_deref()),
        }
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for PlatformSpec {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        let bad = |reason: &str| ImageError::InvalidPlatform {
            platform: s.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("expected os/architecture[/variant]"));
        }
        match parts.as_slice() {
            [os, arch] => Ok(PlatformSpec {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] => Ok(PlatformSpec {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(bad("expected os/architecture[/variant]")),
        }
    }
}

/// What a pull reports while it runs; the CLI draws progress lines from these.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// The reference resolved to this manifest (the platform's, for an index).
    Resolved {
        reference: String,
        digest: String,
        layers: usize,
    },
    /// A layer blob was already in the store.
    LayerExists {
        digest: String,
        size: u64,
    },
    LayerStarted {
        digest: String,
        size: u64,
    },
    LayerProgress {
        digest: String,
        downloaded: u64,
        size: u64,
    },
    LayerDownloaded {
        digest: String,
        size: u64,
    },
    /// A download failed part way and starts over.
    LayerRetrying {
        digest: String,
        attempt: u32,
        error: String,
    },
    LayerUnpacked {
        digest: String,
    },
}

/// A progress callback; called from the download threads.
pub type ProgressFn<'a> = &'a (dyn Fn(&ProgressEvent) + Sync);

/// How to pull.
#[derive(Clone)]
pub struct PullOptions<'a> {
    /// Which manifest of an image index to take. Default: this host's.
    pub platform: PlatformSpec,
    /// Credentials for the image's registry (CRI AuthConfig, `--username`); mirrors never get them.
    pub auth: Option<Auth>,
    /// Docker config.json with `auths`; None means `$DOCKER_CONFIG` or `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// containerd-style `certs.d` directory.
    pub hosts_dir: PathBuf,
    pub progress: Option<ProgressFn<'a>>,
    /// A request that receives nothing for this long fails.
    pub stall_timeout: Duration,
    /// Further attempts for 5xx, 429, connection errors and interrupted downloads.
    pub retries: u32,
    /// Delay before the first retry, doubled each time.
    pub retry_backoff: Duration,
    /// Layers downloaded at once.
    pub max_concurrent_downloads: usize,
}

impl Default for PullOptions<'_> {
    fn default() -> Self {
        let policy = RetryPolicy::default();
        PullOptions {
            platform: PlatformSpec::host(),
            auth: None,
            docker_config: None,
            hosts_dir: PathBuf::from(DEFAULT_HOSTS_DIR),
            progress: None,
            stall_timeout: policy.stall_timeout,
            retries: policy.retries,
            retry_backoff: policy.backoff,
            max_concurrent_downloads: 3,
        }
    }
}

impl std::fmt::Debug for PullOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("platform", &self.platform)
            .field("auth", &self.auth)
            .field("hosts_dir", &self.hosts_dir)
            .field("stall_timeout", &self.stall_timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

impl PullOptions<'_> {
    fn emit(&self, e: ProgressEvent) {
        if let Some(p) = self.progress {
            p(&e);
        }
    }
}

/// Kubernetes' `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The policy a pod spec gives, or Kubernetes' default for the image when it gives none
    /// (`:latest` or no tag → Always, else IfNotPresent).
    pub fn for_image(policy: &str, image: &str) -> Result<Self, ImageError> {
        let p = if policy.is_empty() {
            crate::spec::default_image_pull_policy(image)
        } else {
            policy
        };
        match p {
            "Always" => Ok(PullPolicy::Always),
            "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "Never" => Ok(PullPolicy::Never),
            other => Err(ImageError::InvalidPullPolicy(other.to_string())),
        }
    }
}

#[derive(Debug, Deserialize)]
struct IndexPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IndexEntry {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<IndexPlatform>,
}

#[derive(Debug, Deserialize)]
struct IndexDoc {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

/// Just enough of any manifest to tell its kind when Content-Type is missing or generic.
#[derive(Debug, Deserialize)]
struct Sniff {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

enum Kind {
    Index,
    Manifest,
}

fn manifest_kind(f: &registry::Fetched) -> Result<Kind, ImageError> {
    let sniff: Sniff = serde_json::from_slice(&f.bytes).map_err(|source| ImageError::Json {
        what: "manifest",
        source,
    })?;
    let declared = sniff
        .media_type
        .clone()
        .or_else(|| f.content_type.clone())
        .unwrap_or_default();
    match declared.as_str() {
        MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => return Ok(Kind::Index),
        archive::MEDIA_OCI_MANIFEST | registry::MEDIA_DOCKER_MANIFEST => return Ok(Kind::Manifest),
        _ => {}
    }
    if sniff.schema_version == Some(1) || declared.contains("manifest.v1") {
        return Err(ImageError::UnsupportedManifest(format!(
            "{declared} (Docker schema 1 is deprecated; re-push the image with a current client)"
        )));
    }
    if sniff.manifests.is_some() {
        Ok(Kind::Index)
    } else if sniff.config.is_some() {
        Ok(Kind::Manifest)
    } else {
        Err(ImageError::UnsupportedManifest(declared))
    }
}

/// Tie a pull step to its error.
trait Step<T> {
    fn step(self, step: impl Into<String>) -> Result<T, (String, ImageError)>;
}

impl<T> Step<T> for Result<T, ImageError> {
    fn step(self, step: impl Into<String>) -> Result<T, (String, ImageError)> {
        self.map_err(|e| (step.into(), e))
    }
}

fn short(digest: &str) -> &str {
    let hex = id_hex(digest);
    &hex[..hex.len().min(12)]
}

impl ImageStore {
    /// Pull `reference` from its registry (or a mirror) into the store.
    pub fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Image, ImageError> {
        let r = reference::parse(reference)?;
        // A pull or load killed part way leaves temp files behind: clear them while no
        // other pull or load is running (one that is would hold the GC lock shared).
        if let Ok(gc) = self.lock("gc.lock", FlockArg::LockExclusiveNonblock) {
            self.clear_tmp();
            drop(gc);
        }
        let gc = self.lock("gc.lock", FlockArg::LockShared)?;
        let started = Instant::now();
        let result = self.pull_locked(&r, opts);
        drop(gc);
        match result {
            Ok(img) => {
                tracing::info!(reference = %r, image = %img.id, elapsed_ms = started.elapsed().as_millis() as u64, "image pulled");
                Ok(img)
            }
            Err((step, cause)) => {
                // What this pull stored is unreferenced; sweep it unless another pull or load
                // holds the GC lock (it may be about to use the same content).
                if let Ok(gc) = self.lock("gc.lock", FlockArg::LockExclusiveNonblock) {
                    if let Err(e) = self.sweep() {
                        tracing::warn!(error = %e, "garbage collection after failed pull");
                    }
                    drop(gc);
                }
                Err(ImageError::Pull {
                    reference: r.to_string(),
                    step,
                    cause: Box::new(cause),
                })
            }
        }
    }

    fn clear_tmp(&self) {
        let tmp = self.tmp_dir();
        for e in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            if let Err(err) = super::unpack::remove_tree(&e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "could not remove stale temp path");
            }
        }
    }

    /// Apply a Kubernetes `imagePullPolicy` (empty: the default for the image).
    pub fn ensure(
        &self,
        reference: &str,
        pull_policy: &str,
        opts: &PullOptions,
    ) -> Result<Image, ImageError> {
        match PullPolicy::for_image(pull_policy, reference)? {
            PullPolicy::Always => self.pull(reference, opts),
            PullPolicy::IfNotPresent => match self.get(reference)? {
                Some(img) => Ok(img),
                None => self.pull(reference, opts),
            },
            PullPolicy::Never => self
                .get(reference)?
                .ok_or_else(|| ImageError::NeverPull(reference.to_string())),
        }
    }

    fn pull_locked(
        &self,
        r: &Reference,
        opts: &PullOptions,
    ) -> Result<Image, (String, ImageError)> {
        let endpoints = hosts::endpoints(&opts.hosts_dir, &r.registry).step("read hosts config")?;
        let creds = Credentials::load(opts.docker_config.as_deref()).step("read credentials")?;
        let client = RegistryClient::new(
            &r.registry,
            &r.repository,
            endpoints,
            opts.auth.clone(),
            &creds,
            RetryPolicy {
                retries: opts.retries,
                backoff: opts.retry_backoff,
                stall_timeout: opts.stall_timeout,
            },
        )
        .step("configure registry client")?;
        tracing::debug!(reference = %r, client = ?client, "pulling");

        // Resolve the reference to the top-level document (index or manifest).
        let top_ref = r
            .digest
            .clone()
            .or_else(|| r.tag.clone())
            .unwrap_or_else(|| reference::DEFAULT_TAG.to_string());
        let top = client.manifest(&top_ref).step("fetch manifest")?;
        let top_digest = archive::sha256_digest(&top.bytes);
        if let Some(want) = &r.digest {
            archive::verify_bytes(want, None, &top.bytes).step("verify manifest")?;
        } else if let Some(h) = &top.digest_header {
            if h.starts_with("sha256:") && *h != top_digest {
                return Err(ImageError::DigestMismatch {
                    expected: h.clone(),
                    actual: top_digest,
                })
                .step("verify manifest");
            }
        }

        let (manifest_digest, manifest_bytes) = match manifest_kind(&top).step("read manifest")? {
            Kind::Manifest => (top_digest.clone(), top.bytes.clone()),
            Kind::Index => {
                let index: IndexDoc = serde_json::from_slice(&top.bytes)
                    .map_err(|source| ImageError::Json {
                        what: "image index",
                        source,
                    })
                    .step("read image index")?;
                let chosen = select_platform(&index, &opts.platform).step("select platform")?;
                let m = client
                    .manifest(&chosen.digest)
                    .step(format!("fetch manifest {}", short(&chosen.digest)))?;
                archive::verify_bytes(&chosen.digest, Some(chosen.size), &m.bytes)
                    .step(format!("verify manifest {}", short(&chosen.digest)))?;
                if let Kind::Index = manifest_kind(&m).step("read manifest")? {
                    return Err(ImageError::UnsupportedManifest(
                        "an image index nested in an image index".into(),
                    ))
                    .step("read manifest");
                }
                (chosen.digest.clone(), m.bytes)
            }
        };
        let manifest: ManifestJson = serde_json::from_slice(&manifest_bytes)
            .map_err(|source| ImageError::Json {
                what: "image manifest",
                source,
            })
            .step("read manifest")?;
        opts.emit(ProgressEvent::Resolved {
            reference: r.to_string(),
            digest: manifest_digest.clone(),
            layers: manifest.layers.len(),
        });

        // Config: small, verified in memory.
        let cfg = &manifest.config;
        let config = client
            .blob_bytes(&cfg.digest, cfg.size)
            .and_then(|b| archive::verify_bytes(&cfg.digest, Some(cfg.size), &b).map(|_| b))
            .step("fetch config")?;
        self.store_blob_bytes(&cfg.digest, &config)
            .step("store config")?;
        let oci: OciImage = serde_json::from_slice(&config)
            .map_err(|source| ImageError::Json {
                what: "image config",
                source,
            })
            .step("read config")?;
        let diff_ids = oci.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::LayerCountMismatch {
                diff_ids: diff_ids.len(),
                layers: manifest.layers.len(),
            })
            .step("read config");
        }
        for l in &manifest.layers {
            archive::blob_member(&l.digest).step("read manifest")?;
        }

        self.download_layers(&client, &manifest.layers, opts)?;

        let chains = chain_ids(&diff_ids);
        for (i, l) in manifest.layers.iter().enumerate() {
            self.ensure_layer(i, &l.digest, &diff_ids[i], &chains[i])
                .step(format!("unpack layer {}", short(&l.digest)))?;
            opts.emit(ProgressEvent::LayerUnpacked {
                digest: l.digest.clone(),
            });
        }
        self.store_blob_bytes(&manifest_digest, &manifest_bytes)
            .step("store manifest")?;

        let record = ImageRecord {
            image: Image {
                id: cfg.digest.clone(),
                repo_tags: r.tag_form().into_iter().collect(),
                repo_digests: vec![format!("{}@{top_digest}", r.name())],
                size: manifest.layers.iter().map(|l| l.size).sum(),
                created: oci.created,
                layers: diff_ids,
            },
            manifest_digest,
            config_digest: cfg.digest.clone(),
            layer_blobs: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            chain_ids: chains,
        };
        let mut images = self.commit(vec![record]).step("commit image")?;
        images
            .pop()
            .ok_or_else(|| ImageError::NotFound(r.to_string()))
            .step("commit image")
    }

    /// Download every layer blob not in the store yet, a few at a time.
    fn download_layers(
        &self,
        client: &RegistryClient,
        layers: &[Descriptor],
        opts: &PullOptions,
    ) -> Result<(), (String, ImageError)> {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<(String, ImageError)>> = Mutex::new(None);
        let workers = opts.max_concurrent_downloads.clamp(1, 8).min(layers.len());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(l) = layers.get(i) else { return };
                    if let Err(e) = self.fetch_blob(client, l, opts) {
                        failed.store(true, Ordering::Relaxed);
                        let mut slot = first_error.lock().unwrap();
                        if slot.is_none() {
                            // Foreign (non-distributable) layers normally live at URLs
                            // outside the registry; podrun fetches only from registries.
                            let kind = if l.media_type.contains("foreign")
                                || l.media_type.contains("nondistributable")
                            {
                                "foreign layer"
                            } else {
                                "layer"
                            };
                            *slot = Some((format!("fetch {kind} {}", short(&l.digest)), e));
                        }
                        return;
                    }
                });
            }
        });
        match first_error.into_inner().unwrap() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Make sure blob `desc` is in the store. Concurrent pullers of one digest, in this
    /// process or another, serialize on `locks/blob-<hex>.lock`: the first downloads, the
    /// others wait and then find it present.
    fn fetch_blob(
        &self,
        client: &RegistryClient,
        desc: &Descriptor,
        opts: &PullOptions,
    ) -> Result<(), ImageError> {
        let digest = desc.digest.as_str();
        let dest = self.blob_path(digest);
        let present =
            |dest: &std::path::Path| fs::metadata(dest).is_ok_and(|m| m.len() == desc.size);
        if present(&dest) {
            opts.emit(ProgressEvent::LayerExists {
                digest: digest.to_string(),
                size: desc.size,
            });
            return Ok(());
        }
        let _lock = self.lock(
            &format!("blob-{}.lock", id_hex(digest)),
            FlockArg::LockExclusive,
        )?;
        if present(&dest) {
            opts.emit(ProgressEvent::LayerExists {
                digest: digest.to_string(),
                size: desc.size,
            });
            return Ok(());
        }
        opts.emit(ProgressEvent::LayerStarted {
            digest: digest.to_string(),
            size: desc.size,
        });
        let tmp = self.tmp_dir().join(temp_name("pull"));
        let mut guard = TempGuard(Some(tmp.clone()));
        let mut out = File::create(&tmp).map_err(io_err("create temp blob", &tmp))?;
        let mut attempt = 0u32;
        loop {
            match self.download_once(client, desc, &mut out, &tmp, opts) {
                Ok(()) => break,
                Err((e, retryable)) => {
                    if !retryable || attempt >= opts.retries {
                        return Err(e);
                    }
                    attempt += 1;
                    tracing::debug!(digest, attempt, error = %e, "layer download interrupted, retrying");
                    opts.emit(ProgressEvent::LayerRetrying {
                        digest: digest.to_string(),
                        attempt,
                        error: e.to_string(),
                    });
                    client.wait_before_retry(attempt);
                    out.set_len(0).map_err(io_err("truncate temp blob", &tmp))?;
                    out.rewind().map_err(io_err("rewind temp blob", &tmp))?;
                }
            }
        }
        out.sync_all().map_err(io_err("fsync temp blob", &tmp))?;
        fs::rename(&tmp, &dest).map_err(io_err("rename blob into place", &dest))?;
        guard.disarm();
        opts.emit(ProgressEvent::LayerDownloaded {
            digest: digest.to_string(),
            size: desc.size,
        });
        Ok(())
    }

    /// One attempt at streaming a blob into `out`, hashing as it goes. The bool says
    /// whether trying again may help.
    fn download_once(
        &self,
        client: &RegistryClient,
        desc: &Descriptor,
        out: &mut File,
        tmp: &std::path::Path,
        opts: &PullOptions,
    ) -> Result<(), (ImageError, bool)> {
        // open_blob already retried the request itself.
        let (mut reader, url) = client.open_blob(&desc.digest).map_err(|e| (e, false))?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        let mut last_report = Instant::now();
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err((
                        registry::read_error(&url, len, &e, opts.stall_timeout),
                        true,
                    ))
                }
            };
            len += n as u64;
            if len > desc.size {
                return Err((
                    ImageError::SizeMismatch {
                        digest: desc.digest.clone(),
                        expected: desc.size,
                        actual: len,
                    },
                    false,
                ));
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| (io_err("write temp blob", tmp)(e), false))?;
            if last_report.elapsed() >= Duration::from_millis(200) {
                last_report = Instant::now();
                opts.emit(ProgressEvent::LayerProgress {
                    digest: desc.digest.clone(),
                    downloaded: len,
                    size: desc.size,
                });
            }
        }
        if len != desc.size {
            // The body ended early without an error from the transport: a truncated layer.
            return Err((
                ImageError::RegistryRead {
                    url,
                    received: len,
                    reason: format!("body ended early, expected {} bytes", desc.size),
                },
                true,
            ));
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != desc.digest {
            return Err((
                ImageError::DigestMismatch {
                    expected: desc.digest.clone(),
                    actual,
                },
                false,
            ));
        }
        opts.emit(ProgressEvent::LayerProgress {
            digest: desc.digest.clone(),
            downloaded: len,
            size: desc.size,
        });
        Ok(())
    }
}

fn select_platform<'a>(
    index: &'a IndexDoc,
    want: &PlatformSpec,
) -> Result<&'a IndexEntry, ImageError> {
    let candidates = index
        .manifests
        .iter()
        .filter(|m| m.media_type != MEDIA_OCI_INDEX && m.media_type != MEDIA_DOCKER_LIST);
    let mut matching = candidates
        .clone()
        .filter(|m| m.platform.as_ref().is_some_and(|p| want.matches(p)));
    // Without a requested variant prefer an entry that has none (the baseline build).
    let first = matching.next();
    let chosen = if want.variant.is_none() {
        std::iter::once(first)
            .flatten()
            .chain(matching)
            .find(|m| m.platform.as_ref().is_some_and(|p| p.variant.is_none()))
            .or(first)
    } else {
        first
    };
    chosen.ok_or_else(|| ImageError::NoMatchingPlatform {
        platform: want.to_string(),
        available: {
            let list: Vec<String> = candidates
                .filter_map(|m| m.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            if list.is_empty() {
                "no platforms".into()
            } else {
                list.join(", ")
            }
        },
    })
}
