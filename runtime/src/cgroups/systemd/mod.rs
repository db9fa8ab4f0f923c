//! systemd cgroup driver: pod cgroups are transient slices and containers transient
//! scopes (Delegate=yes) started over D-Bus, named like the kubelet's kubepods slices.
//! Limits go through unit properties; reads, freezing and the v1 hierarchies systemd
//! does not manage (cpuset, freezer) go through the cgroupfs backend at the same path.
//!
//! Path strings: a pod is "<a>.slice/<a>-b.slice/<a>-b-c.slice" (the last component is
//! the unit), a container "<slice>:<prefix>:<id>" (unit "<prefix>-<id>.scope"), as runc
//! spells systemd cgroup parents. A slice name's dashes encode its parents, so the
//! filesystem path is always expanded from the leaf name.
//!
//! Files: `unit.rs` names units, `props.rs` builds their properties, `dbus.rs` speaks
//! D-Bus with zbus, `helper.rs` runs that in a helper process for callers that must stay
//! single-threaded, and `fake.rs` (tests only) stands in for systemd.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    qos_class_name, CgroupError, CgroupManager, CgroupStats, CgroupfsBackend, Driver, Hierarchy,
    QosClass, Resources,
};

mod dbus;
#[cfg(any(test, feature = "test-support"))]
mod fake;
mod helper;
#[cfg(any(test, feature = "test-support"))]
pub mod mock;
mod props;
mod unit;

pub use dbus::ZbusSystemd;
#[cfg(any(test, feature = "test-support"))]
pub use fake::{BusCall, FakeBus};
pub use helper::HelperBus;
use props::prop;
pub use props::{quota_per_sec_usec, resource_properties, PropValue, UnitProperty};
pub use unit::{expand_slice, UnitPath};

/// Prefix of container scopes: "podrun-<id>.scope".
pub const SCOPE_PREFIX: &str = "podrun";
/// How long to wait for a start or stop job to settle.
const JOB_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures of a systemd call, with the errors podrun reacts to split out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum BusError {
    #[error("unit already exists")]
    UnitExists,
    #[error("no such unit")]
    NoSuchUnit,
    #[error("{0}")]
    Other(String),
}

/// Where the systemd driver's D-Bus connection lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusAccess {
    /// In this process, with zbus's threads beside the caller's: for processes that never
    /// clone container processes (the agent, podrun's commands that launch monitors).
    InProcess,
    /// In a helper process forked from this one (see `HelperBus`), so this one stays
    /// single-threaded: for the pod monitor and `podrun oci run`, which clone.
    Helper,
}

impl BusAccess {
    /// Connect to systemd on the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set).
    pub fn connect(self) -> Result<Box<dyn SystemdBus>, CgroupError> {
        Ok(match self {
            BusAccess::InProcess => Box::new(ZbusSystemd::connect()?),
            BusAccess::Helper => Box::new(HelperBus::connect()?),
        })
    }
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

/// Directory of a systemd path in the cgroupfs backend (for callers reading files).
pub fn fs_path_of(path: &str) -> Result<PathBuf, CgroupError> {
    Ok(PathBuf::from(UnitPath::parse(path)?.fs_path()))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod dbus_tests;
