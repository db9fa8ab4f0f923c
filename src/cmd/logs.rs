//! `podrun logs`, and the log streaming of a foreground `podrun run`: read the CRI log
//! files the monitor writes and print their lines.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use podrun_runtime::logs::{read_entries, Stream};
use podrun_runtime::plan::PodPlan;
use podrun_runtime::pod::PodRuntime;

/// Follows the log files of a pod's containers (every restart, in order).
pub struct Tailer {
    plan: PodPlan,
    only: Option<String>,
    prefix: bool,
    offsets: HashMap<PathBuf, u64>,
}

impl Tailer {
    pub fn new(plan: &PodPlan, only: Option<&str>, single: bool) -> Self {
        Self {
            plan: plan.clone(),
            only: only.map(str::to_owned),
            prefix: !single,
            offsets: HashMap::new(),
        }
    }

    /// Print whatever was appended since the last call.
    pub fn poll(&mut self) -> std::io::Result<()> {
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        for c in &self.plan.containers {
            if self.only.as_deref().is_some_and(|o| o != c.name) {
                continue;
            }
            let dir = self.plan.log_dir.join(&c.name);
            let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.strip_suffix(".log")?.parse().ok()?;
                    Some((n, e.path()))
                })
                .collect();
            files.sort();
            for (_, path) in files {
                let off = self.offsets.get(&path).copied().unwrap_or(0);
                let Ok((entries, next)) = read_entries(&path, off) else {
                    continue;
                };
                self.offsets.insert(path, next);
                for e in entries {
                    let mut line = Vec::new();
                    if self.prefix {
                        line.extend_from_slice(format!("[{}] ", c.name).as_bytes());
                    }
                    line.extend_from_slice(&e.content);
                    line.push(b'\n');
                    match e.stream {
                        Stream::Stdout => stdout.lock().write_all(&line)?,
                        Stream::Stderr => stderr.lock().write_all(&line)?,
                    }
                }
            }
        }
        stdout.lock().flush()?;
        Ok(())
    }
}

pub fn logs(
    rt: &PodRuntime,
    ns: &str,
    pod: &str,
    container: Option<&str>,
    follow: bool,
    previous: bool,
) -> Result<ExitCode> {
    let info = rt.find(ns, pod)?;
    let plan = &info.plan;
    let name = match container {
        Some(c) => {
            if plan.container(c).is_none() {
                let names: Vec<&str> = plan.containers.iter().map(|c| c.name.as_str()).collect();
                bail!(
                    "container {c:?} is not valid for pod {pod}; choose one of: {}",
                    names.join(", ")
                );
            }
            c.to_owned()
        }
        None => {
            let apps: Vec<&str> = plan
                .containers
                .iter()
                .filter(|c| c.kind == podrun_runtime::plan::ContainerKind::App)
                .map(|c| c.name.as_str())
                .collect();
            if apps.len() > 1 {
                eprintln!(
                    "Defaulted container {:?} out of: {}",
                    apps[0],
                    apps.join(", ")
                );
            }
            apps.first().copied().unwrap_or_default().to_owned()
        }
    };
    let status = rt.status(&info);
    let restarts = status
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == name))
        .map(|c| c.restart_count)
        .unwrap_or(0);
    if previous {
        if restarts == 0 {
            bail!("previous terminated container {name:?} in pod {pod:?} not found");
        }
        let path = plan
            .log_dir
            .join(&name)
            .join(format!("{}.log", restarts - 1));
        let (entries, _) = read_entries(&path, 0)?;
        let mut out = std::io::stdout().lock();
        for e in entries {
            out.write_all(&e.content)?;
            out.write_all(b"\n")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut tailer = Tailer::new(plan, Some(&name), true);
    // Without -f, only the current run, like kubectl.
    if !follow {
        let path = plan.log_dir.join(&name).join(format!("{restarts}.log"));
        let (entries, _) = read_entries(&path, 0).unwrap_or_default();
        let mut out = std::io::stdout().lock();
        for e in entries {
            out.write_all(&e.content)?;
            out.write_all(b"\n")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        tailer.poll()?;
        match rt.find(ns, pod) {
            Ok(p) if p.alive => {}
            _ => {
                tailer.poll().ok();
                return Ok(ExitCode::SUCCESS);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
