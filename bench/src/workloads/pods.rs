//! Workloads 4 and 5: N idle pods, their memory and the time to start and remove them.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{ms, remove_podman_pods, remove_podrun_pods, Ctx};
use crate::report::{Report, Series, Skipped};
use crate::sys::{self, Memory};

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

pub(super) fn podrun_pods(ctx: &Ctx) -> Result<Vec<Value>> {
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
