//! Names, ConfigMap and Secret keys, and object metadata, with the API server's limits.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Doc;
use crate::spec::SpecError;

/// [a-z0-9-]+, starting and ending alphanumeric: the shape of an RFC 1123 label.
pub(super) fn dns1123_label_shaped(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !s.is_empty()
        && s.bytes().all(|b| alnum(b) || b == b'-')
        && alnum(s.as_bytes()[0])
        && alnum(s.as_bytes()[s.len() - 1])
}

/// RFC 1123 label: at most 63 of [a-z0-9-], starting and ending alphanumeric.
pub(crate) fn dns1123_label_error(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > 63 {
        return Some(format!("{s:?}: must be no more than 63 characters"));
    }
    if !dns1123_label_shaped(s) {
        return Some(format!(
            "{s:?}: must be a DNS-1123 label (lower case alphanumerics and '-', starting and ending with an alphanumeric)"
        ));
    }
    None
}

/// RFC 1123 subdomain as Kubernetes checks it (IsDNS1123Subdomain): at most 253
/// characters, dot-separated parts shaped like labels. The parts have no length limit of
/// their own, so a pod name may be one 253-character word.
pub(crate) fn dns1123_subdomain_error(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > 253 {
        return Some(format!("{s:?}: must be no more than 253 characters"));
    }
    if !s.split('.').all(dns1123_label_shaped) {
        return Some(format!(
            "{s:?}: must be a DNS-1123 subdomain (lower case alphanumerics, '-' and '.', starting and ending with an alphanumeric)"
        ));
    }
    None
}

/// The data of one ConfigMap or Secret within [`MAX_DATA_SIZE`].
pub(super) fn check_data_size(
    doc: &Doc,
    field: &str,
    what: &str,
    size: usize,
) -> Result<(), SpecError> {
    if size > MAX_DATA_SIZE {
        return Err(doc.err(
            field,
            format!(
                "too long: {size} bytes; {what} together may have at most {MAX_DATA_SIZE} bytes (1 MiB)"
            ),
        ));
    }
    Ok(())
}

/// A ConfigMap/Secret key: [-._a-zA-Z0-9]+, not "." or "..".
pub(super) fn config_key_error(k: &str) -> Option<String> {
    if k.is_empty() || k.len() > 253 {
        return Some(format!("{k:?}: must be 1 to 253 characters"));
    }
    if k == "." || k == ".." {
        return Some(format!("{k:?}: must not be '.' or '..'"));
    }
    if !k
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some(format!(
            "{k:?}: must consist of alphanumerics, '-', '_' or '.'"
        ));
    }
    None
}

/// A relative file path inside a volume: not absolute, no ".." component.
pub(crate) fn volume_item_path_error(p: &str) -> Option<String> {
    if p.is_empty() {
        return Some("must not be empty".into());
    }
    if p.starts_with('/') {
        return Some(format!("{p:?}: must be a relative path"));
    }
    if p.split('/').any(|c| c == "..") {
        return Some(format!("{p:?}: must not contain '..'"));
    }
    None
}

/// kube-apiserver's TotalAnnotationSizeLimitB: keys and values of one object together.
pub(crate) const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// corev1.MaxSecretSize, the limit of a ConfigMap's or a Secret's data as a whole.
pub(crate) const MAX_DATA_SIZE: usize = 1024 * 1024;

pub(super) fn check_object_meta(doc: &Doc, meta: &ObjectMeta) -> Result<(), SpecError> {
    let annotations: usize = meta
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if annotations > TOTAL_ANNOTATION_SIZE_LIMIT {
        return Err(doc.err(
            "metadata.annotations",
            format!(
                "too long: {annotations} bytes; keys and values together may have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes (256 KiB)"
            ),
        ));
    }
    match meta.name.as_deref() {
        None => return Err(doc.err("metadata.name", "missing")),
        Some(n) => {
            if let Some(e) = dns1123_subdomain_error(n) {
                return Err(doc.err("metadata.name", e));
            }
        }
    }
    if let Some(ns) = meta.namespace.as_deref() {
        if let Some(e) = dns1123_label_error(ns) {
            return Err(doc.err("metadata.namespace", e));
        }
    }
    Ok(())
}
