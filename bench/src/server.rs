//! Workload 8: `podrun server`, the Kubernetes API server, on its embedded store and on
//! etcd (a single-member Debian etcd on loopback, started and stopped by the harness).
//!
//! Each round starts a fresh server (and etcd) per backend, the backends alternating:
//! - write throughput: N pods created over HTTPS with the admin client certificate,
//!   CONCURRENCY requests in flight on one HTTP/2 connection;
//! - `kubectl get pods` over those pods (at the kubectl size only), with the server's
//!   VmRSS and VmHWM before and after;
//! - watch delivery: one watch from the list's resourceVersion on its own HTTP/2
//!   connection, then WATCH_CREATES pods created one at a time; latency is the time
//!   from a create's response (and, since the event often comes first, also from its
//!   request) to its ADDED event;
//! - idle memory of the server (and of etcd) after start and after the runs.
//!
//! The client is hyper 1 over tokio-rustls on a current-thread runtime, with the CA and
//! the client certificate and key of the server's admin.conf.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};

use crate::report::{Report, Series, Skipped};
use crate::sys;
use crate::workloads::Ctx;

/// Create requests in flight during the write test.
const CONCURRENCY: usize = 8;
/// Pods created one at a time during the watch test.
const WATCH_CREATES: usize = 200;
/// Namespace of every pod the workload creates (it exists from the server's start).
const NAMESPACE: &str = "default";
/// How long one request or one awaited watch event may take before the round fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server or etcd may take to come up or to stop.
pub const START_WAIT: Duration = Duration::from_secs(60);
/// Pause before an idle-memory reading, so that the last requests' work is over.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Pause before the idle reading after the runs: longer than the 5 s period at which the
/// server hands freed heap back, so the reading is of an idle server, not of the burst.
pub const SETTLE_AFTER_RUNS: Duration = Duration::from_secs(6);

/// The systems: podrun server on its embedded store, on etcd, and the etcd member.
pub const EMBEDDED: &str = "podrun";
pub const ON_ETCD: &str = "podrun+etcd";
pub const ETCD: &str = "etcd";

/// The sizes, rounds and binaries of this workload.
#[derive(Debug, Clone)]
pub struct Params {
    /// Pod counts of the write and watch tests.
    pub sizes: Vec<usize>,
    /// The one size at which `kubectl get pods` and the idle memory after the runs are
    /// measured.
    pub kubectl_size: usize,
    pub rounds: usize,
    /// `kubectl get pods` runs per server round (after one warm-up run).
    pub kubectl_runs: usize,
    pub kubectl: PathBuf,
    pub etcd: PathBuf,
}

impl Params {
    pub fn new(ctx: &Ctx, sizes: &[usize], rounds: usize) -> Self {
        let (sizes, kubectl_size, rounds, kubectl_runs) = if ctx.smoke {
            (vec![100], 100, 1, 1)
        } else {
            (sizes.to_vec(), 1000, rounds.max(1), 5)
        };
        Params {
            sizes,
            kubectl_size,
            rounds,
            kubectl_runs,
            kubectl: env_path(
                "PODRUN_KUBECTL_1_37",
                "/opt/podrun-test/kubectl-venv/bin/kubectl",
            ),
            etcd: etcd_bin(),
        }
    }
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into())
}

/// The etcd binary: $PODRUN_ETCD, else Debian's.
pub fn etcd_bin() -> PathBuf {
    env_path("PODRUN_ETCD", "/usr/bin/etcd")
}

pub fn server(ctx: &Ctx, params: &Params, report: &mut Report) {
    let etcd_ok = params.etcd.is_file();
    if etcd_ok {
        report
            .versions
            .push(("etcd".into(), sys::version(&params.etcd)));
    } else {
        skip(
            report,
            ON_ETCD,
            format!(
                "not measured: {} is not installed (Debian package etcd-server)",
                params.etcd.display()
            ),
        );
    }
    let kubectl_ok = params.kubectl.is_file();
    if kubectl_ok {
        report
            .versions
            .push(("kubectl".into(), kubectl_version(&params.kubectl)));
    } else {
        skip(
            report,
            "kubectl",
            format!(
                "not measured: kubectl get pods: {} is missing (scripts/setup.sh installs it)",
                params.kubectl.display()
            ),
        );
    }
    let versions: Vec<String> = report
        .versions
        .iter()
        .filter(|(k, _)| k == "etcd" || k == "kubectl")
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    report.conditions.push(format!(
        "API server: podrun server ({} build) on 127.0.0.1, client hyper 1 + rustls over \
         HTTP/2 with the admin client certificate; {}",
        build_of(&ctx.podrun),
        versions.join("; ")
    ));
    let mut m = Measured::default();
    let mut failed: Vec<&str> = Vec::new();
    let backends: Vec<&str> = if etcd_ok {
        vec![EMBEDDED, ON_ETCD]
    } else {
        vec![EMBEDDED]
    };
    for &n in &params.sizes {
        for round in 0..params.rounds {
            for &backend in &backends {
                if failed.contains(&backend) {
                    continue;
                }
                progress!("server: {backend}, {n} pods, round {}", round + 1);
                let dir = ctx.work.join(format!("srv-{backend}-{n}-{round}"));
                let r = server_round(ctx, params, &dir, backend, n, kubectl_ok, &mut m);
                // Each round's store and PKI go with it; the work directory goes at the end.
                let _ = std::fs::remove_dir_all(&dir);
                if let Err(e) = r {
                    failed.push(backend);
                    let reason = if backend == EMBEDDED {
                        format!("failed: {e:#}")
                    } else {
                        format!("not measured: {e:#}")
                    };
                    skip(report, backend, reason);
                }
            }
        }
    }
    m.into_report(ctx, params, report);
}

fn skip(report: &mut Report, system: &str, reason: String) {
    report.skipped.push(Skipped {
        workload: "server".into(),
        system: system.into(),
        reason,
    });
}

fn kubectl_version(kubectl: &Path) -> String {
    sys::output(Command::new(kubectl).args(["version", "--client", "-o", "json"]))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| {
            v["clientVersion"]["gitVersion"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Samples by (metric, system), in the order first seen.
#[derive(Default)]
struct Measured {
    order: Vec<(String, String, String)>,
    samples: HashMap<(String, String), Vec<f64>>,
    /// Per backend: watch events that arrived before their create's response, of all.
    early_events: HashMap<String, (usize, usize)>,
}

impl Measured {
    fn push(&mut self, metric: &str, system: &str, unit: &str, v: f64) {
        let key = (metric.to_string(), system.to_string());
        if !self.samples.contains_key(&key) {
            self.order.push((metric.into(), system.into(), unit.into()));
        }
        self.samples.entry(key).or_default().push(v);
    }

    fn into_report(mut self, ctx: &Ctx, params: &Params, report: &mut Report) {
        let build = build_of(&ctx.podrun);
        for (metric, system, unit) in std::mem::take(&mut self.order) {
            let mut s = Series::new("server", &metric, &system, &unit);
            s.samples = self
                .samples
                .remove(&(metric.clone(), system.clone()))
                .unwrap_or_default();
            s.note = note(&metric, &system, params, &build, &self);
            report.series.push(s);
        }
    }
}

/// One note per kind of figure, on the embedded store's series (the table prints each).
fn note(metric: &str, system: &str, params: &Params, build: &str, m: &Measured) -> Option<String> {
    if system != EMBEDDED {
        return None;
    }
    let first = params.sizes.first().copied().unwrap_or(0);
    if metric == format!("create {first} pods ({CONCURRENCY} in flight)") {
        return Some(format!(
            "podrun server ({build} build) on 127.0.0.1, a fresh server (and etcd) per \
             round, backends alternating; system podrun = embedded store, podrun+etcd = \
             --etcd-servers on one Debian etcd member on loopback (own data dir); one \
             HTTP/2 connection over TLS with the admin client certificate, \
             {CONCURRENCY} POSTs in flight; objects/s, so podrun/peer > 1 means the \
             embedded store is faster"
        ));
    }
    if metric == format!("watch event after response p50 ({first} pods)") {
        let mut early: Vec<String> = m
            .early_events
            .iter()
            .map(|(b, (e, all))| format!("{b} {e} of {all}"))
            .collect();
        early.sort();
        return Some(format!(
            "one watch (?watch=1&resourceVersion=<list RV>) on its own HTTP/2 connection, \
             then {WATCH_CREATES} pods created one at a time on the other connection, \
             each after the previous one's event; `after response` = ADDED event's \
             arrival - the create's response (an event that came first counts as 0; \
             events that did: {}), `after request` = the event's arrival - the create's \
             request sent; p50 and p99 (nearest rank) per round",
            early.join(", ")
        ));
    }
    if metric.starts_with("kubectl get pods") {
        return Some(format!(
            "{} get pods, KUBECONFIG=admin.conf, {} runs per round after one warm-up run \
             (its output checked to list every pod), stdout to /dev/null",
            params.kubectl.display(),
            params.kubectl_runs
        ));
    }
    if metric == "idle VmRSS after start" {
        return Some(format!(
            "VmRSS from /proc/<pid>/status, {SETTLE:?} after the server answered /readyz; \
             podrun and podrun+etcd: the podrun server process ({build} build); etcd: the \
             etcd member behind podrun+etcd"
        ));
    }
    None
}

/// "release" or "debug" from the cargo profile directory of the binary, else its path.
pub fn build_of(podrun: &Path) -> String {
    let s = podrun.to_string_lossy();
    if s.contains("/release/") {
        "release".into()
    } else if s.contains("/debug/") {
        "debug".into()
    } else {
        format!("{}", podrun.display())
    }
}

/// VmRSS and VmHWM of a process, in KiB.
pub fn vm_kib(pid: u32) -> Result<(f64, f64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{path}: no {name}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn server_round(
    ctx: &Ctx,
    params: &Params,
    dir: &Path,
    backend: &str,
    n: usize,
    kubectl_ok: bool,
    m: &mut Measured,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let etcd = if backend == ON_ETCD {
        Some(Daemon::etcd(&params.etcd, dir)?)
    } else {
        None
    };
    let endpoint = etcd.as_ref().and_then(|e| e.endpoint.clone());
    // The API alone: with no nodes the scheduler would answer every pod created here
    // with a status write and a FailedScheduling event.
    let mut server = Daemon::server(ctx, dir, endpoint.as_deref(), false)?;
    // One runtime per round: dropping it closes the round's connections, so the server
    // stops without waiting for them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(async {
        let api = Api::connect(&server.kubeconfig).await?;
        let mut conn = api.open().await?;
        api.wait_ready(&mut conn, &server).await?;
        tokio::time::sleep(SETTLE).await;
        m.push(
            "idle VmRSS after start",
            backend,
            "KiB",
            vm_kib(server.pid)?.0,
        );
        if let Some(e) = &etcd {
            m.push("idle VmRSS after start", ETCD, "KiB", vm_kib(e.pid)?.0);
        }

        let rate = api.create_many(&conn, n).await?;
        m.push(
            &format!("create {n} pods ({CONCURRENCY} in flight)"),
            backend,
            "objects/s",
            rate,
        );

        if n == params.kubectl_size && kubectl_ok {
            let (rss0, hwm0) = vm_kib(server.pid)?;
            let times = kubectl_get(params, dir, &server.kubeconfig, n)?;
            let (rss1, hwm1) = vm_kib(server.pid)?;
            for t in times {
                m.push(&format!("kubectl get pods ({n} pods)"), backend, "ms", t);
            }
            for (metric, v) in [
                ("VmRSS before kubectl get", rss0),
                ("VmHWM before kubectl get", hwm0),
                ("VmRSS after kubectl get", rss1),
                ("VmHWM after kubectl get", hwm1),
            ] {
                m.push(&format!("{metric} ({n} pods)"), backend, "KiB", v);
            }
        }

        let w = api.watch_latency(&mut conn, n).await?;
        for (from, lat) in [
            ("response", &w.after_response),
            ("request", &w.after_request),
        ] {
            for p in [50.0, 99.0] {
                m.push(
                    &format!("watch event after {from} p{p} ({n} pods)"),
                    backend,
                    "ms",
                    percentile(lat, p),
                );
            }
        }
        let e = m.early_events.entry(backend.to_string()).or_default();
        e.0 += w.early;
        e.1 += w.after_response.len();

        if n == params.kubectl_size {
            drop(conn);
            tokio::time::sleep(SETTLE_AFTER_RUNS).await;
            let metric = format!("idle VmRSS after the {n}-pod runs");
            m.push(&metric, backend, "KiB", vm_kib(server.pid)?.0);
            if let Some(e) = &etcd {
                m.push(&metric, ETCD, "KiB", vm_kib(e.pid)?.0);
            }
        }
        anyhow::Ok(())
    });
    drop(rt);
    let stopped = server.stop();
    let result = result.map_err(|e| server.with_log(e));
    if let Some(mut e) = etcd {
        let _ = e.stop();
    }
    result?;
    stopped
}

/// `kubectl get pods` in the server's namespace: one warm-up run whose output must list
/// every pod, then the timed runs (ms). It blocks the runtime's one thread, which has
/// nothing to do meanwhile: the server is another process.
fn kubectl_get(params: &Params, dir: &Path, kubeconfig: &Path, n: usize) -> Result<Vec<f64>> {
    let kubectl = || {
        let mut c = Command::new(&params.kubectl);
        // HOME: kubectl's cache goes to the round's directory, not the caller's home.
        c.env("KUBECONFIG", kubeconfig)
            .env("HOME", dir)
            .args(["get", "pods", "-n", NAMESPACE]);
        c
    };
    let out = sys::output(&mut kubectl()).context("kubectl get pods")?;
    let listed = out.lines().filter(|l| l.starts_with("p-")).count();
    if listed != n {
        bail!("kubectl get pods listed {listed} pods, expected {n}");
    }
    (0..params.kubectl_runs)
        .map(|_| {
            sys::timed(&mut kubectl())
                .map(|d| d.as_secs_f64() * 1000.0)
                .context("kubectl get pods")
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The processes: podrun server and etcd, stopped by their PIDs.

pub struct Daemon {
    child: Option<Child>,
    pub pid: u32,
    pub name: &'static str,
    log: PathBuf,
    pub kubeconfig: PathBuf,
    pub endpoint: Option<String>,
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what} within {START_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Daemon {
    /// `cmd` with its stdout and stderr in `log`; stopped by PID with [`Daemon::stop`].
    pub fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Result<Daemon> {
        let file = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        Ok(Daemon {
            pid: child.id(),
            child: Some(child),
            name,
            log,
            kubeconfig: PathBuf::new(),
            endpoint: None,
        })
    }

    pub fn etcd(bin: &Path, dir: &Path) -> Result<Daemon> {
        let (client, peer) = (free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut d = Daemon::spawn(
            "etcd",
            Command::new(bin)
                .arg("--data-dir")
                .arg(dir.join("etcd"))
                .args(["--name", "bench"])
                .args(["--listen-client-urls", &endpoint])
                .args(["--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .arg("--initial-cluster")
                .arg(format!("bench={peer_url}"))
                .args(["--initial-cluster-state", "new"])
                .args(["--log-level", "warn"]),
            dir.join("etcd.log"),
        )?;
        d.endpoint = Some(endpoint);
        wait_until("etcd did not listen", || {
            d.check_running()?;
            Ok(TcpStream::connect(("127.0.0.1", client)).ok())
        })
        .map_err(|e| d.with_log(e))?;
        Ok(d)
    }

    /// `podrun server` in `dir`, on etcd when an endpoint is given; `controllers` runs
    /// the scheduler and the controllers in the process (the server's default).
    pub fn server(ctx: &Ctx, dir: &Path, etcd: Option<&str>, controllers: bool) -> Result<Daemon> {
        let root = dir.join("root");
        let mut cmd = Command::new(&ctx.podrun);
        cmd.arg("--root").arg(&root).args([
            "server",
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            "0",
        ]);
        cmd.arg(format!("--controllers={controllers}"));
        if let Some(e) = etcd {
            cmd.arg("--etcd-servers").arg(e);
        }
        let mut d = Daemon::spawn("podrun server", &mut cmd, dir.join("server.log"))?;
        d.kubeconfig = root.join("server/admin.conf");
        // The start-up line names the address; it comes after admin.conf is written.
        let log = d.log.clone();
        wait_until("podrun server did not log its address", || {
            d.check_running()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(text
                .lines()
                .find_map(|l| l.split("(listening on ").nth(1))
                .and_then(|rest| rest.split(')').next())
                .and_then(|a| a.parse::<SocketAddr>().ok()))
        })
        .map_err(|e| d.with_log(e))?;
        Ok(d)
    }

    /// An error when the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                self.child = None;
                bail!("{} exited with {st}", self.name);
            }
        }
        Ok(())
    }

    /// The error with the last lines of the daemon's log, when it wrote any.
    pub fn with_log(&self, e: anyhow::Error) -> anyhow::Error {
        let tail = self.log_tail();
        if tail.is_empty() {
            e
        } else {
            anyhow::anyhow!("{e:#}{tail}")
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n  {}: {tail}", self.log.display())
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within START_WAIT.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on the PID of a child this process started and has not reaped.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Some(st) = child.try_wait()? {
                if st.success() || self.name == "etcd" {
                    return Ok(());
                }
                bail!(
                    "{} exited with {st} after SIGTERM{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not stop within {START_WAIT:?} of SIGTERM",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------
// The HTTPS client.

pub type Conn = SendRequest<Full<Bytes>>;

pub struct Api {
    addr: SocketAddr,
    base: String,
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

/// One base64 field of the kubeconfig.
fn b64_field(v: &Value, pointer: &str, path: &Path) -> Result<Vec<u8>> {
    let s = v
        .pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("{}: no {pointer}", path.display()))?;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .with_context(|| format!("{}: {pointer} is not base64", path.display()))
}

fn pod(name: &str) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"containers": [{
                "name": "c",
                "image": "busybox:1.36",
                "command": ["sleep", "3600"]
            }]}
        })
        .to_string(),
    )
}

/// The p-th percentile (nearest rank) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Api {
    pub async fn connect(kubeconfig: &Path) -> Result<Api> {
        let text = std::fs::read_to_string(kubeconfig)
            .with_context(|| format!("read {}", kubeconfig.display()))?;
        let v: Value = serde_norway::from_str(&text)
            .with_context(|| format!("parse {}", kubeconfig.display()))?;
        let ca = b64_field(
            &v,
            "/clusters/0/cluster/certificate-authority-data",
            kubeconfig,
        )?;
        let cert = b64_field(&v, "/users/0/user/client-certificate-data", kubeconfig)?;
        let key = b64_field(&v, "/users/0/user/client-key-data", kubeconfig)?;
        let server = v
            .pointer("/clusters/0/cluster/server")
            .and_then(Value::as_str)
            .with_context(|| format!("{}: no cluster server", kubeconfig.display()))?;
        let hostport = server
            .strip_prefix("https://")
            .with_context(|| format!("{}: server {server} is not https", kubeconfig.display()))?
            .trim_end_matches('/');
        let addr: SocketAddr = hostport
            .parse()
            .with_context(|| format!("{}: server {server}", kubeconfig.display()))?;

        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.context("certificate-authority-data")?)?;
        }
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .context("client-certificate-data")?;
        let key = PrivateKeyDer::from_pem_slice(&key).context("client-key-data")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let ip = match addr.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        Ok(Api {
            addr,
            base: format!("https://{hostport}"),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: ServerName::IpAddress(ip.into()),
        })
    }

    /// A new HTTP/2 connection; its driver runs as a task until the sender is dropped.
    pub async fn open(&self) -> Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .context("HTTP/2 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    fn request(&self, method: Method, path: &str, body: Bytes) -> Result<Request<Full<Bytes>>> {
        // Every PATCH here is a JSON merge patch, as `kubectl scale` sends.
        let kind = if method == Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("accept", "application/json");
        if !body.is_empty() {
            b = b.header("content-type", kind);
        }
        Ok(b.body(Full::new(body))?)
    }

    /// One request with its whole body read; fails unless the status is `want`.
    pub async fn call(
        &self,
        conn: &mut Conn,
        method: Method,
        path: &str,
        body: Bytes,
        want: StatusCode,
    ) -> Result<Bytes> {
        let req = self.request(method.clone(), path, body)?;
        let fut = async {
            conn.ready().await?;
            let resp = conn.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .with_context(|| format!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {path}"))?;
        if status != want {
            let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
            bail!("{method} {path}: {status}: {text}");
        }
        Ok(body)
    }

    pub async fn wait_ready(&self, conn: &mut Conn, server: &Daemon) -> Result<()> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            let r = self
                .call(conn, Method::GET, "/readyz", Bytes::new(), StatusCode::OK)
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("{} not ready", server.name)))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Creates pods p-00000.. p-(n-1) with CONCURRENCY requests in flight; objects/s.
    async fn create_many(&self, conn: &Conn, n: usize) -> Result<f64> {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENCY {
            let mut conn = conn.clone();
            let next = next.clone();
            let path = path.clone();
            let api = self.clone_light();
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return anyhow::Ok(());
                    }
                    let body = pod(&format!("p-{i:05}"));
                    api.call(&mut conn, Method::POST, &path, body, StatusCode::CREATED)
                        .await?;
                }
            });
        }
        while let Some(r) = workers.join_next().await {
            r??;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }

    /// The server's URL, as https://HOST:PORT.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn clone_light(&self) -> Api {
        Api {
            addr: self.addr,
            base: self.base.clone(),
            tls: self.tls.clone(),
            server_name: self.server_name.clone(),
        }
    }

    /// List, watch from the list's resourceVersion on a second connection, then create
    /// WATCH_CREATES pods one at a time, each after the previous one's event.
    async fn watch_latency(&self, conn: &mut Conn, n: usize) -> Result<WatchLatency> {
        let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
        let list = self
            .call(conn, Method::GET, &pods, Bytes::new(), StatusCode::OK)
            .await?;
        let list: Value = serde_json::from_slice(&list).context("pod list")?;
        let items = list["items"].as_array().map_or(0, Vec::len);
        if items != n {
            bail!("the pod list holds {items} pods, expected {n}");
        }
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .context("pod list: no metadata.resourceVersion")?
            .to_string();

        let mut watch = self
            .watch(&format!("{pods}?watch=1&resourceVersion={rv}"))
            .await?;
        let mut w = WatchLatency::default();
        for i in 0..WATCH_CREATES {
            let name = format!("w-{i:03}");
            let sent = Instant::now();
            self.call(conn, Method::POST, &pods, pod(&name), StatusCode::CREATED)
                .await?;
            let answered = Instant::now();
            // Creates are one at a time: the next ADDED event must be this pod's.
            let seen = loop {
                let (ev, at) = watch
                    .next()
                    .await
                    .with_context(|| format!("watch: no event for {name}"))?;
                if ev["type"] != "ADDED" {
                    continue;
                }
                match ev["object"]["metadata"]["name"].as_str() {
                    Some(got) if got == name => break at,
                    got => bail!("watch: ADDED {got:?} while waiting for {name}"),
                }
            };
            if seen < answered {
                w.early += 1;
            }
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            w.after_response
                .push(ms(seen.saturating_duration_since(answered)));
            w.after_request
                .push(ms(seen.saturating_duration_since(sent)));
        }
        w.after_response.sort_by(|a, b| a.total_cmp(b));
        w.after_request.sort_by(|a, b| a.total_cmp(b));
        Ok(w)
    }

    /// A watch on `path` (with its `?watch=1...` query) on a connection of its own.
    pub async fn watch(&self, path: &str) -> Result<Watch> {
        let mut conn = self.open().await?;
        conn.ready().await?;
        let req = self.request(Method::GET, path, Bytes::new())?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, conn.send_request(req))
            .await
            .with_context(|| format!("watch {path}: no answer"))??;
        if resp.status() != StatusCode::OK {
            bail!("watch {path}: {}", resp.status());
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<(Value, Instant)>>();
        let reader = tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::anyhow!("watch stream: {e}")));
                        return;
                    }
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let at = Instant::now();
                buf.extend_from_slice(&data);
                // Events are JSON objects one after another; the last may be incomplete.
                let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
                let mut used = 0;
                loop {
                    match stream.next() {
                        Some(Ok(ev)) => {
                            used = stream.byte_offset();
                            if ev["type"] == "ERROR" {
                                let _ = tx.send(Err(anyhow::anyhow!("watch error event: {ev}")));
                            } else {
                                let _ = tx.send(Ok((ev, at)));
                            }
                        }
                        Some(Err(e)) if e.is_eof() => break,
                        Some(Err(e)) => {
                            let _ = tx.send(Err(anyhow::anyhow!("watch stream: {e}")));
                            return;
                        }
                        None => break,
                    }
                }
                buf.drain(..used);
            }
            let _ = tx.send(Err(anyhow::anyhow!("watch stream ended")));
        });
        Ok(Watch {
            rx,
            reader,
            _conn: conn,
        })
    }
}

/// The events of one watch, each with the time its frame arrived. Dropping it stops the
/// reader and closes the watch's connection.
pub struct Watch {
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<(Value, Instant)>>,
    reader: tokio::task::JoinHandle<()>,
    _conn: Conn,
}

impl Watch {
    /// The next event; an error when the stream fails or none comes within
    /// REQUEST_TIMEOUT.
    pub async fn next(&mut self) -> Result<(Value, Instant)> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.rx.recv()).await {
            Err(_) => bail!("no watch event within {REQUEST_TIMEOUT:?}"),
            Ok(None) => bail!("watch stream ended"),
            Ok(Some(r)) => r,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Watch delivery of one round, in ms, sorted.
#[derive(Default)]
struct WatchLatency {
    /// From the create's response to the event (0 when the event came first).
    after_response: Vec<f64>,
    /// From the create's request being sent to the event.
    after_request: Vec<f64>,
    /// Events that arrived before their create's response.
    early: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 100.0);
        assert_eq!(percentile(&v, 99.0), 198.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn status_fields_are_read() {
        let (rss, hwm) = vm_kib(std::process::id()).unwrap();
        assert!(rss > 0.0 && hwm >= rss);
    }
}
