//! Workload 9: scheduling throughput of `podrun server` with its controllers (the
//! scheduler, the Deployment and ReplicaSet controllers and the node lifecycle
//! controller run in the server process), on its embedded store and on etcd.
//!
//! Each round and backend gets a fresh server (and etcd). The harness registers simulated
//! nodes: Node objects with a Ready status and capacity, and a Lease each in
//! kube-node-lease that it renews every RENEW_PERIOD as a kubelet does, so that the node
//! lifecycle controller keeps them Ready; nothing runs the pods. Then, for each size N in
//! order, on the same nodes: a Deployment is created with 0 replicas, and once its
//! ReplicaSet exists it is scaled to N through its scale subresource. A watch on the
//! Deployment's pods, opened before the scale, gives the time from the scale request to
//! the N-th pod created and to the N-th pod bound (`spec.nodeName` set). Also recorded:
//! bound pods per second, the spread of the Deployment's pods over the nodes and the
//! server's memory.
//!
//! kube-scheduler is not run here (no package of it is at hand); its published figures are
//! quoted in the report as a reference, apart from the measured systems.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::report::{Report, Series, Skipped};
use crate::server::{
    self, build_of, vm_kib, Api, Conn, Daemon, EMBEDDED, ETCD, ON_ETCD, SETTLE, SETTLE_AFTER_RUNS,
    START_WAIT,
};
use crate::sys;
use crate::workloads::Ctx;

const WORKLOAD: &str = "scheduling";
/// Namespace of the Deployments (it exists from the server's start).
const NAMESPACE: &str = "default";
/// Namespace of the node Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How often each simulated node renews its Lease: a kubelet's period for the default
/// 40 s lease duration.
const RENEW_PERIOD: Duration = Duration::from_secs(10);
const LEASE_DURATION_SECONDS: u32 = 40;
/// Each simulated node's capacity (and allocatable).
const NODE_CPU: &str = "4";
const NODE_MEMORY: &str = "16Gi";
const NODE_PODS: usize = 110;
/// Each pod's requests, so that the resource filter and scores have something to count.
const POD_CPU: &str = "10m";
const POD_MEMORY: &str = "16Mi";

/// kube-scheduler's published throughput, quoted beside the measured figures; not a
/// measured peer.
const DEFAULT_CLIENT_QPS: f64 = 50.0;
const SCALABILITY_THRESHOLD: f64 = 90.0;
const REFERENCE: &str = "reference (kube-scheduler, not measured here): figures from upstream \
     documentation and test configuration (other machines, cluster sizes and API servers; an \
     anchor, not a comparison): its API client defaults to 50 requests/s with bursts of 100 \
     (KubeSchedulerConfiguration clientConnection) and each binding is one request, so a \
     kube-scheduler left at its defaults binds at most about 50 pods/s once the burst is \
     spent; SIG Scalability's clusterloader2 tests measure scheduling throughput with one \
     Deployment of 1000 pods on clusters of up to 1000 nodes, with the scheduler's client \
     allowed 100 requests/s, and fail below 90 pods/s on clusters of 500 nodes and more \
     (kubernetes/perf-tests pull request 906)";

/// The sizes, rounds and binaries of this workload.
#[derive(Debug, Clone)]
pub struct Params {
    /// Simulated nodes per round.
    pub nodes: usize,
    /// Replica counts, each a Deployment scaled from 0, in order, on the same nodes.
    pub sizes: Vec<usize>,
    pub rounds: usize,
    /// Wait before the idle reading after the last size; none in a smoke run.
    pub settle_after_runs: Option<Duration>,
    pub etcd: PathBuf,
}

impl Params {
    pub fn new(ctx: &Ctx, nodes: usize, sizes: &[usize], rounds: usize) -> Self {
        let (nodes, sizes, rounds) = if ctx.smoke {
            (10, vec![10, 50], 1)
        } else {
            (nodes, sizes.to_vec(), rounds.max(1))
        };
        Params {
            nodes,
            sizes,
            rounds,
            settle_after_runs: (!ctx.smoke).then_some(SETTLE_AFTER_RUNS),
            etcd: server::etcd_bin(),
        }
    }
}

pub fn scheduling(ctx: &Ctx, params: &Params, report: &mut Report) {
    let pods: usize = params.sizes.iter().sum();
    if params.nodes == 0 || pods > params.nodes * NODE_PODS {
        skip(
            report,
            EMBEDDED,
            format!(
                "failed: {pods} pods do not fit on {} nodes of {NODE_PODS} pods each",
                params.nodes
            ),
        );
        return;
    }
    let etcd_ok = params.etcd.is_file();
    if etcd_ok {
        if !report.versions.iter().any(|(k, _)| k == ETCD) {
            report
                .versions
                .push((ETCD.into(), sys::version(&params.etcd)));
        }
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
    report.conditions.push(format!(
        "scheduling: podrun server ({} build) with its controllers on 127.0.0.1, {} simulated \
         nodes (Node objects, Ready, {NODE_CPU} CPUs, {NODE_MEMORY}, {NODE_PODS} pods, Leases \
         renewed every {}s; no agent runs the pods)",
        build_of(&ctx.podrun),
        params.nodes,
        RENEW_PERIOD.as_secs()
    ));
    report.conditions.push(format!("scheduling {REFERENCE}"));
    let backends: Vec<&str> = if etcd_ok {
        vec![EMBEDDED, ON_ETCD]
    } else {
        vec![EMBEDDED]
    };
    let mut m = Samples::default();
    let mut failed: Vec<&str> = Vec::new();
    for round in 0..params.rounds {
        for &backend in &backends {
            if failed.contains(&backend) {
                continue;
            }
            progress!(
                "scheduling: {backend}, {} nodes, pods {:?}, round {}",
                params.nodes,
                params.sizes,
                round + 1
            );
            let dir = ctx.work.join(format!("sched-{backend}-{round}"));
            let r = round_of(ctx, params, &dir, backend, &mut m);
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
    m.into_report(ctx, params, report);
}

fn skip(report: &mut Report, system: &str, reason: String) {
    report.skipped.push(Skipped {
        workload: WORKLOAD.into(),
        system: system.into(),
        reason,
    });
}

/// The workload's series in the order first seen.
#[derive(Default)]
struct Samples {
    series: Vec<Series>,
}

impl Samples {
    fn push(&mut self, metric: &str, system: &str, unit: &str, v: f64) {
        let i = match self
            .series
            .iter()
            .position(|s| s.metric == metric && s.system == system)
        {
            Some(i) => i,
            None => {
                self.series
                    .push(Series::new(WORKLOAD, metric, system, unit));
                self.series.len() - 1
            }
        };
        self.series[i].samples.push(v);
    }

    fn into_report(mut self, ctx: &Ctx, params: &Params, report: &mut Report) {
        let build = build_of(&ctx.podrun);
        for s in &mut self.series {
            s.note = note(s, params, &build);
        }
        report.series.append(&mut self.series);
    }
}

fn created_metric(n: usize) -> String {
    format!("scale 0->{n}: all pods created")
}

fn bound_metric(n: usize) -> String {
    format!("scale 0->{n}: all pods bound")
}

fn rate_metric(n: usize) -> String {
    format!("scale 0->{n}: pods bound per s")
}

fn spread_metric(n: usize) -> String {
    format!("scale 0->{n}: spread (max-min per node)")
}

/// One note per kind of figure, on the embedded store's series (the table prints each).
fn note(s: &Series, params: &Params, build: &str) -> Option<String> {
    if s.system != EMBEDDED {
        return None;
    }
    let first = params.sizes.first().copied().unwrap_or(0);
    let largest = params.sizes.iter().copied().max().unwrap_or(0);
    if s.metric == bound_metric(first) {
        return Some(format!(
            "podrun server ({build} build) with its controllers, a fresh server (and etcd) \
             per round, backends alternating; {} simulated nodes registered first; per size, \
             in the order {:?} on the same nodes: a Deployment with 0 replicas, then (its \
             ReplicaSet present) PATCH of its scale subresource to N; times from that \
             request to the N-th pod seen created / bound (spec.nodeName) on a watch opened \
             before it; includes the Deployment and ReplicaSet controllers' work and every \
             pod's create, binding and events",
            params.nodes, params.sizes
        ));
    }
    if s.metric == rate_metric(largest) {
        // Only a release build is worth holding against the reference.
        let vs = s
            .median()
            .filter(|_| build == "release")
            .map_or(String::new(), |m| {
                format!(
                    "; against the scheduling reference in the conditions (kube-scheduler, not \
                 measured here), this median is {:.1}x the {DEFAULT_CLIENT_QPS:.0} pods/s of a \
                 default kube-scheduler and {:.1}x the {SCALABILITY_THRESHOLD:.0} pods/s \
                 threshold of the scalability tests",
                    m / DEFAULT_CLIENT_QPS,
                    m / SCALABILITY_THRESHOLD
                )
            });
        return Some(format!(
            "N / (scale request to N-th pod bound); podrun/peer > 1 means the embedded store \
             is faster{vs}"
        ));
    }
    if s.metric == spread_metric(first) {
        return Some(format!(
            "the Deployment's pods per node, most minus fewest, over all {} nodes (those with \
             none count as 0)",
            params.nodes
        ));
    }
    if s.metric.starts_with("VmRSS after ") {
        return Some(format!(
            "VmRSS / VmHWM from /proc/<pid>/status of the podrun server process ({build} \
             build) when the watch has shown the last pod bound; `idle` = {SETTLE:?} after \
             the nodes are registered / {SETTLE_AFTER_RUNS:?} after the last size"
        ));
    }
    None
}

fn round_of(ctx: &Ctx, params: &Params, dir: &Path, backend: &str, m: &mut Samples) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let etcd = if backend == ON_ETCD {
        Some(Daemon::etcd(&params.etcd, dir)?)
    } else {
        None
    };
    let endpoint = etcd.as_ref().and_then(|e| e.endpoint.clone());
    let mut server = Daemon::server(ctx, dir, endpoint.as_deref(), true)?;
    // One runtime per round: dropping it ends the lease renewals and closes the round's
    // connections, so the server stops without waiting for them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(async {
        let api = Api::connect(&server.kubeconfig).await?;
        let mut conn = api.open().await?;
        api.wait_ready(&mut conn, &server).await?;
        let nodes = register_nodes(&api, &mut conn, params.nodes).await?;
        let renewals = tokio::spawn(renew_leases(api.clone_light(), conn.clone(), nodes.clone()));
        wait_schedulable(&api, &mut conn, &nodes).await?;
        tokio::time::sleep(SETTLE).await;
        let with_nodes = format!("idle VmRSS with {} nodes", nodes.len());
        m.push(&with_nodes, backend, "KiB", vm_kib(server.pid)?.0);

        for &n in &params.sizes {
            let s = scale_to_bound(&api, &mut conn, n, &nodes).await?;
            let (rss, hwm) = vm_kib(server.pid)?;
            m.push(&created_metric(n), backend, "ms", s.created_ms);
            m.push(&bound_metric(n), backend, "ms", s.bound_ms);
            m.push(
                &rate_metric(n),
                backend,
                "pods/s",
                n as f64 / (s.bound_ms / 1000.0),
            );
            m.push(&spread_metric(n), backend, "pods", s.spread as f64);
            m.push(&format!("VmRSS after {n} bound"), backend, "KiB", rss);
            m.push(&format!("VmHWM after {n} bound"), backend, "KiB", hwm);
            if let Some(e) = &etcd {
                m.push(
                    &format!("VmRSS after {n} bound"),
                    ETCD,
                    "KiB",
                    vm_kib(e.pid)?.0,
                );
            }
        }

        if let Some(settle) = params.settle_after_runs {
            tokio::time::sleep(settle).await;
            m.push(
                "idle VmRSS after the runs",
                backend,
                "KiB",
                vm_kib(server.pid)?.0,
            );
        }
        // The nodes must have stayed alive throughout, or the figures are of something else.
        if renewals.is_finished() {
            renewals.await.context("lease renewals")??;
        } else {
            renewals.abort();
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

fn node_name(i: usize) -> String {
    format!("node-{i:03}")
}

/// RFC 3339 in UTC with `digits` fractional digits (metav1 Time: 0, MicroTime: 6).
fn now(digits: usize) -> String {
    format!("{:.digits$}", jiff::Timestamp::now())
}

/// A Node as a kubelet registers it: Ready, with capacity, addresses and node info.
fn node(name: &str, i: usize) -> Bytes {
    let resources = json!({"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": NODE_PODS.to_string()});
    let t = now(0);
    Bytes::from(
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64"
            }},
            "spec": {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "addresses": [
                    {"type": "InternalIP", "address": format!("10.250.{}.{}", i / 250, i % 250 + 1)},
                    {"type": "Hostname", "address": name}
                ],
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": t, "lastTransitionTime": t
                }],
                "nodeInfo": {
                    "kubeletVersion": "v1.33.0", "containerRuntimeVersion": "podrun://bench",
                    "kernelVersion": "", "osImage": "", "operatingSystem": "linux",
                    "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": "",
                    "kubeProxyVersion": ""
                }
            }
        })
        .to_string(),
    )
}

fn lease(name: &str) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": now(6)
            }
        })
        .to_string(),
    )
}

/// A Deployment of `replicas` idle pods with small requests; nothing will run them.
fn deployment(name: &str, replicas: usize) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{
                        "name": "c",
                        "image": "busybox:1.36",
                        "command": ["sleep", "3600"],
                        "resources": {"requests": {"cpu": POD_CPU, "memory": POD_MEMORY}}
                    }]}
                }
            }
        })
        .to_string(),
    )
}

fn lease_path(name: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{name}")
}

/// Registers `n` nodes and their Leases; their names.
async fn register_nodes(api: &Api, conn: &mut Conn, n: usize) -> Result<Vec<String>> {
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let name = node_name(i);
        api.call(
            conn,
            Method::POST,
            "/api/v1/nodes",
            node(&name, i),
            StatusCode::CREATED,
        )
        .await?;
        api.call(
            conn,
            Method::POST,
            &format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"),
            lease(&name),
            StatusCode::CREATED,
        )
        .await?;
        names.push(name);
    }
    Ok(names)
}

/// Renews every node's Lease each RENEW_PERIOD until aborted; returns at the first failure.
async fn renew_leases(api: Api, mut conn: Conn, names: Vec<String>) -> Result<()> {
    let mut tick = tokio::time::interval(RENEW_PERIOD);
    // The first tick is immediate; the Leases were just created.
    tick.tick().await;
    loop {
        tick.tick().await;
        for name in &names {
            let renew = json!({"spec": {"renewTime": now(6)}});
            api.call(
                &mut conn,
                Method::PATCH,
                &lease_path(name),
                Bytes::from(renew.to_string()),
                StatusCode::OK,
            )
            .await
            .with_context(|| format!("renew the lease of {name}"))?;
        }
    }
}

/// Waits until the server lists every node, Ready and without taints.
async fn wait_schedulable(api: &Api, conn: &mut Conn, names: &[String]) -> Result<()> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        let list = api
            .call(
                conn,
                Method::GET,
                "/api/v1/nodes",
                Bytes::new(),
                StatusCode::OK,
            )
            .await?;
        let list: Value = serde_json::from_slice(&list).context("node list")?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let schedulable = items.iter().filter(|n| schedulable(n)).count();
        if schedulable == names.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{schedulable} of {} nodes Ready and untainted within {START_WAIT:?}",
                names.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn schedulable(node: &Value) -> bool {
    let ready = node["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    let tainted = node["spec"]["taints"]
        .as_array()
        .is_some_and(|t| !t.is_empty());
    ready && !tainted && node["spec"]["unschedulable"] != true
}

/// One scale's figures.
struct Scaled {
    created_ms: f64,
    bound_ms: f64,
    spread: usize,
}

/// Creates Deployment `sched-<n>` with 0 replicas, waits for its ReplicaSet, then scales it
/// to `n` and follows its pods on a watch until all are bound.
async fn scale_to_bound(api: &Api, conn: &mut Conn, n: usize, nodes: &[String]) -> Result<Scaled> {
    let name = format!("sched-{n}");
    let apps = format!("/apis/apps/v1/namespaces/{NAMESPACE}");
    let selector = format!("labelSelector=app%3D{name}");
    api.call(
        conn,
        Method::POST,
        &format!("{apps}/deployments"),
        deployment(&name, 0),
        StatusCode::CREATED,
    )
    .await?;
    let deadline = Instant::now() + START_WAIT;
    loop {
        let list = api
            .call(
                conn,
                Method::GET,
                &format!("{apps}/replicasets?{selector}"),
                Bytes::new(),
                StatusCode::OK,
            )
            .await?;
        let list: Value = serde_json::from_slice(&list).context("replicaset list")?;
        if list["items"].as_array().is_some_and(|i| !i.is_empty()) {
            break;
        }
        if Instant::now() >= deadline {
            bail!("deployment {name}: no ReplicaSet within {START_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let list = api
        .call(
            conn,
            Method::GET,
            &format!("{pods}?{selector}"),
            Bytes::new(),
            StatusCode::OK,
        )
        .await?;
    let list: Value = serde_json::from_slice(&list).context("pod list")?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("pod list: no metadata.resourceVersion")?
        .to_string();
    let mut watch = api
        .watch(&format!("{pods}?watch=1&resourceVersion={rv}&{selector}"))
        .await?;

    let start = Instant::now();
    api.call(
        conn,
        Method::PATCH,
        &format!("{apps}/deployments/{name}/scale"),
        Bytes::from(json!({"spec": {"replicas": n}}).to_string()),
        StatusCode::OK,
    )
    .await?;
    let mut p = Progress::new(n);
    while !p.done() {
        let (ev, at) = watch.next().await.with_context(|| {
            format!(
                "deployment {name}: {} of {n} pods created, {} bound",
                p.created.len(),
                p.bound.len()
            )
        })?;
        p.observe(&ev, at)
            .with_context(|| format!("deployment {name}"))?;
    }
    let ms = |t: Option<Instant>| t.map_or(f64::NAN, |t| (t - start).as_secs_f64() * 1000.0);
    Ok(Scaled {
        created_ms: ms(p.all_created),
        bound_ms: ms(p.all_bound),
        spread: spread(&p.bound, nodes),
    })
}

/// What the watch has shown of one Deployment's pods since its scale.
struct Progress {
    want: usize,
    created: HashSet<String>,
    /// Pod → node.
    bound: HashMap<String, String>,
    all_created: Option<Instant>,
    all_bound: Option<Instant>,
}

impl Progress {
    fn new(want: usize) -> Self {
        Progress {
            want,
            created: HashSet::new(),
            bound: HashMap::new(),
            all_created: None,
            all_bound: None,
        }
    }

    fn done(&self) -> bool {
        self.all_created.is_some() && self.all_bound.is_some()
    }

    /// One watch event, arrived at `at`. A pod deleted meanwhile fails the scale: nothing
    /// here deletes pods, so it would mean the nodes were not healthy.
    fn observe(&mut self, ev: &Value, at: Instant) -> Result<()> {
        let obj = &ev["object"];
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        match ev["type"].as_str() {
            Some("ADDED" | "MODIFIED") => {}
            Some("DELETED") => bail!("pod {name} was deleted"),
            _ => return Ok(()),
        }
        self.created.insert(name.to_string());
        if let Some(node) = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            self.bound.insert(name.to_string(), node.to_string());
        }
        if self.all_created.is_none() && self.created.len() >= self.want {
            self.all_created = Some(at);
        }
        if self.all_bound.is_none() && self.bound.len() >= self.want {
            self.all_bound = Some(at);
        }
        Ok(())
    }
}

/// Most minus fewest pods on a node, over every node (one with none counts as 0).
fn spread(bound: &HashMap<String, String>, nodes: &[String]) -> usize {
    let mut per_node: HashMap<&str, usize> = nodes.iter().map(|n| (n.as_str(), 0)).collect();
    for node in bound.values() {
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    let max = per_node.values().copied().max().unwrap_or(0);
    let min = per_node.values().copied().min().unwrap_or(0);
    max - min
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(type_: &str, name: &str, node: Option<&str>) -> Value {
        let mut spec = json!({"containers": []});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        json!({"type": type_, "object": {"metadata": {"name": name}, "spec": spec}})
    }

    #[test]
    fn progress_times_the_last_created_and_the_last_bound() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = Progress::new(2);
        p.observe(&ev("ADDED", "a", None), at(1)).unwrap();
        p.observe(&ev("MODIFIED", "a", Some("node-000")), at(2))
            .unwrap();
        assert!(!p.done());
        p.observe(&ev("ADDED", "b", None), at(3)).unwrap();
        assert_eq!(p.all_created, Some(at(3)));
        // A pod bound twice is one pod.
        p.observe(&ev("MODIFIED", "a", Some("node-000")), at(4))
            .unwrap();
        assert!(p.all_bound.is_none());
        p.observe(&ev("MODIFIED", "b", Some("node-001")), at(5))
            .unwrap();
        assert!(p.done());
        assert_eq!(p.all_bound, Some(at(5)));
        assert!(Progress::new(1)
            .observe(&ev("DELETED", "a", None), at(6))
            .is_err());
    }

    #[test]
    fn spread_counts_empty_nodes() {
        let nodes: Vec<String> = (0..3).map(node_name).collect();
        let bound: HashMap<String, String> = [("a", 0), ("b", 0), ("c", 1)]
            .into_iter()
            .map(|(p, n)| (p.to_string(), node_name(n)))
            .collect();
        assert_eq!(spread(&bound, &nodes), 2);
        assert_eq!(spread(&HashMap::new(), &nodes), 0);
    }

    #[test]
    fn objects_are_what_the_api_expects() {
        let n: Value = serde_json::from_slice(&node("node-007", 7)).unwrap();
        assert_eq!(n["status"]["allocatable"]["pods"], "110");
        assert_eq!(n["status"]["addresses"][0]["address"], "10.250.0.8");
        assert!(schedulable(&n));
        let d: Value = serde_json::from_slice(&deployment("sched-5", 0)).unwrap();
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            d["spec"]["template"]["metadata"]["labels"]
        );
        let l: Value = serde_json::from_slice(&lease("node-007")).unwrap();
        let renew = l["spec"]["renewTime"].as_str().unwrap();
        // MicroTime: six fractional digits, UTC.
        assert_eq!(renew.len(), "2026-01-02T03:04:05.123456Z".len(), "{renew}");
        assert!(renew.ends_with('Z'));
    }
}
