//! The API server's validation of the objects in a manifest, as far as podrun needs it to
//! refuse a bad file up front instead of failing halfway through starting a pod.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{PodManifest, SpecError};

mod containers;
mod names;
mod volumes;

use containers::check_container;
use names::{check_data_size, check_object_meta, config_key_error, dns1123_label_error};
pub(crate) use names::{dns1123_subdomain_error, volume_item_path_error};
use volumes::check_volume;

/// How each document is named in messages ("document 2 (ConfigMap app-config)").
#[derive(Debug, Default)]
pub(crate) struct DocLabels {
    pub pod: String,
    pub config_maps: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
}

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
