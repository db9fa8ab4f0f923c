//! Resource names as the API server accepts them in a container's requests and limits
//! (validateContainerResourceName): the standard container resources (cpu, memory,
//! ephemeral-storage, hugepages-<size>), names under a kubernetes.io domain, or a fully
//! qualified extended resource (`example.com/gpu`), which is counted in whole units and
//! cannot be overcommitted.

use super::quantity::parse_quantity_bytes;

/// The standard container resources without a domain.
const STANDARD: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// [A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9], at most 63: the name part of a qualified name.
fn qualified_name_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Kubernetes' IsQualifiedName: `[prefix/]name`, the prefix a DNS-1123 subdomain.
pub(crate) fn qualified_name_error(s: &str) -> Option<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Some(format!("{s:?}: prefix part must not be empty"));
        }
        if let Some(e) = super::validate::dns1123_subdomain_error(p) {
            return Some(format!("{s:?}: prefix part {e}"));
        }
    }
    if !qualified_name_part_ok(name) {
        return Some(format!(
            "{s:?}: name part must consist of at most 63 alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    None
}

/// A name without a domain, or in a kubernetes.io domain (IsNativeResource).
fn is_native(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

pub(crate) fn is_huge_pages(name: &str) -> bool {
    name.starts_with("hugepages-")
}

/// A fully qualified name outside kubernetes.io (IsExtendedResourceName).
pub(crate) fn is_extended(name: &str) -> bool {
    !is_native(name)
        && !name.starts_with("requests.")
        && qualified_name_error(&format!("requests.{name}")).is_none()
}

/// Whether a request may be below its limit (IsOvercommitAllowed): not for hugepages and
/// extended resources, whose request must equal their limit.
pub(crate) fn overcommit_allowed(name: &str) -> bool {
    is_native(name) && !is_huge_pages(name)
}

/// Why `name` is not a container resource name, if it is not.
pub(crate) fn container_resource_name_error(name: &str) -> Option<String> {
    if let Some(e) = qualified_name_error(name) {
        return Some(e);
    }
    if !name.contains('/') {
        if !STANDARD.contains(&name) && !is_huge_pages(name) {
            return Some(format!(
                "{name:?}: must be a standard resource for containers (cpu, memory, ephemeral-storage, hugepages-<size>) or a fully qualified extended resource (domain/name)"
            ));
        }
    } else if !is_native(name) && !is_extended(name) {
        return Some(format!(
            "{name:?}: doesn't follow extended resource name standard"
        ));
    }
    None
}

/// The page size of a `hugepages-<size>` resource in bytes.
pub(crate) fn huge_page_size(name: &str) -> Option<i64> {
    let size = parse_quantity_bytes(name.strip_prefix("hugepages-")?).ok()?;
    (size > 0).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_resource_names() {
        for ok in [
            "cpu",
            "memory",
            "ephemeral-storage",
            "hugepages-2Mi",
            "example.com/gpu",
            "nvidia.com/gpu",
            "a.b/c_d.e-f",
            "example.kubernetes.io/thing",
        ] {
            assert_eq!(container_resource_name_error(ok), None, "{ok}");
        }
        for bad in [
            "pids",
            "bogus",
            "pods",
            "storage",
            "Cpu",
            "",
            "/gpu",
            "example.com/",
            "Example.com/gpu",
            "example.com/-gpu",
            "a/b/c",
        ] {
            assert!(container_resource_name_error(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn kinds_of_resources() {
        assert!(is_extended("example.com/gpu"));
        assert!(!is_extended("cpu"));
        assert!(!is_extended("example.kubernetes.io/x"));
        assert!(!overcommit_allowed("example.com/gpu"));
        assert!(!overcommit_allowed("hugepages-1Gi"));
        assert!(overcommit_allowed("cpu"));
        assert_eq!(huge_page_size("hugepages-2Mi"), Some(2 << 20));
        assert_eq!(huge_page_size("hugepages-big"), None);
    }
}
