//! Reading a manifest file: multi-document YAML into k8s-openapi objects, with unknown
//! fields and type errors reported by their path in the document.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_norway::Value;

use super::defaults::generate_name;
use super::validate::{validate, DocLabels};
use super::{PodManifest, SpecError};

/// The largest manifest file read: etcd refuses requests over 1.5 MiB by default, so a
/// Pod with its ConfigMaps and Secrets, each within the API's limits, fits with room.
/// Anything bigger is refused before parsing.
pub const MAX_MANIFEST_BYTES: u64 = 3 << 20;

/// serde_norway's message when a document's aliases expand too far (its error kinds are
/// private, so the message is what tells this one apart).
const REPETITION_LIMIT: &str = "repetition limit exceeded";

/// Read and validate a manifest file. See [`parse_manifest`].
pub fn load_manifest(path: &Path) -> Result<PodManifest, SpecError> {
    let read_err = |source| SpecError::ReadManifest {
        path: path.to_path_buf(),
        source,
    };
    let too_big = |size: String| {
        SpecError::InvalidManifest {
        path: path.to_path_buf(),
        message: format!(
            "the file is {size} bytes: a manifest may have at most {MAX_MANIFEST_BYTES} bytes (3 MiB)"
        ),
    }
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    // A regular file is measured before reading; a pipe is read only up to the limit.
    if let Ok(meta) = file.metadata() {
        if meta.is_file() && meta.len() > MAX_MANIFEST_BYTES {
            return Err(too_big(meta.len().to_string()));
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_MANIFEST_BYTES + 1),
        &mut text,
    )
    .map_err(read_err)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_big(format!("more than {MAX_MANIFEST_BYTES}")));
    }
    parse_manifest(&text, path)
}

/// Parse and validate a multi-document YAML manifest (`---` separated): exactly one v1
/// Pod and any number of v1 ConfigMaps and Secrets. `source` is only used in messages.
///
/// Every error is one line naming the file, the document and the field path, e.g.
/// `pod.yaml: document 1 (Pod web): spec.containers[0].imagePullPolcy: unknown field`.
pub fn parse_manifest(text: &str, source: &Path) -> Result<PodManifest, SpecError> {
    let mut pod: Option<(Pod, String)> = None;
    let mut labels = DocLabels::default();
    let mut config_maps = BTreeMap::new();
    let mut secrets = BTreeMap::new();

    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        let value = Value::deserialize(document).map_err(|e| {
            if e.to_string() == REPETITION_LIMIT {
                SpecError::YamlBomb {
                    path: source.to_path_buf(),
                    document: number,
                    source: e,
                }
            } else {
                SpecError::ParseYaml {
                    path: source.to_path_buf(),
                    document: number,
                    message: e.to_string(),
                }
            }
        })?;
        let mut value = value;
        octal_modes(&mut value);
        // Empty documents (a leading or trailing `---`) are allowed, as kubectl allows them.
        if value.is_null() {
            continue;
        }
        let invalid = |document: String, field: &str, message: String| SpecError::InvalidField {
            path: source.to_path_buf(),
            document,
            field: field.to_string(),
            message,
        };
        if !value.is_mapping() {
            return Err(invalid(
                format!("document {number}"),
                ".",
                "expected an object with apiVersion and kind".to_string(),
            ));
        }
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let label = match (kind, name) {
            ("", _) => format!("document {number}"),
            (k, "") => format!("document {number} ({k})"),
            (k, n) => format!("document {number} ({k} {n})"),
        };
        const ACCEPTED: &str = "a manifest holds v1 Pod, ConfigMap and Secret objects";
        if api_version.is_empty() {
            return Err(invalid(label, "apiVersion", "missing".to_string()));
        }
        if kind.is_empty() {
            return Err(invalid(label, "kind", "missing".to_string()));
        }
        if api_version != "v1" {
            return Err(invalid(
                label,
                "apiVersion",
                format!("unknown apiVersion {api_version:?} for kind {kind}: {ACCEPTED}"),
            ));
        }
        match kind {
            "Pod" => {
                let p: Pod = decode(value, source, &label)?;
                if let Some((first, first_label)) = &pod {
                    return Err(SpecError::InvalidManifest {
                        path: source.to_path_buf(),
                        message: format!(
                            "{label}: a second Pod ({first_label} is Pod {}); a manifest holds exactly one Pod",
                            first.metadata.name.as_deref().unwrap_or_default()
                        ),
                    });
                }
                labels.pod = label.clone();
                pod = Some((p, label));
            }
            "ConfigMap" => {
                let cm: ConfigMap = decode(value, source, &label)?;
                let name = cm.metadata.name.clone().unwrap_or_default();
                if config_maps.insert(name.clone(), cm).is_some() {
                    return Err(invalid(
                        label,
                        "metadata.name",
                        format!("duplicate ConfigMap name {name:?}"),
                    ));
                }
                labels.config_maps.insert(name, label);
            }
            "Secret" => {
                let s: Secret = decode(value, source, &label)?;
                let name = s.metadata.name.clone().unwrap_or_default();
                if secrets.insert(name.clone(), s).is_some() {
                    return Err(invalid(
                        label,
                        "metadata.name",
                        format!("duplicate Secret name {name:?}"),
                    ));
                }
                labels.secrets.insert(name, label);
            }
            other => {
                return Err(invalid(
                    label,
                    "kind",
                    format!("unknown kind {other:?}: {ACCEPTED}"),
                ))
            }
        }
    }

    let Some((mut pod, _)) = pod else {
        return Err(SpecError::InvalidManifest {
            path: source.to_path_buf(),
            message: "no Pod in the file (expected one document with apiVersion: v1, kind: Pod)"
                .to_string(),
        });
    };
    if pod.metadata.name.is_none() {
        if let Some(prefix) = pod.metadata.generate_name.as_deref() {
            pod.metadata.name = Some(generate_name(prefix));
        }
    }
    let manifest = PodManifest {
        pod,
        config_maps,
        secrets,
        source: source.to_path_buf(),
    };
    validate(&manifest, &labels)?;
    Ok(manifest)
}

/// Deserialize one document. k8s-openapi skips keys it does not know, which would hide a
/// typo like `imagePullPolcy`; serde_ignored reports those, and serde_path_to_error gives
/// the path of a type error.
fn decode<T: DeserializeOwned>(value: Value, source: &Path, label: &str) -> Result<T, SpecError> {
    let mut unknown: Vec<String> = Vec::new();
    let result: Result<T, _> = {
        let mut record = |p: serde_ignored::Path| unknown.push(ignored_path(&p));
        let de = serde_ignored::Deserializer::new(value, &mut record);
        serde_path_to_error::deserialize(de)
    };
    let invalid = |field: String, message: String| SpecError::InvalidField {
        path: source.to_path_buf(),
        document: label.to_string(),
        field,
        message,
    };
    let object = result.map_err(|e| invalid(field_path(e.path()), e.inner().to_string()))?;
    if let Some(field) = unknown.into_iter().next() {
        return Err(invalid(field, "unknown field".to_string()));
    }
    Ok(object)
}

/// Fields of the accepted kinds whose values are maps: their entries are named by key,
/// `metadata.labels[app]`, as kube-apiserver names them.
const MAP_FIELDS: &[&str] = &[
    "annotations",
    "binaryData",
    "data",
    "labels",
    "limits",
    "nodeSelector",
    "overhead",
    "requests",
    "stringData",
    "volumeAttributes",
];

/// The path of a type error in kube-apiserver's shape: list items by position
/// (`spec.containers[0].ports[1]`), map entries by key (`resources.limits[cpu]`).
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    let mut in_map = false;
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                in_map = false;
            }
            Segment::Map { key } if in_map => {
                out.push_str(&format!("[{key}]"));
                in_map = false;
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
                in_map = MAP_FIELDS.contains(&key.as_str());
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
                in_map = false;
            }
        }
    }
    if out.is_empty() {
        ".".to_string()
    } else {
        out
    }
}

/// `spec.containers[0].imagePullPolcy`, the same shape serde_path_to_error prints.
fn ignored_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => match ignored_path(parent) {
            pre if pre.is_empty() => key.clone(),
            pre => format!("{pre}.{key}"),
        },
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

/// Kubernetes reads YAML 1.1, where `defaultMode: 0644` is octal (420); serde_norway
/// follows YAML 1.2 and sees the string "0644". File modes are the one place manifests
/// rely on that, so convert them back before the typed decode.
fn octal_modes(v: &mut Value) {
    match v {
        Value::Mapping(map) => {
            for (k, child) in map.iter_mut() {
                if matches!(k.as_str(), Some("defaultMode" | "mode")) {
                    if let Some(n) = child.as_str().and_then(yaml11_octal) {
                        *child = Value::Number(n.into());
                        continue;
                    }
                }
                octal_modes(child);
            }
        }
        Value::Sequence(seq) => seq.iter_mut().for_each(octal_modes),
        Value::Tagged(t) => octal_modes(&mut t.value),
        _ => {}
    }
}

/// "0644" -> 420: a YAML 1.1 octal integer (leading 0, octal digits only).
fn yaml11_octal(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('0')?;
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    i64::from_str_radix(digits, 8).ok()
}

#[cfg(test)]
mod tests;
