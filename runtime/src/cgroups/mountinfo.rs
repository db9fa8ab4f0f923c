//! Parsing of /proc/self/mountinfo into the cgroup mounts of this host, and the
//! legacy / hybrid / unified decision made from them.
//!
//! Detection is by filesystem type (`cgroup` vs `cgroup2`) and the v1 super options
//! that name the controllers, never by guessing from mount point names.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CgroupError, Hierarchy};

/// One v1 hierarchy as mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Mount {
    /// Absolute mount point, e.g. /sys/fs/cgroup/memory.
    pub mount_point: PathBuf,
    /// Cgroup of the hierarchy that is mounted there ("/" outside cgroup namespaces).
    pub root: String,
    /// Controllers attached to the hierarchy, e.g. ["cpu", "cpuacct"]. Named
    /// hierarchies appear as "name=systemd".
    pub controllers: Vec<String>,
}

impl V1Mount {
    /// Whether this hierarchy carries `controller`.
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// A named hierarchy (name=systemd) carries no resource controller.
    pub fn is_named_only(&self) -> bool {
        self.controllers.iter().all(|c| c.starts_with("name="))
    }
}

/// The unified (cgroup2) mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnifiedMount {
    pub mount_point: PathBuf,
    pub root: String,
}

/// Every cgroup mount found in mountinfo, first mount of each hierarchy only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountTable {
    pub v1: Vec<V1Mount>,
    pub unified: Option<UnifiedMount>,
}

impl MountTable {
    /// The v1 hierarchy that carries `controller`, if mounted.
    pub fn v1_for(&self, controller: &str) -> Option<&V1Mount> {
        self.v1.iter().find(|m| m.has(controller))
    }

    /// Which layout these mounts form. Named-only v1 hierarchies (name=systemd) do not
    /// count as controllers: a unified host may still mount one for old tools.
    pub fn hierarchy(&self) -> Result<Hierarchy, CgroupError> {
        let has_v1_controllers = self.v1.iter().any(|m| !m.is_named_only());
        match (has_v1_controllers, self.unified.is_some()) {
            (true, true) => Ok(Hierarchy::Hybrid),
            (true, false) => Ok(Hierarchy::Legacy),
            (false, true) => Ok(Hierarchy::Unified),
            (false, false) => Err(CgroupError::NoCgroupMounts),
        }
    }
}

/// Parse mountinfo text into the cgroup mounts it lists.
pub fn parse_mountinfo(text: &str) -> Result<MountTable, CgroupError> {
    let mut table = MountTable::default();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: &str| CgroupError::ParseMountinfo {
            line: idx + 1,
            reason: reason.to_string(),
        };
        // Format (proc(5)): id parent maj:min root mount-point options [optional...] - fstype source super-options
        let (left, right) = line
            .split_once(" - ")
            .ok_or_else(|| bad("missing ' - ' separator"))?;
        let left: Vec<&str> = left.split(' ').collect();
        if left.len() < 6 {
            return Err(bad("fewer than six fields before the separator"));
        }
        let mut right = right.split(' ');
        let fstype = right.next().ok_or_else(|| bad("missing filesystem type"))?;
        let _source = right.next();
        let super_opts = right.next().unwrap_or("");
        let root = unescape(left[3]);
        let mount_point = PathBuf::from(unescape(left[4]));
        match fstype {
            "cgroup2" if table.unified.is_none() => {
                table.unified = Some(UnifiedMount { mount_point, root });
            }
            "cgroup" => {
                let controllers: Vec<String> = super_opts
                    .split(',')
                    .filter(|o| is_v1_controller_option(o))
                    .map(str::to_string)
                    .collect();
                if controllers.is_empty() {
                    continue;
                }
                // Bind mounts of the same hierarchy repeat its controllers: keep the first.
                if table.v1.iter().any(|m| m.controllers == controllers) {
                    continue;
                }
                table.v1.push(V1Mount {
                    mount_point,
                    root,
                    controllers,
                });
            }
            _ => {}
        }
    }
    Ok(table)
}

/// Super options of a v1 mount mix controllers with flags; keep only the controllers.
fn is_v1_controller_option(opt: &str) -> bool {
    if opt.starts_with("name=") {
        return true;
    }
    !matches!(
        opt,
        "" | "rw"
            | "ro"
            | "noprefix"
            | "xattr"
            | "clone_children"
            | "cpuset_v2_mode"
            | "favordynmods"
            | "none"
    ) && !opt.contains('=')
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(v as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a mount point lives relative to `mount_root`, or None when it is outside it.
pub(crate) fn relative_to(mount_point: &Path, mount_root: &Path) -> Option<PathBuf> {
    mount_point
        .strip_prefix(mount_root)
        .ok()
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const LEGACY: &str = "\
25 18 0:21 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
26 25 0:22 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpuset,clone_children
";

    const UNIFIED: &str = "\
24 18 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_layout_is_detected_from_fstypes() {
        let t = parse_mountinfo(HYBRID).unwrap();
        assert_eq!(t.hierarchy().unwrap(), Hierarchy::Hybrid);
        assert_eq!(t.v1.len(), 9);
        assert_eq!(
            t.v1_for("memory").unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert!(t.v1_for("name=systemd").unwrap().is_named_only());
        assert_eq!(
            t.unified.as_ref().unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn legacy_layout_with_comounted_cpu_and_flags() {
        let t = parse_mountinfo(LEGACY).unwrap();
        assert_eq!(t.hierarchy().unwrap(), Hierarchy::Legacy);
        let cpu = t.v1_for("cpuacct").unwrap();
        assert_eq!(cpu.controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(cpu.mount_point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        // release_agent= and clone_children are options, not controllers.
        assert_eq!(
            t.v1_for("name=systemd").unwrap().controllers,
            vec!["name=systemd"]
        );
        assert_eq!(t.v1_for("cpuset").unwrap().controllers, vec!["cpuset"]);
    }

    #[test]
    fn unified_layout_even_with_a_named_v1_hierarchy() {
        let t = parse_mountinfo(UNIFIED).unwrap();
        assert_eq!(t.hierarchy().unwrap(), Hierarchy::Unified);
        let with_named =
            format!("{UNIFIED}40 31 0:37 / /run/systemd/cg rw - cgroup cgroup rw,name=systemd\n");
        let t = parse_mountinfo(&with_named).unwrap();
        assert_eq!(t.hierarchy().unwrap(), Hierarchy::Unified);
    }

    #[test]
    fn no_cgroup_mounts_is_an_error() {
        let t = parse_mountinfo("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n").unwrap();
        assert!(matches!(t.hierarchy(), Err(CgroupError::NoCgroupMounts)));
    }

    #[test]
    fn malformed_line_names_its_number() {
        let err = parse_mountinfo("22 1 8:1 / / rw - ext4 /dev/sda1 rw\ngarbage\n").unwrap_err();
        assert!(
            matches!(err, CgroupError::ParseMountinfo { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn escaped_mount_points_and_duplicate_binds() {
        let text = "\
1 0 0:1 / /tmp/a\\040b/memory rw - cgroup cgroup rw,memory
2 0 0:1 / /other/memory rw - cgroup cgroup rw,memory
";
        let t = parse_mountinfo(text).unwrap();
        assert_eq!(t.v1.len(), 1);
        assert_eq!(t.v1[0].mount_point, PathBuf::from("/tmp/a b/memory"));
    }
}
