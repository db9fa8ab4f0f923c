//! QoS class and cgroup values, computed the way the kubelet does from a pod's resource
//! requests and limits.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::quantity::{parse_quantity_bytes, parse_quantity_milli, parse_quantity_milli_cpu};
use super::{is_native_sidecar, QosClass};
use crate::cgroups::Resources;

/// cpu.shares bounds and the CFS constants the kubelet uses.
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
const SHARES_PER_CPU: i64 = 1024;
const QUOTA_PERIOD: u64 = 100_000;
const MIN_QUOTA: i64 = 1000;

/// The container's limits, as quantities.
fn limits(c: &Container) -> BTreeMap<&str, &str> {
    c.resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.0.as_str()))
        .collect()
}

/// The container's requests after API defaulting: a resource with a limit and no request
/// requests its limit.
fn requests(c: &Container) -> BTreeMap<&str, &str> {
    let mut r = limits(c);
    for (k, v) in c
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .into_iter()
        .flatten()
    {
        r.insert(k.as_str(), v.0.as_str());
    }
    r
}

/// Quantities were validated at load time; a pod built elsewhere with a bad one counts it
/// as zero rather than failing a computation that has no error path in Kubernetes either.
fn milli(q: &str) -> i128 {
    parse_quantity_milli(q).unwrap_or(0)
}

/// The pod's QoS class, by Kubernetes' rules (GetPodQOS): only cpu and memory count;
/// BestEffort when no container (init containers included) requests or limits either;
/// Guaranteed when every container has cpu and memory limits and the summed requests
/// equal the summed limits; Burstable otherwise.
pub fn qos_class(pod: &Pod) -> QosClass {
    let mut req_sum: BTreeMap<&str, i128> = BTreeMap::new();
    let mut lim_sum: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    for c in super::all_containers(pod) {
        for (name, q) in requests(c) {
            if (name == "cpu" || name == "memory") && milli(q) > 0 {
                *req_sum.entry(name).or_default() += milli(q);
            }
        }
        let mut found = 0;
        for (name, q) in limits(c) {
            if (name == "cpu" || name == "memory") && milli(q) > 0 {
                found += 1;
                *lim_sum.entry(name).or_default() += milli(q);
            }
        }
        if found != 2 {
            guaranteed = false;
        }
    }
    if req_sum.is_empty() && lim_sum.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed
        && req_sum.len() == lim_sum.len()
        && req_sum.iter().all(|(k, v)| lim_sum.get(k) == Some(v))
    {
        return QosClass::Guaranteed;
    }
    QosClass::Burstable
}

/// Kubernetes' MilliCPUToShares.
fn milli_cpu_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    let shares = (milli * SHARES_PER_CPU / 1000) as u64;
    shares.clamp(MIN_SHARES, MAX_SHARES)
}

/// Kubernetes' MilliCPUToQuota; None for no limit.
fn milli_cpu_to_quota(milli: i64) -> Option<i64> {
    if milli <= 0 {
        return None;
    }
    Some((milli * QUOTA_PERIOD as i64 / 1000).max(MIN_QUOTA))
}

fn cpu_milli(q: Option<&&str>) -> i64 {
    q.and_then(|q| parse_quantity_milli_cpu(q).ok())
        .unwrap_or(0)
}

fn bytes(q: Option<&&str>) -> i64 {
    q.and_then(|q| parse_quantity_bytes(q).ok()).unwrap_or(0)
}

/// Container cgroup values as the kubelet sets them: shares from the cpu request (the
/// limit when only a limit is set; 2 when neither), a CFS quota from the cpu limit with a
/// 100ms period, the memory limit in bytes. No pids limit at container level.
pub fn container_resources(container: &Container) -> Resources {
    let lim = limits(container);
    let req = requests(container);
    let quota = milli_cpu_to_quota(cpu_milli(lim.get("cpu")));
    let memory = bytes(lim.get("memory"));
    Resources {
        cpu_shares: Some(milli_cpu_to_shares(cpu_milli(req.get("cpu")))),
        cpu_quota: quota,
        cpu_period: quota.map(|_| QUOTA_PERIOD),
        memory_limit: (memory > 0).then_some(memory),
        ..Default::default()
    }
}

/// Add `b` into `a` per resource.
fn add(a: &mut BTreeMap<String, i128>, b: &BTreeMap<String, i128>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

/// Per resource maximum of `a` and `b`, into `a`.
fn max_into(a: &mut BTreeMap<String, i128>, b: &BTreeMap<String, i128>) {
    for (k, v) in b {
        let e = a.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
}

/// What the pod as a whole needs (resource.PodRequests / PodLimits): app containers and
/// native sidecars add up; a regular init container runs alone (next to the sidecars
/// started before it), so the pod needs the maximum of that and the steady state.
fn pod_totals(
    pod: &Pod,
    per_container: impl Fn(&Container) -> BTreeMap<&str, &str>,
) -> BTreeMap<String, i128> {
    let amounts = |c: &Container| -> BTreeMap<String, i128> {
        per_container(c)
            .into_iter()
            .map(|(k, q)| (k.to_string(), milli(q)))
            .collect()
    };
    let spec = pod.spec.as_ref();
    let mut total = BTreeMap::new();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        add(&mut total, &amounts(c));
    }
    let mut sidecars = BTreeMap::new();
    let mut init_peak = BTreeMap::new();
    for c in spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
    {
        let own = amounts(c);
        let during = if is_native_sidecar(c) {
            add(&mut total, &own);
            add(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut d = own;
            add(&mut d, &sidecars);
            d
        };
        max_into(&mut init_peak, &during);
    }
    max_into(&mut total, &init_peak);
    total
}

/// Pod-level cgroup values as the kubelet computes them (ResourceConfigForPod):
/// Guaranteed pods get shares, quota and memory limit; Burstable pods get shares, and a
/// quota or memory limit only when every container declares that limit; BestEffort pods
/// get the minimum shares and nothing else.
pub fn pod_resources(pod: &Pod) -> Resources {
    let req = pod_totals(pod, requests);
    let lim = pod_totals(pod, limits);
    let to_i64 = |v: Option<&i128>| {
        v.map(|v| i64::try_from(*v).unwrap_or(i64::MAX))
            .unwrap_or(0)
    };
    let cpu_request = to_i64(req.get("cpu"));
    let cpu_limit = to_i64(lim.get("cpu"));
    let memory_limit = {
        let m = to_i64(lim.get("memory"));
        m / 1000 + i64::from(m % 1000 != 0)
    };
    let (mut cpu_declared, mut memory_declared) = (true, true);
    for c in super::all_containers(pod) {
        let l = limits(c);
        cpu_declared &= cpu_milli(l.get("cpu")) > 0;
        memory_declared &= bytes(l.get("memory")) > 0;
    }
    let shares = milli_cpu_to_shares(cpu_request);
    let quota = milli_cpu_to_quota(cpu_limit);
    let memory = (memory_limit > 0).then_some(memory_limit);
    match qos_class(pod) {
        QosClass::Guaranteed => Resources {
            cpu_shares: Some(shares),
            cpu_quota: quota,
            cpu_period: quota.map(|_| QUOTA_PERIOD),
            memory_limit: memory,
            ..Default::default()
        },
        QosClass::Burstable => {
            let quota = quota.filter(|_| cpu_declared);
            Resources {
                cpu_shares: Some(shares),
                cpu_quota: quota,
                cpu_period: quota.map(|_| QUOTA_PERIOD),
                memory_limit: memory.filter(|_| memory_declared),
                ..Default::default()
            }
        }
        QosClass::BestEffort => Resources {
            cpu_shares: Some(MIN_SHARES),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_manifest;
    use std::path::Path;

    /// A pod from a compact description: each container is
    /// (app / init / sidecar, requests "cpu=..,memory=..", limits "...").
    fn pod(containers: &[(&str, &str, &str)]) -> Pod {
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  initContainers: []\n  containers: []\n",
        );
        let mut init = Vec::new();
        let mut app = Vec::new();
        for (i, (kind, req, lim)) in containers.iter().enumerate() {
            let res = |s: &str| {
                s.split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        format!("{k}: \"{v}\"")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let restart = if *kind == "sidecar" {
                ", restartPolicy: Always"
            } else {
                ""
            };
            let c = format!(
                "  - {{name: c{i}, image: x{restart}, resources: {{requests: {{{}}}, limits: {{{}}}}}}}\n",
                res(req),
                res(lim)
            );
            if *kind == "app" {
                app.push(c)
            } else {
                init.push(c)
            }
        }
        yaml = yaml.replace(
            "  initContainers: []\n",
            &if init.is_empty() {
                String::new()
            } else {
                format!("  initContainers:\n{}", init.concat())
            },
        );
        yaml = yaml.replace(
            "  containers: []\n",
            &format!("  containers:\n{}", app.concat()),
        );
        parse_manifest(&yaml, Path::new("p.yaml")).unwrap().pod
    }

    /// (kind: app / init / sidecar, requests, limits)
    type Spec<'a> = Vec<(&'a str, &'a str, &'a str)>;

    #[test]
    fn qos_table() {
        use QosClass::*;
        let cases: Vec<(&str, Spec, QosClass)> = vec![
            ("nothing set", vec![("app", "", "")], BestEffort),
            (
                "two empty",
                vec![("app", "", ""), ("app", "", "")],
                BestEffort,
            ),
            (
                "zero requests",
                vec![("app", "cpu=0,memory=0", "")],
                BestEffort,
            ),
            (
                "other resources only",
                vec![("app", "ephemeral-storage=1Gi", "")],
                BestEffort,
            ),
            (
                "limits equal requests",
                vec![("app", "cpu=1,memory=1Gi", "cpu=1,memory=1Gi")],
                Guaranteed,
            ),
            (
                "limits only: requests default to them",
                vec![("app", "", "cpu=500m,memory=256Mi")],
                Guaranteed,
            ),
            (
                "same value, different spelling",
                vec![("app", "cpu=1000m,memory=1024Mi", "cpu=1,memory=1Gi")],
                Guaranteed,
            ),
            (
                "request below limit",
                vec![("app", "cpu=500m,memory=1Gi", "cpu=1,memory=1Gi")],
                Burstable,
            ),
            ("cpu limit only", vec![("app", "", "cpu=1")], Burstable),
            ("requests only", vec![("app", "cpu=100m", "")], Burstable),
            (
                "one guaranteed, one best effort",
                vec![("app", "", "cpu=1,memory=1Gi"), ("app", "", "")],
                Burstable,
            ),
            (
                "both guaranteed",
                vec![
                    ("app", "", "cpu=1,memory=1Gi"),
                    ("app", "cpu=2,memory=2Gi", "cpu=2,memory=2Gi"),
                ],
                Guaranteed,
            ),
            (
                "init container without limits",
                vec![("init", "", ""), ("app", "", "cpu=1,memory=1Gi")],
                Burstable,
            ),
            (
                "init container with requests",
                vec![("init", "cpu=1", ""), ("app", "", "")],
                Burstable,
            ),
            (
                "init guaranteed too",
                vec![
                    ("init", "", "cpu=2,memory=2Gi"),
                    ("app", "", "cpu=1,memory=1Gi"),
                ],
                Guaranteed,
            ),
            (
                "sidecar guaranteed too",
                vec![
                    ("sidecar", "", "cpu=100m,memory=64Mi"),
                    ("app", "", "cpu=1,memory=1Gi"),
                ],
                Guaranteed,
            ),
        ];
        for (name, containers, want) in cases {
            assert_eq!(qos_class(&pod(&containers)), want, "{name}");
        }
    }

    #[test]
    fn container_resources_table() {
        let cases: Vec<(&str, &str, &str, Resources)> = vec![
            (
                "neither",
                "",
                "",
                Resources {
                    cpu_shares: Some(2),
                    ..Default::default()
                },
            ),
            (
                "request 250m",
                "cpu=250m",
                "",
                Resources {
                    cpu_shares: Some(256),
                    ..Default::default()
                },
            ),
            (
                "tiny request",
                "cpu=1m",
                "",
                Resources {
                    cpu_shares: Some(2),
                    ..Default::default()
                },
            ),
            (
                "huge request",
                "cpu=1000",
                "",
                Resources {
                    cpu_shares: Some(262_144),
                    ..Default::default()
                },
            ),
            (
                "limit only",
                "",
                "cpu=500m,memory=128Mi",
                Resources {
                    cpu_shares: Some(512),
                    cpu_quota: Some(50_000),
                    cpu_period: Some(100_000),
                    memory_limit: Some(134_217_728),
                    ..Default::default()
                },
            ),
            (
                "request and limit",
                "cpu=100m",
                "cpu=2",
                Resources {
                    cpu_shares: Some(102),
                    cpu_quota: Some(200_000),
                    cpu_period: Some(100_000),
                    ..Default::default()
                },
            ),
            (
                "quota floor",
                "",
                "cpu=1m",
                Resources {
                    cpu_shares: Some(2),
                    cpu_quota: Some(1000),
                    cpu_period: Some(100_000),
                    ..Default::default()
                },
            ),
            (
                "memory request only",
                "memory=1Gi",
                "",
                Resources {
                    cpu_shares: Some(2),
                    ..Default::default()
                },
            ),
        ];
        for (name, req, lim, want) in cases {
            let p = pod(&[("app", req, lim)]);
            let c = &p.spec.as_ref().unwrap().containers[0];
            assert_eq!(container_resources(c), want, "{name}");
        }
    }

    #[test]
    fn pod_resources_table() {
        let cases: Vec<(&str, Spec, Resources)> = vec![
            (
                "best effort",
                vec![("app", "", "")],
                Resources {
                    cpu_shares: Some(2),
                    ..Default::default()
                },
            ),
            (
                "guaranteed sums",
                vec![
                    ("app", "", "cpu=1,memory=1Gi"),
                    ("app", "", "cpu=500m,memory=512Mi"),
                ],
                Resources {
                    cpu_shares: Some(1536),
                    cpu_quota: Some(150_000),
                    cpu_period: Some(100_000),
                    memory_limit: Some(1_610_612_736),
                    ..Default::default()
                },
            ),
            (
                "burstable: memory limit only when every container has one",
                vec![("app", "cpu=100m", "memory=1Gi"), ("app", "cpu=100m", "")],
                Resources {
                    cpu_shares: Some(204),
                    ..Default::default()
                },
            ),
            (
                "burstable: all limits declared",
                vec![
                    ("app", "cpu=100m", "cpu=1,memory=1Gi"),
                    ("app", "cpu=100m", "cpu=1,memory=1Gi"),
                ],
                Resources {
                    cpu_shares: Some(204),
                    cpu_quota: Some(200_000),
                    cpu_period: Some(100_000),
                    memory_limit: Some(2_147_483_648),
                    ..Default::default()
                },
            ),
            (
                "init container bigger than the app: max wins",
                vec![
                    ("init", "", "cpu=2,memory=2Gi"),
                    ("app", "", "cpu=1,memory=1Gi"),
                ],
                Resources {
                    cpu_shares: Some(2048),
                    cpu_quota: Some(200_000),
                    cpu_period: Some(100_000),
                    memory_limit: Some(2_147_483_648),
                    ..Default::default()
                },
            ),
            (
                "init container smaller than the app",
                vec![
                    ("init", "", "cpu=100m,memory=64Mi"),
                    ("app", "", "cpu=1,memory=1Gi"),
                ],
                Resources {
                    cpu_shares: Some(1024),
                    cpu_quota: Some(100_000),
                    cpu_period: Some(100_000),
                    memory_limit: Some(1_073_741_824),
                    ..Default::default()
                },
            ),
            (
                "sidecar adds to the app and to later init containers",
                vec![
                    ("sidecar", "", "cpu=500m,memory=512Mi"),
                    ("init", "", "cpu=1,memory=1Gi"),
                    ("app", "", "cpu=250m,memory=256Mi"),
                ],
                // steady: 750m/768Mi; during init: 1500m/1536Mi
                Resources {
                    cpu_shares: Some(1536),
                    cpu_quota: Some(150_000),
                    cpu_period: Some(100_000),
                    memory_limit: Some(1_610_612_736),
                    ..Default::default()
                },
            ),
            (
                "burstable init without limits blocks the pod limit",
                vec![
                    ("init", "cpu=100m", ""),
                    ("app", "cpu=200m", "cpu=1,memory=1Gi"),
                ],
                Resources {
                    cpu_shares: Some(204),
                    ..Default::default()
                },
            ),
        ];
        for (name, containers, want) in cases {
            assert_eq!(pod_resources(&pod(&containers)), want, "{name}");
        }
    }
}
