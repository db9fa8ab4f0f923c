//! Reading image archives: an OCI image layout in a tar (`index.json`, `blobs/<alg>/<hex>`)
//! or a docker-archive (`docker save`: `manifest.json` with `Config`, `RepoTags`, `Layers`).
//! The archive is indexed once and its members are then read by offset, so a multi-gigabyte
//! archive is never held in memory or unpacked to a second copy.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::reference::{self, Reference};
use super::ImageError;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// JSON documents (index, manifest, config) larger than this are refused.
const MAX_JSON: u64 = 16 << 20;

/// A tar archive indexed by member name.
pub struct ArchiveIndex {
    file: File,
    path: PathBuf,
    members: HashMap<String, (u64, u64)>,
}

fn normalize_member(p: &Path) -> String {
    let parts: Vec<String> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

fn format_err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::ArchiveFormat {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl ArchiveIndex {
    /// Index an uncompressed tar file.
    pub fn open(file: File, path: &Path) -> Result<Self, ImageError> {
        let io_err = |source| ImageError::Io {
            op: "index image archive",
            path: path.to_path_buf(),
            source,
        };
        let mut members = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        {
            let mut archive = tar::Archive::new(&file);
            for entry in archive.entries_with_seek().map_err(io_err)? {
                let entry = entry.map_err(io_err)?;
                let name = normalize_member(&entry.path().map_err(io_err)?);
                match entry.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        members.insert(name, (entry.raw_file_position(), entry.size()));
                    }
                    tar::EntryType::Symlink => {
                        // docker save links duplicate layers: `<id>/layer.tar -> ../<id2>/layer.tar`.
                        if let Ok(Some(target)) = entry.link_name() {
                            let base = Path::new(&name).parent().unwrap_or(Path::new(""));
                            let joined = base.join(target);
                            let mut parts: Vec<String> = Vec::new();
                            for c in joined.components() {
                                match c {
                                    Component::ParentDir => {
                                        parts.pop();
                                    }
                                    Component::Normal(n) => {
                                        parts.push(n.to_string_lossy().into_owned())
                                    }
                                    _ => {}
                                }
                            }
                            links.push((name, parts.join("/")));
                        }
                    }
                    tar::EntryType::Link => {
                        if let Ok(Some(target)) = entry.link_name() {
                            links.push((name, normalize_member(&target)));
                        }
                    }
                    _ => {}
                }
            }
        }
        for (name, target) in links {
            if let Some(v) = members.get(&target).copied() {
                members.insert(name, v);
            }
        }
        Ok(ArchiveIndex {
            file,
            path: path.to_path_buf(),
            members,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    pub fn size(&self, name: &str) -> Option<u64> {
        self.members.get(name).map(|m| m.1)
    }

    /// A reader over one member.
    pub fn reader(&self, name: &str) -> Result<MemberReader<'_>, ImageError> {
        let (offset, size) = *self
            .members
            .get(name)
            .ok_or_else(|| ImageError::MissingBlob {
                archive: self.path.clone(),
                member: name.to_string(),
            })?;
        Ok(MemberReader {
            file: &self.file,
            pos: offset,
            end: offset + size,
        })
    }

    /// A whole (small) member.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let size = self.size(name).unwrap_or(0);
        if size > MAX_JSON {
            return Err(format_err(&self.path, format!("{name} is too large")));
        }
        let mut buf = Vec::with_capacity(size as usize);
        self.reader(name)?
            .read_to_end(&mut buf)
            .map_err(|source| ImageError::Io {
                op: "read archive member",
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// A blob named by digest, verified against the digest and the descriptor size.
    pub fn read_blob(&self, digest: &str, size: Option<u64>) -> Result<Vec<u8>, ImageError> {
        let name = blob_member(digest)?;
        let data = self.read(&name)?;
        verify_bytes(digest, size, &data)?;
        Ok(data)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads one archive member by offset, without moving a shared cursor.
pub struct MemberReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = (self.end - self.pos) as usize;
        if left == 0 {
            return Ok(0);
        }
        let n = buf.len().min(left);
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "image archive is truncated",
            ));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

/// `blobs/<alg>/<hex>` for a digest.
pub fn blob_member(digest: &str) -> Result<String, ImageError> {
    reference::validate_digest(digest).map_err(|reason| ImageError::InvalidDigest {
        digest: digest.to_string(),
        reason,
    })?;
    let (alg, hex) = digest.split_once(':').unwrap_or(("", digest));
    if alg != "sha256" {
        return Err(ImageError::InvalidDigest {
            digest: digest.to_string(),
            reason: "only sha256 is supported".into(),
        });
    }
    Ok(format!("blobs/sha256/{hex}"))
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn verify_bytes(digest: &str, size: Option<u64>, data: &[u8]) -> Result<(), ImageError> {
    if let Some(size) = size {
        if size != data.len() as u64 {
            return Err(ImageError::SizeMismatch {
                digest: digest.to_string(),
                expected: size,
                actual: data.len() as u64,
            });
        }
    }
    let actual = sha256_digest(data);
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Debug, Deserialize)]
struct IndexJson {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub struct ManifestJson {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// Where one layer of an image to import comes from.
#[derive(Debug, Clone)]
pub struct LayerSource {
    pub member: String,
    /// Digest and size the archive promises; docker-archive layers have none.
    pub digest: Option<String>,
    pub size: Option<u64>,
    pub media_type: Option<String>,
}

/// One image to import, with its blobs located in the archive.
#[derive(Debug)]
pub struct ImagePlan {
    pub names: Vec<Reference>,
    /// Manifest digest and bytes as shipped; None for a docker-archive.
    pub manifest: Option<(String, Vec<u8>)>,
    pub config_digest: String,
    pub config: Vec<u8>,
    pub layers: Vec<LayerSource>,
}

fn parse_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    data: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|source| ImageError::Json { what, source })
}

/// Work out the images an archive holds.
pub fn plan(index: &ArchiveIndex) -> Result<Vec<ImagePlan>, ImageError> {
    if index.contains("index.json") {
        plan_oci(index)
    } else if index.contains("manifest.json") {
        plan_docker(index)
    } else {
        Err(format_err(
            index.path(),
            "neither index.json (OCI layout) nor manifest.json (docker-archive) found",
        ))
    }
}

fn host_platform_matches(p: &Platform) -> bool {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    p.os == "linux" && p.architecture == arch
}

fn names_from_annotations(desc: &Descriptor) -> Vec<Reference> {
    let Some(ann) = &desc.annotations else {
        return Vec::new();
    };
    let candidate = match (
        ann.get(ANNOTATION_CONTAINERD_NAME),
        ann.get(ANNOTATION_REF_NAME),
    ) {
        (Some(full), _) => Some(full.as_str()),
        // A bare tag ("latest") names no repository, so it cannot tag the image by itself.
        (None, Some(r)) if r.contains(['/', ':', '@']) => Some(r.as_str()),
        _ => None,
    };
    match candidate.map(reference::parse) {
        Some(Ok(r)) => vec![r],
        Some(Err(e)) => {
            tracing::warn!(error = %e, "ignoring image name annotation");
            Vec::new()
        }
        None => Vec::new(),
    }
}

fn plan_oci(index: &ArchiveIndex) -> Result<Vec<ImagePlan>, ImageError> {
    let top: IndexJson = parse_json("index.json", &index.read("index.json")?)?;
    let mut plans: Vec<ImagePlan> = Vec::new();
    for desc in &top.manifests {
        let names = names_from_annotations(desc);
        let mut manifest_desc = desc.clone();
        // Follow nested indexes down to the manifest for this host's platform.
        for _ in 0..4 {
            if manifest_desc.media_type != MEDIA_OCI_INDEX
                && manifest_desc.media_type != MEDIA_DOCKER_LIST
            {
                break;
            }
            let nested: IndexJson = parse_json(
                "nested image index",
                &index.read_blob(&manifest_desc.digest, Some(manifest_desc.size))?,
            )?;
            let present = |d: &&Descriptor| {
                blob_member(&d.digest)
                    .map(|m| index.contains(&m))
                    .unwrap_or(false)
            };
            let chosen = nested
                .manifests
                .iter()
                .filter(present)
                .find(|d| d.platform.as_ref().is_some_and(host_platform_matches))
                .or_else(|| nested.manifests.iter().find(present))
                .cloned()
                .ok_or_else(|| {
                    format_err(index.path(), "image index has no manifest in the archive")
                })?;
            manifest_desc = chosen;
        }
        let bytes = index.read_blob(&manifest_desc.digest, Some(manifest_desc.size))?;
        let manifest: ManifestJson = parse_json("image manifest", &bytes)?;
        let config = index.read_blob(&manifest.config.digest, Some(manifest.config.size))?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| {
                Ok(LayerSource {
                    member: blob_member(&l.digest)?,
                    digest: Some(l.digest.clone()),
                    size: Some(l.size),
                    media_type: Some(l.media_type.clone()),
                })
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        // Several index entries may name one manifest (one per tag): merge them.
        if let Some(p) = plans
            .iter_mut()
            .find(|p| p.manifest.as_ref().map(|m| &m.0) == Some(&manifest_desc.digest))
        {
            p.names.extend(names);
            continue;
        }
        plans.push(ImagePlan {
            names,
            manifest: Some((manifest_desc.digest.clone(), bytes)),
            config_digest: manifest.config.digest.clone(),
            config,
            layers,
        });
    }
    if plans.is_empty() {
        return Err(format_err(index.path(), "index.json lists no manifests"));
    }
    Ok(plans)
}

fn plan_docker(index: &ArchiveIndex) -> Result<Vec<ImagePlan>, ImageError> {
    let entries: Vec<DockerManifestEntry> =
        parse_json("manifest.json", &index.read("manifest.json")?)?;
    if entries.is_empty() {
        return Err(format_err(index.path(), "manifest.json lists no images"));
    }
    let mut plans = Vec::new();
    for entry in entries {
        let config_member = normalize_member(Path::new(&entry.config));
        let config = index.read(&config_member)?;
        let config_digest = sha256_digest(&config);
        // The config file is named after its digest (`<hex>.json` or `blobs/sha256/<hex>`):
        // check it, since nothing else in a docker-archive carries a digest.
        let stem = config_member
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".json");
        if stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            verify_bytes(&format!("sha256:{stem}"), None, &config)?;
        }
        let mut names = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            names.push(reference::parse(&tag)?);
        }
        let layers = entry
            .layers
            .iter()
            .map(|l| LayerSource {
                member: normalize_member(Path::new(l)),
                digest: None,
                size: None,
                media_type: None,
            })
            .collect();
        plans.push(ImagePlan {
            names,
            manifest: None,
            config_digest,
            config,
            layers,
        });
    }
    Ok(plans)
}
