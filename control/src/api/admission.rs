//! What kube-apiserver's built-in admission and its in-process controllers do around a
//! write: Service ClusterIP and NodePort allocation, the NamespaceLifecycle rules, a
//! `default` ServiceAccount in each new namespace, and managedFields bookkeeping.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{json, Value};
use tracing::warn;

use super::object;
use super::status::ApiError;
use super::storage::{self, WriteOptions};
use super::Api;
use crate::registry::{Cause, ResourceInfo};

fn is(info: &ResourceInfo, group: &str, kind: &str) -> bool {
    info.group == group && info.kind == kind
}

impl Api {
    pub(super) async fn admit_create(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
        opts: &WriteOptions,
    ) -> Result<(), ApiError> {
        node_restriction(info, obj, None, opts)?;
        if is(info, "", "Service") {
            self.allocate_service(obj, None).await?;
        }
        if is(info, "certificates.k8s.io", "CertificateSigningRequest") {
            // Who asked is the server's to say, whatever the request claims.
            let spec = &mut obj["spec"];
            let (name, groups) = match &opts.user {
                Some(u) => (u.name.clone(), u.groups.clone()),
                None => (
                    "system:apiserver".to_string(),
                    vec!["system:masters".to_string()],
                ),
            };
            spec["username"] = json!(name);
            spec["groups"] = json!(groups);
            if let Some(m) = spec.as_object_mut() {
                m.remove("uid");
                m.remove("extra");
            }
        }
        Ok(())
    }

    pub(super) async fn admit_update(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
        old: &Value,
        opts: &WriteOptions,
    ) -> Result<(), ApiError> {
        node_restriction(info, obj, Some(old), opts)?;
        if is(info, "", "Service") {
            self.allocate_service(obj, Some(old)).await?;
        }
        Ok(())
    }

    pub(super) async fn after_create(&self, info: &ResourceInfo, obj: &Value) {
        if is(info, "", "Namespace") {
            if let Some(ns) = object::name(obj) {
                // Boxed: creating the account is itself a create.
                Box::pin(self.ensure_default_service_account(ns)).await;
            }
        }
    }

    pub(super) async fn after_delete(&self, _info: &ResourceInfo, _obj: &Value) {}

    /// Whether a delete must wait for something besides finalizers: a namespace with
    /// spec.finalizers waits for its contents to go.
    pub(super) fn deletion_pending(&self, info: &ResourceInfo, obj: &Value) -> bool {
        is(info, "", "Namespace")
            && obj["spec"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
    }

    pub(super) fn on_terminating(&self, info: &ResourceInfo, obj: &mut Value) {
        if is(info, "", "Namespace") {
            obj["status"]["phase"] = json!("Terminating");
        }
    }

    pub(crate) async fn ensure_default_service_account(&self, ns: &str) {
        let Some(s) = self.strategy("", "serviceaccounts") else {
            return;
        };
        let sa = json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": { "name": "default", "namespace": ns },
        });
        let opts = WriteOptions {
            manager: "kube-controller-manager".into(),
            ..Default::default()
        };
        let mut w = Default::default();
        match self.create_object(s, Some(ns), sa, &opts, &mut w).await {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => {
                warn!(namespace = ns, error = %e.message, "creating the default service account")
            }
        }
    }

    /// ClusterIP and NodePorts, as kube-apiserver's service REST storage allocates them:
    /// free addresses of the service CIDR (the first one is the `kubernetes` Service's),
    /// ports from the NodePort range. An address or port asked for must be free.
    async fn allocate_service(&self, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let _guard = self.allocations.lock().await;
        let s = self
            .strategy("", "services")
            .ok_or_else(|| ApiError::internal("services are not served"))?;
        let prefix = storage::prefix(s.info(), None);
        let page = self
            .store
            .list(&prefix, None, None, None)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let me = (
            object::namespace(obj).map(str::to_string),
            object::name(obj).map(str::to_string),
        );
        let mut ips = HashSet::new();
        let mut ports = HashSet::new();
        for kv in &page.items {
            let Ok(v) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            if (
                object::namespace(&v).map(str::to_string),
                object::name(&v).map(str::to_string),
            ) == me
            {
                continue;
            }
            if let Some(ip) = v["spec"]["clusterIP"]
                .as_str()
                .and_then(|i| i.parse::<IpAddr>().ok())
            {
                ips.insert(ip);
            }
            for p in v["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(n) = p["nodePort"].as_i64() {
                    ports.insert(n);
                }
            }
        }
        let t = storage::target(s.info(), me.1.as_deref().unwrap_or(""));
        let svc_type = obj["spec"]["type"]
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string();
        let old_ip = old
            .and_then(|o| o["spec"]["clusterIP"].as_str())
            .map(str::to_string);
        let ip = obj["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
        if svc_type != "ExternalName" {
            if ip.is_empty() {
                let chosen = match old_ip {
                    Some(o) if !o.is_empty() => o,
                    _ => self.free_service_ip(&ips).ok_or_else(|| {
                        ApiError::internal("failed to allocate a serviceIP: range is full")
                    })?,
                };
                obj["spec"]["clusterIP"] = json!(chosen);
                obj["spec"]["clusterIPs"] = json!([chosen]);
            } else if ip != "None" && old_ip.as_deref() != Some(ip.as_str()) {
                let parsed: IpAddr = ip.parse().map_err(|_| {
                    ApiError::invalid(
                        &t,
                        &[cause(
                            "spec.clusterIPs[0]",
                            &ip,
                            "must be a valid IP address",
                        )],
                    )
                })?;
                if !self.config.service_cidr.contains(&parsed) {
                    return Err(ApiError::invalid(&t, &[cause(
                        "spec.clusterIPs",
                        &ip,
                        &format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}", self.config.service_cidr),
                    )]));
                }
                if ips.contains(&parsed) {
                    return Err(ApiError::invalid(
                        &t,
                        &[cause(
                            "spec.clusterIPs",
                            &ip,
                            &format!(
                                "failed to allocate IP {ip}: provided IP is already allocated"
                            ),
                        )],
                    ));
                }
                obj["spec"]["clusterIPs"] = json!([ip]);
            }
        }
        if matches!(svc_type.as_str(), "NodePort" | "LoadBalancer") {
            let (lo, hi) = self.config.node_ports;
            let old_ports: Vec<i64> = old
                .and_then(|o| o["spec"]["ports"].as_array())
                .into_iter()
                .flatten()
                .filter_map(|p| p["nodePort"].as_i64())
                .collect();
            let mut mine = HashSet::new();
            let list = obj["spec"]["ports"].as_array_mut();
            for (i, p) in list.into_iter().flatten().enumerate() {
                match p["nodePort"].as_i64() {
                    Some(n) if n != 0 => {
                        if !(lo as i64..=hi as i64).contains(&n) {
                            return Err(ApiError::invalid(&t, &[cause(
                                &format!("spec.ports[{i}].nodePort"),
                                &n.to_string(),
                                &format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
                            )]));
                        }
                        if ports.contains(&n) && !old_ports.contains(&n) {
                            return Err(ApiError::invalid(
                                &t,
                                &[cause(
                                    &format!("spec.ports[{i}].nodePort"),
                                    &n.to_string(),
                                    "provided port is already allocated",
                                )],
                            ));
                        }
                        mine.insert(n);
                    }
                    _ => {
                        let reuse = old_ports.get(i).copied().filter(|n| !mine.contains(n));
                        let n = reuse
                            .or_else(|| {
                                (lo as i64..=hi as i64)
                                    .find(|n| !ports.contains(n) && !mine.contains(n))
                            })
                            .ok_or_else(|| {
                                ApiError::internal("failed to allocate a nodePort: range is full")
                            })?;
                        mine.insert(n);
                        p["nodePort"] = json!(n);
                    }
                }
            }
        }
        Ok(())
    }

    fn free_service_ip(&self, used: &HashSet<IpAddr>) -> Option<String> {
        // The first address is the `kubernetes` Service's; the network and broadcast
        // addresses are never handed out.
        let net = self.config.service_cidr;
        let kubernetes = self.config.kubernetes_service_ip();
        net.hosts()
            .skip(1)
            .find(|ip| !used.contains(ip) && Some(*ip) != kubernetes)
            .map(|ip| ip.to_string())
    }

    /// managedFields after an ordinary write (create, update, any patch but apply), as
    /// kube-apiserver keeps them: the writer's Update entry takes the fields it set or
    /// changed. An apply has recorded its own entry already.
    pub(super) fn track_fields(
        &self,
        old: Option<&Value>,
        obj: &mut Value,
        opts: &WriteOptions,
        info: &ResourceInfo,
    ) {
        if opts.apply {
            return;
        }
        let doc = super::openapi::get();
        let type_name = doc
            .definition_name(info.group, info.version, info.kind)
            .unwrap_or(info.kind);
        let api_version = if info.group.is_empty() {
            info.version.to_string()
        } else {
            format!("{}/{}", info.group, info.version)
        };
        let now = object::timestamp(chrono::Utc::now());
        super::patch::record_update(old, obj, &opts.manager, &api_version, &now, doc, type_name);
    }
}

/// What kube-apiserver's NodeRestriction admission adds to the node authorizer, which
/// cannot see objects: a node writes only pods bound to it (their status; mirror pods on
/// create), and may not move a pod to another node.
pub(super) fn node_restriction(
    info: &ResourceInfo,
    obj: &Value,
    old: Option<&Value>,
    opts: &WriteOptions,
) -> Result<(), ApiError> {
    let Some(node) = opts.user.as_ref().and_then(|u| u.node()) else {
        return Ok(());
    };
    let name = object::name(obj).unwrap_or_default();
    // A create carries no name in its URL, so the authorizer lets it by: the object's
    // name is checked here.
    if is(info, "", "Node") || is(info, "coordination.k8s.io", "Lease") {
        if name != node {
            return Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: node \"{node}\" may only write its own",
                info.plural
            )));
        }
        return Ok(());
    }
    if !is(info, "", "Pod") {
        return Ok(());
    }
    let bound = |o: &Value| o["spec"]["nodeName"].as_str() == Some(node);
    let user = opts
        .user
        .as_ref()
        .map(|u| u.name.as_str())
        .unwrap_or_default();
    match old {
        None => {
            let mirror = obj["metadata"]["annotations"]
                .get("kubernetes.io/config.mirror")
                .is_some();
            if !mirror || !bound(obj) {
                return Err(ApiError::forbidden(format!(
                    "pod \"{name}\" is forbidden: node \"{node}\" can only create mirror pods bound to itself"
                )));
            }
        }
        Some(old) => {
            if !bound(old) || !bound(obj) {
                return Err(ApiError::forbidden(format!(
                    "pods \"{name}\" is forbidden: User \"{user}\" cannot update pod status of a pod not bound to node \"{node}\""
                )));
            }
        }
    }
    Ok(())
}

/// The delete half of NodeRestriction: a node deletes only pods bound to it.
pub(super) fn node_may_delete(
    info: &ResourceInfo,
    obj: &Value,
    user: Option<&super::auth::User>,
) -> Result<(), ApiError> {
    let Some(node) = user.and_then(|u| u.node()) else {
        return Ok(());
    };
    if is(info, "", "Pod") && obj["spec"]["nodeName"].as_str() != Some(node) {
        return Err(ApiError::forbidden(format!(
            "pods \"{}\" is forbidden: node \"{node}\" can only delete pods bound to itself",
            object::name(obj).unwrap_or_default()
        )));
    }
    Ok(())
}

fn cause(field: &str, value: &str, why: &str) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: \"{value}\": {why}"),
    }
}
