//! One function per subcommand: build what the library needs and call it.

pub mod agent;
mod controller_manager;
mod dns;
mod exec;
pub mod image;
mod logs;
mod output;
mod proxy;
mod run;
pub mod server;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use podrun_runtime::pod::{PodRuntime, RuntimeConfig};
use podrun_runtime::state::Paths;

use crate::{Cli, Command, ImageCommand, OciCommand};

pub fn runtime_config(cli: &Cli) -> Result<RuntimeConfig> {
    let mut config = RuntimeConfig::new(Paths::new(&cli.root, &cli.state, &cli.log_root));
    config.cgroup_driver = cli
        .cgroup_driver
        .parse()
        .map_err(|e| anyhow::anyhow!("--cgroup-driver: {e}"))?;
    podrun_runtime::state::validate_path_component("--cgroup-root", &cli.cgroup_root)
        .map_err(anyhow::Error::msg)?;
    config.cgroup_root = cli.cgroup_root.clone();
    config.hosts_dir = cli.hosts_dir.clone();
    config.pod_max_pids = match cli.pod_max_pids {
        -1 => None,
        n if n > 0 => Some(n),
        n => bail!("--pod-max-pids: {n}: must be a positive number, or -1 for no limit"),
    };
    config.network = match cli.network.as_str() {
        "none" => podrun_runtime::network::NetworkMode::None,
        "cni" => podrun_runtime::network::NetworkMode::Cni {
            conf_dirs: vec![cli.cni_conf_dir.clone()],
            bin_dirs: cli
                .cni_bin_dir
                .split(',')
                .filter(|d| !d.is_empty())
                .map(Into::into)
                .collect(),
            cache_dir: cli.root.join("cni/results"),
        },
        other => anyhow::bail!("--network: unknown value {other:?} (cni, none)"),
    };
    Ok(config)
}

pub fn runtime(cli: &Cli) -> Result<PodRuntime> {
    let rt = PodRuntime::new(runtime_config(cli)?)?;
    // Whatever a crash left behind goes before anything else happens.
    for pod in rt.reap()? {
        eprintln!("podrun: removed leftovers of pod {pod} (its monitor was gone)");
    }
    Ok(rt)
}

/// Let a closed stdout end podrun as it ends every well-mannered Unix tool: killed by
/// SIGPIPE, quietly (Rust ignores SIGPIPE, so a write would fail with EPIPE instead).
pub fn default_sigpipe() {
    // SAFETY: restoring a signal's default disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Exit as SIGPIPE would have ended podrun: after a command that handles a closed stdout
/// itself (a foreground `run` still stops and removes its pod) is done.
pub fn exit_as_on_sigpipe() -> ! {
    default_sigpipe();
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGPIPE);
    let _ = set.thread_unblock();
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGPIPE);
    std::process::exit(128 + libc::SIGPIPE)
}

/// Whether an error is a write to a closed pipe (or socket).
pub fn is_broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// An error and its causes on one line, as `{:#}` prints them, but without a cause its
/// outer message already quotes (library errors such as `{step}: {source}` both print
/// their source and return it as their cause).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn namespace(cli: &Cli) -> String {
    cli.namespace.clone().unwrap_or_else(|| "default".into())
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    // `run` handles a closed stdout itself (it must still remove its pod), `exec -t`
    // must restore the terminal, and the agent and monitor serve sockets.
    if !matches!(
        cli.command,
        Command::Run { .. }
            | Command::Exec { .. }
            | Command::Agent { .. }
            | Command::Server { .. }
            | Command::ControllerManager { .. }
            | Command::Proxy { .. }
            | Command::Dns { .. }
            | Command::Monitor { .. }
            | Command::Oci { .. }
    ) {
        default_sigpipe();
    }
    match &cli.command {
        Command::Agent {
            socket,
            stream_addr,
            kubelet,
        } => agent::agent(&cli, socket, stream_addr, kubelet),
        Command::Server { .. } => server::server(&cli),
        Command::ControllerManager {
            kubeconfig,
            node_cidrs,
        } => controller_manager::run(kubeconfig, node_cidrs),
        Command::Proxy {
            kubeconfig,
            node_name,
            node_ip,
            cluster_cidr,
            skip_cluster_ip,
            nft,
            cleanup,
        } => {
            if *cleanup {
                return proxy::cleanup(nft.clone());
            }
            // clap requires both unless --cleanup.
            let (Some(kubeconfig), Some(node_name)) = (kubeconfig, node_name) else {
                bail!("--kubeconfig and --node-name are required");
            };
            proxy::run(
                kubeconfig,
                podrun_agent::proxy::ProxyConfig {
                    node_name: node_name.clone(),
                    node_ips: node_ip.clone(),
                    cluster_cidr: *cluster_cidr,
                    skip_cluster_ips: skip_cluster_ip.clone(),
                    nft: nft.clone(),
                },
            )
        }
        Command::Dns {
            kubeconfig,
            listen,
            domain,
            upstream,
            resolv_conf,
        } => dns::run(dns::DnsArgs {
            kubeconfig,
            listen,
            domain,
            upstream,
            resolv_conf,
        }),
        Command::Monitor {
            ready_fd,
            state_dir,
        } => {
            // SAFETY: the launcher passes this descriptor to us and nobody else owns it.
            let ready = ready_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            if let Some(fd) = &ready {
                // Keep it out of every container.
                // SAFETY: fcntl on our own descriptor.
                unsafe {
                    libc::fcntl(
                        std::os::fd::AsRawFd::as_raw_fd(fd),
                        libc::F_SETFD,
                        libc::FD_CLOEXEC,
                    )
                };
            }
            podrun_runtime::monitor::run(state_dir, ready)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { detach, file, pull } => run::run(&cli, file, *detach, pull),
        Command::Oci {
            command: OciCommand::Run { bundle, id },
        } => {
            let driver = cli
                .cgroup_driver
                .parse()
                .map_err(|e| anyhow::anyhow!("--cgroup-driver: {e}"))?;
            // This process clones the container: it must stay single-threaded.
            let cgroups = podrun_runtime::cgroups::new_manager_single_threaded(driver)?;
            let code = podrun_runtime::oci::run_bundle(bundle, id, cgroups.as_ref())?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Pods { output } => output::pods(&runtime(&cli)?, output),
        Command::Ps { all, output } => output::ps(&runtime(&cli)?, *all, output),
        Command::Logs {
            follow,
            container,
            previous,
            pod,
        } => logs::logs(
            &runtime(&cli)?,
            &namespace(&cli),
            pod,
            container.as_deref(),
            *follow,
            *previous,
        ),
        Command::Exec {
            interactive,
            tty,
            container,
            pod,
            command,
        } => exec::exec(
            &runtime(&cli)?,
            &namespace(&cli),
            pod,
            container.as_deref(),
            command.clone(),
            *interactive,
            *tty,
        ),
        Command::Down { file, grace_period } => {
            let rt = runtime(&cli)?;
            let m = podrun_runtime::spec::load_manifest(file)?;
            let ns = cli
                .namespace
                .clone()
                .unwrap_or_else(|| m.namespace().to_owned());
            match rt.find(&ns, m.name()) {
                Ok(pod) => {
                    rt.stop(&pod, *grace_period, true)?;
                    println!("pod {ns}/{} removed", m.name());
                }
                Err(podrun_runtime::pod::PodError::NotFound(_)) => {
                    println!("pod {ns}/{} not found (nothing to do)", m.name())
                }
                Err(e) => return Err(e.into()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm { pods, grace_period } => {
            let rt = runtime(&cli)?;
            let ns = namespace(&cli);
            let mut failed = false;
            for name in pods {
                match rt
                    .find(&ns, name)
                    .and_then(|p| rt.stop(&p, *grace_period, true))
                {
                    Ok(()) => println!("{name}"),
                    Err(e) => {
                        eprintln!("podrun: {name}: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Rmi { images } => remove_images(&cli, images),
        Command::Images { output } => output::images(&runtime(&cli)?, output),
        Command::Pull(args) => image::pull(&cli, args),
        Command::Image { command } => match command {
            ImageCommand::Pull(args) => image::pull(&cli, args),
            ImageCommand::Inspect { images } => image::inspect(&cli, images),
            ImageCommand::Prune => image::prune(&cli),
            ImageCommand::Save { output, images } => image::save(&cli, images, output),
            ImageCommand::Ls { output } => output::images(&runtime(&cli)?, output),
            ImageCommand::Load { file } => {
                let rt = runtime(&cli)?;
                let loaded = rt
                    .images
                    .load_archive(file)
                    .with_context(|| format!("load {}", file.display()))?;
                if loaded.is_empty() {
                    bail!("{}: the archive holds no image", file.display());
                }
                for img in loaded {
                    let tags = if img.repo_tags.is_empty() {
                        vec!["<none>".to_owned()]
                    } else {
                        img.repo_tags.clone()
                    };
                    for t in tags {
                        println!("Loaded image: {t} ({})", &img.id);
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ImageCommand::Rm { images } => remove_images(&cli, images),
        },
    }
}

/// `image rm` and `rmi`: untag or remove images no pod uses.
fn remove_images(cli: &Cli, images: &[String]) -> Result<ExitCode> {
    let rt = runtime(cli)?;
    let in_use: Vec<String> = rt
        .list()?
        .iter()
        .flat_map(|p| p.plan.containers.iter().map(|c| c.image_id.clone()))
        .collect();
    let mut failed = false;
    for r in images {
        let res = rt
            .images
            .get(r)
            .map_err(anyhow::Error::from)
            .and_then(|img| match img {
                Some(img) if in_use.contains(&img.id) => {
                    bail!("image is in use by a pod")
                }
                Some(_) => Ok(rt.images.remove(r)?),
                None => bail!("image not found"),
            });
        match res {
            Ok(()) => println!("Deleted: {r}"),
            Err(e) => {
                eprintln!("podrun: {r}: {}", error_text(&e));
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::error_text;

    /// Shaped as a library's `#[error("{step}: {source}")]` variant.
    #[derive(Debug)]
    struct StepError {
        step: String,
        source: std::io::Error,
    }

    impl std::fmt::Display for StepError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.step, self.source)
        }
    }

    impl std::error::Error for StepError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn error_text_prints_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let io_text = io.to_string();
        let e = anyhow::Error::from(StepError {
            step: "read manifest".into(),
            source: io,
        })
        .context("pod.yaml");
        assert_eq!(
            error_text(&e),
            format!("pod.yaml: read manifest: {io_text}")
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&e), "outer: inner");
    }
}
