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

/// Where ClusterIP and NodePort claims live: outside /registry/<group>/, so no list of
/// a resource sees them.
const CLAIM_PREFIX: &str = "/podrun/allocations/";
const CLAIM_IPS: &str = "serviceips";
const CLAIM_PORTS: &str = "nodeports";
/// How long a claim stands without its Service holding the value: the time between the
/// claim and the Service's write.
const CLAIM_GRACE_SECS: i64 = 60;

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
            self.allocate_service(obj, None, opts.dry_run).await?;
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
            self.allocate_service(obj, Some(old), opts.dry_run).await?;
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

    pub(super) async fn after_delete(&self, info: &ResourceInfo, obj: &Value) {
        if is(info, "", "Service") {
            self.release_service(obj).await;
        }
    }

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
    async fn allocate_service(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        dry_run: bool,
    ) -> Result<(), ApiError> {
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
        let owner = format!(
            "{}/{}",
            me.0.as_deref().unwrap_or_default(),
            me.1.as_deref().unwrap_or_default()
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
                    _ => loop {
                        let ip = self.free_service_ip(&ips).ok_or_else(|| {
                            ApiError::internal("failed to allocate a serviceIP: range is full")
                        })?;
                        if dry_run || self.claim(CLAIM_IPS, &ip, &owner).await? {
                            break ip;
                        }
                        // Another server has just handed it out.
                        if let Ok(taken) = ip.parse() {
                            ips.insert(taken);
                        }
                    },
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
                if ips.contains(&parsed) || !dry_run && !self.claim(CLAIM_IPS, &ip, &owner).await? {
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
                        let claimed = old_ports.contains(&n)
                            || dry_run
                            || self.claim(CLAIM_PORTS, &n.to_string(), &owner).await?;
                        if ports.contains(&n) && !old_ports.contains(&n) || !claimed {
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
                        let n = match reuse {
                            Some(n) => n,
                            None => loop {
                                let n = (lo as i64..=hi as i64)
                                    .find(|n| !ports.contains(n) && !mine.contains(n))
                                    .ok_or_else(|| {
                                        ApiError::internal(
                                            "failed to allocate a nodePort: range is full",
                                        )
                                    })?;
                                if dry_run
                                    || self.claim(CLAIM_PORTS, &n.to_string(), &owner).await?
                                {
                                    break n;
                                }
                                ports.insert(n);
                            },
                        };
                        mine.insert(n);
                        p["nodePort"] = json!(n);
                    }
                }
            }
        }
        Ok(())
    }

    /// Claims a ClusterIP or NodePort for the Service `owner` ("namespace/name") across
    /// every server on this store, as kube-apiserver's IPAddress objects do: a key made
    /// only when absent. True when the claim is (now) the Service's. A claim older than
    /// a minute whose Service does not hold the value (a create that failed after
    /// claiming, a Service since deleted by an older server) is taken over.
    async fn claim(&self, kind: &str, value: &str, owner: &str) -> Result<bool, ApiError> {
        let key = format!("{CLAIM_PREFIX}{kind}/{value}");
        let record = |owner: &str| {
            json!({ "service": owner, "at": chrono::Utc::now().timestamp() })
                .to_string()
                .into_bytes()
        };
        let internal = |e: crate::store::StoreError| ApiError::internal(e.to_string());
        match self.store.create(&key, record(owner)).await {
            Ok(_) => return Ok(true),
            Err(crate::store::StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(internal(e)),
        }
        let Some(kv) = self.store.get(&key).await.map_err(internal)? else {
            return Ok(false);
        };
        let held: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        let holder = held["service"].as_str().unwrap_or_default();
        if holder == owner {
            return Ok(true);
        }
        let age = chrono::Utc::now().timestamp() - held["at"].as_i64().unwrap_or(0);
        if age < CLAIM_GRACE_SECS || self.service_holds(holder, kind, value).await {
            return Ok(false);
        }
        match self
            .store
            .update(&key, record(owner), kv.mod_revision)
            .await
        {
            Ok(_) => Ok(true),
            Err(_) => Ok(false),
        }
    }

    /// Whether the Service `holder` ("namespace/name") has the claimed value.
    async fn service_holds(&self, holder: &str, kind: &str, value: &str) -> bool {
        let Some((ns, name)) = holder.split_once('/') else {
            return false;
        };
        let Some(s) = self.strategy("", "services") else {
            return false;
        };
        let Ok(Some(kv)) = self
            .store
            .get(&storage::key(s.info(), Some(ns), name))
            .await
        else {
            return false;
        };
        let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else {
            return false;
        };
        match kind {
            CLAIM_IPS => svc["spec"]["clusterIP"] == value,
            _ => svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["nodePort"].as_i64().map(|n| n.to_string()).as_deref() == Some(value)),
        }
    }

    /// Gives back a deleted Service's claims.
    async fn release_service(&self, svc: &Value) {
        let owner = format!(
            "{}/{}",
            object::namespace(svc).unwrap_or_default(),
            object::name(svc).unwrap_or_default()
        );
        let mut keys = Vec::new();
        if let Some(ip) = svc["spec"]["clusterIP"]
            .as_str()
            .filter(|i| i.parse::<IpAddr>().is_ok())
        {
            keys.push(format!("{CLAIM_PREFIX}{CLAIM_IPS}/{ip}"));
        }
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(n) = p["nodePort"].as_i64() {
                keys.push(format!("{CLAIM_PREFIX}{CLAIM_PORTS}/{n}"));
            }
        }
        for key in keys {
            let Ok(Some(kv)) = self.store.get(&key).await else {
                continue;
            };
            let held: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            if held["service"] == owner.as_str() {
                if let Err(e) = self.store.delete(&key, Some(kv.mod_revision)).await {
                    warn!(key = %key, error = %e, "releasing a service's claim");
                }
            }
        }
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
        let type_name = doc.type_name(info);
        let api_version = storage::api_version(info);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::api::storage::Warnings;

    fn api_on(store: Arc<dyn crate::store::Store>) -> (Arc<Api>, tokio::sync::watch::Sender<bool>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let config = crate::api::ApiConfig {
            // A small range: collisions are likely when the claims do not work.
            service_cidr: "10.96.0.0/28".parse().unwrap(),
            node_ports: (30000, 30015),
            advertise: "127.0.0.1:6443".parse().unwrap(),
        };
        let api = Arc::new(Api::new(store, config, crate::registry::all(), rx));
        (api, tx)
    }

    fn service(name: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": "default" },
            "spec": { "type": "NodePort", "ports": [{ "port": 80 }] },
        })
    }

    async fn create(api: &Api, obj: Value) -> Result<Value, ApiError> {
        let s = api.strategy("", "services").unwrap();
        api.create_object(
            s,
            Some("default"),
            obj,
            &WriteOptions::default(),
            &mut Warnings::default(),
        )
        .await
    }

    /// Two servers on one store, creating Services at once, never hand out one
    /// ClusterIP or NodePort twice; a deleted Service's values go back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers_sharing_a_store_never_hand_out_one_ip_or_port_twice() {
        let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemoryStore::new());
        let (a, _ta) = api_on(store.clone());
        let (b, _tb) = api_on(store.clone());
        a.bootstrap().await.unwrap();
        b.bootstrap().await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (a, b) = (a.clone(), b.clone());
            tasks.push(tokio::spawn(async move {
                let x = create(&a, service(&format!("a{i}"))).await.unwrap();
                let y = create(&b, service(&format!("b{i}"))).await.unwrap();
                vec![x, y]
            }));
        }
        let mut ips = HashSet::new();
        let mut ports = HashSet::new();
        for t in tasks {
            for svc in t.await.unwrap() {
                let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
                assert!(ips.insert(ip.clone()), "{ip} handed out twice");
                let port = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
                assert!(ports.insert(port), "{port} handed out twice");
            }
        }
        // Asking for a taken address through the other server fails.
        let taken = ips.iter().next().unwrap().clone();
        let mut want = service("wants-taken");
        want["spec"]["clusterIP"] = json!(taken);
        let err = create(&b, want).await.unwrap_err();
        assert!(err.message.contains("already allocated"), "{}", err.message);

        // A deleted Service's address is free again, for either server.
        let s = a.strategy("", "services").unwrap();
        let (gone, _) = a
            .delete_object(s, Some("default"), "a0", &Default::default())
            .await
            .unwrap();
        let freed = gone["spec"]["clusterIP"].as_str().unwrap().to_string();
        let mut again = service("again");
        again["spec"]["clusterIP"] = json!(freed);
        create(&b, again).await.unwrap();
    }
}
