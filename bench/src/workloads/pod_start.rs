//! Workload 2: pod start, from YAML to "both containers running and `curl localhost`
//! answered", and down again.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{ms, Ctx};
use crate::report::{Report, Series, Skipped};
use crate::sys;

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
