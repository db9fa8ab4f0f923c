//! `kubectl logs`, `exec`, `attach` and `port-forward` through a real `podrun server`
//! to a kubelet API over a fake CRI runtime: the server finds the pod's Node, dials its
//! kubelet with its own client certificate, and streams or pipes what comes back.
//! Debian's kubectl 1.20 speaks SPDY; PyPI's 1.37 speaks WebSocket (exec, attach) and
//! SPDY tunnelled through a WebSocket (port-forward).

mod server_common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Client;
use podrun_agent::kubelet::api::{self as kubelet_api, fake::FakeCri};
use serde_json::json;
use server_common::{kubectls, mark_ran, output_with_stdin, wait_until, Kubectl, Server, WAIT};

/// A kubelet API on 127.0.0.1 over the fake runtime, serving the pods put in `pods`.
struct FakeKubelet {
    rt: tokio::runtime::Runtime,
    fake: FakeCri,
    port: u16,
    pods: Arc<Mutex<Vec<Pod>>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl FakeKubelet {
    fn start(client_ca: &str) -> FakeKubelet {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("podrun-kubelet-")
            .tempdir()
            .unwrap();
        let pods: Arc<Mutex<Vec<Pod>>> = Arc::default();
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let (fake, port, task) = rt.block_on(async {
            let fake = FakeCri::start(dir.path()).await.unwrap();
            let (cert, key) =
                kubelet_api::self_signed("fake-node", &["127.0.0.1".parse().unwrap()]).unwrap();
            let tls = kubelet_api::tls_config(client_ca, &cert, &key).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let p = pods.clone();
            let pods_fn: kubelet_api::PodsFn = Arc::new(move || p.lock().unwrap().clone());
            let task = tokio::spawn(kubelet_api::serve(
                listener,
                tls,
                fake.client(),
                pods_fn,
                rx,
            ));
            (fake, port, task)
        });
        FakeKubelet {
            rt,
            fake,
            port,
            pods,
            shutdown,
            task: Some(task),
            dir,
        }
    }

    fn log_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Stops serving; its port must be closed after.
    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            self.rt
                .block_on(async { tokio::time::timeout(WAIT, t).await })
                .expect("the kubelet API stops")
                .unwrap();
        }
        assert!(
            TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "the kubelet API still listens on {}",
            self.port
        );
    }
}

async fn client(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Registers a Node whose kubelet is at `address:port` (no address at all for None).
async fn register_node(c: &Client, name: &str, address: Option<&str>, port: u16) {
    let mut status = json!({
        "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
    });
    if let Some(a) = address {
        status["addresses"] = json!([
            {"type": "InternalIP", "address": a},
            {"type": "Hostname", "address": name},
        ]);
    }
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": status,
    }))
    .unwrap();
    let nodes: kube::Api<Node> = kube::Api::all(c.clone());
    nodes.create(&PostParams::default(), &node).await.unwrap();
}

/// Creates a pod bound to `node` (left unbound for None) and makes it Running; the
/// stored pod.
async fn create_pod(
    c: &Client,
    name: &str,
    node: Option<&str>,
    containers: &[&str],
    default_container: Option<&str>,
) -> Pod {
    let containers: Vec<serde_json::Value> = containers
        .iter()
        .map(|n| json!({"name": n, "image": "busybox"}))
        .collect();
    let mut pod = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": containers},
    });
    match node {
        Some(n) => pod["spec"]["nodeName"] = json!(n),
        // No node fits, so the scheduler leaves it unbound.
        None => pod["spec"]["nodeSelector"] = json!({"podrun.test/none": "none"}),
    }
    if let Some(d) = default_container {
        pod["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/default-container": d});
    }
    let pods: kube::Api<Pod> = kube::Api::namespaced(c.clone(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap()
}

const MAIN_LOG: &str = "\
2024-05-01T10:00:00.000000000Z stdout F first
2024-05-01T10:00:01.000000000Z stderr F second
2024-05-01T10:00:02.000000000Z stdout P thi
2024-05-01T10:00:03.000000000Z stdout F rd
";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kubectl_cmd(server: &Server, k: &Kubectl, args: &[&str]) -> Command {
    let mut cmd = Command::new(&k.path);
    cmd.env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.root.parent().unwrap())
        .args(args);
    cmd
}

#[test]
fn logs_exec_attach_and_port_forward_reach_the_kubelet() {
    let test = "logs_exec_attach_and_port_forward_reach_the_kubelet";
    let Some(kubectls) = kubectls(test) else {
        return;
    };
    mark_ran();
    let mut server = Server::start(&[]);
    let ca = std::fs::read_to_string(server.root.join("server/pki/ca.crt")).unwrap();
    let mut kubelet = FakeKubelet::start(&ca);
    let main_log = kubelet.log_file("main-0.log", MAIN_LOG);
    let side_log = kubelet.log_file("side-0.log", "2024-05-01T10:00:00Z stdout F from side\n");
    let closed_port = free_port();
    let (web, two) = kubelet.rt.block_on(async {
        let c = client(&server.kubeconfig).await;
        register_node(&c, "fake-node", Some("127.0.0.1"), kubelet.port).await;
        register_node(&c, "gone-node", Some("127.0.0.1"), closed_port).await;
        register_node(&c, "bare-node", None, 0).await;
        let web = create_pod(
            &c,
            "web",
            Some("fake-node"),
            &["main", "side"],
            Some("main"),
        )
        .await;
        let two = create_pod(&c, "two", Some("fake-node"), &["a", "b"], None).await;
        create_pod(&c, "lost", Some("gone-node"), &["main"], None).await;
        create_pod(&c, "nowhere", Some("bare-node"), &["main"], None).await;
        create_pod(&c, "unbound", None, &["main"], None).await;
        (web, two)
    });
    let uid = web.metadata.uid.clone().unwrap();
    let sandbox = kubelet.fake.add_sandbox("default", "web", &uid);
    let main = kubelet
        .fake
        .add_container(&sandbox, "main", &main_log, true);
    kubelet
        .fake
        .add_container(&sandbox, "side", &side_log, true);
    *kubelet.pods.lock().unwrap() = vec![web, two];

    for k in &kubectls {
        let v = k.version;
        // Logs, with the container named, defaulted by the annotation, and tailed.
        assert_eq!(
            server.ok(k, &["logs", "web", "-c", "main"]),
            "first\nsecond\nthird\n",
            "kubectl {v}"
        );
        // The server defaults to the annotated container (kubectl 1.20 insists on a
        // name itself for a pod of two containers; 1.37 reads the annotation too).
        assert_eq!(
            server.ok(
                k,
                &["get", "--raw", "/api/v1/namespaces/default/pods/web/log"]
            ),
            "first\nsecond\nthird\n",
            "kubectl {v}"
        );
        if v != "1.20" {
            assert_eq!(server.ok(k, &["logs", "web"]), "first\nsecond\nthird\n");
        }
        assert_eq!(server.ok(k, &["logs", "web", "-c", "side"]), "from side\n");
        assert_eq!(
            server.ok(k, &["logs", "web", "-c", "main", "--tail=2"]),
            "second\nthird\n",
            "kubectl {v}"
        );
        assert_eq!(
            server.ok(
                k,
                &["logs", "web", "-c", "main", "--tail=1", "--timestamps"]
            ),
            "2024-05-01T10:00:02.000000000Z third\n",
            "kubectl {v}"
        );
        assert_eq!(
            server.ok(k, &["logs", "web", "-c", "main", "--limit-bytes=8"]),
            "first\nse",
            "kubectl {v}"
        );

        // Exec: stdin piped through and back, arguments, the exit code.
        let out = output_with_stdin(
            &mut kubectl_cmd(
                &server,
                k,
                &["exec", "-i", "web", "-c", "main", "--", "cat"],
            ),
            "through the server\nand back\n",
        );
        assert!(
            out.status.success(),
            "kubectl {v} exec -i: {}\n--- server log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "through the server\nand back\n",
            "kubectl {v}"
        );
        assert_eq!(
            server.ok(
                k,
                &["exec", "web", "-c", "main", "--", "echo", "hi", "there"]
            ),
            "hi there\n",
            "kubectl {v}"
        );
        let out = server.kubectl(k, &["exec", "web", "-c", "main", "--", "fail", "3"]);
        assert_eq!(out.status.code(), Some(3), "kubectl {v}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).lines().next(),
            Some("oops")
        );

        // Attach: the fake's main process echoes stdin.
        let out = output_with_stdin(
            &mut kubectl_cmd(&server, k, &["attach", "-i", "web", "-c", "main"]),
            "attached\n",
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("attached"),
            "kubectl {v} attach: {out:?}"
        );

        // Port forwarding: the fake's port echoes.
        port_forward(&server, k);

        // Refusals, with kube-apiserver's words.
        let err = server.fails(k, &["logs", "web", "-c", "nope"]);
        assert!(
            err.contains("container nope is not valid for pod web"),
            "kubectl {v}: {err}"
        );
        let err = server.fails(
            k,
            &["get", "--raw", "/api/v1/namespaces/default/pods/two/log"],
        );
        assert!(
            err.contains("a container name must be specified for pod two, choose one of: [a b]"),
            "kubectl {v}: {err}"
        );
        let err = server.fails(k, &["logs", "two", "-c", "a"]);
        assert!(
            err.contains("container \\\"a\\\" in pod \\\"two\\\" is waiting to start")
                || err.contains("container \"a\" in pod \"two\" is waiting to start"),
            "kubectl {v}: {err}"
        );
        let err = server.fails(k, &["logs", "lost"]);
        assert!(err.contains("error dialing backend"), "kubectl {v}: {err}");
        let err = server.fails(k, &["exec", "lost", "--", "echo"]);
        assert!(err.contains("error dialing backend"), "kubectl {v}: {err}");
        let err = server.fails(k, &["logs", "nowhere"]);
        assert!(
            err.contains("node \"bare-node\" has no address"),
            "kubectl {v}: {err}"
        );
        let err = server.fails(k, &["logs", "unbound"]);
        assert!(
            err.contains("pod unbound does not have a host assigned"),
            "kubectl {v}: {err}"
        );
    }

    // Following: new lines arrive as they are written; kubectl ends when the
    // container exits.
    let mut last = "third".to_string();
    for k in &kubectls {
        let v = k.version;
        let mut child = kubectl_cmd(&server, k, &["logs", "-f", "web", "-c", "main", "--tail=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let next = || lines.recv_timeout(WAIT).expect("a log line in time");
        let mut seen = vec![next()];
        let line = format!("following with {v}");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&main_log)
            .unwrap()
            .write_all(format!("2024-05-01T10:00:09Z stdout F {line}\n").as_bytes())
            .unwrap();
        seen.push(next());
        assert_eq!(seen, [last.as_str(), line.as_str()], "kubectl {v}");
        last = line;
        kubelet.fake.set_running(&main, false);
        let status = wait_until("kubectl logs -f to end", WAIT, || child.try_wait().unwrap());
        assert!(status.success(), "kubectl {v} logs -f: {status}");
        kubelet.fake.set_running(&main, true);
    }

    kubelet.stop();
    server.stop();
}

/// `kubectl port-forward pod/web :8080`, one connection through it, then SIGTERM.
fn port_forward(server: &Server, k: &Kubectl) {
    let v = k.version;
    let mut child = kubectl_cmd(server, k, &["port-forward", "pod/web", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // "Forwarding from 127.0.0.1:40123 -> 8080"
    let local: u16 = first
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("kubectl {v} port-forward said {first:?}; stderr: {err}")
        });
    let mut conn = TcpStream::connect(("127.0.0.1", local)).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.write_all(b"ping through the tunnel").unwrap();
    let mut back = [0u8; 23];
    conn.read_exact(&mut back).unwrap_or_else(|e| {
        panic!(
            "kubectl {v} port-forward: no echo: {e}\n--- server log ---\n{}",
            server.log_text()
        )
    });
    assert_eq!(&back, b"ping through the tunnel", "kubectl {v}");
    drop(conn);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_until("kubectl port-forward to exit", WAIT, || {
        child.try_wait().unwrap()
    });
}
