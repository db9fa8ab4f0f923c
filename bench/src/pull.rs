//! Workload 6: image pull + unpack from a registry on 127.0.0.1, cold (nothing local)
//! and warm (image already present): `podrun pull` against `ctr images pull` through a
//! private containerd daemon. The registry (Debian's docker-registry) and containerd
//! run from the work directory and are stopped by their PIDs at the end.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::report::{Report, Series, Skipped};
use crate::sys;
use crate::workloads::Ctx;

const IMAGE: &str = "nginx";

/// Daemons started for this workload; killed and reaped on drop.
#[derive(Default)]
pub struct Daemons(pub Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))
}

pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not come up within 15 s")
}

pub fn image_pull(ctx: &Ctx, report: &mut Report) {
    let mut daemons = Daemons::default();
    if let Err(e) = run(ctx, report, &mut daemons) {
        report.skipped.push(Skipped {
            workload: "image-pull".into(),
            system: "podrun vs containerd".into(),
            reason: format!("failed: {e:#}"),
        });
    }
    drop(daemons);
    for m in sys::mounts_under(&ctx.work.join("ctd")) {
        sys::quiet(Command::new("umount").arg("-l").arg(&m));
    }
}

/// docker-registry on 127.0.0.1 with its data in the work directory, and a
/// containerd-style hosts directory saying it speaks plain HTTP.
pub struct Registry {
    pub addr: String,
    pub hosts: PathBuf,
    skopeo: PathBuf,
}

impl Registry {
    pub fn start(ctx: &Ctx, daemons: &mut Daemons, name: &str) -> Result<Self> {
        let registry = sys::which("docker-registry").context("docker-registry is not installed")?;
        let skopeo = sys::which("skopeo").context("skopeo is not installed")?;
        let dir = ctx.work.join(name);
        std::fs::create_dir_all(dir.join("data"))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )?;
        daemons.0.push(spawn(
            Command::new(registry)
                .arg("serve")
                .arg(dir.join("config.yml")),
            &dir.join("log"),
        )?);
        wait_for("the registry", || TcpStream::connect(&addr).is_ok())?;
        // containerd-style hosts.toml, read by podrun and containerd: plain HTTP to 127.0.0.1.
        let hosts = dir.join("hosts");
        std::fs::create_dir_all(hosts.join(&addr))?;
        std::fs::write(
            hosts.join(&addr).join("hosts.toml"),
            format!(
                "server = \"http://{addr}\"\n\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
        Ok(Registry {
            addr,
            hosts,
            skopeo,
        })
    }

    /// Copy an image (a skopeo source such as `oci-archive:PATH`) to `<addr>/<name>`;
    /// the full reference.
    pub fn push(&self, source: &str, name: &str) -> Result<String> {
        let reference = format!("{}/{name}", self.addr);
        sys::timed(
            Command::new(&self.skopeo)
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .arg(source)
                .arg(format!("docker://{reference}")),
        )
        .with_context(|| format!("push {source} to the local registry"))?;
        Ok(reference)
    }
}

fn run(ctx: &Ctx, report: &mut Report, daemons: &mut Daemons) -> Result<()> {
    let registry = Registry::start(ctx, daemons, "registry")?;
    let reference = registry.push(
        &format!(
            "oci-archive:{}",
            ctx.repo.join(format!("images/out/{IMAGE}.tar")).display()
        ),
        &format!("library/{IMAGE}:latest"),
    )?;
    let hosts = registry.hosts.clone();

    let ctr = match start_containerd(ctx, daemons) {
        Ok(c) => Some(c),
        Err(e) => {
            report.skipped.push(Skipped {
                workload: "image-pull".into(),
                system: "containerd".into(),
                reason: format!("not available: {e:#}"),
            });
            None
        }
    };
    let rounds = if ctx.smoke { 1 } else { ctx.rounds.max(10) };
    let mut series: Vec<Series> = Vec::new();
    let mut push = |metric: &str, system: &str, d: Duration| match series
        .iter_mut()
        .find(|s| s.metric == metric && s.system == system)
    {
        Some(s) => s.samples.push(d.as_secs_f64() * 1000.0),
        None => {
            let mut s = Series::new("image-pull", metric, system, "ms");
            s.samples.push(d.as_secs_f64() * 1000.0);
            series.push(s);
        }
    };
    for round in 0..=rounds {
        // podrun: a fresh root is a cold store; pulling again into it is the warm case.
        let root = ctx.work.join(format!("pull{round}"));
        let pull = || {
            let mut c = ctx.podrun_at(&root);
            c.arg("pull").arg("--hosts-dir").arg(&hosts).arg(&reference);
            c
        };
        let cold = sys::timed(&mut pull()).context("podrun pull (cold)")?;
        let warm = sys::timed(&mut pull()).context("podrun pull (warm)")?;
        let _ = std::fs::remove_dir_all(&root);
        if round > 0 {
            push("cold", "podrun", cold);
            push("warm", "podrun", warm);
        }
        if let Some(ctr) = &ctr {
            let pull = || {
                let mut c = ctr.cmd();
                c.args(["images", "pull", "--hosts-dir"])
                    .arg(&hosts)
                    .arg(&reference);
                c
            };
            let cold = sys::timed(&mut pull()).context("ctr images pull (cold)")?;
            let warm = sys::timed(&mut pull()).context("ctr images pull (warm)")?;
            // Removing the image with --sync garbage-collects its content and
            // snapshots, so the next round is cold again.
            sys::timed(ctr.cmd().args(["images", "rm", "--sync"]).arg(&reference))?;
            if round > 0 {
                push("cold", "containerd", cold);
                push("warm", "containerd", warm);
            }
        }
    }
    for s in &mut series {
        s.note = Some(format!(
            "{IMAGE} ({}) from docker-registry on 127.0.0.1, plain HTTP via the same hosts.toml; \
             containerd: ctr images pull (fetch + unpack into overlayfs snapshots)",
            human_size(&ctx.repo.join(format!("images/out/{IMAGE}.tar")))
        ));
    }
    report.series.extend(series);
    Ok(())
}

fn human_size(p: &Path) -> String {
    std::fs::metadata(p)
        .map(|m| format!("{:.1} MB archive", m.len() as f64 / 1e6))
        .unwrap_or_default()
}

struct Ctr {
    socket: PathBuf,
}

impl Ctr {
    fn cmd(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.socket).args(["-n", "bench"]);
        c
    }
}

/// containerd with root, state, socket and plugin dirs in the work directory, the CRI
/// plugin off (this workload does not use it).
fn start_containerd(ctx: &Ctx, daemons: &mut Daemons) -> Result<Ctr> {
    let bin = sys::which("containerd").context("containerd is not installed")?;
    sys::which("ctr").context("ctr is not installed")?;
    let d = ctx.work.join("ctd");
    std::fs::create_dir_all(&d)?;
    let socket = d.join("c.sock");
    std::fs::write(
        d.join("config.toml"),
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
        ),
    )?;
    daemons.0.push(spawn(
        Command::new(bin).arg("--config").arg(d.join("config.toml")),
        &d.join("log"),
    )?);
    let ctr = Ctr { socket };
    wait_for("containerd", || {
        sys::output(ctr.cmd().args(["version"])).is_ok()
    })?;
    Ok(ctr)
}
