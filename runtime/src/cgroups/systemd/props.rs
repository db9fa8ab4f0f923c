//! Unit properties: the D-Bus values podrun sends, and the resource properties a
//! `Resources` becomes (v1 and v2 hosts spell some of them differently).

use serde::{Deserialize, Serialize};

use super::super::{Hierarchy, Resources, DEFAULT_CPU_PERIOD, MAX_CPU_SHARES, MIN_CPU_SHARES};

/// systemd's "infinity" for u64 properties.
const INFINITY: u64 = u64::MAX;

/// A D-Bus property value, kept independent of zbus so the fake can compare it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PropValue {
    Str(String),
    Bool(bool),
    U64(u64),
    StrList(Vec<String>),
    U32List(Vec<u32>),
}

/// One (name, value) unit property, D-Bus signature (sv).
pub type UnitProperty = (String, PropValue);

pub(crate) fn prop(name: &str, value: PropValue) -> UnitProperty {
    (name.to_string(), value)
}

/// CPUQuotaPerSecUSec from a CFS quota/period. systemd keeps it at 1% (10ms per
/// second) granularity, so round up rather than lose the limit.
pub fn quota_per_sec_usec(quota: i64, period: u64) -> u64 {
    if quota <= 0 || period == 0 {
        return INFINITY;
    }
    let per_sec = (quota as u64).saturating_mul(1_000_000) / period;
    per_sec.div_ceil(10_000) * 10_000
}

/// Resource properties of a unit for this layout (v1 and v2 spell them differently).
pub fn resource_properties(res: &Resources, hierarchy: Hierarchy) -> Vec<UnitProperty> {
    let v2 = hierarchy == Hierarchy::Unified;
    let mut props = vec![
        prop("CPUAccounting", PropValue::Bool(true)),
        prop("MemoryAccounting", PropValue::Bool(true)),
        prop("TasksAccounting", PropValue::Bool(true)),
    ];
    if let Some(shares) = res.cpu_shares {
        let shares = shares.clamp(MIN_CPU_SHARES, MAX_CPU_SHARES);
        props.push(if v2 {
            prop(
                "CPUWeight",
                PropValue::U64(super::super::shares_to_weight(shares)),
            )
        } else {
            prop("CPUShares", PropValue::U64(shares))
        });
    }
    let period = res.cpu_period.unwrap_or(DEFAULT_CPU_PERIOD);
    if res.cpu_period.is_some() {
        props.push(prop("CPUQuotaPeriodUSec", PropValue::U64(period)));
    }
    props.push(prop(
        "CPUQuotaPerSecUSec",
        PropValue::U64(quota_per_sec_usec(res.cpu_quota.unwrap_or(-1), period)),
    ));
    let memory = res
        .memory_limit
        .filter(|l| *l > 0)
        .map_or(INFINITY, |l| l as u64);
    props.push(prop(
        if v2 { "MemoryMax" } else { "MemoryLimit" },
        PropValue::U64(memory),
    ));
    let tasks = res
        .pids_limit
        .filter(|l| *l > 0)
        .map_or(INFINITY, |l| l as u64);
    props.push(prop("TasksMax", PropValue::U64(tasks)));
    props
}
