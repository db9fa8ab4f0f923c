//! Importing images: an archive's blobs verified into the content store, its layers
//! unpacked once per chain ID, and the new records committed with their tags.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use nix::fcntl::FlockArg;
use sha2::{Digest, Sha256};

use super::archive::{ArchiveIndex, ImagePlan, LayerSource};
use super::unpack::Compression;
use super::{archive, unpack};
use super::{
    chain_ids, io_err, push_unique, read_prefix, synthesize_manifest, temp_name, write_atomic,
    Image, ImageError, ImageRecord, ImageStore, OciImage, TempGuard,
};

impl ImageStore {
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

    pub(super) fn load_archive_locked(&self, path: &Path) -> Result<Vec<Image>, ImageError> {
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
    pub(super) fn import(
        &self,
        index: &ArchiveIndex,
        plan: ImagePlan,
    ) -> Result<ImageRecord, ImageError> {
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
    pub(super) fn store_layer_blob(
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
    pub(super) fn store_blob_bytes(&self, digest: &str, data: &[u8]) -> Result<(), ImageError> {
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
    pub(super) fn ensure_layer(
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
    pub(super) fn commit(&self, records: Vec<ImageRecord>) -> Result<Vec<Image>, ImageError> {
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
}
