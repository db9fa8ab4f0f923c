//! The Service proxy against a real `podrun server`: a network namespace stands for the
//! node (a bridge with three "pods", each a network namespace on a veth serving its own
//! name over TCP, and a client pod), `podrun proxy` runs in it, and Services and
//! selector-less EndpointSlices are made with kubectl. The node reaches the server over
//! a veth of the test's own; nothing else leaves the test's namespaces. Checked: a
//! ClusterIP is answered by every backend, from a pod, from the node and from a backend
//! itself (hairpin); a NodePort on the node's address, from outside the cluster;
//! ClientIP affinity; a Service without ready endpoints refuses; an EndpointSlice
//! update; a deleted Service loses its rules; the rules outlive the proxy and
//! `--cleanup` removes them. Ends with a leak check: no namespace, veth or table left.

#![allow(clippy::duplicate_mod)]

mod server_common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use server_common::{cannot_run, kubectls, mark_ran, wait_until, Kubectl, Server};

const WAIT: Duration = Duration::from_secs(60);
const BACKENDS: usize = 3;

fn sh(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn must(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `f` on a thread inside the network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
    .join()
    .unwrap()
}

fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: setns on this thread with a descriptor we own.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// One request: the name of the backend that answered, or the connect error.
fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_owned())
}

fn ask_from(ns: &str, addr: SocketAddr) -> std::io::Result<String> {
    in_netns(ns, move || ask(addr))
}

/// `n` requests from `ns`; the answers (errors count as "error: <kind>").
fn answers_from(ns: &str, addr: SocketAddr, n: usize) -> Vec<String> {
    in_netns(ns, move || {
        (0..n)
            .map(|_| ask(addr).unwrap_or_else(|e| format!("error: {:?}", e.kind())))
            .collect()
    })
}

/// The test's namespaces, links, backends and proxy; removed when dropped.
struct Lab {
    tag: String,
    node: String,
    pods: Vec<String>,
    client: String,
    host_if: String,
    /// "10.245.<n>." of the pods' bridge.
    pod_prefix: String,
    /// "10.203.<n>." of the link between the host and the node.
    link_prefix: String,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    proxy: Option<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        let tag = format!("pxy{}", pid % 100000);
        let third = 10 + pid % 240;
        let lab = Lab {
            node: format!("{tag}node"),
            pods: (0..BACKENDS).map(|i| format!("{tag}p{i}")).collect(),
            client: format!("{tag}c"),
            host_if: format!("{tag}h"),
            pod_prefix: format!("10.245.{third}."),
            link_prefix: format!("10.203.{third}."),
            tag,
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            proxy: None,
            dir: tempfile::Builder::new().prefix("pxy-").tempdir().unwrap(),
        };
        let node = lab.node.clone();
        must(&["ip", "netns", "add", &node]);
        must(&["ip", "-n", &node, "link", "set", "lo", "up"]);
        // The node's uplink: its address is the node's InternalIP.
        must(&[
            "ip",
            "link",
            "add",
            &lab.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &node,
        ]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}1/24", lab.link_prefix),
            "dev",
            &lab.host_if,
        ]);
        must(&["ip", "link", "set", &lab.host_if, "up"]);
        must(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("{}2/24", lab.link_prefix),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &node, "link", "set", "eth0", "up"]);
        // The pods' bridge; the service range is routed to it, as a node's default
        // route would take it, without anything leaving the namespace.
        must(&["ip", "-n", &node, "link", "add", "br0", "type", "bridge"]);
        must(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("{}1/24", lab.pod_prefix),
            "dev",
            "br0",
        ]);
        must(&["ip", "-n", &node, "link", "set", "br0", "up"]);
        must(&[
            "ip",
            "-n",
            &node,
            "route",
            "add",
            "10.96.0.0/12",
            "dev",
            "br0",
        ]);
        lab.node_sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for (i, pod) in lab.pods.iter().chain([&lab.client]).enumerate() {
            let port = format!("vp{i}");
            must(&["ip", "netns", "add", pod]);
            must(&[
                "ip", "-n", &node, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", pod,
            ]);
            must(&[
                "ip", "-n", &node, "link", "set", &port, "master", "br0", "up",
            ]);
            // A pod reaching itself through a Service is bridged back out its own port.
            must(&[
                "ip",
                "-n",
                &node,
                "link",
                "set",
                &port,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ]);
            must(&[
                "ip",
                "-n",
                pod,
                "addr",
                "add",
                &format!("{}{}/24", lab.pod_prefix, 10 + i),
                "dev",
                "eth0",
            ]);
            must(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
            must(&["ip", "-n", pod, "link", "set", "lo", "up"]);
            must(&[
                "ip",
                "-n",
                pod,
                "route",
                "add",
                "default",
                "via",
                &format!("{}1", lab.pod_prefix),
            ]);
        }
        lab
    }

    fn node_sh(&self, args: &[&str]) -> String {
        let mut full = vec!["nsenter", "--net"];
        let ns = format!("--net=/run/netns/{}", self.node);
        full[1] = &ns;
        full.push("--");
        full.extend(args);
        must(&full)
    }

    fn pod_ip(&self, i: usize) -> String {
        format!("{}{}", self.pod_prefix, 10 + i)
    }

    /// Each backend answers every connection with its name, until the lab stops.
    fn serve(&mut self) {
        for (i, pod) in self.pods.clone().into_iter().enumerate() {
            let stop = self.stop.clone();
            let path = format!("/run/netns/{pod}");
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            self.servers.push(std::thread::spawn(move || {
                enter(&path);
                let listener = TcpListener::bind("0.0.0.0:8080").unwrap();
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.write_all(format!("p{i}\n").as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
            ready_rx.recv().unwrap();
        }
    }

    fn start_proxy(&mut self, kubeconfig: &Path) {
        let log = std::fs::File::create(self.log()).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_podrun"))
            .arg("proxy")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--node-name", "node-a", "--node-ip"])
            .arg(format!("{}2", self.link_prefix))
            .arg("--cluster-cidr")
            .arg(format!("{}0/24", self.pod_prefix))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start podrun proxy");
        self.proxy = Some(child);
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("proxy.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// SIGTERM; the proxy must exit cleanly.
    fn stop_proxy(&mut self) {
        let Some(mut c) = self.proxy.take() else {
            return;
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = wait_until("the proxy to exit after SIGTERM", WAIT, || {
            c.try_wait().unwrap()
        });
        assert!(
            status.success(),
            "proxy exited with {status}:\n{}",
            self.log_text()
        );
    }

    /// The table as nft lists it in the node ("" when it is not there).
    fn table(&self) -> String {
        let out = sh(&[
            "nsenter",
            &format!("--net=/run/netns/{}", self.node),
            "--",
            "nft",
            "list",
            "table",
            "ip",
            "podrun-proxy",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn teardown(&mut self) {
        if let Some(mut c) = self.proxy.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stop.store(true, Ordering::SeqCst);
        for t in self.servers.drain(..) {
            let _ = t.join();
        }
        for ns in self.pods.iter().chain([&self.client, &self.node]) {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = sh(&["ip", "link", "del", &self.host_if]);
    }

    /// Nothing of the lab is left: no namespace, no link in the host namespace.
    fn assert_no_leaks(&self) {
        let netns = must(&["ip", "netns", "list"]);
        let left: Vec<&str> = netns.lines().filter(|l| l.contains(&self.tag)).collect();
        assert!(left.is_empty(), "network namespaces left: {left:?}");
        let links = must(&["ip", "-o", "link", "show"]);
        let left: Vec<&str> = links.lines().filter(|l| l.contains(&self.tag)).collect();
        assert!(left.is_empty(), "links left: {left:?}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn apply(server: &Server, k: &Kubectl, yaml: &str) {
    let out = server.kubectl_stdin(k, &["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "kubectl apply: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A selector-less EndpointSlice of `service` on node-a.
fn slice(service: &str, port_name: Option<&str>, endpoints: &[(String, bool)]) -> String {
    let name = port_name
        .map(|n| format!("\n  name: {n}"))
        .unwrap_or_default();
    let eps: String = endpoints
        .iter()
        .map(|(ip, ready)| {
            format!(
                "- addresses: [\"{ip}\"]\n  nodeName: node-a\n  conditions: {{ready: {ready}}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n- port: 8080\n  protocol: TCP{name}\nendpoints:\n{eps}"
    )
}

fn cluster_ip(server: &Server, k: &Kubectl, svc: &str) -> std::net::Ipv4Addr {
    server
        .ok(k, &["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"])
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn services_are_proxied_by_nftables() {
    const TEST: &str = "services_are_proxied_by_nftables";
    let Some(k) = kubectls(TEST).and_then(|mut k| k.pop()) else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        cannot_run(TEST, "needs root");
        return;
    }
    for tool in ["nft", "nsenter", "ip", "sysctl"] {
        if find_tool(tool).is_none() {
            cannot_run(TEST, &format!("{tool} not found"));
            return;
        }
    }
    mark_ran();

    let mut lab = Lab::new();
    lab.serve();
    let server = Server::start_on(&format!("{}1", lab.link_prefix), &[], None, &[]);
    lab.start_proxy(&server.kubeconfig);
    let backends: BTreeSet<String> = (0..BACKENDS).map(|i| format!("p{i}")).collect();
    let all_ready: Vec<(String, bool)> = (0..BACKENDS).map(|i| (lab.pod_ip(i), true)).collect();

    // web: a NodePort whose targetPort is a name; the slice carries the number.
    apply(
        &server,
        &k,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  ports:\n  - {name: http, port: 80, targetPort: web, protocol: TCP}\n",
    );
    apply(&server, &k, &slice("web", Some("http"), &all_ready));
    apply(
        &server,
        &k,
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  sessionAffinity: ClientIP\n  ports:\n  - {port: 80, targetPort: 8080}\n",
    );
    apply(&server, &k, &slice("sticky", None, &all_ready));
    apply(
        &server,
        &k,
        "apiVersion: v1\nkind: Service\nmetadata: {name: empty}\nspec:\n  ports:\n  - {port: 80, targetPort: 8080}\n",
    );
    apply(
        &server,
        &k,
        &slice("empty", None, &[(lab.pod_ip(0), false)]),
    );
    let web = SocketAddr::from((cluster_ip(&server, &k, "web"), 80));
    let sticky = SocketAddr::from((cluster_ip(&server, &k, "sticky"), 80));
    let empty = SocketAddr::from((cluster_ip(&server, &k, "empty"), 80));
    let node_port: u16 = server
        .ok(
            &k,
            &[
                "get",
                "svc",
                "web",
                "-o",
                "jsonpath={.spec.ports[0].nodePort}",
            ],
        )
        .trim()
        .parse()
        .unwrap();

    // The ClusterIP from a pod: every backend answers in turn.
    let client = lab.client.clone();
    let first = wait_until_or_log(&lab, "web's ClusterIP to answer", || {
        ask_from(&client, web).ok()
    });
    assert!(backends.contains(&first), "{first}");
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        seen.extend(answers_from(&client, web, 20));
        if seen == backends {
            break;
        }
    }
    assert_eq!(seen, backends, "answers through {web}");

    // From the node itself (the output path).
    let from_node: BTreeSet<String> = answers_from(&lab.node, web, 30).into_iter().collect();
    assert!(
        from_node.is_subset(&backends) && !from_node.is_empty(),
        "{from_node:?}"
    );

    // Hairpin: a backend reaches itself through its Service.
    let p0 = lab.pods[0].clone();
    let mut hairpin = BTreeSet::new();
    for _ in 0..10 {
        hairpin.extend(answers_from(&p0, web, 20));
        if hairpin.contains("p0") {
            break;
        }
    }
    assert!(
        hairpin.contains("p0") && hairpin.is_subset(&backends),
        "{hairpin:?}"
    );

    // The NodePort on the node's address, from outside the cluster (the host side of
    // the uplink), and on the bridge address from a pod.
    let node_ip: std::net::Ipv4Addr = format!("{}2", lab.link_prefix).parse().unwrap();
    let outside: BTreeSet<String> = (0..30)
        .map(|_| ask(SocketAddr::from((node_ip, node_port))).unwrap())
        .collect();
    assert!(
        outside.is_subset(&backends) && outside.len() > 1,
        "{outside:?}"
    );
    let gw: std::net::Ipv4Addr = format!("{}1", lab.pod_prefix).parse().unwrap();
    let via_gw = ask_from(&client, SocketAddr::from((gw, node_port))).unwrap();
    assert!(backends.contains(&via_gw), "{via_gw}");

    // ClientIP affinity: one client, one backend.
    let stuck: BTreeSet<String> = answers_from(&client, sticky, 30).into_iter().collect();
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert!(stuck.is_subset(&backends), "{stuck:?}");

    // No ready endpoint: refused.
    wait_until_or_log(&lab, "the empty service to refuse", || {
        match ask_from(&client, empty) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        }
    });

    // An update of one slice: p2 leaves web.
    apply(&server, &k, &slice("web", Some("http"), &all_ready[..2]));
    wait_until_or_log(&lab, "web's rules to drop p2", || {
        // Only sticky's endpoint chain still sends to p2.
        let t = lab.table();
        (t.matches(&format!("dnat to {}:8080", lab.pod_ip(2)))
            .count()
            == 1)
            .then_some(())
    });
    let after: BTreeSet<String> = answers_from(&client, web, 40).into_iter().collect();
    assert_eq!(
        after,
        ["p0", "p1"].map(String::from).into(),
        "answers after p2 left"
    );

    // Deleting a Service removes its chains, sets and map elements.
    assert!(lab.table().contains("/sticky/"));
    server.ok(&k, &["delete", "svc", "sticky"]);
    wait_until_or_log(&lab, "sticky's rules to go", || {
        let t = lab.table();
        (!t.contains("/sticky/") && !t.contains(&format!("{} . tcp . 80", sticky.ip())))
            .then_some(())
    });
    assert!(ask_from(&client, sticky).is_err());

    // The rules outlive the proxy; --cleanup removes them.
    lab.stop_proxy();
    let log = lab.log_text();
    for failure in ["syncing service rules", "deleting stale proxy chains"] {
        assert!(!log.contains(failure), "the proxy said {failure:?}:\n{log}");
    }
    assert!(log.contains("service rules synced"), "{log}");
    assert!(lab.table().contains("/web/"), "rules gone with the proxy");
    assert_eq!(
        ask_from(&client, web).map(|a| backends.contains(&a)).ok(),
        Some(true)
    );
    lab.node_sh(&[env!("CARGO_BIN_EXE_podrun"), "proxy", "--cleanup"]);
    assert_eq!(lab.table(), "");
    // Twice is fine.
    lab.node_sh(&[env!("CARGO_BIN_EXE_podrun"), "proxy", "--cleanup"]);

    drop(server);
    lab.teardown();
    lab.assert_no_leaks();
}

fn wait_until_or_log<T>(lab: &Lab, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}\n--- proxy log ---\n{}\n--- table ---\n{}",
                lab.log_text(),
                lab.table()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
