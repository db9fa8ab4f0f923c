//! How a node joins, end to end with real clients, and what it may then do: with a
//! bootstrap token from `podrun server token create`, kubectl (PyPI's 1.37) files a
//! CertificateSigningRequest for `system:node:<name>` made by openssl, the server
//! approves and signs it, and the certificate is the node's identity. With it a node
//! writes its own Node, its Lease and the status of pods bound to it, and nothing of
//! another node's (the node authorizer with NodeRestriction, as kube-apiserver has them).

mod server_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use server_common::{cannot_run, mark_ran, output_with_stdin, wait_until, Server, WAIT};

const TEST: &str = "nodes_join_with_a_token_and_touch_only_their_own_objects";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tool(var: &str, default: &str, what: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into());
    if !path.exists() {
        cannot_run(
            TEST,
            &format!(
                "{what} not found at {} (scripts/setup.sh installs it)",
                path.display()
            ),
        );
        return None;
    }
    Some(path)
}

/// Who kubectl talks as.
enum As<'a> {
    Token(&'a str),
    Cert(&'a Path, &'a Path),
    Admin,
}

struct Cluster {
    server: Server,
    kubectl: PathBuf,
    dir: PathBuf,
}

impl Cluster {
    fn kubectl(&self, who: As, args: &[&str], stdin: Option<&str>) -> Output {
        let empty = self.dir.join("empty.kubeconfig");
        std::fs::write(&empty, "").unwrap();
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("HOME", &self.dir);
        match who {
            As::Admin => {
                cmd.env("KUBECONFIG", &self.server.kubeconfig);
            }
            As::Token(t) => {
                cmd.env("KUBECONFIG", &empty).arg(format!("--token={t}"));
            }
            As::Cert(crt, key) => {
                cmd.env("KUBECONFIG", &empty)
                    .arg(format!("--client-certificate={}", crt.display()))
                    .arg(format!("--client-key={}", key.display()));
            }
        }
        if !matches!(who, As::Admin) {
            cmd.arg(format!("--server=https://127.0.0.1:{}", self.server.port))
                .arg(format!(
                    "--certificate-authority={}",
                    self.server.root.join("server/pki/ca.crt").display()
                ));
        }
        cmd.args(args);
        match stdin {
            None => cmd.output().expect("run kubectl"),
            Some(input) => output_with_stdin(&mut cmd, input),
        }
    }

    fn ok(&self, who: As, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(who, args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n--- server log ---\n{}",
            text(&out.stderr),
            self.server.log_text()
        );
        text(&out.stdout)
    }

    /// kubectl that the server must refuse with 403.
    fn forbidden(&self, who: As, args: &[&str], stdin: Option<&str>) {
        let out = self.kubectl(who, args, stdin);
        let err = text(&out.stderr);
        assert!(
            !out.status.success() && (err.contains("Forbidden") || err.contains("is forbidden")),
            "kubectl {args:?} should be Forbidden; stdout {} stderr {err}",
            text(&out.stdout)
        );
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
}

/// A P-256 key and a PKCS#10 request for `subject`, made by openssl in `dir`.
fn key_and_request(openssl: &Path, dir: &Path, name: &str, subject: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    run(Command::new(openssl)
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(&key));
    run(Command::new(openssl)
        .args(["req", "-new", "-key"])
        .arg(&key)
        .args(["-subj", subject, "-out"])
        .arg(&csr));
    (key, csr)
}

/// Joins `node` with `token`: a key and request from openssl, the request filed as the
/// token's user, the certificate the server issues. Returns (certificate, key) paths.
fn join(c: &Cluster, openssl: &Path, token: &str, node: &str) -> (PathBuf, PathBuf) {
    let (key, csr) = key_and_request(
        openssl,
        &c.dir,
        node,
        &format!("/O=system:nodes/CN=system:node:{node}"),
    );
    use base64::Engine;
    let request = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&csr).unwrap());
    let name = format!("node-csr-{node}");
    let manifest = format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client-kubelet\n  usages: [digital signature, key encipherment, client auth]\n"
    );
    c.ok(As::Token(token), &["create", "-f", "-"], Some(&manifest));
    let cert = wait_until("the node's certificate", WAIT, || {
        let out = c.kubectl(
            As::Token(token),
            &["get", "csr", &name, "-o", "jsonpath={.status.certificate}"],
            None,
        );
        let b = text(&out.stdout);
        (out.status.success() && !b.is_empty()).then_some(b)
    });
    let crt = c.dir.join(format!("{node}.crt"));
    std::fs::write(
        &crt,
        base64::engine::general_purpose::STANDARD
            .decode(cert.trim())
            .unwrap(),
    )
    .unwrap();
    (crt, key)
}

fn node_manifest(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n")
}

fn pod_manifest(name: &str, node: &str, mirror: bool) -> String {
    let annotations = if mirror {
        "  annotations:\n    kubernetes.io/config.mirror: \"abc\"\n"
    } else {
        ""
    };
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n{annotations}spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: busybox\n")
}

#[test]
fn nodes_join_with_a_token_and_touch_only_their_own_objects() {
    let Some(kubectl) = tool(
        "PODRUN_KUBECTL_1_37",
        "/opt/podrun-test/kubectl-venv/bin/kubectl",
        "kubectl 1.37",
    ) else {
        return;
    };
    let Some(openssl) = tool("PODRUN_OPENSSL", "/usr/bin/openssl", "openssl") else {
        return;
    };
    mark_ran();
    let server = Server::start(&[]);
    let dir = server.root.parent().unwrap().join("nodes");
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Cluster {
        server,
        kubectl,
        dir,
    };

    let out = Command::new(env!("CARGO_BIN_EXE_podrun"))
        .arg("--root")
        .arg(&c.server.root)
        .args(["server", "token", "create", "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let id = token.split('.').next().unwrap().to_string();

    let (w1_crt, w1_key) = join(&c, &openssl, &token, "w1");
    // A token asking for an admin's identity gets nothing. It is filed before w2's
    // request, so once w2's is issued the controller has been past it.
    let (_, evil_csr) = key_and_request(
        &openssl,
        &c.dir,
        "evil",
        "/O=system:masters/CN=kubernetes-admin",
    );
    use base64::Engine;
    let request =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&evil_csr).unwrap());
    for signer in [
        "kubernetes.io/kube-apiserver-client-kubelet",
        "kubernetes.io/kube-apiserver-client",
    ] {
        let name = signer.rsplit('/').next().unwrap();
        let manifest = format!("apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: evil-{name}\nspec:\n  request: {request}\n  signerName: {signer}\n  usages: [digital signature, client auth]\n");
        c.ok(As::Token(&token), &["create", "-f", "-"], Some(&manifest));
    }
    let (w2_crt, w2_key) = join(&c, &openssl, &token, "w2");
    for name in ["kube-apiserver-client-kubelet", "kube-apiserver-client"] {
        let state = c.ok(
            As::Admin,
            &[
                "get",
                "csr",
                &format!("evil-{name}"),
                "-o",
                "jsonpath={.status}",
            ],
            None,
        );
        assert!(state.is_empty() || state == "{}", "evil-{name}: {state}");
    }
    // Nor may a token approve its own request.
    c.forbidden(
        As::Token(&token),
        &["certificate", "approve", "evil-kube-apiserver-client"],
        None,
    );
    // An admin may: `kubectl certificate approve|deny` go through the approval
    // subresource, and the signer then issues what was approved.
    c.ok(
        As::Admin,
        &["certificate", "deny", "evil-kube-apiserver-client-kubelet"],
        None,
    );
    c.ok(
        As::Admin,
        &["certificate", "approve", "evil-kube-apiserver-client"],
        None,
    );
    wait_until("the approved request to be issued", WAIT, || {
        let t = c.ok(As::Admin, &["get", "csr"], None);
        t.lines()
            .any(|l| l.starts_with("evil-kube-apiserver-client ") && l.contains("Approved,Issued"))
            .then_some(())
    });
    let denied = c.ok(
        As::Admin,
        &["get", "csr", "evil-kube-apiserver-client-kubelet"],
        None,
    );
    assert!(
        denied.contains("Denied") && !denied.contains("Issued"),
        "{denied}"
    );
    let w1 = || As::Cert(&w1_crt, &w1_key);
    let w2 = || As::Cert(&w2_crt, &w2_key);
    // The request records who filed it; the server approved and issued it.
    let table = c.ok(As::Admin, &["get", "csr", "node-csr-w1"], None);
    assert!(table.contains(&format!("system:bootstrap:{id}")), "{table}");
    assert!(table.contains("Approved,Issued"), "{table}");

    // Its own Node, yes; another's, no.
    c.ok(w1(), &["create", "-f", "-"], Some(&node_manifest("w1")));
    c.forbidden(w1(), &["create", "-f", "-"], Some(&node_manifest("w2")));
    c.ok(w2(), &["create", "-f", "-"], Some(&node_manifest("w2")));
    c.ok(w1(), &["label", "node", "w1", "zone=a"], None);
    c.forbidden(w1(), &["label", "node", "w2", "zone=a"], None);
    let ready = r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"ready"}]}}"#;
    c.ok(
        w1(),
        &[
            "patch",
            "node",
            "w1",
            "--subresource=status",
            "--type=merge",
            "-p",
            ready,
        ],
        None,
    );
    c.forbidden(
        w1(),
        &[
            "patch",
            "node",
            "w2",
            "--subresource=status",
            "--type=merge",
            "-p",
            ready,
        ],
        None,
    );
    let nodes = c.ok(As::Admin, &["get", "nodes"], None);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("w1 ") && l.contains(" Ready ")),
        "{nodes}"
    );

    // Its own Lease in kube-node-lease, yes; another's, no.
    let lease = |n: &str| {
        format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {n}\n  namespace: kube-node-lease\nspec:\n  holderIdentity: {n}\n  leaseDurationSeconds: 40\n")
    };
    c.ok(w1(), &["create", "-f", "-"], Some(&lease("w1")));
    c.forbidden(w1(), &["create", "-f", "-"], Some(&lease("w2")));

    // Pods: reads, yes; status and delete only of pods bound to itself; creates only of
    // mirror pods bound to itself.
    c.ok(
        As::Admin,
        &["create", "-f", "-"],
        Some(&pod_manifest("on-w1", "w1", false)),
    );
    c.ok(
        As::Admin,
        &["create", "-f", "-"],
        Some(&pod_manifest("on-w2", "w2", false)),
    );
    let pods = c.ok(w1(), &["get", "pods", "-A", "-o", "name"], None);
    assert!(
        pods.contains("pod/on-w1") && pods.contains("pod/on-w2"),
        "{pods}"
    );
    let running = r#"{"status":{"phase":"Running"}}"#;
    c.ok(
        w1(),
        &[
            "patch",
            "pod",
            "on-w1",
            "--subresource=status",
            "--type=merge",
            "-p",
            running,
        ],
        None,
    );
    c.forbidden(
        w1(),
        &[
            "patch",
            "pod",
            "on-w2",
            "--subresource=status",
            "--type=merge",
            "-p",
            running,
        ],
        None,
    );
    c.forbidden(w1(), &["delete", "pod", "on-w2", "--wait=false"], None);
    c.forbidden(
        w1(),
        &["create", "-f", "-"],
        Some(&pod_manifest("plain", "w1", false)),
    );
    c.forbidden(
        w1(),
        &["create", "-f", "-"],
        Some(&pod_manifest("mirror-w2", "w2", true)),
    );
    c.ok(
        w1(),
        &["create", "-f", "-"],
        Some(&pod_manifest("mirror-w1", "w1", true)),
    );
    c.ok(w1(), &["delete", "pod", "on-w1", "--wait=false"], None);
    // Secrets and ConfigMaps: a node reads those its pods use, one by one, and no others.
    for n in ["w1", "w2"] {
        c.ok(
            As::Admin,
            &[
                "create",
                "secret",
                "generic",
                &format!("s-{n}"),
                "--from-literal=k=v",
            ],
            None,
        );
        c.ok(
            As::Admin,
            &[
                "create",
                "configmap",
                &format!("cm-{n}"),
                "--from-literal=k=v",
            ],
            None,
        );
        let pod = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: uses-{n}\n  namespace: default\nspec:\n  nodeName: {n}\n  volumes:\n  - name: s\n    secret:\n      secretName: s-{n}\n  containers:\n  - name: c\n    image: busybox\n    envFrom:\n    - configMapRef:\n        name: cm-{n}\n");
        c.ok(As::Admin, &["create", "-f", "-"], Some(&pod));
    }
    c.ok(w1(), &["get", "secret", "s-w1"], None);
    c.ok(w1(), &["get", "configmap", "cm-w1"], None);
    c.ok(
        w1(),
        &["get", "secrets", "--field-selector", "metadata.name=s-w1"],
        None,
    );
    c.forbidden(w1(), &["get", "secret", "s-w2"], None);
    c.forbidden(w1(), &["get", "configmap", "cm-w2"], None);
    c.forbidden(w1(), &["get", "secrets"], None);
    c.forbidden(w2(), &["get", "secret", "s-w1"], None);

    // Nodes do not write workloads or read cluster roles of others.
    c.forbidden(
        w2(),
        &["create", "deployment", "x", "--image=busybox"],
        None,
    );
    c.forbidden(w2(), &["delete", "node", "w1"], None);
    let phase = c.ok(
        As::Admin,
        &["get", "pod", "on-w2", "-o", "jsonpath={.status.phase}"],
        None,
    );
    assert_eq!(phase, "Pending", "another node's pod is untouched");

    c.server.stop();
}
