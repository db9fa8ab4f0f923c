//! Workload 11: the Service proxy's rule updates and the cost of a ClusterIP hop.
//!
//! In a network namespace of its own, podrun's proxier (the same code as the agent's,
//! fed an in-memory snapshot, so the API server is not part of the figure) programs
//! SERVICES Services of ENDPOINTS endpoints each with the real nft: a full sync into an
//! empty table, a full resync over the installed rules (what runs every hour), and a
//! partial sync after one Service's EndpointSlice gains an endpoint. Each time covers
//! rendering, the listing a full sync reads, and `nft -f` (process start included).
//!
//! The ClusterIP hop: with those rules in place, a "pod" namespace on a veth serves one
//! byte per TCP connection; from the node namespace, connect + read + close through the
//! Service's ClusterIP (DNAT on the output path) against the pod IP directly.
//!
//! kube-proxy is not installed here and not measured.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use podrun_agent::proxy::{Nft, NftCommand, Proxier, RenderConfig, ServiceKey, Snapshot};
use serde_json::json;

use crate::report::{Report, Series, Skipped};
use crate::sys;
use crate::workloads::Ctx;

const WORKLOAD: &str = "proxy";
const SERVICES: usize = 1000;
const ENDPOINTS: usize = 10;
const NODE_ADDR: &str = "10.250.0.1";
const POD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const PROBE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 200, 1);
const POD_PORT: u16 = 8080;

fn service(name: &str, ip: Ipv4Addr) -> k8s_openapi::api::core::v1::Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": name},
        "spec": {"clusterIP": ip.to_string(), "type": "NodePort",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
    .expect("a Service")
}

fn slice(name: &str, eps: &[Ipv4Addr]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": format!("{name}-1"),
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}],
        "endpoints": eps.iter().map(|ip| json!({
            "addresses": [ip.to_string()], "nodeName": "bench-node",
            "conditions": {"ready": true},
        })).collect::<Vec<_>>(),
    }))
    .expect("an EndpointSlice")
}

/// `services` Services of `ENDPOINTS` endpoints, and the probe Service whose only
/// endpoint is the bench's pod.
fn snapshot(services: usize) -> Snapshot {
    let mut snap = Snapshot::default();
    for i in 0..services {
        let name = format!("svc{i}");
        snap.apply_service(service(
            &name,
            Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250) as u8 + 1),
        ));
        snap.apply_slice(slice(&name, &endpoints(i, ENDPOINTS)));
    }
    snap.apply_service(service("probe", PROBE_IP));
    snap.apply_slice(slice("probe", &[POD_ADDR]));
    snap
}

/// The first `n` endpoint addresses of service `i` (a /24 holds 25 services' worth).
fn endpoints(i: usize, n: usize) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|e| Ipv4Addr::new(10, 244, (i / 25) as u8, ((i % 25) * ENDPOINTS + e) as u8))
        .collect()
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("ip")?;
    if !out.status.success() {
        bail!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn enter(ns: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns on the calling thread with a descriptor we own.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The node and pod namespaces, removed when dropped.
struct Lab {
    node: String,
    pod: String,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl Lab {
    fn new() -> Result<Lab> {
        let id = std::process::id();
        let lab = Lab {
            node: format!("pxb{id}n"),
            pod: format!("pxb{id}p"),
            stop: Arc::new(AtomicBool::new(false)),
            server: None,
        };
        ip(&["netns", "add", &lab.node])?;
        ip(&["netns", "add", &lab.pod])?;
        let (n, p) = (lab.node.as_str(), lab.pod.as_str());
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", p, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", n, "link", "add", "vb0", "type", "veth", "peer", "name", "eth0", "netns", p,
        ])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{NODE_ADDR}/24"),
            "dev",
            "vb0",
        ])?;
        ip(&["-n", n, "link", "set", "vb0", "up"])?;
        ip(&["-n", n, "route", "add", "10.96.0.0/12", "dev", "vb0"])?;
        ip(&[
            "-n",
            p,
            "addr",
            "add",
            &format!("{POD_ADDR}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", p, "link", "set", "eth0", "up"])?;
        ip(&["-n", p, "route", "add", "default", "via", NODE_ADDR])?;
        Ok(lab)
    }

    fn nft(&self, nft: &std::path::Path) -> NftCommand {
        NftCommand {
            program: nft.to_owned(),
            prefix: vec![
                "nsenter".into(),
                format!("--net=/run/netns/{}", self.node).into(),
                "--".into(),
            ],
        }
    }

    /// One byte per connection, from the pod namespace.
    fn serve(&mut self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = self.stop.clone();
        let pod = self.pod.clone();
        self.server = Some(std::thread::spawn(move || {
            let listener = enter(&pod).and_then(|()| {
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, POD_PORT))?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nodelay(true);
                        let _ = s.write_all(b"x");
                    }
                    Err(_) => std::thread::yield_now(),
                }
            }
        }));
        rx.recv().context("the pod's server thread")?
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
        sys::quiet(Command::new("ip").args(["netns", "del", &self.node]));
        sys::quiet(Command::new("ip").args(["netns", "del", &self.pod]));
    }
}

/// Median-friendly samples of connect + read + close to `to`, from the node namespace,
/// alternating ClusterIP and pod IP so both see the same load.
fn hops(node: &str, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let node = node.to_owned();
    std::thread::spawn(move || -> Result<(Vec<f64>, Vec<f64>)> {
        enter(&node)?;
        let once = |to: SocketAddr| -> Result<f64> {
            let t = Instant::now();
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .with_context(|| format!("connect {to}"))?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            drop(s);
            Ok(t.elapsed().as_secs_f64() * 1e6)
        };
        let via_service = SocketAddr::from((PROBE_IP, 80));
        let direct = SocketAddr::from((POD_ADDR, POD_PORT));
        for _ in 0..50 {
            once(via_service)?;
            once(direct)?;
        }
        let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            a.push(once(via_service)?);
            b.push(once(direct)?);
        }
        Ok((a, b))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

pub fn proxy(ctx: &Ctx, report: &mut Report) {
    let skip = |report: &mut Report, reason: String| {
        report.skipped.push(Skipped {
            workload: WORKLOAD.into(),
            system: "podrun".into(),
            reason,
        })
    };
    let Some(nft) = sys::which("nft") else {
        return skip(report, "not available: nft is not installed".into());
    };
    if sys::which("ip").is_none() || sys::which("nsenter").is_none() {
        return skip(report, "not available: ip or nsenter".into());
    }
    if let Err(e) = run(ctx, &nft, report) {
        skip(report, format!("failed: {e:#}"));
    }
}

fn run(ctx: &Ctx, nft_path: &std::path::Path, report: &mut Report) -> Result<()> {
    let services = if ctx.smoke { 100 } else { SERVICES };
    let rounds = if ctx.smoke {
        1
    } else {
        ctx.rounds.clamp(3, 10)
    };
    let label = format!("{services} Services x {ENDPOINTS} endpoints");
    let mut full = Series::new(
        WORKLOAD,
        &format!("full sync, empty table ({label})"),
        "podrun",
        "ms",
    );
    let mut resync = Series::new(WORKLOAD, "full resync over installed rules", "podrun", "ms");
    let mut partial = Series::new(
        WORKLOAD,
        "one Service changed (partial sync)",
        "podrun",
        "ms",
    );
    let mut via = Series::new(WORKLOAD, "TCP connect+read via ClusterIP", "podrun", "us");
    let mut direct = Series::new(WORKLOAD, "TCP connect+read to the pod IP", "kernel", "us");
    let snap = snapshot(services);
    // One Service gains an endpoint.
    let changed = ServiceKey::new("bench", &format!("svc{}", services / 2));
    let mut bigger = snap.clone();
    let mut eps = endpoints(services / 2, ENDPOINTS);
    eps.push(Ipv4Addr::new(10, 245, 0, 1));
    bigger.apply_slice(slice(&changed.name, &eps));
    let cfg = RenderConfig {
        node_name: "bench-node".into(),
        cluster_cidr: Some("10.244.0.0/14".parse().expect("a CIDR")),
    };
    let mut lab = Lab::new()?;
    let nft = lab.nft(nft_path);
    lab.serve()?;
    let mut script_bytes = (0, 0);
    for round in 0..rounds {
        progress!("proxy round {}/{rounds}", round + 1);
        nft.apply(&podrun_agent::proxy::render::delete_table())?;
        let mut p = Proxier::new(cfg.clone(), Vec::new());
        let t = Instant::now();
        let s = p.sync(&nft, &snap, &BTreeSet::new(), true)?;
        full.samples.push(ms(t.elapsed()));
        script_bytes.0 = s.script_bytes;
        let t = Instant::now();
        p.sync(&nft, &snap, &BTreeSet::new(), true)?;
        resync.samples.push(ms(t.elapsed()));
        let t = Instant::now();
        let s = p.sync(&nft, &bigger, &[changed.clone()].into(), false)?;
        partial.samples.push(ms(t.elapsed()));
        script_bytes.1 = s.script_bytes;
        // Back to the first state for the next round's resync.
        p.sync(&nft, &snap, &[changed.clone()].into(), false)?;
    }
    let (a, b) = hops(&lab.node, if ctx.smoke { 200 } else { 3000 })?;
    via.samples = a;
    direct.samples = b;
    full.note = Some(format!(
        "script {} KiB; {} chains",
        script_bytes.0 / 1024,
        services * (ENDPOINTS + 2) + 2
    ));
    partial.note = Some(format!(
        "script {} bytes: the service chain rewritten, one endpoint chain added",
        script_bytes.1
    ));
    via.note =
        Some("output-path DNAT, 1 endpoint, with the other Services' rules installed".into());
    report.series.extend([full, resync, partial, via, direct]);
    nft.apply(&podrun_agent::proxy::render::delete_table())?;
    drop(lab);
    Ok(())
}
