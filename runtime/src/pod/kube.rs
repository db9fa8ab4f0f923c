//! `podrun run`'s front end to the planner: what kubelet does with a Pod before it asks a
//! CRI runtime for a sandbox and containers. It reads the Pod (namespaces, DNS policy,
//! host aliases, ports, QoS), prepares volumes, resolves env from configMaps, secrets and
//! fields, expands `$(VAR)`, pulls images by policy and maps securityContext; the
//! planner does the rest. Errors name the Pod's own fields and its file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext};

use super::{io, PodError, PodRuntime, PullMode};
use crate::cgroups::QosClass;
use crate::image::ImageConfig;
use crate::plan::{ContainerKind, RestartPolicy, TmpfsPlan};
use crate::planner::{
    ContainerSpec, DnsSpec, Field, HostAlias, MountSpec, NamespaceMode, PlanError, PortMapping,
    SandboxDraft, SandboxSpec, SecuritySpec,
};
use crate::rootfs::Propagation;
use crate::security::seccomp::SeccompProfile;
use crate::spec::{self, PodManifest};
use crate::state;

pub(super) struct Translator<'a> {
    pub(super) rt: &'a PodRuntime,
    pub(super) m: &'a PodManifest,
}

fn convert_qos(q: spec::QosClass) -> QosClass {
    match q {
        spec::QosClass::Guaranteed => QosClass::Guaranteed,
        spec::QosClass::Burstable => QosClass::Burstable,
        spec::QosClass::BestEffort => QosClass::BestEffort,
    }
}

impl PodRuntime {
    /// Turn a manifest into a planned sandbox with its containers, and materialise its
    /// files (hosts, resolv.conf, volumes) and network. Nothing runs yet; dropping the
    /// draft undoes it all.
    pub fn prepare(&self, m: &PodManifest) -> Result<SandboxDraft, PodError> {
        Translator { rt: self, m }.plan()
    }
}

impl Translator<'_> {
    fn source(&self) -> String {
        self.m.source.display().to_string()
    }

    pub(super) fn invalid(&self, message: impl Into<String>) -> PodError {
        PodError::Invalid {
            file: self.source(),
            message: message.into(),
        }
    }

    fn plan(&self) -> Result<SandboxDraft, PodError> {
        let pod: &Pod = &self.m.pod;
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| self.invalid("spec: required"))?;
        let meta = &pod.metadata;
        let name = self.m.name().to_owned();
        let host = |on: Option<bool>| {
            if on.unwrap_or(false) {
                NamespaceMode::Node
            } else {
                NamespaceMode::Pod
            }
        };
        let pid = match (spec.host_pid, spec.share_process_namespace) {
            (Some(true), _) => NamespaceMode::Node,
            (_, Some(true)) => NamespaceMode::Pod,
            _ => NamespaceMode::Container,
        };
        let qos = convert_qos(spec::qos_class(pod));
        let sandbox = SandboxSpec {
            name: name.clone(),
            namespace: self.m.namespace().to_owned(),
            uid: meta
                .uid
                .clone()
                .unwrap_or_else(|| state::new_id()[..32].to_owned()),
            attempt: 0,
            hostname: spec.hostname.clone().unwrap_or_else(|| name.clone()),
            log_directory: None,
            dns: Some(self.dns()),
            host_aliases: spec
                .host_aliases
                .iter()
                .flatten()
                .map(|a| HostAlias {
                    ip: a.ip.clone(),
                    hostnames: a.hostnames.clone().unwrap_or_default(),
                })
                .collect(),
            port_mappings: port_mappings(pod),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            cgroup_parent: None,
            qos,
            network: host(spec.host_network),
            pid,
            ipc: host(spec.host_ipc),
            sysctls: BTreeMap::new(),
            resources: spec::pod_resources(pod),
        };
        let mut draft = self
            .rt
            .plan_sandbox(&state::new_id(), &sandbox)
            .map_err(|e| e.named(|_, message| self.invalid(message)))?;
        let plan = &mut draft.plan;
        plan.managed = false;
        plan.source = Some(self.m.source.clone());
        plan.restart_policy = match spec.restart_policy.as_deref() {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        };
        plan.termination_grace_period_secs =
            spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64;
        if !plan.host_ipc {
            plan.tmpfs.push(TmpfsPlan {
                path: plan.state_dir.join("shm"),
                size_bytes: Some(64 << 20),
                mode: 0o1777,
            });
        }
        let (state_dir, data_dir) = (plan.state_dir.clone(), plan.data_dir.clone());
        let volumes = self.volumes(&state_dir, &data_dir, &mut plan.tmpfs)?;
        let pod_ip = plan.network.as_ref().and_then(|n| n.pod_ip.clone());

        let init = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| {
                let kind = if spec::is_native_sidecar(c) {
                    ContainerKind::Sidecar
                } else {
                    ContainerKind::Init
                };
                (c, kind, format!("spec.initContainers[{i}]"))
            });
        let apps = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| (c, ContainerKind::App, format!("spec.containers[{i}]")));
        for (c, kind, field) in init.chain(apps) {
            let (cspec, mount_fields) =
                self.container_spec(c, kind, &field, &volumes, qos, pod_ip.as_deref())?;
            let cplan = self
                .rt
                .plan_container_spec(&draft.plan, &state::new_id(), &cspec)
                .map_err(|e| self.container_error(e, c, &field, &mount_fields))?;
            draft.plan.containers.push(cplan);
        }
        Ok(draft)
    }

    /// A planning error about container `c`, worded with the Pod's field paths.
    fn container_error(
        &self,
        e: PlanError,
        c: &Container,
        field: &str,
        mount_fields: &[String],
    ) -> PodError {
        e.named(|f, message| {
            let name = &c.name;
            let at = match f {
                Field::Image | Field::ImageUser => format!("{field}.image"),
                Field::Command => {
                    return self.invalid(format!("{field}.command: {name}: {message}"))
                }
                Field::RunAsUser => format!("{field}.securityContext.runAsUser"),
                Field::RunAsGroup => format!("{field}.securityContext.runAsGroup"),
                Field::RunAsNonRoot => format!("{field}.securityContext.runAsNonRoot"),
                Field::Capabilities => format!("{field}.securityContext.capabilities"),
                Field::Seccomp => format!("{field}.securityContext.seccompProfile"),
                Field::MountContainerPath(i) | Field::MountHostPath(i) => mount_fields
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("{field}.volumeMounts")),
                _ => field.to_owned(),
            };
            self.invalid(format!("{at}: container {name:?}: {message}"))
        })
    }

    /// resolv.conf by dnsPolicy: with no cluster DNS on a single host, ClusterFirst (and
    /// Default) use the host's resolvers, as kubelet does without --cluster-dns; None
    /// only dnsConfig. dnsConfig's servers and searches are appended, its options replace
    /// the host's by name.
    fn dns(&self) -> DnsSpec {
        let spec = self.m.pod.spec.as_ref().expect("checked by plan");
        let mut dns = DnsSpec::default();
        if spec.dns_policy.as_deref() != Some("None") {
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            for l in host.lines() {
                let mut f = l.split_whitespace();
                match f.next() {
                    Some("nameserver") => dns.servers.extend(f.next().map(str::to_owned)),
                    Some("search") => dns.searches.extend(f.map(str::to_owned)),
                    Some("options") => dns.options.extend(f.map(str::to_owned)),
                    _ => {}
                }
            }
        }
        if let Some(cfg) = &spec.dns_config {
            dns.servers
                .extend(cfg.nameservers.iter().flatten().cloned());
            dns.searches.extend(cfg.searches.iter().flatten().cloned());
            for o in cfg.options.iter().flatten() {
                let Some(n) = &o.name else { continue };
                dns.options
                    .retain(|x: &String| x.split(':').next() != Some(n.as_str()));
                dns.options.push(match &o.value {
                    Some(v) => format!("{n}:{v}"),
                    None => n.clone(),
                });
            }
        }
        dns
    }

    /// Make sure the container's image is in the store, pulling it as the pull mode (or
    /// the container's imagePullPolicy) says; returns its config.
    fn pull_image(&self, c: &Container, field: &str) -> Result<ImageConfig, PodError> {
        let image_ref = c.image.clone().unwrap_or_default();
        let policy = match self.rt.config.pull {
            PullMode::Missing => "IfNotPresent",
            PullMode::Always => "Always",
            PullMode::Never => "Never",
            PullMode::Policy => c.image_pull_policy.as_deref().unwrap_or(""),
        };
        let opts = crate::image::pull::PullOptions {
            hosts_dir: self.rt.config.hosts_dir.clone(),
            ..Default::default()
        };
        let img = self
            .rt
            .images
            .ensure(&image_ref, policy, &opts)
            .map_err(|e| match e {
                crate::image::ImageError::NeverPull(_) => self.invalid(format!(
                    "{field}.image: image {image_ref:?} of container {:?} is not in the local store and pulling is off: `podrun pull {image_ref}` or `podrun image load FILE` first",
                    c.name
                )),
                e => self.invalid(format!("{field}.image: container {:?}: {e}", c.name)),
            })?;
        Ok(self.rt.images.config(&img)?)
    }

    /// The CRI-level spec of container `c` (at `field` in the Pod), and the Pod field of
    /// each of its mounts.
    fn container_spec(
        &self,
        c: &Container,
        kind: ContainerKind,
        field: &str,
        volumes: &BTreeMap<String, (PathBuf, bool)>,
        qos: QosClass,
        pod_ip: Option<&str>,
    ) -> Result<(ContainerSpec, Vec<String>), PodError> {
        let pod = &self.m.pod;
        let spec = pod.spec.as_ref().expect("checked by plan");
        let config = self.pull_image(c, field)?;
        let ctx = spec::EnvContext {
            pod,
            config_maps: &self.m.config_maps,
            secrets: &self.m.secrets,
            pod_ip,
            host_ip: None,
            node_name: &self.rt.config.node_name,
        };
        let envs = spec::resolve_env(c, &config.env, &ctx)
            .map_err(|e| self.invalid(format!("{field}.env: {e}")))?;
        let command = spec::effective_command(c, &config.entrypoint, &config.cmd, &envs)
            .map_err(|e| self.invalid(format!("{field}.command: {e}")))?;

        let psc: PodSecurityContext = spec.security_context.clone().unwrap_or_default();
        let sc: SecurityContext = c.security_context.clone().unwrap_or_default();
        let privileged = sc.privileged.unwrap_or(false);
        let caps = sc.capabilities.clone().unwrap_or_default();
        let seccomp = match sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref()) {
            // Unset: the runtime's default profile, as podman and kubelet with
            // SeccompDefault do.
            None => SeccompProfile::RuntimeDefault,
            Some(p) => crate::security::seccomp::parse_profile(
                &p.type_,
                p.localhost_profile.as_deref(),
                &self.rt.config.seccomp_root,
            )
            .map_err(|e| self.invalid(format!("{field}.securityContext.seccompProfile: {e}")))?,
        };
        let unmasked = privileged || sc.proc_mount.as_deref() == Some("Unmasked");
        let mut supplemental_groups: Vec<i64> = psc.supplemental_groups.clone().unwrap_or_default();
        supplemental_groups.extend(psc.fs_group);
        let security = SecuritySpec {
            privileged,
            add_capabilities: caps.add.unwrap_or_default(),
            drop_capabilities: caps.drop.unwrap_or_default(),
            run_as_user: sc.run_as_user.or(psc.run_as_user),
            run_as_username: None,
            run_as_group: sc.run_as_group.or(psc.run_as_group),
            supplemental_groups,
            run_as_non_root: sc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false),
            readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
            no_new_privs: !privileged && sc.allow_privilege_escalation == Some(false),
            masked_paths: unmasked.then(Vec::new),
            readonly_paths: unmasked.then(Vec::new),
            seccomp,
        };
        let (mounts, mount_fields) = self.mounts(c, field, volumes, privileged)?;
        let exec_hook = |h: Option<&k8s_openapi::api::core::v1::LifecycleHandler>| {
            h.and_then(|h| h.exec.as_ref())
                .and_then(|e| e.command.clone())
        };
        let lifecycle = c.lifecycle.as_ref();
        let mut resources = spec::container_resources(c);
        resources.restrict_devices = !privileged;
        Ok((
            ContainerSpec {
                name: c.name.clone(),
                kind,
                attempt: 0,
                image: c.image.clone().unwrap_or_default(),
                command,
                args: Vec::new(),
                working_dir: c.working_dir.clone().unwrap_or_default(),
                envs,
                mounts,
                devices: Vec::new(),
                log_path: None,
                stdin: false,
                stdin_once: false,
                tty: c.tty.unwrap_or(false),
                resources,
                oom_score_adj: Some(oom_score_adj(qos, c)),
                security,
                post_start: exec_hook(lifecycle.and_then(|l| l.post_start.as_ref())),
                pre_stop: exec_hook(lifecycle.and_then(|l| l.pre_stop.as_ref())),
                termination_message_path: Some(
                    c.termination_message_path
                        .clone()
                        .unwrap_or_else(|| "/dev/termination-log".into()),
                ),
            },
            mount_fields,
        ))
    }

    /// The container's volumeMounts as host paths: subPath resolved inside its volume
    /// (and created), propagation checked.
    fn mounts(
        &self,
        c: &Container,
        field: &str,
        volumes: &BTreeMap<String, (PathBuf, bool)>,
        privileged: bool,
    ) -> Result<(Vec<MountSpec>, Vec<String>), PodError> {
        let (mut mounts, mut fields) = (Vec::new(), Vec::new());
        for (i, vm) in c.volume_mounts.iter().flatten().enumerate() {
            let field = format!("{field}.volumeMounts[{i}]");
            let (src, always_ro) = volumes.get(&vm.name).ok_or_else(|| {
                self.invalid(format!("{field}.name: no volume named {:?}", vm.name))
            })?;
            let mut source = src.clone();
            if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                let p = Path::new(sub);
                if p.is_absolute()
                    || p.components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(self.invalid(format!(
                        "{field}.subPath: must be a relative path without '..', got {sub:?}"
                    )));
                }
                source = crate::rootfs::secure_join(src, p)
                    .map_err(io(format!("resolve subPath {sub}")))?;
                if !source.exists() {
                    std::fs::create_dir_all(&source)
                        .map_err(io(format!("create subPath {}", source.display())))?;
                }
            }
            if !vm.mount_path.starts_with('/') {
                return Err(self.invalid(format!(
                    "{field}.mountPath: must be absolute, got {:?}",
                    vm.mount_path
                )));
            }
            let propagation = match vm.mount_propagation.as_deref() {
                None | Some("None") => Propagation::Private,
                Some("HostToContainer") => Propagation::Rslave,
                Some("Bidirectional") if privileged => Propagation::Rshared,
                Some("Bidirectional") => {
                    return Err(self.invalid(format!(
                        "{field}.mountPropagation: Bidirectional requires a privileged container"
                    )))
                }
                Some(other) => {
                    return Err(
                        self.invalid(format!("{field}.mountPropagation: unknown value {other:?}"))
                    )
                }
            };
            mounts.push(MountSpec {
                container_path: vm.mount_path.clone(),
                host_path: source,
                readonly: *always_ro || vm.read_only.unwrap_or(false),
                propagation,
            });
            fields.push(field);
        }
        Ok((mounts, fields))
    }
}

/// kubelet's oom_score_adj policy by QoS class.
fn oom_score_adj(qos: QosClass, c: &Container) -> i32 {
    match qos {
        QosClass::Guaranteed => -997,
        QosClass::BestEffort => 1000,
        QosClass::Burstable => {
            let request = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("memory"))
                .and_then(|q| spec::parse_quantity_bytes(&q.0).ok())
                .unwrap_or(0);
            let total = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .next()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|k| k.parse::<i64>().ok())
                })
                .map(|kb| kb * 1024)
                .unwrap_or(1 << 34);
            let adj = 1000 - (1000 * request) / total.max(1);
            adj.clamp(2, 999) as i32
        }
    }
}

/// The host ports of every container, for the CNI `portMappings` capability.
fn port_mappings(pod: &Pod) -> Vec<PortMapping> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(PortMapping {
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                container_port: p.container_port,
                host_port: p.host_port.filter(|h| *h > 0)?,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_from_host_ports() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]},
                {"name": "b", "ports": [{"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"}]}
            ]}
        }))
        .unwrap();
        let pm = port_mappings(&pod);
        assert_eq!(pm.len(), 2);
        assert_eq!((pm[0].host_port, pm[0].container_port), (8080, 80));
        assert_eq!(pm[0].protocol, "tcp");
        assert_eq!(pm[1].protocol, "udp");
        assert_eq!(pm[1].host_ip, "127.0.0.1");
    }
}
