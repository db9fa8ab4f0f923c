//! A Pod's volumes, prepared on the host as kubelet does before it creates containers:
//! emptyDir (on disk or in memory), hostPath with its type checks, and the files of
//! configMap, secret and projected volumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Volume;

use super::kube::Translator;
use super::{io, PodError};
use crate::plan::TmpfsPlan;
use crate::spec;
use crate::state;

impl Translator<'_> {
    /// Prepare every volume of the pod; returns name -> (host path, always read-only).
    pub(super) fn volumes(
        &self,
        state_dir: &Path,
        data_dir: &Path,
        tmpfs: &mut Vec<TmpfsPlan>,
    ) -> Result<BTreeMap<String, (PathBuf, bool)>, PodError> {
        let spec = self.m.pod.spec.as_ref().unwrap();
        let fs_group = spec
            .security_context
            .as_ref()
            .and_then(|s| s.fs_group)
            .map(|g| g as u32);
        let mut out = BTreeMap::new();
        for (i, v) in spec.volumes.iter().flatten().enumerate() {
            let (path, ro) = self.volume(i, v, state_dir, data_dir, tmpfs, fs_group)?;
            out.insert(v.name.clone(), (path, ro));
        }
        Ok(out)
    }

    /// Volume `i` of the pod (`spec.volumes[i]` in messages).
    fn volume(
        &self,
        i: usize,
        v: &Volume,
        state_dir: &Path,
        data_dir: &Path,
        tmpfs: &mut Vec<TmpfsPlan>,
        fs_group: Option<u32>,
    ) -> Result<(PathBuf, bool), PodError> {
        use std::os::unix::fs::PermissionsExt;
        let field = format!("spec.volumes[{i}]");
        if let Some(e) = &v.empty_dir {
            if e.medium.as_deref() == Some("Memory") {
                let path = state_dir.join("volumes/empty-dir").join(&v.name);
                let size =
                    match &e.size_limit {
                        Some(q) => Some(spec::parse_quantity_bytes(&q.0).map_err(|err| {
                            self.invalid(format!("{field}.emptyDir.sizeLimit: {err}"))
                        })? as u64),
                        None => None,
                    };
                // The monitor mounts the tmpfs here; the mount point exists from now on.
                std::fs::create_dir_all(&path)
                    .map_err(io(format!("create emptyDir {}", path.display())))?;
                tmpfs.push(TmpfsPlan {
                    path: path.clone(),
                    size_bytes: size,
                    mode: if fs_group.is_some() { 0o2777 } else { 0o777 },
                });
                return Ok((path, false));
            }
            let path = data_dir.join("volumes/empty-dir").join(&v.name);
            std::fs::create_dir_all(&path)
                .map_err(io(format!("create emptyDir {}", path.display())))?;
            if let Some(g) = fs_group {
                let _ = nix::unistd::chown(&path, None, Some(nix::unistd::Gid::from_raw(g)));
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o2777));
            } else {
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
            }
            return Ok((path, false));
        }
        if let Some(h) = &v.host_path {
            let path = PathBuf::from(&h.path);
            if !path.is_absolute() {
                return Err(self.invalid(format!(
                    "{field}.hostPath.path: must be absolute, got {:?}",
                    h.path
                )));
            }
            let meta = std::fs::metadata(&path);
            use std::os::unix::fs::FileTypeExt;
            let ty = h.type_.as_deref().unwrap_or("");
            let bad =
                |what: &str| self.invalid(format!("{field}.hostPath: {} is not {what}", h.path));
            match ty {
                "" => {}
                "DirectoryOrCreate" => {
                    if meta.is_err() {
                        std::fs::create_dir_all(&path)
                            .map_err(io(format!("create hostPath {}", h.path)))?;
                    } else if meta.as_ref().is_ok_and(|m| !m.is_dir()) {
                        return Err(bad("a directory"));
                    }
                }
                "FileOrCreate" => {
                    if meta.is_err() {
                        if let Some(p) = path.parent() {
                            std::fs::create_dir_all(p)
                                .map_err(io(format!("create hostPath {}", h.path)))?;
                        }
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                            .map_err(io(format!("create hostPath {}", h.path)))?;
                    } else if meta.as_ref().is_ok_and(|m| !m.is_file()) {
                        return Err(bad("a file"));
                    }
                }
                "Directory" => {
                    if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
                        return Err(bad("an existing directory"));
                    }
                }
                "File" => {
                    if !meta.as_ref().is_ok_and(|m| m.is_file()) {
                        return Err(bad("an existing file"));
                    }
                }
                "Socket" => {
                    if !meta.as_ref().is_ok_and(|m| m.file_type().is_socket()) {
                        return Err(bad("a socket"));
                    }
                }
                "CharDevice" => {
                    if !meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) {
                        return Err(bad("a character device"));
                    }
                }
                "BlockDevice" => {
                    if !meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()) {
                        return Err(bad("a block device"));
                    }
                }
                other => {
                    return Err(
                        self.invalid(format!("{field}.hostPath.type: unknown type {other:?}"))
                    )
                }
            }
            return Ok((path, false));
        }
        let (kind, base) = if v.config_map.is_some() {
            ("configmap", data_dir)
        } else if v.secret.is_some() {
            // Secrets stay on the runtime tmpfs, never on persistent disk.
            ("secret", state_dir)
        } else if v.projected.is_some() {
            ("projected", state_dir)
        } else {
            return Err(self.invalid(format!("{field}: unsupported volume type (supported: emptyDir, hostPath, configMap, secret, projected)")));
        };
        let root = base.join("volumes").join(kind).join(&v.name);
        std::fs::create_dir_all(&root).map_err(io(format!("create volume {}", root.display())))?;
        for f in spec::volume_files(v, self.m)? {
            let (rel, data, mode) = f;
            let target = root.join(&rel);
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p).map_err(io(format!("create {}", p.display())))?;
            }
            state::write_atomic(&target, &data, mode)?;
            if let Some(g) = fs_group {
                let _ = nix::unistd::chown(&target, None, Some(nix::unistd::Gid::from_raw(g)));
            }
        }
        Ok((root, true))
    }
}
