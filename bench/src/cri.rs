//! Workload 7: a pod through the CRI, the way a kubelet drives it. One gRPC client on the
//! unix socket runs RunPodSandbox, CreateContainer, StartContainer (busybox `sleep
//! 3600`), StopContainer, RemoveContainer, StopPodSandbox and RemovePodSandbox, each
//! timed, against `podrun agent` and against containerd's CRI plugin, alternating
//! within each round. Then N idle pods run on each, to weigh what each keeps per pod
//! (podrun: the pod's monitor; containerd: the shim and the pause process) and the
//! daemon itself once the pods are gone.
//!
//! Both pull the same busybox from the same docker-registry on 127.0.0.1. containerd
//! needs a sandbox (pause) image: busybox's layers with `sleep 2147483647` as the
//! entrypoint, pushed to that registry. Its pods get loopback only, like podrun's
//! `--network none`: the CNI configuration runs the reference loopback plugin and a
//! no-op plugin that creates nothing and only reports an address on eth0 (which
//! containerd 1.6 insists on finding), so the pod's network namespace holds just `lo`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::grpc::{string_field, Client, Msg};
use crate::pull::{spawn, wait_for, Daemons, Registry};
use crate::report::{Report, Series, Skipped};
use crate::sys::{self, Memory};
use crate::workloads::{Ctx, CGROUP_ROOT};

const RUNTIME: &str = "/runtime.v1.RuntimeService/";
const IMAGES: &str = "/runtime.v1.ImageService/";
const PAUSE_SECONDS: &str = "2147483647";
const STEPS: [&str; 7] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

/// One CRI server under test.
struct Server {
    name: &'static str,
    client: Client,
    pid: i32,
    log: PathBuf,
    /// busybox as the server's PullImage answered (the image id).
    image: String,
}

impl Server {
    fn call(&mut self, path: &str, req: Msg) -> Result<Vec<u8>> {
        self.client.call(path, &req.encode()).map_err(|e| {
            let tail = log_tail(&self.log);
            anyhow::anyhow!("{}: {e:#}{tail}", self.name)
        })
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n  {}: {tail}", log.display())
    }
}

pub fn cri(ctx: &Ctx, report: &mut Report) {
    let mut daemons = Daemons::default();
    if let Err(e) = run(ctx, report, &mut daemons) {
        report.skipped.push(Skipped {
            workload: "cri".into(),
            system: "podrun vs containerd".into(),
            reason: format!("failed: {e:#}"),
        });
    }
    // containerd first, with the pods it may still hold, then the rest.
    drop(daemons);
    let ctd = ctx.work.join("ctdcri");
    for pid in sys::processes_naming(&ctd) {
        sys::kill(pid);
    }
    for m in sys::mounts_under(&ctd)
        .into_iter()
        .chain(sys::mounts_under(&ctx.work.join("p")))
    {
        sys::quiet(Command::new("umount").arg("-l").arg(&m));
    }
}

/// podrun failing is a failure of the run; a peer failing here is only not measured.
fn failure(system: &str, e: &anyhow::Error) -> String {
    if system == "podrun" {
        format!("failed: {e:#}")
    } else {
        format!("not measured: {e:#}")
    }
}

fn skip(report: &mut Report, system: &str, reason: String) {
    report.skipped.push(Skipped {
        workload: "cri".into(),
        system: system.into(),
        reason,
    });
}

fn run(ctx: &Ctx, report: &mut Report, daemons: &mut Daemons) -> Result<()> {
    let registry = Registry::start(ctx, daemons, "cri-registry")?;
    let busybox = registry.push(
        &format!(
            "oci-archive:{}",
            ctx.repo.join("images/out/busybox.tar").display()
        ),
        "library/busybox:latest",
    )?;

    let mut servers = Vec::new();
    match start_podrun(ctx, daemons) {
        Ok(s) => servers.push(s),
        Err(e) => skip(
            report,
            "podrun",
            format!("failed: start podrun agent: {e:#}"),
        ),
    }
    match start_containerd(ctx, daemons, &registry) {
        Ok((s, version)) => {
            report.versions.push(("containerd".into(), version));
            servers.push(s);
        }
        Err(e) => skip(
            report,
            "containerd",
            format!("not measured: containerd's CRI plugin cannot run here: {e:#}"),
        ),
    }
    let mut pulled = Vec::new();
    for mut s in servers {
        let image = s
            .call(
                &format!("{IMAGES}PullImage"),
                Msg::new().msg(1, Msg::new().str(1, &busybox)),
            )
            .and_then(|resp| string_field(&resp, 1).context("PullImage: no image_ref"));
        match image {
            Ok(id) => {
                s.image = id;
                pulled.push(s);
            }
            Err(e) => skip(
                report,
                s.name,
                failure(s.name, &e.context("PullImage busybox")),
            ),
        }
    }
    let mut servers = pulled;

    let rounds = if ctx.smoke { 1 } else { ctx.rounds.max(10) };
    let mut series: Vec<Series> = Vec::new();
    let mut failed = vec![false; servers.len()];
    for round in 0..=rounds {
        for (i, s) in servers.iter_mut().enumerate() {
            if failed[i] {
                continue;
            }
            match pod_lifecycle(ctx, s, round) {
                Ok(steps) if round > 0 => record(&mut series, s.name, &steps),
                Ok(_) => {}
                Err(e) => {
                    failed[i] = true;
                    skip(report, s.name, failure(s.name, &e));
                }
            }
        }
    }
    let note = "busybox `sleep 3600` from docker-registry on 127.0.0.1, one gRPC client on the \
                unix socket, StopContainer timeout 0 (SIGKILL: sleep is PID 1 and ignores \
                SIGTERM), cgroup_parent /podrun-bench/cri/pod<uid> made beforehand as a \
                kubelet does; podrun agent --network none, containerd with loopback only";
    // One note for the lot: the table prints each series' note.
    for s in series
        .iter_mut()
        .filter(|s| s.metric.starts_with("pod start"))
    {
        s.note = Some(note.into());
    }
    report.series.extend(series);

    for (i, s) in servers.iter_mut().enumerate() {
        if failed[i] {
            continue;
        }
        if let Err(e) = memory(ctx, s, report) {
            report.skipped.push(Skipped {
                workload: "memory".into(),
                system: s.name.into(),
                reason: failure(s.name, &e.context("CRI memory")),
            });
        }
    }
    Ok(())
}

fn record(series: &mut Vec<Series>, system: &str, steps: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut push = |metric: &str, v: f64| match series
        .iter_mut()
        .find(|s| s.metric == metric && s.system == system)
    {
        Some(s) => s.samples.push(v),
        None => {
            let mut s = Series::new("cri", metric, system, "ms");
            s.samples.push(v);
            series.push(s);
        }
    };
    for (name, d) in STEPS.iter().zip(steps) {
        push(name, ms(*d));
    }
    push(
        "pod start (run+create+start)",
        steps[..3].iter().map(|d| ms(*d)).sum(),
    );
    push(
        "pod teardown (stop+remove both)",
        steps[3..].iter().map(|d| ms(*d)).sum(),
    );
    push("whole lifecycle", steps.iter().map(|d| ms(*d)).sum());
}

/// The pod's cgroup in every v1 hierarchy, as a kubelet creates it before
/// RunPodSandbox; the harness removes new cgroups under CGROUP_ROOT at the end.
fn pod_cgroup(uid: &str) -> String {
    let path = format!("{CGROUP_ROOT}/cri/pod{uid}");
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            if h.path().join("cgroup.procs").exists() {
                let _ = std::fs::create_dir_all(h.path().join(&path));
            }
        }
    }
    format!("/{path}")
}

fn sandbox_config(ctx: &Ctx, system: &str, name: &str, uid: &str) -> Msg {
    let logs = ctx.work.join("cri-logs").join(system).join(uid);
    Msg::new()
        .msg(
            1,
            Msg::new()
                .str(1, name)
                .str(2, uid)
                .str(3, "bench")
                .int(4, 0),
        )
        .str(2, name)
        .str(3, &logs.to_string_lossy())
        .msg(8, Msg::new().str(1, &pod_cgroup(uid)))
}

/// Start a pod with one idle container; (sandbox id, container id, step timings).
fn start_pod(
    ctx: &Ctx,
    s: &mut Server,
    name: &str,
    uid: &str,
) -> Result<(String, String, Vec<Duration>)> {
    let mut times = Vec::new();
    let config = sandbox_config(ctx, s.name, name, uid);
    let t = Instant::now();
    let resp = s.call(
        &format!("{RUNTIME}RunPodSandbox"),
        Msg::new().msg(1, config.clone()),
    )?;
    times.push(t.elapsed());
    let pod = string_field(&resp, 1).context("RunPodSandbox: no pod_sandbox_id")?;
    let container = Msg::new()
        .msg(1, Msg::new().str(1, "sleep"))
        .msg(2, Msg::new().str(1, &s.image))
        .str(3, "sleep")
        .str(3, "3600")
        .str(11, "sleep/0.log");
    let t = Instant::now();
    let resp = s.call(
        &format!("{RUNTIME}CreateContainer"),
        Msg::new().str(1, &pod).msg(2, container).msg(3, config),
    )?;
    times.push(t.elapsed());
    let ctr = string_field(&resp, 1).context("CreateContainer: no container_id")?;
    let t = Instant::now();
    s.call(&format!("{RUNTIME}StartContainer"), Msg::new().str(1, &ctr))?;
    times.push(t.elapsed());
    Ok((pod, ctr, times))
}

fn stop_pod(s: &mut Server, pod: &str, ctr: &str) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for (method, req) in [
        ("StopContainer", Msg::new().str(1, ctr).int(2, 0)),
        ("RemoveContainer", Msg::new().str(1, ctr)),
        ("StopPodSandbox", Msg::new().str(1, pod)),
        ("RemovePodSandbox", Msg::new().str(1, pod)),
    ] {
        let t = Instant::now();
        s.call(&format!("{RUNTIME}{method}"), req)?;
        times.push(t.elapsed());
    }
    Ok(times)
}

fn pod_lifecycle(ctx: &Ctx, s: &mut Server, round: usize) -> Result<Vec<Duration>> {
    let uid = format!("{}-r{round}", s.name);
    let (pod, ctr, mut times) = start_pod(ctx, s, &format!("bench-cri-{round}"), &uid)?;
    times.extend(stop_pod(s, &pod, &ctr)?);
    Ok(times)
}

// ---------------------------------------------------------------------------------
// Memory: the idle daemon, and what each keeps per pod.

fn proc_cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Per pod: podrun's monitor; containerd's shim plus its pause process.
fn per_pod_memory(ctx: &Ctx, s: &Server) -> Result<Vec<Memory>> {
    let mut out = Vec::new();
    if s.name == "podrun" {
        for pid in sys::processes_naming(&ctx.work.join("p/s")) {
            if pid != s.pid && proc_cmdline(pid).contains(" monitor ") {
                out.push(sys::memory(pid)?);
            }
        }
    } else {
        let pids = all_pids();
        for shim in sys::processes_naming(&ctx.work.join("ctdcri")) {
            if !proc_cmdline(shim).contains("containerd-shim") {
                continue;
            }
            let mut m = sys::memory(shim)?;
            for p in &pids {
                if parent_of(*p) == Some(shim) && proc_cmdline(*p).contains(PAUSE_SECONDS) {
                    m += sys::memory(*p)?;
                }
            }
            out.push(m);
        }
    }
    Ok(out)
}

fn memory(ctx: &Ctx, s: &mut Server, report: &mut Report) -> Result<()> {
    let idle = sys::memory(s.pid)?;
    let daemon = if s.name == "podrun" {
        "podrun agent"
    } else {
        "containerd (CRI plugin)"
    };
    for (metric, v) in [
        ("CRI daemon idle RSS", idle.rss_kib),
        ("CRI daemon idle PSS", idle.pss_kib),
    ] {
        let mut series = Series::new("memory", metric, s.name, "KiB");
        series.samples.push(v as f64);
        series.note = Some(format!(
            "{daemon} with no pods, after the lifecycle rounds and the busybox pull"
        ));
        report.series.push(series);
    }
    let n = ctx.memory_pods;
    progress!("{}: {n} idle pods over CRI", s.name);
    let mut pods = Vec::new();
    let result = (|| -> Result<Vec<Memory>> {
        for i in 0..n {
            let uid = format!("{}-idle-{i}", s.name);
            let (pod, ctr, _) = start_pod(ctx, s, &format!("bench-cri-idle-{i}"), &uid)?;
            pods.push((pod, ctr));
        }
        let m = per_pod_memory(ctx, s)?;
        if m.len() != n {
            bail!("found the processes of {} pods, expected {n}", m.len());
        }
        Ok(m)
    })();
    for (pod, ctr) in &pods {
        stop_pod(s, pod, ctr)?;
    }
    let per_pod = result?;
    let what = if s.name == "podrun" {
        "the pod's monitor"
    } else {
        "containerd-shim-runc-v2 + the pause process"
    };
    for (metric, f) in [
        (
            "CRI PSS per pod",
            (|m: &Memory| m.pss_kib) as fn(&Memory) -> u64,
        ),
        ("CRI RSS per pod", |m: &Memory| m.rss_kib),
    ] {
        let mut series = Series::new("memory", metric, s.name, "KiB");
        series.samples = per_pod.iter().map(|m| f(m) as f64).collect();
        series.note = Some(format!(
            "{n} idle busybox pods over CRI; per pod: {what} (the container is the workload)"
        ));
        report.series.push(series);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The servers.

fn connect(socket: &Path, what: &str, log: &Path) -> Result<(Client, String)> {
    let mut last = None;
    let ready = wait_for(what, || {
        if !socket.exists() {
            return false;
        }
        match Client::connect(socket, Duration::from_secs(120)).and_then(|mut c| {
            let v = c.call(
                &format!("{RUNTIME}Version"),
                &Msg::new().str(1, "v1").encode(),
            )?;
            Ok((c, v))
        }) {
            Ok(cv) => {
                last = Some(Ok(cv));
                true
            }
            Err(e) => {
                last = Some(Err(e));
                false
            }
        }
    });
    match (ready, last) {
        (Ok(()), Some(Ok((c, v)))) => {
            let version = [3, 2]
                .iter()
                .filter_map(|f| string_field(&v, *f))
                .collect::<Vec<_>>()
                .join(" ");
            Ok((c, version))
        }
        (_, Some(Err(e))) => Err(e.context(format!("Version{}", log_tail(log)))),
        (Err(e), _) => Err(e.context(log_tail(log))),
        (Ok(()), None) => bail!("no answer"),
    }
}

fn start_podrun(ctx: &Ctx, daemons: &mut Daemons) -> Result<Server> {
    let socket = ctx.work.join("p/cri.sock");
    let log = ctx.work.join("p/agent.log");
    std::fs::create_dir_all(ctx.work.join("p"))?;
    let child = spawn(ctx.podrun().arg("agent").arg("--socket").arg(&socket), &log)?;
    let pid = child.id() as i32;
    daemons.0.push(child);
    let (client, _) = connect(&socket, "podrun agent", &log)?;
    Ok(Server {
        name: "podrun",
        client,
        pid,
        log,
        image: String::new(),
    })
}

/// The pause image: busybox's layers and an entrypoint that sleeps for good, pushed to
/// the registry as `bench/pause:1`.
fn push_pause(ctx: &Ctx, registry: &Registry) -> Result<String> {
    let src = ctx.work.join("busybox-oci");
    let dir = ctx.work.join("pause-oci");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::copy(src.join("oci-layout"), dir.join("oci-layout"))?;
    let read = |p: PathBuf| -> Result<Value> {
        Ok(serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
        )?)
    };
    let blob = |digest: &str| src.join("blobs").join(digest.replacen(':', "/", 1));
    let index = read(src.join("index.json"))?;
    let manifest_desc = &index["manifests"][0];
    let mut manifest = read(blob(
        manifest_desc["digest"]
            .as_str()
            .context("index.json digest")?,
    ))?;
    let mut config = read(blob(
        manifest["config"]["digest"]
            .as_str()
            .context("config digest")?,
    ))?;
    config["config"]["Entrypoint"] = json!(["sleep", PAUSE_SECONDS]);
    config["config"]["Cmd"] = Value::Null;
    for layer in manifest["layers"].as_array().context("layers")? {
        let d = layer["digest"].as_str().context("layer digest")?;
        std::fs::copy(blob(d), blobs.join(d.trim_start_matches("sha256:")))?;
    }
    let store = |data: Vec<u8>| -> Result<(String, usize)> {
        let tmp = dir.join("tmp-blob");
        std::fs::write(&tmp, &data)?;
        let out = sys::output(Command::new("sha256sum").arg(&tmp))?;
        let hex = out
            .split_whitespace()
            .next()
            .context("sha256sum")?
            .to_string();
        std::fs::rename(&tmp, blobs.join(&hex))?;
        Ok((format!("sha256:{hex}"), data.len()))
    };
    let (config_digest, config_size) = store(serde_json::to_vec(&config)?)?;
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config_size);
    let (manifest_digest, manifest_size) = store(serde_json::to_vec(&manifest)?)?;
    let media = manifest_desc["mediaType"]
        .as_str()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json");
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": media, "digest": manifest_digest, "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "pause"}
            }]
        }))?,
    )?;
    registry.push(&format!("oci:{}:pause", dir.display()), "bench/pause:1")
}

/// A CNI plugin that creates nothing: it reports an address on eth0 (a documentation
/// address, never configured) because containerd 1.6 fails a sandbox without one.
const NOOP_CNI: &str = r#"#!/bin/sh
case "$CNI_COMMAND" in
ADD)
    cat >/dev/null
    printf '{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"%s"}],"ips":[{"version":"4","address":"192.0.2.1/32","interface":0}]}' "$CNI_NETNS"
    ;;
VERSION)
    printf '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}'
    ;;
*)
    cat >/dev/null
    ;;
esac
"#;

fn start_containerd(
    ctx: &Ctx,
    daemons: &mut Daemons,
    registry: &Registry,
) -> Result<(Server, String)> {
    let bin = sys::which("containerd").context("containerd is not installed")?;
    sys::which("containerd-shim-runc-v2").context("containerd-shim-runc-v2 is not installed")?;
    sys::which("runc").context("runc is not installed")?;
    let loopback = ["/usr/lib/cni/loopback", "/opt/cni/bin/loopback"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("the reference CNI loopback plugin is not installed")?;
    let pause = push_pause(ctx, registry).context("build the pause image")?;
    let d = ctx.work.join("ctdcri");
    let cni_bin = d.join("cni-bin");
    let cni_conf = d.join("cni-conf");
    std::fs::create_dir_all(&cni_bin)?;
    std::fs::create_dir_all(&cni_conf)?;
    std::os::unix::fs::symlink(&loopback, cni_bin.join("loopback"))?;
    let noop = cni_bin.join("bench-noop");
    std::fs::write(&noop, NOOP_CNI)?;
    std::fs::set_permissions(&noop, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::write(
        cni_conf.join("10-bench.conflist"),
        r#"{"cniVersion":"0.4.0","name":"bench","plugins":[{"type":"bench-noop"}]}"#,
    )?;
    let socket = d.join("c.sock");
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    std::fs::write(
        d.join("config.toml"),
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\
             [{cri}]\n  sandbox_image = \"{pause}\"\n  restrict_oom_score_adj = true\n\
             \x20 stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\
             \x20 netns_mounts_under_state_dir = true\n\
             [{cri}.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n\
             [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             [{cri}.containerd.runtimes.runc.options]\n  SystemdCgroup = false\n\
             [{cri}.cni]\n  bin_dir = \"{cni_bin}\"\n  conf_dir = \"{cni_conf}\"\n\
             [{cri}.registry]\n  config_path = \"{hosts}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
            cni_bin = cni_bin.display(),
            cni_conf = cni_conf.display(),
            hosts = registry.hosts.display(),
        ),
    )?;
    let log = d.join("log");
    let child = spawn(
        Command::new(bin).arg("--config").arg(d.join("config.toml")),
        &log,
    )?;
    let pid = child.id() as i32;
    daemons.0.push(child);
    let (mut client, version) = connect(&socket, "containerd's CRI plugin", &log)?;
    // The sandbox image is pulled here, outside the timed rounds.
    client
        .call(
            &format!("{IMAGES}PullImage"),
            &Msg::new().msg(1, Msg::new().str(1, &pause)).encode(),
        )
        .map_err(|e| e.context(format!("pull the pause image{}", log_tail(&log))))?;
    Ok((
        Server {
            name: "containerd",
            client,
            pid,
            log,
            image: String::new(),
        },
        version,
    ))
}
