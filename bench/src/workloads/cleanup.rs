//! Cleanup: everything the workloads created, whatever state a failure left.

use std::process::Command;

use super::pods::podrun_pods;
use super::Ctx;
use crate::sys;

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
