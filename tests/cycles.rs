//! Many create/delete cycles leave nothing behind: no pods, mounts, cgroups or files,
//! and no descriptors or child processes in the process driving podrun.
//!
//! A test binary of its own, so no other test opens descriptors or starts processes in
//! this process while it counts them.

mod common;

use std::time::{Duration, Instant};

use common::Env;

const CYCLES: usize = 100;
/// The tests of this binary count the process's descriptors and children: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Pods created and deleted at the same time by the concurrency test.
const WORKERS: usize = 4;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Processes whose parent is this process (zombies included).
fn child_processes() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(me.as_str()) {
            out.push(stat);
        }
    }
    out
}

fn manifest(env: &Env, name: &str) -> std::path::PathBuf {
    env.manifest(
        &format!("{name}.yaml"),
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, \"3600\"]\n"),
    )
}

/// `run -d` then `rm --grace-period 0` of pod `name`, `n` times.
fn cycle(env: &Env, name: &str, n: usize) {
    let f = manifest(env, name);
    for i in 0..n {
        env.ok(&["run", "-d", f.to_str().unwrap()]);
        let out = env.podrun(&["rm", "--grace-period", "0", name]);
        assert!(
            out.status.success(),
            "cycle {i} of {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn hundred_create_delete_cycles_leak_nothing() {
    require_root!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new(&["busybox"]);
    let fds_before = open_fds();
    let children_before = child_processes();

    let start = Instant::now();
    cycle(&env, "cycle", CYCLES);
    eprintln!("{CYCLES} cycles took {:?}", start.elapsed());

    assert!(env.pods_json().as_array().unwrap().is_empty());
    env.assert_no_leaks();

    // Children exit (and are reaped) right after the commands; allow a moment.
    let end = Instant::now() + Duration::from_secs(5);
    while child_processes().len() != children_before.len() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        child_processes(),
        children_before,
        "child processes of the test"
    );
    assert_eq!(open_fds(), fds_before, "open descriptors of the test");
}

#[test]
fn concurrent_runs_and_removals_in_one_instance() {
    require_root!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new(&["busybox"]);
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let env = &env;
            s.spawn(move || cycle(env, &format!("same{w}"), 10));
        }
    });
    assert!(env.pods_json().as_array().unwrap().is_empty());
    env.assert_no_leaks();
}
