//! The CNI specification's data types: network configurations (single plugin and
//! lists), results, errors with their well-known codes, and version negotiation.
//!
//! The JSON shapes follow the CNI spec 1.1.0; 0.4.0 and 1.0.0 documents are accepted and
//! results are written back in the version the configuration asked for (0.x results
//! carry the per-IP `version` field that 1.0 dropped).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The spec version podrun's plugins and client speak natively.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Every version a podrun plugin accepts in a configuration, oldest first, as
/// reported by VERSION.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Well-known error codes from the spec's "Error" section. Codes 100+ are plugin
/// specific; 999 is what the reference plugins use for an otherwise unclassified error.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    pub const INTERNAL: u32 = 999;
}

/// The error object a plugin prints on stdout when it fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            cni_version: String::new(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_NETWORK_CONFIG, msg)
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, msg)
    }
}

/// A parsed `major.minor.patch` version, enough for the spec's comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().unwrap_or("0").parse().ok()?;
        let patch = parts.next().unwrap_or("0").parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Version(major, minor, patch))
    }
}

/// Checks that `version` is one podrun's plugins support, returning code 1 otherwise.
/// An empty version means 0.1.0 in the spec, which is too old for the result format.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        return Ok(());
    }
    Err(
        CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(
            format!("config is {version:?}, plugin supports {SUPPORTED_VERSIONS:?}"),
        ),
    )
}

/// Picks the version a conflist runs at: the highest entry of `cniVersions` that is
/// supported, else `cniVersion` (spec 1.1.0 "cniVersions").
pub fn negotiate_list_version(
    cni_version: &str,
    cni_versions: &[String],
) -> Result<String, CniError> {
    let best = cni_versions
        .iter()
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .max_by_key(|v| Version::parse(v));
    let chosen = best.cloned().unwrap_or_else(|| cni_version.to_string());
    check_version(&chosen)?;
    Ok(chosen)
}

/// The VERSION command's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    pub fn podrun() -> Self {
        VersionInfo {
            cni_version: CURRENT_VERSION.to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// DNS settings, in configurations and results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// One interface a plugin created or configured. `sandbox` is the netns path for
/// interfaces inside the container and absent for host-side ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

/// One assigned address; `interface` indexes into the result's `interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route, in IPAM configurations and results. `gw` absent means "via the default
/// gateway of the address family" for IPAM configs and "on-link" in results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// The success result of ADD (and of an IPAM plugin).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// Parses a result of any supported version (0.x `ips[].version` is ignored).
    pub fn from_value(value: &Value) -> Result<CniResult, CniError> {
        serde_json::from_value(value.clone()).map_err(|e| {
            CniError::new(code::DECODE_FAILURE, "failed to decode result")
                .with_details(e.to_string())
        })
    }

    /// Renders the result in `version`'s shape: 0.3/0.4 results need `version` on
    /// each IP, 1.x results must not have it.
    pub fn to_value(&self, version: &str) -> Value {
        let mut result = self.clone();
        result.cni_version = version.to_string();
        let mut value = serde_json::to_value(&result).unwrap_or(Value::Null);
        if Version::parse(version).is_some_and(|v| v < Version(1, 0, 0)) {
            if let Some(ips) = value.get_mut("ips").and_then(Value::as_array_mut) {
                for ip in ips.iter_mut() {
                    let family = ip
                        .get("address")
                        .and_then(Value::as_str)
                        .map(|a| if a.contains(':') { "6" } else { "4" })
                        .unwrap_or("4");
                    if let Some(obj) = ip.as_object_mut() {
                        obj.insert("version".into(), Value::String(family.into()));
                    }
                }
            }
        }
        value
    }
}

/// One plugin's network configuration as it arrives on stdin. Fields the spec defines
/// for every plugin are typed; plugin-specific keys stay in `other`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    #[serde(
        rename = "runtimeConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub runtime_config: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl NetConf {
    /// Parses stdin bytes: undecodable JSON is code 6, missing spec fields and an
    /// unsupported version are codes 7 and 1.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "failed to decode network configuration",
            )
            .with_details(e.to_string())
        })?;
        if conf.cni_version.is_empty() {
            return Err(CniError::invalid_config(
                "network configuration has no cniVersion",
            ));
        }
        check_version(&conf.cni_version)?;
        if conf.name.is_empty() {
            return Err(CniError::invalid_config(
                "network configuration has no name",
            ));
        }
        if conf.plugin_type.is_empty() {
            return Err(CniError::invalid_config(
                "network configuration has no type",
            ));
        }
        validate_network_name(&conf.name)?;
        Ok(conf)
    }
}

/// The spec restricts network names to `[a-zA-Z0-9_.\-]` (they become directory
/// names, so this also stops path traversal through `dataDir` defaults).
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(CniError::invalid_config(format!(
            "invalid network name {name:?}"
        )))
    }
}

/// A network configuration list (`.conflist`). Plugins are kept as raw JSON objects so
/// the runtime can add `name`, `cniVersion`, `prevResult` and `runtimeConfig` without
/// losing plugin-specific keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfigList {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(rename = "cniVersions", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_versions: Vec<String>,
    pub name: String,
    #[serde(
        rename = "disableCheck",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_check: bool,
    #[serde(
        rename = "disableGC",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_gc: bool,
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkConfigList {
    /// Parses and validates a conflist.
    pub fn parse(bytes: &[u8]) -> Result<NetworkConfigList, CniError> {
        let list: NetworkConfigList = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "failed to decode network configuration list",
            )
            .with_details(e.to_string())
        })?;
        list.validate()?;
        Ok(list)
    }

    /// Wraps a single-plugin `.conf` as a one-element list, as libcni does.
    pub fn from_single(bytes: &[u8]) -> Result<NetworkConfigList, CniError> {
        let conf: Map<String, Value> = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "failed to decode network configuration",
            )
            .with_details(e.to_string())
        })?;
        let get = |k: &str| {
            conf.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let list = NetworkConfigList {
            cni_version: get("cniVersion"),
            cni_versions: Vec::new(),
            name: get("name"),
            disable_check: false,
            disable_gc: false,
            plugins: vec![conf],
        };
        list.validate()?;
        Ok(list)
    }

    pub fn validate(&self) -> Result<(), CniError> {
        validate_network_name(&self.name)?;
        if self.plugins.is_empty() {
            return Err(CniError::invalid_config(format!(
                "network {:?} has no plugins",
                self.name
            )));
        }
        for plugin in &self.plugins {
            if plugin
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty()
            {
                return Err(CniError::invalid_config(format!(
                    "network {:?} has a plugin without a type",
                    self.name
                )));
            }
        }
        self.version()?;
        Ok(())
    }

    /// The version this list runs at after negotiation.
    pub fn version(&self) -> Result<String, CniError> {
        negotiate_list_version(&self.cni_version, &self.cni_versions)
    }
}

/// An entry of `cni.dev/valid-attachments` in a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The key GC requests carry the still-valid attachments under.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked() {
        assert!(check_version("1.1.0").is_ok());
        assert!(check_version("0.4.0").is_ok());
        assert_eq!(
            check_version("9.0.0").unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            check_version("").unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
    }

    #[test]
    fn list_negotiates_highest_supported_of_cni_versions() {
        let v = negotiate_list_version("0.4.0", &["1.0.0".into(), "1.1.0".into(), "7.0.0".into()])
            .unwrap();
        assert_eq!(v, "1.1.0");
        assert_eq!(negotiate_list_version("1.0.0", &[]).unwrap(), "1.0.0");
    }

    #[test]
    fn netconf_errors_have_spec_codes() {
        assert_eq!(
            NetConf::parse(b"{not json").unwrap_err().code,
            code::DECODE_FAILURE
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","type":"x"}"#)
                .unwrap_err()
                .code,
            code::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"2.0.0","name":"n","type":"x"}"#)
                .unwrap_err()
                .code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"../etc","type":"x"}"#)
                .unwrap_err()
                .code,
            code::INVALID_NETWORK_CONFIG
        );
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"x","bridge":"b0"}"#)
            .unwrap();
        assert_eq!(conf.other["bridge"], "b0");
    }

    #[test]
    fn result_shape_follows_version() {
        let result = CniResult {
            cni_version: String::new(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                sandbox: "/run/netns/x".into(),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "10.1.0.2/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route::new(
                "0.0.0.0/0".parse().unwrap(),
                Some("10.1.0.1".parse().unwrap()),
            )],
            dns: Dns::default(),
        };
        let v1 = result.to_value("1.0.0");
        assert_eq!(v1["cniVersion"], "1.0.0");
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1.get("dns").is_none());
        let v04 = result.to_value("0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        let back = CniResult::from_value(&v04).unwrap();
        assert_eq!(back.ips, result.ips);
    }

    #[test]
    fn single_conf_becomes_a_list() {
        let list =
            NetworkConfigList::from_single(br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#)
                .unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert!(
            NetworkConfigList::parse(br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#).is_err()
        );
    }
}
