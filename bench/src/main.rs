//! `podrun-bench`: podrun side by side with runc, crun, podman (and, once podrun has
//! the features, containerd) on the same machine, inputs and conditions.
//!
//! The outer process installs missing peers from Debian's packages and builds podrun;
//! it then re-runs itself in a private mount namespace where /sys/fs/cgroup/unified is
//! unmounted, because crun refuses the hybrid cgroup layout: every system is measured
//! there, on plain cgroup v1 with the cgroupfs driver. All state lives in one work
//! directory that is removed at the end, also after a failure.

/// A progress line on stderr with the seconds since the harness started.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("[{:7.1}s] bench: {}", $crate::sys::elapsed(), format!($($arg)*))
    };
}

mod cni;
mod cri;
mod grpc;
mod kubelet;
mod proxy;
mod pull;
mod report;
mod scheduling;
mod server;
mod sys;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Parser;

use report::{Goal, Report};
use workloads::Ctx;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "podrun-bench",
    about = "podrun against runc, crun, podman and containerd"
)]
struct Args {
    /// One round and the smallest sizes: keeps the harness working in CI.
    #[arg(long)]
    smoke: bool,
    /// Rounds of each short workload (the container lifecycle runs 3x as many).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Pod counts of the density workload.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100,250")]
    density: Vec<usize>,
    /// Idle pods whose per-pod memory is measured.
    #[arg(long, default_value_t = 50)]
    memory_pods: usize,
    /// Largest density N run for podman too (podrun runs every N).
    #[arg(long, default_value_t = 100)]
    peer_max_pods: usize,
    /// Where the JSON results go (default: bench/results.json; smoke: the temp dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Record `perf record -g` of a podrun pod start (package linux-perf).
    #[arg(long)]
    perf: bool,
    /// Pod counts of the API server's write and watch tests.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    server_pods: Vec<usize>,
    /// Rounds of the API server workload (a fresh server and etcd each).
    #[arg(long, default_value_t = 3)]
    server_rounds: usize,
    /// Simulated nodes of the scheduling workload.
    #[arg(long, default_value_t = 100)]
    scheduling_nodes: usize,
    /// Replica counts of the scheduling workload, each a Deployment scaled from 0.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    scheduling_pods: Vec<usize>,
    /// Rounds of the scheduling workload (a fresh server and etcd each).
    #[arg(long, default_value_t = 3)]
    scheduling_rounds: usize,
    /// Rounds of the kubelet workload (a fresh server and agent each).
    #[arg(long, default_value_t = 3)]
    kubelet_rounds: usize,
    /// Run only this workload: lifecycle, pod-start, pods, image-pull, cni, cri, server,
    /// scheduling, kubelet or proxy.
    #[arg(long, value_parser = ["lifecycle", "pod-start", "pods", "image-pull", "cni", "cri", "server", "scheduling", "kubelet", "proxy"])]
    only: Option<String>,
    /// Do not install missing peers; measure only what is installed.
    #[arg(long)]
    no_install: bool,
    /// The podrun binary (default: the one beside this binary, built if missing).
    #[arg(long, env = "PODRUN_BENCH_PODRUN")]
    podrun: Option<PathBuf>,
    /// The podrun checkout (images/, examples/).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    repo: PathBuf,
    /// Set by the outer process: run the workloads in this work directory.
    #[arg(long, hide = true)]
    inner: Option<PathBuf>,
}

fn main() -> ExitCode {
    sys::elapsed();
    let mut args = Args::parse();
    if let Ok(repo) = args.repo.canonicalize() {
        args.repo = repo;
    }
    let result = match &args.inner {
        Some(work) => inner(&args, work.clone()),
        None => outer(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podrun-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Debian package of each peer binary.
const PEERS: [(&str, &str); 7] = [
    ("runc", "runc"),
    ("crun", "crun"),
    ("podman", "podman"),
    ("containerd", "containerd"),
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("etcd", "etcd-server"),
];

fn install_missing(args: &Args) {
    let mut missing: Vec<&str> = PEERS
        .iter()
        .filter(|(bin, _)| sys::which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if args.perf && sys::which("perf").is_none() {
        missing.push("linux-perf");
    }
    if missing.is_empty() || args.no_install {
        return;
    }
    progress!("installing {}", missing.join(" "));
    sys::quiet(Command::new("apt-get").args(["update", "-qq"]));
    for pkg in missing {
        // One at a time, so a package that fails leaves the others installed.
        let r = sys::timed(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends", pkg]),
        );
        if let Err(e) = r {
            progress!("{pkg} not available: {e:#}");
        }
    }
}

/// podrun beside this binary, from the same cargo profile; built when cargo is at hand.
fn podrun_binary(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.podrun {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let dir = me.parent().context("binary directory")?;
    let bin = dir.join("podrun");
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| sys::which("cargo"));
    if let Some(cargo) = cargo {
        let mut c = Command::new(cargo);
        c.current_dir(&args.repo)
            .args(["build", "-q", "-p", "podrun"]);
        if dir.ends_with("release") {
            c.arg("--release");
        }
        progress!("building podrun");
        sys::timed(&mut c).context("build podrun")?;
    }
    if !bin.is_file() {
        bail!(
            "{} not found: build it with cargo build -p podrun",
            bin.display()
        );
    }
    Ok(bin)
}

fn outer(args: &Args) -> Result<()> {
    if !sys::is_root() {
        bail!("run as root: containers, cgroups and mounts need it");
    }
    install_missing(args);
    let podrun = podrun_binary(args)?;
    let unshare = sys::which("unshare").context("unshare (util-linux) is needed")?;
    let work = std::env::temp_dir().join(format!("pb.{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut cmd = Command::new(unshare);
    cmd.args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("PODRUN_BENCH_PODRUN", &podrun)
        .arg("--inner")
        .arg(&work);
    let status = cmd.status().context("run the workloads under unshare")?;
    // The inner process cleans up after itself; this catches it being killed.
    if work.exists() {
        let ctx = ctx(args, podrun, work);
        cni::cleanup(&ctx);
        workloads::cleanup(&ctx);
    }
    if !status.success() {
        bail!("workloads failed ({status})");
    }
    Ok(())
}

fn ctx(args: &Args, podrun: PathBuf, work: PathBuf) -> Ctx {
    let (density, memory_pods) = if args.smoke {
        (vec![2], 3)
    } else {
        (args.density.clone(), args.memory_pods)
    };
    let perf_out = args.perf.then(|| {
        out_path(args)
            .parent()
            .unwrap_or(Path::new("."))
            .join("perf-pod-start.txt")
    });
    Ctx {
        repo: args.repo.clone(),
        work,
        podrun,
        runc: sys::which("runc"),
        crun: sys::which("crun"),
        podman: sys::which("podman"),
        smoke: args.smoke,
        rounds: args.rounds,
        density,
        memory_pods,
        peer_max_pods: args.peer_max_pods,
        perf_out,
    }
}

/// The full run's results are kept in the repository; a smoke or partial run's are not.
fn out_path(args: &Args) -> PathBuf {
    args.out.clone().unwrap_or_else(|| {
        if args.smoke || args.only.is_some() {
            std::env::temp_dir().join("podrun-bench-smoke.json")
        } else {
            args.repo.join("bench/results.json")
        }
    })
}

/// cgroup directories the run may create at the top of each v1 hierarchy, and every
/// cgroup below them; those that did not exist before the run are removed after it
/// (podman leaves its pods' empty cgroups in the name=systemd hierarchy).
fn cgroup_dirs() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for h in hierarchies.flatten() {
        for top in [
            workloads::CGROUP_ROOT,
            kubelet::CGROUP_ROOT,
            "libpod_parent",
            "podrun-oci",
        ] {
            let p = h.path().join(top);
            if p.is_dir() {
                walk(&p, &mut out);
            }
        }
    }
    // Deepest first, so children go before their parents.
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn inner(args: &Args, work: PathBuf) -> Result<()> {
    let podrun = args
        .podrun
        .clone()
        .context("--podrun is set by the outer process")?;
    // crun refuses the hybrid layout; with the empty cgroup2 mount gone from this
    // namespace every system sees the same plain cgroup v1 hierarchies.
    let unified = Path::new("/sys/fs/cgroup/unified");
    let hybrid = sys::mounts_under(unified).contains(&unified.to_path_buf());
    if hybrid {
        sys::timed(Command::new("umount").arg(unified)).context("umount cgroup2")?;
    }
    let cgroups_before = cgroup_dirs();
    let ctx = ctx(args, podrun, work);
    let result = run(args, &ctx, hybrid);
    workloads::cleanup(&ctx);
    for dir in cgroup_dirs() {
        if !cgroups_before.contains(&dir) {
            // rmdir: only an empty cgroup goes; one still in use stays.
            let _ = std::fs::remove_dir(&dir);
        }
    }
    result
}

fn run(args: &Args, ctx: &Ctx, hybrid: bool) -> Result<()> {
    let mut report = Report {
        date: sys::now_utc(),
        machine: sys::machine(),
        busy: sys::busy(),
        loadavg_start: sys::loadavg(),
        mode: if ctx.smoke {
            "smoke: 1 round, smallest N".into()
        } else {
            format!(
                "full: {} rounds; API server: {} rounds; scheduling: {} rounds; kubelet: {} rounds",
                ctx.rounds.max(10),
                args.server_rounds.max(1),
                args.scheduling_rounds.max(1),
                args.kubelet_rounds.max(1)
            )
        },
        ..Default::default()
    };
    report
        .versions
        .push(("podrun".into(), sys::version(&ctx.podrun)));
    for (bin, path) in [
        ("runc", &ctx.runc),
        ("crun", &ctx.crun),
        ("podman", &ctx.podman),
    ] {
        if let Some(p) = path {
            report.versions.push((bin.into(), sys::version(p)));
        }
    }
    report.conditions = vec![
        format!(
            "all systems in one private mount namespace{}; cgroup v1, cgroupfs driver, no systemd",
            if hybrid {
                " with /sys/fs/cgroup/unified unmounted (crun refuses the hybrid layout)"
            } else {
                ""
            }
        ),
        "stdin and stdout of every timed command go to /dev/null, stderr to a pipe".into(),
        "lifecycle: one config.json for all, runc spec's default with args /bin/true, no \
         terminal and no ambient capabilities (runc spec lists ambient caps that are not \
         inheritable; runc and podrun skip them)"
            .into(),
        "podman: --runtime runc, storage driver overlay, its own root in the work dir, \
         containers.conf with default_ulimits nofile=20000:20000, nproc=32768:32768"
            .into(),
        "pods: examples/sidecar-pod.yaml less its informational `ports` list, and idle \
         busybox pods; the same YAML files for podrun and podman"
            .into(),
        "alternating systems within each round, one warm-up round first (not counted)".into(),
        format!(
            "versions: {}",
            report
                .versions
                .iter()
                .map(|(a, b)| format!("{a}: {b}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    ];
    if matches!(
        args.only.as_deref(),
        Some("server" | "scheduling" | "kubelet" | "proxy")
    ) {
        // Only the versions line applies; the workload's own notes say the rest.
        report.conditions.retain(|c| c.starts_with("versions: "));
    }
    let want = |w: &str| args.only.as_deref().is_none_or(|o| o == w);
    // The CNI, API server and scheduling workloads need no images or bundle; the kubelet
    // workload loads the busybox archive into its own store.
    match args.only.as_deref() {
        Some("cni" | "server" | "scheduling" | "proxy") => {}
        Some("kubelet") => workloads::ensure_image_archives(ctx)?,
        _ => {
            progress!("preparing images and bundle in {}", ctx.work.display());
            workloads::prepare(ctx)?;
        }
    }
    if want("lifecycle") {
        progress!("container lifecycle");
        workloads::lifecycle(ctx, &mut report);
    }
    if want("pod-start") {
        progress!("pod start");
        workloads::pod_start(ctx, &mut report);
    }
    if want("pods") {
        progress!("memory and density");
        workloads::pods(ctx, &mut report);
    }
    if want("image-pull") {
        progress!("image pull");
        pull::image_pull(ctx, &mut report);
    }
    if want("cni") {
        progress!("pod network setup and teardown (CNI)");
        cni::cni(ctx, &mut report);
    }
    if want("cri") {
        progress!("pod lifecycle over CRI (podrun agent vs containerd)");
        cri::cri(ctx, &mut report);
    }
    if want("server") {
        progress!("API server (podrun server, embedded store vs etcd)");
        let params = server::Params::new(ctx, &args.server_pods, args.server_rounds);
        server::server(ctx, &params, &mut report);
    }
    if want("scheduling") {
        progress!("scheduling throughput (podrun server with its controllers, simulated nodes)");
        let params = scheduling::Params::new(
            ctx,
            args.scheduling_nodes,
            &args.scheduling_pods,
            args.scheduling_rounds,
        );
        scheduling::scheduling(ctx, &params, &mut report);
    }
    if want("kubelet") {
        progress!("pod start through the cluster (podrun server + podrun agent as kubelet)");
        let params = kubelet::Params::new(ctx, args.kubelet_rounds);
        kubelet::kubelet(ctx, &params, &mut report);
    }
    if want("proxy") {
        progress!("service proxy: nftables rule updates and the ClusterIP hop");
        proxy::proxy(ctx, &mut report);
    }
    report.loadavg_end = sys::loadavg();
    report.busy |= sys::busy();
    report.compute_ratios();
    if args.only.is_none() {
        report.goals = goals(&report, ctx);
    } else if args.only.as_deref() == Some("server") {
        report.goals = vec![server_goal(&report, &ctx.podrun)];
    } else if args.only.as_deref() == Some("kubelet") {
        report.goals = vec![kubelet::goal(&report)];
    }
    let table = report.table();
    println!("{table}");
    let out = out_path(args);
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", out.display()))?;
    progress!("results in {}", out.display());
    // Peers may be missing or broken on a machine; podrun itself must not be.
    let podrun_failures: Vec<String> = report
        .skipped
        .iter()
        .filter(|s| s.system == "podrun" && s.reason.starts_with("failed"))
        .map(|s| format!("{}: {}", s.workload, s.reason))
        .collect();
    if !podrun_failures.is_empty() {
        bail!("podrun failed: {}", podrun_failures.join("; "));
    }
    Ok(())
}

fn goals(report: &Report, ctx: &Ctx) -> Vec<Goal> {
    let ratio_goal = |goal: &str, w: &str, m: &str, peer: &str| match report.ratio(w, m, peer) {
        Some(r) => Goal {
            goal: goal.into(),
            measured: format!("{:.2}x", r.ratio),
            met: r.goal_met,
        },
        None => Goal {
            goal: goal.into(),
            measured: "not measured".into(),
            met: None,
        },
    };
    let mut v = vec![
        ratio_goal(
            "container lifecycle <= 0.6x crun",
            "lifecycle",
            "run /bin/true",
            "crun",
        ),
        ratio_goal(
            "pod start <= 0.2x podman kube play",
            "pod-start",
            "up",
            "podman",
        ),
        ratio_goal(
            "CRI pod start <= 0.5x containerd",
            "cri",
            "pod start (run+create+start)",
            "containerd",
        ),
    ];
    v.push(match report.find("memory", "PSS per pod", "podrun") {
        Some(s) => {
            let m = s.median().unwrap_or(f64::MAX);
            Goal {
                goal: "per-pod resident cost <= 1 MiB PSS".into(),
                measured: format!("{m:.0} KiB median over {} pods", s.samples.len()),
                met: Some(m <= 1024.0),
            }
        }
        None => Goal {
            goal: "per-pod resident cost <= 1 MiB PSS".into(),
            measured: "not measured".into(),
            met: None,
        },
    });
    v.push(
        match report.find("memory", "CRI daemon idle RSS", "podrun") {
            Some(s) => {
                let kib = s.median().unwrap_or(f64::MAX);
                Goal {
                    goal: "agent idle RSS <= 20 MB".into(),
                    measured: format!("{:.1} MB", kib * 1024.0 / 1e6),
                    met: Some(kib * 1024.0 <= 20e6),
                }
            }
            None => Goal {
                goal: "agent idle RSS <= 20 MB".into(),
                measured: "not measured".into(),
                met: None,
            },
        },
    );
    v.push(server_goal(report, &ctx.podrun));
    v.push(kubelet::goal(report));
    let biggest = ctx.density.iter().copied().max().unwrap_or(0);
    let ran = report
        .find("density", &format!("start {biggest} pods"), "podrun")
        .is_some();
    v.push(Goal {
        goal: "250 pods running on this 2-core machine".into(),
        measured: if ran {
            format!("{biggest} pods all running")
        } else {
            format!("{biggest} pods did not all run")
        },
        met: if biggest >= 250 { Some(ran) } else { None },
    });
    v
}

/// podrun server's idle RSS on its embedded store, after start and after the runs.
fn server_goal(report: &Report, podrun: &Path) -> Goal {
    let goal = "podrun server idle RSS <= 30 MB (embedded store)";
    let start = report
        .find("server", "idle VmRSS after start", "podrun")
        .and_then(|s| s.median());
    let after = report
        .series
        .iter()
        .find(|s| {
            s.workload == "server"
                && s.system == "podrun"
                && s.metric.starts_with("idle VmRSS after the ")
        })
        .and_then(|s| s.median());
    let build = server::build_of(podrun);
    let mb = |kib: f64| kib * 1024.0 / 1e6;
    match start {
        Some(s) => {
            let worst = after.map_or(s, |a| a.max(s));
            Goal {
                goal: goal.into(),
                measured: match after {
                    Some(a) => format!(
                        "{:.1} MB after start, {:.1} MB after the pod runs ({build} build)",
                        mb(s),
                        mb(a)
                    ),
                    None => format!("{:.1} MB after start ({build} build)", mb(s)),
                },
                met: Some(mb(worst) <= 30.0),
            }
        }
        None => Goal {
            goal: goal.into(),
            measured: "not measured".into(),
            met: None,
        },
    }
}
