//! `/stats/summary` in the shape of kubelet's Summary API (stats/v1alpha1): the node's
//! CPU and memory from /proc, and each running pod's and container's from CRI
//! (ListPodSandboxStats, or ListContainerStats summed per pod for runtimes without it).
//! A CPU rate the runtime leaves out is computed from the previous sample, as kubelet's
//! CRI stats provider does.

use std::collections::{HashMap, HashSet};

use podrun_cri_proto::v1 as cri;
use serde_json::{json, Map, Value};

use super::State;
use crate::kubelet::cri::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID};

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// A CRI timestamp (ns) as the API's seconds-precision time.
fn time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The rate between two samples of a cumulative counter (ns of CPU), in nano cores.
fn rate(prev: Option<(i64, u64)>, ts: i64, usage: u64) -> Option<u64> {
    let (pts, pusage) = prev?;
    let dt = ts.checked_sub(pts).filter(|d| *d > 0)? as u128;
    let used = usage.checked_sub(pusage)? as u128;
    Some((used * 1_000_000_000 / dt) as u64)
}

/// CPU and memory of a pod or a container, as the summary writes them; `key` names it
/// in the sample cache.
#[derive(Clone, Debug, Default)]
pub(super) struct Usage {
    ts: i64,
    cpu_ns: Option<u64>,
    nano_cores: Option<u64>,
    working_set: Option<u64>,
    usage: Option<u64>,
    available: Option<u64>,
    rss: Option<u64>,
    page_faults: Option<u64>,
    major_page_faults: Option<u64>,
}

fn v(x: &Option<cri::UInt64Value>) -> Option<u64> {
    x.as_ref().map(|v| v.value)
}

impl Usage {
    fn from_cri(cpu: Option<&cri::CpuUsage>, mem: Option<&cri::MemoryUsage>) -> Usage {
        let ts = cpu
            .map(|c| c.timestamp)
            .or(mem.map(|m| m.timestamp))
            .filter(|t| *t > 0)
            .unwrap_or_else(now_ns);
        Usage {
            ts,
            cpu_ns: cpu.and_then(|c| v(&c.usage_core_nano_seconds)),
            nano_cores: cpu.and_then(|c| v(&c.usage_nano_cores)),
            working_set: mem.and_then(|m| v(&m.working_set_bytes)),
            usage: mem.and_then(|m| v(&m.usage_bytes)),
            available: mem.and_then(|m| v(&m.available_bytes)),
            rss: mem.and_then(|m| v(&m.rss_bytes)),
            page_faults: mem.and_then(|m| v(&m.page_faults)),
            major_page_faults: mem.and_then(|m| v(&m.major_page_faults)),
        }
    }

    fn add(&mut self, o: &Usage) {
        let sum = |a: &mut Option<u64>, b: Option<u64>| {
            if let Some(b) = b {
                *a = Some(a.unwrap_or(0) + b);
            }
        };
        self.ts = self.ts.max(o.ts);
        sum(&mut self.cpu_ns, o.cpu_ns);
        sum(&mut self.nano_cores, o.nano_cores);
        sum(&mut self.working_set, o.working_set);
        sum(&mut self.usage, o.usage);
        sum(&mut self.rss, o.rss);
        sum(&mut self.page_faults, o.page_faults);
        sum(&mut self.major_page_faults, o.major_page_faults);
    }

    /// Fills in a CPU rate the runtime did not give from the previous sample of `key`.
    fn fill_rate(&mut self, samples: &mut HashMap<String, (i64, u64)>, key: &str) {
        let Some(cpu) = self.cpu_ns else {
            return;
        };
        let prev = samples.insert(key.to_string(), (self.ts, cpu));
        if self.nano_cores.unwrap_or(0) == 0 {
            if let Some(r) = rate(prev, self.ts, cpu) {
                self.nano_cores = Some(r);
            }
        }
    }

    fn cpu_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("time".into(), json!(time(self.ts)));
        if let Some(n) = self.nano_cores {
            m.insert("usageNanoCores".into(), json!(n));
        }
        if let Some(n) = self.cpu_ns {
            m.insert("usageCoreNanoSeconds".into(), json!(n));
        }
        Value::Object(m)
    }

    fn memory_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("time".into(), json!(time(self.ts)));
        for (k, x) in [
            ("availableBytes", self.available),
            ("usageBytes", self.usage),
            ("workingSetBytes", self.working_set),
            ("rssBytes", self.rss),
            ("pageFaults", self.page_faults),
            ("majorPageFaults", self.major_page_faults),
        ] {
            if let Some(x) = x {
                m.insert(k.into(), json!(x));
            }
        }
        Value::Object(m)
    }
}

/// The node's CPU (ns used since boot, all CPUs) and boot time, from /proc/stat.
pub(super) fn parse_proc_stat(text: &str, ticks_per_second: u64) -> (Option<u64>, Option<i64>) {
    let mut cpu = None;
    let mut boot = None;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("cpu") => {
                let n: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal: all but idle and iowait.
                if n.len() >= 8 && ticks_per_second > 0 {
                    let busy = n[0] + n[1] + n[2] + n[5] + n[6] + n[7];
                    cpu = Some((busy as u128 * 1_000_000_000 / ticks_per_second as u128) as u64);
                }
            }
            Some("btime") => boot = f.next().and_then(|x| x.parse().ok()),
            _ => {}
        }
    }
    (cpu, boot)
}

/// The node's memory from /proc/meminfo (and fault counts from /proc/vmstat), as the
/// root cgroup would give it: usage without free pages, the working set without the
/// inactive file cache.
pub(super) fn parse_meminfo(meminfo: &str, vmstat: &str) -> Usage {
    let kib = |name: &str| -> Option<u64> {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
                .map(|k| k * 1024)
        })
    };
    let count = |name: &str| -> Option<u64> {
        vmstat.lines().find_map(|l| {
            let (k, n) = l.split_once(' ')?;
            (k == name).then(|| n.trim().parse().ok())?
        })
    };
    let total = kib("MemTotal");
    let usage = total.zip(kib("MemFree")).map(|(t, f)| t.saturating_sub(f));
    let working_set = usage.map(|u| u.saturating_sub(kib("Inactive(file)").unwrap_or(0)));
    Usage {
        ts: now_ns(),
        usage,
        working_set,
        available: total.zip(working_set).map(|(t, w)| t.saturating_sub(w)),
        rss: kib("AnonPages"),
        page_faults: count("pgfault"),
        major_page_faults: count("pgmajfault"),
        ..Usage::default()
    }
}

fn node_usage(state: &State) -> (Usage, Option<i64>) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64;
    let (cpu, boot) = parse_proc_stat(&stat, ticks);
    let mut u = parse_meminfo(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        &std::fs::read_to_string("/proc/vmstat").unwrap_or_default(),
    );
    u.cpu_ns = cpu;
    if let Some(c) = cpu {
        let mut prev = state.node_cpu.lock().unwrap_or_else(|e| e.into_inner());
        u.nano_cores = rate(*prev, u.ts, c);
        *prev = Some((u.ts, c));
    }
    (u, boot)
}

/// The node's name: the one the pods are bound to, else the host's (kubelet's default).
fn node_name(state: &State) -> String {
    (state.pods)()
        .iter()
        .find_map(|p| p.spec.as_ref()?.node_name.clone())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .unwrap_or_default()
}

pub(super) async fn summary(state: &State) -> Result<Value, tonic::Status> {
    let mut rt = state.cri.runtime.clone();
    let sandboxes = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    let containers = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    // Pod and container usage, keyed by sandbox id and container id.
    let mut pod_usage: HashMap<String, Usage> = HashMap::new();
    let mut ctr_stats: HashMap<String, (Usage, Option<cri::FilesystemUsage>)> = HashMap::new();
    match rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
    {
        Ok(r) => {
            for s in r.into_inner().stats {
                let Some(id) = s.attributes.as_ref().map(|a| a.id.clone()) else {
                    continue;
                };
                let Some(linux) = s.linux else { continue };
                pod_usage.insert(
                    id,
                    Usage::from_cri(linux.cpu.as_ref(), linux.memory.as_ref()),
                );
                for c in linux.containers {
                    if let Some(a) = &c.attributes {
                        let u = Usage::from_cri(c.cpu.as_ref(), c.memory.as_ref());
                        ctr_stats.insert(a.id.clone(), (u, c.writable_layer.clone()));
                    }
                }
            }
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => {}
        Err(s) => return Err(s),
    }
    if ctr_stats.is_empty() {
        let stats = rt
            .list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await?
            .into_inner()
            .stats;
        for c in stats {
            if let Some(a) = &c.attributes {
                let u = Usage::from_cri(c.cpu.as_ref(), c.memory.as_ref());
                ctr_stats.insert(a.id.clone(), (u, c.writable_layer.clone()));
            }
        }
    }
    let mut samples = state.cpu_samples.lock().unwrap_or_else(|e| e.into_inner());
    let mut seen = HashSet::new();
    // The newest ready sandbox of each pod.
    let mut newest: HashMap<String, &cri::PodSandbox> = HashMap::new();
    for s in sandboxes
        .iter()
        .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
    {
        let uid = s
            .labels
            .get(POD_UID)
            .cloned()
            .unwrap_or_else(|| s.id.clone());
        let keep = newest.get(&uid).is_none_or(|o| o.created_at < s.created_at);
        if keep {
            newest.insert(uid, s);
        }
    }
    let mut pods = Vec::new();
    let mut sorted: Vec<&cri::PodSandbox> = newest.into_values().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for sb in sorted {
        let meta = sb.metadata.clone().unwrap_or_default();
        let label = |k: &str, or: &str| sb.labels.get(k).cloned().unwrap_or_else(|| or.to_string());
        // The running containers of the sandbox, the newest of each name.
        let mut by_name: HashMap<String, &cri::Container> = HashMap::new();
        for c in containers.iter().filter(|c| c.pod_sandbox_id == sb.id) {
            let name = c
                .labels
                .get(CONTAINER_NAME)
                .cloned()
                .or_else(|| c.metadata.as_ref().map(|m| m.name.clone()))
                .unwrap_or_default();
            if by_name
                .get(&name)
                .is_none_or(|o| o.created_at < c.created_at)
            {
                by_name.insert(name, c);
            }
        }
        let mut names: Vec<&String> = by_name.keys().collect();
        names.sort();
        let mut ctr_json = Vec::new();
        let mut summed = Usage {
            ts: now_ns(),
            ..Usage::default()
        };
        for name in names {
            let c = by_name[name];
            if c.state != cri::ContainerState::ContainerRunning as i32 {
                continue;
            }
            let (mut u, layer) = ctr_stats.get(&c.id).cloned().unwrap_or_default();
            if u.ts == 0 {
                u.ts = now_ns();
            }
            let key = format!("container/{}", c.id);
            u.fill_rate(&mut samples, &key);
            seen.insert(key);
            summed.add(&u);
            let mut cj = json!({
                "name": name,
                "startTime": time(c.created_at),
                "cpu": u.cpu_json(),
                "memory": u.memory_json(),
            });
            if let Some(l) = layer {
                let mut fs = Map::new();
                fs.insert(
                    "time".into(),
                    json!(time(if l.timestamp > 0 { l.timestamp } else { u.ts })),
                );
                if let Some(b) = v(&l.used_bytes) {
                    fs.insert("usedBytes".into(), json!(b));
                }
                if let Some(i) = v(&l.inodes_used) {
                    fs.insert("inodesUsed".into(), json!(i));
                }
                cj["rootfs"] = Value::Object(fs);
            }
            ctr_json.push(cj);
        }
        let mut pu = pod_usage.get(&sb.id).cloned().unwrap_or(summed);
        let key = format!("pod/{}", sb.id);
        pu.fill_rate(&mut samples, &key);
        seen.insert(key);
        pods.push(json!({
            "podRef": {
                "name": label(POD_NAME, &meta.name),
                "namespace": label(POD_NAMESPACE, &meta.namespace),
                "uid": label(POD_UID, &meta.uid),
            },
            "startTime": time(sb.created_at),
            "containers": ctr_json,
            "cpu": pu.cpu_json(),
            "memory": pu.memory_json(),
        }));
    }
    samples.retain(|k, _| seen.contains(k));
    drop(samples);
    let (node, boot) = node_usage(state);
    let mut node_json = json!({
        "nodeName": node_name(state),
        "systemContainers": [],
        "cpu": node.cpu_json(),
        "memory": node.memory_json(),
    });
    if let Some(b) = boot {
        node_json["startTime"] = json!(time(b.saturating_mul(1_000_000_000)));
    }
    Ok(json!({ "node": node_json, "pods": pods }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_cpu_and_boot_time_from_proc_stat() {
        let stat =
            "cpu  100 20 30 1000 50 5 5 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nbtime 1700000000\n";
        let (cpu, boot) = parse_proc_stat(stat, 100);
        // 170 ticks busy of 1/100 s each.
        assert_eq!(cpu, Some(1_700_000_000));
        assert_eq!(boot, Some(1_700_000_000));
    }

    #[test]
    fn node_memory_from_meminfo() {
        let meminfo = "MemTotal:        1000 kB\nMemFree:          200 kB\nMemAvailable:     600 kB\nInactive(file):   300 kB\nAnonPages:        250 kB\n";
        let u = parse_meminfo(meminfo, "pgfault 7\npgmajfault 2\n");
        assert_eq!(u.usage, Some(800 * 1024));
        assert_eq!(u.working_set, Some(500 * 1024));
        assert_eq!(u.available, Some(500 * 1024));
        assert_eq!(u.rss, Some(250 * 1024));
        assert_eq!((u.page_faults, u.major_page_faults), (Some(7), Some(2)));
    }

    #[test]
    fn rates_need_two_samples_moving_forward() {
        assert_eq!(rate(None, 10, 5), None);
        assert_eq!(
            rate(Some((0, 0)), 1_000_000_000, 500_000_000),
            Some(500_000_000)
        );
        assert_eq!(rate(Some((5, 10)), 5, 20), None);
        assert_eq!(rate(Some((0, 10)), 5, 5), None);
    }
}
