//! `FakeBus`: a recording in-memory systemd for unit tests (test builds and the
//! `test-support` feature only).

use std::collections::HashMap;
use std::sync::Mutex;

use super::{BusError, PropValue, SystemdBus, UnitProperty};

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
