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
mod daemonset;
mod deployment;
mod endpoints;
mod endpointslice;
mod event;
pub mod generic;
mod lease;
pub mod meta;
mod namespace;
mod node;
pub mod pod;
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
        &daemonset::DEF,
        &lease::DEF,
        &endpointslice::DEF,
        &poddisruptionbudget::DEF,
        &certificatesigningrequest::DEF,
    ]
    .into_iter()
    .map(|d| Box::new(generic::Static(d)) as Box<dyn Strategy>)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lookup(group: &str, plural: &str) -> Box<dyn Strategy> {
        all()
            .into_iter()
            .find(|s| s.info().group == group && s.info().plural == plural)
            .unwrap_or_else(|| panic!("{group}/{plural} is not served"))
    }

    /// What a create does to `obj`: decode, defaults, create preparation, validation.
    fn create(group: &str, plural: &str, mut obj: Value) -> (Value, Vec<Cause>) {
        let s = lookup(group, plural);
        assert!(s.decode(&obj).is_ok(), "{plural}: {:?}", s.decode(&obj));
        s.default(&mut obj);
        s.prepare_for_create(&mut obj);
        let causes = s.validate(&obj);
        (obj, causes)
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn every_resource_is_served_once() {
        let all = all();
        let mut keys: Vec<(&str, &str)> = all
            .iter()
            .map(|s| (s.info().group, s.info().plural))
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), all.len());
        assert_eq!(lookup("apps", "deployments").info().short_names, ["deploy"]);
        assert!(!all
            .iter()
            .any(|s| s.info().group.is_empty() && s.info().plural == "deployments"));
    }

    fn deployment(labels: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": labels},
                                     "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    }

    #[test]
    fn deployment_templates_get_pod_spec_defaults_but_not_the_pod_only_ones() {
        let (d, causes) = create("apps", "deployments", deployment(json!({"app": "web"})));
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        let t = &d["spec"]["template"]["spec"];
        assert_eq!(t["restartPolicy"], "Always");
        // SetDefaults_Pod, not SetDefaults_PodSpec, turns service links on.
        assert!(t.get("enableServiceLinks").is_none(), "{t}");
        assert_eq!(d["status"], json!({}));

        let s = lookup("apps", "deployments");
        let mut scaled = d.clone();
        scaled["spec"]["replicas"] = json!(3);
        scaled["status"] = json!({"replicas": 9});
        s.prepare_for_update(&mut scaled, &d);
        assert_eq!(scaled["metadata"]["generation"], 2);
        assert_eq!(scaled["status"], json!({}));

        // A status update keeps the spec and, for deployments, the labels.
        let mut status = d.clone();
        status["spec"]["replicas"] = json!(7);
        status["metadata"]["labels"] = json!({"x": "y"});
        status["status"] = json!({"replicas": 1});
        s.prepare_for_status_update(&mut status, &d);
        assert_eq!(status["spec"], d["spec"]);
        assert!(status["metadata"].get("labels").is_none(), "{status}");
        assert_eq!(status["status"]["replicas"], 1);
        let rs = lookup("apps", "replicasets");
        let mut rs_status = d.clone();
        rs_status["metadata"]["labels"] = json!({"x": "y"});
        rs.prepare_for_status_update(&mut rs_status, &d);
        assert_eq!(rs_status["metadata"]["labels"], json!({"x": "y"}));

        let mut moved = d.clone();
        moved["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        moved["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        let causes = s.validate_update(&moved, &d);
        assert_eq!(fields(&causes), ["spec.selector"]);
        assert!(causes[0].message.ends_with(": field is immutable"));

        let (_, causes) = create("apps", "deployments", deployment(json!({"app": "api"})));
        assert_eq!(
            causes[0].message,
            "Invalid value: map[string]string{\"app\":\"api\"}: `selector` does not match template `labels`"
        );
    }

    #[test]
    fn replicaset_status_and_selector_required() {
        let mut rs = deployment(json!({"app": "web"}));
        rs["spec"].as_object_mut().unwrap().remove("selector");
        let (rs, causes) = create("apps", "replicasets", rs);
        assert_eq!(rs["spec"]["replicas"], 1);
        assert_eq!(rs["status"], json!({"replicas": 0}));
        assert_eq!(causes[0].field, "spec.selector");
        assert_eq!(causes[0].message, "Required value");
        let s = lookup("apps", "replicasets");
        assert_eq!(s.field(&rs, "status.replicas").as_deref(), Some("0"));
        assert_eq!(s.field(&json!({}), "status.replicas").as_deref(), Some("0"));
    }

    #[test]
    fn daemonset_defaults_and_status() {
        let mut ds = deployment(json!({"app": "web"}));
        ds["spec"].as_object_mut().unwrap().remove("replicas");
        let (ds, causes) = create("apps", "daemonsets", ds);
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
        assert!(ds["spec"].get("replicas").is_none());
        assert_eq!(ds["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(ds["status"]["desiredNumberScheduled"], 0);
        let s = lookup("apps", "daemonsets");
        assert_eq!(s.info().short_names, ["ds"]);
        assert_eq!(s.info().subresources, ["status"]);
    }

    fn allocated_service() -> Value {
        let svc = json!({"metadata": {"name": "web", "namespace": "default"},
                         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
        let (mut svc, causes) = create("", "services", svc);
        assert!(causes.is_empty(), "{causes:?}");
        svc["spec"]["clusterIP"] = json!("10.96.0.10");
        svc["spec"]["clusterIPs"] = json!(["10.96.0.10"]);
        svc
    }

    #[test]
    fn service_defaults_and_names() {
        let svc = allocated_service();
        let spec = &svc["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(
            spec["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        let (_, causes) = create(
            "",
            "services",
            json!({"metadata": {"name": "Web", "namespace": "default"}, "spec": {}}),
        );
        assert_eq!(fields(&causes), ["metadata.name", "spec.ports"]);
        assert!(causes[0].message.contains("a DNS-1035 label"));
    }

    #[test]
    fn service_keeps_its_allocated_address_and_refuses_a_new_one() {
        let svc = allocated_service();
        let s = lookup("", "services");
        // kubectl apply of a manifest without the allocated address keeps it.
        let mut applied = svc.clone();
        let spec = applied["spec"].as_object_mut().unwrap();
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
        s.prepare_for_update(&mut applied, &svc);
        assert_eq!(applied["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(applied["spec"]["clusterIPs"], json!(["10.96.0.10"]));
        assert!(s.validate_update(&applied, &svc).is_empty());

        let mut changed = svc.clone();
        changed["spec"]["clusterIP"] = json!("10.96.0.11");
        changed["spec"]["clusterIPs"] = json!(["10.96.0.11"]);
        let causes = s.validate_update(&changed, &svc);
        assert_eq!(fields(&causes), ["spec.clusterIPs[0]"]);
        assert_eq!(
            causes[0].message,
            "Invalid value: []string{\"10.96.0.11\"}: may not change once set"
        );
        // Becoming an ExternalName service releases the address.
        let mut external = svc.clone();
        external["spec"] = json!({"type": "ExternalName", "externalName": "example.com"});
        assert!(s.validate_update(&external, &svc).is_empty());
    }

    #[test]
    fn node_ports_survive_an_apply_that_leaves_them_out() {
        let s = lookup("", "services");
        let mut old = allocated_service();
        old["spec"]["type"] = json!("NodePort");
        old["spec"]["ports"][0]["nodePort"] = json!(30080);
        let mut new = old.clone();
        new["spec"]["ports"][0]
            .as_object_mut()
            .unwrap()
            .remove("nodePort");
        s.prepare_for_update(&mut new, &old);
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
    }

    #[test]
    fn namespaces() {
        let (ns, causes) = create("", "namespaces", json!({"metadata": {"name": "team-a"}}));
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "team-a"
        );
        let (_, causes) = create("", "namespaces", json!({"metadata": {"name": "a.b"}}));
        assert!(causes[0].message.contains("RFC 1123 label"), "{causes:?}");
    }

    #[test]
    fn secrets_fold_string_data_and_need_their_types_keys() {
        let (sec, causes) = create(
            "",
            "secrets",
            json!({"metadata": {"name": "s", "namespace": "d"}, "stringData": {"user": "admin"}}),
        );
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(sec["type"], "Opaque");
        assert_eq!(sec["data"]["user"], "YWRtaW4=");
        assert!(sec.get("stringData").is_none());

        let (tls, causes) = create(
            "",
            "secrets",
            json!({"metadata": {"name": "s", "namespace": "d"},
                   "type": "kubernetes.io/tls", "data": {"tls.crt": ""}}),
        );
        assert_eq!(fields(&causes), ["data[tls.key]"]);
        assert_eq!(causes[0].message, "Required value");
        let (_, causes) = create(
            "",
            "secrets",
            json!({"metadata": {"name": "s", "namespace": "d"}, "type": "kubernetes.io/basic-auth"}),
        );
        assert_eq!(fields(&causes), ["data[username]", "data[password]"]);

        let s = lookup("", "secrets");
        let mut retyped = tls.clone();
        retyped["type"] = json!("Opaque");
        let causes = s.validate_update(&retyped, &tls);
        assert_eq!(fields(&causes), ["type"]);
        assert_eq!(
            causes[0].message,
            "Invalid value: \"Opaque\": field is immutable"
        );

        let (_, causes) = create(
            "",
            "secrets",
            json!({"metadata": {"name": "s", "namespace": "d"}, "data": {"..x": "YQ=="}}),
        );
        assert_eq!(fields(&causes), ["data[..x]"]);
        assert_eq!(
            causes[0].message,
            "Invalid value: \"..x\": must not start with '..'"
        );
    }

    #[test]
    fn configmap_keys_and_immutability() {
        let s = lookup("", "configmaps");
        let old = json!({"metadata": {"name": "c", "namespace": "d"}, "data": {"a": "1"}, "immutable": true});
        let mut new = old.clone();
        new["data"]["a"] = json!("2");
        let causes = s.validate_update(&new, &old);
        assert_eq!(fields(&causes), ["data"]);
        assert_eq!(
            causes[0].message,
            "Forbidden: field is immutable when `immutable` is set"
        );
        let (_, causes) = create(
            "",
            "configmaps",
            json!({"metadata": {"name": "c", "namespace": "d"},
                   "data": {"a b": "1", "k": "v"}, "binaryData": {"k": "dg=="}}),
        );
        assert_eq!(fields(&causes), ["data[a b]", "data[k]"]);
        assert_eq!(
            causes[1].message,
            "Invalid value: \"k\": duplicate of key present in binaryData"
        );
    }

    #[test]
    fn names_and_namespaces_never_change() {
        let s = lookup("", "configmaps");
        let old = json!({"metadata": {"name": "a", "namespace": "d"}});
        let new = json!({"metadata": {"name": "b", "namespace": "d"}});
        let causes = s.validate_update(&new, &old);
        assert_eq!(fields(&causes), ["metadata.name"]);
        assert_eq!(
            causes[0].message,
            "Invalid value: \"b\": field is immutable"
        );
    }

    #[test]
    fn events_select_on_their_source_component() {
        let ev = json!({"metadata": {"name": "web.1", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
            "reason": "Started", "type": "Normal", "source": {"component": "kubelet", "host": "n1"}});
        let (ev, causes) = create("", "events", ev);
        assert!(causes.is_empty(), "{causes:?}");
        let s = lookup("", "events");
        assert_eq!(s.field(&ev, "involvedObject.kind").as_deref(), Some("Pod"));
        assert_eq!(s.field(&ev, "source").as_deref(), Some("kubelet"));
        assert_eq!(s.field(&ev, "type").as_deref(), Some("Normal"));
    }

    #[test]
    fn lease_durations_are_positive() {
        let lease = |spec: Value| {
            create(
                "coordination.k8s.io",
                "leases",
                json!({"metadata": {"name": "l", "namespace": "d"}, "spec": spec}),
            )
            .1
        };
        let causes = lease(json!({"leaseDurationSeconds": 0, "leaseTransitions": -1}));
        assert_eq!(
            fields(&causes),
            ["spec.leaseDurationSeconds", "spec.leaseTransitions"]
        );
        assert_eq!(
            causes[0].message,
            "Invalid value: 0: must be greater than 0"
        );
        assert!(lease(json!({"leaseDurationSeconds": 40, "holderIdentity": "n1"})).is_empty());
    }

    #[test]
    fn pdbs_start_with_zeroed_status_and_take_one_bound() {
        let (pdb, causes) = create(
            "policy",
            "poddisruptionbudgets",
            json!({"metadata": {"name": "p", "namespace": "d"},
                   "spec": {"minAvailable": 1, "maxUnavailable": "10%"}}),
        );
        assert_eq!(pdb["status"]["disruptionsAllowed"], 0);
        assert_eq!(fields(&causes), ["spec"]);
        assert!(causes[0]
            .message
            .ends_with("minAvailable and maxUnavailable cannot be both set"));
    }

    #[test]
    fn nodes_allocatable_defaults_to_capacity() {
        let (node, causes) = create(
            "",
            "nodes",
            json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": true},
                   "status": {"capacity": {"cpu": "2"}}}),
        );
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(node["status"]["allocatable"]["cpu"], "2");
        let s = lookup("", "nodes");
        assert_eq!(
            s.field(&node, "spec.unschedulable").as_deref(),
            Some("true")
        );
        // A node with no status gets none from defaulting.
        let (bare, _) = create("", "nodes", json!({"metadata": {"name": "n2"}}));
        assert_eq!(bare["status"], json!({}));
        assert_eq!(
            s.field(&bare, "spec.unschedulable").as_deref(),
            Some("false")
        );
        let (_, causes) = create(
            "",
            "nodes",
            json!({"metadata": {"name": "n3", "namespace": "d"}}),
        );
        assert_eq!(fields(&causes), ["metadata.namespace"]);
        assert_eq!(causes[0].message, "Forbidden: not allowed on this type");
    }
}
