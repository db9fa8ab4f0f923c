//! The four patch types kube-apiserver takes: JSON patch (RFC 6902), JSON merge patch
//! (RFC 7386), strategic merge patch, and server-side apply.

/// What a strategic merge patch needs to know of a field: where the schema says so, a
/// list is merged by a key (`containers` by `name`) or as a set of primitives, and
/// `retainKeys` clears the fields a patch does not name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldMeta {
    /// The schema type of the field's value, or of a list's items or a map's values:
    /// an OpenAPI v2 definition name such as `io.k8s.api.core.v1.Container`, None for
    /// primitives and free-form objects.
    pub type_name: Option<String>,
    pub is_list: bool,
    /// A map with free keys (`labels`): its values are never merged by key.
    pub is_map: bool,
    /// `x-kubernetes-patch-merge-key`.
    pub merge_key: Option<String>,
    /// `x-kubernetes-patch-strategy`, split at commas: "merge", "retainKeys", "replace".
    pub strategies: Vec<String>,
    /// `x-kubernetes-list-type` ("atomic", "set", "map") and `x-kubernetes-list-map-keys`,
    /// which server-side apply uses.
    pub list_type: Option<String>,
    pub list_map_keys: Vec<String>,
}

/// The schema a patch is merged against: the OpenAPI definitions of the served types.
pub trait PatchSchema: Send + Sync {
    /// The field `field` of definition `type_name`, None when the definition has no such
    /// field (the patch then treats the value as opaque).
    fn field(&self, type_name: &str, field: &str) -> Option<FieldMeta>;
}

mod apply;
mod strategic;
#[cfg(test)]
mod tests;

pub use apply::{apply, record_update, ApplyError, Conflict};
pub use strategic::strategic_merge_patch;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch is not valid JSON: {0}")]
    Syntax(String),
    #[error("{0}")]
    Invalid(String),
}

fn parse(patch: &[u8]) -> Result<Value, PatchError> {
    serde_json::from_slice(patch).map_err(|e| PatchError::Syntax(e.to_string()))
}

/// RFC 6902.
pub fn json_patch(doc: &Value, patch: &[u8]) -> Result<Value, PatchError> {
    let ops: json_patch::Patch =
        serde_json::from_slice(patch).map_err(|e| PatchError::Syntax(e.to_string()))?;
    let mut out = doc.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| PatchError::Invalid(e.to_string()))?;
    Ok(out)
}

/// RFC 7386; kube-apiserver takes only an object as the patch.
pub fn merge_patch(doc: &Value, patch: &[u8]) -> Result<Value, PatchError> {
    let p = parse(patch)?;
    if !p.is_object() {
        return Err(PatchError::Invalid(
            "a merge patch must be a JSON object".into(),
        ));
    }
    let mut out = doc.clone();
    json_patch::merge(&mut out, &p);
    Ok(out)
}
