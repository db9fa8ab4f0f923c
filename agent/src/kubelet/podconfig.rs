//! From a Pod to the CRI: the sandbox config (metadata, hostname, DNS, port mappings,
//! namespaces, the cgroup parent of its QoS class) and each container's config (image,
//! command, env with its references resolved, mounts, resources, security context), as
//! kubelet builds them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use podrun_cri_proto::v1 as cri;
use podrun_runtime::spec::{expand, parse_quantity_bytes, parse_quantity_milli_cpu};

use super::cri::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID};
use super::status::qos_class;
use super::volumes::{field_lookup, safe_relative};

/// Node-wide settings the configs depend on.
#[derive(Clone, Debug)]
pub struct NodeContext {
    pub node_name: String,
    pub node_ip: String,
    /// `/` or a prefix the pods' cgroups go under (kubelet's --cgroup-root).
    pub cgroup_root: String,
    /// `cgroupfs` or `systemd`.
    pub cgroup_driver: String,
    pub pod_logs_dir: PathBuf,
    pub memory_capacity: u64,
    /// The cluster DNS servers (kubelet's --cluster-dns); empty: pods use the host's.
    pub cluster_dns: Vec<std::net::IpAddr>,
    /// The cluster's DNS domain (kubelet's --cluster-domain).
    pub cluster_domain: String,
}

pub fn pod_key(pod: &Pod) -> (String, String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

/// `/var/log/pods/<namespace>_<name>_<uid>`.
pub fn log_directory(ctx: &NodeContext, pod: &Pod) -> PathBuf {
    let (ns, name, uid) = pod_key(pod);
    ctx.pod_logs_dir.join(format!("{ns}_{name}_{uid}"))
}

/// The pod's cgroup under its QoS class, in the form of the cgroup driver.
pub fn cgroup_parent(ctx: &NodeContext, pod: &Pod) -> String {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    cgroup_parent_for(ctx, &uid, qos_class(pod))
}

/// The cgroup parent of pod `uid` in QoS class `qos` (Guaranteed, Burstable, BestEffort).
pub fn cgroup_parent_for(ctx: &NodeContext, uid: &str, qos: &str) -> String {
    if ctx.cgroup_driver == "systemd" {
        let uid = uid.replace('-', "_");
        return match qos {
            "Guaranteed" => format!("kubepods-pod{uid}.slice"),
            q => format!("kubepods-{}-pod{uid}.slice", q.to_lowercase()),
        };
    }
    let root = ctx.cgroup_root.trim_end_matches('/');
    match qos {
        "Guaranteed" => format!("{root}/kubepods/pod{uid}"),
        q => format!("{root}/kubepods/{}/pod{uid}", q.to_lowercase()),
    }
}

fn labels(pod: &Pod) -> HashMap<String, String> {
    let (ns, name, uid) = pod_key(pod);
    let mut l: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    l.insert(POD_NAME.into(), name);
    l.insert(POD_NAMESPACE.into(), ns);
    l.insert(POD_UID.into(), uid);
    l
}

/// kubelet's limits on what it writes to a pod's resolv.conf.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// The pod's resolv.conf as kubelet writes it. ClusterFirst (and
/// ClusterFirstWithHostNet on the host's network) gets the cluster DNS servers, the
/// search path `<ns>.svc.<domain> svc.<domain> <domain>` then the host's, and
/// `ndots:5`; with no cluster DNS configured it is the host's, as is Default; None is
/// only the pod's own `dnsConfig`, which is merged into the others as well. None
/// (keep the host's file) for a pod on the host network under any other policy.
pub fn dns_config(ctx: &NodeContext, pod: &Pod, host_resolv: &str) -> Option<cri::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let host_network = spec.host_network.unwrap_or(false);
    let mut policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    if host_network {
        match policy {
            "ClusterFirstWithHostNet" => policy = "ClusterFirst",
            "None" => {}
            _ => return None,
        }
    } else if policy == "ClusterFirstWithHostNet" {
        policy = "ClusterFirst";
    }
    if policy == "ClusterFirst" && ctx.cluster_dns.is_empty() {
        policy = "Default";
    }
    let mut host = cri::DnsConfig::default();
    for line in host_resolv.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => host.servers.extend(f.next().map(str::to_owned)),
            Some("search") => host.searches = f.map(str::to_owned).collect(),
            Some("domain") => host.searches = f.next().map(str::to_owned).into_iter().collect(),
            Some("options") => host.options.extend(f.map(str::to_owned)),
            _ => {}
        }
    }
    let mut cfg = match policy {
        "None" => cri::DnsConfig::default(),
        "ClusterFirst" => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let domain = ctx.cluster_domain.trim_end_matches('.');
            let mut searches = vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_owned(),
            ];
            searches.extend(host.searches);
            cri::DnsConfig {
                servers: ctx.cluster_dns.iter().map(|ip| ip.to_string()).collect(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        _ => host,
    };
    if let Some(d) = &spec.dns_config {
        cfg.servers.extend(d.nameservers.iter().flatten().cloned());
        cfg.searches.extend(d.searches.iter().flatten().cloned());
        for o in d.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            // A pod's option replaces the same one from the policy.
            cfg.options
                .retain(|existing| existing.split(':').next() != Some(name.as_str()));
            cfg.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    cfg.searches.retain(|s| seen.insert(s.clone()));
    cfg.searches.truncate(MAX_SEARCHES);
    while cfg.searches.iter().map(|s| s.len() + 1).sum::<usize>() > MAX_SEARCH_CHARS {
        cfg.searches.pop();
    }
    cfg.servers.truncate(MAX_NAMESERVERS);
    Some(cfg)
}

pub fn sandbox_config(
    ctx: &NodeContext,
    pod: &Pod,
    attempt: u32,
    host_resolv: &str,
) -> cri::PodSandboxConfig {
    let (ns, name, uid) = pod_key(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let mut hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
    if host_network {
        hostname = ctx.node_name.clone();
    }
    // A hostname is at most 63 characters; kubelet cuts longer pod names.
    hostname.truncate(63);
    let hostname = hostname.trim_end_matches(['-', '.']).to_owned();
    let mut port_mappings = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            let Some(host_port) = p.host_port.filter(|p| *p > 0) else {
                continue;
            };
            port_mappings.push(cri::PortMapping {
                protocol: match p.protocol.as_deref() {
                    Some("UDP") => cri::Protocol::Udp as i32,
                    Some("SCTP") => cri::Protocol::Sctp as i32,
                    _ => cri::Protocol::Tcp as i32,
                },
                container_port: p.container_port,
                host_port,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            });
        }
    }
    let ns_opts = cri::NamespaceOption {
        network: if host_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        } as i32,
        pid: if spec.host_pid.unwrap_or(false) {
            cri::NamespaceMode::Node
        } else if spec.share_process_namespace.unwrap_or(false) {
            cri::NamespaceMode::Pod
        } else {
            cri::NamespaceMode::Container
        } as i32,
        ipc: if spec.host_ipc.unwrap_or(false) {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        } as i32,
        ..Default::default()
    };
    let psc = spec.security_context.clone().unwrap_or_default();
    let sysctls: HashMap<String, String> = psc
        .sysctls
        .iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid,
            namespace: ns,
            attempt,
        }),
        hostname,
        log_directory: log_directory(ctx, pod).to_string_lossy().into_owned(),
        dns_config: dns_config(ctx, pod, host_resolv),
        port_mappings,
        labels: labels(pod),
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(ctx, pod),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(ns_opts),
                run_as_user: psc.run_as_user.map(|v| cri::Int64Value { value: v }),
                run_as_group: psc.run_as_group.map(|v| cri::Int64Value { value: v }),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        windows: None,
    }
}

/// The value of an env var's fieldRef, as the downward API defines it.
pub fn env_field(pod: &Pod, ctx: &NodeContext, pod_ip: &str, path: &str) -> Result<String, String> {
    let md = &pod.metadata;
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "spec.nodeName" => ctx.node_name.clone(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => ctx.node_ip.clone(),
        "status.podIP" | "status.podIPs" => pod_ip.to_owned(),
        other => {
            field_lookup(pod, other).ok_or_else(|| format!("unsupported fieldPath {other:?}"))?
        }
    })
}

/// Where the data of env references comes from.
pub trait EnvSource {
    fn config_map(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>>;
    fn secret(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>>;
}

/// The names of the configMaps and secrets a container's env refers to.
pub fn env_references(c: &Container) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for e in c.env.iter().flatten() {
        if let Some(vf) = &e.value_from {
            if let Some(r) = &vf.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &vf.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    for ef in c.env_from.iter().flatten() {
        if let Some(r) = &ef.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &ef.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

fn resource_value(c: &Container, resource: &str, divisor: Option<&str>) -> Result<String, String> {
    let r = c.resources.clone().unwrap_or_default();
    let (list, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let map = match list {
        "limits" => r.limits.unwrap_or_default(),
        "requests" => r.requests.unwrap_or_default(),
        _ => return Err(format!("unsupported resource {resource:?}")),
    };
    let q = map.get(name).map(|q| q.0.clone());
    match name {
        "cpu" => {
            let milli = q
                .map(|q| parse_quantity_milli_cpu(&q))
                .transpose()
                .map_err(|e| e.to_string())?;
            let div = divisor
                .map(parse_quantity_milli_cpu)
                .transpose()
                .map_err(|e| e.to_string())?
                .filter(|d| *d > 0)
                .unwrap_or(1000);
            // Without a limit, the node's capacity would be used; requests default to 0.
            let v = milli.unwrap_or(0);
            Ok(((v + div - 1) / div).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let b = q
                .map(|q| parse_quantity_bytes(&q))
                .transpose()
                .map_err(|e| e.to_string())?
                .unwrap_or(0);
            let div = divisor
                .map(parse_quantity_bytes)
                .transpose()
                .map_err(|e| e.to_string())?
                .filter(|d| *d > 0)
                .unwrap_or(1);
            Ok(((b + div - 1) / div).to_string())
        }
        _ => Err(format!("unsupported resource {resource:?}")),
    }
}

/// The container's environment, in order, with references resolved and `$(VAR)`
/// expanded against the variables before it. An error reads as kubelet's
/// CreateContainerConfigError message.
pub fn resolve_env(
    pod: &Pod,
    c: &Container,
    ctx: &NodeContext,
    pod_ip: &str,
    src: &dyn EnvSource,
) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |out: &mut Vec<(String, String)>, k: String, v: String| {
        out.retain(|(x, _)| *x != k);
        out.push((k, v));
    };
    for ef in c.env_from.iter().flatten() {
        let prefix = ef.prefix.clone().unwrap_or_default();
        let (data, what, optional) = if let Some(r) = &ef.config_map_ref {
            (
                src.config_map(&r.name),
                format!("configmap {:?}", r.name),
                r.optional == Some(true),
            )
        } else if let Some(r) = &ef.secret_ref {
            (
                src.secret(&r.name),
                format!("secret {:?}", r.name),
                r.optional == Some(true),
            )
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(
                        &mut out,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(v).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => return Err(format!("{what} not found")),
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in c.env.iter().flatten()
    {
        let v = if let Some(vf) = value_from {
            if let Some(f) = &vf.field_ref {
                env_field(pod, ctx, pod_ip, &f.field_path)?
            } else if let Some(r) = &vf.resource_field_ref {
                let target = match &r.container_name {
                    Some(n) if !n.is_empty() => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.iter().find(|x| x.name == *n))
                        .ok_or_else(|| format!("resourceFieldRef names no container {n:?}"))?,
                    _ => c,
                };
                resource_value(
                    target,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                )?
            } else if let Some(r) = &vf.config_map_key_ref {
                match src.config_map(&r.name).map(|d| d.get(&r.key)) {
                    Some(Some(v)) => String::from_utf8_lossy(v).into_owned(),
                    _ if r.optional == Some(true) => continue,
                    Some(None) => {
                        return Err(format!(
                            "couldn't find key {} in ConfigMap {}/{}",
                            r.key,
                            pod_key(pod).0,
                            r.name
                        ))
                    }
                    None => return Err(format!("configmap {:?} not found", r.name)),
                }
            } else if let Some(r) = &vf.secret_key_ref {
                match src.secret(&r.name).map(|d| d.get(&r.key)) {
                    Some(Some(v)) => String::from_utf8_lossy(v).into_owned(),
                    _ if r.optional == Some(true) => continue,
                    Some(None) => {
                        return Err(format!(
                            "couldn't find key {} in Secret {}/{}",
                            r.key,
                            pod_key(pod).0,
                            r.name
                        ))
                    }
                    None => return Err(format!("secret {:?} not found", r.name)),
                }
            } else {
                String::new()
            }
        } else {
            let raw = value.clone().unwrap_or_default();
            let lookup = |n: &str| {
                out.iter()
                    .rev()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            };
            expand(&raw, lookup)
        };
        set(&mut out, name.clone(), v);
    }
    Ok(out)
}

/// kubelet's CPU shares for a request in millicores (2 at least).
pub fn milli_to_shares(milli: i64) -> i64 {
    if milli == 0 {
        return 2;
    }
    (milli * 1024 / 1000).max(2)
}

fn linux_resources(pod: &Pod, c: &Container, memory_capacity: u64) -> cri::LinuxContainerResources {
    let r = c.resources.clone().unwrap_or_default();
    let req = r.requests.unwrap_or_default();
    let lim = r.limits.unwrap_or_default();
    let cpu = |m: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        m.get("cpu")
            .and_then(|q| parse_quantity_milli_cpu(&q.0).ok())
    };
    let mem = |m: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        m.get("memory")
            .and_then(|q| parse_quantity_bytes(&q.0).ok())
    };
    let cpu_req = cpu(&req).or(cpu(&lim)).unwrap_or(0);
    let mut out = cri::LinuxContainerResources {
        cpu_shares: milli_to_shares(cpu_req),
        ..Default::default()
    };
    if let Some(l) = cpu(&lim) {
        out.cpu_period = 100_000;
        out.cpu_quota = (l * 100_000 / 1000).max(1000);
    }
    if let Some(l) = mem(&lim) {
        out.memory_limit_in_bytes = l;
    }
    // kubelet's OOM score adjustment by QoS class.
    out.oom_score_adj = match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let request = mem(&req).unwrap_or(0).max(0) as u64;
            let cap = memory_capacity.max(1);
            let adj = 1000 - (1000 * request / cap) as i64;
            adj.clamp(2, 999)
        }
    };
    out
}

/// The files kubelet writes per pod and mounts into every container.
pub struct PodFiles {
    pub etc_hosts: Option<PathBuf>,
}

/// The pod's /etc/hosts, as kubelet writes it.
pub fn etc_hosts(pod: &Pod, pod_ips: &[String]) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let hostname = spec.hostname.clone().unwrap_or(name);
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let fqdn = spec.subdomain.as_ref().map(|sub| {
        format!(
            "{hostname}.{sub}.{}.svc.cluster.local",
            pod.metadata.namespace.as_deref().unwrap_or("default")
        )
    });
    for ip in pod_ips {
        match &fqdn {
            Some(f) => s.push_str(&format!("{ip}\t{f}\t{hostname}\n")),
            None => s.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    let aliases = spec.host_aliases.unwrap_or_default();
    if !aliases.is_empty() {
        s.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            s.push_str(&format!(
                "{}\t{}\n",
                a.ip,
                a.hostnames.unwrap_or_default().join("\t")
            ));
        }
    }
    s
}

pub struct ContainerInputs<'a> {
    pub attempt: u32,
    pub env: Vec<(String, String)>,
    pub volumes: &'a HashMap<String, PathBuf>,
    pub files: &'a PodFiles,
    pub image: String,
}

pub fn container_config(
    ctx: &NodeContext,
    pod: &Pod,
    c: &Container,
    inp: &ContainerInputs,
) -> Result<cri::ContainerConfig, String> {
    let lookup = |n: &str| {
        inp.env
            .iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter().flatten().map(|s| expand(s, lookup)).collect()
    };
    let mut mounts = Vec::new();
    let mut has_hosts = false;
    for m in c.volume_mounts.iter().flatten() {
        let base = inp
            .volumes
            .get(&m.name)
            .ok_or_else(|| format!("volumeMount {:?}: no volume of that name", m.name))?;
        let sub = m
            .sub_path_expr
            .as_ref()
            .map(|e| expand(e, lookup))
            .or_else(|| m.sub_path.clone())
            .unwrap_or_default();
        let host = if sub.is_empty() {
            base.clone()
        } else {
            if !safe_relative(&sub) {
                return Err(format!(
                    "volumeMount {:?}: subPath {sub:?} must be relative without '..'",
                    m.name
                ));
            }
            let p = base.join(&sub);
            if !p.exists() {
                std::fs::create_dir_all(&p).map_err(|e| format!("subPath {}: {e}", p.display()))?;
            }
            p
        };
        if m.mount_path == "/etc/hosts" {
            has_hosts = true;
        }
        mounts.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: m.read_only.unwrap_or(false),
            propagation: match m.mount_propagation.as_deref() {
                Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
                Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional,
                _ => cri::MountPropagation::PropagationPrivate,
            } as i32,
            ..Default::default()
        });
    }
    if let (Some(hosts), false) = (&inp.files.etc_hosts, has_hosts) {
        mounts.push(cri::Mount {
            container_path: "/etc/hosts".into(),
            host_path: hosts.to_string_lossy().into_owned(),
            ..Default::default()
        });
    }
    let psc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let labels: HashMap<String, String> = HashMap::from([
        (POD_NAME.to_owned(), pod_key(pod).1),
        (POD_NAMESPACE.to_owned(), pod_key(pod).0),
        (POD_UID.to_owned(), pod_key(pod).2),
        (CONTAINER_NAME.to_owned(), c.name.clone()),
    ]);
    let annotations = HashMap::from([
        (
            "io.kubernetes.container.restartCount".to_owned(),
            inp.attempt.to_string(),
        ),
        (
            "io.kubernetes.container.terminationMessagePath".to_owned(),
            c.termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
        ),
        (
            "io.kubernetes.pod.terminationGracePeriod".to_owned(),
            spec.termination_grace_period_seconds
                .unwrap_or(30)
                .to_string(),
        ),
    ]);
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt: inp.attempt,
        }),
        image: Some(cri::ImageSpec {
            image: inp.image.clone(),
            user_specified_image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: inp
            .env
            .iter()
            .map(|(k, v)| cri::KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        mounts,
        labels,
        annotations,
        log_path: format!("{}/{}.log", c.name, inp.attempt),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(linux_resources(pod, c, ctx.memory_capacity)),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: caps.add.clone().unwrap_or_default(),
                    drop_capabilities: caps.drop.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                privileged: sc.privileged.unwrap_or(false),
                namespace_options: sandbox_config(ctx, pod, 0, "")
                    .linux
                    .and_then(|l| l.security_context)
                    .and_then(|s| s.namespace_options),
                run_as_user: sc
                    .run_as_user
                    .or(psc.run_as_user)
                    .map(|v| cri::Int64Value { value: v }),
                run_as_group: sc
                    .run_as_group
                    .or(psc.run_as_group)
                    .map(|v| cri::Int64Value { value: v }),
                readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

/// The directory of a pod's kubelet-side files (volumes, /etc/hosts).
pub fn pod_dir(state_dir: &Path, uid: &str) -> PathBuf {
    state_dir.join("pods").join(uid)
}

#[cfg(test)]
mod tests;
