//! Reading /proc: the host's view of a pod's processes.
//!
//! A pod monitor is PID 1 of the pod's PID namespace, so the PIDs it records for its
//! containers are the pod's. Host tools (`nsenter -t`, `crictl inspect`'s `info.pid`, as
//! containerd fills it) need the host's PID: it is found among the monitor's children by
//! the `NSpid` line of their status, which lists a process's PID in each namespace from
//! the host's inwards.

use std::path::Path;

/// The PIDs of `pid` in each PID namespace it belongs to, outermost first.
fn ns_pids(proc_root: &Path, pid: i32) -> Option<Vec<i32>> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

/// Children of `pid`: from `task/<tid>/children` of each of its threads, or by a scan of
/// every process's parent where the kernel lacks that file.
fn children(proc_root: &Path, pid: i32) -> Vec<i32> {
    let tasks = proc_root.join(pid.to_string()).join("task");
    let mut out = Vec::new();
    let mut found_file = false;
    for t in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            found_file = true;
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    if found_file {
        return out;
    }
    for e in std::fs::read_dir(proc_root).into_iter().flatten().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|p| p.trim().parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// The host PID of the monitor's child that the monitor knows as `pid`.
pub fn host_pid_of_child(monitor: i32, pid: i32) -> Option<i32> {
    host_pid_of_child_in(Path::new("/proc"), monitor, pid)
}

fn host_pid_of_child_in(proc_root: &Path, monitor: i32, pid: i32) -> Option<i32> {
    if monitor <= 0 || pid <= 0 {
        return None;
    }
    // The monitor's own PID namespace is its innermost one; its children's PIDs in that
    // namespace stand at the same depth of their NSpid lines.
    let depth = ns_pids(proc_root, monitor)?.len().checked_sub(1)?;
    children(proc_root, monitor).into_iter().find(|child| {
        ns_pids(proc_root, *child).and_then(|ids| ids.get(depth).copied()) == Some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(root: &Path, pid: i32, ppid: i32, nspid: &str, children: Option<&str>) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("task").join(pid.to_string())).unwrap();
        std::fs::write(
            dir.join("status"),
            format!("Name:\tx\nPid:\t{pid}\nPPid:\t{ppid}\nNSpid:\t{nspid}\n"),
        )
        .unwrap();
        if let Some(c) = children {
            std::fs::write(dir.join("task").join(pid.to_string()).join("children"), c).unwrap();
        }
    }

    #[test]
    fn finds_the_host_pid_of_a_pod_process() {
        let root = tempfile::tempdir().unwrap();
        // Monitor 500 is PID 1 of the pod; containers 510 (pod PID 2) and 520 (pod PID 3,
        // PID 1 of a namespace of its own).
        process(root.path(), 500, 1, "500\t1", Some("510 520 "));
        process(root.path(), 510, 500, "510\t2", None);
        process(root.path(), 520, 500, "520\t3\t1", None);
        assert_eq!(host_pid_of_child_in(root.path(), 500, 2), Some(510));
        assert_eq!(host_pid_of_child_in(root.path(), 500, 3), Some(520));
        assert_eq!(host_pid_of_child_in(root.path(), 500, 4), None);
        assert_eq!(host_pid_of_child_in(root.path(), 999, 2), None);
    }

    #[test]
    fn a_monitor_in_the_host_namespace_and_no_children_file() {
        let root = tempfile::tempdir().unwrap();
        process(root.path(), 600, 1, "600", None);
        process(root.path(), 610, 600, "610", None);
        process(root.path(), 620, 1, "620", None);
        assert_eq!(host_pid_of_child_in(root.path(), 600, 610), Some(610));
        assert_eq!(host_pid_of_child_in(root.path(), 600, 620), None);
    }
}
