//! Exporting images as an OCI image layout in a tar (`podrun image save`), the format
//! `load_archive`, `ctr import`, `skopeo copy oci-archive:` and `docker load` read.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use nix::fcntl::FlockArg;

use super::archive::{self, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME};
use super::{id_hex, io_err, temp_name, ImageError, ImageStore, TempGuard};

fn tar_err(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        op: "write image archive",
        path: path.to_path_buf(),
        source,
    }
}

impl ImageStore {
    /// Write the images `references` name to `out` as an OCI archive. Each reference that is
    /// a tag is recorded as the image's name, so loading the archive tags it again.
    pub fn save(&self, references: &[&str], out: &Path) -> Result<(), ImageError> {
        // Shared: the content must not be collected while it is copied.
        let _gc = self.lock("gc.lock", FlockArg::LockShared)?;
        let mut manifests = Vec::new();
        let mut blobs: Vec<String> = Vec::new();
        for reference in references {
            let (rec, _) = self
                .resolve(reference)?
                .ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
            let manifest_path = self.blob_path(&rec.manifest_digest);
            let manifest =
                fs::read(&manifest_path).map_err(io_err("read manifest", &manifest_path))?;
            #[derive(serde::Deserialize)]
            struct MediaType {
                #[serde(rename = "mediaType", default)]
                media_type: Option<String>,
            }
            let media = serde_json::from_slice::<MediaType>(&manifest)
                .ok()
                .and_then(|m| m.media_type)
                .unwrap_or_else(|| archive::MEDIA_OCI_MANIFEST.to_string());
            // Name the image by the reference when it is a tag, else by all its tags.
            let names: Vec<String> = match super::reference::parse(reference)
                .ok()
                .and_then(|r| r.tag_form())
                .filter(|t| rec.image.repo_tags.contains(t))
            {
                Some(t) => vec![t],
                None => rec.image.repo_tags.clone(),
            };
            let descriptor = |name: Option<&String>| {
                let mut d = serde_json::json!({
                    "mediaType": media,
                    "digest": rec.manifest_digest,
                    "size": manifest.len(),
                });
                if let Some(n) = name {
                    let tag = n.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
                    d["annotations"] = serde_json::json!({
                        ANNOTATION_CONTAINERD_NAME: n,
                        ANNOTATION_REF_NAME: tag,
                    });
                }
                d
            };
            if names.is_empty() {
                manifests.push(descriptor(None));
            }
            for n in &names {
                manifests.push(descriptor(Some(n)));
            }
            blobs.push(rec.manifest_digest.clone());
            blobs.push(rec.config_digest.clone());
            blobs.extend(rec.layer_blobs.iter().cloned());
        }
        let index = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": archive::MEDIA_OCI_INDEX,
            "manifests": manifests,
        }))
        .map_err(|source| ImageError::Json {
            what: "index.json",
            source,
        })?;

        // Written next to the destination and renamed, so `out` is never half written.
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{}", temp_name("save")));
        let mut guard = TempGuard(Some(tmp.clone()));
        let file = File::create(&tmp).map_err(io_err("create image archive", &tmp))?;
        let mut b = tar::Builder::new(BufWriter::new(file));
        let werr = tar_err(&tmp);
        let add = |b: &mut tar::Builder<BufWriter<File>>,
                   name: &str,
                   size: u64,
                   data: &mut dyn std::io::Read|
         -> Result<(), ImageError> {
            let mut h = tar::Header::new_ustar();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(0);
            b.append_data(&mut h, name, data).map_err(&werr)
        };
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        add(&mut b, "oci-layout", layout.len() as u64, &mut &layout[..])?;
        add(&mut b, "index.json", index.len() as u64, &mut &index[..])?;
        let mut seen = BTreeSet::new();
        for d in blobs {
            if !seen.insert(d.clone()) {
                continue;
            }
            let p = self.blob_path(&d);
            let mut f = File::open(&p).map_err(io_err("open blob", &p))?;
            let size = f.metadata().map_err(io_err("stat blob", &p))?.len();
            add(
                &mut b,
                &format!("blobs/sha256/{}", id_hex(&d)),
                size,
                &mut f,
            )?;
        }
        let mut w = b.into_inner().map_err(tar_err(&tmp))?;
        w.flush().map_err(tar_err(&tmp))?;
        w.get_ref().sync_all().map_err(tar_err(&tmp))?;
        fs::rename(&tmp, out).map_err(io_err("rename image archive into place", out))?;
        guard.disarm();
        Ok(())
    }
}
