//! Removing images and collecting the blobs, layers and temp files no image uses.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use nix::fcntl::FlockArg;

use super::unpack;
use super::{id_hex, io_err, temp_name, Addressed, ImageError, ImageStore};

impl ImageStore {
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
    pub(super) fn sweep(&self) -> Result<(), ImageError> {
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
}
