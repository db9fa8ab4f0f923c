//! Containers: names, ports, env, resources, probes and the rest of what the API
//! server checks before a pod is stored.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, ResourceRequirements};

use super::volumes::{check_ref, config_map_keys, secret_keys};
use super::Doc;
use crate::spec::quantity::{parse_quantity_bytes, parse_quantity_milli, parse_quantity_milli_cpu};
use crate::spec::{PodManifest, SpecError};

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
/// A container's requests and limits as ValidateResourceRequirements checks them: known
/// resource names, non-negative quantities (whole units for extended resources),
/// requests at most their limits (equal for hugepages and extended resources, which
/// need a limit), hugepages sized in whole pages and only next to cpu or memory.
pub(super) fn check_resources(
    doc: &Doc,
    field: &str,
    r: &ResourceRequirements,
) -> Result<(), SpecError> {
    use crate::spec::resource_names::{
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

pub(super) fn check_container(
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
