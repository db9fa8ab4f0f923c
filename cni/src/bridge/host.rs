//! The host side: the bridge itself and the host's sysctls.

use tracing::info;

use super::{nl_err, BridgeConf};
use crate::netlink::{Link, LinkOps};
use crate::spec::{code, CniError};

/// Creates the bridge if missing (tolerating a concurrent creator), brings it up.
pub fn ensure_bridge(nl: &mut impl LinkOps, conf: &BridgeConf) -> Result<Link, CniError> {
    let link = match nl
        .link_by_name(&conf.bridge)
        .map_err(nl_err("look up bridge"))?
    {
        Some(link) => link,
        None => {
            match nl.create_bridge(&conf.bridge, conf.mtu) {
                Ok(()) => info!(bridge = %conf.bridge, "created bridge"),
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(nl_err("create bridge")(e)),
            }
            nl.link_by_name(&conf.bridge)
                .map_err(nl_err("look up bridge"))?
                .ok_or_else(|| {
                    CniError::internal(format!("bridge {} vanished after creation", conf.bridge))
                })?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(CniError::internal(format!(
            "{} already exists but is not a bridge",
            conf.bridge
        )));
    }
    if !link.up {
        nl.set_up(link.index).map_err(nl_err("bring bridge up"))?;
    }
    if conf.promisc_mode && !link.promisc {
        nl.set_promisc(link.index, true)
            .map_err(nl_err("set bridge promiscuous"))?;
    }
    Ok(link)
}

pub(super) fn random_suffix() -> String {
    let mut buf = [0u8; 4];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        buf = (nanos ^ std::process::id()).to_ne_bytes();
    }
    hex::encode(buf)
}

pub(super) fn write_sysfs(path: &str, value: &str) -> Result<(), CniError> {
    std::fs::write(path, value)
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("write {path}: {e}")))
}
