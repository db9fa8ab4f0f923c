use super::*;

const BASE: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: demo\nspec:\n  containers:\n  - name: web\n    image: nginx\n";

fn parse(text: &str) -> Result<PodManifest, SpecError> {
    parse_manifest(text, Path::new("examples/x.yaml"))
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// BASE with extra lines appended to the first container.
fn with_container(extra: &str) -> String {
    format!("{BASE}{extra}")
}

const POD_PREFIX: &str = "examples/x.yaml: document 1 (Pod demo): ";

#[test]
fn error_table_exact_messages() {
    let cm = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {k: v}\n";
    let cases: Vec<(&str, String, &str)> = vec![
            ("unknown field", with_container("    imagePullPolcy: Always\n"), "spec.containers[0].imagePullPolcy: unknown field"),
            ("unknown top-level field", format!("{BASE}specs: {{}}\n"), "specs: unknown field"),
            ("unknown metadata field", BASE.replace("  name: demo\n", "  name: demo\n  lables: {a: b}\n"), "metadata.lables: unknown field"),
            ("duplicate container", format!("{BASE}  - name: web\n    image: curl\n"), "spec.containers[1].name: duplicate container name \"web\""),
            (
                "duplicate across init and app",
                BASE.replace("spec:\n", "spec:\n  initContainers:\n  - {name: web, image: busybox}\n"),
                "spec.containers[0].name: duplicate container name \"web\"",
            ),
            ("empty image", BASE.replace("image: nginx", "image: \"\""), "spec.containers[0].image: must not be empty"),
            ("no image", BASE.replace("    image: nginx\n", ""), "spec.containers[0].image: must not be empty"),
            (
                "restart policy",
                format!("{BASE}  restartPolicy: Sometimes\n"),
                "spec.restartPolicy: unsupported value \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
            ),
            ("container restartPolicy on an app container", with_container("    restartPolicy: Always\n"), "spec.containers[0].restartPolicy: may only be set on init containers"),
            (
                "init container restartPolicy",
                BASE.replace("spec:\n", "spec:\n  initContainers:\n  - {name: setup, image: busybox, restartPolicy: Never}\n"),
                "spec.initContainers[0].restartPolicy: unsupported value \"Never\": supported values: \"Always\"",
            ),
            (
                "pull policy",
                with_container("    imagePullPolicy: Sometimes\n"),
                "spec.containers[0].imagePullPolicy: unsupported value \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\"",
            ),
            ("no containers", "apiVersion: v1\nkind: Pod\nmetadata: {name: demo}\nspec: {containers: []}\n".into(), "spec.containers: must have at least one container"),
            ("no spec", "apiVersion: v1\nkind: Pod\nmetadata: {name: demo}\n".into(), "spec: missing"),
            (
                "duplicate volume",
                format!("{BASE}  volumes:\n  - {{name: data, emptyDir: {{}}}}\n  - {{name: data, emptyDir: {{}}}}\n"),
                "spec.volumes[1].name: duplicate volume name \"data\"",
            ),
            (
                "mount of an undefined volume",
                with_container("    volumeMounts: [{name: data, mountPath: /data}]\n"),
                "spec.containers[0].volumeMounts[0].name: volume \"data\" is not defined in spec.volumes",
            ),
            (
                "duplicate mount path",
                format!("{}  volumes: [{{name: a, emptyDir: {{}}}}, {{name: b, emptyDir: {{}}}}]\n", with_container("    volumeMounts: [{name: a, mountPath: /data}, {name: b, mountPath: /data/}]\n")),
                "spec.containers[0].volumeMounts[1].mountPath: \"/data/\": must be unique",
            ),
            (
                "configMap volume not in file",
                format!("{BASE}  volumes: [{{name: cfg, configMap: {{name: settings}}}}]\n"),
                "spec.volumes[0].configMap.name: ConfigMap \"settings\" is not in the manifest (add it to the file or set optional: true)",
            ),
            (
                "secret volume not in file",
                format!("{BASE}  volumes: [{{name: s, secret: {{secretName: creds}}}}]\n"),
                "spec.volumes[0].secret.secretName: Secret \"creds\" is not in the manifest (add it to the file or set optional: true)",
            ),
            (
                "configMap volume item key missing",
                format!("{BASE}  volumes: [{{name: c, configMap: {{name: cfg, items: [{{key: nope, path: x}}]}}}}]\n{cm}"),
                "spec.volumes[0].configMap.items[0].key: ConfigMap \"cfg\" has no key \"nope\" (add it or set optional: true)",
            ),
            (
                "volume item path escapes",
                format!("{BASE}  volumes: [{{name: c, configMap: {{name: cfg, items: [{{key: k, path: ../../etc/x}}]}}}}]\n{cm}"),
                "spec.volumes[0].configMap.items[0].path: \"../../etc/x\": must not contain '..'",
            ),
            (
                "volume item path absolute",
                format!("{BASE}  volumes: [{{name: c, configMap: {{name: cfg, items: [{{key: k, path: /etc/x}}]}}}}]\n{cm}"),
                "spec.volumes[0].configMap.items[0].path: \"/etc/x\": must be a relative path",
            ),
            (
                "secretKeyRef to a missing secret",
                with_container("    env:\n    - name: PW\n      valueFrom: {secretKeyRef: {name: creds, key: pw}}\n"),
                "spec.containers[0].env[0].valueFrom.secretKeyRef: Secret \"creds\" is not in the manifest (add it to the file or set optional: true)",
            ),
            (
                "configMapKeyRef to a missing key",
                format!("{}{cm}", with_container("    env:\n    - name: X\n      valueFrom: {configMapKeyRef: {name: cfg, key: other}}\n")),
                "spec.containers[0].env[0].valueFrom.configMapKeyRef: ConfigMap \"cfg\" has no key \"other\" (add it or set optional: true)",
            ),
            (
                "envFrom missing configMap",
                with_container("    envFrom: [{configMapRef: {name: cfg}}]\n"),
                "spec.containers[0].envFrom[0].configMapRef: ConfigMap \"cfg\" is not in the manifest (add it to the file or set optional: true)",
            ),
            (
                "value and valueFrom",
                with_container("    env:\n    - name: X\n      value: a\n      valueFrom: {fieldRef: {fieldPath: metadata.name}}\n"),
                "spec.containers[0].env[0].valueFrom: may not be specified when `value` is not empty",
            ),
            (
                "unsupported fieldRef",
                with_container("    env:\n    - name: X\n      valueFrom: {fieldRef: {fieldPath: spec.hostname}}\n"),
                "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: unsupported value \"spec.hostname\": supported values: metadata.name, metadata.namespace, metadata.uid, metadata.labels['<KEY>'], metadata.annotations['<KEY>'], spec.nodeName, spec.serviceAccountName, status.podIP, status.podIPs, status.hostIP, status.hostIPs",
            ),
            (
                "unsupported resourceFieldRef",
                with_container("    env:\n    - name: X\n      valueFrom: {resourceFieldRef: {resource: limits.gpu}}\n"),
                "spec.containers[0].env[0].valueFrom.resourceFieldRef.resource: unsupported value \"limits.gpu\": supported values: limits.cpu, limits.memory, limits.ephemeral-storage, requests.cpu, requests.memory, requests.ephemeral-storage",
            ),
            ("env name with =", with_container("    env: [{name: \"A=B\", value: x}]\n"), "spec.containers[0].env[0].name: \"A=B\": must be non-empty and must not contain '='"),
            (
                "hostPath type",
                format!("{BASE}  volumes: [{{name: h, hostPath: {{path: /srv, type: Folder}}}}]\n"),
                "spec.volumes[0].hostPath.type: unsupported value \"Folder\": supported values: \"\", \"DirectoryOrCreate\", \"Directory\", \"FileOrCreate\", \"File\", \"Socket\", \"CharDevice\", \"BlockDevice\"",
            ),
            ("port too high", with_container("    ports: [{containerPort: 70000}]\n"), "spec.containers[0].ports[0].containerPort: 70000: must be between 1 and 65535, inclusive"),
            ("port zero", with_container("    ports: [{containerPort: 0}]\n"), "spec.containers[0].ports[0].containerPort: 0: must be between 1 and 65535, inclusive"),
            ("host port", with_container("    ports: [{containerPort: 80, hostPort: 65536}]\n"), "spec.containers[0].ports[0].hostPort: 65536: must be between 1 and 65535, inclusive"),
            (
                "protocol",
                with_container("    ports: [{containerPort: 80, protocol: HTTP}]\n"),
                "spec.containers[0].ports[0].protocol: unsupported value \"HTTP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
            ),
            (
                "bad cpu quantity",
                with_container("    resources: {limits: {cpu: lots}}\n"),
                "spec.containers[0].resources.limits[cpu]: invalid quantity \"lots\": no number",
            ),
            (
                "bad memory quantity",
                with_container("    resources: {requests: {memory: 1GB}}\n"),
                "spec.containers[0].resources.requests[memory]: invalid quantity \"1GB\": unknown suffix",
            ),
            (
                "negative memory",
                with_container("    resources: {requests: {memory: -1Gi}}\n"),
                "spec.containers[0].resources.requests[memory]: invalid quantity \"-1Gi\": must not be negative",
            ),
            (
                "request above limit",
                with_container("    resources: {requests: {cpu: \"2\"}, limits: {cpu: 1500m}}\n"),
                "spec.containers[0].resources.requests[cpu]: \"2\" must be less than or equal to the cpu limit \"1500m\"",
            ),
            (
                "unknown resource",
                with_container("    resources: {limits: {bogus: \"1\"}}\n"),
                "spec.containers[0].resources.limits[bogus]: \"bogus\": must be a standard resource for containers (cpu, memory, ephemeral-storage, hugepages-<size>) or a fully qualified extended resource (domain/name)",
            ),
            (
                "pids is not a container resource",
                with_container("    resources: {requests: {pids: \"10\"}}\n"),
                "spec.containers[0].resources.requests[pids]: \"pids\": must be a standard resource for containers (cpu, memory, ephemeral-storage, hugepages-<size>) or a fully qualified extended resource (domain/name)",
            ),
            (
                "malformed extended resource",
                with_container("    resources: {limits: {example.com/-gpu: \"1\"}}\n"),
                "spec.containers[0].resources.limits[example.com/-gpu]: \"example.com/-gpu\": name part must consist of at most 63 alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ),
            (
                "fractional extended resource",
                with_container("    resources: {limits: {example.com/gpu: 500m}}\n"),
                "spec.containers[0].resources.limits[example.com/gpu]: invalid quantity \"500m\": must be an integer",
            ),
            (
                "extended request below its limit",
                with_container("    resources: {requests: {example.com/gpu: \"1\"}, limits: {example.com/gpu: \"2\"}}\n"),
                "spec.containers[0].resources.requests[example.com/gpu]: \"1\" must be equal to the example.com/gpu limit \"2\"",
            ),
            (
                "extended request without a limit",
                with_container("    resources: {requests: {example.com/gpu: \"1\"}}\n"),
                "spec.containers[0].resources.limits[example.com/gpu]: limit must be set for non overcommitable resources",
            ),
            (
                "hugepages alone",
                with_container("    resources: {limits: {hugepages-2Mi: 4Mi}}\n"),
                "spec.containers[0].resources: hugepages require cpu or memory",
            ),
            (
                "hugepages in part of a page",
                with_container("    resources: {limits: {hugepages-2Mi: 3Mi, memory: 64Mi}}\n"),
                "spec.containers[0].resources.limits[hugepages-2Mi]: invalid quantity \"3Mi\": is not a positive integer multiple of hugepages-2Mi",
            ),
            (
                "invalid container name",
                BASE.replace("name: web", "name: Web"),
                "spec.containers[0].name: \"Web\": must be a DNS-1123 label (lower case alphanumerics and '-', starting and ending with an alphanumeric)",
            ),
            (
                "invalid namespace",
                BASE.replace("  name: demo\n", "  name: demo\n  namespace: team.a\n"),
                "metadata.namespace: \"team.a\": must be a DNS-1123 label (lower case alphanumerics and '-', starting and ending with an alphanumeric)",
            ),
            ("grace period", format!("{BASE}  terminationGracePeriodSeconds: -1\n"), "spec.terminationGracePeriodSeconds: must be greater than or equal to 0"),
            (
                "dns policy",
                format!("{BASE}  dnsPolicy: Google\n"),
                "spec.dnsPolicy: unsupported value \"Google\": supported values: \"ClusterFirst\", \"ClusterFirstWithHostNet\", \"Default\", \"None\"",
            ),
            ("mode out of range", format!("{BASE}  volumes: [{{name: c, configMap: {{name: cfg, defaultMode: 1000, optional: true}}}}]\n"), "spec.volumes[0].configMap.defaultMode: 1000: must be a number between 0 and 0777 (octal), both inclusive"),
        ];
    for (name, text, want) in cases {
        assert_eq!(err(&text), format!("{POD_PREFIX}{want}"), "{name}");
    }
}

#[test]
fn missing_pod_name() {
    let e = err(&BASE.replace("  name: demo\n", "  labels: {a: b}\n"));
    assert_eq!(
        e,
        "examples/x.yaml: document 1 (Pod): metadata.name: missing"
    );
    let e = err(&BASE.replace("name: demo", "name: Demo_1"));
    assert_eq!(
            e,
            "examples/x.yaml: document 1 (Pod Demo_1): metadata.name: \"Demo_1\": must be a DNS-1123 subdomain (lower case alphanumerics, '-' and '.', starting and ending with an alphanumeric)"
        );
    let long = "a".repeat(254);
    let e = err(&BASE.replace("name: demo", &format!("name: {long}")));
    assert!(e.ends_with("must be no more than 253 characters"), "{e}");
    // A subdomain's parts have no length limit of their own (IsDNS1123Subdomain).
    assert!(parse(&BASE.replace("name: demo", &format!("name: {}", "a".repeat(253)))).is_ok());
    let dotted = format!("{}.{}", "a".repeat(100), "b".repeat(100));
    assert!(parse(&BASE.replace("name: demo", &format!("name: {dotted}"))).is_ok());
    let e = err(&BASE.replace("name: demo", "name: demo..v1"));
    assert!(e.ends_with("must be a DNS-1123 subdomain (lower case alphanumerics, '-' and '.', starting and ending with an alphanumeric)"), "{e}");
    // Dots are fine in a pod name (subdomain) but not in a container name (label).
    assert!(parse(&BASE.replace("name: demo", "name: demo.v1")).is_ok());
    let e = err(&BASE.replace("name: web", "name: web.v1"));
    assert!(
        e.contains("spec.containers[0].name: \"web.v1\": must be a DNS-1123 label"),
        "{e}"
    );
}

#[test]
fn type_errors_name_the_path() {
    let e = err(&with_container("    ports: [{containerPort: eighty}]\n"));
    assert!(
            e.starts_with(&format!("{POD_PREFIX}spec.containers[0].ports[0].containerPort: invalid type: string \"eighty\"")),
            "{e}"
        );
    let e = err(&format!("{BASE}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\ndata: {{pw: \"not base64!\"}}\n"));
    assert!(
        e.starts_with("examples/x.yaml: document 2 (Secret s): data[pw]: "),
        "{e}"
    );
    let e = err(&format!(
        "{BASE}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{port: 8080}}\n"
    ));
    assert!(
        e.starts_with(
            "examples/x.yaml: document 2 (ConfigMap c): data[port]: invalid type: integer"
        ),
        "{e}"
    );
}

/// Field paths follow kube-apiserver: list items by position, map entries by key.
#[test]
fn field_paths_index_lists_by_position_and_maps_by_key() {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\n";
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n";
    let cases: Vec<(&str, String, String)> = vec![
            (
                "binaryData bad key",
                format!("{BASE}---\n{cm}binaryData: {{\"a b\": Yw==}}\n"),
                "examples/x.yaml: document 2 (ConfigMap cfg): binaryData[a b]: \"a b\": must consist of alphanumerics, '-', '_' or '.'".into(),
            ),
            (
                "binaryData duplicate of data",
                format!("{BASE}---\n{cm}data: {{k: v}}\nbinaryData: {{k: Yw==}}\n"),
                "examples/x.yaml: document 2 (ConfigMap cfg): binaryData[k]: duplicate of a key in data".into(),
            ),
            (
                "Secret stringData bad key",
                format!("{BASE}---\n{secret}stringData: {{\"a b\": c}}\n"),
                "examples/x.yaml: document 2 (Secret s): stringData[a b]: \"a b\": must consist of alphanumerics, '-', '_' or '.'".into(),
            ),
            (
                "label value of the wrong type",
                BASE.replace("  name: demo\n", "  name: demo\n  labels: {app: [x]}\n"),
                format!("{POD_PREFIX}metadata.labels[app]: invalid type: sequence"),
            ),
            (
                "limit of the wrong type",
                with_container("    resources: {limits: {cpu: [1]}}\n"),
                format!("{POD_PREFIX}spec.containers[0].resources.limits[cpu]: invalid type: sequence"),
            ),
        ];
    for (name, text, want) in cases {
        let got = err(&text);
        assert!(got.starts_with(&want), "{name}:\n got {got}\nwant {want}");
    }
}

#[test]
fn document_level_errors() {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\n";
    let cases: Vec<(&str, String, &str)> = vec![
            (
                "unknown kind",
                format!("{BASE}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n"),
                "examples/x.yaml: document 2 (Service web): kind: unknown kind \"Service\": a manifest holds v1 Pod, ConfigMap and Secret objects",
            ),
            (
                "unknown apiVersion",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n".into(),
                "examples/x.yaml: document 1 (Deployment web): apiVersion: unknown apiVersion \"apps/v1\" for kind Deployment: a manifest holds v1 Pod, ConfigMap and Secret objects",
            ),
            ("missing apiVersion", "kind: Pod\nmetadata: {name: web}\n".into(), "examples/x.yaml: document 1 (Pod web): apiVersion: missing"),
            ("missing kind", "apiVersion: v1\nmetadata: {name: web}\n".into(), "examples/x.yaml: document 1: kind: missing"),
            ("not a mapping", "- a\n- b\n".into(), "examples/x.yaml: document 1: .: expected an object with apiVersion and kind"),
            ("no pod", cm.into(), "examples/x.yaml: no Pod in the file (expected one document with apiVersion: v1, kind: Pod)"),
            ("empty file", "".into(), "examples/x.yaml: no Pod in the file (expected one document with apiVersion: v1, kind: Pod)"),
            (
                "two pods",
                format!("{BASE}---\n{}", BASE.replace("demo", "other")),
                "examples/x.yaml: document 2 (Pod other): a second Pod (document 1 (Pod demo) is Pod demo); a manifest holds exactly one Pod",
            ),
            (
                "duplicate ConfigMap",
                format!("{BASE}---\n{cm}---\n{cm}"),
                "examples/x.yaml: document 3 (ConfigMap cfg): metadata.name: duplicate ConfigMap name \"cfg\"",
            ),
            (
                "ConfigMap unknown field",
                format!("{BASE}---\n{cm}dat: {{a: b}}\n"),
                "examples/x.yaml: document 2 (ConfigMap cfg): dat: unknown field",
            ),
            (
                "ConfigMap bad key",
                format!("{BASE}---\n{cm}data: {{\"a b\": c}}\n"),
                "examples/x.yaml: document 2 (ConfigMap cfg): data[a b]: \"a b\": must consist of alphanumerics, '-', '_' or '.'",
            ),
            (
                "ConfigMap in another namespace",
                format!("{BASE}---\n{}", cm.replace("{name: cfg}", "{name: cfg, namespace: other}")),
                "examples/x.yaml: document 2 (ConfigMap cfg): metadata.namespace: \"other\" differs from the Pod's namespace \"default\"",
            ),
            (
                "Secret without name",
                format!("{BASE}---\napiVersion: v1\nkind: Secret\nmetadata: {{labels: {{a: b}}}}\n"),
                "examples/x.yaml: document 2 (Secret): metadata.name: missing",
            ),
        ];
    for (name, text, want) in cases {
        assert_eq!(err(&text), want, "{name}");
    }
}

/// A billion-laughs document: ten aliases of ten aliases of ..., nine levels deep.
fn yaml_bomb() -> String {
    let mut text = String::from("apiVersion: v1\nkind: Pod\nmetadata:\n  name: bomb\n  annotations:\n    a0: &a0 [\"lol\"]\n");
    for level in 1..10 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        text.push_str(&format!("    a{level}: &a{level} [{refs}]\n"));
    }
    text.push_str("spec:\n  containers:\n  - name: c\n    image: busybox\n");
    text
}

#[test]
fn a_yaml_bomb_is_refused_naming_the_file_and_the_limit() {
    let e = parse(&yaml_bomb()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "examples/x.yaml: document 1: YAML aliases expand beyond the allowed size \
             (at most 100 alias expansions per node written): a YAML bomb?"
    );
    // The parser's own words stay available as the cause.
    let cause = std::error::Error::source(&e).expect("a cause");
    assert_eq!(cause.to_string(), "repetition limit exceeded");
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    let e = err(&format!("{BASE}  volumes: [\n    bad: : :\n"));
    assert!(e.starts_with("examples/x.yaml: document 1: "), "{e}");
    assert!(e.contains("line ") && e.contains("column "), "{e}");
    let e = err(&format!(
        "{BASE}---\napiVersion: v1\nkind: ConfigMap\n  metadata: x\n"
    ));
    assert!(e.starts_with("examples/x.yaml: document 2: "), "{e}");
    assert!(e.contains("line 12 column 11"), "{e}");
}

#[test]
fn accepts_what_kubectl_accepts() {
    // Empty documents, numeric quantities, YAML 1.1 octal modes, optional refs,
    // objects in any order, explicit namespace matching.
    let text = r#"---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: team}
data: {a.conf: "x"}
---
apiVersion: v1
kind: Pod
metadata: {name: demo, namespace: team}
spec:
  initContainers:
  - {name: proxy, image: envoy, restartPolicy: Always}
  containers:
  - name: web
    image: nginx:1.27
    ports: [{containerPort: 80, hostPort: 8080, protocol: TCP}]
    resources:
      requests: {cpu: 0.5, memory: 134217728}
      limits: {cpu: 1, memory: 256Mi, nvidia.com/gpu: 1, ephemeral-storage: 1Gi, hugepages-2Mi: 4Mi, example.kubernetes.io/x: 500m}
    env:
    - {name: OPT, valueFrom: {secretKeyRef: {name: missing, key: k, optional: true}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    envFrom: [{secretRef: {name: missing, optional: true}}]
    volumeMounts: [{name: cfg, mountPath: /etc/cfg}, {name: s, mountPath: /etc/s}, {name: h, mountPath: /host}]
  volumes:
  - {name: cfg, configMap: {name: cfg, defaultMode: 0644, items: [{key: a.conf, path: conf/a.conf, mode: 0400}]}}
  - {name: s, secret: {secretName: missing, optional: true, defaultMode: 0o600}}
  - {name: h, hostPath: {path: /var/log, type: DirectoryOrCreate}}
---
"#;
    let m = parse(text).unwrap();
    assert_eq!(m.name(), "demo");
    assert_eq!(m.namespace(), "team");
    assert_eq!(m.config_maps.len(), 1);
    assert!(m.secrets.is_empty());
    let spec = m.pod.spec.as_ref().unwrap();
    let res = spec.containers[0].resources.as_ref().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, "1");
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "0.5");
    let vols = spec.volumes.as_ref().unwrap();
    let cm = vols[0].config_map.as_ref().unwrap();
    assert_eq!(cm.default_mode, Some(0o644));
    assert_eq!(cm.items.as_ref().unwrap()[0].mode, Some(0o400));
    assert_eq!(vols[1].secret.as_ref().unwrap().default_mode, Some(0o600));
    assert_eq!(m.source, Path::new("examples/x.yaml"));
}

#[test]
fn load_reads_the_file_and_names_it_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pod.yaml");
    std::fs::write(&path, BASE).unwrap();
    assert_eq!(load_manifest(&path).unwrap().name(), "demo");
    let missing = dir.path().join("nope.yaml");
    let e = load_manifest(&missing).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: read manifest: ", missing.display())),
        "{e}"
    );
}

/// BASE with annotations of `n` bytes of value under key "a".
fn annotated(n: usize) -> String {
    BASE.replace(
        "  name: demo\n",
        &format!(
            "  name: demo\n  annotations: {{a: \"{}\"}}\n",
            "x".repeat(n)
        ),
    )
}

#[test]
fn annotations_are_limited_to_256_kib() {
    // Key and value count: 1 + (256 KiB - 1) is the most there may be.
    parse(&annotated(256 * 1024 - 1)).unwrap();
    assert_eq!(
            err(&annotated(256 * 1024)),
            format!("{POD_PREFIX}metadata.annotations: too long: 262145 bytes; keys and values together may have at most 262144 bytes (256 KiB)")
        );
    let cm = format!(
            "{BASE}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg, annotations: {{k: \"{}\"}}}}\n",
            "x".repeat(300 * 1024)
        );
    let e = err(&cm);
    assert!(
        e.contains("document 2 (ConfigMap cfg): metadata.annotations: too long"),
        "{e}"
    );
}

#[test]
fn config_map_and_secret_data_are_limited_to_1_mib() {
    let config_map = |n: usize| {
        format!(
                "{BASE}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg}}\ndata: {{a: \"{}\", b: \"{}\"}}\n",
                "x".repeat(n),
                "y".repeat(512 * 1024)
            )
    };
    parse(&config_map(512 * 1024)).unwrap();
    assert_eq!(
            err(&config_map(512 * 1024 + 1)),
            "examples/x.yaml: document 2 (ConfigMap cfg): data: too long: 1048577 bytes; data and binaryData together may have at most 1048576 bytes (1 MiB)"
        );
    // binaryData counts decoded: 4 base64 characters are 3 bytes.
    let binary = format!(
            "{BASE}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg}}\nbinaryData: {{a: \"{}\"}}\n",
            "AAAA".repeat(349_526)
        );
    assert!(err(&binary).contains("data: too long: 1048578 bytes"));
    let secret = |n: usize| {
        format!(
                "{BASE}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\ndata: {{a: \"{}\"}}\nstringData: {{b: \"{}\"}}\n",
                "AAAA".repeat(1024),
                "x".repeat(n)
            )
    };
    parse(&secret(1024 * 1024 - 3 * 1024)).unwrap();
    assert_eq!(
            err(&secret(1024 * 1024 - 3 * 1024 + 1)),
            "examples/x.yaml: document 2 (Secret s): data: too long: 1048577 bytes; data and stringData together may have at most 1048576 bytes (1 MiB)"
        );
}

#[test]
fn manifests_over_3_mib_are_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    // Not even YAML: the size is all that is looked at.
    std::fs::write(&path, "{".repeat(3 * 1024 * 1024 + 1)).unwrap();
    assert_eq!(
        load_manifest(&path).unwrap_err().to_string(),
        format!(
            "{}: the file is 3145729 bytes: a manifest may have at most 3145728 bytes (3 MiB)",
            path.display()
        )
    );
    // Exactly at the limit it is read (and then found not to be YAML).
    std::fs::write(&path, format!("@{}", " ".repeat(3 * 1024 * 1024 - 1))).unwrap();
    let e = load_manifest(&path).unwrap_err().to_string();
    assert!(e.contains("document 1"), "{e}");
    // A pipe is read up to the limit only.
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            // The reader stops early, so the rest may not be written.
            let _ = std::io::Write::write_all(&mut f, &vec![b'#'; 4 * 1024 * 1024]);
        })
    };
    let e = load_manifest(&fifo).unwrap_err().to_string();
    writer.join().unwrap();
    assert!(e.contains("the file is more than 3145728 bytes"), "{e}");
}

#[test]
fn example_sidecar_pod_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sidecar-pod.yaml");
    let m = load_manifest(&path).unwrap();
    assert_eq!(m.name(), "sidecar-demo");
    let spec = m.pod.spec.as_ref().unwrap();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["web", "client"]);
    assert_eq!(spec.containers[0].image.as_deref(), Some("nginx"));
    assert_eq!(
        spec.containers[0].ports.as_ref().unwrap()[0].container_port,
        80
    );
    assert_eq!(spec.containers[1].image.as_deref(), Some("curl"));
    let argv = crate::spec::effective_command(&spec.containers[1], &[], &[], &[]).unwrap();
    assert_eq!(argv[..2], ["sh", "-c"]);
    // No `$(`: nothing for Kubernetes' expansion to touch.
    assert!(!argv[2].contains("$("));
    assert_eq!(
        crate::spec::qos_class(&m.pod),
        crate::spec::QosClass::BestEffort
    );
}
