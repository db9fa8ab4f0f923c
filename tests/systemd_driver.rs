//! The systemd cgroup driver end to end, against a stand-in for systemd on a private
//! D-Bus that answers slowly (200 ms a call): pods and `podrun oci run` containers run,
//! and the processes that clone them (the pod monitor, `podrun oci run`) stay
//! single-threaded while zbus's threads serve the bus from a helper process. The clone
//! refuses to happen from a multi-threaded process, so a pod that runs proves it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{state_of, Env};
use podrun_runtime::cgroups::systemd::mock::{DbusDaemon, MockSystemd};

const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 3600 & wait $!; done";
/// How long the stand-in takes to answer each call: zbus's threads are busy meanwhile.
const SLOW: Duration = Duration::from_millis(200);

/// A private bus with the slow systemd stand-in on it.
struct SlowSystemd {
    mock: MockSystemd,
    daemon: DbusDaemon,
    _dir: tempfile::TempDir,
}

impl SlowSystemd {
    /// None (after `cannot_run`) where dbus-daemon is missing.
    fn start(test: &str) -> Option<SlowSystemd> {
        let dir = tempfile::Builder::new()
            .prefix("prsd-")
            .tempdir_in("/tmp")
            .unwrap();
        let daemon = match DbusDaemon::start(dir.path()) {
            Ok(d) => d,
            Err(e) => {
                common::cannot_run(test, &format!("no private D-Bus ({e}); install dbus"));
                return None;
            }
        };
        // On a unified host systemd creates the units' cgroups; the stand-in does too.
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let mock = MockSystemd::serve(
            daemon.address(),
            SLOW,
            unified.then(|| PathBuf::from("/sys/fs/cgroup")),
        )
        .unwrap();
        Some(SlowSystemd {
            mock,
            daemon,
            _dir: dir,
        })
    }

    /// podrun with the systemd driver, talking to this bus.
    fn podrun(&self, env: &Env, args: &[&str]) -> std::process::Output {
        env.cmd(args)
            .env("PODRUN_CGROUP_DRIVER", "systemd")
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.daemon.address())
            .output()
            .unwrap()
    }

    fn ok(&self, env: &Env, args: &[&str]) -> String {
        let out = self.podrun(env, args);
        let (code, stdout, stderr) = common::text(&out);
        assert_eq!(
            code, 0,
            "podrun {args:?}:\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout
    }
}

/// Removes the slice directories a test's cgroup root left (systemd's to collect, but
/// there is no systemd here), deepest first.
struct SliceDirs(String);

impl SliceDirs {
    /// Directories of `<root>.slice` in every hierarchy whose name mentions a pod.
    fn pods(&self) -> Vec<PathBuf> {
        self.all()
            .into_iter()
            .filter(|d| {
                d.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("-pod"))
            })
            .collect()
    }

    fn all(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut todo: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|h| h.path().join(format!("{}.slice", self.0)))
            .filter(|p| p.is_dir())
            .collect();
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                }
            }
            out.push(d);
        }
        out
    }
}

impl Drop for SliceDirs {
    fn drop(&mut self) {
        let mut dirs = self.all();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().count())
        .unwrap_or(0)
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// (monitor, D-Bus helper) processes of this instance: both run `podrun monitor`, the
/// helper renamed.
fn monitor_processes(env: &Env) -> (Vec<i32>, Vec<i32>) {
    let dir = env.dir.path().to_string_lossy().into_owned();
    let (mut monitors, mut helpers) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&dir) && cmdline.contains(" monitor ") {
            if comm(pid) == "podrun-dbus" {
                helpers.push(pid);
            } else {
                monitors.push(pid);
            }
        }
    }
    (monitors, helpers)
}

/// The line of /proc/<pid>/cgroup for a v1 controller (or the v2 "0::" line).
fn cgroup_line(pid: u32, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find(|l| {
            l.starts_with("0::")
                || l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == controller))
        })
        .map(str::to_string)
}

#[test]
fn pods_run_under_the_systemd_driver_from_a_single_threaded_monitor() {
    require_root!();
    let Some(systemd) = SlowSystemd::start(module_path!()) else {
        return;
    };
    let mut env = Env::new(&["busybox"]);
    // No dashes: the pod's slices all hang below "<root>.slice".
    env.cgroup_root = format!("prsd{}", std::process::id());
    let slices = SliceDirs(env.cgroup_root.clone());
    let manifest = env.manifest(
        "sd.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: sd}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, \"echo started; {IDLE}\"]\n"),
    );
    systemd.ok(&env, &["run", "-d", manifest.to_str().unwrap()]);
    env.wait_for("sd/c running", Duration::from_secs(60), || {
        let out = systemd.podrun(&env, &["pods", "-o", "json"]);
        let pods: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let c = pods.as_array()?.iter().find(|p| p["name"] == "sd")?["status_detail"]["containers"]
            .as_array()?
            .first()?
            .clone();
        (state_of(&c).0 == "running").then_some(())
    });

    // The monitor cloned the container with one thread; zbus's live in its helper.
    let (monitors, helpers) = monitor_processes(&env);
    assert_eq!(monitors.len(), 1, "monitors {monitors:?}");
    assert_eq!(
        threads(monitors[0]),
        1,
        "the monitor must be single-threaded"
    );
    assert_eq!(helpers.len(), 1, "D-Bus helpers {helpers:?}");
    assert!(
        threads(helpers[0]) > 1,
        "zbus runs its threads in the helper"
    );

    // The container's scope was started over the bus with its PID, and the PID is there.
    let pids = systemd.mock.scope_pids();
    assert_eq!(pids.len(), 1, "{:?}", systemd.mock.calls());
    let line = cgroup_line(pids[0], "memory").unwrap();
    assert!(
        line.contains(&format!("/{}.slice/", env.cgroup_root)) && line.ends_with(".scope"),
        "{line}"
    );

    // exec clones from the monitor too.
    let out = systemd.podrun(&env, &["exec", "-c", "c", "sd", "--", "echo", "exec ok"]);
    assert_eq!(
        common::text(&out).1,
        "exec ok\n",
        "{:?}",
        common::text(&out)
    );

    systemd.ok(&env, &["rm", "--grace-period", "0", "sd"]);
    let stopped: Vec<String> = systemd
        .mock
        .calls()
        .into_iter()
        .filter(|c| c.method == "Stop")
        .map(|c| c.unit)
        .collect();
    assert!(
        stopped.iter().any(|u| u.ends_with(".scope")) && stopped.iter().any(|u| u.contains("-pod")),
        "{stopped:?}"
    );
    assert_eq!(slices.pods(), Vec::<PathBuf>::new(), "pod cgroups left");
    // The helper goes with its monitor (assert_no_leaks looks for both).
    env.assert_no_leaks();
}

#[test]
fn oci_run_under_the_systemd_driver_clones_from_one_thread() {
    require_root!();
    let Some(systemd) = SlowSystemd::start(module_path!()) else {
        return;
    };
    let mut env = Env::new(&[]);
    env.cgroup_root = format!("prsdoci{}", std::process::id());
    let slices = SliceDirs(env.cgroup_root.clone());
    let bundle = env.dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox")).unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/busybox", "echo", "hello from oci"], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}],
            "cgroupsPath": format!("{}.slice:podrun:oci1", env.cgroup_root),
            "resources": {"pids": {"limit": 20}}
        }
    });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let out = systemd.ok(
        &env,
        &["oci", "run", "--bundle", bundle.to_str().unwrap(), "oci1"],
    );
    assert_eq!(out, "hello from oci\n");
    let calls = systemd.mock.calls();
    let start = calls
        .iter()
        .find(|c| c.method == "Start" && c.unit == "podrun-oci1.scope")
        .unwrap_or_else(|| panic!("no scope started: {calls:?}"));
    assert_eq!(start.pids.len(), 1, "{start:?}");
    assert!(
        calls
            .iter()
            .any(|c| c.method == "Stop" && c.unit == "podrun-oci1.scope"),
        "{calls:?}"
    );
    assert!(
        slices
            .all()
            .iter()
            .all(|d| !d.ends_with("podrun-oci1.scope")),
        "{:?}",
        slices.all()
    );
}
