//! CRI messages to the runtime's specs and back. Validation errors name the CRI field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use podrun_cri_proto::v1 as cri;
use podrun_runtime::cgroups::{QosClass, Resources};
use podrun_runtime::plan::ContainerKind;
use podrun_runtime::rootfs::Propagation;
use podrun_runtime::sandbox::{
    ContainerSpec, DeviceSpec, DnsSpec, MountSpec, NamespaceMode, PortMapping, SandboxSpec,
    SecuritySpec,
};
use podrun_runtime::security::seccomp::SeccompProfile;
use podrun_runtime::status::ContainerState;
use tonic::Status;

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

fn ns_mode(v: i32, field: &str) -> Result<NamespaceMode, Status> {
    match cri::NamespaceMode::try_from(v) {
        Ok(cri::NamespaceMode::Pod) => Ok(NamespaceMode::Pod),
        Ok(cri::NamespaceMode::Container) => Ok(NamespaceMode::Container),
        Ok(cri::NamespaceMode::Node) => Ok(NamespaceMode::Node),
        Ok(cri::NamespaceMode::Target) => Ok(NamespaceMode::Target),
        Err(_) => Err(invalid(field, format!("unknown namespace mode {v}"))),
    }
}

/// A name used in paths and keys: what containerd and kubelet accept, never `/` or `..`.
fn check_name(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    podrun_runtime::state::validate_path_component(field, v).map_err(|m| invalid(field, m))
}

/// Resources of the CRI (zero means unset) as cgroup resources.
pub fn resources(r: Option<&cri::LinuxContainerResources>) -> Resources {
    let Some(r) = r else {
        return Resources::default();
    };
    let pos = |v: i64| (v > 0).then_some(v);
    Resources {
        cpu_shares: pos(r.cpu_shares).map(|v| v as u64),
        cpu_quota: pos(r.cpu_quota),
        cpu_period: pos(r.cpu_period).map(|v| v as u64),
        memory_limit: pos(r.memory_limit_in_bytes),
        pids_limit: None,
        cpuset_cpus: Some(r.cpuset_cpus.clone()).filter(|s| !s.is_empty()),
        cpuset_mems: Some(r.cpuset_mems.clone()).filter(|s| !s.is_empty()),
        restrict_devices: false,
        device_rules: Vec::new(),
    }
}

/// Sum the pod's overhead and resources (both optional) as the pod cgroup's limits.
fn pod_resources(linux: &cri::LinuxPodSandboxConfig) -> Resources {
    let a = resources(linux.overhead.as_ref());
    let b = resources(linux.resources.as_ref());
    let add = |x: Option<i64>, y: Option<i64>| match (x, y) {
        (Some(x), Some(y)) => Some(x + y),
        (x, y) => x.or(y),
    };
    Resources {
        cpu_shares: add(
            a.cpu_shares.map(|v| v as i64),
            b.cpu_shares.map(|v| v as i64),
        )
        .map(|v| v as u64),
        cpu_quota: add(a.cpu_quota, b.cpu_quota),
        cpu_period: b.cpu_period.or(a.cpu_period),
        memory_limit: add(a.memory_limit, b.memory_limit),
        ..b
    }
}

pub fn sandbox_spec(c: &cri::PodSandboxConfig) -> Result<SandboxSpec, Status> {
    let m = c
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata", "required"))?;
    check_name("config.metadata.name", &m.name)?;
    check_name("config.metadata.namespace", &m.namespace)?;
    check_name("config.metadata.uid", &m.uid)?;
    let linux = c.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let ns = sc.namespace_options.clone().unwrap_or_default();
    let field = "config.linux.security_context.namespace_options";
    if ns.userns_options.as_ref().is_some_and(|u| {
        u.mode != cri::NamespaceMode::Node as i32 || !u.uids.is_empty() || !u.gids.is_empty()
    }) {
        return Err(Status::unimplemented(format!(
            "{field}.userns_options: user namespaces are not supported by podrun"
        )));
    }
    for (k, v) in &linux.sysctls {
        if k.is_empty() || k.contains("..") || k.starts_with('.') || k.contains('\0') {
            return Err(invalid(&format!("config.linux.sysctls[{k:?}]"), "bad name"));
        }
        if v.contains('\n') {
            return Err(invalid(
                &format!("config.linux.sysctls[{k:?}]"),
                "bad value",
            ));
        }
    }
    let log_directory = if c.log_directory.is_empty() {
        None
    } else {
        let p = PathBuf::from(&c.log_directory);
        if !p.is_absolute() {
            return Err(invalid("config.log_directory", "must be an absolute path"));
        }
        Some(p)
    };
    let port_mappings = c
        .port_mappings
        .iter()
        .map(|p| PortMapping {
            protocol: match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            }
            .into(),
            container_port: p.container_port,
            host_port: p.host_port,
            host_ip: p.host_ip.clone(),
        })
        .collect();
    Ok(SandboxSpec {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        attempt: m.attempt,
        hostname: c.hostname.clone(),
        log_directory,
        dns: c.dns_config.as_ref().map(|d| DnsSpec {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        // kubelet writes the pod's /etc/hosts, aliases included, and mounts it.
        host_aliases: Vec::new(),
        port_mappings,
        labels: c.labels.clone().into_iter().collect(),
        annotations: c.annotations.clone().into_iter().collect(),
        cgroup_parent: Some(linux.cgroup_parent.clone()).filter(|s| !s.is_empty()),
        // Only without a cgroup parent: the pod cgroup then goes under podrun's own.
        qos: QosClass::BestEffort,
        network: ns_mode(ns.network, &format!("{field}.network"))?,
        pid: ns_mode(ns.pid, &format!("{field}.pid"))?,
        ipc: ns_mode(ns.ipc, &format!("{field}.ipc"))?,
        sysctls: linux.sysctls.clone().into_iter().collect(),
        resources: pod_resources(&linux),
    })
}

/// kubelet's seccomp profile message as the runtime's profile. Localhost refs are
/// absolute paths; containerd also accepts the older `localhost/<path>` form.
pub fn seccomp(p: Option<&cri::SecurityProfile>, legacy: &str) -> Result<SeccompProfile, Status> {
    let field = "config.linux.security_context.seccomp";
    if let Some(p) = p {
        return match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
                Ok(SeccompProfile::RuntimeDefault)
            }
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(SeccompProfile::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) => {
                let r = p
                    .localhost_ref
                    .strip_prefix("localhost/")
                    .unwrap_or(&p.localhost_ref);
                localhost(r, field)
            }
            Err(_) => Err(invalid(
                field,
                format!("unknown profile type {}", p.profile_type),
            )),
        };
    }
    match legacy {
        // containerd's default when nothing is said: unconfined (kubelet sends
        // RuntimeDefault explicitly when the pod asks for it).
        "" | "unconfined" => Ok(SeccompProfile::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompProfile::RuntimeDefault),
        l => match l.strip_prefix("localhost/") {
            Some(r) => localhost(r, "config.linux.security_context.seccomp_profile_path"),
            None => Err(invalid(
                "config.linux.security_context.seccomp_profile_path",
                format!("unknown profile {l:?}"),
            )),
        },
    }
}

fn localhost(path: &str, field: &str) -> Result<SeccompProfile, Status> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(invalid(
            &format!("{field}.localhost_ref"),
            format!("must be an absolute path, got {path:?}"),
        ));
    }
    if !p.is_file() {
        return Err(invalid(
            &format!("{field}.localhost_ref"),
            format!("profile {path:?} not found"),
        ));
    }
    Ok(SeccompProfile::Localhost(p.to_owned()))
}

pub fn container_spec(
    c: &cri::ContainerConfig,
    sandbox_config: &cri::PodSandboxConfig,
    log_directory: Option<&Path>,
) -> Result<ContainerSpec, Status> {
    let m = c
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata", "required"))?;
    check_name("config.metadata.name", &m.name)?;
    let image = c
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| invalid("config.image.image", "required"))?;
    let linux = c.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let pod_sc = sandbox_config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    if sc.privileged && !pod_sc.privileged {
        return Err(invalid(
            "config.linux.security_context.privileged",
            "no privileged container allowed in a sandbox that is not privileged",
        ));
    }
    if let Some(ns) = &sc.namespace_options {
        if ns.pid == cri::NamespaceMode::Target as i32 {
            return Err(Status::unimplemented(
                "config.linux.security_context.namespace_options.pid: TARGET (ephemeral containers) is not supported by podrun",
            ));
        }
    }
    let mut mounts = Vec::new();
    for (i, mt) in c.mounts.iter().enumerate() {
        if mt.image.as_ref().is_some_and(|im| !im.image.is_empty()) {
            return Err(Status::unimplemented(format!(
                "config.mounts[{i}].image: image volumes are not supported by podrun"
            )));
        }
        if !mt.uid_mappings.is_empty() || !mt.gid_mappings.is_empty() {
            return Err(Status::unimplemented(format!(
                "config.mounts[{i}]: id-mapped mounts are not supported by podrun"
            )));
        }
        if mt.host_path.is_empty() {
            return Err(invalid(
                &format!("config.mounts[{i}].host_path"),
                "required",
            ));
        }
        mounts.push(MountSpec {
            container_path: mt.container_path.clone(),
            host_path: PathBuf::from(&mt.host_path),
            readonly: mt.readonly,
            propagation: match cri::MountPropagation::try_from(mt.propagation) {
                Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::Rslave,
                Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Rshared,
                _ => Propagation::Private,
            },
        });
    }
    let devices = c
        .devices
        .iter()
        .map(|d| DeviceSpec {
            container_path: d.container_path.clone(),
            host_path: PathBuf::from(&d.host_path),
            permissions: d.permissions.clone(),
        })
        .collect();
    let log_path = if c.log_path.is_empty() {
        None
    } else {
        let rel = Path::new(&c.log_path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|x| matches!(x, std::path::Component::ParentDir))
        {
            return Err(invalid(
                "config.log_path",
                "must be relative to the sandbox log_directory, without '..'",
            ));
        }
        match log_directory {
            Some(d) => Some(d.join(rel)),
            None => {
                return Err(invalid(
                    "config.log_path",
                    "set but the sandbox has no log_directory",
                ))
            }
        }
    };
    let mut supplemental_groups = pod_sc.supplemental_groups.clone();
    supplemental_groups.extend(sc.supplemental_groups.iter().copied());
    let res = linux.resources.as_ref();
    Ok(ContainerSpec {
        name: m.name.clone(),
        kind: ContainerKind::App,
        attempt: m.attempt,
        image,
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        envs: c
            .envs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        mounts,
        devices,
        log_path,
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        resources: resources(res),
        oom_score_adj: res.map(|r| r.oom_score_adj as i32).filter(|v| *v != 0),
        security: SecuritySpec {
            privileged: sc.privileged,
            add_capabilities: caps.add_capabilities.clone(),
            drop_capabilities: caps.drop_capabilities.clone(),
            run_as_user: sc.run_as_user.as_ref().map(|v| v.value),
            run_as_username: Some(sc.run_as_username.clone()).filter(|s| !s.is_empty()),
            run_as_group: sc.run_as_group.as_ref().map(|v| v.value),
            supplemental_groups,
            // kubelet verifies runAsNonRoot itself, from the image's user.
            run_as_non_root: false,
            readonly_rootfs: sc.readonly_rootfs,
            no_new_privs: sc.no_new_privs,
            masked_paths: (!sc.masked_paths.is_empty() || sc.privileged)
                .then(|| sc.masked_paths.clone()),
            readonly_paths: (!sc.readonly_paths.is_empty() || sc.privileged)
                .then(|| sc.readonly_paths.clone()),
            #[allow(deprecated)]
            seccomp: seccomp(sc.seccomp.as_ref(), &sc.seccomp_profile_path)?,
        },
        // kubelet runs hooks through ExecSync and mounts the termination log itself.
        post_start: None,
        pre_stop: None,
        termination_message_path: None,
    })
}

/// The monitor's container state as the CRI's: state, started, finished, exit code,
/// reason, message.
pub struct CriState {
    pub state: cri::ContainerState,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
}

pub fn cri_state(s: Option<&ContainerState>) -> CriState {
    let ns = |t: &chrono::DateTime<chrono::Utc>| t.timestamp_nanos_opt().unwrap_or(0);
    match s {
        Some(ContainerState::Waiting { .. }) => CriState {
            state: cri::ContainerState::ContainerCreated,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
        },
        Some(ContainerState::Running { started_at, .. }) => CriState {
            state: cri::ContainerState::ContainerRunning,
            started_at: ns(started_at),
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
        },
        Some(ContainerState::Terminated {
            exit_code,
            reason,
            message,
            started_at,
            finished_at,
            ..
        }) => CriState {
            state: cri::ContainerState::ContainerExited,
            started_at: started_at.as_ref().map(ns).unwrap_or(0),
            finished_at: ns(finished_at),
            exit_code: *exit_code,
            reason: reason.clone(),
            message: message.clone(),
        },
        None => CriState {
            state: cri::ContainerState::ContainerUnknown,
            started_at: 0,
            finished_at: 0,
            exit_code: 255,
            reason: "Unknown".into(),
            message: "the pod monitor is gone".into(),
        },
    }
}

/// All set selectors must match.
pub fn labels_match(
    selector: &std::collections::HashMap<String, String>,
    labels: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn btree(m: &BTreeMap<String, String>) -> std::collections::HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox_config() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".into(),
                uid: "u".into(),
                namespace: "n".into(),
                attempt: 0,
            }),
            log_directory: "/var/log/pods/n_p_u".into(),
            ..Default::default()
        }
    }

    #[test]
    fn sandbox_names_are_checked() {
        let mut c = sandbox_config();
        c.metadata.as_mut().unwrap().name = "../x".into();
        let e = sandbox_spec(&c).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("config.metadata.name"),
            "{}",
            e.message()
        );
        c.metadata = None;
        assert!(sandbox_spec(&c)
            .unwrap_err()
            .message()
            .contains("config.metadata"));
    }

    #[test]
    fn namespace_modes_map() {
        let mut c = sandbox_config();
        c.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let s = sandbox_spec(&c).unwrap();
        assert_eq!(s.network, NamespaceMode::Node);
        assert_eq!(s.pid, NamespaceMode::Container);
        assert_eq!(s.ipc, NamespaceMode::Pod);
    }

    #[test]
    fn container_log_path_is_joined_and_checked() {
        let sb = sandbox_config();
        let mut c = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            log_path: "c/0.log".into(),
            ..Default::default()
        };
        let s = container_spec(&c, &sb, Some(Path::new("/var/log/pods/n_p_u"))).unwrap();
        assert_eq!(
            s.log_path.unwrap(),
            PathBuf::from("/var/log/pods/n_p_u/c/0.log")
        );
        c.log_path = "../../etc/passwd".into();
        let e = container_spec(&c, &sb, Some(Path::new("/x"))).unwrap_err();
        assert!(e.message().contains("config.log_path"));
        c.log_path = String::new();
        c.image = None;
        let e = container_spec(&c, &sb, None).unwrap_err();
        assert!(e.message().contains("config.image.image"));
    }

    #[test]
    fn zero_resources_are_unset() {
        let r = resources(Some(&cri::LinuxContainerResources {
            cpu_shares: 2,
            memory_limit_in_bytes: 0,
            ..Default::default()
        }));
        assert_eq!(r.cpu_shares, Some(2));
        assert_eq!(r.memory_limit, None);
    }

    #[test]
    fn seccomp_profiles() {
        use cri::security_profile::ProfileType;
        let p = |t: ProfileType, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        assert_eq!(
            seccomp(Some(&p(ProfileType::RuntimeDefault, "")), "").unwrap(),
            SeccompProfile::RuntimeDefault
        );
        assert_eq!(
            seccomp(Some(&p(ProfileType::Unconfined, "")), "").unwrap(),
            SeccompProfile::Unconfined
        );
        assert!(seccomp(Some(&p(ProfileType::Localhost, "rel/path")), "").is_err());
        assert!(seccomp(Some(&p(ProfileType::Localhost, "/nonexistent/x.json")), "").is_err());
        assert_eq!(
            seccomp(None, "runtime/default").unwrap(),
            SeccompProfile::RuntimeDefault
        );
        assert!(seccomp(None, "bogus").is_err());
    }
}
