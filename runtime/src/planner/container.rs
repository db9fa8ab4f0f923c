//! Planning one container of a planned sandbox, as a CRI runtime does:
//!
//! ```text
//!  image ─▶ command and env ─▶ user and groups ─▶ capabilities and seccomp
//!      ─▶ pod files, termination log, mounts, devices ─▶ rootfs ─▶ ContainerPlan
//! ```
//! Nothing runs; only the container's termination-log file is created.

use std::path::PathBuf;

use super::image_user::{
    group_in_file, member_groups, parse_signal, user_in_passwd, user_in_passwd_by_uid,
};
use super::{files, ContainerSpec, Field, PlanError};
use crate::image::ImageConfig;
use crate::plan::{ContainerPlan, PodPlan, ProcessSpec};
use crate::pod::{PodError, PodRuntime};
use crate::rootfs::{
    MountPlan, Propagation, RootfsSpec, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS,
};
use crate::security::seccomp::SeccompProfile;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process's argv, as Kubernetes combines a container's command and args with the
/// image's entrypoint and cmd: a command replaces the entrypoint (and drops cmd), args
/// replace cmd. None when that leaves nothing to run.
pub fn argv(
    command: &[String],
    args: &[String],
    entrypoint: &[String],
    cmd: &[String],
) -> Option<Vec<String>> {
    let mut v = if command.is_empty() {
        entrypoint.to_vec()
    } else {
        command.to_vec()
    };
    if !args.is_empty() {
        v.extend(args.iter().cloned());
    } else if command.is_empty() {
        v.extend(cmd.iter().cloned());
    }
    (!v.is_empty()).then_some(v)
}

/// The environment: the image's, then the container's overriding by name, then the
/// defaults a process expects (PATH, HOSTNAME, and TERM on a terminal).
fn environment(image: &ImageConfig, spec: &ContainerSpec, hostname: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = image
        .env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (e.clone(), String::new()),
        })
        .collect();
    for (k, v) in &spec.envs {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".into(), hostname.to_owned()));
    }
    if spec.tty && !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "xterm".into()));
    }
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// uid, gid and supplementary groups: run_as_user / run_as_username over the image's
/// USER, as containerd resolves them.
fn identity(
    spec: &ContainerSpec,
    image: &ImageConfig,
    layers: &[PathBuf],
) -> Result<(u32, u32, Vec<u32>), PlanError> {
    let sec = &spec.security;
    let image_user = image.user.clone().unwrap_or_default();
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
        None => (image_user.clone(), None),
    };
    let lookup_name = |name: &str, field: Field| {
        user_in_passwd(layers, name).ok_or_else(|| {
            PlanError::invalid(
                field,
                format!("user {name:?} not found in the image's /etc/passwd"),
            )
        })
    };
    let (mut uid, mut gid, mut user_name) = (0u32, 0u32, String::new());
    if let Some(u) = sec.run_as_user {
        uid = u32::try_from(u).map_err(|_| {
            PlanError::invalid(
                Field::RunAsUser,
                format!("must be a uid (0 to 2^32-1), got {u}"),
            )
        })?;
        gid = user_in_passwd_by_uid(layers, uid).unwrap_or(0);
    } else if let Some(name) = sec.run_as_username.as_deref().filter(|n| !n.is_empty()) {
        (uid, gid) = lookup_name(name, Field::RunAsUsername)?;
        user_name = name.to_owned();
    } else if !user_part.is_empty() {
        if let Ok(n) = user_part.parse::<u32>() {
            uid = n;
            gid = user_in_passwd_by_uid(layers, n).unwrap_or(0);
        } else {
            (uid, gid) = lookup_name(&user_part, Field::ImageUser)?;
            user_name = user_part.clone();
        }
        if let Some(g) = &group_part {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => group_in_file(layers, g).ok_or_else(|| {
                    PlanError::invalid(
                        Field::ImageUser,
                        format!("group {g:?} not found in the image's /etc/group"),
                    )
                })?,
            };
        }
    }
    if let Some(g) = sec.run_as_group {
        if sec.run_as_user.is_none()
            && sec.run_as_username.as_deref().unwrap_or("").is_empty()
            && user_part.is_empty()
        {
            // A group without a user is refused, as containerd does.
            return Err(PlanError::invalid(
                Field::RunAsGroup,
                "set without run_as_user or run_as_username",
            ));
        }
        gid = u32::try_from(g).map_err(|_| {
            PlanError::invalid(
                Field::RunAsGroup,
                format!("must be a gid (0 to 2^32-1), got {g}"),
            )
        })?;
    }
    if sec.run_as_non_root {
        let named_image_user = sec.run_as_user.is_none()
            && sec.run_as_username.as_deref().unwrap_or("").is_empty()
            && !user_part.is_empty()
            && user_part.parse::<u32>().is_err();
        if named_image_user {
            return Err(PlanError::invalid(
                Field::RunAsNonRoot,
                format!("is set and the image has a non-numeric user ({user_part:?}), cannot verify the user is non-root"),
            ));
        }
        if uid == 0 {
            return Err(PlanError::invalid(
                Field::RunAsNonRoot,
                "is set and the container would run as root (uid 0)",
            ));
        }
    }
    let mut groups = member_groups(layers, &user_name, uid);
    groups.extend(sec.supplemental_groups.iter().map(|g| *g as u32));
    groups.sort_unstable();
    groups.dedup();
    Ok((uid, gid, groups))
}

/// Mounts: the sandbox's files unless the container mounts its own there, the
/// termination log, the spec's mounts, then devices (bind-mounted host nodes, with
/// their cgroup rules added to `device_rules`).
fn mounts(
    sandbox: &PodPlan,
    spec: &ContainerSpec,
    device_rules: &mut Vec<String>,
) -> Result<(Vec<MountPlan>, Option<PathBuf>), PlanError> {
    let readonly_rootfs = spec.security.readonly_rootfs;
    let mut out: Vec<MountPlan> = Vec::new();
    for (file, dest) in files::POD_FILES {
        if spec.mounts.iter().any(|m| m.container_path == dest) {
            continue;
        }
        out.push(MountPlan {
            source: sandbox.state_dir.join(file),
            destination: dest.into(),
            readonly: readonly_rootfs,
            propagation: Propagation::Private,
            file: true,
        });
    }
    let mut termination = None;
    if let Some(dest) = &spec.termination_message_path {
        let dir = sandbox.state_dir.join("containers").join(&spec.name);
        std::fs::create_dir_all(&dir).map_err(super::io(format!("create {}", dir.display())))?;
        let file = dir.join("termination-log");
        std::fs::write(&file, b"").map_err(super::io(format!("create {}", file.display())))?;
        out.push(MountPlan {
            source: file.clone(),
            destination: dest.into(),
            readonly: false,
            propagation: Propagation::Private,
            file: true,
        });
        termination = Some(file);
    }
    for (i, m) in spec.mounts.iter().enumerate() {
        if !m.container_path.starts_with('/') {
            return Err(PlanError::invalid(
                Field::MountContainerPath(i),
                format!("must be absolute, got {:?}", m.container_path),
            ));
        }
        // A symlinked host path mounts what it points to, as runc does.
        let source = std::fs::canonicalize(&m.host_path).map_err(|e| {
            PlanError::invalid(
                Field::MountHostPath(i),
                format!("{}: {e}", m.host_path.display()),
            )
        })?;
        let file = std::fs::metadata(&source)
            .map(|md| !md.is_dir())
            .unwrap_or(false);
        out.push(MountPlan {
            source,
            destination: m.container_path.clone().into(),
            readonly: m.readonly,
            propagation: m.propagation,
            file,
        });
    }
    for (i, d) in spec.devices.iter().enumerate() {
        if !d.container_path.starts_with('/') {
            return Err(PlanError::invalid(
                Field::DeviceContainerPath(i),
                format!("must be absolute, got {:?}", d.container_path),
            ));
        }
        if d.permissions.chars().any(|c| !"rwm".contains(c)) {
            return Err(PlanError::invalid(
                Field::DevicePermissions(i),
                format!("must be a subset of \"rwm\", got {:?}", d.permissions),
            ));
        }
        let bad = |e: String| PlanError::invalid(Field::DeviceHostPath(i), e);
        let source = std::fs::canonicalize(&d.host_path)
            .map_err(|e| bad(format!("{}: {e}", d.host_path.display())))?;
        let md =
            std::fs::metadata(&source).map_err(|e| bad(format!("{}: {e}", source.display())))?;
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let kind = if md.file_type().is_char_device() {
            'c'
        } else if md.file_type().is_block_device() {
            'b'
        } else {
            return Err(bad(format!("{} is not a device", source.display())));
        };
        let rdev = md.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        let perms = if d.permissions.is_empty() {
            "rwm".to_owned()
        } else {
            d.permissions.clone()
        };
        device_rules.push(format!("{kind} {major}:{minor} {perms}"));
        out.push(MountPlan {
            source,
            destination: d.container_path.clone().into(),
            readonly: !perms.contains('w'),
            propagation: Propagation::Private,
            file: true,
        });
    }
    Ok((out, termination))
}

impl PodRuntime {
    /// Plan container `id` of `sandbox` from `spec`: everything its monitor needs to
    /// create and start it.
    pub fn plan_container_spec(
        &self,
        sandbox: &PodPlan,
        id: &str,
        spec: &ContainerSpec,
    ) -> Result<ContainerPlan, PlanError> {
        crate::state::validate_path_component("container id", id)
            .map_err(|m| PlanError::invalid(Field::ContainerId, m))?;
        let img = self
            .images
            .get(&spec.image)
            .map_err(|e| PlanError::invalid(Field::Image, e.to_string()))?
            .ok_or_else(|| PodError::NotFound(format!("image {:?} (pull it first)", spec.image)))?;
        let config = self.images.config(&img)?;
        let layers = self.images.layer_dirs(&img)?;
        let sec = &spec.security;

        let args =
            argv(&spec.command, &spec.args, &config.entrypoint, &config.cmd).ok_or_else(|| {
                PlanError::invalid(
                    Field::Command,
                    "no command specified and the image has no entrypoint or cmd",
                )
            })?;
        let env = environment(&config, spec, &sandbox.hostname);
        let (uid, gid, groups) = identity(spec, &config, &layers)?;

        let capabilities = crate::security::capabilities::resolve(
            &sec.add_capabilities,
            &sec.drop_capabilities,
            sec.privileged,
            uid,
        )
        .map_err(|e| PlanError::invalid(Field::Capabilities, e.to_string()))?;
        let seccomp = if sec.privileged {
            SeccompProfile::Unconfined
        } else {
            sec.seccomp.clone()
        };
        // Compiled now so a bad profile fails the plan, not the start.
        crate::security::seccomp::compile(&seccomp, &capabilities)
            .map_err(|e| PlanError::invalid(Field::Seccomp, e.to_string()))?;

        let mut resources = spec.resources.clone();
        resources.restrict_devices = !sec.privileged;
        let (mounts, termination_message) = mounts(sandbox, spec, &mut resources.device_rules)?;

        let cdir = self.config.paths.container_data(id);
        let defaults = |given: &Option<Vec<String>>, default: &[&str]| match given {
            Some(p) => p.clone(),
            None if sec.privileged => vec![],
            None => default.iter().map(|s| s.to_string()).collect(),
        };
        let rootfs = RootfsSpec {
            rootfs: cdir.join("rootfs"),
            layers,
            upper: cdir.join("upper"),
            work: cdir.join("work"),
            readonly: sec.readonly_rootfs,
            privileged: sec.privileged,
            mounts,
            dev_shm: if sandbox.host_ipc {
                Some(PathBuf::from("/dev/shm"))
            } else {
                Some(sandbox.state_dir.join("shm"))
            },
            masked_paths: defaults(&sec.masked_paths, DEFAULT_MASKED_PATHS),
            readonly_paths: defaults(&sec.readonly_paths, DEFAULT_READONLY_PATHS),
        };
        let stop_signal = config
            .stop_signal
            .as_deref()
            .and_then(parse_signal)
            .unwrap_or(libc::SIGTERM);
        let cwd = if spec.working_dir.is_empty() {
            config
                .working_dir
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/".into())
        } else {
            spec.working_dir.clone()
        };
        Ok(ContainerPlan {
            cgroup_path: self.cgroups().container_path(&sandbox.cgroup_path, id),
            id: id.to_owned(),
            name: spec.name.clone(),
            kind: spec.kind,
            image: spec.image.clone(),
            image_id: img.id.clone(),
            rootfs,
            process: ProcessSpec {
                args,
                env,
                cwd,
                uid,
                gid,
                additional_gids: groups,
                capabilities,
                no_new_privs: sec.no_new_privs,
                oom_score_adj: spec.oom_score_adj,
                tty: spec.tty,
                hostname: None,
            },
            seccomp,
            resources,
            stop_signal,
            pre_stop: spec.pre_stop.clone(),
            post_start: spec.post_start.clone(),
            termination_message,
            log_path: spec.log_path.clone(),
            stdin: spec.stdin,
            stdin_once: spec.stdin_once,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn argv_combines_command_and_args_with_the_image() {
        let (ep, cmd) = (s(&["/ep"]), s(&["cmd-arg"]));
        // neither: entrypoint + cmd
        assert_eq!(argv(&[], &[], &ep, &cmd).unwrap(), s(&["/ep", "cmd-arg"]));
        // command only: the image's cmd is dropped too
        assert_eq!(argv(&s(&["/c"]), &[], &ep, &cmd).unwrap(), s(&["/c"]));
        // args only: entrypoint + args
        assert_eq!(argv(&[], &s(&["a"]), &ep, &cmd).unwrap(), s(&["/ep", "a"]));
        // both
        assert_eq!(
            argv(&s(&["/c"]), &s(&["a"]), &ep, &cmd).unwrap(),
            s(&["/c", "a"])
        );
        assert_eq!(argv(&[], &[], &[], &[]), None);
        // An image with only a cmd runs it.
        assert_eq!(argv(&[], &[], &[], &cmd).unwrap(), s(&["cmd-arg"]));
    }

    #[test]
    fn environment_overrides_the_image_by_name_and_adds_defaults() {
        let image = ImageConfig {
            env: s(&["A=image", "PATH=/img/bin", "B"]),
            ..Default::default()
        };
        let spec = ContainerSpec {
            envs: vec![("A".into(), "pod".into()), ("C".into(), "c".into())],
            tty: true,
            ..Default::default()
        };
        assert_eq!(
            environment(&image, &spec, "web"),
            s(&[
                "A=pod",
                "PATH=/img/bin",
                "B=",
                "C=c",
                "HOSTNAME=web",
                "TERM=xterm"
            ])
        );
        let bare = environment(&ImageConfig::default(), &ContainerSpec::default(), "h");
        assert_eq!(bare, s(&[&format!("PATH={DEFAULT_PATH}"), "HOSTNAME=h"]));
    }
}
