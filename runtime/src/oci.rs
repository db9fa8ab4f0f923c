//! `podrun oci run --bundle DIR ID`: run one container from an OCI runtime bundle
//! (config.json + rootfs) in the foreground, as `runc run` does, with podrun's own
//! process creation. It covers what a runtime-spec bundle from `runc spec` or
//! `oci-runtime-tool` uses: process, root, hostname, namespaces, cgroupsPath and
//! resources, masked and read-only paths, and bind mounts. Full runc CLI compatibility
//! (create/start/state/delete as separate steps) is not provided.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use serde::Deserialize;

use crate::cgroups::{CgroupManager, Resources};
use crate::plan::ProcessSpec;
use crate::process::{self, ChildSetup, Stdio};
use crate::rootfs::{MountPlan, Propagation, RootfsSpec};
use crate::security::capabilities::CapabilitySet;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    #[error("cgroup: {0}")]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("{0}")]
    Process(#[from] crate::process::ProcessError),
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    process: Process,
    root: Option<Root>,
    hostname: Option<String>,
    #[serde(default)]
    mounts: Vec<Mount>,
    #[serde(default)]
    linux: Linux,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    #[serde(default)]
    terminal: bool,
    #[serde(default)]
    user: User,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    cwd: String,
    capabilities: Option<Capabilities>,
    #[serde(default)]
    no_new_privileges: bool,
    oom_score_adj: Option<i32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct User {
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    additional_gids: Vec<u32>,
}

#[derive(Debug, Default, Deserialize)]
struct Capabilities {
    #[serde(default)]
    bounding: Vec<String>,
    #[serde(default)]
    effective: Vec<String>,
    #[serde(default)]
    inheritable: Vec<String>,
    #[serde(default)]
    permitted: Vec<String>,
    #[serde(default)]
    ambient: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Root {
    path: PathBuf,
    #[serde(default)]
    readonly: bool,
}

#[derive(Debug, Deserialize)]
struct Mount {
    destination: PathBuf,
    #[serde(rename = "type", default)]
    kind: String,
    source: Option<PathBuf>,
    #[serde(default)]
    options: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Linux {
    #[serde(default)]
    namespaces: Vec<Namespace>,
    cgroups_path: Option<String>,
    resources: Option<LinuxResources>,
    masked_paths: Option<Vec<String>>,
    readonly_paths: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct LinuxResources {
    memory: Option<MemoryResources>,
    cpu: Option<CpuResources>,
    pids: Option<PidsResources>,
}

#[derive(Debug, Default, Deserialize)]
struct MemoryResources {
    limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct CpuResources {
    shares: Option<u64>,
    quota: Option<i64>,
    period: Option<u64>,
    cpus: Option<String>,
    mems: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct PidsResources {
    limit: Option<i64>,
}

/// What `run_bundle` needs from a parsed config.json.
struct Prepared {
    flags: CloneFlags,
    rootfs: RootfsSpec,
    process: ProcessSpec,
    cgroup_path: String,
    resources: Resources,
}

fn prepare(bundle: &Path, id: &str) -> Result<Prepared, OciError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|source| OciError::Read {
        path: path.clone(),
        source,
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&text);
    let spec: Spec = serde_path_to_error::deserialize(de).map_err(|e| OciError::Invalid {
        path: path.clone(),
        field: "config",
        message: e.to_string(),
    })?;
    let invalid = |field, message: String| OciError::Invalid {
        path: path.clone(),
        field,
        message,
    };
    if spec.process.args.is_empty() {
        return Err(invalid("process.args", "must not be empty".into()));
    }
    let root = spec
        .root
        .ok_or_else(|| invalid("root", "required".into()))?;
    let root_path = if root.path.is_absolute() {
        root.path
    } else {
        bundle.join(root.path)
    };
    if !root_path.is_dir() {
        return Err(invalid(
            "root.path",
            format!("{} is not a directory", root_path.display()),
        ));
    }
    let mut flags = CloneFlags::empty();
    for ns in &spec.linux.namespaces {
        if ns.path.is_some() {
            return Err(invalid(
                "linux.namespaces",
                format!("joining an existing {} namespace is not supported", ns.kind),
            ));
        }
        flags |= match ns.kind.as_str() {
            "mount" => CloneFlags::CLONE_NEWNS,
            "pid" => CloneFlags::CLONE_NEWPID,
            "network" => CloneFlags::CLONE_NEWNET,
            "ipc" => CloneFlags::CLONE_NEWIPC,
            "uts" => CloneFlags::CLONE_NEWUTS,
            "cgroup" => CloneFlags::CLONE_NEWCGROUP,
            "user" => {
                return Err(invalid(
                    "linux.namespaces",
                    "user namespaces are not supported".into(),
                ))
            }
            other => {
                return Err(invalid(
                    "linux.namespaces",
                    format!("unknown namespace type {other:?}"),
                ))
            }
        };
    }
    if !flags.contains(CloneFlags::CLONE_NEWNS) {
        return Err(invalid(
            "linux.namespaces",
            "a mount namespace is required".into(),
        ));
    }
    // Bind mounts of the config; proc, dev, sysfs and friends are set up as for pods.
    let mounts = spec
        .mounts
        .iter()
        .filter(|m| m.kind == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind"))
        .filter_map(|m| {
            Some(MountPlan {
                source: m.source.clone()?,
                destination: m.destination.clone(),
                readonly: m.options.iter().any(|o| o == "ro"),
                propagation: Propagation::Private,
                file: m.source.as_ref().is_some_and(|s| s.is_file()),
            })
        })
        .collect();
    let caps = spec.process.capabilities.unwrap_or_default();
    // The kernel raises an ambient capability only if it is both permitted and
    // inheritable; runc skips the others (e.g. `runc spec`'s default), so do we.
    let ambient: Vec<String> = caps
        .ambient
        .iter()
        .filter(|c| caps.permitted.contains(c) && caps.inheritable.contains(c))
        .cloned()
        .collect();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let r = spec.linux.resources.unwrap_or_default();
    let cpu = r.cpu.unwrap_or_default();
    Ok(Prepared {
        flags,
        rootfs: RootfsSpec {
            rootfs: root_path,
            layers: Vec::new(),
            upper: PathBuf::new(),
            work: PathBuf::new(),
            readonly: root.readonly,
            privileged: false,
            mounts,
            dev_shm: None,
            masked_paths: spec.linux.masked_paths.unwrap_or_default(),
            readonly_paths: spec.linux.readonly_paths.unwrap_or_default(),
        },
        process: ProcessSpec {
            args: spec.process.args,
            env: spec.process.env,
            cwd: if spec.process.cwd.is_empty() {
                "/".into()
            } else {
                spec.process.cwd
            },
            uid: spec.process.user.uid,
            gid: spec.process.user.gid,
            additional_gids: spec.process.user.additional_gids,
            capabilities: CapabilitySet {
                bounding: sorted(caps.bounding),
                effective: sorted(caps.effective),
                permitted: sorted(caps.permitted),
                inheritable: sorted(caps.inheritable),
                ambient: sorted(ambient),
            },
            no_new_privs: spec.process.no_new_privileges,
            oom_score_adj: spec.process.oom_score_adj,
            tty: spec.process.terminal,
            hostname: spec
                .hostname
                .filter(|_| flags.contains(CloneFlags::CLONE_NEWUTS)),
        },
        cgroup_path: spec
            .linux
            .cgroups_path
            .map(|p| p.trim_start_matches('/').to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| format!("podrun-oci/{id}")),
        resources: Resources {
            cpu_shares: cpu.shares,
            cpu_quota: cpu.quota,
            cpu_period: cpu.period,
            memory_limit: r.memory.and_then(|m| m.limit),
            pids_limit: r.pids.and_then(|p| p.limit),
            cpuset_cpus: cpu.cpus,
            cpuset_mems: cpu.mems,
            restrict_devices: true,
            device_rules: Vec::new(),
        },
    })
}

/// Run the bundle's process to completion with this process's stdio; returns its exit
/// code (128 + signal when killed). Call from a single-threaded process.
pub fn run_bundle(bundle: &Path, id: &str, cgroups: &dyn CgroupManager) -> Result<i32, OciError> {
    crate::state::validate_path_component("container id", id).map_err(|message| {
        OciError::Invalid {
            path: bundle.join("config.json"),
            field: "id",
            message,
        }
    })?;
    let p = prepare(bundle, id)?;
    if p.process.tty {
        return Err(OciError::Invalid {
            path: bundle.join("config.json"),
            field: "process.terminal",
            message: "terminal mode needs a console socket, which is not supported".into(),
        });
    }
    cgroups.ensure(&p.cgroup_path, &p.resources)?;
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
    let result = (|| -> Result<i32, OciError> {
        let io_err = |e: std::io::Error| OciError::Read {
            path: PathBuf::from("/dev/stdin"),
            source: e,
        };
        let stdio = Stdio {
            stdin: dup(std::io::stdin().as_fd()).map_err(io_err)?,
            stdout: dup(std::io::stdout().as_fd()).map_err(io_err)?,
            stderr: dup(std::io::stderr().as_fd()).map_err(io_err)?,
            tty: false,
        };
        let mut place = |pid: nix::unistd::Pid| {
            cgroups
                .add_process(&p.cgroup_path, pid.as_raw())
                .map_err(|e| e.to_string())
        };
        let pid = process::spawn(
            p.flags,
            ChildSetup::Container {
                rootfs: &p.rootfs,
                console: None,
            },
            &p.process,
            &[],
            stdio,
            &mut place,
        )?;
        loop {
            match nix::sys::wait::waitpid(pid, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    return Err(crate::process::ProcessError::Sys {
                        step: "wait",
                        source: e,
                    }
                    .into())
                }
            }
        }
    })();
    // Whatever the process left behind in its cgroup goes with it.
    for pid in cgroups.pids(&p.cgroup_path).unwrap_or_default() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = cgroups.remove(&p.cgroup_path);
    crate::cgroups::remove_empty_parents(cgroups, &p.cgroup_path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        dir
    }

    #[test]
    fn a_runc_spec_config_is_understood() {
        let b = bundle(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":1,"gid":2},"args":["/bin/true"],"env":["PATH=/bin"],"cwd":"/",
            "capabilities":{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"],"inheritable":[],"ambient":["CAP_KILL"]},"noNewPrivileges":true},
            "root":{"path":"rootfs","readonly":true},"hostname":"runc",
            "mounts":[{"destination":"/proc","type":"proc","source":"proc"},{"destination":"/data","type":"bind","source":"/tmp","options":["rbind","ro"]}],
            "linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"uts"},{"type":"network"},{"type":"ipc"}],
            "resources":{"memory":{"limit":1048576},"pids":{"limit":10}},"maskedPaths":["/proc/kcore"]}}"#,
        );
        let p = prepare(b.path(), "c1").unwrap();
        assert!(p.flags.contains(
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET
        ));
        assert_eq!(
            p.process.capabilities.bounding,
            vec!["CAP_CHOWN", "CAP_KILL"]
        );
        assert_eq!(p.process.hostname.as_deref(), Some("runc"));
        assert_eq!((p.process.uid, p.process.gid), (1, 2));
        assert_eq!(p.rootfs.rootfs, b.path().join("rootfs"));
        assert!(p.rootfs.readonly);
        assert_eq!(p.rootfs.mounts.len(), 1);
        assert!(p.rootfs.mounts[0].readonly);
        assert_eq!(p.resources.memory_limit, Some(1048576));
        assert_eq!(p.cgroup_path, "podrun-oci/c1");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (
                r#"{"process":{"args":[]},"root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"mount"}]}}"#,
                "process.args",
            ),
            (
                r#"{"process":{"args":["x"]},"linux":{"namespaces":[{"type":"mount"}]}}"#,
                "root",
            ),
            (
                r#"{"process":{"args":["x"]},"root":{"path":"nope"},"linux":{"namespaces":[{"type":"mount"}]}}"#,
                "root.path",
            ),
            (
                r#"{"process":{"args":["x"]},"root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"user"}]}}"#,
                "linux.namespaces",
            ),
            (
                r#"{"process":{"args":["x"]},"root":{"path":"rootfs"}}"#,
                "linux.namespaces",
            ),
            (r#"{"process":{"args":"x"}}"#, "config"),
        ];
        for (config, field) in cases {
            let b = bundle(config);
            let err = prepare(b.path(), "c1").err().unwrap().to_string();
            assert!(err.contains(field), "{config}: {err}");
        }
    }
}
