//! `SystemdBus` over D-Bus with zbus. A zbus connection runs executor and reactor
//! threads, so a process that clones container processes reaches it through the helper
//! process of `helper.rs` instead.

use super::super::CgroupError;
use super::{BusError, PropValue, SystemdBus, UnitProperty};

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
