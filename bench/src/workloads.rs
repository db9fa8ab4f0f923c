//! The workloads of issue 6, each run for podrun and its peers alternately on the same
//! inputs: the busybox bundle for the container lifecycle, the sidecar pod for pod
//! start, and N idle busybox pods for memory and density.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::report::{Report, Series, Skipped};
use crate::sys::{self, Memory};

/// Everything the workloads share: binaries, the work directory and the run's sizes.
pub struct Ctx {
    pub repo: PathBuf,
    pub work: PathBuf,
    pub podrun: PathBuf,
    pub runc: Option<PathBuf>,
    pub crun: Option<PathBuf>,
    pub podman: Option<PathBuf>,
    pub smoke: bool,
    pub rounds: usize,
    pub density: Vec<usize>,
    pub memory_pods: usize,
    pub peer_max_pods: usize,
    /// Where to write the perf report of a podrun pod start, when asked for.
    pub perf_out: Option<PathBuf>,
}

pub const CGROUP_ROOT: &str = "podrun-bench";

impl Ctx {
    pub fn podrun(&self) -> Command {
        self.podrun_at(&self.work.join("p").join("root"))
    }

    /// podrun with its own state, logs and cgroup root, and images and layers in `root`.
    pub fn podrun_at(&self, root: &Path) -> Command {
        let mut c = Command::new(&self.podrun);
        // Short names: the monitor socket path must fit in sockaddr_un.
        let d = self.work.join("p");
        c.arg("--root")
            .arg(root)
            .arg("--state")
            .arg(d.join("s"))
            .arg("--log-root")
            .arg(d.join("logs"))
            .args(["--cgroup-driver", "cgroupfs", "--cgroup-root", CGROUP_ROOT])
            // Loopback only, as podman's --network none; the CNI directory is a private
            // empty one so that nothing reads or writes the host's /etc/cni/net.d.
            .args(["--network", "none", "--cni-conf-dir"])
            .arg(d.join("cni"));
        c
    }

    /// podman with its storage, run root and config in the work directory, runc as its
    /// runtime and cgroupfs as its cgroup manager (no systemd here).
    pub fn podman(&self) -> Option<Command> {
        let bin = self.podman.as_ref()?;
        let d = self.work.join("podman");
        let mut c = Command::new(bin);
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--runtime")
            .arg(self.runc.as_deref().unwrap_or(Path::new("runc")))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        Some(c)
    }

    fn oci(&self, bin: &Path, name: &str) -> Command {
        let mut c = Command::new(bin);
        c.arg("--root").arg(self.work.join(format!("{name}-state")));
        c
    }

    pub fn runc(&self) -> Option<Command> {
        self.runc.as_ref().map(|b| self.oci(b, "runc"))
    }

    pub fn crun(&self) -> Option<Command> {
        self.crun.as_ref().map(|b| self.oci(b, "crun"))
    }

    fn bundle(&self) -> PathBuf {
        self.work.join("bundle")
    }

    fn sidecar_yaml(&self) -> PathBuf {
        self.work.join("sidecar-pod.yaml")
    }

    fn idle_yaml(&self, i: usize) -> PathBuf {
        self.work.join("pods").join(format!("bench-idle-{i}.yaml"))
    }
}

const IMAGES: [&str; 3] = ["busybox", "nginx", "curl"];

/// Images into podrun's and podman's stores, the busybox bundle, the pod YAML files and
/// podman's containers.conf: everything identical that the workloads read.
pub fn prepare(ctx: &Ctx) -> Result<()> {
    let out = ctx.repo.join("images/out");
    if IMAGES
        .iter()
        .any(|i| !out.join(format!("{i}.tar")).is_file())
    {
        progress!("building the example images (images/build.sh)");
        sys::timed(Command::new("bash").arg(ctx.repo.join("images/build.sh")))?;
    }
    for d in ["p/cni", "podman/root", "podman/run", "podman/tmp", "pods"] {
        std::fs::create_dir_all(ctx.work.join(d))?;
    }
    std::fs::write(
        ctx.work.join("podman/containers.conf"),
        // The host's hard nofile limit is 20000 and there is no CAP_SYS_RESOURCE to
        // raise it, so podman's default of 1048576 would make every container fail.
        "[containers]\n\
         default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
         [engine]\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"file\"\n",
    )?;
    for i in IMAGES {
        let tar = out.join(format!("{i}.tar"));
        sys::timed(ctx.podrun().args(["image", "load"]).arg(&tar))
            .with_context(|| format!("podrun image load {i}"))?;
        if let Some(mut p) = ctx.podman() {
            sys::timed(p.args(["load", "-i"]).arg(&tar))
                .with_context(|| format!("podman load {i}"))?;
        }
    }
    make_bundle(ctx, &out.join("busybox.tar"))?;
    // The example pod without its `ports` list: a containerPort without hostPort only
    // documents the port in Kubernetes, but podman 4.3 refuses it with --network none.
    let example = std::fs::read_to_string(ctx.repo.join("examples/sidecar-pod.yaml"))?;
    let mut yaml = String::new();
    let mut in_ports = false;
    for line in example.lines() {
        if line == "    ports:" {
            in_ports = true;
            continue;
        }
        if in_ports && (line.starts_with("    - ") || line.starts_with("      ")) {
            continue;
        }
        in_ports = false;
        yaml.push_str(line);
        yaml.push('\n');
    }
    std::fs::write(ctx.sidecar_yaml(), yaml)?;
    Ok(())
}

/// bundle/rootfs from the layers of the busybox OCI archive, and a config.json equal
/// to `runc spec`'s default except that it runs /bin/true without a terminal and sets
/// no ambient capabilities: the kernel raises an ambient capability only when it is
/// also inheritable, which runc's default omits; runc ignores that failure, podrun
/// reports it.
fn make_bundle(ctx: &Ctx, archive: &Path) -> Result<()> {
    let oci = ctx.work.join("busybox-oci");
    let rootfs = ctx.bundle().join("rootfs");
    std::fs::create_dir_all(&oci)?;
    std::fs::create_dir_all(&rootfs)?;
    sys::timed(
        Command::new("tar")
            .arg("xf")
            .arg(archive)
            .arg("-C")
            .arg(&oci),
    )?;
    let blob = |digest: &str| -> PathBuf {
        oci.join("blobs")
            .join(digest.replacen(':', "/", 1).replace("..", ""))
    };
    let read = |p: PathBuf| -> Result<Value> {
        Ok(serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
        )?)
    };
    let index = read(oci.join("index.json"))?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json: no manifest")?;
    let manifest = read(blob(manifest_digest))?;
    let layers = manifest["layers"]
        .as_array()
        .context("manifest: no layers")?;
    for layer in layers {
        let digest = layer["digest"].as_str().context("layer digest")?;
        sys::timed(
            Command::new("tar")
                .arg("xzf")
                .arg(blob(digest))
                .arg("-C")
                .arg(&rootfs),
        )?;
    }
    std::fs::write(
        ctx.bundle().join("config.json"),
        serde_json::to_vec_pretty(&bundle_config())?,
    )?;
    Ok(())
}

fn bundle_config() -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/true"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------
// Workload 1: container lifecycle.

/// `<runtime> run --bundle B ID`: the whole lifecycle in one foreground command.
fn oci_run(ctx: &Ctx, system: &str, id: &str) -> Command {
    let mut c = match system {
        "podrun" => {
            let mut c = ctx.podrun();
            c.arg("oci");
            c
        }
        "runc" => ctx.runc().expect("checked"),
        _ => ctx.crun().expect("checked"),
    };
    c.args(["run", "--bundle"]).arg(ctx.bundle()).arg(id);
    c
}

pub fn lifecycle(ctx: &Ctx, report: &mut Report) {
    let mut systems = vec!["podrun"];
    for (name, bin) in [("runc", &ctx.runc), ("crun", &ctx.crun)] {
        if bin.is_some() {
            systems.push(name);
        } else {
            report.skipped.push(Skipped {
                workload: "lifecycle".into(),
                system: name.into(),
                reason: format!("not available: {name} is not installed"),
            });
        }
    }
    let rounds = if ctx.smoke { 2 } else { ctx.rounds.max(10) * 3 };
    let mut series: Vec<Series> = systems
        .iter()
        .map(|n| Series::new("lifecycle", "run /bin/true", n, "ms"))
        .collect();
    let mut failed = vec![false; systems.len()];
    for round in 0..=rounds {
        for (i, name) in systems.iter().enumerate() {
            if failed[i] {
                continue;
            }
            let id = format!("bench-{name}-{round}");
            match sys::timed(&mut oci_run(ctx, name, &id)) {
                // Round 0 is the warm-up: page cache, binaries, cgroup hierarchy.
                Ok(d) if round > 0 => series[i].samples.push(ms(d)),
                Ok(_) => {}
                Err(e) => {
                    failed[i] = true;
                    report.skipped.push(Skipped {
                        workload: "lifecycle".into(),
                        system: name.to_string(),
                        reason: format!("failed: {e:#}"),
                    });
                }
            }
        }
    }
    report
        .series
        .extend(series.into_iter().filter(|s| !s.samples.is_empty()));
}

// ---------------------------------------------------------------------------------
// Workload 2: pod start, YAML to "both running and `curl localhost` answered", and down.

struct PodSystem<'a> {
    name: &'static str,
    up: Box<dyn Fn() -> Command + 'a>,
    probe: Box<dyn Fn() -> Command + 'a>,
    down: Box<dyn Fn() -> Command + 'a>,
}

fn pod_systems(ctx: &Ctx) -> Vec<PodSystem<'_>> {
    let yaml = ctx.sidecar_yaml();
    let y1 = yaml.clone();
    let y2 = yaml.clone();
    let mut v = vec![PodSystem {
        name: "podrun",
        up: Box::new(move || {
            let mut c = ctx.podrun();
            c.args(["run", "-d"]).arg(&y1);
            c
        }),
        probe: Box::new(|| {
            let mut c = ctx.podrun();
            c.args([
                "exec",
                "sidecar-demo",
                "-c",
                "client",
                "--",
                "curl",
                "-s",
                "localhost",
            ]);
            c
        }),
        down: Box::new(move || {
            let mut c = ctx.podrun();
            c.arg("down").arg(&y2);
            c
        }),
    }];
    if ctx.podman.is_some() {
        let y1 = yaml.clone();
        let y2 = yaml;
        v.push(PodSystem {
            name: "podman",
            up: Box::new(move || {
                let mut c = ctx.podman().expect("checked");
                c.args(["kube", "play", "--network", "none"]).arg(&y1);
                c
            }),
            probe: Box::new(|| {
                let mut c = ctx.podman().expect("checked");
                c.args(["exec", "sidecar-demo-client", "curl", "-s", "localhost"]);
                c
            }),
            down: Box::new(move || {
                let mut c = ctx.podman().expect("checked");
                c.args(["kube", "play", "--down"]).arg(&y2);
                c
            }),
        });
    }
    v
}

/// Until nginx answers through the client container: the same polling for everyone,
/// since "running" does not mean nginx has bound its port yet.
fn wait_answered(probe: &dyn Fn() -> Command) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match sys::output(&mut probe()) {
            Ok(out) if out.contains("nginx") => return Ok(()),
            Ok(out) => last = out,
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("curl localhost not answered within 30 s: {last}")
}

fn pod_cycle(s: &PodSystem) -> Result<(Duration, Duration)> {
    let start = Instant::now();
    sys::timed(&mut (s.up)())?;
    wait_answered(&*s.probe)?;
    let up = start.elapsed();
    let d = sys::timed(&mut (s.down)())?;
    Ok((up, d))
}

pub fn pod_start(ctx: &Ctx, report: &mut Report) {
    let systems = pod_systems(ctx);
    if ctx.podman.is_none() {
        report.skipped.push(Skipped {
            workload: "pod-start".into(),
            system: "podman".into(),
            reason: "not available: podman is not installed".into(),
        });
    }
    let rounds = if ctx.smoke { 1 } else { ctx.rounds.max(10) };
    let mut up: Vec<Series> = systems
        .iter()
        .map(|s| Series::new("pod-start", "up", s.name, "ms"))
        .collect();
    let mut down: Vec<Series> = systems
        .iter()
        .map(|s| Series::new("pod-start", "down", s.name, "ms"))
        .collect();
    let mut failed = vec![false; systems.len()];
    for round in 0..=rounds {
        for (i, s) in systems.iter().enumerate() {
            if failed[i] {
                continue;
            }
            match pod_cycle(s) {
                Ok((u, d)) if round > 0 => {
                    up[i].samples.push(ms(u));
                    down[i].samples.push(ms(d));
                }
                Ok(_) => {}
                Err(e) => {
                    failed[i] = true;
                    sys::quiet(&mut (s.down)());
                    report.skipped.push(Skipped {
                        workload: "pod-start".into(),
                        system: s.name.into(),
                        reason: format!("failed: {e:#}"),
                    });
                }
            }
        }
    }
    for s in up.iter_mut().chain(down.iter_mut()) {
        if s.system == "podman" {
            s.note = Some(
                "podrun --network none and podman kube play --network none: both pods have \
                 loopback only; podman adds an infra container, podrun has none"
                    .into(),
            );
        }
    }
    report
        .series
        .extend(up.into_iter().chain(down).filter(|s| !s.samples.is_empty()));
    if let Some(out) = &ctx.perf_out {
        if let Err(e) = perf_pod_start(ctx, &systems[0], out) {
            report.skipped.push(Skipped {
                workload: "perf".into(),
                system: "podrun".into(),
                reason: format!("failed: {e:#}"),
            });
        }
    }
}

/// `perf record -g` of `podrun run -d` of the sidecar pod; the report goes to `out`.
fn perf_pod_start(ctx: &Ctx, podrun: &PodSystem, out: &Path) -> Result<()> {
    let perf = sys::which("perf").context("perf is not installed (package linux-perf)")?;
    let data = ctx.work.join("perf.data");
    let up = (podrun.up)();
    let mut rec = Command::new(&perf);
    rec.args(["record", "-g", "-F", "4999", "-o"])
        .arg(&data)
        .arg("--")
        .arg(up.get_program())
        .args(up.get_args());
    let result = sys::timed(&mut rec);
    let answered = wait_answered(&*podrun.probe);
    sys::timed(&mut (podrun.down)())?;
    result?;
    answered?;
    let text = sys::output(
        Command::new(&perf)
            .args(["report", "--stdio", "--no-children", "--percent-limit", "1"])
            .args(["--sort", "comm,dso,symbol", "-g", "none", "-i"])
            .arg(&data),
    )?;
    std::fs::write(out, text).with_context(|| format!("write {}", out.display()))?;
    progress!("perf report of podrun's pod start in {}", out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------
// Workloads 4 and 5: N idle pods, their memory and the time to start and remove them.

fn write_idle_pods(ctx: &Ctx, n: usize) -> Result<()> {
    for i in 0..n {
        let path = ctx.idle_yaml(i);
        if path.exists() {
            continue;
        }
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bench-idle-{i}\nspec:\n  \
                 containers:\n  - name: idle\n    image: busybox\n    command: [\"sh\", \
                 \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait $!\"]\n"
            ),
        )?;
    }
    Ok(())
}

struct Cycle {
    start: Duration,
    remove: Duration,
    /// Per pod: the processes each system keeps running for it besides the workload.
    memory: Vec<Memory>,
}

fn podrun_pods(ctx: &Ctx) -> Result<Vec<Value>> {
    let text = sys::output(ctx.podrun().args(["pods", "-o", "json"]))?;
    let v: Value = serde_json::from_str(&text).context("podrun pods -o json")?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn podrun_cycle(ctx: &Ctx, n: usize, measure: bool) -> Result<Cycle> {
    let names: Vec<String> = (0..n).map(|i| format!("bench-idle-{i}")).collect();
    let t0 = Instant::now();
    for i in 0..n {
        sys::timed(ctx.podrun().args(["run", "-d"]).arg(ctx.idle_yaml(i)))?;
    }
    let start = t0.elapsed();
    let pods = podrun_pods(ctx)?;
    let running = pods.iter().filter(|p| p["status"] == "Running").count();
    if running != n {
        bail!("{running} of {n} pods running after podrun run -d");
    }
    let mut memory = Vec::new();
    if measure {
        for p in &pods {
            let d = &p["status_detail"];
            let pid = d["monitorPid"]
                .as_i64()
                .or_else(|| d["monitor_pid"].as_i64())
                .context("pods -o json: no status_detail.monitorPid")?;
            memory.push(sys::memory(pid as i32)?);
        }
    }
    let t1 = Instant::now();
    sys::timed(
        ctx.podrun()
            .args(["rm", "--grace-period", "0"])
            .args(&names),
    )?;
    let remove = t1.elapsed();
    let left = podrun_pods(ctx)?.len();
    if left != 0 {
        bail!("{left} pods left after podrun rm");
    }
    Ok(Cycle {
        start,
        remove,
        memory,
    })
}

fn podman_cycle(ctx: &Ctx, n: usize, measure: bool) -> Result<Cycle> {
    let podman = || ctx.podman().expect("checked");
    let names: Vec<String> = (0..n).map(|i| format!("bench-idle-{i}")).collect();
    let t0 = Instant::now();
    for i in 0..n {
        sys::timed(
            podman()
                .args(["kube", "play", "--network", "none"])
                .arg(ctx.idle_yaml(i)),
        )?;
    }
    let start = t0.elapsed();
    let ids = sys::output(podman().args(["ps", "-q", "--no-trunc"]))?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    // One infra and one busybox container per pod.
    if ids.len() != 2 * n {
        bail!("{} containers running for {n} pods", ids.len());
    }
    let mut memory = Vec::new();
    if measure {
        let text = sys::output(podman().arg("inspect").args(&ids))?;
        let containers: Vec<Value> = serde_json::from_str(&text).context("podman inspect")?;
        let mut by_pod: std::collections::BTreeMap<String, Memory> = Default::default();
        for c in &containers {
            let pod = c["Pod"].as_str().unwrap_or_default().to_string();
            let entry = by_pod.entry(pod).or_default();
            let conmon = c["State"]["ConmonPid"].as_i64().context("ConmonPid")?;
            *entry += sys::memory(conmon as i32)?;
            if c["IsInfra"].as_bool() == Some(true) {
                let pid = c["State"]["Pid"].as_i64().context("State.Pid")?;
                *entry += sys::memory(pid as i32)?;
            }
        }
        memory = by_pod.into_values().collect();
    }
    let t1 = Instant::now();
    sys::timed(podman().args(["pod", "rm", "-f", "-t", "0"]).args(&names))?;
    let remove = t1.elapsed();
    let left = sys::output(podman().args(["ps", "-aq"]))?;
    if !left.trim().is_empty() {
        bail!("containers left after podman pod rm: {}", left.trim());
    }
    Ok(Cycle {
        start,
        remove,
        memory,
    })
}

fn record_memory(report: &mut Report, system: &str, n: usize, memory: &[Memory]) {
    let what = if system == "podrun" {
        "the pod's monitor"
    } else {
        "conmon of both containers + the infra (catatonit) process"
    };
    let mut pss = Series::new("memory", "PSS per pod", system, "KiB");
    let mut rss = Series::new("memory", "RSS per pod", system, "KiB");
    pss.samples = memory.iter().map(|m| m.pss_kib as f64).collect();
    rss.samples = memory.iter().map(|m| m.rss_kib as f64).collect();
    pss.note = Some(format!(
        "{n} idle busybox pods; per pod: {what} (container processes are the workload)"
    ));
    report.series.push(pss);
    report.series.push(rss);
}

/// Density for every N (podrun, then podman up to `peer_max_pods`), measuring memory
/// at N = `memory_pods` (in its own cycle when that N is not among the densities).
pub fn pods(ctx: &Ctx, report: &mut Report) {
    let max = ctx
        .density
        .iter()
        .copied()
        .chain([ctx.memory_pods])
        .max()
        .unwrap_or(0);
    if let Err(e) = write_idle_pods(ctx, max) {
        report.skipped.push(Skipped {
            workload: "density".into(),
            system: "all".into(),
            reason: format!("failed: {e:#}"),
        });
        return;
    }
    let mut plan: Vec<(usize, bool, bool)> = ctx
        .density
        .iter()
        .map(|&n| (n, true, n == ctx.memory_pods))
        .collect();
    if !ctx.density.contains(&ctx.memory_pods) {
        plan.insert(0, (ctx.memory_pods, false, true));
    }
    let mut podrun_failed = false;
    let mut podman_failed = ctx.podman.is_none();
    for (n, timed, measure) in plan {
        let systems: Vec<&str> = ["podrun", "podman"]
            .into_iter()
            .filter(|s| match *s {
                "podrun" => !podrun_failed,
                _ => !podman_failed && n <= ctx.peer_max_pods,
            })
            .collect();
        for system in systems {
            progress!("{system}: {n} pods");
            let result = if system == "podrun" {
                podrun_cycle(ctx, n, measure)
            } else {
                podman_cycle(ctx, n, measure)
            };
            match result {
                Ok(c) => {
                    if timed {
                        let mut s =
                            Series::new("density", &format!("start {n} pods"), system, "ms/pod");
                        s.samples.push(ms(c.start) / n as f64);
                        let mut r =
                            Series::new("density", &format!("remove {n} pods"), system, "ms/pod");
                        r.samples.push(ms(c.remove) / n as f64);
                        report.series.push(s);
                        report.series.push(r);
                    }
                    if measure {
                        record_memory(report, system, n, &c.memory);
                    }
                }
                Err(e) => {
                    if system == "podrun" {
                        podrun_failed = true;
                        remove_podrun_pods(ctx);
                    } else {
                        podman_failed = true;
                        remove_podman_pods(ctx);
                    }
                    report.skipped.push(Skipped {
                        workload: if timed { "density" } else { "memory" }.into(),
                        system: system.into(),
                        reason: format!("failed at N={n}: {e:#}"),
                    });
                }
            }
        }
    }
    if ctx.podman.is_some() {
        let skipped: Vec<String> = ctx
            .density
            .iter()
            .filter(|&&n| n > ctx.peer_max_pods)
            .map(|n| n.to_string())
            .collect();
        if !skipped.is_empty() {
            report.skipped.push(Skipped {
                workload: "density".into(),
                system: "podman".into(),
                reason: format!(
                    "N={} not run for podman (--peer-max-pods {})",
                    skipped.join(","),
                    ctx.peer_max_pods
                ),
            });
        }
    }
}

// ---------------------------------------------------------------------------------
// Cleanup: everything the workloads created, whatever state a failure left.

pub fn remove_podrun_pods(ctx: &Ctx) {
    if let Ok(pods) = podrun_pods(ctx) {
        let names: Vec<String> = pods
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        if !names.is_empty() {
            sys::quiet(
                ctx.podrun()
                    .args(["rm", "--grace-period", "0"])
                    .args(&names),
            );
        }
    }
}

pub fn remove_podman_pods(ctx: &Ctx) {
    if let Some(mut p) = ctx.podman() {
        sys::quiet(p.args(["pod", "rm", "-a", "-f", "-t", "0"]));
    }
    if let Some(mut p) = ctx.podman() {
        sys::quiet(p.args(["rm", "-a", "-f", "-t", "0"]));
    }
}

pub fn cleanup(ctx: &Ctx) {
    if !ctx.work.exists() {
        return;
    }
    if ctx.podrun.is_file() {
        remove_podrun_pods(ctx);
    }
    remove_podman_pods(ctx);
    for (cmd, name) in [(ctx.runc(), "runc"), (ctx.crun(), "crun")] {
        let Some(mut cmd) = cmd else { continue };
        let ids = sys::output(cmd.args(["list", "-q"])).unwrap_or_default();
        for id in ids.split_whitespace() {
            let c = if name == "runc" {
                ctx.runc()
            } else {
                ctx.crun()
            };
            if let Some(mut c) = c {
                sys::quiet(c.args(["delete", "-f", id]));
            }
        }
    }
    for pid in sys::processes_naming(&ctx.work) {
        progress!("killing leftover process {pid}");
        sys::kill(pid);
    }
    for m in sys::mounts_under(&ctx.work) {
        sys::quiet(Command::new("umount").arg("-l").arg(&m));
    }
    if let Err(e) = std::fs::remove_dir_all(&ctx.work) {
        progress!("remove {}: {e}", ctx.work.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_config_runs_true_without_terminal() {
        let c = bundle_config();
        assert_eq!(c["process"]["args"], json!(["/bin/true"]));
        assert_eq!(c["process"]["terminal"], json!(false));
        assert_eq!(c["root"]["path"], json!("rootfs"));
    }
}
