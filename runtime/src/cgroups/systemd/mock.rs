//! A stand-in for systemd on D-Bus (test builds and the `test-support` feature only):
//! a private `dbus-daemon` and an org.freedesktop.systemd1.Manager speaking the
//! documented method signatures, optionally slow, recording what it was asked. Like
//! systemd on a unified host, it can create the units' cgroups and move their PIDs in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::{expand_slice, SCOPE_PREFIX};

/// A private bus daemon, killed on drop.
pub struct DbusDaemon {
    child: Child,
    address: String,
}

impl DbusDaemon {
    /// Start `dbus-daemon` listening on `<dir>/bus`. Err when it is missing or does not
    /// come up.
    pub fn start(dir: &Path) -> Result<Self, String> {
        let socket = dir.join("bus");
        let config = dir.join("bus.conf");
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
        .map_err(|e| format!("write {}: {e}", config.display()))?;
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("dbus-daemon: {e}"))?;
        let daemon = DbusDaemon {
            child,
            address: format!("unix:path={}", socket.display()),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err("dbus-daemon did not create its socket".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    /// Its D-Bus address, "unix:path=...".
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call the stand-in answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenCall {
    /// "Start", "Set" or "Stop".
    pub method: String,
    pub unit: String,
    /// (property, D-Bus signature of its value).
    pub signatures: Vec<(String, String)>,
    /// The PIDs property, if any.
    pub pids: Vec<u32>,
}

type Seen = Arc<Mutex<Vec<SeenCall>>>;

#[derive(zbus::DBusError, Debug)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum MockError {
    #[zbus(error)]
    ZBus(zbus::Error),
    UnitExists(String),
    NoSuchUnit(String),
}

struct Unit {
    path: OwnedObjectPath,
    /// Its cgroup, when the stand-in made one.
    cgroup: Option<PathBuf>,
}

struct Manager {
    seen: Seen,
    units: Arc<Mutex<HashMap<String, Unit>>>,
    delay: Duration,
    cgroup_root: Option<PathBuf>,
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
    OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/unit/{escaped}"))
        .expect("valid object path")
}

fn seen_call(method: &str, unit: &str, props: &[(String, OwnedValue)]) -> SeenCall {
    let pids = props
        .iter()
        .filter(|(n, _)| n == "PIDs")
        .flat_map(|(_, v)| match &**v {
            Value::Array(a) => a
                .iter()
                .filter_map(|x| match x {
                    Value::U32(n) => Some(*n),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    SeenCall {
        method: method.to_string(),
        unit: unit.to_string(),
        signatures: props
            .iter()
            .map(|(n, v)| (n.clone(), v.value_signature().to_string()))
            .collect(),
        pids,
    }
}

fn str_prop<'a>(props: &'a [(String, OwnedValue)], name: &str) -> Option<&'a str> {
    props
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| match &**v {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        })
}

impl Manager {
    /// Where systemd would put the unit's cgroup (slice names encode their parents).
    fn cgroup_of(&self, name: &str, props: &[(String, OwnedValue)]) -> Option<PathBuf> {
        let root = self.cgroup_root.as_ref()?;
        let rel = if name.ends_with(".slice") {
            expand_slice(name).ok()?
        } else {
            let slice = expand_slice(str_prop(props, "Slice")?).ok()?;
            format!("{slice}/{name}")
        };
        Some(root.join(rel))
    }
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl MockUnit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        "active".to_string()
    }
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
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
        std::thread::sleep(self.delay);
        if !aux.is_empty() {
            return Err(MockError::ZBus(zbus::Error::Failure(
                "auxiliary units are not expected".into(),
            )));
        }
        if self.units.lock().unwrap().contains_key(&name) {
            return Err(MockError::UnitExists(format!(
                "Unit {name} already exists."
            )));
        }
        let call = seen_call("Start", &name, &properties);
        let cgroup = self.cgroup_of(&name, &properties);
        if let Some(dir) = &cgroup {
            std::fs::create_dir_all(dir)
                .map_err(|e| MockError::ZBus(zbus::Error::Failure(e.to_string())))?;
            for pid in &call.pids {
                std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                    .map_err(|e| MockError::ZBus(zbus::Error::Failure(e.to_string())))?;
            }
        }
        let path = unit_object_path(&name);
        self.units.lock().unwrap().insert(
            name.clone(),
            Unit {
                path: path.clone(),
                cgroup,
            },
        );
        self.seen.lock().unwrap().push(call);
        server.at(path, MockUnit).await?;
        Ok(OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").expect("job path"))
    }

    fn set_unit_properties(
        &self,
        name: String,
        _runtime: bool,
        properties: Vec<(String, OwnedValue)>,
    ) -> Result<(), MockError> {
        std::thread::sleep(self.delay);
        if !self.units.lock().unwrap().contains_key(&name) {
            return Err(MockError::NoSuchUnit(format!("Unit {name} not loaded.")));
        }
        self.seen
            .lock()
            .unwrap()
            .push(seen_call("Set", &name, &properties));
        Ok(())
    }

    async fn stop_unit(
        &self,
        #[zbus(object_server)] server: &zbus::ObjectServer,
        name: String,
        _mode: String,
    ) -> Result<OwnedObjectPath, MockError> {
        std::thread::sleep(self.delay);
        let unit = self.units.lock().unwrap().remove(&name);
        let Some(unit) = unit else {
            return Err(MockError::NoSuchUnit(format!("Unit {name} not loaded.")));
        };
        if let Some(dir) = &unit.cgroup {
            let _ = std::fs::remove_dir(dir);
        }
        self.seen
            .lock()
            .unwrap()
            .push(seen_call("Stop", &name, &[]));
        server.remove::<MockUnit, _>(unit.path).await?;
        Ok(OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/2").expect("job path"))
    }

    fn get_unit(&self, name: String) -> Result<OwnedObjectPath, MockError> {
        std::thread::sleep(self.delay);
        self.units
            .lock()
            .unwrap()
            .get(&name)
            .map(|u| u.path.clone())
            .ok_or_else(|| MockError::NoSuchUnit(format!("Unit {name} not loaded.")))
    }
}

/// The stand-in, serving as org.freedesktop.systemd1 until dropped.
pub struct MockSystemd {
    _conn: zbus::blocking::Connection,
    seen: Seen,
}

impl MockSystemd {
    /// Serve on the bus at `address`, sleeping `delay` in every Manager call. With
    /// `cgroup_root`, started units get a cgroup below it (with their PIDs moved in) and
    /// lose it when stopped, as systemd does on a unified host.
    pub fn serve(
        address: &str,
        delay: Duration,
        cgroup_root: Option<PathBuf>,
    ) -> Result<Self, String> {
        let seen: Seen = Arc::default();
        let manager = Manager {
            seen: seen.clone(),
            units: Arc::default(),
            delay,
            cgroup_root,
        };
        let conn = zbus::blocking::connection::Builder::address(address)
            .and_then(|b| b.name("org.freedesktop.systemd1"))
            .and_then(|b| b.serve_at("/org/freedesktop/systemd1", manager))
            .and_then(|b| b.build())
            .map_err(|e| format!("serve the systemd stand-in on {address}: {e}"))?;
        Ok(MockSystemd { _conn: conn, seen })
    }

    /// Every call answered so far, in order.
    pub fn calls(&self) -> Vec<SeenCall> {
        self.seen.lock().unwrap().clone()
    }

    /// PIDs podrun asked to put in its container scopes ("podrun-<id>.scope").
    pub fn scope_pids(&self) -> Vec<u32> {
        let prefix = format!("{SCOPE_PREFIX}-");
        self.calls()
            .iter()
            .filter(|c| {
                c.method == "Start" && c.unit.starts_with(&prefix) && c.unit.ends_with(".scope")
            })
            .flat_map(|c| c.pids.clone())
            .collect()
    }
}
