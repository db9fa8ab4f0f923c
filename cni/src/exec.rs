//! Executing CNI plugin binaries per the spec: locate the binary named by `type` on the
//! CNI path, run it with the `CNI_*` environment and the configuration on stdin, and
//! turn its stdout into a result or a [`CniError`]. Used by the runtime-side client
//! and by plugins that delegate IPAM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use crate::skel::Command;
use crate::spec::{code, CniError};

/// Where plugins are looked for when no path is given: the upstream location and
/// Debian's.
pub const DEFAULT_CNI_PATH: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];

/// Finds the executable for plugin `plugin_type` in `cni_path` (or the defaults when
/// empty). A type containing a path separator is refused: it must be a bare name.
pub fn find_plugin(plugin_type: &str, cni_path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty()
        || plugin_type.contains('/')
        || plugin_type == "."
        || plugin_type == ".."
    {
        return Err(CniError::invalid_config(format!(
            "invalid plugin type {plugin_type:?}"
        )));
    }
    let defaults: Vec<PathBuf> = DEFAULT_CNI_PATH.iter().map(PathBuf::from).collect();
    let dirs = if cni_path.is_empty() {
        &defaults
    } else {
        cni_path
    };
    for dir in dirs {
        let candidate = dir.join(plugin_type);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(CniError::new(
        code::INVALID_NETWORK_CONFIG,
        format!("failed to find plugin {plugin_type:?} in path {dirs:?}"),
    ))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The invocation environment of one plugin call.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: Vec<PathBuf>,
}

/// Runs `plugin` with `command`; returns stdout on success, the plugin's error
/// otherwise.
pub fn exec_plugin(
    plugin: &Path,
    command: Command,
    inv: &Invocation,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    let path = std::env::join_paths(&inv.path).unwrap_or_default();
    let spawn = || {
        Process::new(plugin)
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &inv.container_id)
            .env("CNI_NETNS", &inv.netns)
            .env("CNI_IFNAME", &inv.ifname)
            .env("CNI_ARGS", &inv.args)
            .env("CNI_PATH", &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    // ETXTBSY: the plugin file is open for writing somewhere, usually only for an instant
    // (a plugin being installed, or a descriptor inherited by a process that another
    // thread forked and that is about to exec). Retried a few times, as libcni does.
    let mut delay = std::time::Duration::from_millis(10);
    let mut attempt = spawn();
    for _ in 0..5 {
        match &attempt {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(delay);
                delay *= 2;
                attempt = spawn();
            }
            _ => break,
        }
    }
    let mut child = attempt.map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("failed to run plugin {}: {e}", plugin.display()),
        )
    })?;
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin may exit without reading stdin (VERSION); a broken pipe is fine.
        let _ = pipe.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("failed to wait for plugin {}: {e}", plugin.display()),
        )
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    match serde_json::from_slice::<CniError>(&out.stdout) {
        Ok(err) => Err(err),
        Err(_) => Err(CniError::internal(format!(
            "plugin {} failed ({}): {}{}",
            plugin.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn finds_plugins_and_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "fake", "true");
        std::fs::write(dir.path().join("notexec"), "").unwrap();
        let path = vec![PathBuf::from("/nonexistent"), dir.path().to_path_buf()];
        assert_eq!(find_plugin("fake", &path).unwrap(), dir.path().join("fake"));
        assert!(find_plugin("notexec", &path).is_err());
        assert!(find_plugin("../fake", &path).is_err());
    }

    #[test]
    fn a_plugin_held_open_for_writing_is_retried_then_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "writing", "true");
        // Open for writing for as long as the test runs: every exec sees ETXTBSY.
        let _writer = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        let e = exec_plugin(&p, Command::Add, &Invocation::default(), b"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("failed to run plugin") && e.contains("writing"),
            "{e}"
        );
        assert!(e.contains("busy"), "names the cause: {e}");
    }

    #[test]
    fn passes_environment_and_parses_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ok = script(
            dir.path(),
            "ok",
            r#"read line; echo "{\"cmd\":\"$CNI_COMMAND\",\"id\":\"$CNI_CONTAINERID\",\"in\":$line}""#,
        );
        let inv = Invocation {
            container_id: "abc".into(),
            ..Default::default()
        };
        let out = exec_plugin(&ok, Command::Add, &inv, b"{\"x\":1}\n").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["cmd"], "ADD");
        assert_eq!(v["id"], "abc");
        assert_eq!(v["in"]["x"], 1);
        let bad = script(
            dir.path(),
            "bad",
            r#"echo '{"code":11,"msg":"busy"}'; exit 1"#,
        );
        let err = exec_plugin(&bad, Command::Del, &inv, b"{}").unwrap_err();
        assert_eq!((err.code, err.msg.as_str()), (11, "busy"));
        let crash = script(dir.path(), "crash", "echo oops >&2; exit 2");
        assert_eq!(
            exec_plugin(&crash, Command::Del, &inv, b"{}")
                .unwrap_err()
                .code,
            code::INTERNAL
        );
    }
}
