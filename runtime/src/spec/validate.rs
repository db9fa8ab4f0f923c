//! The API server's validation of the objects in a manifest, as far as podrun needs it to
//! refuse a bad file up front instead of failing halfway through starting a pod.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, KeyToPath, ResourceRequirements, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::quantity::{parse_quantity_bytes, parse_quantity_milli, parse_quantity_milli_cpu};
use super::{PodManifest, SpecError};

/// How each document is named in messages ("document 2 (ConfigMap app-config)").
#[derive(Debug, Default)]
pub(crate) struct DocLabels {
    pub pod: String,
    pub config_maps: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
}

pub(crate) const HOST_PATH_TYPES: &[&str] = &[
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];

/// `fieldRef.fieldPath` values the kubelet resolves for env vars.
pub(crate) const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
    "status.podIPs",
    "status.hostIP",
    "status.hostIPs",
];

pub(crate) const RESOURCE_FIELD_REFS: &[&str] = &[
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
];

/// Where an error is reported: the file and the document.
struct Doc<'a> {
    path: &'a Path,
    label: &'a str,
}

impl Doc<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError::InvalidField {
            path: self.path.to_path_buf(),
            document: self.label.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// [a-z0-9-]+, starting and ending alphanumeric: the shape of an RFC 1123 label.
fn dns1123_label_shaped(s: &str) -> bool {
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
fn check_data_size(doc: &Doc, field: &str, what: &str, size: usize) -> Result<(), SpecError> {
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
fn config_key_error(k: &str) -> Option<String> {
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

fn check_object_meta(doc: &Doc, meta: &ObjectMeta) -> Result<(), SpecError> {
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

pub(crate) fn validate(m: &PodManifest, labels: &DocLabels) -> Result<(), SpecError> {
    let pod_ns = m.pod.metadata.namespace.as_deref();
    for (name, cm) in &m.config_maps {
        let doc = Doc {
            path: &m.source,
            label: &labels.config_maps[name],
        };
        check_object_meta(&doc, &cm.metadata)?;
        check_same_namespace(&doc, cm.metadata.namespace.as_deref(), pod_ns)?;
        let data = cm.data.iter().flatten().map(|(k, _)| k);
        let binary = cm.binary_data.iter().flatten().map(|(k, _)| k);
        for k in data.clone() {
            if let Some(e) = config_key_error(k) {
                return Err(doc.err(format!("data[{k}]"), e));
            }
        }
        for k in binary {
            if let Some(e) = config_key_error(k) {
                return Err(doc.err(format!("binaryData[{k}]"), e));
            }
            if data.clone().any(|d| d == k) {
                return Err(doc.err(format!("binaryData[{k}]"), "duplicate of a key in data"));
            }
        }
        let size: usize = cm
            .data
            .iter()
            .flatten()
            .map(|(_, v)| v.len())
            .sum::<usize>()
            + cm.binary_data
                .iter()
                .flatten()
                .map(|(_, v)| v.0.len())
                .sum::<usize>();
        check_data_size(&doc, "data", "data and binaryData", size)?;
    }
    for (name, s) in &m.secrets {
        let doc = Doc {
            path: &m.source,
            label: &labels.secrets[name],
        };
        check_object_meta(&doc, &s.metadata)?;
        check_same_namespace(&doc, s.metadata.namespace.as_deref(), pod_ns)?;
        for (field, keys) in [
            (
                "data",
                s.data.iter().flatten().map(|(k, _)| k).collect::<Vec<_>>(),
            ),
            (
                "stringData",
                s.string_data.iter().flatten().map(|(k, _)| k).collect(),
            ),
        ] {
            for k in keys {
                if let Some(e) = config_key_error(k) {
                    return Err(doc.err(format!("{field}[{k}]"), e));
                }
            }
        }
        // stringData is merged into data on write, so both count.
        let size: usize = s
            .data
            .iter()
            .flatten()
            .map(|(_, v)| v.0.len())
            .sum::<usize>()
            + s.string_data
                .iter()
                .flatten()
                .map(|(_, v)| v.len())
                .sum::<usize>();
        check_data_size(&doc, "data", "data and stringData", size)?;
    }

    let doc = Doc {
        path: &m.source,
        label: &labels.pod,
    };
    check_object_meta(&doc, &m.pod.metadata)?;
    let Some(spec) = m.pod.spec.as_ref() else {
        return Err(doc.err("spec", "missing"));
    };
    if spec.containers.is_empty() {
        return Err(doc.err("spec.containers", "must have at least one container"));
    }
    if let Some(p) = spec.restart_policy.as_deref() {
        if !["Always", "OnFailure", "Never"].contains(&p) {
            return Err(doc.err(
                "spec.restartPolicy",
                format!("unsupported value {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
            ));
        }
    }
    if let Some(p) = spec.dns_policy.as_deref() {
        if !["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"].contains(&p) {
            return Err(doc.err(
                "spec.dnsPolicy",
                format!("unsupported value {p:?}: supported values: \"ClusterFirst\", \"ClusterFirstWithHostNet\", \"Default\", \"None\""),
            ));
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds {
        if g < 0 {
            return Err(doc.err(
                "spec.terminationGracePeriodSeconds",
                "must be greater than or equal to 0",
            ));
        }
    }

    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let mut volume_names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        if let Some(e) = dns1123_label_error(&v.name) {
            return Err(doc.err(format!("{field}.name"), e));
        }
        if !volume_names.insert(v.name.as_str()) {
            return Err(doc.err(
                format!("{field}.name"),
                format!("duplicate volume name {:?}", v.name),
            ));
        }
        check_volume(&doc, m, &field, v)?;
    }

    let init = spec.init_containers.as_deref().unwrap_or_default();
    let mut container_names = BTreeSet::new();
    for (list, containers) in [
        ("initContainers", init),
        ("containers", &spec.containers[..]),
    ] {
        for (i, c) in containers.iter().enumerate() {
            let field = format!("spec.{list}[{i}]");
            if let Some(e) = dns1123_label_error(&c.name) {
                return Err(doc.err(format!("{field}.name"), e));
            }
            if !container_names.insert(c.name.as_str()) {
                return Err(doc.err(
                    format!("{field}.name"),
                    format!("duplicate container name {:?}", c.name),
                ));
            }
            check_container(&doc, m, &field, c, list == "initContainers", &volume_names)?;
        }
    }
    Ok(())
}

fn check_same_namespace(
    doc: &Doc,
    ns: Option<&str>,
    pod_ns: Option<&str>,
) -> Result<(), SpecError> {
    let (ns, pod_ns) = (ns.unwrap_or("default"), pod_ns.unwrap_or("default"));
    if ns != pod_ns {
        return Err(doc.err(
            "metadata.namespace",
            format!("{ns:?} differs from the Pod's namespace {pod_ns:?}"),
        ));
    }
    Ok(())
}

fn check_items(doc: &Doc, field: &str, items: Option<&[KeyToPath]>) -> Result<(), SpecError> {
    for (j, item) in items.unwrap_or_default().iter().enumerate() {
        if item.key.is_empty() {
            return Err(doc.err(format!("{field}.items[{j}].key"), "must not be empty"));
        }
        if let Some(e) = volume_item_path_error(&item.path) {
            return Err(doc.err(format!("{field}.items[{j}].path"), e));
        }
        if let Some(mode) = item.mode {
            check_mode(doc, &format!("{field}.items[{j}].mode"), mode)?;
        }
    }
    Ok(())
}

fn check_mode(doc: &Doc, field: &str, mode: i32) -> Result<(), SpecError> {
    if !(0..=0o777).contains(&mode) {
        return Err(doc.err(
            field,
            format!("{mode}: must be a number between 0 and 0777 (octal), both inclusive"),
        ));
    }
    Ok(())
}

/// A reference to a ConfigMap or Secret that must be in the file unless optional.
fn check_ref(
    doc: &Doc,
    field: &str,
    kind: &str,
    name: &str,
    key: Option<&str>,
    optional: Option<bool>,
    keys: Option<Vec<&String>>,
) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(doc.err(field, format!("{kind} name must not be empty")));
    }
    if optional == Some(true) {
        return Ok(());
    }
    let Some(keys) = keys else {
        return Err(doc.err(
            field,
            format!(
                "{kind} {name:?} is not in the manifest (add it to the file or set optional: true)"
            ),
        ));
    };
    if let Some(key) = key {
        if !keys.iter().any(|k| *k == key) {
            return Err(doc.err(
                field,
                format!("{kind} {name:?} has no key {key:?} (add it or set optional: true)"),
            ));
        }
    }
    Ok(())
}

fn config_map_keys<'a>(m: &'a PodManifest, name: &str) -> Option<Vec<&'a String>> {
    m.config_maps.get(name).map(|cm| {
        cm.data
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .chain(cm.binary_data.iter().flatten().map(|(k, _)| k))
            .collect()
    })
}

fn secret_keys<'a>(m: &'a PodManifest, name: &str) -> Option<Vec<&'a String>> {
    m.secrets.get(name).map(|s| {
        s.data
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .chain(s.string_data.iter().flatten().map(|(k, _)| k))
            .collect()
    })
}

fn check_volume(doc: &Doc, m: &PodManifest, field: &str, v: &Volume) -> Result<(), SpecError> {
    if let Some(hp) = &v.host_path {
        let t = hp.type_.as_deref().unwrap_or_default();
        if !HOST_PATH_TYPES.contains(&t) {
            return Err(doc.err(
                format!("{field}.hostPath.type"),
                format!("unsupported value {t:?}: supported values: \"\", \"DirectoryOrCreate\", \"Directory\", \"FileOrCreate\", \"File\", \"Socket\", \"CharDevice\", \"BlockDevice\""),
            ));
        }
        if !hp.path.starts_with('/') {
            return Err(doc.err(format!("{field}.hostPath.path"), "must be an absolute path"));
        }
    }
    if let Some(cm) = &v.config_map {
        let f = format!("{field}.configMap");
        check_items(doc, &f, cm.items.as_deref())?;
        if let Some(mode) = cm.default_mode {
            check_mode(doc, &format!("{f}.defaultMode"), mode)?;
        }
        check_ref(
            doc,
            &format!("{f}.name"),
            "ConfigMap",
            &cm.name,
            None,
            cm.optional,
            config_map_keys(m, &cm.name),
        )?;
        for (j, item) in cm.items.iter().flatten().enumerate() {
            check_ref(
                doc,
                &format!("{f}.items[{j}].key"),
                "ConfigMap",
                &cm.name,
                Some(&item.key),
                cm.optional,
                config_map_keys(m, &cm.name),
            )?;
        }
    }
    if let Some(s) = &v.secret {
        let f = format!("{field}.secret");
        check_items(doc, &f, s.items.as_deref())?;
        if let Some(mode) = s.default_mode {
            check_mode(doc, &format!("{f}.defaultMode"), mode)?;
        }
        let name = s.secret_name.as_deref().unwrap_or_default();
        check_ref(
            doc,
            &format!("{f}.secretName"),
            "Secret",
            name,
            None,
            s.optional,
            secret_keys(m, name),
        )?;
        for (j, item) in s.items.iter().flatten().enumerate() {
            check_ref(
                doc,
                &format!("{f}.items[{j}].key"),
                "Secret",
                name,
                Some(&item.key),
                s.optional,
                secret_keys(m, name),
            )?;
        }
    }
    if let Some(p) = &v.projected {
        if let Some(mode) = p.default_mode {
            check_mode(doc, &format!("{field}.projected.defaultMode"), mode)?;
        }
        for (j, src) in p.sources.iter().flatten().enumerate() {
            let f = format!("{field}.projected.sources[{j}]");
            if let Some(cm) = &src.config_map {
                let f = format!("{f}.configMap");
                check_items(doc, &f, cm.items.as_deref())?;
                check_ref(
                    doc,
                    &format!("{f}.name"),
                    "ConfigMap",
                    &cm.name,
                    None,
                    cm.optional,
                    config_map_keys(m, &cm.name),
                )?;
            }
            if let Some(s) = &src.secret {
                let f = format!("{f}.secret");
                check_items(doc, &f, s.items.as_deref())?;
                check_ref(
                    doc,
                    &format!("{f}.name"),
                    "Secret",
                    &s.name,
                    None,
                    s.optional,
                    secret_keys(m, &s.name),
                )?;
            }
        }
    }
    Ok(())
}

/// A container's requests and limits as ValidateResourceRequirements checks them: known
/// resource names, non-negative quantities (whole units for extended resources),
/// requests at most their limits (equal for hugepages and extended resources, which
/// need a limit), hugepages sized in whole pages and only next to cpu or memory.
fn check_resources(doc: &Doc, field: &str, r: &ResourceRequirements) -> Result<(), SpecError> {
    use super::resource_names::{
        container_resource_name_error, huge_page_size, is_extended, is_huge_pages,
        overcommit_allowed,
    };
    let parse = |name: &str, q: &str| -> Result<i128, SpecError> {
        let invalid = |reason: &str| SpecError::InvalidQuantity {
            value: q.to_string(),
            reason: reason.to_string(),
        };
        let v = match name {
            "cpu" => parse_quantity_milli_cpu(q).map(|v| v as i128 * 1000),
            _ if name == "memory" || name == "ephemeral-storage" || is_huge_pages(name) => {
                parse_quantity_bytes(q).map(|v| v as i128 * 1000)
            }
            _ => parse_quantity_milli(q),
        }?;
        if v < 0 {
            return Err(invalid("must not be negative"));
        }
        if is_extended(name) && v % 1000 != 0 {
            return Err(invalid("must be an integer"));
        }
        if let Some(page) = is_huge_pages(name).then(|| huge_page_size(name)) {
            let whole = page.is_some_and(|p| (v / 1000) % i128::from(p) == 0 && v % 1000 == 0);
            if !whole {
                return Err(invalid(&format!(
                    "is not a positive integer multiple of {name}"
                )));
            }
        }
        Ok(v)
    };
    let (mut cpu_or_memory, mut huge_pages) = (false, false);
    let mut limits = BTreeMap::new();
    for (name, q) in r.limits.iter().flatten() {
        let at = format!("{field}.limits[{name}]");
        if let Some(e) = container_resource_name_error(name) {
            return Err(doc.err(at, e));
        }
        let v = parse(name, &q.0).map_err(|e| doc.err(&at, e.to_string()))?;
        limits.insert(name, (v, &q.0));
        cpu_or_memory |= name == "cpu" || name == "memory";
        huge_pages |= is_huge_pages(name);
    }
    for (name, q) in r.requests.iter().flatten() {
        let at = format!("{field}.requests[{name}]");
        if let Some(e) = container_resource_name_error(name) {
            return Err(doc.err(at, e));
        }
        let v = parse(name, &q.0).map_err(|e| doc.err(&at, e.to_string()))?;
        cpu_or_memory |= name == "cpu" || name == "memory";
        huge_pages |= is_huge_pages(name);
        match limits.get(name) {
            Some(&(limit, l)) if !overcommit_allowed(name) && v != limit => {
                return Err(doc.err(
                    at,
                    format!("{:?} must be equal to the {name} limit {l:?}", q.0),
                ));
            }
            Some(&(limit, l)) if v > limit => {
                return Err(doc.err(
                    at,
                    format!(
                        "{:?} must be less than or equal to the {name} limit {l:?}",
                        q.0
                    ),
                ));
            }
            None if !overcommit_allowed(name) => {
                return Err(doc.err(
                    format!("{field}.limits[{name}]"),
                    "limit must be set for non overcommitable resources",
                ));
            }
            _ => {}
        }
    }
    if huge_pages && !cpu_or_memory {
        return Err(doc.err(field, "hugepages require cpu or memory"));
    }
    Ok(())
}

fn check_container(
    doc: &Doc,
    m: &PodManifest,
    field: &str,
    c: &Container,
    is_init: bool,
    volume_names: &BTreeSet<&str>,
) -> Result<(), SpecError> {
    if c.image.as_deref().unwrap_or_default().trim().is_empty() {
        return Err(doc.err(format!("{field}.image"), "must not be empty"));
    }
    if let Some(p) = c.image_pull_policy.as_deref() {
        if !["Always", "IfNotPresent", "Never"].contains(&p) {
            return Err(doc.err(
                format!("{field}.imagePullPolicy"),
                format!("unsupported value {p:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\""),
            ));
        }
    }
    if let Some(p) = c.restart_policy.as_deref() {
        if !is_init {
            return Err(doc.err(
                format!("{field}.restartPolicy"),
                "may only be set on init containers",
            ));
        }
        if p != "Always" {
            return Err(doc.err(
                format!("{field}.restartPolicy"),
                format!("unsupported value {p:?}: supported values: \"Always\""),
            ));
        }
    }
    for (j, port) in c.ports.iter().flatten().enumerate() {
        let f = format!("{field}.ports[{j}]");
        if !(1..=65535).contains(&port.container_port) {
            return Err(doc.err(
                format!("{f}.containerPort"),
                format!(
                    "{}: must be between 1 and 65535, inclusive",
                    port.container_port
                ),
            ));
        }
        if let Some(hp) = port.host_port {
            if !(0..=65535).contains(&hp) {
                return Err(doc.err(
                    format!("{f}.hostPort"),
                    format!("{hp}: must be between 1 and 65535, inclusive"),
                ));
            }
        }
        if let Some(p) = port.protocol.as_deref() {
            if !["TCP", "UDP", "SCTP"].contains(&p) {
                return Err(doc.err(
                    format!("{f}.protocol"),
                    format!(
                        "unsupported value {p:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
                    ),
                ));
            }
        }
    }
    if let Some(r) = &c.resources {
        check_resources(doc, &format!("{field}.resources"), r)?;
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        let f = format!("{field}.env[{j}]");
        if e.name.is_empty() || e.name.contains('=') {
            return Err(doc.err(
                format!("{f}.name"),
                format!("{:?}: must be non-empty and must not contain '='", e.name),
            ));
        }
        let Some(from) = &e.value_from else { continue };
        if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(doc.err(
                format!("{f}.valueFrom"),
                "may not be specified when `value` is not empty",
            ));
        }
        let sources = [
            from.config_map_key_ref.is_some(),
            from.secret_key_ref.is_some(),
            from.field_ref.is_some(),
            from.resource_field_ref.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(doc.err(
                format!("{f}.valueFrom"),
                "must specify exactly one of configMapKeyRef, secretKeyRef, fieldRef, resourceFieldRef",
            ));
        }
        let f = format!("{f}.valueFrom");
        if let Some(r) = &from.config_map_key_ref {
            check_ref(
                doc,
                &format!("{f}.configMapKeyRef"),
                "ConfigMap",
                &r.name,
                Some(&r.key),
                r.optional,
                config_map_keys(m, &r.name),
            )?;
        }
        if let Some(r) = &from.secret_key_ref {
            check_ref(
                doc,
                &format!("{f}.secretKeyRef"),
                "Secret",
                &r.name,
                Some(&r.key),
                r.optional,
                secret_keys(m, &r.name),
            )?;
        }
        if let Some(r) = &from.field_ref {
            let p = r.field_path.as_str();
            let label_like = ["metadata.labels['", "metadata.annotations['"]
                .iter()
                .any(|pre| p.starts_with(pre) && p.ends_with("']") && p.len() > pre.len() + 2);
            if !ENV_FIELD_PATHS.contains(&p) && !label_like {
                return Err(doc.err(
                    format!("{f}.fieldRef.fieldPath"),
                    format!("unsupported value {p:?}: supported values: metadata.name, metadata.namespace, metadata.uid, metadata.labels['<KEY>'], metadata.annotations['<KEY>'], spec.nodeName, spec.serviceAccountName, status.podIP, status.podIPs, status.hostIP, status.hostIPs"),
                ));
            }
        }
        if let Some(r) = &from.resource_field_ref {
            if !RESOURCE_FIELD_REFS.contains(&r.resource.as_str()) {
                return Err(doc.err(
                    format!("{f}.resourceFieldRef.resource"),
                    format!(
                        "unsupported value {:?}: supported values: {}",
                        r.resource,
                        RESOURCE_FIELD_REFS.join(", ")
                    ),
                ));
            }
            if let Some(d) = &r.divisor {
                let ok = match parse_quantity_milli(&d.0) {
                    Ok(v) => v > 0,
                    Err(_) => false,
                };
                if !ok {
                    return Err(doc.err(
                        format!("{f}.resourceFieldRef.divisor"),
                        format!("{:?}: must be a positive quantity", d.0),
                    ));
                }
            }
        }
    }
    for (j, e) in c.env_from.iter().flatten().enumerate() {
        let f = format!("{field}.envFrom[{j}]");
        match (&e.config_map_ref, &e.secret_ref) {
            (Some(r), None) => check_ref(
                doc,
                &format!("{f}.configMapRef"),
                "ConfigMap",
                &r.name,
                None,
                r.optional,
                config_map_keys(m, &r.name),
            )?,
            (None, Some(r)) => check_ref(
                doc,
                &format!("{f}.secretRef"),
                "Secret",
                &r.name,
                None,
                r.optional,
                secret_keys(m, &r.name),
            )?,
            _ => return Err(doc.err(f, "must specify exactly one of configMapRef, secretRef")),
        }
    }
    let mut mount_paths = BTreeSet::new();
    for (j, vm) in c.volume_mounts.iter().flatten().enumerate() {
        let f = format!("{field}.volumeMounts[{j}]");
        if !volume_names.contains(vm.name.as_str()) {
            return Err(doc.err(
                format!("{f}.name"),
                format!("volume {:?} is not defined in spec.volumes", vm.name),
            ));
        }
        if vm.mount_path.is_empty() {
            return Err(doc.err(format!("{f}.mountPath"), "must not be empty"));
        }
        if !mount_paths.insert(vm.mount_path.trim_end_matches('/')) {
            return Err(doc.err(
                format!("{f}.mountPath"),
                format!("{:?}: must be unique", vm.mount_path),
            ));
        }
    }
    Ok(())
}
