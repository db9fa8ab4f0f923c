//! The runtime side of CNI, what libcni does for containerd and CRI-O: load a network
//! configuration from the configuration directories, run its plugin chain for ADD,
//! CHECK, DEL, GC and STATUS with `prevResult` threading and `runtimeConfig`
//! capabilities, and cache each attachment's result so DEL and CHECK get the right
//! `prevResult` even after a restart.
//!
//! ```text
//! ADD:   plugins[0] -> plugins[1] -> ...   (each gets the previous result)   -> cache
//! CHECK: plugins[0] -> plugins[1] -> ...   (each gets the cached result)
//! DEL:   ... -> plugins[1] -> plugins[0]   (each gets the cached result)     -> uncache
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use crate::exec::{exec_plugin, find_plugin, Invocation};
use crate::skel::Command;
use crate::spec::{CniError, CniResult, NetworkConfigList, Version, VALID_ATTACHMENTS_KEY};

pub use crate::spec::Attachment;

/// Where configurations are looked for by default.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Where results are cached by default (libcni's location).
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni/results";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no valid network configuration{} in {dirs:?}", name.as_ref().map(|n| format!(" named {n:?}")).unwrap_or_default())]
    NoConfig {
        dirs: Vec<PathBuf>,
        name: Option<String>,
    },
    #[error("failed to read network configuration {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin {plugin} {command} failed: {source}")]
    Plugin {
        plugin: String,
        command: &'static str,
        source: CniError,
    },
    #[error("invalid network configuration: {0}")]
    Config(CniError),
    #[error("plugin {plugin} returned an invalid result: {source}")]
    Result { plugin: String, source: CniError },
    #[error("failed to write result cache {path}: {source}")]
    CacheWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no cached result for container {container_id} interface {ifname}: CHECK needs a prior ADD"
    )]
    NotCached {
        container_id: String,
        ifname: String,
    },
}

/// Loading configurations from disk.
pub struct CniConfig;

impl CniConfig {
    /// The first valid `.conflist`, `.conf` or `.json` in lexical order across
    /// `conf_dirs` (or the one called `name`). Invalid files are skipped with a
    /// warning, as libcni does.
    pub fn load(
        conf_dirs: &[PathBuf],
        name: Option<&str>,
    ) -> Result<NetworkConfigList, ClientError> {
        for dir in conf_dirs {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conf" | "conflist" | "json")
                    ) && p.is_file()
                })
                .collect();
            files.sort();
            for file in files {
                let bytes = fs::read(&file).map_err(|source| ClientError::ReadConfig {
                    path: file.clone(),
                    source,
                })?;
                let parsed = if file.extension().and_then(|e| e.to_str()) == Some("conflist") {
                    NetworkConfigList::parse(&bytes)
                } else {
                    NetworkConfigList::from_single(&bytes)
                };
                match parsed {
                    Ok(list) if name.is_none_or(|n| n == list.name) => {
                        debug!(file = %file.display(), network = %list.name, "loaded network configuration");
                        return Ok(list);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(file = %file.display(), error = %e, "skipping invalid network configuration")
                    }
                }
            }
        }
        Err(ClientError::NoConfig {
            dirs: conf_dirs.to_vec(),
            name: name.map(String::from),
        })
    }
}

/// podrun's network when none is configured: bridge `podrun0` with 10.88.0.0/16,
/// egress masquerade, and hostPort mappings through podrun-portmap. Both plugins
/// speak 1.1.0, so GC and STATUS work on it.
pub fn default_conflist() -> NetworkConfigList {
    let value = json!({
        "cniVersion": "1.1.0",
        "name": "podrun",
        "plugins": [
            {
                "type": "podrun-bridge",
                "bridge": "podrun0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]]
                }
            },
            {
                "type": "podrun-portmap",
                "capabilities": {"portMappings": true}
            }
        ]
    });
    serde_json::from_value(value).expect("the default network configuration is valid")
}

/// The cached outcome of one ADD, like libcni's `cniCacheV1` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedAttachment {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    #[serde(rename = "ifName")]
    pub ifname: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(rename = "netns")]
    pub netns: String,
    #[serde(rename = "capabilityArgs", default)]
    pub capability_args: Value,
    pub config: NetworkConfigList,
    pub result: Value,
}

/// Runs one network's plugin chain.
pub struct Cni {
    pub network: NetworkConfigList,
    pub cni_path: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

impl Cni {
    pub fn new(network: NetworkConfigList, cni_path: Vec<PathBuf>, cache_dir: PathBuf) -> Cni {
        Cni {
            network,
            cni_path,
            cache_dir,
        }
    }

    fn version(&self) -> Result<String, ClientError> {
        self.network.version().map_err(ClientError::Config)
    }

    fn cache_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.cache_dir
            .join(format!("{}-{}-{}", self.network.name, container_id, ifname))
    }

    /// The cached attachment, if ADD succeeded earlier.
    pub fn cached(&self, container_id: &str, ifname: &str) -> Option<CachedAttachment> {
        let bytes = fs::read(self.cache_path(container_id, ifname)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Builds one plugin's stdin: its own keys plus the list's name and version, the
    /// previous result and the capabilities it declared.
    fn plugin_conf(
        &self,
        plugin: &Map<String, Value>,
        version: &str,
        prev_result: Option<&Value>,
        capability_args: &Value,
        extra: Option<(&str, Value)>,
    ) -> Vec<u8> {
        let mut conf = plugin.clone();
        conf.insert("name".into(), Value::String(self.network.name.clone()));
        conf.insert("cniVersion".into(), Value::String(version.to_string()));
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        let declared: Vec<String> = plugin
            .get("capabilities")
            .and_then(Value::as_object)
            .map(|c| {
                c.iter()
                    .filter(|(_, v)| v.as_bool() == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut runtime = Map::new();
        if let Some(args) = capability_args.as_object() {
            for (k, v) in args {
                if declared.contains(k) {
                    runtime.insert(k.clone(), v.clone());
                }
            }
        }
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        if let Some((k, v)) = extra {
            conf.insert(k.into(), v);
        }
        serde_json::to_vec(&conf).unwrap_or_default()
    }

    fn run_plugin(
        &self,
        plugin: &Map<String, Value>,
        command: Command,
        inv: &Invocation,
        stdin: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let plugin_type = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let wrap = |source| ClientError::Plugin {
            plugin: plugin_type.clone(),
            command: command.as_str(),
            source,
        };
        let path = find_plugin(&plugin_type, &self.cni_path).map_err(wrap)?;
        exec_plugin(&path, command, inv, stdin).map_err(wrap)
    }

    fn invocation(&self, container_id: &str, netns: &str, ifname: &str) -> Invocation {
        Invocation {
            container_id: container_id.to_string(),
            netns: netns.to_string(),
            ifname: ifname.to_string(),
            args: String::new(),
            path: self.cni_path.clone(),
        }
    }

    /// Attaches the container. On failure whatever part of the chain ran is torn down
    /// again before the error is returned, so a failed ADD leaves nothing behind.
    pub fn add(
        &self,
        container_id: &str,
        netns_path: &str,
        ifname: &str,
        capability_args: Value,
    ) -> Result<CniResult, ClientError> {
        let version = self.version()?;
        let inv = self.invocation(container_id, netns_path, ifname);
        let mut prev: Option<Value> = None;
        for plugin in &self.network.plugins {
            let stdin = self.plugin_conf(plugin, &version, prev.as_ref(), &capability_args, None);
            let out = match self.run_plugin(plugin, Command::Add, &inv, &stdin) {
                Ok(out) => out,
                Err(e) => {
                    self.del_chain(&inv, &version, prev.as_ref(), &capability_args);
                    return Err(e);
                }
            };
            let plugin_type = plugin
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let value: Value = match serde_json::from_slice(&out) {
                Ok(v) => v,
                Err(e) => {
                    self.del_chain(&inv, &version, prev.as_ref(), &capability_args);
                    return Err(ClientError::Result {
                        plugin: plugin_type.to_string(),
                        source: CniError::new(crate::spec::code::DECODE_FAILURE, e.to_string()),
                    });
                }
            };
            prev = Some(value);
        }
        let prev = prev.unwrap_or(Value::Null);
        let result = CniResult::from_value(&prev).map_err(|source| ClientError::Result {
            plugin: self.network.name.clone(),
            source,
        })?;
        let cached = CachedAttachment {
            kind: "cniCacheV1".into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
            network_name: self.network.name.clone(),
            netns: netns_path.into(),
            capability_args,
            config: self.network.clone(),
            result: prev,
        };
        let path = self.cache_path(container_id, ifname);
        write_atomic(
            &path,
            &serde_json::to_vec_pretty(&cached).unwrap_or_default(),
        )
        .map_err(|source| ClientError::CacheWrite { path, source })?;
        Ok(result)
    }

    /// Runs DEL through the chain in reverse, ignoring errors (used for rollback).
    fn del_chain(
        &self,
        inv: &Invocation,
        version: &str,
        prev: Option<&Value>,
        capability_args: &Value,
    ) {
        for plugin in self.network.plugins.iter().rev() {
            let stdin = self.plugin_conf(plugin, version, prev, capability_args, None);
            if let Err(e) = self.run_plugin(plugin, Command::Del, inv, &stdin) {
                warn!(container = %inv.container_id, error = %e, "rollback DEL failed");
            }
        }
    }

    /// Detaches the container. Idempotent: without a cached result the chain still
    /// runs (plugins tolerate missing state), and the cache entry goes last.
    pub fn del(
        &self,
        container_id: &str,
        netns_path: &str,
        ifname: &str,
        capability_args: Value,
    ) -> Result<(), ClientError> {
        let cached = self.cached(container_id, ifname);
        // The configuration the attachment was made with wins: the file may have
        // changed since ADD.
        let network = cached
            .as_ref()
            .map(|c| c.config.clone())
            .unwrap_or_else(|| self.network.clone());
        let chain = Cni {
            network,
            cni_path: self.cni_path.clone(),
            cache_dir: self.cache_dir.clone(),
        };
        let version = chain.version()?;
        let prev = cached
            .as_ref()
            .filter(|_| Version::parse(&version).is_some_and(|v| v >= Version(0, 4, 0)))
            .map(|c| c.result.clone());
        let caps = if capability_args.is_null() {
            cached
                .as_ref()
                .map(|c| c.capability_args.clone())
                .unwrap_or(Value::Null)
        } else {
            capability_args
        };
        let inv = chain.invocation(container_id, netns_path, ifname);
        for plugin in chain.network.plugins.iter().rev() {
            let stdin = chain.plugin_conf(plugin, &version, prev.as_ref(), &caps, None);
            chain.run_plugin(plugin, Command::Del, &inv, &stdin)?;
        }
        match fs::remove_file(self.cache_path(container_id, ifname)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                warn!(container = %container_id, error = %e, "failed to remove cached result")
            }
            _ => {}
        }
        Ok(())
    }

    /// Verifies the attachment against its cached result.
    pub fn check(
        &self,
        container_id: &str,
        netns_path: &str,
        ifname: &str,
        capability_args: Value,
    ) -> Result<(), ClientError> {
        if self.network.disable_check {
            return Ok(());
        }
        let version = self.version()?;
        if Version::parse(&version).is_some_and(|v| v < Version(0, 4, 0)) {
            return Ok(());
        }
        let cached = self
            .cached(container_id, ifname)
            .ok_or_else(|| ClientError::NotCached {
                container_id: container_id.into(),
                ifname: ifname.into(),
            })?;
        let inv = self.invocation(container_id, netns_path, ifname);
        for plugin in &self.network.plugins {
            let stdin = self.plugin_conf(
                plugin,
                &version,
                Some(&cached.result),
                &capability_args,
                None,
            );
            self.run_plugin(plugin, Command::Check, &inv, &stdin)?;
        }
        Ok(())
    }

    /// Releases everything of this network not belonging to `valid`; also drops their
    /// cache entries. Networks below spec 1.1.0 have no GC and only the cache is pruned.
    pub fn gc(&self, valid: &[Attachment]) -> Result<(), ClientError> {
        let version = self.version()?;
        let prefix = format!("{}-", self.network.name);
        if let Ok(entries) = fs::read_dir(&self.cache_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with(&prefix) {
                    continue;
                }
                let Ok(cached) = serde_json::from_slice::<CachedAttachment>(
                    &fs::read(entry.path()).unwrap_or_default(),
                ) else {
                    continue;
                };
                if cached.network_name == self.network.name
                    && !valid
                        .iter()
                        .any(|a| a.container_id == cached.container_id && a.ifname == cached.ifname)
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        if self.network.disable_gc || Version::parse(&version).is_some_and(|v| v < Version(1, 1, 0))
        {
            return Ok(());
        }
        let inv = Invocation {
            path: self.cni_path.clone(),
            ..Default::default()
        };
        let valid_value = serde_json::to_value(valid).unwrap_or(Value::Array(vec![]));
        for plugin in &self.network.plugins {
            let stdin = self.plugin_conf(
                plugin,
                &version,
                None,
                &Value::Null,
                Some((VALID_ATTACHMENTS_KEY, valid_value.clone())),
            );
            self.run_plugin(plugin, Command::Gc, &inv, &stdin)?;
        }
        Ok(())
    }

    /// Asks every plugin whether it is ready (spec 1.1.0; older networks are assumed
    /// ready).
    pub fn status(&self) -> Result<(), ClientError> {
        let version = self.version()?;
        if Version::parse(&version).is_some_and(|v| v < Version(1, 1, 0)) {
            return Ok(());
        }
        let inv = Invocation {
            path: self.cni_path.clone(),
            ..Default::default()
        };
        for plugin in &self.network.plugins {
            let stdin = self.plugin_conf(plugin, &version, None, &Value::Null, None);
            self.run_plugin(plugin, Command::Status, &inv, &stdin)?;
        }
        Ok(())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn load_picks_first_valid_in_lexical_order_or_by_name() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "05-broken.conflist", "{nope");
        write(
            dir.path(),
            "10-b.conflist",
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            dir.path(),
            "20-a.conf",
            r#"{"cniVersion":"1.0.0","name":"a","type":"bridge"}"#,
        );
        write(
            dir.path(),
            "30-c.txt",
            r#"{"cniVersion":"1.0.0","name":"c","type":"bridge"}"#,
        );
        let dirs = vec![PathBuf::from("/nonexistent"), dir.path().to_path_buf()];
        assert_eq!(CniConfig::load(&dirs, None).unwrap().name, "b");
        assert_eq!(
            CniConfig::load(&dirs, Some("a")).unwrap().plugins[0]["type"],
            "bridge"
        );
        assert!(matches!(
            CniConfig::load(&dirs, Some("c")),
            Err(ClientError::NoConfig { .. })
        ));
    }

    #[test]
    fn default_conflist_is_valid() {
        let list = default_conflist();
        list.validate().unwrap();
        assert_eq!(list.plugins[0]["bridge"], "podrun0");
        assert_eq!(list.plugins[1]["type"], "podrun-portmap");
        assert_eq!(list.version().unwrap(), "1.1.0");
    }

    /// A fake plugin that records its stdin and answers with a result that names it.
    fn fake_plugin(dir: &Path, name: &str) {
        let log = dir.join(format!("{name}.log"));
        let script = format!(
            "#!/bin/sh\ncat > {log}.$CNI_COMMAND\necho \"$CNI_COMMAND\" >> {order}\n\
             [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"interfaces\":[{{\"name\":\"{name}\"}}]}}'\nexit 0\n",
            log = log.display(),
            order = dir.join("order").display()
        );
        let p = dir.join(name);
        fs::write(&p, script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn chain_threads_prev_result_capabilities_and_cache() {
        let bin = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        fake_plugin(bin.path(), "first");
        fake_plugin(bin.path(), "second");
        let list: NetworkConfigList = serde_json::from_value(json!({
            "cniVersion": "1.0.0", "name": "chain",
            "plugins": [{"type": "first", "key": 1}, {"type": "second", "capabilities": {"portMappings": true}}]
        }))
        .unwrap();
        let cni = Cni::new(
            list,
            vec![bin.path().to_path_buf()],
            cache.path().to_path_buf(),
        );
        let caps = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], "bandwidth": {}});
        let result = cni.add("ctr", "/run/netns/x", "eth0", caps).unwrap();
        assert_eq!(result.interfaces[0].name, "second");
        let read = |name: &str| -> Value {
            serde_json::from_slice(&fs::read(bin.path().join(name)).unwrap()).unwrap()
        };
        let first = read("first.log.ADD");
        assert_eq!(
            (
                first["name"].clone(),
                first["cniVersion"].clone(),
                first["key"].clone()
            ),
            (json!("chain"), json!("1.0.0"), json!(1))
        );
        assert!(first.get("prevResult").is_none() && first.get("runtimeConfig").is_none());
        let second = read("second.log.ADD");
        assert_eq!(second["prevResult"]["interfaces"][0]["name"], "first");
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(second["runtimeConfig"].get("bandwidth").is_none());
        assert!(cni.cached("ctr", "eth0").is_some());

        cni.check("ctr", "/run/netns/x", "eth0", Value::Null)
            .unwrap();
        assert_eq!(
            read("first.log.CHECK")["prevResult"]["interfaces"][0]["name"],
            "second"
        );

        cni.del("ctr", "/run/netns/x", "eth0", Value::Null).unwrap();
        assert_eq!(
            read("first.log.DEL")["prevResult"]["interfaces"][0]["name"],
            "second"
        );
        // Capabilities from ADD are reused for DEL.
        assert_eq!(
            read("second.log.DEL")["runtimeConfig"]["portMappings"][0]["containerPort"],
            80
        );
        assert!(cni.cached("ctr", "eth0").is_none());
        let order = fs::read_to_string(bin.path().join("order")).unwrap();
        assert_eq!(
            order.lines().collect::<Vec<_>>(),
            ["ADD", "ADD", "CHECK", "CHECK", "DEL", "DEL"]
        );
        // DEL again: no cache, still fine.
        cni.del("ctr", "/run/netns/x", "eth0", Value::Null).unwrap();
        assert!(matches!(
            cni.check("ctr", "", "eth0", Value::Null),
            Err(ClientError::NotCached { .. })
        ));
    }

    #[test]
    fn failed_add_rolls_back_the_chain() {
        let bin = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        fake_plugin(bin.path(), "first");
        let failing = bin.path().join("failing");
        fs::write(
            &failing,
            "#!/bin/sh\necho '{\"code\":11,\"msg\":\"later\"}'\nexit 1\n",
        )
        .unwrap();
        fs::set_permissions(&failing, fs::Permissions::from_mode(0o755)).unwrap();
        let list: NetworkConfigList = serde_json::from_value(json!({
            "cniVersion": "1.0.0", "name": "chain", "plugins": [{"type": "first"}, {"type": "failing"}]
        }))
        .unwrap();
        let cni = Cni::new(
            list,
            vec![bin.path().to_path_buf()],
            cache.path().to_path_buf(),
        );
        let err = cni.add("ctr", "/x", "eth0", Value::Null).unwrap_err();
        assert!(
            matches!(&err, ClientError::Plugin { source, .. } if source.code == 11),
            "{err}"
        );
        assert!(bin.path().join("first.log.DEL").exists());
        assert!(cni.cached("ctr", "eth0").is_none());
    }
}
