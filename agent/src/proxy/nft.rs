//! Running nft: the privileged boundary of the proxy, a trait with the real `nft -f -`
//! behind it and a fake that records the scripts for unit tests.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::render::{Existing, TABLE};
use super::ProxyError;

/// What the proxy asks of nftables.
pub trait Nft: Send + Sync {
    /// Runs one script as one transaction: all of it or nothing.
    fn apply(&self, script: &str) -> Result<(), ProxyError>;
    /// The chains and sets of the proxy's table (none when it does not exist).
    fn existing(&self) -> Result<Existing, ProxyError>;
}

/// The nft binary, optionally behind a prefix (`nsenter --net=... --`).
#[derive(Debug, Clone)]
pub struct NftCommand {
    pub program: PathBuf,
    pub prefix: Vec<OsString>,
}

impl NftCommand {
    /// `nft` at `path`, or found on PATH and in the sbin directories.
    pub fn find(path: Option<PathBuf>) -> Result<NftCommand, ProxyError> {
        let program = match path {
            Some(p) => p,
            None => match podrun_cni::masq::Backend::detect() {
                Some(podrun_cni::masq::Backend::Nft(p)) => p,
                _ => return Err(ProxyError::NftMissing),
            },
        };
        Ok(NftCommand {
            program,
            prefix: Vec::new(),
        })
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, ProxyError> {
        let (program, pre) = match self.prefix.split_first() {
            Some((first, rest)) => (PathBuf::from(first), rest.to_vec()),
            None => (self.program.clone(), Vec::new()),
        };
        let mut cmd = Command::new(&program);
        cmd.args(&pre);
        if !self.prefix.is_empty() {
            cmd.arg(&self.program);
        }
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let spawn_err = |source| ProxyError::NftSpawn {
            program: self.program.display().to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A failed write shows as nft's own error below.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(ProxyError::Nft {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Nft for NftCommand {
    fn apply(&self, script: &str) -> Result<(), ProxyError> {
        self.run(&["-f", "-"], Some(script)).map(|_| ())
    }

    fn existing(&self) -> Result<Existing, ProxyError> {
        let mut out = Existing::default();
        // Listing the family's chains and sets, not the table, keeps rules and
        // elements (most of the text) out of it.
        for (what, key, into) in [
            ("chains", "chain", &mut out.chains),
            ("sets", "set", &mut out.sets),
        ] {
            let json = self.run(&["-j", "list", what, "ip"], None)?;
            into.extend(listed_names(&json, key).map_err(|e| ProxyError::Listing {
                what: what.to_owned(),
                source: e,
            })?);
        }
        Ok(out)
    }
}

/// The names of the objects of kind `key` (`chain`, `set`) of the proxy's table in a
/// `nft -j list ...` output.
pub fn listed_names(json: &str, key: &str) -> Result<Vec<String>, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get(key))
        .filter(|o| o["table"] == TABLE && o["family"] == "ip")
        .filter_map(|o| o["name"].as_str().map(str::to_owned))
        .collect())
}

/// Records scripts and applies nothing; answers listings with what it is given.
#[derive(Debug, Default)]
pub struct FakeNft {
    pub scripts: std::sync::Mutex<Vec<String>>,
    pub existing: std::sync::Mutex<Existing>,
    /// Make the next apply fail.
    pub fail: std::sync::atomic::AtomicBool,
}

impl Nft for FakeNft {
    fn apply(&self, script: &str) -> Result<(), ProxyError> {
        if self.fail.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(ProxyError::Nft {
                args: "-f -".into(),
                stderr: "injected failure".into(),
            });
        }
        self.scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(script.to_owned());
        Ok(())
    }

    fn existing(&self) -> Result<Existing, ProxyError> {
        Ok(self
            .existing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }
}
