//! A container's environment as the kubelet and the CRI runtime build it together.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret,
};

use super::command::expand;
use super::quantity::{parse_quantity_bytes, parse_quantity_milli, parse_quantity_milli_cpu};
use super::SpecError;

/// What `resolve_env` needs besides the container: the pod, the objects its references
/// resolve against, and the runtime facts only known once the sandbox exists.
#[derive(Debug, Clone, Copy)]
pub struct EnvContext<'a> {
    pub pod: &'a Pod,
    pub config_maps: &'a BTreeMap<String, ConfigMap>,
    pub secrets: &'a BTreeMap<String, Secret>,
    pub pod_ip: Option<&'a str>,
    pub host_ip: Option<&'a str>,
    pub node_name: &'a str,
}

/// An ordered environment where setting an existing name replaces it in place, as
/// containerd does when it lays the container's env over the image's.
#[derive(Default)]
struct OrderedEnv(Vec<(String, String)>);

impl OrderedEnv {
    fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }
}

/// The container's final environment, in order: the image's env, then `envFrom` sources
/// (with their prefix), then `env` entries; a later definition of a name replaces the
/// earlier value in place.
///
/// `$(VAR)` in an `env` value expands from variables the pod defined before it (envFrom
/// and earlier env entries), not from the image's env, which the kubelet never sees.
/// `valueFrom` resolves configMapKeyRef, secretKeyRef, fieldRef and resourceFieldRef; a
/// missing object or key that is not `optional: true` is an error naming the variable.
pub fn resolve_env(
    container: &Container,
    image_env: &[String],
    ctx: &EnvContext,
) -> Result<Vec<(String, String)>, SpecError> {
    let err = |variable: &str, reason: String| SpecError::ResolveEnv {
        container: container.name.clone(),
        variable: variable.to_string(),
        reason,
    };
    let mut out = OrderedEnv::default();
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        out.set(k, v.to_string());
    }
    // Variables the pod defined so far: the scope of $(VAR) expansion.
    let mut pod_vars: HashMap<String, String> = HashMap::new();

    for (j, from) in container.env_from.iter().flatten().enumerate() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let label = format!("envFrom[{j}]");
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(r) = &from.config_map_ref {
            match ctx.config_maps.get(&r.name) {
                Some(cm) => pairs.extend(
                    cm.data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone())),
                ),
                None if r.optional == Some(true) => {}
                None => return Err(err(&label, format!("ConfigMap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match ctx.secrets.get(&r.name) {
                Some(s) => pairs.extend(secret_data(s)),
                None if r.optional == Some(true) => {}
                None => return Err(err(&label, format!("Secret {:?} not found", r.name))),
            }
        }
        for (k, v) in pairs {
            let name = format!("{prefix}{k}");
            // The kubelet skips keys that are not valid variable names.
            if name.is_empty() || name.contains('=') {
                continue;
            }
            out.set(&name, v.clone());
            pod_vars.insert(name, v);
        }
    }

    for e in container.env.iter().flatten() {
        let value = match &e.value_from {
            None => {
                let raw = e.value.as_deref().unwrap_or_default();
                expand(raw, |n| pod_vars.get(n).cloned())
            }
            Some(src) => {
                if let Some(r) = &src.config_map_key_ref {
                    let v = ctx
                        .config_maps
                        .get(&r.name)
                        .ok_or_else(|| format!("ConfigMap {:?} not found", r.name))
                        .and_then(|cm| {
                            cm.data
                                .as_ref()
                                .and_then(|d| d.get(&r.key).cloned())
                                .or_else(|| {
                                    cm.binary_data
                                        .as_ref()
                                        .and_then(|d| d.get(&r.key))
                                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                                })
                                .ok_or_else(|| {
                                    format!("ConfigMap {:?} has no key {:?}", r.name, r.key)
                                })
                        });
                    match v {
                        Ok(v) => v,
                        // An optional reference that does not resolve leaves the variable unset.
                        Err(_) if r.optional == Some(true) => continue,
                        Err(reason) => return Err(err(&e.name, reason)),
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    let v = ctx
                        .secrets
                        .get(&r.name)
                        .ok_or_else(|| format!("Secret {:?} not found", r.name))
                        .and_then(|s| {
                            secret_data(s)
                                .into_iter()
                                .rev()
                                .find(|(k, _)| *k == r.key)
                                .map(|(_, v)| v)
                                .ok_or_else(|| {
                                    format!("Secret {:?} has no key {:?}", r.name, r.key)
                                })
                        });
                    match v {
                        Ok(v) => v,
                        Err(_) if r.optional == Some(true) => continue,
                        Err(reason) => return Err(err(&e.name, reason)),
                    }
                } else if let Some(f) = &src.field_ref {
                    field_ref_value(f, ctx).map_err(|reason| err(&e.name, reason))?
                } else if let Some(r) = &src.resource_field_ref {
                    resource_field_value(r, container, ctx.pod)
                        .map_err(|reason| err(&e.name, reason))?
                } else {
                    return Err(err(&e.name, "valueFrom has no source".to_string()));
                }
            }
        };
        out.set(&e.name, value.clone());
        pod_vars.insert(e.name.clone(), value);
    }
    Ok(out.0)
}

/// A Secret's values as strings: `data` (already base64-decoded), then `stringData`,
/// which wins on the API server.
fn secret_data(s: &Secret) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = s
        .data
        .iter()
        .flatten()
        .map(|(k, b)| (k.clone(), String::from_utf8_lossy(&b.0).into_owned()))
        .collect();
    for (k, sv) in s.string_data.iter().flatten() {
        v.retain(|(ek, _)| ek != k);
        v.push((k.clone(), sv.clone()));
    }
    v
}

/// `metadata.labels['key']` -> Some("key").
fn subscript<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

fn field_ref_value(f: &ObjectFieldSelector, ctx: &EnvContext) -> Result<String, String> {
    let pod = ctx.pod;
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let path = f.field_path.as_str();
    if let Some(key) = subscript(path, "metadata.labels") {
        return Ok(meta
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .cloned()
            .unwrap_or_default());
    }
    if let Some(key) = subscript(path, "metadata.annotations") {
        return Ok(meta
            .annotations
            .as_ref()
            .and_then(|l| l.get(key))
            .cloned()
            .unwrap_or_default());
    }
    let pod_ip = ctx
        .pod_ip
        .map(str::to_string)
        .or_else(|| status.and_then(|s| s.pod_ip.clone()))
        .unwrap_or_default();
    let host_ip = ctx
        .host_ip
        .map(str::to_string)
        .or_else(|| status.and_then(|s| s.host_ip.clone()))
        .unwrap_or_default();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| ctx.node_name.to_string()),
        // The ServiceAccount admission plugin sets "default" on every pod of a cluster.
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" => pod_ip,
        "status.hostIP" => host_ip,
        "status.podIPs" => {
            let ips: Vec<String> = status
                .and_then(|s| s.pod_ips.as_ref())
                .into_iter()
                .flatten()
                .map(|p| p.ip.clone())
                .collect();
            if ips.is_empty() {
                pod_ip
            } else {
                ips.join(",")
            }
        }
        "status.hostIPs" => {
            let ips: Vec<String> = status
                .and_then(|s| s.host_ips.as_ref())
                .into_iter()
                .flatten()
                .map(|p| p.ip.clone())
                .collect();
            if ips.is_empty() {
                host_ip
            } else {
                ips.join(",")
            }
        }
        other => return Err(format!("unsupported fieldRef {other:?}")),
    })
}

/// Node capacity, used for a limit the container does not set (the kubelet substitutes
/// the node's allocatable resources).
fn node_cpu_milli() -> i128 {
    std::thread::available_parallelism()
        .map(|n| n.get() as i128 * 1000)
        .unwrap_or(1000)
}

fn node_memory_bytes() -> i128 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i128>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn resource_field_value(
    r: &ResourceFieldSelector,
    this: &Container,
    pod: &Pod,
) -> Result<String, String> {
    let container = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => this,
        Some(name) => super::all_containers(pod)
            .find(|c| c.name == name)
            .ok_or_else(|| format!("resourceFieldRef: no container {name:?} in the pod"))?,
    };
    let divisor = r.divisor.as_ref().map(|d| d.0.as_str()).unwrap_or("1");
    let divisor_milli = parse_quantity_milli(divisor).map_err(|e| e.to_string())?;
    if divisor_milli <= 0 {
        return Err(format!("divisor {divisor:?} must be positive"));
    }
    let res = container.resources.as_ref();
    let get = |list: &str, name: &str| -> Option<String> {
        let map = match list {
            "limits" => res.and_then(|r| r.limits.as_ref()),
            _ => res.and_then(|r| r.requests.as_ref()),
        };
        map.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let (list, name) = r
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {:?}", r.resource))?;
    // Requests default to limits; limits default to what the node has.
    let quantity = match list {
        "requests" => get("requests", name).or_else(|| get("limits", name)),
        "limits" => get("limits", name),
        other => return Err(format!("unsupported resource {other:?}")),
    };
    let value_milli: i128 = match (name, quantity) {
        ("cpu", Some(q)) => parse_quantity_milli_cpu(&q).map_err(|e| e.to_string())? as i128,
        ("memory" | "ephemeral-storage", Some(q)) => {
            parse_quantity_bytes(&q).map_err(|e| e.to_string())? as i128 * 1000
        }
        ("cpu", None) if list == "limits" => node_cpu_milli(),
        ("memory", None) if list == "limits" => node_memory_bytes() * 1000,
        ("cpu" | "memory" | "ephemeral-storage", None) => 0,
        (other, _) => return Err(format!("unsupported resource {list}.{other}")),
    };
    // Round up, as the kubelet does: 250m with divisor 1 is "1".
    let v = (value_milli + divisor_milli - 1) / divisor_milli;
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse_manifest, PodManifest};
    use std::path::Path;

    const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: envdemo
  namespace: team
  uid: 1234-uid
  labels: {app: web, tier: front}
  annotations: {note: hello}
spec:
  serviceAccountName: builder
  containers:
  - name: app
    image: busybox
    resources:
      requests: {cpu: 250m, memory: 64Mi}
      limits: {cpu: "1", memory: 128Mi}
    envFrom:
    - configMapRef: {name: settings}
    - prefix: SEC_
      secretRef: {name: creds}
    - configMapRef: {name: absent, optional: true}
    env:
    - {name: LEVEL, value: debug}
    - {name: MODE, value: "level=$(LEVEL) color=$(COLOR) path=$(PATH) esc=$$(LEVEL)"}
    - {name: PATH, value: /custom/bin}
    - name: FROM_CM
      valueFrom: {configMapKeyRef: {name: settings, key: COLOR}}
    - name: BIN_CM
      valueFrom: {configMapKeyRef: {name: settings, key: blob}}
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: creds, key: password}}
    - name: TOKEN
      valueFrom: {secretKeyRef: {name: creds, key: token}}
    - name: GONE
      valueFrom: {secretKeyRef: {name: nothere, key: x, optional: true}}
    - name: GONE_KEY
      valueFrom: {configMapKeyRef: {name: settings, key: nokey, optional: true}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: NOLABEL, valueFrom: {fieldRef: {fieldPath: "metadata.labels['none']"}}}
    - {name: NOTE, valueFrom: {fieldRef: {fieldPath: "metadata.annotations['note']"}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: SA, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: POD_IPS, valueFrom: {fieldRef: {fieldPath: status.podIPs}}}
    - {name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    - {name: HOST_IPS, valueFrom: {fieldRef: {fieldPath: status.hostIPs}}}
    - {name: CPU_LIMIT, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}
    - {name: CPU_REQ_M, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}
    - {name: CPU_REQ, valueFrom: {resourceFieldRef: {resource: requests.cpu}}}
    - {name: MEM_LIMIT_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: MEM_REQ, valueFrom: {resourceFieldRef: {resource: requests.memory}}}
    - {name: OTHER_MEM, valueFrom: {resourceFieldRef: {containerName: side, resource: limits.memory, divisor: 1Mi}}}
  - name: side
    image: busybox
    resources: {limits: {memory: 32Mi}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: team}
data: {COLOR: blue, LEVEL: info}
binaryData: {blob: aGk=}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: team}
data: {password: czNjcjN0}
stringData: {token: abc, USER: admin}
"#;

    fn manifest() -> PodManifest {
        parse_manifest(MANIFEST, Path::new("env.yaml")).unwrap()
    }

    fn resolve(m: &PodManifest, image_env: &[&str]) -> Result<Vec<(String, String)>, SpecError> {
        let ctx = EnvContext {
            pod: &m.pod,
            config_maps: &m.config_maps,
            secrets: &m.secrets,
            pod_ip: Some("10.88.0.5"),
            host_ip: Some("192.0.2.1"),
            node_name: "node-1",
        };
        let image_env: Vec<String> = image_env.iter().map(|s| s.to_string()).collect();
        resolve_env(
            &m.pod.spec.as_ref().unwrap().containers[0],
            &image_env,
            &ctx,
        )
    }

    #[test]
    fn every_source_and_the_order() {
        let mut m = manifest();
        // Not a valid variable name: the kubelet skips it.
        let cm = m.config_maps.get_mut("settings").unwrap();
        cm.data
            .as_mut()
            .unwrap()
            .insert("bad=key".into(), "x".into());
        let env = resolve(
            &m,
            &[
                "PATH=/usr/bin:/bin",
                "LEVEL=image",
                "IMAGE_ONLY=1",
                "NOVALUE",
            ],
        )
        .unwrap();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        // Image vars keep their slots; envFrom keys follow in key order, then env in order.
        assert_eq!(
            &names[..8],
            &[
                "PATH",
                "LEVEL",
                "IMAGE_ONLY",
                "NOVALUE",
                "COLOR",
                "SEC_password",
                "SEC_USER",
                "SEC_token"
            ]
        );
        assert!(!names.contains(&"bad=key"));
        assert!(!names.contains(&"GONE"));
        assert!(!names.contains(&"GONE_KEY"));
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{k} missing"))
        };
        assert_eq!(get("PATH"), "/custom/bin");
        assert_eq!(get("LEVEL"), "debug");
        assert_eq!(get("IMAGE_ONLY"), "1");
        assert_eq!(get("NOVALUE"), "");
        // $(COLOR) from envFrom, $(PATH) not yet defined by the pod (image env is not in scope).
        assert_eq!(
            get("MODE"),
            "level=debug color=blue path=$(PATH) esc=$(LEVEL)"
        );
        assert_eq!(get("FROM_CM"), "blue");
        assert_eq!(get("BIN_CM"), "hi");
        assert_eq!(get("PASSWORD"), "s3cr3t");
        assert_eq!(get("SEC_password"), "s3cr3t");
        assert_eq!(get("TOKEN"), "abc");
        assert_eq!(get("SEC_USER"), "admin");
        assert_eq!(get("POD_NAME"), "envdemo");
        assert_eq!(get("POD_NS"), "team");
        assert_eq!(get("POD_UID"), "1234-uid");
        assert_eq!(get("APP"), "web");
        assert_eq!(get("NOLABEL"), "");
        assert_eq!(get("NOTE"), "hello");
        assert_eq!(get("NODE"), "node-1");
        assert_eq!(get("SA"), "builder");
        assert_eq!(get("POD_IP"), "10.88.0.5");
        assert_eq!(get("POD_IPS"), "10.88.0.5");
        assert_eq!(get("HOST_IP"), "192.0.2.1");
        assert_eq!(get("HOST_IPS"), "192.0.2.1");
        assert_eq!(get("CPU_LIMIT"), "1");
        assert_eq!(get("CPU_REQ_M"), "250");
        assert_eq!(get("CPU_REQ"), "1"); // 250m rounds up to 1
        assert_eq!(get("MEM_LIMIT_MI"), "128");
        assert_eq!(get("MEM_REQ"), "67108864");
        assert_eq!(get("OTHER_MEM"), "32");
    }

    #[test]
    fn later_env_entries_override_envfrom_and_earlier_entries() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - name: c
    image: x
    envFrom: [{configMapRef: {name: cm}}, {configMapRef: {name: cm2}}]
    env:
    - {name: A, value: from-env}
    - {name: B, value: "$(A)"}
    - {name: A, value: second}
    - {name: C, value: "$(A)"}
---
{apiVersion: v1, kind: ConfigMap, metadata: {name: cm}, data: {A: cm, X: one}}
---
{apiVersion: v1, kind: ConfigMap, metadata: {name: cm2}, data: {X: two}}
"#;
        let m = parse_manifest(text, Path::new("p.yaml")).unwrap();
        let env = resolve(&m, &[]).unwrap();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            vec![
                ("A", "second"),
                ("X", "two"),
                ("B", "from-env"),
                ("C", "second")
            ]
        );
    }

    #[test]
    fn missing_references_are_errors_naming_container_and_variable() {
        let base = manifest();
        type Mutate = Box<dyn Fn(&mut PodManifest)>;
        let cases: Vec<(&str, Mutate, &str)> = vec![
            (
                "missing secret key",
                Box::new(|m| {
                    m.secrets.get_mut("creds").unwrap().data = None;
                }),
                "app: env PASSWORD: Secret \"creds\" has no key \"password\"",
            ),
            (
                "missing configmap",
                Box::new(|m| {
                    m.config_maps.clear();
                }),
                "app: env envFrom[0]: ConfigMap \"settings\" not found",
            ),
            (
                "missing secret",
                Box::new(|m| {
                    m.secrets.clear();
                }),
                "app: env envFrom[1]: Secret \"creds\" not found",
            ),
            (
                "missing configmap key",
                Box::new(|m| {
                    m.config_maps
                        .get_mut("settings")
                        .unwrap()
                        .data
                        .as_mut()
                        .unwrap()
                        .remove("COLOR");
                }),
                "app: env FROM_CM: ConfigMap \"settings\" has no key \"COLOR\"",
            ),
        ];
        for (name, mutate, want) in cases {
            let mut m = base.clone();
            mutate(&mut m);
            let e = resolve(&m, &[]).unwrap_err().to_string();
            assert_eq!(e, want, "{name}");
        }
    }

    #[test]
    fn ips_from_status_when_context_has_none() {
        let mut m = manifest();
        m.pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            pod_ip: Some("10.0.0.1".into()),
            pod_ips: Some(vec![
                k8s_openapi::api::core::v1::PodIP {
                    ip: "10.0.0.1".into(),
                },
                k8s_openapi::api::core::v1::PodIP {
                    ip: "fd00::1".into(),
                },
            ]),
            ..Default::default()
        });
        let ctx = EnvContext {
            pod: &m.pod,
            config_maps: &m.config_maps,
            secrets: &m.secrets,
            pod_ip: None,
            host_ip: None,
            node_name: "n",
        };
        let env = resolve_env(&m.pod.spec.as_ref().unwrap().containers[0], &[], &ctx).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("POD_IP"), "10.0.0.1");
        assert_eq!(get("POD_IPS"), "10.0.0.1,fd00::1");
        assert_eq!(get("HOST_IP"), "");
    }

    #[test]
    fn limits_default_to_node_capacity() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - name: c
    image: x
    env:
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}
    - {name: REQ, valueFrom: {resourceFieldRef: {resource: requests.cpu}}}
"#;
        let m = parse_manifest(text, Path::new("p.yaml")).unwrap();
        let env = resolve(&m, &[]).unwrap();
        let cpus = std::thread::available_parallelism()
            .unwrap()
            .get()
            .to_string();
        assert_eq!(env, vec![("CPU".into(), cpus), ("REQ".into(), "0".into())]);
    }
}
