//! Eviction under resource pressure, as kubelet's eviction manager does it with hard
//! thresholds: `memory.available<100Mi`, `nodefs.available<10%`, `pid.available<10%` by
//! default (`--eviction-hard` changes them). While a threshold is crossed the Node shows
//! the pressure condition, new BestEffort pods are refused under memory pressure, and
//! one pod at a time is evicted, the least important first (BestEffort, then Burstable,
//! then Guaranteed; lower priority first), ending in phase Failed with reason Evicted.

use k8s_openapi::api::core::v1::Pod;

use super::node::HostFacts;
use super::status::qos_class;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    MemoryAvailable,
    NodefsAvailable,
    PidAvailable,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
            Signal::PidAvailable => "pid.available",
        }
    }

    /// The resource named in kubelet's messages.
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodefsAvailable => "ephemeral-storage",
            Signal::PidAvailable => "pids",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// Bytes (or a count, for pids).
    Absolute(u64),
    /// A share of the capacity, 0..=100.
    Percent(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub amount: Amount,
}

/// kubelet's defaults.
pub fn defaults() -> Vec<Threshold> {
    parse("memory.available<100Mi,nodefs.available<10%,pid.available<10%").unwrap_or_default()
}

/// Parses `signal<quantity|percent` entries, comma-separated, as `--eviction-hard`.
pub fn parse(spec: &str) -> Result<Vec<Threshold>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('<')
            .ok_or_else(|| format!("--eviction-hard {part:?}: expected signal<value"))?;
        let signal = match name.trim() {
            "memory.available" => Signal::MemoryAvailable,
            "nodefs.available" => Signal::NodefsAvailable,
            "pid.available" => Signal::PidAvailable,
            other => {
                return Err(format!(
                    "--eviction-hard {part:?}: unknown signal {other:?} (memory.available, nodefs.available, pid.available)"
                ))
            }
        };
        let value = value.trim();
        let amount = if let Some(p) = value.strip_suffix('%') {
            let p: f64 = p
                .parse()
                .map_err(|_| format!("--eviction-hard {part:?}: {value:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!(
                    "--eviction-hard {part:?}: a percentage is 0 to 100"
                ));
            }
            Amount::Percent(p)
        } else if signal == Signal::PidAvailable {
            Amount::Absolute(
                value
                    .parse()
                    .map_err(|_| format!("--eviction-hard {part:?}: {value:?} is not a number"))?,
            )
        } else {
            let b = podrun_runtime::spec::parse_quantity_bytes(value)
                .map_err(|e| format!("--eviction-hard {part:?}: {e}"))?;
            Amount::Absolute(b.max(0) as u64)
        };
        out.push(Threshold { signal, amount });
    }
    Ok(out)
}

/// (available, capacity) of a signal on this host.
fn observe(signal: Signal, h: &HostFacts) -> (u64, u64) {
    match signal {
        Signal::MemoryAvailable => (h.memory_available, h.memory_bytes),
        Signal::NodefsAvailable => (h.disk_available, h.disk_bytes),
        Signal::PidAvailable => (h.pids_max.saturating_sub(h.pids_used), h.pids_max),
    }
}

/// The thresholds crossed now. A signal the host could not measure never crosses.
pub fn crossed(thresholds: &[Threshold], h: &HostFacts) -> Vec<Threshold> {
    thresholds
        .iter()
        .filter(|t| {
            let (available, capacity) = observe(t.signal, h);
            if capacity == 0 {
                return false;
            }
            let limit = match t.amount {
                Amount::Absolute(v) => v as f64,
                Amount::Percent(p) => capacity as f64 * p / 100.0,
            };
            (available as f64) < limit
        })
        .copied()
        .collect()
}

/// The amount of a signal's threshold, in bytes (or a count), for allocatable.
pub fn reserved(thresholds: &[Threshold], signal: Signal, capacity: u64) -> u64 {
    thresholds
        .iter()
        .filter(|t| t.signal == signal)
        .map(|t| match t.amount {
            Amount::Absolute(v) => v,
            Amount::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        })
        .max()
        .unwrap_or(0)
}

/// Eviction order: BestEffort before Burstable before Guaranteed, lower priority first.
/// Static and mirror pods are never evicted (kubelet spares critical pods).
pub fn rank(pods: &[Pod]) -> Vec<&Pod> {
    let mut v: Vec<&Pod> = pods
        .iter()
        .filter(|p| !super::static_pods::is_static(p))
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    let class = |p: &Pod| match qos_class(p) {
        "BestEffort" => 0,
        "Burstable" => 1,
        _ => 2,
    };
    let priority = |p: &Pod| p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
    v.sort_by_key(|p| (class(p), priority(p)));
    v
}

/// kubelet's message for an evicted pod.
pub fn message(signal: Signal) -> String {
    format!("The node was low on resource: {}. ", signal.resource())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host() -> HostFacts {
        HostFacts {
            memory_bytes: 4 << 30,
            memory_available: 3 << 30,
            disk_bytes: 100 << 30,
            disk_available: 50 << 30,
            pids_max: 1000,
            pids_used: 100,
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_parse_and_cross() {
        let t = defaults();
        assert_eq!(t.len(), 3);
        assert!(crossed(&t, &host()).is_empty());
        let mut h = host();
        h.memory_available = 50 << 20;
        h.disk_available = 5 << 30;
        let c: Vec<Signal> = crossed(&t, &h).iter().map(|t| t.signal).collect();
        assert_eq!(c, vec![Signal::MemoryAvailable, Signal::NodefsAvailable]);
        let big = parse("memory.available<1000Ti").unwrap();
        assert_eq!(crossed(&big, &host()).len(), 1);
        assert_eq!(reserved(&t, Signal::NodefsAvailable, 100 << 30), 10 << 30);
        assert_eq!(reserved(&t, Signal::MemoryAvailable, 4 << 30), 100 << 20);
    }

    #[test]
    fn bad_thresholds_name_the_entry() {
        for bad in [
            "memory.available",
            "cpu.available<1",
            "nodefs.available<120%",
            "memory.available<lots",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("--eviction-hard"), "{e}");
        }
    }

    #[test]
    fn best_effort_and_low_priority_go_first() {
        let pod = |name: &str, res: serde_json::Value, prio: i32| -> Pod {
            serde_json::from_value(json!({
                "metadata": { "name": name },
                "spec": { "priority": prio, "containers": [{ "name": "c", "resources": res }] },
            }))
            .unwrap()
        };
        let pods = vec![
            pod("g", json!({ "limits": { "cpu": "1", "memory": "1Gi" } }), 0),
            pod("b-high", json!({ "requests": { "memory": "1Mi" } }), 100),
            pod("be", json!({}), 1000),
            pod("b-low", json!({ "requests": { "memory": "1Mi" } }), 0),
        ];
        let order: Vec<&str> = rank(&pods)
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(order, vec!["be", "b-low", "b-high", "g"]);
    }
}
