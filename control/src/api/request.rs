//! What a request is about, read from its method and path as kube-apiserver's
//! RequestInfoFactory reads it: the API group and version, namespace, resource, name,
//! subresource and verb.

use std::collections::HashMap;

use super::status::ApiError;

/// The verbs of Kubernetes' authorization attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// A request on a resource: `/api/v1/namespaces/default/pods/web/status`,
/// `/apis/apps/v1/deployments`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRequest {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    pub verb: Verb,
}

/// Where a path leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/api`, `/apis`, `/api/v1`, `/apis/<group>`, `/apis/<group>/<version>`.
    Discovery {
        group: Option<String>,
        version: Option<String>,
        legacy: bool,
    },
    Resource(ResourceRequest),
    Other(String),
}

/// Query parameters, decoded; the last value of a repeated key wins, as in Go's
/// url.Values.Get it is the first: kube-apiserver takes the first, so this does too.
#[derive(Clone, Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        let mut m = HashMap::new();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            m.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Query(m)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.0.get(k).map(String::as_str), Some("true" | "1" | ""))
    }

    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value for {k}: {v:?} is not an integer"))
            }),
        }
    }
}

/// Parses a request path (without the query). `watch` is the query's watch flag.
pub fn route(method: &http::Method, path: &str, watch: bool) -> Result<Route, ApiError> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (legacy, group, rest) = match parts.as_slice() {
        ["api"] => {
            return Ok(Route::Discovery {
                group: None,
                version: None,
                legacy: true,
            })
        }
        ["api", version] => {
            return Ok(Route::Discovery {
                group: Some(String::new()),
                version: Some(version.to_string()),
                legacy: true,
            })
        }
        ["apis"] => {
            return Ok(Route::Discovery {
                group: None,
                version: None,
                legacy: false,
            })
        }
        ["apis", group] => {
            return Ok(Route::Discovery {
                group: Some(group.to_string()),
                version: None,
                legacy: false,
            })
        }
        ["apis", group, version] => {
            return Ok(Route::Discovery {
                group: Some(group.to_string()),
                version: Some(version.to_string()),
                legacy: false,
            })
        }
        ["api", rest @ ..] => (true, "", rest),
        ["apis", group, rest @ ..] => (false, *group, rest),
        _ => return Ok(Route::Other(path.to_string())),
    };
    let _ = legacy;
    let (version, mut rest) = rest.split_first().ok_or_else(ApiError::no_route)?;
    // `/watch/` in the path is the old form of `?watch=true`.
    let mut watch = watch;
    if rest.first() == Some(&"watch") {
        watch = true;
        rest = &rest[1..];
    }
    let mut namespace = None;
    // `/namespaces/<ns>/<resource>...`; `/namespaces/<name>` alone is the namespace itself.
    // `/namespaces/<name>/status` and `/finalize` are the namespace's own subresources.
    let own_subresource = rest.len() == 3 && matches!(rest[2], "status" | "finalize");
    if rest.len() >= 3 && rest[0] == "namespaces" && !own_subresource {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    let (resource, name, subresource) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, s] => (*r, Some(*n), Some(*s)),
        _ => return Err(ApiError::no_route()),
    };
    for part in [Some(resource), name, subresource].into_iter().flatten() {
        if part.is_empty() {
            return Err(ApiError::no_route());
        }
    }
    if let Some(ns) = &namespace {
        if ns.is_empty() {
            return Err(ApiError::no_route());
        }
    }
    let verb = match (method.as_str(), name.is_some()) {
        ("GET" | "HEAD", _) if watch => Verb::Watch,
        ("GET" | "HEAD", true) => Verb::Get,
        ("GET" | "HEAD", false) => Verb::List,
        ("POST", _) => Verb::Create,
        ("PUT", _) => Verb::Update,
        ("PATCH", _) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => {
            return Err(ApiError::new(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("the server does not allow the method {method}"),
            ))
        }
    };
    Ok(Route::Resource(ResourceRequest {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource: resource.to_string(),
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
        verb,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn res(method: Method, path: &str) -> ResourceRequest {
        match route(&method, path, false).unwrap() {
            Route::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn paths_name_what_they_address() {
        let r = res(Method::GET, "/api/v1/namespaces/default/pods/web/status");
        assert_eq!(r.group, "");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.resource, "pods");
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.subresource.as_deref(), Some("status"));
        assert_eq!(r.verb, Verb::Get);

        let r = res(Method::GET, "/api/v1/namespaces/default");
        assert_eq!(r.resource, "namespaces");
        assert_eq!(r.name.as_deref(), Some("default"));
        assert_eq!(r.namespace, None);

        let r = res(Method::PUT, "/api/v1/namespaces/kube-system/finalize");
        assert_eq!(r.resource, "namespaces");
        assert_eq!(r.name.as_deref(), Some("kube-system"));
        assert_eq!(r.subresource.as_deref(), Some("finalize"));

        let r = res(Method::GET, "/apis/apps/v1/deployments");
        assert_eq!((r.group.as_str(), r.verb), ("apps", Verb::List));

        let r = res(Method::DELETE, "/apis/apps/v1/namespaces/a/replicasets");
        assert_eq!(r.verb, Verb::DeleteCollection);

        let r = res(Method::GET, "/api/v1/watch/namespaces/a/pods");
        assert_eq!((r.verb, r.namespace.as_deref()), (Verb::Watch, Some("a")));
    }

    #[test]
    fn discovery_and_unknown_paths() {
        assert!(matches!(
            route(&Method::GET, "/apis/apps/v1", false).unwrap(),
            Route::Discovery { legacy: false, .. }
        ));
        assert!(matches!(
            route(&Method::GET, "/version", false).unwrap(),
            Route::Other(_)
        ));
        assert!(route(&Method::GET, "/api/v1/namespaces/a/pods/b/c/d", false).is_err());
        assert!(route(&Method::GET, "/api/v1/namespaces//pods", false).is_err());
    }

    #[test]
    fn query_takes_the_first_value() {
        let q = Query::parse(Some("watch=1&limit=5&limit=7&labelSelector=app%3Dweb"));
        assert!(q.flag("watch"));
        assert_eq!(q.int("limit").unwrap(), Some(5));
        assert_eq!(q.get("labelSelector"), Some("app=web"));
        assert!(Query::parse(Some("limit=x")).int("limit").is_err());
    }
}
