//! `podrun pull` and `podrun image pull|inspect|prune|save`: build the options, call the
//! image store, print progress and results.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use podrun_runtime::image::hosts::Auth;
use podrun_runtime::image::pull::{ProgressEvent, PullOptions};
use podrun_runtime::image::ImageStore;

use crate::Cli;

#[derive(clap::Args)]
pub struct PullArgs {
    /// os/arch[/variant] to take from a multi-platform image (default: this host's).
    #[arg(long)]
    platform: Option<String>,
    /// Docker config.json with registry credentials (default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json).
    #[arg(long)]
    docker_config: Option<PathBuf>,
    /// Username for the image's registry; the password comes from PODRUN_REGISTRY_PASSWORD.
    #[arg(short, long)]
    username: Option<String>,
    #[arg(
        long,
        env = "PODRUN_REGISTRY_PASSWORD",
        hide_env_values = true,
        hide = true
    )]
    password: Option<String>,
    /// Seconds without any data before a download fails.
    #[arg(long, default_value_t = 60)]
    stall_timeout: u64,
    /// Print only the image id.
    #[arg(short, long)]
    quiet: bool,
    reference: String,
}

fn store(cli: &Cli) -> Result<ImageStore> {
    Ok(ImageStore::open(&cli.root)?)
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1}kB", b / 1e3)
    } else {
        format!("{bytes}B")
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

/// One line per layer. On a terminal the lines are redrawn in place with bytes, rate and
/// ETA; otherwise each state change prints one plain line.
struct Progress {
    tty: bool,
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    order: Vec<String>,
    lines: BTreeMap<String, LayerLine>,
    drawn: usize,
}

struct LayerLine {
    status: String,
    downloaded: u64,
    size: u64,
    started: Instant,
}

impl Progress {
    fn event(&self, e: &ProgressEvent) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut plain: Option<String> = None;
        let (digest, status) = match e {
            ProgressEvent::Resolved {
                reference,
                digest,
                layers,
            } => {
                let line = format!("{reference}: resolved to {digest} ({layers} layers)");
                drop(s);
                println!("{line}");
                return;
            }
            ProgressEvent::LayerExists { digest, size } => {
                plain = Some(format!(
                    "{}: already present ({})",
                    short(digest),
                    human(*size)
                ));
                (digest, "Already exists".to_string())
            }
            ProgressEvent::LayerStarted { digest, size } => {
                plain = Some(format!("{}: downloading ({})", short(digest), human(*size)));
                (digest, "Downloading".to_string())
            }
            ProgressEvent::LayerProgress {
                digest,
                downloaded,
                size,
            } => {
                if let Some(l) = s.lines.get_mut(digest) {
                    l.downloaded = *downloaded;
                    l.size = *size;
                }
                (digest, "Downloading".to_string())
            }
            ProgressEvent::LayerDownloaded { digest, size } => {
                plain = Some(format!("{}: downloaded ({})", short(digest), human(*size)));
                (digest, "Download complete".to_string())
            }
            ProgressEvent::LayerRetrying {
                digest,
                attempt,
                error,
            } => {
                plain = Some(format!("{}: retry {attempt} after: {error}", short(digest)));
                (digest, format!("Retrying ({attempt})"))
            }
            ProgressEvent::LayerUnpacked { digest } => {
                plain = Some(format!("{}: unpacked", short(digest)));
                (digest, "Pull complete".to_string())
            }
        };
        if !s.lines.contains_key(digest) {
            s.order.push(digest.clone());
            s.lines.insert(
                digest.clone(),
                LayerLine {
                    status: String::new(),
                    downloaded: 0,
                    size: 0,
                    started: Instant::now(),
                },
            );
        }
        if let Some(l) = s.lines.get_mut(digest) {
            if let ProgressEvent::LayerStarted { size, .. } = e {
                l.started = Instant::now();
                l.size = *size;
            }
            l.status = status;
        }
        if !self.tty {
            if let Some(p) = plain {
                println!("{p}");
            }
            return;
        }
        self.redraw(&mut s);
    }

    fn redraw(&self, s: &mut ProgressState) {
        let mut out = std::io::stdout().lock();
        if s.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", s.drawn);
        }
        for d in &s.order {
            let l = &s.lines[d];
            let mut text = format!("{}: {}", short(d), l.status);
            if l.status == "Downloading" && l.size > 0 {
                let secs = l.started.elapsed().as_secs_f64().max(0.001);
                let rate = l.downloaded as f64 / secs;
                let width = 30usize;
                let done = ((l.downloaded as f64 / l.size as f64) * width as f64) as usize;
                let eta = if rate > 0.0 {
                    format!(
                        "{:.0}s",
                        (l.size.saturating_sub(l.downloaded)) as f64 / rate
                    )
                } else {
                    "?".into()
                };
                text.push_str(&format!(
                    " [{}{}] {}/{} {}/s eta {eta}",
                    "=".repeat(done.min(width)),
                    " ".repeat(width - done.min(width)),
                    human(l.downloaded),
                    human(l.size),
                    human(rate as u64),
                ));
            }
            let _ = writeln!(out, "\x1b[2K{text}");
        }
        s.drawn = s.order.len();
        let _ = out.flush();
    }
}

pub fn pull(cli: &Cli, args: &PullArgs) -> Result<ExitCode> {
    let store = store(cli)?;
    let progress = Progress {
        tty: std::io::stdout().is_terminal(),
        state: Mutex::new(ProgressState::default()),
    };
    let report = |e: &ProgressEvent| progress.event(e);
    let mut opts = PullOptions {
        hosts_dir: cli.hosts_dir.clone(),
        docker_config: args.docker_config.clone(),
        stall_timeout: Duration::from_secs(args.stall_timeout.max(1)),
        progress: if args.quiet { None } else { Some(&report) },
        ..PullOptions::default()
    };
    if let Some(p) = &args.platform {
        opts.platform = p.parse()?;
    }
    match (&args.username, &args.password) {
        (Some(u), Some(p)) => {
            opts.auth = Some(Auth::Basic {
                username: u.clone(),
                password: p.clone(),
            })
        }
        (Some(_), None) => bail!("--username needs the password in PODRUN_REGISTRY_PASSWORD"),
        _ => {}
    }
    let img = store.pull(&args.reference, &opts)?;
    if args.quiet {
        println!("{}", img.id);
    } else {
        if let Some(d) = img.repo_digests.first() {
            println!(
                "Digest: {}",
                d.rsplit_once('@').map(|(_, d)| d).unwrap_or(d)
            );
        }
        println!("Pulled {} ({})", args.reference, img.id);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(cli: &Cli, images: &[String]) -> Result<ExitCode> {
    let store = store(cli)?;
    let mut out = Vec::new();
    let mut failed = false;
    for r in images {
        match store.get(r)? {
            Some(img) => {
                let config = store.config_document(&img)?;
                out.push(serde_json::json!({"image": img, "config": config}));
            }
            None => {
                eprintln!("podrun: {r}: image not found");
                failed = true;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn prune(cli: &Cli) -> Result<ExitCode> {
    let rt = super::runtime(cli)?;
    let in_use: Vec<String> = rt
        .list()?
        .iter()
        .flat_map(|p| p.plan.containers.iter().map(|c| c.image_id.clone()))
        .collect();
    let removed = rt.images.prune(&in_use)?;
    for id in &removed {
        println!("Deleted: {id}");
    }
    println!("{} image(s) removed", removed.len());
    Ok(ExitCode::SUCCESS)
}

pub fn save(cli: &Cli, images: &[String], output: &std::path::Path) -> Result<ExitCode> {
    let store = store(cli)?;
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    store.save(&refs, output)?;
    println!("Saved {} to {}", images.join(", "), output.display());
    Ok(ExitCode::SUCCESS)
}
