//! Discovery as kube-apiserver serves it: /api, /apis, the per-group-version resource
//! lists, the aggregated format (apidiscovery.k8s.io/v2) newer clients ask for first,
//! and the OpenAPI documents.

use std::collections::BTreeMap;

use http::{header, HeaderMap, Response, StatusCode};
use serde_json::{json, Value};

use super::codec::{self, json_response, Body};
use super::request::Query;
use super::status::ApiError;
use super::Api;
use crate::registry::ResourceInfo;

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The verbs and the kind (group, version, kind) a subresource answers with.
fn subresource(
    info: &ResourceInfo,
    name: &str,
) -> (
    &'static [&'static str],
    (&'static str, &'static str, &'static str),
) {
    let own = (info.group, info.version, info.kind);
    match name {
        "status" => (&["get", "patch", "update"], own),
        "scale" => (&["get", "patch", "update"], ("autoscaling", "v1", "Scale")),
        "log" => (&["get"], own),
        "exec" => (&["create", "get"], ("", "v1", "PodExecOptions")),
        "attach" => (&["create", "get"], ("", "v1", "PodAttachOptions")),
        "portforward" => (&["create", "get"], ("", "v1", "PodPortForwardOptions")),
        "binding" => (&["create"], ("", "v1", "Binding")),
        "eviction" => (&["create"], ("policy", "v1", "Eviction")),
        "finalize" => (&["update"], own),
        _ => (&["get"], own),
    }
}

/// The groups served, each with its versions, core ("") first, then by name.
fn groups(api: &Api) -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut g: BTreeMap<&'static str, Vec<&'static str>> = BTreeMap::new();
    for s in api.resources() {
        let v = g.entry(s.info().group).or_default();
        if !v.contains(&s.info().version) {
            v.push(s.info().version);
        }
    }
    g
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Whether the client asked for the aggregated format, and which version of it.
fn aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for item in accept.split(',') {
        let params: Vec<&str> = item.split(';').map(str::trim).collect();
        let has = |p: &str| params.iter().any(|x| x.replace(' ', "") == p);
        if has("g=apidiscovery.k8s.io") && has("as=APIGroupDiscoveryList") {
            if has("v=v2") {
                return Some("v2");
            }
            if has("v=v2beta1") {
                return Some("v2beta1");
            }
        }
        // The client prefers what comes first; a plain JSON entry before any aggregated
        // one means it wants the plain form.
        if params.first().is_some_and(|m| *m == "application/json") && params.len() == 1 {
            return None;
        }
    }
    None
}

impl Api {
    pub(super) fn discovery(
        &self,
        headers: &HeaderMap,
        legacy: bool,
        group: Option<&str>,
        version: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        let served = groups(self);
        match (group, version) {
            (None, _) => {
                if let Some(v) = aggregated(headers) {
                    return Ok(self.aggregated_list(legacy, v));
                }
                if legacy {
                    Ok(json_response(
                        StatusCode::OK,
                        &json!({
                            "kind": "APIVersions",
                            "versions": ["v1"],
                            "serverAddressByClientCIDRs": [{
                                "clientCIDR": "0.0.0.0/0",
                                "serverAddress": self.config.advertise.to_string(),
                            }],
                        }),
                    ))
                } else {
                    let groups: Vec<Value> = served
                        .iter()
                        .filter(|(g, _)| !g.is_empty())
                        .map(|(g, vs)| api_group(g, vs))
                        .collect();
                    Ok(json_response(
                        StatusCode::OK,
                        &json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }),
                    ))
                }
            }
            (Some(g), None) => match served.get(g) {
                Some(vs) if !g.is_empty() => Ok(json_response(StatusCode::OK, &api_group(g, vs))),
                _ => Err(ApiError::no_route()),
            },
            (Some(g), Some(v)) => {
                if !served.get(g).is_some_and(|vs| vs.contains(&v)) {
                    return Err(ApiError::no_route());
                }
                let mut resources = Vec::new();
                for s in self
                    .resources()
                    .filter(|s| s.info().group == g && s.info().version == v)
                {
                    let i = s.info();
                    resources.push(json!({
                        "name": i.plural,
                        "singularName": i.singular,
                        "namespaced": i.namespaced,
                        "kind": i.kind,
                        "verbs": VERBS,
                        "shortNames": i.short_names,
                        "categories": i.categories,
                    }));
                    for sub in i.subresources {
                        let (verbs, (sg, sv, sk)) = subresource(i, sub);
                        let mut e = json!({
                            "name": format!("{}/{sub}", i.plural),
                            "singularName": "",
                            "namespaced": i.namespaced,
                            "kind": sk,
                            "verbs": verbs,
                        });
                        if (sg, sv) != (i.group, i.version) {
                            e["group"] = json!(sg);
                            e["version"] = json!(sv);
                        }
                        resources.push(e);
                    }
                }
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "kind": "APIResourceList",
                        "apiVersion": "v1",
                        "groupVersion": group_version(g, v),
                        "resources": resources,
                    }),
                ))
            }
        }
    }

    fn aggregated_list(&self, legacy: bool, version: &str) -> Response<Body> {
        let mut items = Vec::new();
        for (g, vs) in groups(self) {
            if legacy != g.is_empty() {
                continue;
            }
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = self
                        .resources()
                        .filter(|s| s.info().group == g && s.info().version == *v)
                        .map(|s| {
                            let i = s.info();
                            let subs: Vec<Value> = i
                                .subresources
                                .iter()
                                .map(|sub| {
                                    let (verbs, (sg, sv, sk)) = subresource(i, sub);
                                    json!({
                                        "subresource": sub,
                                        "responseKind": { "group": sg, "version": sv, "kind": sk },
                                        "verbs": verbs,
                                    })
                                })
                                .collect();
                            let mut r = json!({
                                "resource": i.plural,
                                "responseKind": { "group": i.group, "version": i.version, "kind": i.kind },
                                "scope": if i.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": i.singular,
                                "verbs": VERBS,
                            });
                            if !i.short_names.is_empty() {
                                r["shortNames"] = json!(i.short_names);
                            }
                            if !i.categories.is_empty() {
                                r["categories"] = json!(i.categories);
                            }
                            if !subs.is_empty() {
                                r["subresources"] = json!(subs);
                            }
                            r
                        })
                        .collect();
                    json!({ "version": v, "resources": resources, "freshness": "Current" })
                })
                .collect();
            items.push(json!({ "metadata": { "name": g }, "versions": versions }));
        }
        let body = json!({
            "kind": "APIGroupDiscoveryList",
            "apiVersion": format!("apidiscovery.k8s.io/{version}"),
            "metadata": {},
            "items": items,
        });
        let mut resp = json_response(StatusCode::OK, &body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_str(&format!(
                "application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
            ))
            .expect("a static media type"),
        );
        resp
    }

    pub(super) fn serve_openapi(
        &self,
        headers: &HeaderMap,
        path: &str,
        _query: &Query,
    ) -> Result<Response<Body>, ApiError> {
        let doc = super::openapi::get();
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (bytes, content_type) = match path {
            "/openapi/v2" => {
                if super::openapi::wants_v2_protobuf(accept) {
                    (doc.v2_protobuf(), super::openapi::V2_PROTOBUF_CONTENT_TYPE)
                } else {
                    (doc.v2_json(), "application/json")
                }
            }
            "/openapi/v3" => (doc.v3_index(), "application/json"),
            p => match p.strip_prefix("/openapi/v3/") {
                Some(gv) => (
                    doc.v3_group_version(gv).ok_or_else(ApiError::no_route)?,
                    "application/json",
                ),
                None => return Err(ApiError::no_route()),
            },
        };
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .body(codec::full(bytes))
            .expect("static headers are valid"))
    }
}

fn api_group(g: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({ "groupVersion": group_version(g, v), "version": v }))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": g,
        "versions": vs,
        "preferredVersion": vs[0],
    })
}
