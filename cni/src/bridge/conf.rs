//! The bridge plugin's configuration keys (`bridge`, `isGateway`, `ipMasq`, ...).

use serde::Deserialize;
use serde_json::Value;

use crate::skel::valid_ifname;
use crate::spec::CniError;

/// The bridge plugin's own configuration keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

impl BridgeConf {
    pub fn parse(raw: &Value) -> Result<BridgeConf, CniError> {
        let mut conf: BridgeConf = serde_json::from_value(raw.clone())
            .map_err(|e| CniError::invalid_config(format!("invalid bridge configuration: {e}")))?;
        if !valid_ifname(&conf.bridge) {
            return Err(CniError::invalid_config(format!(
                "invalid bridge name {:?}",
                conf.bridge
            )));
        }
        if let Some(mtu) = conf.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(CniError::invalid_config(format!("invalid mtu {mtu}")));
            }
        }
        // A default gateway needs the gateway address on the bridge.
        if conf.is_default_gateway {
            conf.is_gateway = true;
        }
        Ok(conf)
    }
}
