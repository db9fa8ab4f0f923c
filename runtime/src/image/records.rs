//! Image records: writing and reading them, resolving a reference to one, and what an
//! image hands the runtime (its config and layer directories).

use std::fs;
use std::io;
use std::path::PathBuf;

use super::reference;
use super::{
    chain_ids, io_err, write_atomic, Addressed, Image, ImageConfig, ImageError, ImageRecord,
    ImageStore, OciImage,
};

impl ImageStore {
    pub(super) fn write_record(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        let data = serde_json::to_vec_pretty(rec).map_err(|source| ImageError::Json {
            what: "image record",
            source,
        })?;
        write_atomic(&self.tmp_dir(), &self.record_path(rec.hex()), &data)
    }

    pub(super) fn records(&self) -> Result<Vec<ImageRecord>, ImageError> {
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

    pub(super) fn resolve(
        &self,
        reference: &str,
    ) -> Result<Option<(ImageRecord, Addressed)>, ImageError> {
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
