//! The strategy every resource shares, filled in per resource with its type and its
//! hooks: strict decoding into the k8s-openapi type, status handling, generation.

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::{Cause, ResourceInfo, Strategy, UnknownFields};

/// One resource: what it is and what differs from the common behaviour.
pub struct Def {
    pub info: ResourceInfo,
    pub decode: fn(&Value) -> Result<UnknownFields, Vec<Cause>>,
    pub default: fn(&mut Value),
    pub validate: fn(&Value) -> Vec<Cause>,
    pub validate_update: fn(&Value, &Value) -> Vec<Cause>,
    /// Whether status is written only through the status subresource.
    pub status: bool,
    /// Whether metadata.generation counts spec changes.
    pub generation: bool,
    /// The status of a new object.
    pub initial_status: fn(&Value) -> Value,
    /// What an update of the main resource keeps from the old object besides status
    /// and generation (a Service's allocated clusterIP), after the common handling.
    pub prepare_update: fn(&mut Value, &Value),
    /// What a status update keeps from the old object besides the spec (a Deployment's
    /// labels), after the common handling.
    pub prepare_status_update: fn(&mut Value, &Value),
    /// The value a field selector sees for one of `fields`.
    pub field_value: fn(&Value, &str) -> String,
    /// Fields selectors may name, besides metadata.name and metadata.namespace.
    pub fields: &'static [&'static str],
}

pub fn no_defaults(_: &mut Value) {}
pub fn no_checks(_: &Value) -> Vec<Cause> {
    Vec::new()
}
pub fn no_update_checks(_: &Value, _: &Value) -> Vec<Cause> {
    Vec::new()
}
pub fn no_prepare(_: &mut Value, _: &Value) {}
pub fn empty_status(_: &Value) -> Value {
    json!({})
}

/// A `Def` as a Strategy.
pub struct Static(pub &'static Def);

/// `spec.containers[0].image` from serde_ignored's path.
fn field_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let head = field_path(parent);
            if head.is_empty() {
                key.clone()
            } else {
                format!("{head}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// The path serde_path_to_error reports, in the same form.
fn error_path(p: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in p.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

/// Decodes `v` as `T`: unknown fields are returned, type errors become causes naming
/// the field.
pub fn decode<T: DeserializeOwned>(v: &Value) -> Result<UnknownFields, Vec<Cause>> {
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let inner = serde_path_to_error::Deserializer::new(v, &mut track);
    let result: Result<T, _> = serde_ignored::deserialize(inner, |p| unknown.push(field_path(&p)));
    match result {
        Ok(_) => Ok(unknown),
        Err(e) => {
            let path = error_path(&track.path());
            Err(vec![Cause {
                field: if path.is_empty() {
                    "<root>".into()
                } else {
                    path
                },
                reason: "FieldValueTypeInvalid",
                message: format!("Invalid value: {e}"),
            }])
        }
    }
}

/// A field of an object by its dotted path, as a selector sees it ("" when absent).
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut v = obj;
    for part in path.split('.') {
        v = &v[part];
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A field whose Go type is a bool or a number reads as its zero value when absent
/// (`false`, `0`), as kube-apiserver formats the typed field.
pub fn field_value_or(obj: &Value, path: &str, zero: &str) -> String {
    let v = field_value(obj, path);
    if v.is_empty() {
        zero.to_string()
    } else {
        v
    }
}

impl Strategy for Static {
    fn info(&self) -> &'static ResourceInfo {
        &self.0.info
    }

    fn decode(&self, obj: &Value) -> Result<UnknownFields, Vec<Cause>> {
        (self.0.decode)(obj)
    }

    fn default(&self, obj: &mut Value) {
        (self.0.default)(obj)
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if self.0.status {
            obj["status"] = (self.0.initial_status)(obj);
        }
        if self.0.generation {
            obj["metadata"]["generation"] = json!(1);
        }
    }

    fn prepare_for_update(&self, obj: &mut Value, old: &Value) {
        if self.0.status {
            match old.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        if self.0.generation {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let changed = obj.get("spec") != old.get("spec");
            obj["metadata"]["generation"] = json!(if changed { g + 1 } else { g });
        }
        (self.0.prepare_update)(obj, old);
    }

    fn prepare_for_status_update(&self, obj: &mut Value, old: &Value) {
        match old.get("spec") {
            Some(s) => obj["spec"] = s.clone(),
            None => {
                if let Some(o) = obj.as_object_mut() {
                    o.remove("spec");
                }
            }
        }
        if self.0.generation {
            obj["metadata"]["generation"] = old["metadata"]["generation"].clone();
        }
        (self.0.prepare_status_update)(obj, old);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = super::meta::validate_object_meta(obj, &self.0.info);
        causes.extend((self.0.validate)(obj));
        causes
    }

    fn validate_update(&self, obj: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = super::meta::validate_object_meta_update(obj, old);
        causes.extend((self.0.validate_update)(obj, old));
        causes
    }

    fn field(&self, obj: &Value, path: &str) -> Option<String> {
        self.0
            .fields
            .contains(&path)
            .then(|| (self.0.field_value)(obj, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    #[test]
    fn unknown_fields_and_type_errors_name_the_field() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "a" },
            "spec": { "containers": [{ "name": "c", "image": "i", "imagePullPolcy": "x" }], "bogus": 1 },
        });
        let mut unknown = decode::<Pod>(&pod).unwrap();
        unknown.sort();
        assert_eq!(unknown, ["spec.bogus", "spec.containers[0].imagePullPolcy"]);
        let bad = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "a" },
            "spec": { "containers": [{ "name": "c", "image": "i", "ports": [{ "containerPort": "eighty" }] }] },
        });
        let causes = decode::<Pod>(&bad).unwrap_err();
        assert_eq!(
            causes[0].field, "spec.containers[0].ports[0].containerPort",
            "{causes:?}"
        );
    }
}
