//! Tables and machine-readable output of `pods`, `ps` and `images`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use podrun_runtime::pod::{PodInfo, PodRuntime};
use podrun_runtime::status::{ContainerState, PodPhase};
use serde::Serialize;

fn age(t: chrono::DateTime<chrono::Utc>) -> String {
    let s = (chrono::Utc::now() - t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<w$}   ", c, w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn emit<T: Serialize>(output: &str, value: &T) -> Result<bool> {
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(value)?),
        // Through JSON's data model, as kubectl prints YAML: a container state is a map
        // (`state: {terminated: ...}`), not a YAML tag (`state: !terminated`).
        "yaml" => print!(
            "{}",
            serde_norway::to_string(&serde_json::to_value(value)?)?
        ),
        "table" | "wide" => return Ok(false),
        other => bail!("--output: unknown format {other:?} (table, wide, json, yaml)"),
    }
    Ok(true)
}

/// What kubectl prints in the STATUS column.
fn pod_status_text(p: &PodInfo, rt: &PodRuntime) -> (String, String, u32) {
    let status = if p.alive { rt.status(p) } else { None };
    let Some(s) = status else {
        return (PodPhase::Unknown.to_string(), "0/0".into(), 0);
    };
    let (ready, total) = s.ready_count();
    let restarts: u32 = s.containers.iter().map(|c| c.restart_count).sum();
    let mut text = s.phase.to_string();
    if s.terminating {
        text = "Terminating".into();
    } else {
        for c in s.containers.iter().filter(|c| !c.init) {
            match &c.state {
                ContainerState::Waiting { reason, .. } if reason != "PodInitializing" => {
                    text = reason.clone()
                }
                ContainerState::Terminated { reason, .. }
                    if s.phase == PodPhase::Running || reason != "Completed" =>
                {
                    text = reason.clone()
                }
                _ => {}
            }
        }
        if s.phase == PodPhase::Pending {
            let inits: Vec<_> = s.containers.iter().filter(|c| c.init).collect();
            let done = inits
                .iter()
                .filter(|c| {
                    matches!(c.state, ContainerState::Terminated { exit_code: 0, .. })
                        || matches!(c.state, ContainerState::Running { .. })
                })
                .count();
            if !inits.is_empty() {
                text = format!("Init:{done}/{}", inits.len());
            }
        }
    }
    (text, format!("{ready}/{total}"), restarts)
}

#[derive(Serialize)]
struct PodRow {
    name: String,
    namespace: String,
    id: String,
    uid: String,
    status: String,
    ready: String,
    restarts: u32,
    ip: Option<String>,
    created: chrono::DateTime<chrono::Utc>,
    status_detail: Option<podrun_runtime::status::PodStatus>,
}

pub fn pods(rt: &PodRuntime, output: &str) -> Result<ExitCode> {
    let pods = rt.list()?;
    let rows: Vec<PodRow> = pods
        .iter()
        .map(|p| {
            let (status, ready, restarts) = pod_status_text(p, rt);
            PodRow {
                name: p.plan.name.clone(),
                namespace: p.plan.namespace.clone(),
                id: p.plan.id.clone(),
                uid: p.plan.uid.clone(),
                status,
                ready,
                restarts,
                ip: p.plan.network.as_ref().and_then(|n| n.pod_ip.clone()),
                created: p.plan.created_at,
                status_detail: if p.alive { rt.status(p) } else { None },
            }
        })
        .collect();
    if emit(output, &rows)? {
        return Ok(ExitCode::SUCCESS);
    }
    let wide = output == "wide";
    let mut header = vec![
        "NAME",
        "NAMESPACE",
        "STATUS",
        "READY",
        "RESTARTS",
        "IP",
        "AGE",
    ];
    if wide {
        header.extend(["ID", "CGROUP"]);
    }
    let table = rows
        .iter()
        .zip(&pods)
        .map(|(r, p)| {
            let mut v = vec![
                r.name.clone(),
                r.namespace.clone(),
                r.status.clone(),
                r.ready.clone(),
                r.restarts.to_string(),
                r.ip.clone().unwrap_or_else(|| "<none>".into()),
                age(r.created),
            ];
            if wide {
                v.push(r.id[..13].to_owned());
                v.push(p.plan.cgroup_path.clone());
            }
            v
        })
        .collect();
    print_table(&header, table);
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct ContainerRow {
    id: String,
    pod: String,
    namespace: String,
    name: String,
    image: String,
    state: String,
    exit_code: Option<i32>,
    restarts: u32,
    pid: Option<i32>,
}

pub fn ps(rt: &PodRuntime, all: bool, output: &str) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for p in rt.list()? {
        let status = if p.alive { rt.status(&p) } else { None };
        for c in &p.plan.containers {
            let st = status
                .as_ref()
                .and_then(|s| s.containers.iter().find(|x| x.id == c.id));
            let (state, exit, pid, restarts) = match st {
                Some(s) => (
                    match &s.state {
                        ContainerState::Waiting { reason, .. } => format!("Waiting ({reason})"),
                        other => other.name().to_owned(),
                    },
                    // A container running again has no exit code; one waiting to be
                    // restarted shows how its last run ended.
                    match &s.state {
                        ContainerState::Running { .. } => None,
                        ContainerState::Terminated { exit_code, .. } => Some(*exit_code),
                        ContainerState::Waiting { .. } => {
                            s.last_state.as_ref().and_then(|l| l.exit_code())
                        }
                    },
                    match s.state {
                        ContainerState::Running { pid, .. } => Some(pid),
                        _ => None,
                    },
                    s.restart_count,
                ),
                None => ("Unknown".to_owned(), None, None, 0),
            };
            if !all && !state.starts_with("Running") {
                continue;
            }
            rows.push(ContainerRow {
                id: c.id.clone(),
                pod: p.plan.name.clone(),
                namespace: p.plan.namespace.clone(),
                name: c.name.clone(),
                image: c.image.clone(),
                state,
                exit_code: exit,
                restarts,
                pid,
            });
        }
    }
    if emit(output, &rows)? {
        return Ok(ExitCode::SUCCESS);
    }
    let table = rows
        .iter()
        .map(|r| {
            vec![
                r.id[..13].to_owned(),
                r.pod.clone(),
                r.name.clone(),
                r.image.clone(),
                r.state.clone(),
                r.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.restarts.to_string(),
            ]
        })
        .collect();
    print_table(
        &["ID", "POD", "NAME", "IMAGE", "STATE", "EXIT", "RESTARTS"],
        table,
    );
    Ok(ExitCode::SUCCESS)
}

pub fn images(rt: &PodRuntime, output: &str) -> Result<ExitCode> {
    let images = rt.images.list()?;
    if emit(output, &images)? {
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    for img in &images {
        let id = img.id.trim_start_matches("sha256:");
        let short = &id[..id.len().min(12)];
        let size = format!("{:.1}MB", img.size as f64 / 1e6);
        if img.repo_tags.is_empty() {
            rows.push(vec![
                "<none>".into(),
                "<none>".into(),
                short.to_owned(),
                size.clone(),
            ]);
        }
        for t in &img.repo_tags {
            let (repo, tag) = match t.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r.to_owned(), t.to_owned()),
                _ => (t.clone(), "<none>".into()),
            };
            rows.push(vec![repo, tag, short.to_owned(), size.clone()]);
        }
    }
    print_table(&["REPOSITORY", "TAG", "IMAGE ID", "SIZE"], rows);
    Ok(ExitCode::SUCCESS)
}
