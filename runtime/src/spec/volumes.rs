//! The files of configMap, secret and projected volumes, computed from the manifest so
//! the caller only has to write them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{KeyToPath, Volume};

use super::validate::volume_item_path_error;
use super::{PodManifest, SpecError};

/// 0644, Kubernetes' default for configMap, secret and projected volumes.
const DEFAULT_MODE: i32 = 0o644;

type VolumeFile = (PathBuf, Vec<u8>, u32);

/// Files of one source: all keys, or only `items` (key -> path, optional mode).
fn source_files(
    volume: &str,
    what: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: i32,
) -> Result<Vec<VolumeFile>, SpecError> {
    let err = |reason: String| SpecError::VolumeFiles {
        volume: volume.to_string(),
        reason,
    };
    let Some(data) = data else {
        if optional {
            return Ok(Vec::new());
        }
        return Err(err(format!("{what} not found")));
    };
    let mode = |m: Option<i32>| -> Result<u32, SpecError> {
        let m = m.unwrap_or(default_mode);
        if !(0..=0o777).contains(&m) {
            return Err(err(format!("mode {m:#o} is not between 0 and 0777")));
        }
        Ok(m as u32)
    };
    let mut files = Vec::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                files.push((PathBuf::from(k), v, mode(None)?));
            }
        }
        Some(items) => {
            for item in items {
                if let Some(e) = volume_item_path_error(&item.path) {
                    return Err(err(format!("item path {e}")));
                }
                match data.get(&item.key) {
                    Some(v) => files.push((PathBuf::from(&item.path), v.clone(), mode(item.mode)?)),
                    None if optional => {}
                    None => return Err(err(format!("{what} has no key {:?}", item.key))),
                }
            }
        }
    }
    Ok(files)
}

fn config_map_data(m: &PodManifest, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    m.config_maps.get(name).map(|cm| {
        let mut d: BTreeMap<String, Vec<u8>> = cm
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        for (k, v) in cm.binary_data.iter().flatten() {
            d.insert(k.clone(), v.0.clone());
        }
        d
    })
}

fn secret_data(m: &PodManifest, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    m.secrets.get(name).map(|s| {
        let mut d: BTreeMap<String, Vec<u8>> = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        for (k, v) in s.string_data.iter().flatten() {
            d.insert(k.clone(), v.clone().into_bytes());
        }
        d
    })
}

/// The files a configMap, secret or projected (configMap and secret sources) volume
/// holds: (path relative to the volume root, content, mode). `items` select keys and
/// rename them; modes come from the item, else `defaultMode`, else 0644. A missing object
/// or key is an error unless the source is `optional: true`. Item paths that are absolute
/// or contain ".." are refused so nothing is written outside the volume.
pub fn volume_files(volume: &Volume, m: &PodManifest) -> Result<Vec<VolumeFile>, SpecError> {
    let name = volume.name.as_str();
    if let Some(cm) = &volume.config_map {
        return source_files(
            name,
            &format!("ConfigMap {:?}", cm.name),
            config_map_data(m, &cm.name),
            cm.items.as_deref(),
            cm.optional == Some(true),
            cm.default_mode.unwrap_or(DEFAULT_MODE),
        );
    }
    if let Some(s) = &volume.secret {
        let secret = s.secret_name.as_deref().unwrap_or_default();
        return source_files(
            name,
            &format!("Secret {secret:?}"),
            secret_data(m, secret),
            s.items.as_deref(),
            s.optional == Some(true),
            s.default_mode.unwrap_or(DEFAULT_MODE),
        );
    }
    if let Some(p) = &volume.projected {
        let default_mode = p.default_mode.unwrap_or(DEFAULT_MODE);
        let mut files = Vec::new();
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                files.extend(source_files(
                    name,
                    &format!("ConfigMap {:?}", cm.name),
                    config_map_data(m, &cm.name),
                    cm.items.as_deref(),
                    cm.optional == Some(true),
                    default_mode,
                )?);
            } else if let Some(s) = &src.secret {
                files.extend(source_files(
                    name,
                    &format!("Secret {:?}", s.name),
                    secret_data(m, &s.name),
                    s.items.as_deref(),
                    s.optional == Some(true),
                    default_mode,
                )?);
            } else {
                return Err(SpecError::VolumeFiles {
                    volume: name.to_string(),
                    reason: "only configMap and secret projections are supported".to_string(),
                });
            }
        }
        return Ok(files);
    }
    Err(SpecError::VolumeFiles {
        volume: name.to_string(),
        reason: "not a configMap, secret or projected volume".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_manifest;
    use std::path::Path;

    const TEXT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers: [{name: c, image: x}]
  volumes:
  - {name: all, configMap: {name: cfg}}
  - name: some
    configMap:
      name: cfg
      defaultMode: 0o600
      items: [{key: a.conf, path: conf/a.conf}, {key: bin, path: b, mode: 0o755}]
  - {name: sec, secret: {secretName: s}}
  - {name: opt, configMap: {name: nothere, optional: true}}
  - name: proj
    projected:
      defaultMode: 0o640
      sources:
      - configMap: {name: cfg, items: [{key: a.conf, path: a}]}
      - secret: {name: s}
  - {name: empty, emptyDir: {}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {a.conf: "x=1\n"}
binaryData: {bin: AAE=}
---
apiVersion: v1
kind: Secret
metadata: {name: s}
data: {key: czNjcjN0}
stringData: {plain: text}
"#;

    fn files(name: &str) -> Result<Vec<(String, Vec<u8>, u32)>, SpecError> {
        let m = parse_manifest(TEXT, Path::new("v.yaml")).unwrap();
        let v = m.pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let v = v.iter().find(|v| v.name == name).unwrap();
        volume_files(v, &m).map(|f| {
            f.into_iter()
                .map(|(p, c, m)| (p.display().to_string(), c, m))
                .collect()
        })
    }

    #[test]
    fn config_map_all_keys_default_mode() {
        assert_eq!(
            files("all").unwrap(),
            vec![
                ("a.conf".into(), b"x=1\n".to_vec(), 0o644),
                ("bin".into(), vec![0, 1], 0o644)
            ]
        );
    }

    #[test]
    fn items_select_rename_and_set_modes() {
        assert_eq!(
            files("some").unwrap(),
            vec![
                ("conf/a.conf".into(), b"x=1\n".to_vec(), 0o600),
                ("b".into(), vec![0, 1], 0o755)
            ]
        );
    }

    #[test]
    fn secret_data_and_string_data() {
        assert_eq!(
            files("sec").unwrap(),
            vec![
                ("key".into(), b"s3cr3t".to_vec(), 0o644),
                ("plain".into(), b"text".to_vec(), 0o644)
            ]
        );
    }

    #[test]
    fn optional_missing_is_empty_and_projected_merges() {
        assert_eq!(files("opt").unwrap(), vec![]);
        assert_eq!(
            files("proj").unwrap(),
            vec![
                ("a".into(), b"x=1\n".to_vec(), 0o640),
                ("key".into(), b"s3cr3t".to_vec(), 0o640),
                ("plain".into(), b"text".to_vec(), 0o640),
            ]
        );
        let e = files("empty").unwrap_err().to_string();
        assert!(e.contains("volume empty: not a configMap"), "{e}");
    }

    #[test]
    fn refuses_escaping_paths_and_missing_keys() {
        let m = parse_manifest(TEXT, Path::new("v.yaml")).unwrap();
        let mut v = m.pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[1].clone();
        for (path, want) in [
            ("/etc/passwd", "must be a relative path"),
            ("../x", "must not contain '..'"),
            ("a/../../x", "must not contain '..'"),
            ("", "must not be empty"),
        ] {
            v.config_map.as_mut().unwrap().items.as_mut().unwrap()[0].path = path.into();
            let e = volume_files(&v, &m).unwrap_err().to_string();
            assert!(e.contains(want), "{path}: {e}");
        }
        let mut v = m.pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[1].clone();
        v.config_map.as_mut().unwrap().items.as_mut().unwrap()[0].key = "nokey".into();
        let e = volume_files(&v, &m).unwrap_err().to_string();
        assert_eq!(e, "volume some: ConfigMap \"cfg\" has no key \"nokey\"");
        v.config_map.as_mut().unwrap().optional = Some(true);
        assert_eq!(volume_files(&v, &m).unwrap().len(), 1);
        v.config_map.as_mut().unwrap().name = "gone".into();
        v.config_map.as_mut().unwrap().optional = None;
        let e = volume_files(&v, &m).unwrap_err().to_string();
        assert_eq!(e, "volume some: ConfigMap \"gone\" not found");
    }
}
