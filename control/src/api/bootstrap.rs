//! What a new cluster holds before anyone writes: the system namespaces with their
//! `default` ServiceAccounts, the `kubernetes` Service whose endpoints are this
//! server, and the `kube-dns` Service whose address every node's agent answers DNS on.

use serde_json::{json, Value};
use tracing::warn;

use super::status::ApiError;
use super::storage::{Warnings, WriteOptions};
use super::Api;

pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

impl Api {
    /// Creates what is missing; what exists is left as it is, so a restart or a second
    /// server on the same etcd changes nothing.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        let opts = WriteOptions {
            manager: "kube-apiserver".into(),
            ..Default::default()
        };
        for ns in SYSTEM_NAMESPACES {
            self.create_if_missing(
                "",
                "namespaces",
                None,
                json!({
                    "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns },
                }),
                &opts,
            )
            .await?;
            self.ensure_default_service_account(ns).await;
        }
        let ip = self
            .config
            .kubernetes_service_ip()
            .ok_or_else(|| ApiError::internal("the service CIDR has no addresses"))?;
        let port = self.config.advertise.port();
        self.create_if_missing("", "services", Some("default"), json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "kubernetes", "namespace": "default",
                          "labels": { "component": "apiserver", "provider": "kubernetes" } },
            "spec": { "type": "ClusterIP", "clusterIP": ip.to_string(),
                      "ports": [{ "name": "https", "port": 443, "protocol": "TCP", "targetPort": port }] },
        }), &opts)
        .await?;
        // No selector and no endpoints: the address is answered on each node by its
        // agent, not forwarded to pods.
        if let Some(dns) = self.config.cluster_dns_ip() {
            self.create_if_missing("", "services", Some("kube-system"), json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": "kube-dns", "namespace": "kube-system",
                              "labels": { "k8s-app": "kube-dns", "kubernetes.io/name": "podrun-dns",
                                          "kubernetes.io/cluster-service": "true" } },
                "spec": { "type": "ClusterIP", "clusterIP": dns.to_string(),
                          "ports": [{ "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53 },
                                    { "name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53 }] },
            }), &opts)
            .await?;
        }
        self.reconcile_kubernetes_endpoints(&opts).await
    }

    /// The `kubernetes` Endpoints name this server's advertised address (several
    /// servers on one store each add theirs).
    async fn reconcile_kubernetes_endpoints(&self, opts: &WriteOptions) -> Result<(), ApiError> {
        let addr = self.config.advertise.ip().to_string();
        let port = self.config.advertise.port();
        let endpoints = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": { "name": "kubernetes", "namespace": "default",
                          "labels": { "endpointslice.kubernetes.io/skip-mirror": "true" } },
            "subsets": [{ "addresses": [{ "ip": addr }],
                          "ports": [{ "name": "https", "port": port, "protocol": "TCP" }] }],
        });
        let Some(s) = self.strategy("", "endpoints") else {
            return Ok(());
        };
        match self.get_object(s, Some("default"), "kubernetes").await {
            Err(e) if e.reason == "NotFound" => {
                self.create_if_missing("", "endpoints", Some("default"), endpoints, opts)
                    .await
            }
            Err(e) => Err(e),
            Ok(_) => {
                let addr2 = addr.clone();
                self.guaranteed_update(s, Some("default"), "kubernetes", None, opts, move |old| {
                    let mut new = old.clone();
                    let mut addrs: Vec<Value> = old["subsets"][0]["addresses"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if !addrs.iter().any(|a| a["ip"] == addr2.as_str()) {
                        addrs.push(json!({ "ip": addr2 }));
                    }
                    new["subsets"] = json!([{ "addresses": addrs,
                        "ports": [{ "name": "https", "port": port, "protocol": "TCP" }] }]);
                    Ok(new)
                })
                .await
                .map(|_| ())
            }
        }
    }

    async fn create_if_missing(
        &self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<(), ApiError> {
        let Some(s) = self.strategy(group, plural) else {
            warn!(resource = plural, "not served; not created at start-up");
            return Ok(());
        };
        let mut w = Warnings::default();
        match self.create_object(s, ns, obj, opts, &mut w).await {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }
}
