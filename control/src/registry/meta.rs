//! ObjectMeta validation and the causes every resource's checks use, with the messages
//! kube-apiserver writes.

use serde_json::Value;

use super::{Cause, ResourceInfo};

pub const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// The items of the list at `obj[key]`, to change in place; none when there is no such
/// list. (Indexing a Value mutably would add a null member where there is none.)
pub fn items_mut<'a>(obj: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    obj.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

pub fn required(field: &str) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueRequired",
        message: "Required value".into(),
    }
}

/// `Invalid value: "x": why`, the value quoted as Go's %q does for strings.
pub fn invalid(field: &str, value: &Value, why: &str) -> Cause {
    let shown = match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    Cause {
        field: field.into(),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {shown}: {why}"),
    }
}

/// `Invalid value: <v>: why` where `<v>` is already written as Go's `%#v` writes a
/// non-string value (`map[string]string{"a":"b"}`, `[]string{"x"}`).
pub fn invalid_go(field: &str, go_value: &str, why: &str) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {go_value}: {why}"),
    }
}

pub fn not_supported(field: &str, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    Cause {
        field: field.into(),
        reason: "FieldValueNotSupported",
        message: format!(
            "Unsupported value: \"{value}\": supported values: {}",
            list.join(", ")
        ),
    }
}

pub fn duplicate(field: &str, value: &Value) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueDuplicate",
        message: format!("Duplicate value: {value}"),
    }
}

pub fn forbidden(field: &str, why: &str) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {why}"),
    }
}

pub fn immutable(field: &str, value: &Value) -> Cause {
    invalid(field, value, "field is immutable")
}

fn label_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0] != b'-'
        && s.as_bytes()[s.len() - 1] != b'-'
}

pub fn is_dns1123_label(s: &str) -> bool {
    label_ok(s, 63)
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|p| label_ok(p, 253))
}

pub fn is_dns1035_label(s: &str) -> bool {
    label_ok(s, 63) && s.as_bytes()[0].is_ascii_lowercase()
}

/// The causes of a name that is not a DNS-1123 subdomain.
pub fn check_subdomain(field: &str, s: &str) -> Option<Cause> {
    if is_dns1123_subdomain(s) {
        return None;
    }
    if s.len() > 253 {
        return Some(invalid(
            field,
            &Value::from(s),
            "must be no more than 253 characters",
        ));
    }
    Some(invalid(field, &Value::from(s), SUBDOMAIN_MSG))
}

pub fn check_label(field: &str, s: &str) -> Option<Cause> {
    if is_dns1123_label(s) {
        return None;
    }
    if s.len() > 63 {
        return Some(invalid(
            field,
            &Value::from(s),
            "must be no more than 63 characters",
        ));
    }
    Some(invalid(field, &Value::from(s), LABEL_MSG))
}

/// At most 63 of `[-A-Za-z0-9_.]`, alphanumeric at both ends: the name part of a
/// qualified name, and a non-empty label value.
fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A label value: empty, or a name part.
pub fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_name_part(v)
}

/// A qualified name (label and annotation keys): an optional DNS subdomain prefix and a
/// name part.
pub fn is_qualified_name(key: &str) -> bool {
    qualified_name_errors(key).is_empty()
}

const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// What IsQualifiedName reports of a key, one message per fault, in its order.
pub fn qualified_name_errors(key: &str) -> Vec<String> {
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts[..] {
        [name] => name,
        [prefix, name] => {
            let mut errs = Vec::new();
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else if !is_dns1123_subdomain(prefix) {
                errs.push(format!("prefix part {SUBDOMAIN_MSG}"));
            }
            return errs.into_iter().chain(name_part_errors(name)).collect();
        }
        _ => {
            return vec![format!(
                "a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )]
        }
    };
    name_part_errors(name)
}

fn name_part_errors(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    if !name.is_empty() && !is_name_part_chars(name) {
        errs.push(format!("name part {QUALIFIED_NAME_MSG}"));
    }
    errs
}

fn is_name_part_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A qualified name, with kube-apiserver's messages for the parts that are wrong.
pub fn check_qualified_name(field: &str, key: &str) -> Vec<Cause> {
    qualified_name_errors(key)
        .iter()
        .map(|m| invalid(field, &Value::from(key), m))
        .collect()
}

pub fn check_label_value(field: &str, v: &str) -> Option<Cause> {
    (!is_label_value(v)).then(|| invalid(field, &Value::from(v), "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"))
}

/// How each resource's names are checked.
fn name_check(info: &ResourceInfo) -> fn(&str, &str) -> Option<Cause> {
    match (info.group, info.kind) {
        ("", "Namespace") => check_label,
        ("", "Service") => |f: &str, s: &str| {
            (!is_dns1035_label(s)).then(|| invalid(f, &Value::from(s), DNS1035_MSG))
        },
        _ => check_subdomain,
    }
}

/// Labels (qualified names and label values) of a map field.
pub fn check_labels(field: &str, v: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (k, val) in v.as_object().into_iter().flatten() {
        causes.extend(check_qualified_name(field, k));
        match val.as_str() {
            Some(s) => causes.extend(check_label_value(field, s)),
            None => causes.push(invalid(field, val, "must be a string")),
        }
    }
    causes
}

pub fn validate_object_meta(obj: &Value, info: &ResourceInfo) -> Vec<Cause> {
    let m = &obj["metadata"];
    let mut causes = Vec::new();
    match m["name"].as_str() {
        Some(n) if !n.is_empty() => causes.extend(name_check(info)("metadata.name", n)),
        _ => causes.push(Cause {
            message: "Required value: name or generateName is required".into(),
            ..required("metadata.name")
        }),
    }
    let has_namespace = m["namespace"].as_str().is_some_and(|n| !n.is_empty());
    if info.namespaced && !has_namespace {
        causes.push(required("metadata.namespace"));
    } else if !info.namespaced && has_namespace {
        causes.push(forbidden("metadata.namespace", "not allowed on this type"));
    }
    causes.extend(check_labels("metadata.labels", &m["labels"]));
    let mut size = 0;
    for (k, v) in m["annotations"].as_object().into_iter().flatten() {
        causes.extend(check_qualified_name("metadata.annotations", k));
        size += k.len() + v.as_str().map(str::len).unwrap_or(0);
    }
    if size > 256 * 1024 {
        causes.push(Cause {
            field: "metadata.annotations".into(),
            reason: "FieldValueTooLong",
            message: "Too long: may not be more than 262144 bytes".into(),
        });
    }
    causes
}

/// ValidateObjectMetaUpdate: a name and a namespace never change.
pub fn validate_object_meta_update(obj: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for f in ["name", "namespace"] {
        let (new, was) = (&obj["metadata"][f], &old["metadata"][f]);
        if new != was && !was.is_null() {
            causes.push(immutable(&format!("metadata.{f}"), new));
        }
    }
    causes
}

/// What IsConfigMapKey reports of a ConfigMap's or Secret's key.
pub fn config_key_errors(k: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if k.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    let chars_ok = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !chars_ok {
        errs.push("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".to_string());
    }
    match k {
        "." => errs.push("must not be '.'".to_string()),
        ".." => errs.push("must not be '..'".to_string()),
        _ if k.starts_with("..") => errs.push("must not start with '..'".to_string()),
        _ => {}
    }
    errs
}

/// The keys of one data map (`data`, `binaryData`), each cause at `field[key]`.
pub fn check_config_keys(field: &str, map: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for k in map.as_object().into_iter().flatten().map(|(k, _)| k) {
        for m in config_key_errors(k) {
            causes.push(invalid(
                &format!("{field}[{k}]"),
                &Value::from(k.as_str()),
                &m,
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_get_kube_apiserver_messages() {
        let c = check_subdomain("metadata.name", "Bad_Name").unwrap();
        assert_eq!(
            c.message,
            format!("Invalid value: \"Bad_Name\": {SUBDOMAIN_MSG}")
        );
        assert!(check_subdomain("metadata.name", "a.b-c").is_none());
        assert!(check_label("metadata.name", "a.b").is_some());
        assert!(is_dns1035_label("web") && !is_dns1035_label("1web"));
        let labels = json!({ "app": "web", "bad key": "x", "k": "-v" });
        let causes = check_labels("metadata.labels", &labels);
        assert_eq!(causes.len(), 2, "{causes:?}");
    }

    #[test]
    fn qualified_names_as_is_qualified_name_reports_them() {
        assert!(qualified_name_errors("example.com/app").is_empty());
        assert!(qualified_name_errors("a/b/c")[0].starts_with("a qualified name must consist of"));
        assert_eq!(
            qualified_name_errors("/x"),
            ["prefix part must be non-empty"]
        );
        assert_eq!(qualified_name_errors("x/"), ["name part must be non-empty"]);
        assert!(qualified_name_errors("Bad_/x")[0].starts_with("prefix part a lowercase RFC 1123"));
        assert_eq!(
            qualified_name_errors(&"a".repeat(64)),
            ["name part must be no more than 63 characters"]
        );
        assert!(!is_qualified_name("a/b/c") && is_qualified_name("k"));
    }

    #[test]
    fn label_causes_name_the_map_as_validate_labels_does() {
        let causes = check_labels("metadata.labels", &json!({"a/b/c": "x", "ok": "bad value"}));
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["metadata.labels", "metadata.labels"]);
        assert!(causes[0]
            .message
            .starts_with("Invalid value: \"a/b/c\": a qualified name must consist of"));
        assert!(causes[1].message.starts_with(
            "Invalid value: \"bad value\": a valid label must be an empty string or consist of"
        ));
        assert!(check_labels("l", &json!({"example.com/app": "web_1.a"})).is_empty());
    }

    #[test]
    fn missing_name_and_namespace() {
        let info = &crate::registry::configmap::DEF.info;
        let causes = validate_object_meta(&json!({"metadata": {}}), info);
        assert_eq!(causes[0].field, "metadata.name");
        assert_eq!(
            causes[0].message,
            "Required value: name or generateName is required"
        );
        assert_eq!(causes[1], required("metadata.namespace"));
    }

    #[test]
    fn config_keys() {
        assert!(config_key_errors("key.name").is_empty());
        assert_eq!(config_key_errors("a b").len(), 1);
        assert_eq!(config_key_errors("..x"), ["must not start with '..'"]);
        assert_eq!(config_key_errors(".."), ["must not be '..'"]);
        assert_eq!(config_key_errors("."), ["must not be '.'"]);
    }

    #[test]
    fn oversized_annotations_are_too_long() {
        let info = &crate::registry::node::DEF.info;
        let big = "x".repeat(256 * 1024);
        let obj = json!({"metadata": {"name": "n", "annotations": {"k": big}}});
        let causes = validate_object_meta(&obj, info);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(
            (
                causes[0].field.as_str(),
                causes[0].reason,
                causes[0].message.as_str()
            ),
            (
                "metadata.annotations",
                "FieldValueTooLong",
                "Too long: may not be more than 262144 bytes"
            )
        );
        let fits = json!({"metadata": {"name": "n", "annotations": {"k": "x".repeat(1000)}}});
        assert!(validate_object_meta(&fits, info).is_empty());
    }
}
