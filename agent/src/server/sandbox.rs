//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox,
//! UpdatePodSandboxResources.

use std::sync::Arc;
use std::time::Duration;

use podrun_cri_proto::v1 as cri;
use podrun_runtime::monitor::protocol::Request;
use tonic::Status;
use tracing::{info, warn};

use super::convert::{self, btree, labels_match};
use super::{blocking, monitor_call, monitor_status, now_ns, status_of, Cri};
use crate::store::{self, Sandbox};

pub async fn run(
    cri: &Arc<Cri>,
    req: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("config: required"))?;
    if !req.runtime_handler.is_empty() && req.runtime_handler != "podrun" {
        return Err(Status::invalid_argument(format!(
            "runtime_handler: unknown handler {:?} (podrun has only the default handler)",
            req.runtime_handler
        )));
    }
    let spec = convert::sandbox_spec(&config)?;
    let id = podrun_runtime::state::new_id();
    let key = store::sandbox_name_key(&config);
    // No await between reserving the name and starting the task that records the
    // outcome: a caller that gives up in between would leave the name reserved for
    // nothing.
    let lock = cri.sandbox_lock(&id);
    let _guard = lock.lock().await;
    if let Err(existing) = cri.store.reserve_name(&key, &id) {
        cri.drop_lock(&id);
        return Err(Status::already_exists(format!(
            "sandbox name {key:?} is reserved for {existing}"
        )));
    }
    let rt = cri.rt.clone();
    let id2 = id.clone();
    let created_at_ns = now_ns();
    let handler = req.runtime_handler.clone();
    let cri2 = cri.clone();
    // The outcome is recorded inside the blocking task, so a caller that gives up (its
    // deadline passed) does not leave a running sandbox unknown to the store or a name
    // reserved for nothing: the task finishes either way.
    blocking(move || {
        let created = (|| {
            let plan = rt.run_sandbox(&id2, &spec).map_err(status_of)?;
            let sandbox = Sandbox {
                id: id2.clone(),
                plan,
                config,
                runtime_handler: handler,
                created_at_ns,
                stopped: false,
            };
            podrun_runtime::fault::point("agent:sandbox-record");
            if let Err(e) = store::write_sandbox(&sandbox) {
                // Without its record the sandbox would be reaped as half-created: undo now.
                let info = podrun_runtime::pod::PodInfo {
                    plan: sandbox.plan.clone(),
                    status: None,
                    alive: true,
                };
                let _ = rt.stop(&info, Some(0), true);
                return Err(Status::internal(format!("write sandbox record: {e}")));
            }
            Ok(sandbox)
        })();
        match created {
            Ok(sandbox) => {
                info!(sandbox = %id2, name = %key, "sandbox running");
                cri2.store.add_sandbox(sandbox);
                Ok(())
            }
            Err(e) => {
                cri2.store.release_name(&key, &id2);
                cri2.drop_lock(&id2);
                Err(e)
            }
        }
    })
    .await?;
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
}

/// Stop every container (at once, as containerd does) and tear the network down; the
/// sandbox stays, NOTREADY, until it is removed.
pub async fn stop(
    cri: &Arc<Cri>,
    req: cri::StopPodSandboxRequest,
) -> Result<cri::StopPodSandboxResponse, Status> {
    let Some(sb) = cri.store.find_sandbox(&req.pod_sandbox_id) else {
        return Ok(cri::StopPodSandboxResponse {});
    };
    let lock = cri.sandbox_lock(&sb.id);
    let _guard = lock.lock().await;
    let before: Vec<String> = cri
        .store
        .containers_of(&sb.id)
        .into_iter()
        .map(|c| c.id)
        .collect();
    let sb2 = sb.clone();
    let running = blocking(move || {
        let running: Vec<String> = monitor_status(&sb2.plan.state_dir)
            .map(|s| {
                s.containers
                    .iter()
                    .filter(|c| {
                        matches!(
                            c.state,
                            podrun_runtime::status::ContainerState::Running { .. }
                        )
                    })
                    .map(|c| c.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        match monitor_call(
            &sb2.plan.state_dir,
            &Request::Stop {
                grace_secs: Some(0),
                remove: false,
            },
            Duration::from_secs(60),
        ) {
            Ok(_) => {}
            Err(podrun_runtime::monitor::protocol::ProtocolError::Connect { .. }) => {}
            Err(e) => warn!(sandbox = %sb2.id, error = %e, "stop sandbox containers"),
        }
        if let Some(net) = &sb2.plan.network {
            podrun_runtime::network::teardown(&sb2.id, net);
        }
        Ok(running)
    })
    .await?;
    for c in running.iter().filter(|c| before.contains(c)) {
        cri.emit(c, &sb.id, cri::ContainerEventType::ContainerStoppedEvent)
            .await;
    }
    if let Some(updated) = cri.store.update_sandbox(&sb.id, |s| s.stopped = true) {
        if let Err(e) = store::write_sandbox(&updated) {
            warn!(sandbox = %sb.id, error = %e, "record sandbox stop");
        }
    }
    info!(sandbox = %sb.id, "sandbox stopped");
    Ok(cri::StopPodSandboxResponse {})
}

pub async fn remove(
    cri: &Arc<Cri>,
    req: cri::RemovePodSandboxRequest,
) -> Result<cri::RemovePodSandboxResponse, Status> {
    let Some(sb) = cri.store.find_sandbox(&req.pod_sandbox_id) else {
        return Ok(cri::RemovePodSandboxResponse {});
    };
    let lock = cri.sandbox_lock(&sb.id);
    let _guard = lock.lock().await;
    let containers: Vec<String> = cri
        .store
        .containers_of(&sb.id)
        .into_iter()
        .map(|c| c.id)
        .collect();
    for c in &containers {
        cri.emit_missing_stop(c, &sb.id).await;
    }
    let rt = cri.rt.clone();
    let sb2 = sb.clone();
    blocking(move || {
        // The monitor stops what still runs and tears everything down, then exits;
        // stop() finishes the job if it is gone.
        let plan = podrun_runtime::state::read_json(
            &sb2.plan.state_dir.join(podrun_runtime::monitor::PLAN_FILE),
        )
        .ok()
        .flatten()
        .unwrap_or(sb2.plan.clone());
        let alive =
            podrun_runtime::monitor::protocol::connect(&super::monitor_socket(&sb2.plan.state_dir))
                .is_ok();
        let status = monitor_status(&sb2.plan.state_dir);
        let info = podrun_runtime::pod::PodInfo {
            plan,
            status,
            alive,
        };
        rt.stop(&info, Some(0), true).map_err(status_of)
    })
    .await?;
    for c in &containers {
        cri.emit(c, &sb.id, cri::ContainerEventType::ContainerDeletedEvent)
            .await;
    }
    cri.store.remove_sandbox(&sb.id);
    cri.drop_lock(&sb.id);
    info!(sandbox = %sb.id, "sandbox removed");
    Ok(cri::RemovePodSandboxResponse {})
}

/// READY while the monitor runs and nobody stopped the sandbox.
fn sandbox_state(sb: &Sandbox, monitor_alive: bool) -> cri::PodSandboxState {
    if monitor_alive && !sb.stopped {
        cri::PodSandboxState::SandboxReady
    } else {
        cri::PodSandboxState::SandboxNotready
    }
}

fn namespace_options(sb: &Sandbox) -> cri::NamespaceOption {
    sb.config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

pub async fn status(
    cri: &Arc<Cri>,
    req: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, Status> {
    let sb = cri
        .store
        .find_sandbox(&req.pod_sandbox_id)
        .ok_or_else(|| Status::not_found(format!("sandbox {:?} not found", req.pod_sandbox_id)))?;
    let sb2 = sb.clone();
    let st = blocking(move || Ok(monitor_status(&sb2.plan.state_dir))).await?;
    let state = sandbox_state(&sb, st.is_some());
    let ip = if state == cri::PodSandboxState::SandboxReady {
        sb.plan
            .network
            .as_ref()
            .and_then(|n| n.pod_ip.clone())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        let v = serde_json::json!({
            "pid": st.as_ref().map(|s| s.monitor_pid).unwrap_or(0),
            "state_dir": sb.plan.state_dir,
            "cgroup": sb.plan.cgroup_path,
            "netns": sb.plan.network.as_ref().map(|n| n.netns.clone()),
            "hostname": sb.plan.hostname,
            "runtimeHandler": sb.runtime_handler,
            "config": {
                "metadata": sb.config.metadata.as_ref().map(|m| serde_json::json!({
                    "name": m.name, "uid": m.uid, "namespace": m.namespace, "attempt": m.attempt
                })),
                "log_directory": sb.config.log_directory,
            },
        });
        info.insert("info".to_owned(), v.to_string());
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(cri::PodSandboxStatus {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            state: state as i32,
            created_at: sb.created_at_ns,
            network: Some(cri::PodSandboxNetworkStatus {
                ip,
                additional_ips: Vec::new(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(namespace_options(&sb)),
                }),
            }),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
            runtime_handler: sb.runtime_handler.clone(),
        }),
        info,
        containers_statuses: super::container::statuses_in_sandbox(cri, &sb.id).await?,
        timestamp: now_ns(),
    })
}

pub async fn list(
    cri: &Arc<Cri>,
    req: cri::ListPodSandboxRequest,
) -> Result<cri::ListPodSandboxResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let sandboxes: Vec<Sandbox> = cri
        .store
        .sandboxes()
        .into_iter()
        .filter(|s| filter.id.is_empty() || s.id.starts_with(&filter.id))
        .filter(|s| labels_match(&filter.label_selector, &s.config.labels))
        .collect();
    let items = blocking(move || {
        Ok(sandboxes
            .into_iter()
            .map(|sb| {
                let alive = podrun_runtime::monitor::protocol::connect(&super::monitor_socket(
                    &sb.plan.state_dir,
                ))
                .is_ok();
                let state = sandbox_state(&sb, alive);
                cri::PodSandbox {
                    id: sb.id.clone(),
                    metadata: sb.config.metadata.clone(),
                    state: state as i32,
                    created_at: sb.created_at_ns,
                    labels: sb.config.labels.clone(),
                    annotations: sb.config.annotations.clone(),
                    runtime_handler: sb.runtime_handler.clone(),
                }
            })
            .collect::<Vec<_>>())
    })
    .await?;
    let mut items: Vec<cri::PodSandbox> = items
        .into_iter()
        .filter(|s| filter.state.as_ref().is_none_or(|f| f.state == s.state))
        .collect();
    items.sort_by_key(|s| s.created_at);
    let _ = btree;
    Ok(cri::ListPodSandboxResponse { items })
}

pub async fn update_resources(
    cri: &Arc<Cri>,
    req: cri::UpdatePodSandboxResourcesRequest,
) -> Result<cri::UpdatePodSandboxResourcesResponse, Status> {
    let sb = cri
        .store
        .find_sandbox(&req.pod_sandbox_id)
        .ok_or_else(|| Status::not_found(format!("sandbox {:?} not found", req.pod_sandbox_id)))?;
    if sb.plan.external_cgroup {
        // kubelet owns the pod cgroup and sizes it itself; nothing of ours to change.
        return Ok(cri::UpdatePodSandboxResourcesResponse {});
    }
    let linux = cri::LinuxPodSandboxConfig {
        overhead: req.overhead,
        resources: req.resources,
        ..Default::default()
    };
    let res = {
        let a = convert::resources(linux.overhead.as_ref());
        let b = convert::resources(linux.resources.as_ref());
        podrun_runtime::cgroups::Resources {
            memory_limit: match (a.memory_limit, b.memory_limit) {
                (Some(x), Some(y)) => Some(x + y),
                (x, y) => x.or(y),
            },
            // Not a CRI resource: the pod PID limit stays what the sandbox got.
            pids_limit: sb.plan.pod_resources.pids_limit,
            ..b
        }
    };
    let rt = cri.rt.clone();
    blocking(move || {
        rt.cgroups()
            .update(&sb.plan.cgroup_path, &res)
            .map_err(|e| Status::internal(format!("update pod cgroup: {e}")))
    })
    .await?;
    Ok(cri::UpdatePodSandboxResourcesResponse {})
}
