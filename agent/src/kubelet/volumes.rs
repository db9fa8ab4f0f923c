//! A pod's volumes on the node, as kubelet prepares them before its containers start:
//! emptyDir directories, hostPath checks, and configMap, secret, downwardAPI and projected
//! volumes whose files come from the API and are kept current. Files are published the
//! way kubelet's atomic writer does it (a timestamped directory, a `..data` symlink
//! swapped in one rename, one symlink per top-level entry), so a container never sees a
//! half-written update.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, Volume};
use k8s_openapi::ByteString;

const DEFAULT_MODE: i32 = 0o644;

/// Where the data of configMaps and secrets comes from (the API server, or a fake).
pub trait Source {
    /// The data of a ConfigMap (`data` and `binaryData`), None if it does not exist.
    fn config_map(
        &self,
        ns: &str,
        name: &str,
    ) -> impl std::future::Future<Output = Result<Option<BTreeMap<String, Vec<u8>>>, String>> + Send;
    /// The data of a Secret, None if it does not exist.
    fn secret(
        &self,
        ns: &str,
        name: &str,
    ) -> impl std::future::Future<Output = Result<Option<BTreeMap<String, Vec<u8>>>, String>> + Send;
}

/// The API server as a Source.
pub struct ApiSource(pub kube::Client);

impl Source for ApiSource {
    async fn config_map(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(self.0.clone(), ns);
        let Some(cm) = api.get_opt(name).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let mut out: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, ByteString(v)) in cm.binary_data.unwrap_or_default() {
            out.insert(k, v);
        }
        Ok(Some(out))
    }

    async fn secret(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(self.0.clone(), ns);
        let Some(s) = api.get_opt(name).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let mut out: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, ByteString(v))| (k, v))
            .collect();
        for (k, v) in s.string_data.unwrap_or_default() {
            out.insert(k, v.into_bytes());
        }
        Ok(Some(out))
    }
}

/// One file of a volume: path relative to the volume, content, mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// A relative path with no `..` and nothing absolute.
pub fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !p.starts_with("..")
}

fn select(
    what: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    default_mode: i32,
) -> Result<Vec<File>, String> {
    let Some(data) = data else {
        if optional {
            return Ok(Vec::new());
        }
        return Err(format!("{what} not found"));
    };
    let mut out = Vec::new();
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                let Some(v) = data.get(&it.key) else {
                    if optional {
                        continue;
                    }
                    return Err(format!(
                        "configuration key {:?} not found in {what}",
                        it.key
                    ));
                };
                if !safe_relative(&it.path) {
                    return Err(format!(
                        "{what}: item path {:?} must be relative without '..'",
                        it.path
                    ));
                }
                out.push(File {
                    path: it.path.clone(),
                    data: v.clone(),
                    mode: it.mode.unwrap_or(default_mode) as u32,
                });
            }
        }
        _ => {
            for (k, v) in data {
                if !safe_relative(&k) {
                    return Err(format!("{what}: key {k:?} is not a valid file name"));
                }
                out.push(File {
                    path: k,
                    data: v,
                    mode: default_mode as u32,
                });
            }
        }
    }
    Ok(out)
}

/// The content of a downwardAPI item.
pub fn downward_value(pod: &Pod, f: &DownwardAPIVolumeFile) -> Result<Vec<u8>, String> {
    if let Some(fr) = &f.field_ref {
        let map = |m: Option<&BTreeMap<String, String>>| {
            let mut s = String::new();
            for (k, v) in m.into_iter().flatten() {
                s.push_str(&format!("{k}={v:?}\n"));
            }
            s.trim_end_matches('\n').to_owned()
        };
        let md = &pod.metadata;
        let v = match fr.field_path.as_str() {
            "metadata.name" => md.name.clone().unwrap_or_default(),
            "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
            "metadata.uid" => md.uid.clone().unwrap_or_default(),
            "metadata.labels" => map(md.labels.as_ref()),
            "metadata.annotations" => map(md.annotations.as_ref()),
            other => match field_lookup(pod, other) {
                Some(v) => v,
                None => return Err(format!("unsupported fieldPath {other:?}")),
            },
        };
        return Ok(v.into_bytes());
    }
    if f.resource_field_ref.is_some() {
        return Err("resourceFieldRef in downwardAPI volumes is not supported".into());
    }
    Err(format!("item {:?} names no field", f.path))
}

/// `metadata.labels['x']` and `metadata.annotations['x']`.
pub fn field_lookup(pod: &Pod, path: &str) -> Option<String> {
    let key = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
    };
    if let Some(k) = key("metadata.labels") {
        return Some(
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(k).cloned())
                .unwrap_or_default(),
        );
    }
    if let Some(k) = key("metadata.annotations") {
        return Some(
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|l| l.get(k).cloned())
                .unwrap_or_default(),
        );
    }
    None
}

/// The files of a configMap, secret, downwardAPI or projected volume; None for other kinds.
pub async fn volume_files(
    pod: &Pod,
    v: &Volume,
    src: &impl Source,
) -> Option<Result<Vec<File>, String>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    if let Some(cm) = &v.config_map {
        let what = format!("configmap {:?}", cm.name);
        return Some(match src.config_map(ns, &cm.name).await {
            Ok(d) => select(
                &what,
                d,
                cm.items.as_ref(),
                cm.optional == Some(true),
                cm.default_mode.unwrap_or(DEFAULT_MODE),
            ),
            Err(e) => Err(format!("{what}: {e}")),
        });
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let what = format!("secret {name:?}");
        return Some(match src.secret(ns, &name).await {
            Ok(d) => select(
                &what,
                d,
                s.items.as_ref(),
                s.optional == Some(true),
                s.default_mode.unwrap_or(DEFAULT_MODE),
            ),
            Err(e) => Err(format!("{what}: {e}")),
        });
    }
    if let Some(d) = &v.downward_api {
        return Some(downward_files(
            pod,
            d.items.as_deref().unwrap_or(&[]),
            d.default_mode.unwrap_or(DEFAULT_MODE),
        ));
    }
    let p = v.projected.as_ref()?;
    let mode = p.default_mode.unwrap_or(DEFAULT_MODE);
    let mut out = Vec::new();
    for s in p.sources.iter().flatten() {
        let part = if let Some(cm) = &s.config_map {
            let what = format!("configmap {:?}", cm.name);
            match src.config_map(ns, &cm.name).await {
                Ok(d) => select(&what, d, cm.items.as_ref(), cm.optional == Some(true), mode),
                Err(e) => Err(format!("{what}: {e}")),
            }
        } else if let Some(sec) = &s.secret {
            let what = format!("secret {:?}", sec.name);
            match src.secret(ns, &sec.name).await {
                Ok(d) => select(
                    &what,
                    d,
                    sec.items.as_ref(),
                    sec.optional == Some(true),
                    mode,
                ),
                Err(e) => Err(format!("{what}: {e}")),
            }
        } else if let Some(d) = &s.downward_api {
            downward_files(pod, d.items.as_deref().unwrap_or(&[]), mode)
        } else {
            Err(
                "projected sources other than configMap, secret and downwardAPI are not supported"
                    .into(),
            )
        };
        match part {
            Ok(files) => out.extend(files),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(out))
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    mode: i32,
) -> Result<Vec<File>, String> {
    items
        .iter()
        .map(|it| {
            if !safe_relative(&it.path) {
                return Err(format!(
                    "downwardAPI item path {:?} must be relative without '..'",
                    it.path
                ));
            }
            Ok(File {
                path: it.path.clone(),
                data: downward_value(pod, it)?,
                mode: it.mode.unwrap_or(mode) as u32,
            })
        })
        .collect()
}

/// Publishes `files` in `dir` atomically; nothing is rewritten when they are unchanged.
pub fn publish(dir: &Path, files: &[File]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let data = dir.join("..data");
    let current: Option<PathBuf> = std::fs::read_link(&data).ok();
    if let Some(cur) = &current {
        let same = files.iter().all(|f| {
            let p = dir.join(cur).join(&f.path);
            std::fs::read(&p).is_ok_and(|d| d == f.data)
                && std::fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o7777 == f.mode)
        }) && count_files(&dir.join(cur)) == files.len();
        if same {
            return Ok(());
        }
    }
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let staged = dir.join(&stamp);
    std::fs::create_dir(&staged)?;
    for f in files {
        let p = staged.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, &f.data)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    // One symlink per top-level entry, through ..data.
    let mut tops: Vec<String> = files
        .iter()
        .filter_map(|f| f.path.split('/').next().map(str::to_owned))
        .collect();
    tops.sort();
    tops.dedup();
    for t in &tops {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(t), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            if name != "..data" && name != stamp {
                let _ = std::fs::remove_dir_all(e.path());
            }
        } else if !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => n += count_files(&e.path()),
            Ok(_) => n += 1,
            Err(_) => {}
        }
    }
    n
}

/// The host directory of each of the pod's volumes, prepared: directories created,
/// files published, hostPath types checked. The error names the volume, as kubelet's
/// FailedMount events do.
pub async fn prepare(
    pod: &Pod,
    pod_dir: &Path,
    src: &impl Source,
) -> Result<HashMap<String, PathBuf>, String> {
    let mut out = HashMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let fail = |e: String| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name);
        if !safe_relative(&v.name) || v.name.contains('/') {
            return Err(fail("invalid volume name".into()));
        }
        let plugin_dir = |plugin: &str| pod_dir.join("volumes").join(plugin).join(&v.name);
        if v.empty_dir.is_some() {
            let d = plugin_dir("kubernetes.io~empty-dir");
            std::fs::create_dir_all(&d).map_err(|e| fail(e.to_string()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| fail(e.to_string()))?;
            out.insert(v.name.clone(), d);
        } else if let Some(hp) = &v.host_path {
            check_host_path(&hp.path, hp.type_.as_deref().unwrap_or("")).map_err(fail)?;
            out.insert(v.name.clone(), PathBuf::from(&hp.path));
        } else if let Some(files) = volume_files(pod, v, src).await {
            let plugin = if v.config_map.is_some() {
                "kubernetes.io~configmap"
            } else if v.secret.is_some() {
                "kubernetes.io~secret"
            } else if v.downward_api.is_some() {
                "kubernetes.io~downward-api"
            } else {
                "kubernetes.io~projected"
            };
            let d = plugin_dir(plugin);
            publish(&d, &files.map_err(fail)?).map_err(|e| fail(e.to_string()))?;
            out.insert(v.name.clone(), d);
        } else {
            return Err(fail(
                "this volume type is not supported by this node".into(),
            ));
        }
    }
    Ok(out)
}

fn check_host_path(path: &str, type_: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    if !path.starts_with('/') {
        return Err(format!("hostPath {path:?} must be absolute"));
    }
    let meta = std::fs::metadata(path);
    let bad = |what: &str| {
        Err(format!(
            "hostPath type check failed: {path} is not a {what}"
        ))
    };
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(path).map_err(|e| format!("{path}: {e}"))?;
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
            }
            Ok(())
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = Path::new(path).parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("{path}: {e}"))?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("{path}: {e}"))?;
            }
            Ok(())
        }
        "Directory" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            _ => bad("directory"),
        },
        "File" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            _ => bad("file"),
        },
        "Socket" => match meta {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => bad("socket"),
        },
        "CharDevice" => match meta {
            Ok(m) if m.file_type().is_char_device() => Ok(()),
            _ => bad("character device"),
        },
        "BlockDevice" => match meta {
            Ok(m) if m.file_type().is_block_device() => Ok(()),
            _ => bad("block device"),
        },
        other => Err(format!(
            "hostPath type {other:?} is not one of the known types"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fake;

    impl Source for Fake {
        async fn config_map(
            &self,
            _ns: &str,
            name: &str,
        ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
            Ok((name == "cfg").then(|| {
                BTreeMap::from([
                    ("a.conf".to_owned(), b"A".to_vec()),
                    ("b.conf".to_owned(), b"B".to_vec()),
                ])
            }))
        }
        async fn secret(
            &self,
            _ns: &str,
            name: &str,
        ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
            Ok((name == "pw")
                .then(|| BTreeMap::from([("password".to_owned(), b"s3cr3t".to_vec())])))
        }
    }

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "ns1", "uid": "u1", "labels": { "app": "web", "tier": "fe" } },
            "spec": { "containers": [{ "name": "c" }], "volumes": volumes },
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn config_secret_downward_and_empty_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = pod(json!([
            { "name": "cfg", "configMap": { "name": "cfg", "items": [{ "key": "a.conf", "path": "conf/a", "mode": 0o600 }] } },
            { "name": "pw", "secret": { "secretName": "pw" } },
            { "name": "info", "downwardAPI": { "items": [
                { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } },
                { "path": "name", "fieldRef": { "fieldPath": "metadata.name" } },
            ] } },
            { "name": "scratch", "emptyDir": {} },
        ]));
        let vols = prepare(&p, dir.path(), &Fake).await.unwrap();
        assert_eq!(std::fs::read(vols["cfg"].join("conf/a")).unwrap(), b"A");
        assert!(!vols["cfg"].join("b.conf").exists());
        assert_eq!(
            std::fs::read(vols["pw"].join("password")).unwrap(),
            b"s3cr3t"
        );
        assert_eq!(
            std::fs::read_to_string(vols["info"].join("labels")).unwrap(),
            "app=\"web\"\ntier=\"fe\""
        );
        assert_eq!(
            std::fs::read_to_string(vols["info"].join("name")).unwrap(),
            "p"
        );
        assert!(vols["scratch"].is_dir());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(vols["cfg"].join("conf/a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::fs::symlink_metadata(vols["cfg"].join("conf"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[tokio::test]
    async fn missing_objects_and_escaping_paths_fail_naming_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let err = prepare(
            &pod(json!([{ "name": "x", "configMap": { "name": "nope" } }])),
            dir.path(),
            &Fake,
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("\"x\"") && err.contains("configmap \"nope\" not found"),
            "{err}"
        );
        let ok = prepare(
            &pod(json!([{ "name": "x", "configMap": { "name": "nope", "optional": true } }])),
            dir.path(),
            &Fake,
        )
        .await;
        assert!(ok.is_ok());
        let err = prepare(
            &pod(json!([{ "name": "x", "configMap": { "name": "cfg", "items": [{ "key": "a.conf", "path": "../../etc/passwd" }] } }])),
            dir.path(),
            &Fake,
        )
        .await
        .unwrap_err();
        assert!(err.contains("relative"), "{err}");
        let err = prepare(&pod(json!([{ "name": "h", "hostPath": { "path": "/nonexistent-podrun", "type": "Directory" } }])), dir.path(), &Fake)
            .await
            .unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn publish_swaps_atomically_and_drops_stale_entries() {
        let dir = tempfile::tempdir().unwrap();
        let f = |p: &str, d: &str| File {
            path: p.into(),
            data: d.as_bytes().to_vec(),
            mode: 0o644,
        };
        publish(dir.path(), &[f("a", "1"), f("b", "2")]).unwrap();
        let first = std::fs::read_link(dir.path().join("..data")).unwrap();
        publish(dir.path(), &[f("a", "1"), f("b", "2")]).unwrap();
        assert_eq!(
            std::fs::read_link(dir.path().join("..data")).unwrap(),
            first,
            "unchanged content is not rewritten"
        );
        publish(dir.path(), &[f("a", "3")]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(dir.path().join("b")).is_err());
        let stamps = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with("..") && e.file_name() != "..data"
            })
            .count();
        assert_eq!(stamps, 1);
    }
}
