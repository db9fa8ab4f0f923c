//! Pod networking through CNI: each pod's network namespace is pinned by a bind mount
//! (`<state>/netns/<pod id>`) so CNI plugins, the monitor and later commands can all
//! name it; the configured network list (or podrun's default one) is run against it with
//! the pod's port mappings, and the result's address becomes the pod IP. Teardown runs
//! CNI DEL (idempotent, also for a netns already gone) and unpins the namespace.

use std::path::{Path, PathBuf};

use podrun_cni::{Cni, CniConfig, NetworkConfigList};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("create the pod network namespace {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error("CNI network configuration: {0}")]
    Config(String),
    #[error("CNI ADD on network {network}: {message}")]
    Add { network: String, message: String },
}

/// How pods get their network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// Through the CNI configuration in `conf_dirs`, plugins from `bin_dirs`.
    Cni {
        conf_dirs: Vec<PathBuf>,
        bin_dirs: Vec<PathBuf>,
        /// libcni-style result cache, so DEL gets the ADD's result and config.
        cache_dir: PathBuf,
    },
    /// Only loopback in the pod's own namespace (podman's `--network none`).
    None,
}

/// What a pod's teardown needs to undo its network; recorded in the pod plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    pub netns: PathBuf,
    pub ifname: String,
    pub network: String,
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub conf: serde_json::Value,
    pub capability_args: serde_json::Value,
    pub pod_ip: Option<String>,
}

/// File name of the default network podrun installs when none is configured.
pub const DEFAULT_CONFLIST_FILE: &str = "87-podrun-bridge.conflist";

/// Load the network configuration; when there is none at all, install podrun's default
/// network in the first configuration directory, as CRI-O does. Returns the list and
/// whether the default was just installed.
pub fn load_or_install(conf_dirs: &[PathBuf]) -> Result<(NetworkConfigList, bool), NetworkError> {
    match CniConfig::load(conf_dirs, None) {
        Ok(list) => Ok((list, false)),
        Err(podrun_cni::ClientError::NoConfig { .. }) => {
            let dir = conf_dirs
                .first()
                .ok_or_else(|| NetworkError::Config("no configuration directory".into()))?;
            let list = podrun_cni::default_conflist();
            let text = serde_json::to_vec_pretty(&list)
                .map_err(|e| NetworkError::Config(e.to_string()))?;
            crate::state::write_atomic(&dir.join(DEFAULT_CONFLIST_FILE), &text, 0o644)
                .map_err(|e| NetworkError::Config(e.to_string()))?;
            info!(dir = %dir.display(), "installed podrun's default CNI network");
            Ok((list, true))
        }
        Err(e) => Err(NetworkError::Config(e.to_string())),
    }
}

/// The node's pod range arrived (CRI UpdateRuntimeConfig, from the kubelet): when the
/// network in use is podrun's own default (or there is none yet), it is written again
/// for `pod_cidr`, with its gateway the range's first address and its address
/// reservations under `ipam_dir`. Egress masquerade is left to whoever assigned the
/// range, since only it knows which destinations are the cluster's own; a network the
/// operator configured is never touched. Returns whether the network was (re)written.
pub fn install_for_pod_cidr(
    conf_dirs: &[PathBuf],
    pod_cidr: ipnet::IpNet,
    ipam_dir: &Path,
) -> Result<bool, NetworkError> {
    let dir = conf_dirs
        .first()
        .ok_or_else(|| NetworkError::Config("no configuration directory".into()))?;
    let ours = dir.join(DEFAULT_CONFLIST_FILE);
    match CniConfig::load(conf_dirs, None) {
        Err(podrun_cni::ClientError::NoConfig { .. }) => {}
        Ok(list) if list.name == "podrun" && ours.is_file() => {}
        Ok(list) => {
            info!(network = %list.name, pod_cidr = %pod_cidr, "pod CIDR not applied: the CNI network is configured by the operator");
            return Ok(false);
        }
        Err(e) => return Err(NetworkError::Config(e.to_string())),
    }
    let list = pod_cidr_conflist(pod_cidr, ipam_dir)?;
    let text = serde_json::to_vec_pretty(&list).map_err(|e| NetworkError::Config(e.to_string()))?;
    if std::fs::read(&ours).ok().as_deref() == Some(&text[..]) {
        return Ok(false);
    }
    crate::state::write_atomic(&ours, &text, 0o644)
        .map_err(|e| NetworkError::Config(e.to_string()))?;
    info!(file = %ours.display(), pod_cidr = %pod_cidr, "podrun's CNI network now uses the node's pod CIDR");
    Ok(true)
}

/// podrun's default network for one node's pod range.
pub fn pod_cidr_conflist(
    pod_cidr: ipnet::IpNet,
    ipam_dir: &Path,
) -> Result<NetworkConfigList, NetworkError> {
    let net = pod_cidr.trunc();
    let gateway = net
        .hosts()
        .next()
        .ok_or_else(|| NetworkError::Config(format!("pod CIDR {pod_cidr} has no addresses")))?;
    let mut list = podrun_cni::default_conflist();
    let bridge = list
        .plugins
        .first_mut()
        .ok_or_else(|| NetworkError::Config("the default network has no plugins".into()))?;
    bridge["ipMasq"] = serde_json::json!(false);
    bridge["ipam"] = serde_json::json!({
        "type": "host-local",
        "routes": [{"dst": if net.addr().is_ipv4() { "0.0.0.0/0" } else { "::/0" }}],
        "ranges": [[{"subnet": net.to_string(), "gateway": gateway.to_string()}]],
        "dataDir": ipam_dir,
    });
    Ok(list)
}

/// Create a network namespace and pin it at `path` with a bind mount. Done on a thread of
/// its own, so no other thread of the caller ever runs in the new namespace.
pub fn pin_netns(path: &Path) -> Result<(), NetworkError> {
    let err = |message: String| NetworkError::Pin {
        path: path.to_owned(),
        message,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| err(format!("create the mount point: {e}")))?;
    let target = path.to_owned();
    let result = std::thread::spawn(move || -> Result<(), String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare: {e}"))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind mount: {e}"))
    })
    .join()
    .unwrap_or_else(|_| Err("namespace thread panicked".into()));
    if let Err(m) = result {
        let _ = std::fs::remove_file(path);
        return Err(err(m));
    }
    Ok(())
}

/// Unpin (and so free) a pinned network namespace. Idempotent.
pub fn unpin_netns(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// Attach the pod: CNI ADD with its port mappings. The caller registers `teardown`
/// before calling this, so a failure leaves nothing.
pub fn attach(
    list: &NetworkConfigList,
    bin_dirs: &[PathBuf],
    cache_dir: &Path,
    pod_id: &str,
    netns: &Path,
    capability_args: serde_json::Value,
) -> Result<PodNetwork, NetworkError> {
    let cni = Cni::new(list.clone(), bin_dirs.to_vec(), cache_dir.to_owned());
    let result = cni
        .add(
            pod_id,
            &netns.to_string_lossy(),
            "eth0",
            capability_args.clone(),
        )
        .map_err(|e| NetworkError::Add {
            network: list.name.clone(),
            message: e.to_string(),
        })?;
    let pod_ip = result
        .ips
        .iter()
        .find(|ip| ip.address.addr().is_ipv4())
        .or_else(|| result.ips.first())
        .map(|ip| ip.address.addr().to_string());
    Ok(PodNetwork {
        netns: netns.to_owned(),
        ifname: "eth0".into(),
        network: list.name.clone(),
        bin_dirs: bin_dirs.to_vec(),
        cache_dir: cache_dir.to_owned(),
        conf: serde_json::to_value(list).unwrap_or_default(),
        capability_args,
        pod_ip,
    })
}

/// CNI DEL (with the configuration the pod was attached with) and unpin the namespace.
/// Idempotent; errors are logged, since teardown must go on.
pub fn teardown(pod_id: &str, net: &PodNetwork) {
    if let Ok(list) = serde_json::from_value::<NetworkConfigList>(net.conf.clone()) {
        let cni = Cni::new(list, net.bin_dirs.clone(), net.cache_dir.clone());
        let netns = if net.netns.exists() {
            net.netns.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        if let Err(e) = cni.del(pod_id, &netns, &net.ifname, net.capability_args.clone()) {
            warn!(pod = %pod_id, network = %net.network, error = %e, "CNI DEL failed");
        }
    }
    unpin_netns(&net.netns);
}

/// Undo the network of a pod that crashed before its plan recorded it: CNI DEL with
/// the attachment's cached configuration if ADD finished, else with the current one (a
/// plugin that allocated before the crash releases by container id), then unpin.
pub fn teardown_orphan(mode: &NetworkMode, pod_id: &str, netns: &Path) {
    if let NetworkMode::Cni {
        conf_dirs,
        bin_dirs,
        cache_dir,
    } = mode
    {
        let current = CniConfig::load(conf_dirs, None).ok();
        let probe = current
            .clone()
            .map(|l| Cni::new(l, bin_dirs.clone(), cache_dir.clone()));
        let cached = probe.as_ref().and_then(|c| c.cached(pod_id, "eth0"));
        let (list, args) = match cached {
            Some(c) => (Some(c.config), c.capability_args),
            None => (current, serde_json::json!({})),
        };
        if let Some(list) = list {
            let cni = Cni::new(list, bin_dirs.clone(), cache_dir.clone());
            let ns = if netns.exists() {
                netns.to_string_lossy().into_owned()
            } else {
                String::new()
            };
            if let Err(e) = cni.del(pod_id, &ns, "eth0", args) {
                warn!(pod = %pod_id, error = %e, "CNI DEL of an interrupted sandbox failed");
            }
        }
    }
    unpin_netns(netns);
}

/// Pinned namespaces under `dir` that no pod in `live_ids` owns (left by a crash).
pub fn orphaned_netns(dir: &Path, live_ids: &[String]) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            !live_ids
                .iter()
                .any(|id| e.file_name().to_string_lossy() == id.as_str())
        })
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_network_is_installed_once() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_owned()];
        let (list, installed) = load_or_install(&dirs).unwrap();
        assert!(installed);
        assert_eq!(list.name, "podrun");
        let (again, installed) = load_or_install(&dirs).unwrap();
        assert!(!installed);
        assert_eq!(again.name, "podrun");
    }

    #[test]
    fn the_pod_cidr_rewrites_only_podruns_own_network() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().join("net.d")];
        let ipam = dir.path().join("ipam");
        let cidr: ipnet::IpNet = "172.16.3.0/24".parse().unwrap();
        // Nothing configured yet: written for the range.
        assert!(install_for_pod_cidr(&dirs, cidr, &ipam).unwrap());
        let (list, installed) = load_or_install(&dirs).unwrap();
        assert!(!installed);
        let b = &list.plugins[0];
        assert_eq!(b["ipam"]["ranges"][0][0]["subnet"], "172.16.3.0/24");
        assert_eq!(b["ipam"]["ranges"][0][0]["gateway"], "172.16.3.1");
        assert_eq!(b["ipam"]["dataDir"], ipam.to_string_lossy().as_ref());
        assert_eq!(b["ipMasq"], false);
        // The same range again changes nothing; a new one rewrites it.
        assert!(!install_for_pod_cidr(&dirs, cidr, &ipam).unwrap());
        assert!(install_for_pod_cidr(&dirs, "172.16.4.0/24".parse().unwrap(), &ipam).unwrap());
        // The installed default is podrun's too.
        let other = tempfile::tempdir().unwrap();
        let odirs = vec![other.path().to_owned()];
        load_or_install(&odirs).unwrap();
        assert!(install_for_pod_cidr(&odirs, cidr, &ipam).unwrap());
        // An operator's network is left alone.
        std::fs::write(
            other.path().join("10-mine.conflist"),
            r#"{"cniVersion":"1.0.0","name":"mine","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert!(!install_for_pod_cidr(&odirs, "172.16.9.0/24".parse().unwrap(), &ipam).unwrap());
        assert_eq!(CniConfig::load(&odirs, None).unwrap().name, "mine");
    }

    #[test]
    fn orphans_are_what_no_live_pod_owns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "").unwrap();
        std::fs::write(dir.path().join("b"), "").unwrap();
        let o = orphaned_netns(dir.path(), &["a".into()]);
        assert_eq!(o, vec![dir.path().join("b")]);
    }
}
