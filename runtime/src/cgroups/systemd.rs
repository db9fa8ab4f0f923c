//! systemd cgroup driver: pod cgroups are transient slices and containers transient
//! scopes (Delegate=yes) started over D-Bus, named like the kubelet's kubepods slices.
//! Limits go through unit properties; reads, freezing and the v1 hierarchies systemd
//! does not manage (cpuset, freezer) go through the cgroupfs backend at the same path.
//!
//! Path strings: a pod is "<a>.slice/<a>-b.slice/<a>-b-c.slice" (the last component is
//! the unit), a container "<slice>:<prefix>:<id>" (unit "<prefix>-<id>.scope"), as runc
//! spells systemd cgroup parents. A slice name's dashes encode its parents, so the
//! filesystem path is always expanded from the leaf name.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    qos_class_name, CgroupError, CgroupManager, CgroupStats, CgroupfsBackend, Driver, Hierarchy,
    QosClass, Resources, DEFAULT_CPU_PERIOD, MAX_CPU_SHARES, MIN_CPU_SHARES,
};

/// Prefix of container scopes: "podrun-<id>.scope".
pub const SCOPE_PREFIX: &str = "podrun";
/// systemd's "infinity" for u64 properties.
const INFINITY: u64 = u64::MAX;
/// How long to wait for a start or stop job to settle.
const JOB_TIMEOUT: Duration = Duration::from_secs(10);

/// A D-Bus property value, kept independent of zbus so the fake can compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    Str(String),
    Bool(bool),
    U64(u64),
    StrList(Vec<String>),
    U32List(Vec<u32>),
}

/// One (name, value) unit property, D-Bus signature (sv).
pub type UnitProperty = (String, PropValue);

fn prop(name: &str, value: PropValue) -> UnitProperty {
    (name.to_string(), value)
}

/// Failures of a systemd call, with the errors podrun reacts to split out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("unit already exists")]
    UnitExists,
    #[error("no such unit")]
    NoSuchUnit,
    #[error("{0}")]
    Other(String),
}

/// The org.freedesktop.systemd1.Manager calls podrun makes.
pub trait SystemdBus: Send + Sync {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[UnitProperty],
    ) -> Result<(), BusError>;
    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[UnitProperty],
    ) -> Result<(), BusError>;
    fn stop_unit(&self, name: &str, mode: &str) -> Result<(), BusError>;
    /// ActiveState of the unit, None when systemd does not have it loaded.
    fn active_state(&self, name: &str) -> Result<Option<String>, BusError>;
}

/// Which unit a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitPath {
    /// A slice: every component, the last one being the unit.
    Slice { slices: Vec<String> },
    /// A scope inside `slice`.
    Scope { slice: String, unit: String },
}

impl UnitPath {
    pub fn parse(path: &str) -> Result<Self, CgroupError> {
        let invalid = |reason: &str| CgroupError::InvalidPath {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        if let Some((slice, rest)) = path.split_once(':') {
            let (prefix, name) = rest
                .split_once(':')
                .ok_or_else(|| invalid("expected <slice>:<prefix>:<name>"))?;
            if !slice.ends_with(".slice") || prefix.is_empty() || name.is_empty() {
                return Err(invalid("expected <slice>:<prefix>:<name>"));
            }
            expand_slice(slice).map_err(|r| invalid(&r))?;
            let unit = format!("{prefix}-{name}.scope");
            check_unit_chars(&unit).map_err(|r| invalid(&r))?;
            return Ok(UnitPath::Scope {
                slice: slice.to_string(),
                unit,
            });
        }
        let slices: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        if slices.is_empty() {
            return Err(invalid("empty path"));
        }
        for s in &slices {
            expand_slice(s).map_err(|r| invalid(&r))?;
        }
        Ok(UnitPath::Slice { slices })
    }

    /// The unit this path names.
    pub fn unit(&self) -> &str {
        match self {
            UnitPath::Slice { slices } => slices.last().map(String::as_str).unwrap_or_default(),
            UnitPath::Scope { unit, .. } => unit,
        }
    }

    /// Where systemd puts the unit's cgroup, relative to a hierarchy's root.
    pub fn fs_path(&self) -> String {
        match self {
            UnitPath::Slice { .. } => expand_slice(self.unit()).unwrap_or_default(),
            UnitPath::Scope { slice, unit } => {
                let base = expand_slice(slice).unwrap_or_default();
                if base.is_empty() {
                    unit.clone()
                } else {
                    format!("{base}/{unit}")
                }
            }
        }
    }
}

fn check_unit_chars(unit: &str) -> Result<(), String> {
    let ok = unit
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@'));
    if ok && unit.len() <= 255 {
        Ok(())
    } else {
        Err(format!("{unit:?} is not a valid systemd unit name"))
    }
}

/// "a-b-c.slice" → "a.slice/a-b.slice/a-b-c.slice"; "-.slice" (the root) → "".
pub fn expand_slice(slice: &str) -> Result<String, String> {
    let name = slice
        .strip_suffix(".slice")
        .ok_or_else(|| format!("{slice:?} is not a slice"))?;
    if name == "-" {
        return Ok(String::new());
    }
    check_unit_chars(slice)?;
    if name.is_empty() || name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(format!("{slice:?} is not a valid slice name"));
    }
    let mut out = Vec::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out.join("/"))
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
            prop("CPUWeight", PropValue::U64(super::shares_to_weight(shares)))
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

/// The systemd driver.
pub struct SystemdManager {
    bus: Box<dyn SystemdBus>,
    backend: CgroupfsBackend,
    /// Resources of container scopes not started yet: systemd cannot create an empty
    /// scope, so `ensure` records them and `add_process` starts the unit.
    pending: Mutex<HashMap<String, Resources>>,
}

impl SystemdManager {
    pub fn new(bus: Box<dyn SystemdBus>, backend: CgroupfsBackend) -> Self {
        SystemdManager {
            bus,
            backend,
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn fs(&self) -> &dyn CgroupManager {
        self.backend.manager()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resources>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bus_err<'a>(step: &'static str, unit: &'a str) -> impl FnOnce(BusError) -> CgroupError + 'a {
        move |source| CgroupError::Systemd {
            step,
            unit: unit.to_string(),
            source,
        }
    }

    /// Poll the unit until `done(state)` holds.
    fn wait_for(
        &self,
        unit: &str,
        wanted: &str,
        done: impl Fn(Option<&str>) -> bool,
    ) -> Result<(), CgroupError> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            let state = self
                .bus
                .active_state(unit)
                .map_err(Self::bus_err("ActiveState", unit))?;
            if done(state.as_deref()) {
                return Ok(());
            }
            if state.as_deref() == Some("failed") && wanted == "active" {
                return Err(CgroupError::SystemdJobTimeout {
                    unit: unit.to_string(),
                    wanted: wanted.to_string(),
                    seen: state,
                });
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::SystemdJobTimeout {
                    unit: unit.to_string(),
                    wanted: wanted.to_string(),
                    seen: state,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Start `unit`, or when it exists already, apply `resources` to it.
    fn start_or_update(
        &self,
        unit: &str,
        mut properties: Vec<UnitProperty>,
        resources: Option<Vec<UnitProperty>>,
    ) -> Result<(), CgroupError> {
        properties.extend(resources.clone().unwrap_or_default());
        match self.bus.start_transient_unit(unit, "replace", &properties) {
            Ok(()) => {
                tracing::debug!(unit = %unit, "transient unit started");
                self.wait_for(unit, "active", |s| s == Some("active"))
            }
            Err(BusError::UnitExists) => match resources {
                Some(res) => self
                    .bus
                    .set_unit_properties(unit, true, &res)
                    .map_err(Self::bus_err("SetUnitProperties", unit)),
                None => Ok(()),
            },
            Err(e) => Err(Self::bus_err("StartTransientUnit", unit)(e)),
        }
    }

    fn resource_props(&self, res: &Resources) -> Vec<UnitProperty> {
        resource_properties(res, self.hierarchy())
    }
}

impl CgroupManager for SystemdManager {
    fn driver(&self) -> Driver {
        Driver::Systemd
    }

    fn hierarchy(&self) -> Hierarchy {
        self.fs().hierarchy()
    }

    fn pod_path(&self, root: &str, qos: QosClass, pod_uid: &str) -> String {
        let uid = pod_uid.replace('-', "_");
        match qos {
            QosClass::Guaranteed => format!("{root}.slice/{root}-pod{uid}.slice"),
            _ => {
                let q = qos_class_name(qos);
                format!("{root}.slice/{root}-{q}.slice/{root}-{q}-pod{uid}.slice")
            }
        }
    }

    fn container_path(&self, pod_path: &str, container_id: &str) -> String {
        let slice = pod_path.rsplit('/').next().unwrap_or(pod_path);
        format!("{slice}:{SCOPE_PREFIX}:{container_id}")
    }

    fn ensure(&self, path: &str, resources: &Resources) -> Result<(), CgroupError> {
        let unit_path = UnitPath::parse(path)?;
        match &unit_path {
            UnitPath::Slice { slices } => {
                for (i, slice) in slices.iter().enumerate() {
                    let mut props = vec![
                        prop(
                            "Description",
                            PropValue::Str(format!("podrun slice {slice}")),
                        ),
                        prop("DefaultDependencies", PropValue::Bool(false)),
                    ];
                    if i > 0 {
                        props.push(prop(
                            "Wants",
                            PropValue::StrList(vec![slices[i - 1].clone()]),
                        ));
                    }
                    let leaf = i + 1 == slices.len();
                    let res = leaf.then(|| self.resource_props(resources));
                    self.start_or_update(slice, props, res)?;
                }
                let fs_path = unit_path.fs_path();
                self.backend.create_dirs(&fs_path)?;
                self.backend.apply_cpuset(&fs_path, resources)
            }
            UnitPath::Scope { unit, .. } => {
                let running = matches!(
                    self.bus.active_state(unit).map_err(Self::bus_err("ActiveState", unit))?,
                    Some(ref s) if s == "active"
                );
                if running {
                    self.update(path, resources)
                } else {
                    self.pending().insert(path.to_string(), resources.clone());
                    Ok(())
                }
            }
        }
    }

    fn add_process(&self, path: &str, pid: i32) -> Result<(), CgroupError> {
        let unit_path = UnitPath::parse(path)?;
        let fs_path = unit_path.fs_path();
        let UnitPath::Scope { slice, unit } = &unit_path else {
            // systemd keeps processes out of slices; place it directly.
            return self.fs().add_process(&fs_path, pid);
        };
        let resources = self.pending().get(path).cloned().unwrap_or_default();
        let mut props = vec![
            prop(
                "Description",
                PropValue::Str(format!("podrun container {unit}")),
            ),
            prop("Slice", PropValue::Str(slice.clone())),
            prop("Delegate", PropValue::Bool(true)),
            prop("DefaultDependencies", PropValue::Bool(false)),
            prop("PIDs", PropValue::U32List(vec![pid as u32])),
        ];
        props.extend(self.resource_props(&resources));
        match self.bus.start_transient_unit(unit, "replace", &props) {
            Ok(()) => self.wait_for(unit, "active", |s| s == Some("active"))?,
            // A second process (exec) joins the delegated scope through cgroupfs.
            Err(BusError::UnitExists) => {}
            Err(e) => return Err(Self::bus_err("StartTransientUnit", unit)(e)),
        }
        self.pending().remove(path);
        // systemd placed the process in the hierarchies it manages; the rest (v1
        // cpuset, freezer, ...) are joined through cgroupfs.
        self.backend.create_dirs(&fs_path)?;
        self.backend.apply_cpuset(&fs_path, &resources)?;
        self.fs().add_process(&fs_path, pid)?;
        tracing::debug!(cgroup = %path, unit = %unit, pid, "process added to scope");
        Ok(())
    }

    fn update(&self, path: &str, resources: &Resources) -> Result<(), CgroupError> {
        let unit_path = UnitPath::parse(path)?;
        let unit = unit_path.unit();
        if let Some(pending) = self.pending().get_mut(path) {
            *pending = resources.clone();
            return Ok(());
        }
        self.bus
            .set_unit_properties(unit, true, &self.resource_props(resources))
            .map_err(|e| match e {
                BusError::NoSuchUnit => CgroupError::NotFound {
                    path: path.to_string(),
                },
                e => Self::bus_err("SetUnitProperties", unit)(e),
            })?;
        self.backend.apply_cpuset(&unit_path.fs_path(), resources)
    }

    fn stats(&self, path: &str) -> Result<CgroupStats, CgroupError> {
        self.fs().stats(&UnitPath::parse(path)?.fs_path())
    }

    fn oom_kills(&self, path: &str) -> Result<u64, CgroupError> {
        self.fs().oom_kills(&UnitPath::parse(path)?.fs_path())
    }

    fn pids(&self, path: &str) -> Result<Vec<i32>, CgroupError> {
        self.fs().pids(&UnitPath::parse(path)?.fs_path())
    }

    fn remove(&self, path: &str) -> Result<(), CgroupError> {
        let unit_path = UnitPath::parse(path)?;
        let unit = unit_path.unit();
        self.pending().remove(path);
        match self.bus.stop_unit(unit, "replace") {
            Ok(()) => self.wait_for(unit, "inactive", |s| {
                matches!(s, None | Some("inactive") | Some("failed"))
            })?,
            Err(BusError::NoSuchUnit) => {}
            Err(e) => return Err(Self::bus_err("StopUnit", unit)(e)),
        }
        // Directories systemd did not create (v1 cpuset, freezer) are podrun's to remove.
        self.fs().remove(&unit_path.fs_path())?;
        tracing::debug!(cgroup = %path, unit = %unit, "unit stopped and cgroup removed");
        Ok(())
    }

    fn remove_if_empty(&self, _path: &str) -> Result<bool, CgroupError> {
        // Slices are systemd's to garbage-collect once they hold no units.
        Ok(false)
    }

    fn freeze(&self, path: &str, frozen: bool) -> Result<(), CgroupError> {
        self.fs().freeze(&UnitPath::parse(path)?.fs_path(), frozen)
    }
}

/// `SystemdBus` over the system D-Bus.
pub struct ZbusSystemd {
    conn: zbus::blocking::Connection,
}

const SYSTEMD_DEST: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";

impl ZbusSystemd {
    /// Connect to the system bus and check that systemd answers on it.
    pub fn connect() -> Result<Self, CgroupError> {
        let conn =
            zbus::blocking::Connection::system().map_err(|e| CgroupError::SystemdUnavailable {
                reason: format!(
                    "cannot connect to the system D-Bus: {e} (is systemd running? \
                     the \"cgroupfs\" driver needs neither)"
                ),
            })?;
        Self::with_connection(conn)
    }

    /// Connect to the bus at a D-Bus address (e.g. "unix:path=/run/dbus/system_bus_socket").
    pub fn connect_address(address: &str) -> Result<Self, CgroupError> {
        let conn = zbus::blocking::connection::Builder::address(address)
            .and_then(|b| b.build())
            .map_err(|e| CgroupError::SystemdUnavailable {
                reason: format!("cannot connect to D-Bus at {address}: {e}"),
            })?;
        Self::with_connection(conn)
    }

    fn with_connection(conn: zbus::blocking::Connection) -> Result<Self, CgroupError> {
        let this = ZbusSystemd { conn };
        let version: String = this
            .manager()
            .and_then(|p| p.get_property("Version"))
            .map_err(|e| CgroupError::SystemdUnavailable {
                reason: format!("systemd does not answer on the bus: {e}"),
            })?;
        tracing::debug!(systemd_version = %version, "connected to systemd");
        Ok(this)
    }

    fn manager(&self) -> zbus::Result<zbus::blocking::Proxy<'static>> {
        zbus::blocking::Proxy::new(&self.conn, SYSTEMD_DEST, SYSTEMD_PATH, MANAGER_IFACE)
    }

    fn call<B, R>(&self, method: &str, body: &B) -> Result<R, BusError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
    {
        self.manager()
            .and_then(|p| p.call(method, body))
            .map_err(map_zbus_error)
    }
}

fn map_zbus_error(e: zbus::Error) -> BusError {
    match &e {
        zbus::Error::MethodError(name, detail, _) => match name.as_str() {
            "org.freedesktop.systemd1.UnitExists" => BusError::UnitExists,
            "org.freedesktop.systemd1.NoSuchUnit" => BusError::NoSuchUnit,
            other => BusError::Other(format!("{other}: {}", detail.as_deref().unwrap_or(""))),
        },
        _ => BusError::Other(e.to_string()),
    }
}

fn to_values(props: &[UnitProperty]) -> Vec<(&str, zbus::zvariant::Value<'_>)> {
    use zbus::zvariant::Value;
    props
        .iter()
        .map(|(name, v)| {
            let value = match v {
                PropValue::Str(s) => Value::from(s.as_str()),
                PropValue::Bool(b) => Value::from(*b),
                PropValue::U64(n) => Value::from(*n),
                PropValue::StrList(l) => Value::from(l.clone()),
                PropValue::U32List(l) => Value::from(l.clone()),
            };
            (name.as_str(), value)
        })
        .collect()
}

impl SystemdBus for ZbusSystemd {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[UnitProperty],
    ) -> Result<(), BusError> {
        type Aux<'a> = Vec<(&'a str, Vec<(&'a str, zbus::zvariant::Value<'a>)>)>;
        let aux: Aux<'_> = Vec::new();
        let _job: zbus::zvariant::OwnedObjectPath = self.call(
            "StartTransientUnit",
            &(name, mode, to_values(properties), aux),
        )?;
        Ok(())
    }

    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[UnitProperty],
    ) -> Result<(), BusError> {
        self.call::<_, ()>("SetUnitProperties", &(name, runtime, to_values(properties)))
    }

    fn stop_unit(&self, name: &str, mode: &str) -> Result<(), BusError> {
        let _job: zbus::zvariant::OwnedObjectPath = self.call("StopUnit", &(name, mode))?;
        Ok(())
    }

    fn active_state(&self, name: &str) -> Result<Option<String>, BusError> {
        let unit: zbus::zvariant::OwnedObjectPath = match self.call("GetUnit", &(name,)) {
            Ok(p) => p,
            Err(BusError::NoSuchUnit) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Read through Properties.Get: a cached proxy property would never change.
        let props = zbus::blocking::Proxy::new(
            &self.conn,
            SYSTEMD_DEST,
            unit.as_str(),
            "org.freedesktop.DBus.Properties",
        )
        .map_err(map_zbus_error)?;
        let value: zbus::zvariant::OwnedValue = props
            .call("Get", &("org.freedesktop.systemd1.Unit", "ActiveState"))
            .map_err(map_zbus_error)?;
        String::try_from(value)
            .map(Some)
            .map_err(|e| BusError::Other(format!("ActiveState of {name}: {e}")))
    }
}

/// One recorded call on the fake bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusCall {
    Start {
        name: String,
        mode: String,
        properties: Vec<UnitProperty>,
    },
    SetProperties {
        name: String,
        properties: Vec<UnitProperty>,
    },
    Stop {
        name: String,
    },
}

/// Recording in-memory systemd: units become active on start and vanish on stop.
#[derive(Debug, Default)]
pub struct FakeBus {
    calls: Mutex<Vec<BusCall>>,
    /// Unit name → (ActiveState, Slice property).
    units: Mutex<HashMap<String, (String, Option<String>)>>,
}

impl FakeBus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn calls(&self) -> Vec<BusCall> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_active(&self, unit: &str) -> bool {
        self.units
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(unit)
            .is_some_and(|(s, _)| s == "active")
    }

    fn record(&self, call: BusCall) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }
}

impl SystemdBus for FakeBus {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[UnitProperty],
    ) -> Result<(), BusError> {
        let mut units = self.units.lock().unwrap_or_else(|e| e.into_inner());
        if units.contains_key(name) {
            return Err(BusError::UnitExists);
        }
        let slice = properties.iter().find_map(|(n, v)| match v {
            PropValue::Str(s) if n == "Slice" => Some(s.clone()),
            _ => None,
        });
        units.insert(name.to_string(), ("active".to_string(), slice));
        drop(units);
        self.record(BusCall::Start {
            name: name.to_string(),
            mode: mode.to_string(),
            properties: properties.to_vec(),
        });
        Ok(())
    }

    fn set_unit_properties(
        &self,
        name: &str,
        _runtime: bool,
        properties: &[UnitProperty],
    ) -> Result<(), BusError> {
        if !self
            .units
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
        {
            return Err(BusError::NoSuchUnit);
        }
        self.record(BusCall::SetProperties {
            name: name.to_string(),
            properties: properties.to_vec(),
        });
        Ok(())
    }

    fn stop_unit(&self, name: &str, _mode: &str) -> Result<(), BusError> {
        let mut units = self.units.lock().unwrap_or_else(|e| e.into_inner());
        if units.remove(name).is_none() {
            return Err(BusError::NoSuchUnit);
        }
        // Stopping a slice stops everything inside it: child slices (by name) and
        // scopes placed in any of them.
        if let Some(base) = name.strip_suffix(".slice") {
            let child_prefix = format!("{base}-");
            let inside = |slice: &str| slice == name || slice.starts_with(&child_prefix);
            units.retain(|u, (_, slice)| !(inside(u) || slice.as_deref().is_some_and(inside)));
        }
        drop(units);
        self.record(BusCall::Stop {
            name: name.to_string(),
        });
        Ok(())
    }

    fn active_state(&self, name: &str) -> Result<Option<String>, BusError> {
        Ok(self
            .units
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|(state, _)| state.clone()))
    }
}

/// Directory of a systemd path in the cgroupfs backend (for callers reading files).
pub fn fs_path_of(path: &str) -> Result<PathBuf, CgroupError> {
    Ok(PathBuf::from(UnitPath::parse(path)?.fs_path()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::fs::{CgroupFs, FakeFs};
    use super::super::v1::{V1Dir, V1Manager};
    use super::super::v2::V2Manager;
    use super::*;

    /// Shares a FakeBus between the manager and the test.
    struct SharedBus(Arc<FakeBus>);

    impl SystemdBus for SharedBus {
        fn start_transient_unit(
            &self,
            n: &str,
            m: &str,
            p: &[UnitProperty],
        ) -> Result<(), BusError> {
            self.0.start_transient_unit(n, m, p)
        }
        fn set_unit_properties(
            &self,
            n: &str,
            r: bool,
            p: &[UnitProperty],
        ) -> Result<(), BusError> {
            self.0.set_unit_properties(n, r, p)
        }
        fn stop_unit(&self, n: &str, m: &str) -> Result<(), BusError> {
            self.0.stop_unit(n, m)
        }
        fn active_state(&self, n: &str) -> Result<Option<String>, BusError> {
            self.0.active_state(n)
        }
    }

    fn v1_manager() -> (Arc<FakeBus>, Arc<FakeFs>, SystemdManager) {
        let fs = Arc::new(FakeFs::new());
        let procs = ("cgroup.procs", "");
        fs.add_hierarchy("memory", &[procs, ("memory.limit_in_bytes", "")]);
        fs.add_hierarchy(
            "cpuset",
            &[procs, ("cpuset.cpus", "0-1"), ("cpuset.mems", "0")],
        );
        fs.add_hierarchy("freezer", &[procs, ("freezer.state", "THAWED")]);
        let dirs = ["memory", "cpuset", "freezer"]
            .iter()
            .map(|c| V1Dir {
                dir: c.into(),
                controllers: vec![c.to_string()],
            })
            .collect();
        let dyn_fs: Arc<dyn CgroupFs> = fs.clone();
        let backend = CgroupfsBackend::V1(V1Manager::new(Hierarchy::Hybrid, dyn_fs, dirs));
        let bus = Arc::new(FakeBus::new());
        let mgr = SystemdManager::new(Box::new(SharedBus(bus.clone())), backend);
        (bus, fs, mgr)
    }

    fn v2_manager() -> (Arc<FakeBus>, SystemdManager) {
        let fs: Arc<dyn CgroupFs> = Arc::new(FakeFs::new());
        let backend = CgroupfsBackend::V2(V2Manager::new(fs, ""));
        let bus = Arc::new(FakeBus::new());
        (
            bus.clone(),
            SystemdManager::new(Box::new(SharedBus(bus)), backend),
        )
    }

    fn props_of(call: &BusCall) -> &[UnitProperty] {
        match call {
            BusCall::Start { properties, .. } | BusCall::SetProperties { properties, .. } => {
                properties
            }
            BusCall::Stop { .. } => &[],
        }
    }

    fn get<'a>(props: &'a [UnitProperty], name: &str) -> Option<&'a PropValue> {
        props.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    #[test]
    fn pod_and_container_names_follow_kubepods_style() {
        let (_, _, mgr) = v1_manager();
        let pod = mgr.pod_path("podrun", QosClass::Burstable, "12-34-ab");
        assert_eq!(
            pod,
            "podrun.slice/podrun-burstable.slice/podrun-burstable-pod12_34_ab.slice"
        );
        assert_eq!(
            mgr.pod_path("podrun", QosClass::Guaranteed, "u1"),
            "podrun.slice/podrun-podu1.slice"
        );
        let ctr = mgr.container_path(&pod, "c0ffee");
        assert_eq!(ctr, "podrun-burstable-pod12_34_ab.slice:podrun:c0ffee");
        let parsed = UnitPath::parse(&ctr).unwrap();
        assert_eq!(parsed.unit(), "podrun-c0ffee.scope");
        assert_eq!(
            parsed.fs_path(),
            "podrun.slice/podrun-burstable.slice/podrun-burstable-pod12_34_ab.slice/podrun-c0ffee.scope"
        );
        assert_eq!(mgr.driver(), Driver::Systemd);
    }

    #[test]
    fn stats_read_the_units_cgroup_through_the_fs_backend() {
        let (_, fs, mgr) = v1_manager();
        let pod = mgr.pod_path("podrun", QosClass::Burstable, "p1");
        mgr.ensure(&pod, &Resources::default()).unwrap();
        let ctr = mgr.container_path(&pod, "c1");
        mgr.ensure(&ctr, &Resources::default()).unwrap();
        let dir = format!("memory/{}", UnitPath::parse(&ctr).unwrap().fs_path());
        // systemd creates the unit's cgroups; the fake bus does not, so stand in for it.
        let mut at = std::path::PathBuf::new();
        for part in std::path::Path::new(&dir).components() {
            at.push(part);
            let _ = fs.mkdir(&at);
        }
        fs.set(format!("{dir}/memory.usage_in_bytes"), "5000\n");
        fs.set(
            format!("{dir}/memory.stat"),
            "total_rss 3000\ntotal_inactive_file 1000\ntotal_pgfault 9\ntotal_pgmajfault 2\n",
        );
        fs.set(format!("{dir}/memory.limit_in_bytes"), "268435456\n");
        let s = mgr.stats(&ctr).unwrap();
        assert_eq!(
            s,
            CgroupStats {
                memory_usage_bytes: 5000,
                memory_working_set_bytes: 4000,
                memory_rss_bytes: 3000,
                page_faults: 9,
                major_page_faults: 2,
                memory_limit_bytes: Some(256 << 20),
                ..Default::default()
            }
        );
        assert!(matches!(
            mgr.stats(&mgr.container_path(&pod, "gone")),
            Err(CgroupError::NotFound { .. })
        ));
    }

    #[test]
    fn slice_expansion() {
        assert_eq!(
            expand_slice("a-b-c.slice").unwrap(),
            "a.slice/a-b.slice/a-b-c.slice"
        );
        assert_eq!(expand_slice("-.slice").unwrap(), "");
        assert!(expand_slice("a--b.slice").is_err());
        assert!(expand_slice("a-.slice").is_err());
        assert!(expand_slice("a.scope").is_err());
        assert!(UnitPath::parse("podrun.slice:podrun").is_err());
        assert!(UnitPath::parse("podrun/x").is_err());
        assert!(UnitPath::parse("podrun.slice:podrun:a/b").is_err());
    }

    #[test]
    fn quota_conversion_rounds_up_to_whole_percent() {
        assert_eq!(quota_per_sec_usec(50_000, 100_000), 500_000);
        assert_eq!(quota_per_sec_usec(12_345, 100_000), 130_000);
        assert_eq!(quota_per_sec_usec(-1, 100_000), u64::MAX);
        assert_eq!(quota_per_sec_usec(0, 100_000), u64::MAX);
    }

    #[test]
    fn properties_differ_between_v1_and_v2() {
        let res = Resources {
            cpu_shares: Some(1024),
            cpu_quota: Some(50_000),
            memory_limit: Some(1 << 30),
            pids_limit: Some(100),
            ..Default::default()
        };
        let v1 = resource_properties(&res, Hierarchy::Hybrid);
        assert_eq!(get(&v1, "CPUShares"), Some(&PropValue::U64(1024)));
        assert_eq!(get(&v1, "MemoryLimit"), Some(&PropValue::U64(1 << 30)));
        assert!(get(&v1, "CPUWeight").is_none() && get(&v1, "MemoryMax").is_none());
        assert_eq!(
            get(&v1, "CPUQuotaPerSecUSec"),
            Some(&PropValue::U64(500_000))
        );
        assert_eq!(get(&v1, "TasksMax"), Some(&PropValue::U64(100)));
        assert!(get(&v1, "CPUQuotaPeriodUSec").is_none());
        let v2 = resource_properties(&res, Hierarchy::Unified);
        assert_eq!(get(&v2, "CPUWeight"), Some(&PropValue::U64(39)));
        assert_eq!(get(&v2, "MemoryMax"), Some(&PropValue::U64(1 << 30)));
        let unlimited = resource_properties(&Resources::default(), Hierarchy::Unified);
        assert_eq!(
            get(&unlimited, "MemoryMax"),
            Some(&PropValue::U64(u64::MAX))
        );
        assert_eq!(get(&unlimited, "TasksMax"), Some(&PropValue::U64(u64::MAX)));
        assert_eq!(
            get(&unlimited, "CPUQuotaPerSecUSec"),
            Some(&PropValue::U64(u64::MAX))
        );
        assert!(get(&unlimited, "CPUWeight").is_none());
    }

    #[test]
    fn ensure_pod_starts_each_slice_with_limits_on_the_leaf() {
        let (bus, fs, mgr) = v1_manager();
        let pod = mgr.pod_path("podrun", QosClass::Burstable, "p1");
        let res = Resources {
            memory_limit: Some(1 << 28),
            ..Default::default()
        };
        mgr.ensure(&pod, &res).unwrap();
        let calls = bus.calls();
        let names: Vec<_> = calls
            .iter()
            .map(|c| match c {
                BusCall::Start { name, mode, .. } => {
                    assert_eq!(mode, "replace");
                    name.as_str()
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            vec![
                "podrun.slice",
                "podrun-burstable.slice",
                "podrun-burstable-podp1.slice"
            ]
        );
        assert!(get(props_of(&calls[0]), "MemoryLimit").is_none());
        assert_eq!(
            get(props_of(&calls[1]), "Wants"),
            Some(&PropValue::StrList(vec!["podrun.slice".into()]))
        );
        assert_eq!(
            get(props_of(&calls[2]), "MemoryLimit"),
            Some(&PropValue::U64(1 << 28))
        );
        assert_eq!(
            get(props_of(&calls[2]), "DefaultDependencies"),
            Some(&PropValue::Bool(false))
        );
        // v1 hierarchies systemd leaves alone get the directories, cpusets filled.
        let dir = "cpuset/podrun.slice/podrun-burstable.slice/podrun-burstable-podp1.slice";
        assert!(fs.has_dir(dir));
        assert_eq!(fs.get(format!("{dir}/cpuset.cpus")).unwrap(), "0-1");

        // Idempotent: a second ensure only updates the leaf.
        mgr.ensure(&pod, &res).unwrap();
        let calls = bus.calls();
        assert_eq!(calls.len(), 4);
        assert!(
            matches!(&calls[3], BusCall::SetProperties { name, .. } if name == "podrun-burstable-podp1.slice")
        );
    }

    #[test]
    fn container_scope_starts_on_add_process_with_delegate_and_pid() {
        let (bus, fs, mgr) = v1_manager();
        let pod = mgr.pod_path("podrun", QosClass::BestEffort, "p2");
        mgr.ensure(&pod, &Resources::default()).unwrap();
        let ctr = mgr.container_path(&pod, "abc");
        let res = Resources {
            cpu_shares: Some(2),
            pids_limit: Some(5),
            ..Default::default()
        };
        mgr.ensure(&ctr, &res).unwrap();
        assert!(!bus.is_active("podrun-abc.scope"), "no empty scopes");
        mgr.add_process(&ctr, 777).unwrap();
        let calls = bus.calls();
        let BusCall::Start {
            name, properties, ..
        } = calls.last().unwrap()
        else {
            panic!("expected a start");
        };
        assert_eq!(name, "podrun-abc.scope");
        assert_eq!(
            get(properties, "PIDs"),
            Some(&PropValue::U32List(vec![777]))
        );
        assert_eq!(get(properties, "Delegate"), Some(&PropValue::Bool(true)));
        assert_eq!(
            get(properties, "Slice"),
            Some(&PropValue::Str("podrun-besteffort-podp2.slice".into()))
        );
        assert_eq!(get(properties, "CPUShares"), Some(&PropValue::U64(2)));
        assert_eq!(get(properties, "TasksMax"), Some(&PropValue::U64(5)));
        let scope_dir = "freezer/podrun.slice/podrun-besteffort.slice/podrun-besteffort-podp2.slice/podrun-abc.scope";
        assert_eq!(
            fs.get(format!("{scope_dir}/cgroup.procs")).unwrap(),
            "777\n"
        );
        assert_eq!(mgr.pids(&pod).unwrap(), vec![777]);

        // A second process joins through cgroupfs.
        mgr.add_process(&ctr, 778).unwrap();
        assert_eq!(bus.calls().len(), calls.len());
        assert_eq!(mgr.pids(&ctr).unwrap(), vec![777, 778]);

        // Update of a running scope goes through SetUnitProperties.
        mgr.update(&ctr, &Resources::default()).unwrap();
        assert!(
            matches!(bus.calls().last().unwrap(), BusCall::SetProperties { name, .. } if name == "podrun-abc.scope")
        );

        mgr.freeze(&ctr, true).unwrap();
        assert_eq!(
            fs.get(format!("{scope_dir}/freezer.state")).unwrap(),
            "FROZEN"
        );
    }

    #[test]
    fn remove_stops_the_unit_and_cleans_leftover_dirs() {
        let (bus, fs, mgr) = v1_manager();
        let pod = mgr.pod_path("podrun", QosClass::Burstable, "p3");
        mgr.ensure(&pod, &Resources::default()).unwrap();
        let ctr = mgr.container_path(&pod, "c1");
        mgr.ensure(&ctr, &Resources::default()).unwrap();
        mgr.add_process(&ctr, 5).unwrap();
        // The fake kernel keeps the pid until the process is gone.
        for h in ["memory", "cpuset", "freezer"] {
            fs.set(
                format!(
                    "{h}/{}/cgroup.procs",
                    UnitPath::parse(&ctr).unwrap().fs_path()
                ),
                "",
            );
        }
        mgr.remove(&pod).unwrap();
        assert!(
            matches!(bus.calls().last().unwrap(), BusCall::Stop { name } if name == "podrun-burstable-podp3.slice")
        );
        assert!(!bus.is_active("podrun-c1.scope"));
        assert!(
            !fs.has_dir("cpuset/podrun.slice/podrun-burstable.slice/podrun-burstable-podp3.slice")
        );
        // Idempotent: a missing unit is fine.
        mgr.remove(&pod).unwrap();
        mgr.remove(&ctr).unwrap();
    }

    #[test]
    fn update_of_missing_unit_is_not_found() {
        let (_, mgr) = v2_manager();
        assert!(matches!(
            mgr.update("podrun.slice/podrun-x.slice", &Resources::default()),
            Err(CgroupError::NotFound { .. })
        ));
        assert_eq!(mgr.hierarchy(), Hierarchy::Unified);
    }

    #[test]
    fn v2_scope_uses_cpu_weight() {
        let (bus, mgr) = v2_manager();
        let ctr = "podrun-podx.slice:podrun:c9";
        mgr.ensure(
            ctr,
            &Resources {
                cpu_shares: Some(262_144),
                ..Default::default()
            },
        )
        .unwrap();
        // The fake v2 fs has no directories; only the bus part matters here.
        let _ = mgr.add_process(ctr, 1);
        let calls = bus.calls();
        let BusCall::Start { properties, .. } = &calls[0] else {
            panic!("expected a start");
        };
        assert_eq!(get(properties, "CPUWeight"), Some(&PropValue::U64(10_000)));
        assert!(get(properties, "CPUShares").is_none());
    }

    #[test]
    fn fs_path_of_expands() {
        assert_eq!(
            fs_path_of("a.slice/a-b.slice").unwrap(),
            PathBuf::from("a.slice/a-b.slice")
        );
    }
}

/// `ZbusSystemd` against a private dbus-daemon and a mock systemd Manager speaking the
/// documented method signatures, so the wire format (a(sv), a(sa(sv)), au, ...) and the
/// error mapping are checked without systemd. Skipped where dbus-daemon is missing.
#[cfg(test)]
mod dbus_tests {
    use std::collections::HashMap;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use zbus::zvariant::{OwnedObjectPath, OwnedValue};

    use super::*;

    #[derive(zbus::DBusError, Debug)]
    #[zbus(prefix = "org.freedesktop.systemd1")]
    enum MockError {
        #[zbus(error)]
        ZBus(zbus::Error),
        UnitExists(String),
        NoSuchUnit(String),
    }

    /// What the mock saw: (method, unit, [(property, signature)]).
    type Seen = Arc<Mutex<Vec<(String, String, Vec<(String, String)>)>>>;

    struct MockManager {
        seen: Seen,
        units: Arc<Mutex<HashMap<String, OwnedObjectPath>>>,
    }

    struct MockUnit;

    fn unit_object_path(name: &str) -> OwnedObjectPath {
        let escaped: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("_{b:02x}")
                }
            })
            .collect();
        OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/unit/{escaped}")).unwrap()
    }

    fn signatures(props: &[(String, OwnedValue)]) -> Vec<(String, String)> {
        props
            .iter()
            .map(|(n, v)| (n.clone(), v.value_signature().to_string()))
            .collect()
    }

    #[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
    impl MockUnit {
        #[zbus(property)]
        fn active_state(&self) -> String {
            "active".to_string()
        }
    }

    #[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
    impl MockManager {
        #[zbus(property)]
        fn version(&self) -> String {
            "255-mock".to_string()
        }

        async fn start_transient_unit(
            &self,
            #[zbus(object_server)] server: &zbus::ObjectServer,
            name: String,
            _mode: String,
            properties: Vec<(String, OwnedValue)>,
            aux: Vec<(String, Vec<(String, OwnedValue)>)>,
        ) -> Result<OwnedObjectPath, MockError> {
            assert!(aux.is_empty());
            let path = unit_object_path(&name);
            if self.units.lock().unwrap().contains_key(&name) {
                return Err(MockError::UnitExists(format!(
                    "Unit {name} already exists."
                )));
            }
            self.units
                .lock()
                .unwrap()
                .insert(name.clone(), path.clone());
            self.seen
                .lock()
                .unwrap()
                .push(("Start".into(), name, signatures(&properties)));
            server.at(path.clone(), MockUnit).await?;
            Ok(OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap())
        }

        fn set_unit_properties(
            &self,
            name: String,
            _runtime: bool,
            properties: Vec<(String, OwnedValue)>,
        ) -> Result<(), MockError> {
            if !self.units.lock().unwrap().contains_key(&name) {
                return Err(MockError::NoSuchUnit(format!("Unit {name} not loaded.")));
            }
            self.seen
                .lock()
                .unwrap()
                .push(("Set".into(), name, signatures(&properties)));
            Ok(())
        }

        async fn stop_unit(
            &self,
            #[zbus(object_server)] server: &zbus::ObjectServer,
            name: String,
            _mode: String,
        ) -> Result<OwnedObjectPath, MockError> {
            let path = self.units.lock().unwrap().remove(&name);
            let Some(path) = path else {
                return Err(MockError::NoSuchUnit(format!("Unit {name} not loaded.")));
            };
            server.remove::<MockUnit, _>(path).await?;
            Ok(OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/2").unwrap())
        }

        fn get_unit(&self, name: String) -> Result<OwnedObjectPath, MockError> {
            self.units
                .lock()
                .unwrap()
                .get(&name)
                .cloned()
                .ok_or_else(|| MockError::NoSuchUnit(format!("Unit {name} not loaded.")))
        }
    }

    /// A private bus daemon, killed on drop.
    struct Daemon {
        child: Child,
        address: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start_daemon() -> Option<Daemon> {
        let dir = tempfile::tempdir().ok()?;
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .ok()?;
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let daemon = Daemon {
            child,
            address: format!("unix:path={}", socket.display()),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !socket.exists() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(daemon)
    }

    #[test]
    fn zbus_client_against_a_mock_systemd() {
        let Some(daemon) = start_daemon() else {
            eprintln!("skipping: dbus-daemon not available");
            return;
        };
        // Nobody owns org.freedesktop.systemd1 yet: a clear error, not a hang.
        let err = match ZbusSystemd::connect_address(&daemon.address) {
            Err(e) => e,
            Ok(_) => panic!("connected to a bus without systemd"),
        };
        assert!(
            matches!(err, CgroupError::SystemdUnavailable { .. }),
            "{err}"
        );

        let seen: Seen = Arc::default();
        let mock = MockManager {
            seen: seen.clone(),
            units: Arc::default(),
        };
        let _service = zbus::blocking::connection::Builder::address(daemon.address.as_str())
            .unwrap()
            .name("org.freedesktop.systemd1")
            .unwrap()
            .serve_at("/org/freedesktop/systemd1", mock)
            .unwrap()
            .build()
            .unwrap();

        let bus = ZbusSystemd::connect_address(&daemon.address).unwrap();
        let scope_props = vec![
            prop("Description", PropValue::Str("podrun container".into())),
            prop("Slice", PropValue::Str("podrun-podx.slice".into())),
            prop("Delegate", PropValue::Bool(true)),
            prop("PIDs", PropValue::U32List(vec![1234])),
            prop("Wants", PropValue::StrList(vec!["podrun.slice".into()])),
            prop("MemoryMax", PropValue::U64(u64::MAX)),
        ];
        bus.start_transient_unit("podrun-c1.scope", "replace", &scope_props)
            .unwrap();
        assert_eq!(
            bus.start_transient_unit("podrun-c1.scope", "replace", &scope_props),
            Err(BusError::UnitExists)
        );
        assert_eq!(
            bus.active_state("podrun-c1.scope").unwrap().as_deref(),
            Some("active")
        );
        bus.set_unit_properties("podrun-c1.scope", true, &scope_props[5..])
            .unwrap();
        assert_eq!(
            bus.set_unit_properties("nope.scope", true, &scope_props[5..]),
            Err(BusError::NoSuchUnit)
        );
        bus.stop_unit("podrun-c1.scope", "replace").unwrap();
        assert_eq!(bus.active_state("podrun-c1.scope").unwrap(), None);
        assert_eq!(
            bus.stop_unit("podrun-c1.scope", "replace"),
            Err(BusError::NoSuchUnit)
        );

        let seen_arc = seen;
        let seen = seen_arc.lock().unwrap().clone();
        let (method, unit, sigs) = &seen[0];
        assert_eq!(
            (method.as_str(), unit.as_str()),
            ("Start", "podrun-c1.scope")
        );
        let sig = |name: &str| {
            sigs.iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.as_str())
                .unwrap()
        };
        assert_eq!(sig("Description"), "s");
        assert_eq!(sig("Delegate"), "b");
        assert_eq!(sig("PIDs"), "au");
        assert_eq!(sig("Wants"), "as");
        assert_eq!(sig("MemoryMax"), "t");
        assert_eq!(seen[1].0, "Set");

        // The whole driver over the wire, with an in-memory v1 filesystem.
        let fs = Arc::new(super::super::fs::FakeFs::new());
        fs.add_hierarchy("memory", &[("cgroup.procs", "")]);
        let dyn_fs: Arc<dyn super::super::fs::CgroupFs> = fs.clone();
        let backend = CgroupfsBackend::V1(super::super::v1::V1Manager::new(
            Hierarchy::Legacy,
            dyn_fs,
            vec![super::super::v1::V1Dir {
                dir: "memory".into(),
                controllers: vec!["memory".into()],
            }],
        ));
        let mgr = SystemdManager::new(Box::new(bus), backend);
        let pod = mgr.pod_path("podrun", QosClass::Guaranteed, "p-1");
        mgr.ensure(&pod, &Resources::default()).unwrap();
        let ctr = mgr.container_path(&pod, "c2");
        mgr.ensure(&ctr, &Resources::default()).unwrap();
        mgr.add_process(&ctr, 4321).unwrap();
        assert_eq!(mgr.pids(&pod).unwrap(), vec![4321]);
        fs.set(
            "memory/podrun.slice/podrun-podp_1.slice/podrun-c2.scope/cgroup.procs",
            "",
        );
        mgr.remove(&ctr).unwrap();
        mgr.remove(&pod).unwrap();
        assert!(!fs.has_dir("memory/podrun.slice/podrun-podp_1.slice"));
        let started: Vec<String> = seen_arc
            .lock()
            .unwrap()
            .iter()
            .skip(2)
            .filter(|(m, _, _)| m == "Start")
            .map(|(_, unit, _)| unit.clone())
            .collect();
        assert_eq!(
            started,
            vec!["podrun.slice", "podrun-podp_1.slice", "podrun-c2.scope"]
        );
    }
}
