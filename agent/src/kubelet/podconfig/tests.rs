use super::*;
use serde_json::json;

fn ctx() -> NodeContext {
    NodeContext {
        node_name: "w1-k8s".into(),
        node_ip: "192.168.1.101".into(),
        cgroup_root: "/".into(),
        cgroup_driver: "cgroupfs".into(),
        pod_logs_dir: "/var/log/pods".into(),
        memory_capacity: 4 << 30,
        cluster_dns: Vec::new(),
        cluster_domain: "cluster.local".into(),
    }
}

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

struct Data(
    BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    BTreeMap<String, BTreeMap<String, Vec<u8>>>,
);

impl EnvSource for Data {
    fn config_map(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.0.get(name)
    }
    fn secret(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.1.get(name)
    }
}

fn data() -> Data {
    Data(
        BTreeMap::from([(
            "cfg".into(),
            BTreeMap::from([
                ("MODE".into(), b"fast".to_vec()),
                ("LEVEL".into(), b"3".to_vec()),
            ]),
        )]),
        BTreeMap::from([(
            "pw".into(),
            BTreeMap::from([("password".into(), b"s3cr3t".to_vec())]),
        )]),
    )
}

fn web() -> Pod {
    pod(json!({
        "metadata": { "name": "web", "namespace": "shop", "uid": "1234-5678", "labels": { "app": "web" } },
        "spec": {
            "containers": [{
                "name": "app", "image": "busybox",
                "command": ["sh", "-c", "echo $(GREETING) $(MISSING)"],
                "env": [
                    { "name": "GREETING", "value": "hello-$(POD)" },
                    { "name": "POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                    { "name": "IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                    { "name": "APP", "valueFrom": { "fieldRef": { "fieldPath": "metadata.labels['app']" } } },
                    { "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": "pw", "key": "password" } } },
                    { "name": "MEM", "valueFrom": { "resourceFieldRef": { "resource": "limits.memory", "divisor": "1Mi" } } },
                ],
                "envFrom": [{ "configMapRef": { "name": "cfg" }, "prefix": "CFG_" }],
                "resources": { "requests": { "cpu": "250m", "memory": "64Mi" }, "limits": { "cpu": "500m", "memory": "128Mi" } },
                "ports": [{ "containerPort": 80, "hostPort": 8080 }],
                "volumeMounts": [{ "name": "data", "mountPath": "/data", "subPath": "sub" }],
            }],
        },
    }))
}

#[test]
fn env_resolves_references_in_order() {
    let p = web();
    let c = &p.spec.as_ref().unwrap().containers[0];
    let env = resolve_env(&p, c, &ctx(), "10.1.0.7", &data()).unwrap();
    let get = |k: &str| env.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
    assert_eq!(get("CFG_MODE"), Some("fast"));
    // $(POD) is defined after GREETING, so it stays as written.
    assert_eq!(get("GREETING"), Some("hello-$(POD)"));
    assert_eq!(get("POD"), Some("web"));
    assert_eq!(get("NODE"), Some("w1-k8s"));
    assert_eq!(get("IP"), Some("10.1.0.7"));
    assert_eq!(get("APP"), Some("web"));
    assert_eq!(get("PASSWORD"), Some("s3cr3t"));
    assert_eq!(get("MEM"), Some("128"));
}

#[test]
fn missing_references_are_config_errors() {
    let p = web();
    let c = &p.spec.as_ref().unwrap().containers[0];
    let empty = Data(BTreeMap::new(), BTreeMap::new());
    let err = resolve_env(&p, c, &ctx(), "", &empty).unwrap_err();
    assert_eq!(err, "configmap \"cfg\" not found");
}

#[test]
fn sandbox_and_container_configs() {
    let p = web();
    let sb = sandbox_config(
        &ctx(),
        &p,
        1,
        "nameserver 10.0.0.2\nsearch example.org\noptions ndots:2\n",
    );
    let md = sb.metadata.as_ref().unwrap();
    assert_eq!(
        (
            md.name.as_str(),
            md.namespace.as_str(),
            md.uid.as_str(),
            md.attempt
        ),
        ("web", "shop", "1234-5678", 1)
    );
    assert_eq!(sb.hostname, "web");
    assert_eq!(sb.log_directory, "/var/log/pods/shop_web_1234-5678");
    assert_eq!(sb.labels[POD_UID], "1234-5678");
    assert_eq!(sb.labels["app"], "web");
    assert_eq!(sb.port_mappings[0].host_port, 8080);
    assert_eq!(sb.dns_config.as_ref().unwrap().servers, vec!["10.0.0.2"]);
    assert_eq!(
        sb.linux.as_ref().unwrap().cgroup_parent,
        "/kubepods/burstable/pod1234-5678"
    );

    let dir = tempfile::tempdir().unwrap();
    let volumes = HashMap::from([("data".to_owned(), dir.path().to_owned())]);
    let files = PodFiles {
        etc_hosts: Some("/x/etc-hosts".into()),
    };
    let c = &p.spec.as_ref().unwrap().containers[0];
    let env = vec![("GREETING".to_owned(), "hi".to_owned())];
    let cfg = container_config(
        &ctx(),
        &p,
        c,
        &ContainerInputs {
            attempt: 2,
            env,
            volumes: &volumes,
            files: &files,
            image: "busybox:latest".into(),
        },
    )
    .unwrap();
    assert_eq!(cfg.command, vec!["sh", "-c", "echo hi $(MISSING)"]);
    assert_eq!(cfg.log_path, "app/2.log");
    assert_eq!(cfg.labels[CONTAINER_NAME], "app");
    assert_eq!(
        cfg.mounts[0].host_path,
        dir.path().join("sub").to_string_lossy()
    );
    assert!(dir.path().join("sub").is_dir());
    assert_eq!(cfg.mounts[1].container_path, "/etc/hosts");
    let r = cfg.linux.as_ref().unwrap().resources.as_ref().unwrap();
    assert_eq!(r.cpu_shares, 256);
    assert_eq!(r.cpu_quota, 50_000);
    assert_eq!(r.memory_limit_in_bytes, 128 << 20);
    assert!(r.oom_score_adj > 2 && r.oom_score_adj < 999);
}

#[test]
fn escaping_sub_paths_are_refused() {
    let mut p = web();
    p.spec.as_mut().unwrap().containers[0]
        .volume_mounts
        .as_mut()
        .unwrap()[0]
        .sub_path = Some("../../etc".into());
    let volumes = HashMap::from([("data".to_owned(), PathBuf::from("/tmp/v"))]);
    let files = PodFiles { etc_hosts: None };
    let c = &p.spec.as_ref().unwrap().containers[0];
    let err = container_config(
        &ctx(),
        &p,
        c,
        &ContainerInputs {
            attempt: 0,
            env: vec![],
            volumes: &volumes,
            files: &files,
            image: "x".into(),
        },
    )
    .unwrap_err();
    assert!(err.contains("subPath"), "{err}");
}

#[test]
fn cgroup_parents_per_driver_and_class() {
    let mut c = ctx();
    let guaranteed = pod(json!({
        "metadata": { "uid": "ab-cd" },
        "spec": { "containers": [{ "name": "a", "resources": { "limits": { "cpu": "1", "memory": "1Gi" } } }] },
    }));
    assert_eq!(cgroup_parent(&c, &guaranteed), "/kubepods/podab-cd");
    c.cgroup_root = "/test-root".into();
    assert_eq!(
        cgroup_parent(
            &c,
            &pod(
                json!({ "metadata": { "uid": "u" }, "spec": { "containers": [{ "name": "a" }] } })
            )
        ),
        "/test-root/kubepods/besteffort/podu"
    );
    c.cgroup_driver = "systemd".into();
    assert_eq!(cgroup_parent(&c, &guaranteed), "kubepods-podab_cd.slice");
}

#[test]
fn hosts_file_has_the_pod_and_aliases() {
    let p = pod(json!({
        "metadata": { "name": "web", "namespace": "default" },
        "spec": { "containers": [], "hostAliases": [{ "ip": "10.0.0.9", "hostnames": ["db", "db.local"] }] },
    }));
    let h = etc_hosts(&p, &["10.1.0.7".into()]);
    assert!(h.contains("10.1.0.7\tweb\n"), "{h}");
    assert!(h.contains("10.0.0.9\tdb\tdb.local\n"), "{h}");
}

#[test]
fn resolv_conf_follows_the_dns_policy_as_kubelet_writes_it() {
    let host = "nameserver 10.0.0.2\nsearch example.org lab\noptions ndots:2 rotate\n";
    let mut c = ctx();
    c.cluster_dns = vec!["10.96.0.10".parse().unwrap()];
    let mut p = web();
    // ClusterFirst: the cluster's servers, the namespace's search path then the host's,
    // ndots:5 and none of the host's options.
    let d = dns_config(&c, &p, host).unwrap();
    assert_eq!(d.servers, vec!["10.96.0.10"]);
    assert_eq!(
        d.searches,
        vec![
            "shop.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "example.org",
            "lab"
        ]
    );
    assert_eq!(d.options, vec!["ndots:5"]);
    // Default: the host's file.
    p.spec.as_mut().unwrap().dns_policy = Some("Default".into());
    let d = dns_config(&c, &p, host).unwrap();
    assert_eq!(
        (d.servers, d.searches, d.options),
        (
            vec!["10.0.0.2".to_string()],
            vec!["example.org".to_string(), "lab".to_string()],
            vec!["ndots:2".to_string(), "rotate".to_string()]
        )
    );
    // On the host network ClusterFirst means the host's file; ClusterFirstWithHostNet
    // means the cluster's.
    p.spec.as_mut().unwrap().host_network = Some(true);
    p.spec.as_mut().unwrap().dns_policy = Some("ClusterFirst".into());
    assert!(dns_config(&c, &p, host).is_none());
    p.spec.as_mut().unwrap().dns_policy = Some("ClusterFirstWithHostNet".into());
    assert_eq!(
        dns_config(&c, &p, host).unwrap().servers,
        vec!["10.96.0.10"]
    );
    // None: only the pod's own dnsConfig; its options replace the policy's.
    p.spec.as_mut().unwrap().host_network = None;
    p.spec.as_mut().unwrap().dns_policy = Some("None".into());
    p.spec.as_mut().unwrap().dns_config = Some(k8s_openapi::api::core::v1::PodDNSConfig {
        nameservers: Some(vec!["1.1.1.1".into()]),
        searches: Some(vec!["a.example".into()]),
        options: Some(vec![k8s_openapi::api::core::v1::PodDNSConfigOption {
            name: Some("ndots".into()),
            value: Some("1".into()),
        }]),
    });
    let d = dns_config(&c, &p, host).unwrap();
    assert_eq!(d.servers, vec!["1.1.1.1"]);
    assert_eq!(d.searches, vec!["a.example"]);
    assert_eq!(d.options, vec!["ndots:1"]);
    p.spec.as_mut().unwrap().dns_policy = Some("ClusterFirst".into());
    let d = dns_config(&c, &p, host).unwrap();
    assert_eq!(d.servers, vec!["10.96.0.10", "1.1.1.1"]);
    assert_eq!(d.options, vec!["ndots:1"]);
    // No cluster DNS configured: ClusterFirst falls back to the host's.
    c.cluster_dns.clear();
    assert_eq!(dns_config(&c, &p, host).unwrap().servers[0], "10.0.0.2");
}
