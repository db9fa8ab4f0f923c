//! Pod volumes, and the ConfigMaps and Secrets they and env vars refer to.

use k8s_openapi::api::core::v1::{KeyToPath, Volume};

use super::names::volume_item_path_error;
use super::Doc;
use crate::spec::{PodManifest, SpecError};

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
pub(super) fn check_items(
    doc: &Doc,
    field: &str,
    items: Option<&[KeyToPath]>,
) -> Result<(), SpecError> {
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

pub(super) fn check_mode(doc: &Doc, field: &str, mode: i32) -> Result<(), SpecError> {
    if !(0..=0o777).contains(&mode) {
        return Err(doc.err(
            field,
            format!("{mode}: must be a number between 0 and 0777 (octal), both inclusive"),
        ));
    }
    Ok(())
}

/// A reference to a ConfigMap or Secret that must be in the file unless optional.
pub(super) fn check_ref(
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

pub(super) fn config_map_keys<'a>(m: &'a PodManifest, name: &str) -> Option<Vec<&'a String>> {
    m.config_maps.get(name).map(|cm| {
        cm.data
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .chain(cm.binary_data.iter().flatten().map(|(k, _)| k))
            .collect()
    })
}

pub(super) fn secret_keys<'a>(m: &'a PodManifest, name: &str) -> Option<Vec<&'a String>> {
    m.secrets.get(name).map(|s| {
        s.data
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .chain(s.string_data.iter().flatten().map(|(k, _)| k))
            .collect()
    })
}

pub(super) fn check_volume(
    doc: &Doc,
    m: &PodManifest,
    field: &str,
    v: &Volume,
) -> Result<(), SpecError> {
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
