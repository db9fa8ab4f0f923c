//! Workload 10: pods through the whole path of a cluster, `podrun server` (with its
//! controllers: the scheduler binds the pods) and one `podrun agent` joined to it with a
//! bootstrap token, which is the node's kubelet and its CRI runtime in one process.
//!
//! Each round gets a fresh server and agent in a directory of its own. The agent runs in
//! the harness's network namespace with `--network none` (loopback-only pods, as the CRI
//! workload), its own root, state, log root, cgroup root, CRI socket and kubelet port on
//! 127.0.0.1; busybox is loaded into its store beforehand (`podrun image load`) and the
//! pods say imagePullPolicy IfNotPresent, so no registry is involved. Measured:
//! - per pod, the time from its create request to the watch event that shows it
//!   Running with its container started (status.phase and
//!   containerStatuses[0].state.running): one pod at a time, SINGLE_RUNS times, and
//!   BATCH pods created at once (p50, p99 and the time until the last is Running);
//! - the agent's VmRSS and VmHWM when its node is Ready with no pods and with BATCH
//!   pods running, and the RSS of the pods' monitors, which the node pays per pod.
//!
//! Pods are force-deleted (grace 0: `sleep` as PID 1 ignores SIGTERM) and each run waits
//! until the API and the agent's CRI socket both list none. No peer kubelet is measured:
//! none is installed here.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::grpc::{string_field, Client, Msg};
use crate::report::{Goal, Report, Series, Skipped};
use crate::server::{
    build_of, free_port, percentile, vm_kib, Api, Conn, Daemon, SETTLE, SETTLE_AFTER_RUNS,
    START_WAIT,
};
use crate::sys;
use crate::workloads::Ctx;

const WORKLOAD: &str = "kubelet";
const SYSTEM: &str = "podrun";
const NAMESPACE: &str = "default";
const NODE: &str = "bench-node";
const LABEL: &str = "kbench";
/// The top-level cgroup of the agent's pods.
pub const CGROUP_ROOT: &str = "podrun-bench-k";
const RUNTIME: &str = "/runtime.v1.RuntimeService/";
/// The agent's idle memory goal, in bytes.
const IDLE_GOAL: f64 = 25e6;

/// The sizes and rounds of this workload.
#[derive(Debug, Clone)]
pub struct Params {
    pub rounds: usize,
    /// Single pods created one after the other per round.
    pub single_runs: usize,
    /// Pods created at once.
    pub batch: usize,
    /// Wait before the idle reading; shorter in a smoke run.
    pub settle: Duration,
}

impl Params {
    pub fn new(ctx: &Ctx, rounds: usize) -> Self {
        if ctx.smoke {
            Params {
                rounds: 1,
                single_runs: 2,
                batch: 5,
                settle: SETTLE,
            }
        } else {
            Params {
                rounds: rounds.max(1),
                single_runs: 10,
                batch: 100,
                settle: SETTLE_AFTER_RUNS,
            }
        }
    }
}

pub fn kubelet(ctx: &Ctx, params: &Params, report: &mut Report) {
    let build = build_of(&ctx.podrun);
    report.conditions.push(format!(
        "kubelet: podrun server ({build} build) with its controllers on 127.0.0.1 and one \
         podrun agent ({build} build) joined with a bootstrap token, in the harness's network \
         namespace, pods with --network none (loopback only), busybox loaded into the agent's \
         store, imagePullPolicy IfNotPresent, a toleration of the node.kubernetes.io/disk-pressure \
         taint (a nearly full build disk sets it; the agent evicts nothing); no peer kubelet is installed here, so there is \
         no side-by-side ratio (the CRI workload compares the runtime half with containerd)"
    ));
    let mut m = Samples::default();
    for round in 0..params.rounds {
        progress!(
            "kubelet: {} single pods, {} at once, round {}",
            params.single_runs,
            params.batch,
            round + 1
        );
        let dir = ctx.work.join(format!("k{round}"));
        let r = round_of(ctx, params, &dir, &mut m);
        let leftovers = leftovers(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let r = r.and_then(|()| match leftovers {
            Some(what) => bail!("left behind: {what}"),
            None => Ok(()),
        });
        if let Err(e) = r {
            report.skipped.push(Skipped {
                workload: WORKLOAD.into(),
                system: SYSTEM.into(),
                reason: format!("failed: {e:#}"),
            });
            break;
        }
    }
    m.into_report(params, &build, report);
}

/// Processes and mounts of a round still there after its daemons stopped; they are
/// killed and unmounted here, and named.
fn leftovers(dir: &Path) -> Option<String> {
    let pids = sys::processes_naming(dir);
    for pid in &pids {
        sys::kill(*pid);
    }
    let mounts = sys::mounts_under(dir);
    for m in &mounts {
        sys::quiet(Command::new("umount").arg("-l").arg(m));
    }
    let mut tasks = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        tasks_under(&h.path().join(CGROUP_ROOT), &mut tasks);
    }
    tasks.sort_unstable();
    tasks.dedup();
    for pid in &tasks {
        sys::kill(*pid);
    }
    if pids.is_empty() && mounts.is_empty() && tasks.is_empty() {
        None
    } else {
        Some(format!(
            "processes {pids:?}, mounts {mounts:?}, processes in {CGROUP_ROOT} cgroups {tasks:?}"
        ))
    }
}

/// The processes in a cgroup and the cgroups below it.
fn tasks_under(dir: &Path, out: &mut Vec<i32>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let own = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    out.extend(own.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            tasks_under(&e.path(), out);
        }
    }
}

/// The workload's series in the order first seen.
#[derive(Default)]
struct Samples {
    series: Vec<Series>,
}

impl Samples {
    fn push(&mut self, metric: &str, unit: &str, v: f64) {
        let i = match self.series.iter().position(|s| s.metric == metric) {
            Some(i) => i,
            None => {
                self.series
                    .push(Series::new(WORKLOAD, metric, SYSTEM, unit));
                self.series.len() - 1
            }
        };
        self.series[i].samples.push(v);
    }

    fn into_report(mut self, params: &Params, build: &str, report: &mut Report) {
        for s in &mut self.series {
            s.note = note(&s.metric, params, build);
        }
        report.series.append(&mut self.series);
    }
}

fn single_metric(p: &str, params: &Params) -> String {
    format!(
        "1 pod create->Running {p} ({} in a row)",
        params.single_runs
    )
}

fn batch_metric(p: &str, params: &Params) -> String {
    format!("{} pods at once: create->Running {p}", params.batch)
}

fn all_metric(params: &Params) -> String {
    format!("{} pods at once: all Running", params.batch)
}

const IDLE_RSS: &str = "agent idle VmRSS (node Ready, no pods)";

fn note(metric: &str, params: &Params, build: &str) -> Option<String> {
    if metric == single_metric("p50", params) {
        return Some(format!(
            "per pod: from its create request (POST over HTTP/2 with the admin certificate) \
             to the event, on a watch opened before, showing status.phase Running and \
             containerStatuses[0].state.running; it includes the scheduler's binding, the \
             agent's watch, sandbox, container create and start, and its status write; \
             busybox `sleep 3600`, already in the agent's store; p50 and p99 (nearest rank) \
             per round over {} pods created one after the other, each force-deleted and gone \
             from the API and the CRI before the next; no peer kubelet measured",
            params.single_runs
        ));
    }
    if metric == batch_metric("p50", params) {
        return Some(format!(
            "{} pods POSTed at once (concurrent requests on one HTTP/2 connection); per pod \
             as above; `all Running` = from the first create request to the last pod's \
             Running event",
            params.batch
        ));
    }
    if metric == IDLE_RSS {
        return Some(format!(
            "VmRSS / VmHWM from /proc/<pid>/status of the podrun agent ({build} build, CRI \
             server and kubelet in one process) {:?} after its node was Ready, and {:?} after \
             the {} pods were all Running; goal <= 25 MB idle (kubelet + containerd together \
             use well over 100 MB)",
            params.settle, SETTLE, params.batch
        ));
    }
    if metric.starts_with("monitors' RSS, total") {
        return Some(format!(
            "Rss (and Pss) from /proc/<pid>/smaps_rollup of every pod monitor of the agent ({} with {} \
             pods running): the per-pod processes besides the containers, where containerd \
             keeps a shim and a pause process; Rss counts the pages the monitors share once \
             per monitor, Pss splits them",
            params.batch, params.batch
        ));
    }
    None
}

/// The goal line: the agent's idle RSS with its node Ready and no pods.
pub fn goal(report: &Report) -> Goal {
    let goal = "kubelet agent idle RSS <= 25 MB (node Ready, no pods)";
    match report.find(WORKLOAD, IDLE_RSS, SYSTEM) {
        Some(s) => {
            let mb = |kib: f64| kib * 1024.0 / 1e6;
            let med = s.median().unwrap_or(f64::MAX);
            Goal {
                goal: goal.into(),
                measured: format!(
                    "{:.1} MB median ({:.1}-{:.1} over {} rounds)",
                    mb(med),
                    mb(s.min().unwrap_or(med)),
                    mb(s.max().unwrap_or(med)),
                    s.samples.len()
                ),
                met: Some(med * 1024.0 <= IDLE_GOAL),
            }
        }
        None => Goal {
            goal: goal.into(),
            measured: "not measured".into(),
            met: None,
        },
    }
}

/// podrun with the round's own root, state, logs and cgroup root, loopback-only pods.
fn podrun(ctx: &Ctx, dir: &Path) -> Command {
    let mut c = Command::new(&ctx.podrun);
    // Short names: the monitor socket path must fit in sockaddr_un.
    c.arg("--root")
        .arg(dir.join("a"))
        .arg("--state")
        .arg(dir.join("s"))
        .arg("--log-root")
        .arg(dir.join("l"))
        .args(["--cgroup-driver", "cgroupfs", "--cgroup-root", CGROUP_ROOT])
        .args(["--network", "none", "--cni-conf-dir"])
        .arg(dir.join("cni"))
        .arg("--hosts-dir")
        .arg(dir.join("hosts"));
    c
}

fn round_of(ctx: &Ctx, params: &Params, dir: &Path, m: &mut Samples) -> Result<()> {
    for d in ["cni", "hosts", "manifests"] {
        std::fs::create_dir_all(dir.join(d))
            .with_context(|| format!("create {}", dir.join(d).display()))?;
    }
    let busybox = ctx.repo.join("images/out/busybox.tar");
    sys::timed(podrun(ctx, dir).args(["image", "load"]).arg(&busybox))
        .context("podrun image load busybox")?;
    let mut server = Daemon::server(ctx, dir, None, true)?;
    let token = sys::output(
        Command::new(&ctx.podrun)
            .arg("--root")
            .arg(dir.join("root"))
            .args(["server", "token", "create"]),
    )
    .context("podrun server token create")?
    .trim()
    .to_string();
    if token.is_empty() {
        bail!("podrun server token create printed no token");
    }
    let socket = dir.join("cri.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut agent: Option<Daemon> = None;
    let result = rt.block_on(async {
        let api = Api::connect(&server.kubeconfig).await?;
        let mut conn = api.open().await?;
        api.wait_ready(&mut conn, &server).await?;
        let mut cmd = podrun(ctx, dir);
        cmd.arg("agent")
            .arg("--socket")
            .arg(&socket)
            .arg("--server")
            .arg(api.base())
            .arg("--token")
            .arg(&token)
            .arg("--certificate-authority")
            .arg(dir.join("root/server/pki/ca.crt"))
            .args(["--node-name", NODE, "--address", "127.0.0.1"])
            .arg("--kubelet-port")
            .arg(free_port()?.to_string())
            .arg("--pod-manifest-path")
            .arg(dir.join("manifests"));
        let a = agent.insert(Daemon::spawn(
            "podrun agent",
            &mut cmd,
            dir.join("agent.log"),
        )?);
        wait_node_ready(&api, &mut conn, a).await?;
        tokio::time::sleep(params.settle).await;
        let (rss, hwm) = vm_kib(a.pid)?;
        m.push(IDLE_RSS, "KiB", rss);
        m.push("agent idle VmHWM (node Ready, no pods)", "KiB", hwm);

        let mut single = Vec::with_capacity(params.single_runs);
        for i in 0..params.single_runs {
            let names = vec![format!("single-{i}")];
            let run = start_pods(&api, &mut conn, &names).await?;
            single.extend(run.latencies);
            delete_pods(&api, &mut conn, &names, &socket).await?;
        }
        single.sort_by(|x, y| x.total_cmp(y));
        m.push(
            &single_metric("p50", params),
            "ms",
            percentile(&single, 50.0),
        );
        m.push(
            &single_metric("p99", params),
            "ms",
            percentile(&single, 99.0),
        );

        let names: Vec<String> = (0..params.batch).map(|i| format!("batch-{i:03}")).collect();
        let mut run = start_pods(&api, &mut conn, &names).await?;
        run.latencies.sort_by(|x, y| x.total_cmp(y));
        m.push(
            &batch_metric("p50", params),
            "ms",
            percentile(&run.latencies, 50.0),
        );
        m.push(
            &batch_metric("p99", params),
            "ms",
            percentile(&run.latencies, 99.0),
        );
        m.push(&all_metric(params), "ms", run.all_ms);
        tokio::time::sleep(SETTLE).await;
        let (rss, hwm) = vm_kib(a.pid)?;
        let n = params.batch;
        m.push(&format!("agent VmRSS with {n} pods running"), "KiB", rss);
        m.push(&format!("agent VmHWM with {n} pods running"), "KiB", hwm);
        let monitors = monitors(dir, a.pid)?;
        if monitors.len() != n {
            bail!(
                "found {} pod monitors with {n} pods running",
                monitors.len()
            );
        }
        let total: u64 = monitors.iter().map(|m| m.rss_kib).sum();
        m.push(
            &format!("monitors' RSS, total of {n} pods"),
            "KiB",
            total as f64,
        );
        m.push(
            "monitors' RSS per pod (mean)",
            "KiB",
            total as f64 / n as f64,
        );
        let pss: u64 = monitors.iter().map(|m| m.pss_kib).sum();
        m.push("monitors' PSS per pod (mean)", "KiB", pss as f64 / n as f64);
        delete_pods(&api, &mut conn, &names, &socket).await?;
        anyhow::Ok(())
    });
    drop(rt);
    let (result, agent_stopped) = match agent.as_mut() {
        Some(a) => (result.map_err(|e| a.with_log(e)), a.stop()),
        None => (result, Ok(())),
    };
    let server_stopped = server.stop();
    result.map_err(|e| server.with_log(e))?;
    agent_stopped?;
    server_stopped
}

/// Waits until the API shows the agent's node Ready.
async fn wait_node_ready(api: &Api, conn: &mut Conn, agent: &mut Daemon) -> Result<()> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        agent.check_running().map_err(|e| agent.with_log(e))?;
        let r = api
            .call(
                conn,
                Method::GET,
                &format!("/api/v1/nodes/{NODE}"),
                Bytes::new(),
                StatusCode::OK,
            )
            .await;
        if let Ok(body) = r {
            let node: Value = serde_json::from_slice(&body).context("node")?;
            let ready = node["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if ready {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(agent.with_log(anyhow::anyhow!(
                "node {NODE} not Ready within {START_WAIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod(name: &str) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": LABEL}},
            "spec": {"containers": [{
                "name": "c",
                "image": "busybox",
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"]
            }],
            // The node reports DiskPressure on a build machine whose disk is nearly full
            // (kubelet's nodefs.available<10%); the agent evicts nothing, so the taint
            // only keeps the scheduler away, and the figures are of starting pods.
            "tolerations": [{
                "key": "node.kubernetes.io/disk-pressure",
                "operator": "Exists",
                "effect": "NoSchedule"
            }]}
        })
        .to_string(),
    )
}

/// Whether a pod is Running with its first container started.
fn running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

fn pods_path() -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/pods")
}

/// A watch on the workload's pods from the current list's resourceVersion.
async fn watch_pods(api: &Api, conn: &mut Conn) -> Result<crate::server::Watch> {
    let selector = format!("labelSelector=app%3D{LABEL}");
    let list = api
        .call(
            conn,
            Method::GET,
            &format!("{}?{selector}", pods_path()),
            Bytes::new(),
            StatusCode::OK,
        )
        .await?;
    let list: Value = serde_json::from_slice(&list).context("pod list")?;
    let items = list["items"].as_array().map_or(0, Vec::len);
    if items != 0 {
        bail!("{items} pods left from a previous run");
    }
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("pod list: no metadata.resourceVersion")?;
    api.watch(&format!(
        "{}?watch=1&resourceVersion={rv}&{selector}",
        pods_path()
    ))
    .await
}

/// One start of pods: each one's create->Running, and first create to last Running.
struct Started {
    latencies: Vec<f64>,
    all_ms: f64,
}

/// Creates the pods at once and waits until every one is Running.
async fn start_pods(api: &Api, conn: &mut Conn, names: &[String]) -> Result<Started> {
    let mut watch = watch_pods(api, conn).await?;
    let mut creates = tokio::task::JoinSet::new();
    let first = Instant::now();
    for name in names {
        let api = api.clone_light();
        let mut conn = conn.clone();
        let name = name.clone();
        creates.spawn(async move {
            let sent = Instant::now();
            api.call(
                &mut conn,
                Method::POST,
                &pods_path(),
                pod(&name),
                StatusCode::CREATED,
            )
            .await?;
            anyhow::Ok((name, sent))
        });
    }
    let mut sent: HashMap<String, Instant> = HashMap::new();
    while let Some(r) = creates.join_next().await {
        let (name, at) = r??;
        sent.insert(name, at);
    }
    let mut seen: HashMap<String, Instant> = HashMap::new();
    while seen.len() < names.len() {
        let (ev, at) = watch
            .next()
            .await
            .with_context(|| format!("{} of {} pods Running", seen.len(), names.len()))?;
        let obj = &ev["object"];
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        match ev["type"].as_str() {
            Some("ADDED" | "MODIFIED") if running(obj) => {
                seen.entry(name.to_string()).or_insert(at);
            }
            Some("DELETED") => bail!("pod {name} was deleted while starting"),
            _ => {}
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut latencies = Vec::with_capacity(names.len());
    let mut last = first;
    for (name, at) in &seen {
        let s = sent
            .get(name)
            .with_context(|| format!("pod {name}: no create"))?;
        latencies.push(ms(at.saturating_duration_since(*s)));
        last = last.max(*at);
    }
    Ok(Started {
        latencies,
        all_ms: ms(last - first),
    })
}

/// Force-deletes the pods, then waits until the API lists none and the agent's CRI
/// socket lists neither sandboxes nor containers.
async fn delete_pods(api: &Api, conn: &mut Conn, names: &[String], socket: &Path) -> Result<()> {
    let mut deletes = tokio::task::JoinSet::new();
    for name in names {
        let api = api.clone_light();
        let mut conn = conn.clone();
        let path = format!("{}/{name}?gracePeriodSeconds=0", pods_path());
        deletes.spawn(async move {
            api.call(
                &mut conn,
                Method::DELETE,
                &path,
                Bytes::new(),
                StatusCode::OK,
            )
            .await
        });
    }
    while let Some(r) = deletes.join_next().await {
        r??;
    }
    let deadline = Instant::now() + START_WAIT;
    loop {
        let list = api
            .call(
                conn,
                Method::GET,
                &format!("{}?labelSelector=app%3D{LABEL}", pods_path()),
                Bytes::new(),
                StatusCode::OK,
            )
            .await?;
        let list: Value = serde_json::from_slice(&list).context("pod list")?;
        let in_api = list["items"].as_array().map_or(0, Vec::len);
        let in_cri = cri_objects(socket)?;
        if in_api == 0 && in_cri.is_none() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{in_api} pods in the API and {} on the agent's CRI socket {START_WAIT:?} \
                 after their deletion",
                in_cri.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the agent's CRI socket still lists: "sandboxes" or "containers", or None.
fn cri_objects(socket: &Path) -> Result<Option<&'static str>> {
    let mut client = Client::connect(socket, Duration::from_secs(30))?;
    for (method, what) in [
        ("ListPodSandbox", "sandboxes"),
        ("ListContainers", "containers"),
    ] {
        let resp = client.call(&format!("{RUNTIME}{method}"), &Msg::new().encode())?;
        // Field 1 is the repeated list; absent when empty.
        if string_field(&resp, 1).is_some() {
            return Ok(Some(what));
        }
    }
    Ok(None)
}

/// The agent's pod monitors: processes naming the round's directory, " monitor " in
/// their command line, other than the agent.
fn monitors(dir: &Path, agent: u32) -> Result<Vec<sys::Memory>> {
    let mut out = Vec::new();
    for pid in sys::processes_naming(&dir.join("s")) {
        if pid as u32 == agent {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        if cmdline.contains(" monitor ") {
            out.push(sys::memory(pid)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_needs_the_phase_and_a_started_container() {
        let mut p: Value = serde_json::from_slice(&pod("a")).unwrap();
        assert_eq!(
            p["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert!(!running(&p));
        p["status"] = json!({"phase": "Running", "containerStatuses": [
            {"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}
        ]});
        assert!(!running(&p));
        p["status"]["containerStatuses"][0]["state"] = json!({"running": {"startedAt": "x"}});
        assert!(running(&p));
        p["status"]["phase"] = json!("Pending");
        assert!(!running(&p));
    }
}
