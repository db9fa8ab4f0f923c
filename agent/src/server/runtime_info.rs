//! Version, Status, RuntimeConfig and UpdateRuntimeConfig.

use std::sync::Arc;

use podrun_cri_proto::v1 as cri;
use podrun_runtime::cgroups::Driver;
use podrun_runtime::network::NetworkMode;
use tonic::Status;

use super::{blocking, Cri};

pub const RUNTIME_NAME: &str = "podrun";
/// The CRI version this server speaks.
pub const CRI_API_VERSION: &str = "v1";
/// The kubelet-facing version of the old `Version` API (always "0.1.0").
const KUBE_API_VERSION: &str = "0.1.0";

pub fn version(_req: cri::VersionRequest) -> cri::VersionResponse {
    cri::VersionResponse {
        version: KUBE_API_VERSION.into(),
        runtime_name: RUNTIME_NAME.into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: CRI_API_VERSION.into(),
    }
}

/// NetworkReady is true when a CNI configuration can be loaded (or podrun would install
/// its default), or when pods get no network from CNI at all.
fn network_condition(cri: &Cri) -> cri::RuntimeCondition {
    let ready = |status: bool, reason: &str, message: String| cri::RuntimeCondition {
        r#type: "NetworkReady".into(),
        status,
        reason: reason.into(),
        message,
    };
    match &cri.rt.config.network {
        NetworkMode::None => ready(true, "", String::new()),
        NetworkMode::Cni {
            conf_dirs,
            bin_dirs,
            ..
        } => {
            match podrun_cni::CniConfig::load(conf_dirs, None) {
                // No configuration at all: podrun installs its default network at the
                // first pod, so the network is ready.
                Ok(_) | Err(podrun_cni::ClientError::NoConfig { .. }) => {
                    if bin_dirs.iter().any(|d| d.is_dir()) {
                        ready(true, "", String::new())
                    } else {
                        ready(
                            false,
                            "NetworkPluginNotReady",
                            format!("no CNI plugin directory among {bin_dirs:?}"),
                        )
                    }
                }
                Err(e) => ready(
                    false,
                    "NetworkPluginNotReady",
                    format!("cni config load failed: {e}"),
                ),
            }
        }
    }
}

pub async fn status(
    cri: &Arc<Cri>,
    req: cri::StatusRequest,
) -> Result<cri::StatusResponse, Status> {
    let c = cri.clone();
    let (net, runtime_ready) = blocking(move || {
        let root_ok = std::fs::create_dir_all(&c.rt.config.paths.state).is_ok();
        Ok((network_condition(&c), root_ok))
    })
    .await?;
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        let cfg = &cri.rt.config;
        info.insert(
            "config".to_owned(),
            serde_json::json!({
                "root": cfg.paths.root,
                "state": cfg.paths.state,
                "logRoot": cfg.paths.log_root,
                "cgroupDriver": driver_name(cfg.cgroup_driver),
                "cgroupRoot": cfg.cgroup_root,
                "network": format!("{:?}", cfg.network),
                "streamServer": cri.stream.get().map(|s| s.local_addr().to_string()),
                "podCIDR": cri.pod_cidr.lock().unwrap().clone(),
            })
            .to_string(),
        );
    }
    Ok(cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![
                cri::RuntimeCondition {
                    r#type: "RuntimeReady".into(),
                    status: runtime_ready,
                    reason: if runtime_ready {
                        ""
                    } else {
                        "StateDirUnavailable"
                    }
                    .into(),
                    message: String::new(),
                },
                net,
            ],
        }),
        info,
        runtime_handlers: vec![cri::RuntimeHandler {
            name: String::new(),
            features: Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: false,
            }),
        }],
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: false,
            user_namespaces_host_network: false,
        }),
    })
}

pub fn driver_name(d: Driver) -> &'static str {
    match d {
        Driver::Systemd => "systemd",
        _ => "cgroupfs",
    }
}

pub fn runtime_config(cri: &Cri) -> cri::RuntimeConfigResponse {
    let driver = match cri.rt.config.cgroup_driver {
        Driver::Systemd => cri::CgroupDriver::Systemd,
        _ => cri::CgroupDriver::Cgroupfs,
    };
    cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }
}

/// kubelet tells the runtime the node's pod CIDR: podrun records it (the verbose status
/// shows it) and, when the pods' network is podrun's own default, gives the network that
/// range, as containerd does with a CNI config template. A network the operator
/// configured keeps its own addresses. The first range of a dual-stack list is used.
pub fn update_runtime_config(
    cri: &Cri,
    req: cri::UpdateRuntimeConfigRequest,
) -> Result<cri::UpdateRuntimeConfigResponse, tonic::Status> {
    let Some(text) = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .filter(|c| !c.is_empty())
    else {
        return Ok(cri::UpdateRuntimeConfigResponse {});
    };
    let first = text.split(',').next().unwrap_or_default().trim();
    let cidr: ipnet::IpNet = first.parse().map_err(|e| {
        tonic::Status::invalid_argument(format!(
            "runtime_config.network_config.pod_cidr {first:?}: {e}"
        ))
    })?;
    if let NetworkMode::Cni { conf_dirs, .. } = &cri.rt.config.network {
        let ipam_dir = cri.rt.config.paths.root.join("cni/networks");
        podrun_runtime::network::install_for_pod_cidr(conf_dirs, cidr, &ipam_dir)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
    }
    tracing::info!(pod_cidr = %text, "pod CIDR updated");
    *cri.pod_cidr.lock().unwrap() = text;
    Ok(cri::UpdateRuntimeConfigResponse {})
}
