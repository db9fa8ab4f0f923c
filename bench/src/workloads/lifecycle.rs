//! Workload 1: the container lifecycle, `run --bundle` in one foreground command.

use std::process::Command;

use super::{ms, Ctx};
use crate::report::{Report, Series, Skipped};
use crate::sys;

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
