//! The generic registry store, written once for every resource as kube-apiserver's
//! genericregistry.Store: keys, resourceVersions, metadata the server owns, strategies'
//! defaults and validation, optimistic concurrency, graceful deletion and finalizers.

use chrono::Utc;
use serde_json::{json, Value};

use super::object::{self, meta_mut};
use super::status::{self, ApiError, Target};
use super::Api;
use crate::registry::{Cause, ResourceInfo, Strategy};
use crate::store::{KeyValue, Revision, StoreError};

/// How unknown fields in a written object are handled (`fieldValidation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    /// kube-apiserver's default: accept, with a Warning header per unknown field.
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, Strict, not {other:?}"
            ))),
        }
    }
}

/// What a write request asked for besides its body.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    /// The field manager recorded in managedFields.
    pub manager: String,
    /// A server-side apply: its managedFields are already recorded, as an Apply entry.
    pub apply: bool,
    /// Who writes; None for the server's own writes.
    pub user: Option<super::auth::User>,
}

/// What a write wants the client told: `Warning: 299 - "..."` headers.
#[derive(Debug, Default)]
pub struct Warnings(pub Vec<String>);

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
    /// Who deletes; None for the server's own deletes.
    pub user: Option<super::auth::User>,
}

pub fn key(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> String {
    format!("{}{}", prefix(info, namespace), name)
}

/// The key prefix of a resource's objects, of one namespace when given. It ends in '/',
/// so that namespace "a" does not list namespace "ab".
pub fn prefix(info: &ResourceInfo, namespace: Option<&str>) -> String {
    let group = if info.group.is_empty() {
        "core"
    } else {
        info.group
    };
    match namespace {
        Some(ns) if info.namespaced => format!("/registry/{group}/{}/{ns}/", info.plural),
        _ => format!("/registry/{group}/{}/", info.plural),
    }
}

pub fn target(info: &ResourceInfo, name: &str) -> Target {
    Target {
        group: info.group.to_string(),
        plural: info.plural.to_string(),
        kind: info.kind.to_string(),
        name: name.to_string(),
    }
}

pub fn api_version(info: &ResourceInfo) -> String {
    if info.group.is_empty() {
        info.version.to_string()
    } else {
        format!("{}/{}", info.group, info.version)
    }
}

/// An object as read from the store: its resourceVersion is the key's mod revision.
pub fn decode(info: &ResourceInfo, kv: &KeyValue) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("{}: stored object is corrupt: {e}", kv.key)))?;
    set_version(info, &mut v, kv.mod_revision);
    Ok(v)
}

pub fn set_version(info: &ResourceInfo, v: &mut Value, rev: Revision) {
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), json!(api_version(info)));
        o.insert("kind".into(), json!(info.kind));
    }
    meta_mut(v).insert("resourceVersion".into(), json!(rev.to_string()));
}

/// The bytes stored: the object without its resourceVersion, which the store keeps.
fn encode(v: &Value) -> Result<Vec<u8>, ApiError> {
    let mut v = v.clone();
    meta_mut(&mut v).remove("resourceVersion");
    serde_json::to_vec(&v).map_err(|e| ApiError::internal(format!("encoding: {e}")))
}

/// Checks the decoded object against its type: type errors are 422s naming the field;
/// unknown fields are refused, reported or ignored as the client asked.
fn check_fields(
    s: &dyn Strategy,
    obj: &Value,
    name: &str,
    opts: &WriteOptions,
    warnings: &mut Warnings,
) -> Result<(), ApiError> {
    let info = s.info();
    match s.decode(obj) {
        Err(causes) => Err(ApiError::invalid(&target(info, name), &causes)),
        Ok(unknown) if unknown.is_empty() => Ok(()),
        Ok(unknown) => match opts.field_validation {
            FieldValidation::Ignore => Ok(()),
            FieldValidation::Warn => {
                for f in unknown {
                    warnings
                        .0
                        .push(format!("unknown field \"{}\"", f.trim_start_matches('.')));
                }
                Ok(())
            }
            FieldValidation::Strict => {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.')))
                    .collect();
                Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                    info.kind,
                    api_version(info),
                    info.kind,
                    list.join(", ")
                )))
            }
        },
    }
}

/// apiVersion and kind of a written object must be the resource's (or absent).
fn check_type(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    let want_av = api_version(info);
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if (!av.is_empty() && av != want_av) || (!kind.is_empty() && kind != info.kind) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({want_av}), or the kind ({kind}) is not {}",
            info.kind
        )));
    }
    let o = obj.as_object_mut().expect("bodies are objects");
    o.insert("apiVersion".into(), json!(want_av));
    o.insert("kind".into(), json!(info.kind));
    Ok(())
}

fn required(field: &str) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueRequired",
        message: "Required value: name or generateName is required".into(),
    }
}

impl Api {
    /// The stored object at `k`: 404 naming `t` when there is none.
    async fn read(&self, k: &str, t: &Target) -> Result<KeyValue, ApiError> {
        self.store
            .get(k)
            .await
            .map_err(|e| status::from_store(e, t))?
            .ok_or_else(|| ApiError::not_found(t))
    }

    pub async fn get_object(
        &self,
        s: &dyn Strategy,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let info = s.info();
        let kv = self.read(&key(info, ns, name), &target(info, name)).await?;
        decode(info, &kv)
    }

    /// Fails with 404 when the namespace does not exist, 403 when it is being deleted.
    pub async fn check_namespace(&self, ns: &str, for_create: bool) -> Result<(), ApiError> {
        let k = format!("/registry/core/namespaces/{ns}");
        let t = Target {
            plural: "namespaces".into(),
            kind: "Namespace".into(),
            name: ns.into(),
            ..Default::default()
        };
        let kv = self.read(&k, &t).await?;
        if for_create {
            let v: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            if object::deletion_timestamp(&v).is_some() {
                return Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )));
            }
        }
        Ok(())
    }

    /// Create: the server's metadata, the strategy's defaults and checks, then one store
    /// write that fails if the name is taken.
    pub async fn create_object(
        &self,
        s: &dyn Strategy,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
        warnings: &mut Warnings,
    ) -> Result<Value, ApiError> {
        let info = s.info();
        check_type(info, &mut obj)?;
        let m = meta_mut(&mut obj);
        if info.namespaced {
            let ns = ns.ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{} objects must be created in a namespace",
                    info.kind
                ))
            })?;
            match m.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => {
                    m.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            m.remove("namespace");
        }
        let has_name = m
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name {
            match m.get("generateName").and_then(Value::as_str) {
                Some(p) if !p.is_empty() => {
                    let n = object::generate_name(p);
                    m.insert("name".into(), json!(n));
                }
                _ => {
                    return Err(ApiError::invalid(
                        &target(info, ""),
                        &[required("metadata.name")],
                    ))
                }
            }
        }
        let m = meta_mut(&mut obj);
        m.insert("uid".into(), json!(object::new_uid()));
        m.insert(
            "creationTimestamp".into(),
            json!(object::timestamp(Utc::now())),
        );
        for server_owned in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(server_owned);
        }
        let name = object::name(&obj).unwrap_or_default().to_string();
        check_fields(s, &obj, &name, opts, warnings)?;
        s.default(&mut obj);
        s.prepare_for_create(&mut obj);
        let causes = s.validate(&obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(&target(info, &name), &causes));
        }
        if let (true, Some(ns)) = (info.namespaced, ns) {
            self.check_namespace(ns, true).await?;
        }
        self.admit_create(info, &mut obj, opts).await?;
        self.track_fields(None, &mut obj, opts, info);
        let k = key(info, ns, &name);
        if opts.dry_run {
            if self.store.get(&k).await.ok().flatten().is_some() {
                return Err(ApiError::already_exists(&target(info, &name)));
            }
            return Ok(obj);
        }
        let kv = self
            .store
            .create(&k, encode(&obj)?)
            .await
            .map_err(|e| status::from_store(e, &target(info, &name)))?;
        set_version(info, &mut obj, kv.mod_revision);
        self.after_create(info, &obj).await;
        Ok(obj)
    }

    /// Update of the main resource or of its status: the client's object replaces the
    /// stored one, if the resourceVersion it names (when it names one) is current.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_object(
        &self,
        s: &dyn Strategy,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
        warnings: &mut Warnings,
    ) -> Result<Value, ApiError> {
        let info = s.info();
        let t = target(info, name);
        check_type(info, &mut obj)?;
        match object::name(&obj) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => {
                meta_mut(&mut obj).insert("name".into(), json!(name));
            }
        }
        if info.namespaced {
            match object::namespace(&obj) {
                Some(n) if Some(n) != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => {
                    meta_mut(&mut obj).insert("namespace".into(), json!(ns));
                }
            }
        }
        check_fields(s, &obj, name, opts, warnings)?;
        let k = key(info, ns, name);
        let kv = self.read(&k, &t).await?;
        let old = decode(info, &kv)?;
        if let Some(rv) = object::resource_version(&obj) {
            if rv != kv.mod_revision.to_string() {
                return Err(ApiError::modified(&t));
            }
        }
        if let (Some(new), Some(cur)) = (object::uid(&obj), object::uid(&old)) {
            if new != cur {
                return Err(ApiError::conflict(
                    &t,
                    &format!("Precondition failed: UID in precondition: {new}, UID in object meta: {cur}"),
                ));
            }
        }
        self.write_update(s, ns, name, obj, old, kv.mod_revision, subresource, opts)
            .await
    }

    /// The common tail of update and patch: the server's metadata kept, strategy,
    /// validation, a conditional store write, and the delete that an update removing
    /// the last finalizer of a deleted object completes.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_update(
        &self,
        s: &dyn Strategy,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        old: Value,
        rev: Revision,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let info = s.info();
        let t = target(info, name);
        {
            let om = object::meta(&old).cloned().unwrap_or_default();
            let m = meta_mut(&mut obj);
            for kept in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match om.get(kept) {
                    Some(v) => m.insert(kept.into(), v.clone()),
                    None => m.remove(kept),
                };
            }
            m.remove("resourceVersion");
            m.remove("selfLink");
            if let Some(old_mf) = om.get("managedFields") {
                if !m.contains_key("managedFields") {
                    m.insert("managedFields".into(), old_mf.clone());
                }
            }
        }
        s.default(&mut obj);
        match subresource {
            Some("status") => s.prepare_for_status_update(&mut obj, &old),
            // A CertificateSigningRequest's approval: its conditions, nothing else.
            Some("approval") => {
                s.prepare_for_status_update(&mut obj, &old);
                match old["status"].get("certificate") {
                    Some(c) => obj["status"]["certificate"] = c.clone(),
                    None => {
                        if let Some(st) = obj["status"].as_object_mut() {
                            st.remove("certificate");
                        }
                    }
                }
            }
            // pods/binding writes spec.nodeName and the PodScheduled condition
            // together, both made by the server itself from the Binding.
            Some("binding") => {}
            _ => s.prepare_for_update(&mut obj, &old),
        }
        let mut causes = s.validate(&obj);
        causes.extend(s.validate_update(&obj, &old));
        if !causes.is_empty() {
            return Err(ApiError::invalid(&t, &causes));
        }
        self.admit_update(info, &mut obj, &old, opts).await?;
        self.track_fields(Some(&old), &mut obj, opts, info);
        let k = key(info, ns, name);
        let finishing = object::deletion_timestamp(&obj).is_some()
            && object::finalizers(&obj).is_empty()
            && !self.deletion_pending(info, &obj)
            && obj["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                == 0;
        if opts.dry_run {
            set_version(info, &mut obj, rev);
            return Ok(obj);
        }
        if finishing {
            let kv = self
                .store
                .delete(&k, Some(rev))
                .await
                .map_err(|e| status::from_store(e, &t))?;
            set_version(info, &mut obj, kv.mod_revision);
            self.after_delete(info, &obj).await;
            return Ok(obj);
        }
        let kv = self
            .store
            .update(&k, encode(&obj)?, rev)
            .await
            .map_err(|e| status::from_store(e, &t))?;
        set_version(info, &mut obj, kv.mod_revision);
        Ok(obj)
    }

    /// Reads the object, lets `change` rewrite it, and writes it back conditionally,
    /// again from a fresh read when another writer came first.
    pub async fn guaranteed_update<F>(
        &self,
        s: &dyn Strategy,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        opts: &WriteOptions,
        mut change: F,
    ) -> Result<Value, ApiError>
    where
        F: FnMut(&Value) -> Result<Value, ApiError>,
    {
        let info = s.info();
        let t = target(info, name);
        let k = key(info, ns, name);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let kv = self.read(&k, &t).await?;
            let old = decode(info, &kv)?;
            let mut new = change(&old)?;
            meta_mut(&mut new).remove("resourceVersion");
            match self
                .write_update(s, ns, name, new, old, kv.mod_revision, subresource, opts)
                .await
            {
                Err(e) if e.reason == "Conflict" && attempts < 8 => continue,
                other => return other,
            }
        }
    }

    /// Delete: preconditions, then graceful deletion (pods bound to a node), finalizers
    /// and propagation policies, else the object goes. Returns the object and whether it
    /// is gone.
    pub async fn delete_object(
        &self,
        s: &dyn Strategy,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let info = s.info();
        let t = target(info, name);
        let k = key(info, ns, name);
        loop {
            let kv = self.read(&k, &t).await?;
            let mut obj = decode(info, &kv)?;
            super::admission::node_may_delete(info, &obj, opts.user.as_ref())?;
            if let (Some(want), Some(have)) = (&opts.uid, object::uid(&obj)) {
                if want != have {
                    return Err(ApiError::conflict(&t, &format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
                    )));
                }
            }
            if let Some(want) = &opts.resource_version {
                if *want != kv.mod_revision.to_string() {
                    return Err(ApiError::conflict(&t, &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}",
                        kv.mod_revision
                    )));
                }
            }
            let grace = self.grace_period(info, &obj, opts);
            let mut finalizers = object::finalizers(&obj);
            match opts.propagation.as_deref() {
                Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
                    finalizers.push("foregroundDeletion".into())
                }
                Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => {
                    finalizers.push("orphan".into())
                }
                None | Some("Foreground" | "Orphan" | "Background") => {}
                Some(other) => {
                    return Err(ApiError::invalid(&t, &[Cause {
                        field: "propagationPolicy".into(),
                        reason: "FieldValueNotSupported",
                        message: format!("Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""),
                    }]))
                }
            }
            let pending = self.deletion_pending(info, &obj);
            if grace > 0 || !finalizers.is_empty() || pending {
                let now = Utc::now();
                let m = meta_mut(&mut obj);
                let already = m.get("deletionTimestamp").is_some();
                let old_grace = m.get("deletionGracePeriodSeconds").and_then(Value::as_i64);
                // A second delete may shorten the grace period, never lengthen it.
                if !already || old_grace.is_some_and(|g| grace < g) {
                    m.insert(
                        "deletionTimestamp".into(),
                        json!(object::timestamp(now + chrono::Duration::seconds(grace))),
                    );
                    m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                }
                if !finalizers.is_empty() {
                    m.insert("finalizers".into(), json!(finalizers));
                }
                self.on_terminating(info, &mut obj);
                if opts.dry_run {
                    return Ok((obj, false));
                }
                let mut stored = obj.clone();
                meta_mut(&mut stored).remove("resourceVersion");
                match self
                    .store
                    .update(&k, encode(&stored)?, kv.mod_revision)
                    .await
                {
                    Ok(kv) => {
                        set_version(info, &mut obj, kv.mod_revision);
                        return Ok((obj, false));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(status::from_store(e, &t)),
                }
            }
            if opts.dry_run {
                return Ok((obj, true));
            }
            match self.store.delete(&k, Some(kv.mod_revision)).await {
                Ok(kv) => {
                    set_version(info, &mut obj, kv.mod_revision);
                    self.after_delete(info, &obj).await;
                    return Ok((obj, true));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(status::from_store(e, &t)),
            }
        }
    }

    /// The grace period of a delete: only pods have one, and only while a node runs
    /// them; kube-apiserver deletes unscheduled and finished pods at once.
    fn grace_period(&self, info: &ResourceInfo, obj: &Value, opts: &DeleteOptions) -> i64 {
        if info.kind != "Pod" || !info.group.is_empty() {
            return 0;
        }
        let scheduled = obj["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            obj["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        if !scheduled || finished {
            return 0;
        }
        let grace = opts
            .grace_period
            .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        grace.max(0)
    }
}
