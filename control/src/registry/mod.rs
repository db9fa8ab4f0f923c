//! One strategy per resource, as kube-apiserver's generic registry has: what the resource
//! is (group, version, kind, names, scope, subresources), its defaults, what create and
//! update reset or bump, and its validation. The generic store (api/) does the rest.

use serde_json::Value;

/// What discovery says of a resource, and where it lives.
#[derive(Debug)]
pub struct ResourceInfo {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Lower-case plural: the name in URLs and in the store key.
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served: "status", "scale", "log", "exec", "attach", "portforward",
    /// "binding", "eviction", "finalize".
    pub subresources: &'static [&'static str],
}

/// One field error: 422 causes, as metav1.StatusCause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// The field path as kube-apiserver writes it: `spec.containers[0].image`,
    /// `metadata.labels`.
    pub field: String,
    /// A metav1.CauseType: FieldValueRequired, FieldValueInvalid,
    /// FieldValueNotSupported, FieldValueDuplicate, FieldValueForbidden,
    /// FieldValueTooLong, FieldValueTypeInvalid, FieldValueNotFound.
    pub reason: &'static str,
    /// The message as kube-apiserver writes it, e.g. `Required value`,
    /// `Invalid value: "Foo": a lowercase RFC 1123 subdomain must consist of ...`.
    pub message: String,
}

/// What the strict decoder found that the type does not have (fieldValidation=Strict
/// rejects them, Warn reports them): paths such as `.spec.containers[0].imagePullPolcy`.
pub type UnknownFields = Vec<String>;

pub trait Strategy: Send + Sync + 'static {
    fn info(&self) -> &'static ResourceInfo;

    /// Decodes the object as its k8s-openapi type: type errors become causes, fields the
    /// type does not have are returned. The object is not changed.
    fn decode(&self, obj: &Value) -> std::result::Result<UnknownFields, Vec<Cause>>;

    /// Applies the defaults kube-apiserver applies (e.g. a Deployment's RollingUpdate
    /// 25 %/25 %, a pod's restartPolicy Always). Runs on every create and update.
    fn default(&self, obj: &mut Value);

    /// Before a create: status reset where the resource has a status subresource,
    /// generation 1 where it tracks one.
    fn prepare_for_create(&self, obj: &mut Value);

    /// Before an update of the main resource: status kept from `old` where the resource
    /// has a status subresource, generation bumped when the spec changed.
    fn prepare_for_update(&self, obj: &mut Value, old: &Value);

    /// Before an update of the status subresource: everything but status kept from `old`.
    fn prepare_for_status_update(&self, obj: &mut Value, old: &Value);

    fn validate(&self, obj: &Value) -> Vec<Cause>;

    /// Update validation: what may not change (immutable fields, a pod's spec outside
    /// the mutable ones, a selector) on top of `validate`.
    fn validate_update(&self, obj: &Value, old: &Value) -> Vec<Cause>;

    /// The value of a field selector's field ("metadata.name", "spec.nodeName",
    /// "status.phase", ...), or None when the resource does not support that field.
    fn field(&self, obj: &Value, path: &str) -> Option<String>;
}

pub mod certificatesigningrequest;
mod configmap;
mod deployment;
mod endpoints;
mod endpointslice;
mod event;
pub mod generic;
mod lease;
pub mod meta;
mod namespace;
mod node;
mod pod;
mod poddisruptionbudget;
mod replicaset;
mod secret;
mod service;
mod serviceaccount;

/// Every resource podrun serves.
pub fn all() -> Vec<Box<dyn Strategy>> {
    [
        &namespace::DEF,
        &pod::DEF,
        &node::DEF,
        &service::DEF,
        &endpoints::DEF,
        &configmap::DEF,
        &secret::DEF,
        &serviceaccount::DEF,
        &event::DEF,
        &replicaset::DEF,
        &deployment::DEF,
        &lease::DEF,
        &endpointslice::DEF,
        &poddisruptionbudget::DEF,
        &certificatesigningrequest::DEF,
    ]
    .into_iter()
    .map(|d| Box::new(generic::Static(d)) as Box<dyn Strategy>)
    .collect()
}
