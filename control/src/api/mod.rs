//! The HTTP API: routing, discovery, OpenAPI, the generic resource handlers, watch,
//! patch, admission, authentication, and the proxy to kubelets.

mod admission;
pub mod auth;
mod bootstrap;
pub mod codec;
mod discovery;
pub mod handlers;
pub mod kubelet;
pub mod metrics;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod request;
pub mod selector;
pub mod status;
pub mod storage;
mod subresources;
mod watch;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use ipnet::IpNet;
use serde_json::json;

use codec::{error_response, json_response, text_response, Body};
use request::{Query, Route};
use status::ApiError;

use crate::registry::Strategy;
use crate::store::Store;

/// The Kubernetes version whose API podrun serves: its types are k8s-openapi's v1_33.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";

#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `--service-cluster-ip-range`.
    pub service_cidr: IpNet,
    /// `--service-node-port-range`, inclusive.
    pub node_ports: (u16, u16),
    /// Where clients reach this server: in /api's serverAddressByClientCIDRs and the
    /// `kubernetes` Service's endpoints.
    pub advertise: SocketAddr,
}

impl ApiConfig {
    /// The first address of the service CIDR: the `kubernetes` Service's ClusterIP.
    pub fn kubernetes_service_ip(&self) -> Option<IpAddr> {
        self.service_cidr.hosts().next()
    }

    /// The tenth address of the service CIDR: the `kube-dns` Service's ClusterIP (as
    /// kubeadm picks it), where every node's agent answers cluster DNS.
    pub fn cluster_dns_ip(&self) -> Option<IpAddr> {
        self.service_cidr.hosts().nth(9)
    }
}

/// Who is asking. None: an anonymous request.
pub type User = Option<auth::User>;

pub struct Api {
    pub store: Arc<dyn Store>,
    pub config: ApiConfig,
    resources: Vec<Box<dyn Strategy>>,
    /// Serializes ClusterIP and NodePort allocation.
    allocations: tokio::sync::Mutex<()>,
    pub metrics: metrics::Metrics,
    /// Ends every watch when the server shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// How pods/log, exec, attach and portforward reach kubelets; without it they are 503.
    pub kubelet_client: Option<kubelet::KubeletClient>,
}

impl Api {
    pub fn new(
        store: Arc<dyn Store>,
        config: ApiConfig,
        resources: Vec<Box<dyn Strategy>>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Api {
        Api {
            store,
            config,
            resources,
            allocations: tokio::sync::Mutex::new(()),
            metrics: metrics::Metrics::default(),
            shutdown,
            kubelet_client: None,
        }
    }

    /// Reaches kubelets with this client.
    pub fn with_kubelet_client(mut self, client: kubelet::KubeletClient) -> Api {
        self.kubelet_client = Some(client);
        self
    }

    pub fn resources(&self) -> impl Iterator<Item = &dyn Strategy> {
        self.resources.iter().map(|r| r.as_ref())
    }

    /// The resource of a group and plural name.
    pub fn strategy(&self, group: &str, plural: &str) -> Option<&dyn Strategy> {
        self.resources()
            .find(|s| s.info().group == group && s.info().plural == plural)
    }

    /// Serves one request of an authenticated (or anonymous) user.
    pub async fn handle<B>(self: &Arc<Self>, req: Request<B>, user: User) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = std::time::Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = Query::parse(req.uri().query());
        let labels = match request::route(&method, &path, query.flag("watch")) {
            Ok(Route::Resource(r)) => Some((
                r.verb,
                r.group,
                r.resource,
                r.subresource.unwrap_or_default(),
            )),
            _ => None,
        };
        let response = match self.dispatch(req, &path, &query, user).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        if let Some((verb, group, resource, sub)) = labels {
            self.metrics.observe(
                &verb.as_str().to_ascii_uppercase(),
                &group,
                &resource,
                &sub,
                response.status().as_u16(),
                started.elapsed(),
            );
        }
        if method == Method::HEAD {
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, codec::full(Bytes::new()));
        }
        response
    }

    async fn dispatch<B>(
        self: &Arc<Self>,
        req: Request<B>,
        path: &str,
        query: &Query,
        user: User,
    ) -> Result<Response<Body>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Health and version are public, as kube-apiserver's default RBAC makes them.
        match path {
            "/healthz" | "/livez" | "/readyz" => {
                return Ok(match self.store.revision().await {
                    Ok(_) => text_response(StatusCode::OK, "ok"),
                    Err(e) => text_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!(
                            "[-]etcd failed: {e}\n{} check failed",
                            path.trim_start_matches('/')
                        ),
                    ),
                })
            }
            "/version" => return Ok(json_response(StatusCode::OK, &version())),
            _ => {}
        }
        let Some(user) = user else {
            return Err(ApiError::unauthorized());
        };
        if path == "/metrics" {
            return Ok(text_response(StatusCode::OK, &self.metrics.render()));
        }
        let route = request::route(req.method(), path, query.flag("watch"))?;
        match route {
            Route::Discovery {
                group,
                version,
                legacy,
            } => self.discovery(req.headers(), legacy, group.as_deref(), version.as_deref()),
            Route::Other(p) if p.starts_with("/openapi/") => {
                self.serve_openapi(req.headers(), &p, query)
            }
            Route::Other(_) => Err(ApiError::no_route()),
            Route::Resource(r) => self.resource(req, r, query, &user).await,
        }
    }
}

pub fn version() -> serde_json::Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0-podrun.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else if cfg!(target_arch = "aarch64") { "arm64" } else { std::env::consts::ARCH }),
    })
}

pub(crate) fn warning_header(text: &str) -> header::HeaderValue {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    header::HeaderValue::from_str(&format!("299 - \"{escaped}\""))
        .unwrap_or_else(|_| header::HeaderValue::from_static("299 - \"(unprintable warning)\""))
}
