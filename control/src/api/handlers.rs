//! The verbs on a resource: get, list, create, update, patch, delete and
//! deletecollection, with the subresources status, scale, binding and eviction, and
//! the pod subresources the kubelet serves (log, exec, attach, portforward).

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use http::{header, HeaderMap, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::codec::{self, json_response, yaml_response, Body, Output, PatchKind};
use super::object;
use super::patch;
use super::request::{Query, ResourceRequest, Verb};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{self, ApiError};
use super::storage::{self, api_version, DeleteOptions, FieldValidation, Warnings, WriteOptions};
use super::{auth, warning_header, Api};
use crate::printers;
use crate::registry::Strategy;

/// A list request's filters and paging.
#[derive(Debug, Default)]
pub struct ListOptions {
    pub labels: Option<LabelSelector>,
    pub fields: Option<FieldSelector>,
    pub limit: Option<usize>,
    pub continue_from: Option<String>,
    /// The revision the list reads at: its first page's, carried in the continue token,
    /// or an exact resourceVersion asked for.
    pub at: Option<i64>,
    /// Whether `at` came from a continue token (a compacted one is then 410 with
    /// kube-apiserver's words for an expired continue).
    pub continuing: bool,
}

impl ListOptions {
    pub fn parse(s: &dyn Strategy, q: &Query) -> Result<ListOptions, ApiError> {
        let labels = q
            .get("labelSelector")
            .map(|l| {
                LabelSelector::parse(l)
                    .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))
            })
            .transpose()?;
        let fields = match q.get("fieldSelector") {
            None => None,
            Some(f) => {
                let sel = FieldSelector::parse(f).map_err(|e| {
                    ApiError::bad_request(format!("invalid field selector {f:?}: {e}"))
                })?;
                let probe = json!({});
                for field in sel.fields() {
                    let known = matches!(field, "metadata.name" | "metadata.namespace")
                        || s.field(&probe, field).is_some()
                        || s.field(&sample(s), field).is_some();
                    if !known {
                        return Err(ApiError::bad_request(format!(
                            "field label not supported: {field}"
                        )));
                    }
                }
                Some(sel)
            }
        };
        let limit = q.int("limit")?.filter(|l| *l > 0).map(|l| l as usize);
        let (continue_from, mut at) = match q.get("continue") {
            None => (None, None),
            Some(token) => {
                let (key, rv) = decode_continue(token)?;
                (Some(key), Some(rv))
            }
        };
        let continuing = at.is_some();
        if q.get("resourceVersionMatch") == Some("Exact") {
            if continuing {
                return Err(ApiError::bad_request(
                    "specifying resourceVersion is not allowed when using continue",
                ));
            }
            let rv = q
                .get("resourceVersion")
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "resourceVersionMatch=Exact needs a resourceVersion that is not 0",
                    )
                })?;
            at = Some(rv);
        }
        Ok(ListOptions {
            labels,
            fields,
            limit,
            continue_from,
            at,
            continuing,
        })
    }

    pub fn matches(&self, s: &dyn Strategy, obj: &Value) -> bool {
        if let Some(l) = &self.labels {
            if !l.matches(&object::labels(obj)) {
                return false;
            }
        }
        if let Some(f) = &self.fields {
            let get = |path: &str| -> Option<String> {
                match path {
                    "metadata.name" => object::name(obj).map(str::to_string),
                    "metadata.namespace" => object::namespace(obj).map(str::to_string),
                    _ => s.field(obj, path),
                }
            };
            if !f.matches(&get) {
                return false;
            }
        }
        true
    }
}

/// An object with the shape a strategy's field() looks into, to tell a supported
/// field that is merely absent from an unsupported one.
fn sample(s: &dyn Strategy) -> Value {
    json!({
        "apiVersion": api_version(s.info()),
        "kind": s.info().kind,
        "metadata": { "name": "", "namespace": "" },
        "spec": {}, "status": {}, "involvedObject": {}, "source": {},
    })
}

/// A continue token as kube-apiserver makes one: the list's revision and the key to go
/// on after, as base64 JSON.
fn encode_continue(key: &str, rv: i64) -> String {
    use base64::Engine;
    let token = json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": key });
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(String, i64), ApiError> {
    use base64::Engine;
    let invalid = || ApiError::bad_request("continue key is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err(invalid());
    }
    let key = v["start"]
        .as_str()
        .filter(|k| k.starts_with("/registry/"))
        .ok_or_else(invalid)?;
    let rv = v["rv"].as_i64().filter(|r| *r > 0).ok_or_else(invalid)?;
    Ok((key.to_string(), rv))
}

/// The `dryRun` query parameter: None when absent; "All" is the only value there is.
pub(super) fn dry_run(q: &Query) -> Result<Option<bool>, ApiError> {
    match q.get("dryRun") {
        None => Ok(None),
        Some("All") => Ok(Some(true)),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun may only be \"All\", not {other:?}"
        ))),
    }
}

pub(super) fn write_options(
    q: &Query,
    headers: &HeaderMap,
    user: &auth::User,
) -> Result<WriteOptions, ApiError> {
    let dry_run = dry_run(q)?.unwrap_or(false);
    let manager = match q.get("fieldManager") {
        Some(m) if m.len() > 128 => {
            return Err(ApiError::bad_request(
                "fieldManager is longer than 128 characters",
            ))
        }
        Some(m) => m.to_string(),
        None => {
            // As kube-apiserver: the user agent's program name, else the user.
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .filter(|p| !p.is_empty())
                .map(|p| p.chars().take(128).collect())
                .unwrap_or_else(|| user.name.clone())
        }
    };
    Ok(WriteOptions {
        dry_run,
        field_validation: FieldValidation::parse(q.get("fieldValidation"))?,
        manager,
        apply: false,
        user: Some(user.clone()),
    })
}

fn with_warnings(mut r: Response<Body>, w: &Warnings) -> Response<Body> {
    for text in &w.0 {
        r.headers_mut()
            .append(header::WARNING, warning_header(text));
    }
    r
}

impl Api {
    pub(super) async fn resource<B>(
        self: &Arc<Self>,
        req: Request<B>,
        r: ResourceRequest,
        q: &Query,
        user: &auth::User,
    ) -> Result<Response<Body>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let s = self
            .strategy(&r.group, &r.resource)
            .filter(|s| s.info().version == r.version)
            .ok_or_else(ApiError::no_route)?;
        let info = s.info();
        if r.namespace.is_some() && !info.namespaced {
            return Err(ApiError::no_route());
        }
        if let Some(sub) = &r.subresource {
            if !info.subresources.contains(&sub.as_str()) {
                return Err(ApiError::no_route());
            }
        }
        let ns = r.namespace.as_deref();
        self.authorize(user, &r)?;
        self.node_may_read(user, &r, q).await?;
        let output = codec::negotiate(req.headers())?;
        let (parts, body) = req.into_parts();
        let headers = parts.headers;
        let respond = |code: StatusCode, v: &Value| -> Result<Response<Body>, ApiError> {
            Ok(if output == Output::Yaml {
                yaml_response(code, v)
            } else {
                json_response(code, v)
            })
        };
        match (r.verb, r.subresource.as_deref(), r.name.as_deref()) {
            (Verb::Get, None | Some("status" | "approval"), Some(name)) => {
                let obj = self.get_object(s, ns, name).await?;
                self.render_one(s, obj, output, q)
            }
            (Verb::List, None, None) => {
                let opts = ListOptions::parse(s, q)?;
                let (items, rev, cont, remaining) = self.list_objects(s, ns, &opts).await?;
                self.render_list(s, items, rev, cont, remaining, output, q)
            }
            (Verb::Watch, None, _) => {
                let mut opts = ListOptions::parse(s, q)?;
                if let Some(name) = &r.name {
                    let sel = format!("metadata.name={name}");
                    opts.fields = Some(
                        FieldSelector::parse(&sel)
                            .map_err(|e| ApiError::bad_request(e.to_string()))?,
                    );
                }
                self.watch(s, ns, opts, output, q).await
            }
            (Verb::Create, None, None) => {
                let body = codec::read_body(body).await?;
                let obj = codec::decode_object(&headers, &body)?;
                let opts = write_options(q, &headers, user)?;
                let mut w = Warnings::default();
                let created = self.create_object(s, ns, obj, &opts, &mut w).await?;
                Ok(with_warnings(respond(StatusCode::CREATED, &created)?, &w))
            }
            (Verb::Update, None | Some("status" | "approval"), Some(name)) => {
                let body = codec::read_body(body).await?;
                let obj = codec::decode_object(&headers, &body)?;
                let opts = write_options(q, &headers, user)?;
                let mut w = Warnings::default();
                let updated = self
                    .update_object(s, ns, name, obj, r.subresource.as_deref(), &opts, &mut w)
                    .await?;
                Ok(with_warnings(respond(StatusCode::OK, &updated)?, &w))
            }
            (Verb::Update, Some("finalize"), Some(name)) => {
                let body = codec::read_body(body).await?;
                let obj = codec::decode_object(&headers, &body)?;
                let opts = write_options(q, &headers, user)?;
                let finalizers = obj["spec"]["finalizers"].clone();
                let updated = self
                    .guaranteed_update(s, ns, name, Some("finalize"), &opts, |old| {
                        let mut new = old.clone();
                        new["spec"]["finalizers"] = finalizers.clone();
                        Ok(new)
                    })
                    .await?;
                respond(StatusCode::OK, &updated)
            }
            (Verb::Patch, None | Some("status" | "approval"), Some(name)) => {
                let kind = codec::patch_kind(&headers)?;
                let body = codec::read_body(body).await?;
                let opts = write_options(q, &headers, user)?;
                let (obj, code) = self
                    .patch_object(s, ns, name, r.subresource.as_deref(), kind, &body, &opts, q)
                    .await?;
                respond(code, &obj)
            }
            (Verb::Delete, None, Some(name)) => {
                let body = codec::read_body(body).await?;
                let opts = delete_options(q, &headers, &body, user)?;
                let (obj, gone) = self.delete_object(s, ns, name, &opts).await?;
                if gone {
                    respond(
                        StatusCode::OK,
                        &status::success(&storage::target(info, name), object::uid(&obj)),
                    )
                } else {
                    respond(StatusCode::ACCEPTED, &obj)
                }
            }
            (Verb::DeleteCollection, None, None) => {
                let body = codec::read_body(body).await?;
                let dopts = delete_options(q, &headers, &body, user)?;
                let lopts = ListOptions::parse(s, q)?;
                let (items, rev, _, _) = self
                    .list_objects(
                        s,
                        ns,
                        &ListOptions {
                            limit: None,
                            continue_from: None,
                            ..lopts
                        },
                    )
                    .await?;
                let mut deleted = Vec::new();
                for item in items {
                    let name = object::name(&item).unwrap_or_default().to_string();
                    let item_ns = object::namespace(&item).map(str::to_string);
                    match self
                        .delete_object(s, item_ns.as_deref(), &name, &dopts)
                        .await
                    {
                        Ok((obj, _)) => deleted.push(obj),
                        Err(e) if e.reason == "NotFound" => {}
                        Err(e) => return Err(e),
                    }
                }
                self.render_list(s, deleted, rev, None, 0, output, q)
            }
            (Verb::Get | Verb::Update | Verb::Patch, Some("scale"), Some(name)) => {
                self.scale(s, ns, name, r.verb, &headers, body, q, user)
                    .await
            }
            (Verb::Create, Some("binding"), Some(name)) => {
                let body = codec::read_body(body).await?;
                let binding = codec::decode_object(&headers, &body)?;
                let opts = write_options(q, &headers, user)?;
                self.bind(s, ns, name, &binding, &opts).await?;
                respond(
                    StatusCode::CREATED,
                    &status::success(&storage::target(info, name), None),
                )
            }
            (Verb::Create, Some("eviction"), Some(name)) => {
                let body = codec::read_body(body).await?;
                let eviction = codec::decode_object(&headers, &body)?;
                self.evict(s, ns, name, &eviction, &headers).await?;
                respond(
                    StatusCode::CREATED,
                    &status::success(&storage::target(info, name), None),
                )
            }
            (Verb::Get, Some("log"), Some(name))
            | (Verb::Get | Verb::Create, Some("exec" | "attach" | "portforward"), Some(name)) => {
                let pod = self.get_object(s, ns, name).await?;
                let mut extensions = parts.extensions;
                let req = super::kubelet::ClientRequest {
                    method: &parts.method,
                    uri: &parts.uri,
                    headers: &headers,
                    upgrade: extensions.remove::<hyper::upgrade::OnUpgrade>(),
                };
                self.pod_connect(&r, user, &pod, q, req).await
            }
            (verb, _, _) => Err(ApiError::method_not_allowed(
                verb.as_str(),
                &storage::target(info, r.name.as_deref().unwrap_or("")),
            )),
        }
    }

    /// Objects of a resource (in one namespace or all), filtered, one page at a time.
    pub async fn list_objects(
        &self,
        s: &dyn Strategy,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<(Vec<Value>, i64, Option<String>, i64), ApiError> {
        let info = s.info();
        let prefix = storage::prefix(info, ns);
        let mut after = opts.continue_from.clone();
        if let Some(a) = &after {
            if !a.starts_with(&prefix) {
                return Err(ApiError::bad_request(
                    "continue key is not valid for this list",
                ));
            }
        }
        let mut items = Vec::new();
        let t = storage::target(info, "");
        let mut list_rev = None;
        loop {
            let want = opts.limit.map(|l| l - items.len());
            // Read a little more than asked when filtering, so a page needs few reads.
            let batch = want.map(|w| {
                if opts.labels.is_some() || opts.fields.is_some() {
                    w.max(100)
                } else {
                    w
                }
            });
            let page = self
                .store
                .list(&prefix, after.as_deref(), batch, list_rev.or(opts.at))
                .await
                .map_err(|e| match e {
                    crate::store::StoreError::Compacted { .. } if opts.continuing => {
                        ApiError::gone(
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                        )
                    }
                    e => status::from_store(e, &t),
                })?;
            list_rev.get_or_insert(page.revision);
            let n = page.items.len();
            for (i, kv) in page.items.iter().enumerate() {
                let obj = storage::decode(info, kv)?;
                after = Some(kv.key.clone());
                if opts.matches(s, &obj) {
                    items.push(obj);
                    if opts.limit.is_some_and(|l| items.len() >= l) {
                        let more = page.remaining > 0 || i + 1 < n;
                        let remaining = page.remaining + (n - i - 1) as i64;
                        let rev = list_rev.unwrap_or(page.revision);
                        let token = more.then(|| encode_continue(&kv.key, rev));
                        return Ok((
                            items,
                            list_rev.unwrap_or(page.revision),
                            token,
                            if opts.labels.is_none() && opts.fields.is_none() {
                                remaining
                            } else {
                                0
                            },
                        ));
                    }
                }
            }
            if page.remaining == 0 || n == 0 {
                return Ok((items, list_rev.unwrap_or(page.revision), None, 0));
            }
        }
    }

    fn render_one(
        &self,
        s: &dyn Strategy,
        obj: Value,
        output: Output,
        q: &Query,
    ) -> Result<Response<Body>, ApiError> {
        let info = s.info();
        match output {
            Output::Object => Ok(json_response(StatusCode::OK, &obj)),
            Output::Yaml => Ok(yaml_response(StatusCode::OK, &obj)),
            Output::PartialMetadata => Ok(json_response(StatusCode::OK, &partial(&obj))),
            Output::Table => {
                let rv = object::resource_version(&obj).unwrap_or("").to_string();
                let table = printers::table(
                    info.group,
                    info.kind,
                    &[obj],
                    json!({ "resourceVersion": rv }),
                    include_object(q)?,
                    Utc::now(),
                );
                Ok(json_response(StatusCode::OK, &table))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn render_list(
        &self,
        s: &dyn Strategy,
        items: Vec<Value>,
        rev: i64,
        cont: Option<String>,
        remaining: i64,
        output: Output,
        q: &Query,
    ) -> Result<Response<Body>, ApiError> {
        let info = s.info();
        let mut meta = json!({ "resourceVersion": rev.to_string() });
        if let Some(c) = cont {
            meta["continue"] = json!(c);
            if remaining > 0 {
                meta["remainingItemCount"] = json!(remaining);
            }
        }
        match output {
            Output::Table => {
                let table = printers::table(
                    info.group,
                    info.kind,
                    &items,
                    meta,
                    include_object(q)?,
                    Utc::now(),
                );
                Ok(json_response(StatusCode::OK, &table))
            }
            Output::PartialMetadata => {
                let items: Vec<Value> = items.iter().map(partial).collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items }),
                ))
            }
            Output::Object | Output::Yaml => {
                let list = json!({
                    "kind": format!("{}List", info.kind),
                    "apiVersion": api_version(info),
                    "metadata": meta,
                    "items": items,
                });
                Ok(if output == Output::Yaml {
                    yaml_response(StatusCode::OK, &list)
                } else {
                    json_response(StatusCode::OK, &list)
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn patch_object(
        &self,
        s: &dyn Strategy,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        kind: PatchKind,
        body: &[u8],
        opts: &WriteOptions,
        q: &Query,
    ) -> Result<(Value, StatusCode), ApiError> {
        let info = s.info();
        let t = storage::target(info, name);
        let doc = super::openapi::get();
        let type_name = doc.type_name(info).to_string();
        if kind == PatchKind::Apply {
            return self
                .apply_object(s, ns, name, subresource, body, opts, q, &type_name)
                .await;
        }
        let patched = self
            .guaranteed_update(s, ns, name, subresource, opts, |old| {
                let new = match kind {
                    PatchKind::Json => patch::json_patch(old, body),
                    PatchKind::Merge => patch::merge_patch(old, body),
                    PatchKind::Strategic => {
                        patch::strategic_merge_patch(old, body, doc, &type_name)
                    }
                    PatchKind::Apply => unreachable!("handled above"),
                }
                .map_err(|e| patch_error(&t, &e.to_string()))?;
                if !new.is_object() {
                    return Err(patch_error(&t, "the patch did not leave an object"));
                }
                if object::resource_version(&new) != object::resource_version(old) {
                    return Err(ApiError::modified(&t));
                }
                Ok(new)
            })
            .await?;
        Ok((patched, StatusCode::OK))
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_object(
        &self,
        s: &dyn Strategy,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        body: &[u8],
        opts: &WriteOptions,
        q: &Query,
        type_name: &str,
    ) -> Result<(Value, StatusCode), ApiError> {
        let info = s.info();
        let t = storage::target(info, name);
        if q.get("fieldManager").is_none() {
            return Err(ApiError::bad_request(
                "PATCH with apply requires a fieldManager",
            ));
        }
        let applied: Value = serde_norway::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        if !applied.is_object() {
            return Err(ApiError::bad_request(
                "the applied configuration must be an object",
            ));
        }
        let force = q.flag("force");
        let doc = super::openapi::get();
        let now = object::timestamp(Utc::now());
        let opts = &WriteOptions {
            apply: true,
            ..opts.clone()
        };
        match self.get_object(s, ns, name).await {
            Err(e) if e.reason == "NotFound" && subresource.is_none() => {
                let mut obj =
                    patch::apply(None, &applied, &opts.manager, force, doc, type_name, &now)
                        .map_err(|e| apply_error(&t, e))?;
                object::meta_mut(&mut obj).insert("name".into(), json!(name));
                let mut w = Warnings::default();
                let created = self.create_object(s, ns, obj, opts, &mut w).await?;
                Ok((created, StatusCode::CREATED))
            }
            Err(e) => Err(e),
            Ok(_) => {
                let updated = self
                    .guaranteed_update(s, ns, name, subresource, opts, |old| {
                        patch::apply(
                            Some(old),
                            &applied,
                            &opts.manager,
                            force,
                            doc,
                            type_name,
                            &now,
                        )
                        .map_err(|e| apply_error(&t, e))
                    })
                    .await?;
                Ok((updated, StatusCode::OK))
            }
        }
    }

    /// POST pods/<name>/binding: the scheduler's write, once per pod.
    async fn bind(
        &self,
        s: &dyn Strategy,
        ns: Option<&str>,
        name: &str,
        binding: &Value,
        opts: &WriteOptions,
    ) -> Result<(), ApiError> {
        let t = storage::target(s.info(), name);
        let node = binding["target"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    &t,
                    &[crate::registry::Cause {
                        field: "target.name".into(),
                        reason: "FieldValueRequired",
                        message: "Required value".into(),
                    }],
                )
            })?
            .to_string();
        let now = object::timestamp(Utc::now());
        self.guaranteed_update(s, ns, name, Some("binding"), opts, |old| {
            if object::deletion_timestamp(old).is_some() {
                return Err(ApiError::conflict(&t, "pod is being deleted, cannot be assigned to a host"));
            }
            if let Some(cur) = old["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(ApiError::conflict(&t, &format!("pod {name} is already assigned to node \"{cur}\"")));
            }
            let mut new = old.clone();
            new["spec"]["nodeName"] = json!(node);
            let conds = new["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
            conds.push(json!({ "type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now }));
            new["status"]["conditions"] = json!(conds);
            Ok(new)
        })
        .await
        .map(|_| ())
    }
}

fn patch_error(t: &status::Target, msg: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!(
            "{} \"{}\" is invalid: the patch could not be applied: {msg}",
            t.kind, t.name
        ),
    )
}

fn apply_error(t: &status::Target, e: patch::ApplyError) -> ApiError {
    match e {
        patch::ApplyError::Conflicts(_) => {
            ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string())
        }
        other => patch_error(t, &other.to_string()),
    }
}

fn include_object(q: &Query) -> Result<printers::IncludeObject, ApiError> {
    match q.get("includeObject") {
        None | Some("Metadata") => Ok(printers::IncludeObject::Metadata),
        Some("None") => Ok(printers::IncludeObject::None),
        Some("Object") => Ok(printers::IncludeObject::Object),
        Some(other) => Err(ApiError::bad_request(format!(
            "includeObject must be None, Metadata or Object, not {other:?}"
        ))),
    }
}

pub(super) fn partial(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// DeleteOptions from the body (kubectl sends one) and the query.
fn delete_options(
    q: &Query,
    headers: &HeaderMap,
    body: &[u8],
    user: &auth::User,
) -> Result<DeleteOptions, ApiError> {
    let b = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        codec::decode_object(headers, body)?
    };
    let grace = match q.int("gracePeriodSeconds")? {
        Some(g) => Some(g),
        None => b["gracePeriodSeconds"].as_i64(),
    };
    let propagation = q
        .get("propagationPolicy")
        .map(str::to_string)
        .or_else(|| b["propagationPolicy"].as_str().map(str::to_string))
        .or_else(|| {
            match b["orphanDependents"]
                .as_bool()
                .or(q.get("orphanDependents").map(|v| v == "true"))
            {
                Some(true) => Some("Orphan".to_string()),
                _ => None,
            }
        });
    let dry_run = match dry_run(q)? {
        Some(d) => d,
        None => b["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "All")),
    };
    Ok(DeleteOptions {
        grace_period: grace,
        propagation,
        uid: b["preconditions"]["uid"].as_str().map(str::to_string),
        resource_version: b["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        dry_run,
        user: Some(user.clone()),
    })
}
