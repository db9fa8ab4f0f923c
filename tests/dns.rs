//! `podrun dns` against a real `podrun server`, asked by a real client (Debian's dig):
//! a Service's A and SRV records, a headless Service's endpoints, NXDOMAIN, and answers
//! that follow `kubectl delete svc` and `kubectl scale`. Pods are run by a simulated
//! node, so no root is needed.

mod server_common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use server_common::simnode::SimNodes;
use server_common::{cannot_run, kubectls, mark_ran, wait_until, Kubectl, Server, WAIT};

const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: db}
spec:
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: busybox}]
"#;

/// A `podrun dns` process on 127.0.0.1:<port>, stopped by SIGTERM (by PID).
struct Dns {
    child: Option<Child>,
    port: u16,
    log: std::path::PathBuf,
}

impl Dns {
    fn start(kubeconfig: &Path, dir: &Path) -> Dns {
        let port = free_port();
        // Other names go to a loopback port nobody answers on: nothing leaves the host.
        let upstream = format!("127.0.0.1:{}", free_port());
        let log = dir.join("dns.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_podrun"))
            .args(["dns", "--kubeconfig"])
            .arg(kubeconfig)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                &upstream,
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start podrun dns");
        Dns {
            child: Some(child),
            port,
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM; it must exit cleanly, be gone, and have freed its port.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM podrun dns");
        let status = wait_until("podrun dns to exit after SIGTERM", WAIT, || {
            child.try_wait().unwrap()
        });
        assert!(
            status.success(),
            "podrun dns exited with {status}:\n{}",
            self.log_text()
        );
        assert_eq!(
            nix::sys::signal::kill(pid, None),
            Err(nix::errno::Errno::ESRCH),
            "podrun dns (pid {pid}) is still there"
        );
        UdpSocket::bind(("127.0.0.1", self.port)).expect("the dns port is free again");
        std::net::TcpListener::bind(("127.0.0.1", self.port))
            .expect("the dns tcp port is free again");
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    // A port both UDP and TCP have free at this moment.
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// What dig says: the status and the answer section's data, sorted.
#[derive(Debug, PartialEq)]
struct Dig {
    status: String,
    answers: Vec<String>,
    flags: String,
}

fn dig(port: u16, name: &str, qtype: &str, extra: &[&str]) -> Option<Dig> {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=2"])
        .args(["+noall", "+comments", "+answer"])
        .args(extra)
        .args([name, qtype])
        .output()
        .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))?
        .split(',')
        .next()?
        .to_string();
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix(";; flags: "))?
        .split(';')
        .next()?
        .to_string();
    let mut answers: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            // name ttl class type data...
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() >= 5 && fields[3] == qtype).then(|| fields[4..].join(" "))
        })
        .collect();
    answers.sort();
    Some(Dig {
        status,
        answers,
        flags,
    })
}

fn pod_ips(server: &Server, k: &Kubectl, label: &str) -> Vec<String> {
    let out = server.ok(
        k,
        &[
            "get",
            "pods",
            "-l",
            label,
            "-o",
            "jsonpath={range .items[*]}{.status.podIP} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ],
    );
    let mut ips: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let ip = f.next()?;
            f.next().is_none().then(|| ip.to_string())
        })
        .collect();
    ips.sort();
    ips
}

fn have_dig(test: &str) -> bool {
    let found = Command::new("dig").arg("-v").output().is_ok();
    if !found {
        cannot_run(
            test,
            "dig not found (scripts/setup.sh installs bind9-dnsutils)",
        );
    }
    found
}

#[test]
fn dns_answers_services_from_a_real_server() {
    let test = "dns_answers_services_from_a_real_server";
    if !have_dig(test) {
        return;
    }
    let Some(k) = kubectls(test).and_then(|mut v| v.pop()) else {
        return;
    };
    mark_ran();
    let mut server = Server::start(&[]);
    let mut nodes = SimNodes::start(&server.kubeconfig, &["dns-node-1"]);
    let dir = tempfile::tempdir().unwrap();
    let mut dns = Dns::start(&server.kubeconfig, dir.path());
    let out = server.kubectl_stdin(&k, &["apply", "-f", "-"], MANIFEST);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cluster_ip = wait_until("web's ClusterIP", WAIT, || {
        let ip = server.ok(
            &k,
            &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"],
        );
        (!ip.is_empty()).then_some(ip)
    });
    let web = "web.default.svc.cluster.local.";
    let a = wait_until("web's A record", WAIT, || {
        dig(dns.port, web, "A", &[]).filter(|d| d.status == "NOERROR" && !d.answers.is_empty())
    });
    assert_eq!(a.answers, [cluster_ip.as_str()], "{}", dns.log_text());
    assert!(a.flags.contains("aa") && a.flags.contains("ra"), "{a:?}");
    // The same over TCP, and the name in another case.
    let tcp = dig(dns.port, "WEB.Default.svc.cluster.local.", "A", &["+tcp"]).unwrap();
    assert_eq!(tcp.answers, [cluster_ip.as_str()]);
    let srv = dig(dns.port, &format!("_http._tcp.{web}"), "SRV", &[]).unwrap();
    assert_eq!(srv.answers, [format!("0 100 80 {web}")]);

    // NXDOMAIN, also for what a search path makes of a qualified name.
    for name in [
        "nope.default.svc.cluster.local.",
        "svc.default.svc.cluster.local.default.svc.cluster.local.",
    ] {
        let nx = dig(dns.port, name, "A", &[]).unwrap();
        assert_eq!(nx.status, "NXDOMAIN", "{name}");
    }
    // A name that exists, another type: NODATA.
    assert_eq!(dig(dns.port, web, "AAAA", &[]).unwrap().status, "NOERROR");

    // Headless: the ready pods' addresses, and one SRV per endpoint.
    let db = "db.default.svc.cluster.local.";
    let ips = wait_until("two db pods running", WAIT, || {
        Some(pod_ips(&server, &k, "app=db")).filter(|ips| ips.len() == 2)
    });
    wait_until("db's A records", WAIT, || {
        dig(dns.port, db, "A", &[]).filter(|d| d.answers == ips)
    });
    let srv = dig(dns.port, &format!("_pg._tcp.{db}"), "SRV", &[]).unwrap();
    let want: Vec<String> = ips
        .iter()
        .map(|ip| format!("0 50 5432 {}.{db}", ip.replace('.', "-")))
        .collect();
    assert_eq!(srv.answers, want);
    let endpoint = format!("{}.{db}", ips[0].replace('.', "-"));
    assert_eq!(
        dig(dns.port, &endpoint, "A", &[]).unwrap().answers,
        [ips[0].clone()]
    );

    // The records follow scale and delete.
    server.ok(&k, &["scale", "deployment", "db", "--replicas=3"]);
    let ips = wait_until("three db pods running", WAIT, || {
        Some(pod_ips(&server, &k, "app=db")).filter(|ips| ips.len() == 3)
    });
    wait_until("db's A records after scale", WAIT, || {
        dig(dns.port, db, "A", &[]).filter(|d| d.answers == ips)
    });
    server.ok(&k, &["delete", "svc", "web"]);
    wait_until("web to be NXDOMAIN after delete", WAIT, || {
        dig(dns.port, web, "A", &[]).filter(|d| d.status == "NXDOMAIN")
    });
    // Other names go upstream, which is down here: SERVFAIL.
    assert_eq!(
        dig(dns.port, "example.org.", "A", &[]).unwrap().status,
        "SERVFAIL"
    );

    let pid = dns.pid();
    dns.stop();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    nodes.stop();
    server.stop();
}

/// Queries per second for a cluster name and the process's memory with 1 000 Services.
/// A measurement, not a check: `cargo test --release --test dns -- --ignored --nocapture`.
#[test]
#[ignore]
fn dns_measure_qps_and_memory() {
    let test = "dns_measure_qps_and_memory";
    let Some(k) = kubectls(test).and_then(|mut v| v.pop()) else {
        return;
    };
    mark_ran();
    let mut server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut dns = Dns::start(&server.kubeconfig, dir.path());
    // Until the first lists arrive the zone answers SERVFAIL; then a missing name is
    // NXDOMAIN (3).
    let query = build_query("nope.default.svc.cluster.local.");
    wait_until("the zone synced", WAIT, || {
        (udp_rcode(dns.port, &query)? == 3).then_some(())
    });
    let rss_before = rss_kib(dns.pid());

    let mut list = String::new();
    for i in 0..1000 {
        list.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec:\n  selector: {{app: a{i}}}\n  ports: [{{name: http, port: 80}}]\n"
        ));
    }
    let out = server.kubectl_stdin(&k, &["apply", "-f", "-"], &list);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = build_query("svc-999.default.svc.cluster.local.");
    wait_until(
        "the 1000th service in the zone",
        Duration::from_secs(120),
        || (udp_rcode(dns.port, &last)? == 0).then_some(()),
    );
    let rss_after = rss_kib(dns.pid());

    let q = build_query("svc-500.default.svc.cluster.local.");
    let n = 20_000;
    let (secs, _) = query_loop(dns.port, &q, n);
    println!(
        "dns: {n} sequential UDP queries in {secs:.2}s: {:.0} qps",
        n as f64 / secs
    );
    let clients = 4;
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let q = q.clone();
            let port = dns.port;
            std::thread::spawn(move || query_loop(port, &q, n / clients))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "dns: {n} UDP queries from {clients} clients at once in {secs:.2}s: {:.0} qps",
        n as f64 / secs
    );
    println!("dns: VmRSS {rss_before} KiB with no Services, {rss_after} KiB with 1000");
    dns.stop();
    server.stop();
}

/// `n` queries one after the other on one socket; the seconds taken and the answers' total size.
fn query_loop(port: u16, query: &[u8], n: usize) -> (f64, usize) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 1500];
    let mut bytes = 0;
    let start = Instant::now();
    for _ in 0..n {
        socket.send(query).unwrap();
        bytes += socket.recv(&mut buf).unwrap();
    }
    (start.elapsed().as_secs_f64(), bytes)
}

/// A plain A query, written by hand so the measurement loop costs nothing to build.
fn build_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn udp_rcode(port: u16, query: &[u8]) -> Option<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    socket.send_to(query, ("127.0.0.1", port)).ok()?;
    let mut buf = [0u8; 1500];
    let n = socket.recv(&mut buf).ok()?;
    (n >= 4).then(|| buf[3] & 0x0f)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}
