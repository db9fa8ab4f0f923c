//! The filesystem boundary of the cgroupfs backends: `CgroupFs` with a host
//! implementation rooted at the cgroup mount root and a recording in-memory fake, plus
//! the tree helpers (mkdir -p, deepest-first removal, member listing) both backends share.
//!
//! Paths given to `CgroupFs` are relative to its root (e.g. "memory/podrun/pod1/tasks").

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::CgroupError;

/// Filesystem operations the cgroupfs backends need. Writes never create files: a
/// missing control file means the kernel lacks that knob.
pub trait CgroupFs: Send + Sync {
    fn read(&self, path: &Path) -> io::Result<String>;
    fn write(&self, path: &Path, data: &str) -> io::Result<()>;
    /// Create one directory level; `AlreadyExists` when it is there.
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Names of the subdirectories of `path` (child cgroups).
    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>>;
}

/// The real cgroup filesystem below a mount root (normally /sys/fs/cgroup).
#[derive(Debug, Clone)]
pub struct HostFs {
    root: PathBuf,
}

impl HostFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostFs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }
}

impl CgroupFs for HostFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(self.full(path))
    }

    fn write(&self, path: &Path, data: &str) -> io::Result<()> {
        use std::io::Write;
        // One write(2) per value: cgroupfs parses each write as a whole. O_TRUNC is
        // ignored by cgroupfs and keeps plain files (tests) exact.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.full(path))?;
        f.write_all(data.as_bytes())
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(self.full(path))
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(self.full(path))
    }

    fn exists(&self, path: &Path) -> bool {
        self.full(path).exists()
    }

    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.full(path))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }
}

/// One recorded call on the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsOp {
    Write(PathBuf, String),
    Mkdir(PathBuf),
    Rmdir(PathBuf),
}

#[derive(Debug, Default)]
struct FakeState {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, String>,
    /// Control files (name, initial content) that appear in every new directory
    /// below the given top-level directory, like the kernel creates them.
    templates: BTreeMap<PathBuf, Vec<(String, String)>>,
    /// Injected write failures (raw errno) per file.
    write_errors: BTreeMap<PathBuf, i32>,
    ops: Vec<FsOp>,
}

/// In-memory cgroup filesystem that records every mutation. rmdir fails with EBUSY
/// while the directory has child directories or a non-empty cgroup.procs, as the
/// kernel does.
#[derive(Debug, Default)]
pub struct FakeFs {
    state: Mutex<FakeState>,
}

impl FakeFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declare a mounted hierarchy at `dir` whose cgroups all carry `files`.
    /// The root cgroup itself gets the same files.
    pub fn add_hierarchy(&self, dir: impl Into<PathBuf>, files: &[(&str, &str)]) {
        let dir = dir.into();
        let mut st = self.lock();
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        for (name, value) in &files {
            st.files.insert(dir.join(name), value.clone());
        }
        st.dirs.insert(dir.clone());
        st.templates.insert(dir, files);
    }

    /// Set a file's content directly (kernel-side state such as usage counters).
    pub fn set(&self, path: impl Into<PathBuf>, value: &str) {
        self.lock().files.insert(path.into(), value.to_string());
    }

    /// Make writes to `path` fail with `errno`.
    pub fn fail_writes(&self, path: impl Into<PathBuf>, errno: i32) {
        self.lock().write_errors.insert(path.into(), errno);
    }

    pub fn get(&self, path: impl AsRef<Path>) -> Option<String> {
        self.lock().files.get(path.as_ref()).cloned()
    }

    pub fn has_dir(&self, path: impl AsRef<Path>) -> bool {
        self.lock().dirs.contains(path.as_ref())
    }

    pub fn ops(&self) -> Vec<FsOp> {
        self.lock().ops.clone()
    }

    /// Only the writes, in order.
    pub fn writes(&self) -> Vec<(PathBuf, String)> {
        self.ops()
            .into_iter()
            .filter_map(|op| match op {
                FsOp::Write(p, v) => Some((p, v)),
                _ => None,
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CgroupFs for FakeFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.lock()
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn write(&self, path: &Path, data: &str) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(errno) = st.write_errors.get(path) {
            return Err(io::Error::from_raw_os_error(*errno));
        }
        let Some(current) = st.files.get_mut(path) else {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "cgroup.procs" {
            // Like the kernel, cgroup.procs lists members: a write adds one.
            current.push_str(data.trim());
            current.push('\n');
        } else if name == "cgroup.subtree_control" {
            // "+a -b" edits the enabled set.
            let mut enabled: Vec<String> = current.split_whitespace().map(str::to_string).collect();
            for tok in data.split_whitespace() {
                let (add, c) = tok.split_at(1);
                enabled.retain(|e| e != c);
                if add == "+" {
                    enabled.push(c.to_string());
                }
            }
            *current = enabled.join(" ");
        } else {
            *current = data.to_string();
        }
        st.ops
            .push(FsOp::Write(path.to_path_buf(), data.to_string()));
        Ok(())
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.dirs.contains(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if !st.dirs.contains(parent) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let template = st
            .templates
            .iter()
            .find(|(top, _)| path.starts_with(top))
            .map(|(_, files)| files.clone())
            .unwrap_or_default();
        for (name, value) in template {
            // New cgroups start empty: counters and cpuset lists are not inherited.
            let initial = match name.as_str() {
                "cgroup.procs" | "cpuset.cpus" | "cpuset.mems" | "cgroup.subtree_control" => {
                    String::new()
                }
                _ => value,
            };
            st.files.insert(path.join(name), initial);
        }
        st.dirs.insert(path.to_path_buf());
        st.ops.push(FsOp::Mkdir(path.to_path_buf()));
        Ok(())
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if !st.dirs.contains(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let has_children = st.dirs.iter().any(|d| d != path && d.starts_with(path));
        let has_procs = st
            .files
            .get(&path.join("cgroup.procs"))
            .is_some_and(|p| !p.trim().is_empty());
        if has_children || has_procs {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        st.dirs.remove(path);
        st.files.retain(|f, _| f.parent() != Some(path));
        st.ops.push(FsOp::Rmdir(path.to_path_buf()));
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.lock();
        st.dirs.contains(path) || st.files.contains_key(path)
    }

    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        if !st.dirs.contains(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(st
            .dirs
            .iter()
            .filter(|d| d.parent() == Some(path))
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
}

/// Check a caller's cgroup path and make it relative: no "..", no empty path.
pub(crate) fn clean_path(path: &str) -> Result<PathBuf, CgroupError> {
    let invalid = |reason: &str| CgroupError::InvalidPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(invalid("empty path (the root cgroup is never managed)"));
    }
    let mut out = PathBuf::new();
    for comp in Path::new(trimmed).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            _ => return Err(invalid("must not contain '..'")),
        }
    }
    Ok(out)
}

/// Create `base/rel` level by level. `before_child(parent)` runs before each level is
/// created or entered (v2 enables controllers there); `after(parent, child)` runs once
/// each level exists (v1 fills empty cpusets there), whether new or not.
pub(crate) fn mkdir_all(
    fs: &dyn CgroupFs,
    base: &Path,
    rel: &Path,
    mut before_child: impl FnMut(&Path) -> Result<(), CgroupError>,
    mut after: impl FnMut(&Path, &Path) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    // A shared parent (QoS or root cgroup) can be removed by the teardown of its last
    // pod between our check and our mkdir below it: start over from the top then.
    let mut attempts = 0;
    loop {
        match mkdir_all_once(fs, base, rel, &mut before_child, &mut after) {
            Err(CgroupError::CreateDir { source, .. })
                if source.kind() == io::ErrorKind::NotFound && attempts < 5 =>
            {
                attempts += 1;
            }
            r => return r,
        }
    }
}

fn mkdir_all_once(
    fs: &dyn CgroupFs,
    base: &Path,
    rel: &Path,
    before_child: &mut impl FnMut(&Path) -> Result<(), CgroupError>,
    after: &mut impl FnMut(&Path, &Path) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    let mut cur = base.to_path_buf();
    for comp in rel.components() {
        let parent = cur.clone();
        cur.push(comp);
        before_child(&parent)?;
        if !fs.exists(&cur) {
            match fs.mkdir(&cur) {
                Ok(()) => tracing::debug!(dir = %cur.display(), "created cgroup directory"),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(CgroupError::CreateDir {
                        path: cur.clone(),
                        source,
                    })
                }
            }
        }
        after(&parent, &cur)?;
    }
    Ok(())
}

/// `dir` and all its descendants, deepest first.
pub(crate) fn subtree_deepest_first(fs: &dyn CgroupFs, dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect_post_order(fs, dir, &mut out);
    out
}

fn collect_post_order(fs: &dyn CgroupFs, dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(children) = fs.list_dirs(dir) {
        for child in children {
            collect_post_order(fs, &dir.join(child), out);
        }
    }
    out.push(dir.to_path_buf());
}

/// PIDs listed in cgroup.procs of `dir` and every descendant.
pub(crate) fn subtree_pids(fs: &dyn CgroupFs, dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    if !fs.exists(dir) {
        return pids;
    }
    for d in subtree_deepest_first(fs, dir) {
        if let Ok(text) = fs.read(&d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    pids
}

/// How long `remove` keeps retrying rmdir while the kernel still sees tasks (exiting
/// processes linger briefly after SIGKILL).
const RMDIR_RETRIES: u32 = 10;
const RMDIR_BACKOFF: Duration = Duration::from_millis(20);

/// Remove `dirs` (the same cgroup in each hierarchy) and their descendants, deepest
/// first. Missing = Ok. EBUSY is retried with backoff across all of them, then
/// reported as `Busy` with the PIDs still inside.
pub(crate) fn remove_trees(
    fs: &dyn CgroupFs,
    dirs: &[PathBuf],
    cgroup: &str,
) -> Result<(), CgroupError> {
    let mut delay = RMDIR_BACKOFF;
    for attempt in 0..=RMDIR_RETRIES {
        let mut busy = false;
        for dir in dirs {
            busy |= remove_tree_once(fs, dir)?;
        }
        if !busy {
            return Ok(());
        }
        if attempt < RMDIR_RETRIES {
            tracing::debug!(cgroup = %cgroup, attempt, "cgroup busy, retrying rmdir");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }
    let mut pids: Vec<i32> = dirs.iter().flat_map(|d| subtree_pids(fs, d)).collect();
    pids.sort_unstable();
    pids.dedup();
    Err(CgroupError::Busy {
        path: cgroup.to_string(),
        pids,
    })
}

/// One deepest-first pass over `dir`; true when some level was busy.
fn remove_tree_once(fs: &dyn CgroupFs, dir: &Path) -> Result<bool, CgroupError> {
    if !fs.exists(dir) {
        return Ok(false);
    }
    for d in subtree_deepest_first(fs, dir) {
        match fs.rmdir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(true),
            Err(source) => return Err(CgroupError::RemoveDir { path: d, source }),
        }
    }
    Ok(false)
}

/// Write a control file; a missing file (controller or knob absent on this kernel)
/// is skipped with a debug log. Returns whether the value was written.
pub(crate) fn write_optional(
    fs: &dyn CgroupFs,
    file: &Path,
    value: &str,
) -> Result<bool, CgroupError> {
    match fs.write(file, value) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::debug!(file = %file.display(), "control file absent, skipping");
            Ok(false)
        }
        Err(source) => Err(CgroupError::WriteFile {
            path: file.to_path_buf(),
            value: value.to_string(),
            source,
        }),
    }
}

/// Read a control file; None when it does not exist.
pub(crate) fn read_optional(fs: &dyn CgroupFs, file: &Path) -> Result<Option<String>, CgroupError> {
    match fs.read(file) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::ReadFile {
            path: file.to_path_buf(),
            source,
        }),
    }
}

/// Value of `key` in a flat-keyed file ("key value" per line: memory.stat, cpu.stat,
/// memory.events, memory.oom_control).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A single-number file; "max" reads as None.
pub(crate) fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// rmdir `dirs` without recursing; true when none of them is left.
pub(crate) fn remove_dirs_if_empty(fs: &dyn CgroupFs, dirs: &[PathBuf]) -> bool {
    let mut gone = true;
    for dir in dirs {
        match fs.rmdir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => gone = false,
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_rejects_escapes_and_root() {
        assert_eq!(
            clean_path("/podrun/pod1").unwrap(),
            PathBuf::from("podrun/pod1")
        );
        assert!(clean_path("podrun/../etc").is_err());
        assert!(clean_path("/").is_err());
        assert!(clean_path("").is_err());
    }

    #[test]
    fn fake_rmdir_is_busy_with_members_and_children() {
        let fs = FakeFs::new();
        fs.add_hierarchy(
            "memory",
            &[("cgroup.procs", ""), ("memory.limit_in_bytes", "")],
        );
        fs.mkdir(Path::new("memory/a")).unwrap();
        fs.mkdir(Path::new("memory/a/b")).unwrap();
        let busy = fs.rmdir(Path::new("memory/a")).unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(libc::EBUSY));
        fs.write(Path::new("memory/a/b/cgroup.procs"), "42")
            .unwrap();
        assert_eq!(subtree_pids(&fs, Path::new("memory/a")), vec![42]);
        assert!(fs.rmdir(Path::new("memory/a/b")).is_err());
        fs.set("memory/a/b/cgroup.procs", "");
        remove_trees(&fs, &[PathBuf::from("memory/a")], "a").unwrap();
        assert!(!fs.has_dir("memory/a"));
        assert!(fs.get("memory/a/memory.limit_in_bytes").is_none());
    }

    #[test]
    fn remove_tree_reports_busy_with_pids() {
        let fs = FakeFs::new();
        fs.add_hierarchy("pids", &[("cgroup.procs", "")]);
        fs.mkdir(Path::new("pids/x")).unwrap();
        fs.set("pids/x/cgroup.procs", "7\n8\n");
        match remove_trees(&fs, &[PathBuf::from("pids/x")], "x") {
            Err(CgroupError::Busy { pids, .. }) => assert_eq!(pids, vec![7, 8]),
            other => panic!("expected Busy, got {other:?}"),
        }
    }

    #[test]
    fn keyed_values() {
        let text = "cache 10\nrss 20\ntotal_rss 30\n";
        assert_eq!(keyed_value(text, "rss"), Some(20));
        assert_eq!(keyed_value(text, "total_rss"), Some(30));
        assert_eq!(keyed_value(text, "nope"), None);
    }
}
