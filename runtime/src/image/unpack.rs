//! Layer unpacking: turns one (gzip, zstd or plain) layer tar into a directory that can be
//! used as an overlayfs lowerdir on its own, the way containerd's overlay snapshotter lays
//! layers out.
//!
//! Safety is the point of this module. A layer is untrusted input, so no entry may create or
//! write anything outside `dest`:
//! - absolute paths are taken relative to `dest`; a `..` that would climb above `dest` fails
//!   the whole layer, since no honest image builder produces one;
//! - parent directories are resolved one component at a time with `symlink_metadata`, and a
//!   symlink met on the way is followed as if `dest` were `/` (chroot-style), so a link to
//!   `/etc` or to `../../..` lands inside `dest`;
//! - the last component is never followed: an existing entry there is replaced;
//! - hard link targets are resolved the same way and must already exist inside `dest`
//!   (link(2) does not follow a symlink target, so linking to a symlink is harmless).
//!
//! The walk is path based rather than `openat` based because `dest` is a fresh private
//! directory that only this unpack writes to, so nothing can swap components under it.
//!
//! Whiteouts are converted to the overlayfs format: `.wh.<name>` becomes a 0:0 character
//! device `<name>`, and `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.
//! Those, device nodes, ownership and xattrs are privileged, so they go through
//! [`LayerOps`], with [`LinuxLayerOps`] for the real thing and [`RecordingLayerOps`] for tests.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tar::EntryType;

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const MAX_SYMLINKS: usize = 40;
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// What kind of special file [`LayerOps::mknod`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// The privileged operations of unpacking.
pub trait LayerOps: Send + Sync {
    /// Create a device node or fifo with exactly `mode` (permission bits).
    fn mknod(
        &self,
        path: &Path,
        kind: NodeKind,
        mode: u32,
        major: u64,
        minor: u64,
    ) -> io::Result<()>;
    /// Whether ownership from the tar should be applied (only root may give files away).
    fn chown_enabled(&self) -> bool;
    /// chown without following a symlink at `path`.
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// setxattr without following a symlink at `path`.
    fn lsetxattr(&self, path: &Path, name: &str, value: &[u8]) -> io::Result<()>;
}

/// The real privileged operations.
#[derive(Debug, Clone, Copy)]
pub struct LinuxLayerOps {
    chown: bool,
}

impl LinuxLayerOps {
    pub fn new() -> Self {
        LinuxLayerOps {
            chown: nix::unistd::geteuid().is_root(),
        }
    }
}

impl Default for LinuxLayerOps {
    fn default() -> Self {
        Self::new()
    }
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

impl LayerOps for LinuxLayerOps {
    fn mknod(
        &self,
        path: &Path,
        kind: NodeKind,
        mode: u32,
        major: u64,
        minor: u64,
    ) -> io::Result<()> {
        let kind_bits = match kind {
            NodeKind::Char => libc::S_IFCHR,
            NodeKind::Block => libc::S_IFBLK,
            NodeKind::Fifo => libc::S_IFIFO,
        };
        let c = cpath(path)?;
        let dev = libc::makedev(major as u32, minor as u32);
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::mknod(c.as_ptr(), kind_bits | (mode & 0o7777), dev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // mknod is filtered by the umask; the node must carry the layer's exact mode.
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
    }
    fn chown_enabled(&self) -> bool {
        self.chown
    }
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }
    fn lsetxattr(&self, path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        let c = cpath(path)?;
        let n = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name has NUL"))?;
        // SAFETY: pointers are valid for the given lengths for the duration of the call.
        let rc = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// One call recorded by [`RecordingLayerOps`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerOp {
    Mknod {
        path: PathBuf,
        kind: NodeKind,
        mode: u32,
        major: u64,
        minor: u64,
    },
    Lchown {
        path: PathBuf,
        uid: u32,
        gid: u32,
    },
    SetXattr {
        path: PathBuf,
        name: String,
        value: Vec<u8>,
    },
}

/// A fake that records every privileged call. `mknod` leaves an empty regular file in the
/// node's place so later entries and tests see that something exists there.
#[derive(Debug, Default)]
pub struct RecordingLayerOps {
    pub calls: Mutex<Vec<LayerOp>>,
}

impl RecordingLayerOps {
    pub fn calls(&self) -> Vec<LayerOp> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn record(&self, op: LayerOp) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(op);
    }
}

impl LayerOps for RecordingLayerOps {
    fn mknod(
        &self,
        path: &Path,
        kind: NodeKind,
        mode: u32,
        major: u64,
        minor: u64,
    ) -> io::Result<()> {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        self.record(LayerOp::Mknod {
            path: path.to_path_buf(),
            kind,
            mode,
            major,
            minor,
        });
        Ok(())
    }
    fn chown_enabled(&self) -> bool {
        true
    }
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.record(LayerOp::Lchown {
            path: path.to_path_buf(),
            uid,
            gid,
        });
        Ok(())
    }
    fn lsetxattr(&self, path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        self.record(LayerOp::SetXattr {
            path: path.to_path_buf(),
            name: name.to_string(),
            value: value.to_vec(),
        });
        Ok(())
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// `sha256:<hex>` of the uncompressed tar stream: the layer's diff id.
    pub diff_id: String,
    pub uncompressed_size: u64,
    pub entries: u64,
    pub whiteouts: u64,
    /// Entries skipped because they cannot be created here (device nodes without privilege).
    pub skipped: u64,
}

/// The compression of a layer stream, told by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(magic: &[u8]) -> Self {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wrap `reader` in the decompressor its first bytes call for.
pub fn decompress<'a>(mut reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match reader.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let stream = head.chain(reader);
    Ok(match Compression::detect(&magic[..n]) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(stream)?),
        Compression::None => Box::new(stream),
    })
}

/// Hashes and counts what passes through, to compute the diff id while unpacking.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Unpack a layer into `dest` (which must exist) with the real privileged operations.
/// Without root, device nodes are skipped but a whiteout fails the unpack: silently dropping
/// it would bring deleted files back in the container.
pub fn unpack_layer(reader: impl Read, dest: &Path) -> Result<UnpackStats, ImageError> {
    unpack_layer_with(reader, dest, &LinuxLayerOps::new())
}

/// Unpack a layer into `dest` (which must exist), doing privileged work through `ops`.
pub fn unpack_layer_with(
    reader: impl Read,
    dest: &Path,
    ops: &dyn LayerOps,
) -> Result<UnpackStats, ImageError> {
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { op, path, source }
    };
    let stream = decompress(reader).map_err(io_err("detect layer compression", dest))?;
    let mut hashing = HashingReader {
        inner: stream,
        hasher: Sha256::new(),
        count: 0,
    };
    let mut unpacker = Unpacker {
        dest,
        ops,
        stats: UnpackStats::default(),
        dirs: Vec::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive.entries().map_err(io_err("read layer tar", dest))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read layer tar entry", dest))?;
            unpacker.entry(entry)?;
        }
    }
    // The diff id covers the whole stream, including the end-of-archive blocks and padding
    // the tar reader stops before.
    io::copy(&mut hashing, &mut io::sink()).map_err(io_err("read layer tar", dest))?;
    unpacker.finish_dirs()?;
    let mut stats = unpacker.stats;
    stats.diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    stats.uncompressed_size = hashing.count;
    Ok(stats)
}

/// Directory metadata applied after all entries, deepest first: a read-only directory must
/// stay writable while its children are created, and creating children changes its mtime.
struct DeferredDir {
    path: PathBuf,
    depth: usize,
    mode: u32,
    mtime: u64,
}

struct Unpacker<'a> {
    dest: &'a Path,
    ops: &'a dyn LayerOps,
    stats: UnpackStats,
    dirs: Vec<DeferredDir>,
}

fn unsafe_entry(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::UnsafeEntry {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Lexically clean an archive path into components below the root: `/` and `.` are dropped,
/// and a `..` that would leave the root is a breakout attempt.
fn clean_components(path: &Path) -> Result<Vec<OsString>, ImageError> {
    let mut out: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err(unsafe_entry(path, "path climbs out of the layer root"));
                }
            }
            Component::Normal(n) => out.push(n.to_os_string()),
        }
    }
    Ok(out)
}

impl Unpacker<'_> {
    fn io(&self, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.to_path_buf();
        move |source| ImageError::Io { op, path, source }
    }

    /// Resolve `components` (relative to dest) to a real directory inside dest, following
    /// symlinks as if dest were the root. With `create`, missing directories are made.
    fn resolve_dir(&self, components: &[OsString], create: bool) -> Result<PathBuf, ImageError> {
        let mut queue: VecDeque<OsString> = components.iter().cloned().collect();
        let mut cur: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(name) = queue.pop_front() {
            if name == ".." {
                cur.pop();
                continue;
            }
            if name == "." || name.is_empty() {
                continue;
            }
            let mut p = self.dest.to_path_buf();
            p.extend(&cur);
            p.push(&name);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => cur.push(name),
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(unsafe_entry(&p, "too many levels of symbolic links"));
                    }
                    let target = fs::read_link(&p).map_err(self.io("read symlink", &p))?;
                    if target.is_absolute() {
                        cur.clear();
                    }
                    let mut front: Vec<OsString> = target
                        .components()
                        .filter_map(|c| match c {
                            Component::Normal(n) => Some(n.to_os_string()),
                            Component::ParentDir => Some(OsString::from("..")),
                            _ => None,
                        })
                        .collect();
                    front.extend(queue.drain(..));
                    queue = front.into();
                }
                Ok(_) => return Err(unsafe_entry(&p, "a parent component is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&p).map_err(self.io("create parent directory", &p))?;
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                        .map_err(self.io("chmod parent directory", &p))?;
                    cur.push(name);
                }
                Err(e) => return Err(self.io("resolve parent directory", &p)(e)),
            }
        }
        let mut p = self.dest.to_path_buf();
        p.extend(&cur);
        Ok(p)
    }

    /// Remove whatever is at `path` (without following it), unless it is a directory and
    /// `keep_dir` is set.
    fn clear_path(&self, path: &Path, keep_dir: bool) -> Result<bool, ImageError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                remove_tree(path).map_err(self.io("remove existing directory", path))?;
            }
            Ok(_) => fs::remove_file(path).map_err(self.io("remove existing entry", path))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("stat existing entry", path)(e)),
        }
        Ok(false)
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw_path = entry
            .path()
            .map_err(self.io("decode entry path", self.dest))?
            .into_owned();
        let components = clean_components(&raw_path)?;
        self.stats.entries += 1;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0);

        let Some((name, parent_components)) = components.split_last() else {
            // The layer root itself ("./"): only its metadata applies.
            if kind.is_dir() {
                self.apply_owner(self.dest, uid, gid)?;
                self.dirs.push(DeferredDir {
                    path: self.dest.to_path_buf(),
                    depth: 0,
                    mode,
                    mtime,
                });
            }
            return Ok(());
        };
        let name_str = name.to_string_lossy();

        if name_str.starts_with(WHITEOUT_PREFIX) {
            let parent = self.resolve_dir(parent_components, true)?;
            self.stats.whiteouts += 1;
            if name_str == WHITEOUT_OPAQUE {
                tracing::debug!(dir = %parent.display(), "opaque whiteout");
                return self
                    .ops
                    .lsetxattr(&parent, OVERLAY_OPAQUE_XATTR, b"y")
                    .map_err(self.io("mark directory opaque", &parent));
            }
            if name_str.starts_with(WHITEOUT_META_PREFIX) {
                // Other aufs metadata (.wh..wh.plnk, .wh..wh.aufs) means nothing to overlayfs.
                return Ok(());
            }
            let hidden = &name.as_bytes()[WHITEOUT_PREFIX.len()..];
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(unsafe_entry(&raw_path, "malformed whiteout name"));
            }
            let target = parent.join(OsStr::from_bytes(hidden));
            self.clear_path(&target, false)?;
            return self
                .ops
                .mknod(&target, NodeKind::Char, 0, 0, 0)
                .map_err(self.io("create whiteout device", &target));
        }

        let parent = self.resolve_dir(parent_components, true)?;
        let path = parent.join(name);

        match kind {
            EntryType::Directory => {
                if !self.clear_path(&path, true)? {
                    fs::create_dir(&path).map_err(self.io("create directory", &path))?;
                }
                // Owner-writable until finish_dirs applies the real mode.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                    .map_err(self.io("chmod directory", &path))?;
                self.apply_owner(&path, uid, gid)?;
                self.apply_xattrs(&mut entry, &path)?;
                self.dirs.push(DeferredDir {
                    depth: components.len(),
                    path,
                    mode,
                    mtime,
                });
                return Ok(());
            }
            EntryType::Regular | EntryType::Continuous => {
                self.clear_path(&path, false)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&path)
                    .map_err(self.io("create file", &path))?;
                io::copy(&mut entry, &mut file).map_err(self.io("write file", &path))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(self.io("decode symlink target", &path))?
                    .ok_or_else(|| unsafe_entry(&raw_path, "symlink without a target"))?
                    .into_owned();
                self.clear_path(&path, false)?;
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(self.io("create symlink", &path))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(self.io("decode hard link target", &path))?
                    .ok_or_else(|| unsafe_entry(&raw_path, "hard link without a target"))?
                    .into_owned();
                let target_components = clean_components(&target)?;
                let Some((tname, tparent)) = target_components.split_last() else {
                    return Err(unsafe_entry(&raw_path, "hard link to the layer root"));
                };
                let tpath = self.resolve_dir(tparent, false)?.join(tname);
                match fs::symlink_metadata(&tpath) {
                    Ok(m) if m.is_dir() => {
                        return Err(unsafe_entry(&raw_path, "hard link to a directory"))
                    }
                    Ok(_) => {}
                    Err(e) => return Err(self.io("find hard link target", &tpath)(e)),
                }
                if tpath == path {
                    return Ok(());
                }
                self.clear_path(&path, false)?;
                // link(2) never follows a symlink target, so this links the entry itself.
                fs::hard_link(&tpath, &path).map_err(self.io("create hard link", &path))?;
                // A hard link shares the target's inode, metadata included.
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let node = match kind {
                    EntryType::Char => NodeKind::Char,
                    EntryType::Block => NodeKind::Block,
                    _ => NodeKind::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
                let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
                self.clear_path(&path, false)?;
                match self.ops.mknod(&path, node, mode, major, minor) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        tracing::debug!(path = %path.display(), ?node, "skipping device node: not permitted");
                        self.stats.skipped += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(self.io("create device node", &path)(e)),
                }
            }
            other => {
                tracing::debug!(path = %raw_path.display(), kind = ?other, "skipping unsupported tar entry");
                self.stats.skipped += 1;
                return Ok(());
            }
        }

        // Owner first: chown clears setuid/setgid bits, so the mode goes on after it.
        self.apply_owner(&path, uid, gid)?;
        if kind != EntryType::Symlink {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(self.io("chmod", &path))?;
        }
        self.apply_xattrs(&mut entry, &path)?;
        set_mtime(&path, mtime).map_err(self.io("set mtime", &path))?;
        Ok(())
    }

    fn apply_owner(&self, path: &Path, uid: u32, gid: u32) -> Result<(), ImageError> {
        if self.ops.chown_enabled() {
            self.ops
                .lchown(path, uid, gid)
                .map_err(self.io("chown", path))?;
        }
        Ok(())
    }

    /// Extended attributes are best effort: filesystems and privilege vary, and a missing
    /// xattr (say, a file capability) degrades the image rather than breaking it.
    fn apply_xattrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
    ) -> Result<(), ImageError> {
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return Ok(());
        };
        for ext in exts.flatten() {
            let Ok(key) = ext.key() else { continue };
            let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) else {
                continue;
            };
            if let Err(e) = self.ops.lsetxattr(path, name, ext.value_bytes()) {
                tracing::warn!(path = %path.display(), xattr = name, error = %e, "could not set xattr");
            }
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), ImageError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        // Stable sort keeps the last entry for a directory after earlier ones of the same depth.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.depth));
        for d in &dirs {
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode))
                .map_err(self.io("chmod directory", &d.path))?;
            set_mtime(&d.path, d.mtime).map_err(self.io("set directory mtime", &d.path))?;
        }
        Ok(())
    }
}

/// Set atime and mtime of `path` without following a symlink.
fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let c = cpath(path)?;
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: c is a valid path and times points at two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Remove a tree that may hold read-only directories: without root, a directory without
/// write permission cannot have its entries removed, so each is made writable first.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    make_dirs_writable(path)?;
    fs::remove_dir_all(path)
}

fn make_dirs_writable(path: &Path) -> io::Result<()> {
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    for e in fs::read_dir(path)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            make_dirs_writable(&e.path())?;
        }
    }
    Ok(())
}
