//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
//! ListContainers, UpdateContainerResources, ReopenContainerLog.

use std::sync::Arc;
use std::time::Duration;

use podrun_cri_proto::v1 as cri;
use podrun_runtime::monitor::protocol::{ProtocolError, Request};
use podrun_runtime::status::PodStatus;
use tonic::Status;
use tracing::{info, warn};

use super::convert::{self, cri_state, labels_match};
use super::{blocking, monitor_call, monitor_status, now_ns, protocol_status, status_of, Cri};
use crate::store::{self, Container, Sandbox};

/// A container and its sandbox, by full id or unique prefix.
pub(super) fn find(cri: &Cri, id: &str) -> Result<(Container, Sandbox), Status> {
    let c = cri
        .store
        .find_container(id)
        .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
    let sb = cri
        .store
        .sandbox(&c.sandbox_id)
        .ok_or_else(|| Status::not_found(format!("sandbox of container {id:?} not found")))?;
    Ok((c, sb))
}

pub async fn create(
    cri: &Arc<Cri>,
    req: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("config: required"))?;
    let sb = cri
        .store
        .find_sandbox(&req.pod_sandbox_id)
        .ok_or_else(|| Status::not_found(format!("sandbox {:?} not found", req.pod_sandbox_id)))?;
    let lock = cri.sandbox_lock(&sb.id);
    let _guard = lock.lock().await;
    let sb = cri
        .store
        .sandbox(&sb.id)
        .ok_or_else(|| Status::not_found(format!("sandbox {:?} not found", sb.id)))?;
    if sb.stopped {
        return Err(Status::failed_precondition(format!(
            "sandbox {} is not ready",
            sb.id
        )));
    }
    let spec = convert::container_spec(&config, &sb.config, Some(&sb.plan.log_dir))?;
    let id = podrun_runtime::state::new_id();
    let key = store::container_name_key(&sb, &config);
    if let Err(existing) = cri.store.reserve_name(&key, &id) {
        return Err(Status::already_exists(format!(
            "container name {key:?} is reserved for {existing}"
        )));
    }
    let rt = cri.rt.clone();
    let id2 = id.clone();
    let sb2 = sb.clone();
    let config2 = config.clone();
    let cri2 = cri.clone();
    let key2 = key.clone();
    // As for sandboxes, the outcome is recorded inside the blocking task, whatever
    // happens to the caller.
    let result = blocking(move || {
        let result = create_blocking(&rt, &sb2, &id2, &spec, config2);
        match &result {
            Ok(record) => cri2.store.add_container(record.clone(), key2),
            Err(_) => cri2.store.release_name(&key2, &id2),
        }
        result
    })
    .await;
    match result {
        Ok(_) => {
            info!(container = %id, sandbox = %sb.id, name = %key, "container created");
            cri.emit(&id, &sb.id, cri::ContainerEventType::ContainerCreatedEvent)
                .await;
            Ok(cri::CreateContainerResponse { container_id: id })
        }
        Err(e) => Err(e),
    }
}

/// Plan the container, record it, and have the monitor create it; undone on failure.
fn create_blocking(
    rt: &podrun_runtime::pod::PodRuntime,
    sandbox: &Sandbox,
    id: &str,
    spec: &podrun_runtime::sandbox::ContainerSpec,
    config: cri::ContainerConfig,
) -> Result<Container, Status> {
    let plan = rt
        .plan_container(&sandbox.plan, id, spec)
        .map_err(status_of)?;
    podrun_runtime::fault::point("agent:container-plan");
    let record = Container {
        id: id.to_owned(),
        sandbox_id: sandbox.id.clone(),
        config,
        created_at_ns: now_ns(),
        image_id: plan.image_id.clone(),
        log_path: plan
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        user: (
            plan.process.uid,
            plan.process.gid,
            plan.process.additional_gids.clone(),
        ),
    };
    let record_path = store::container_record_path(&sandbox.plan.state_dir, id);
    store::write_container(&sandbox.plan.state_dir, &record)
        .map_err(|e| Status::internal(format!("write container record: {e}")))?;
    podrun_runtime::fault::point("agent:container-record");
    let data_dir = plan.rootfs.upper.parent().map(|p| p.to_owned());
    match monitor_call(
        &sandbox.plan.state_dir,
        &Request::CreateContainer {
            plan: Box::new(plan),
        },
        Duration::from_secs(30),
    ) {
        Ok(_) => {
            podrun_runtime::fault::point("agent:container-created");
            Ok(record)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&record_path);
            if let Some(d) = data_dir {
                let _ = std::fs::remove_dir_all(d);
            }
            Err(protocol_status(e))
        }
    }
}

pub async fn start(
    cri: &Arc<Cri>,
    req: cri::StartContainerRequest,
) -> Result<cri::StartContainerResponse, Status> {
    let (c, sb) = find(cri, &req.container_id)?;
    let lock = cri.sandbox_lock(&sb.id);
    let _guard = lock.lock().await;
    let id = c.id.clone();
    let dir = sb.plan.state_dir.clone();
    blocking(move || {
        monitor_call(
            &dir,
            &Request::StartContainer { id },
            Duration::from_secs(60),
        )
        .map_err(protocol_status)
    })
    .await?;
    info!(container = %c.id, "container started");
    cri.emit(
        &c.id,
        &sb.id,
        cri::ContainerEventType::ContainerStartedEvent,
    )
    .await;
    Ok(cri::StartContainerResponse {})
}

pub async fn stop(
    cri: &Arc<Cri>,
    req: cri::StopContainerRequest,
) -> Result<cri::StopContainerResponse, Status> {
    let Ok((c, sb)) = find(cri, &req.container_id) else {
        return Ok(cri::StopContainerResponse {});
    };
    let lock = cri.sandbox_lock(&sb.id);
    let _guard = lock.lock().await;
    let id = c.id.clone();
    let dir = sb.plan.state_dir.clone();
    let timeout = req.timeout;
    let was_running = blocking(move || {
        let running = monitor_status(&dir).is_some_and(|s| {
            s.containers.iter().any(|x| {
                x.id == id
                    && matches!(
                        x.state,
                        podrun_runtime::status::ContainerState::Running { .. }
                    )
            })
        });
        match monitor_call(
            &dir,
            &Request::StopContainer {
                id,
                timeout_secs: timeout,
            },
            Duration::from_secs(timeout.max(0) as u64 + 60),
        ) {
            Ok(_) | Err(ProtocolError::Connect { .. }) => Ok(running),
            Err(e) => Err(protocol_status(e)),
        }
    })
    .await?;
    if was_running {
        cri.emit(
            &c.id,
            &sb.id,
            cri::ContainerEventType::ContainerStoppedEvent,
        )
        .await;
    }
    Ok(cri::StopContainerResponse {})
}

pub async fn remove(
    cri: &Arc<Cri>,
    req: cri::RemoveContainerRequest,
) -> Result<cri::RemoveContainerResponse, Status> {
    let Ok((c, sb)) = find(cri, &req.container_id) else {
        return Ok(cri::RemoveContainerResponse {});
    };
    let lock = cri.sandbox_lock(&sb.id);
    let _guard = lock.lock().await;
    cri.emit_missing_stop(&c.id, &sb.id).await;
    let id = c.id.clone();
    let dir = sb.plan.state_dir.clone();
    let data_dir = cri.rt.config.paths.container_data(&c.id);
    blocking(move || {
        match monitor_call(
            &dir,
            &Request::RemoveContainer { id: id.clone() },
            Duration::from_secs(60),
        ) {
            Ok(_) | Err(ProtocolError::Connect { .. }) => {}
            Err(e) => return Err(protocol_status(e)),
        }
        // Whatever the monitor did, the container's own files go.
        let _ = std::fs::remove_dir_all(&data_dir);
        let _ = std::fs::remove_file(store::container_record_path(&dir, &id));
        Ok(())
    })
    .await?;
    cri.store.remove_container(&c.id);
    cri.emit(
        &c.id,
        &sb.id,
        cri::ContainerEventType::ContainerDeletedEvent,
    )
    .await;
    info!(container = %c.id, "container removed");
    Ok(cri::RemoveContainerResponse {})
}

fn state_of(status: Option<&PodStatus>, id: &str) -> convert::CriState {
    match status {
        Some(s) => match s.containers.iter().find(|c| c.id == id) {
            Some(c) => cri_state(Some(&c.state)),
            None => cri_state(None),
        },
        None => cri_state(None),
    }
}

fn image_spec(c: &Container) -> cri::ImageSpec {
    let mut spec = c.config.image.clone().unwrap_or_default();
    spec.image_ref = c.image_id.clone();
    spec
}

fn to_status(c: &Container, st: Option<&PodStatus>) -> cri::ContainerStatus {
    let s = state_of(st, &c.id);
    let linux = c.config.linux.clone().unwrap_or_default();
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: s.state as i32,
        created_at: c.created_at_ns,
        started_at: s.started_at,
        finished_at: s.finished_at,
        exit_code: s.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image_id.clone(),
        reason: s.reason,
        message: s.message,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c.log_path.clone(),
        resources: Some(cri::ContainerResources {
            linux: linux.resources.clone(),
            windows: None,
        }),
        image_id: c.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(c.user.0),
                gid: i64::from(c.user.1),
                supplemental_groups: c.user.2.iter().map(|g| i64::from(*g)).collect(),
            }),
        }),
        stop_signal: c.config.stop_signal,
    }
}

/// Statuses of every container of a sandbox (for events).
pub async fn statuses_in_sandbox(
    cri: &Arc<Cri>,
    sandbox_id: &str,
) -> Result<Vec<cri::ContainerStatus>, Status> {
    let Some(sb) = cri.store.sandbox(sandbox_id) else {
        return Ok(Vec::new());
    };
    let containers = cri.store.containers_of(sandbox_id);
    let dir = sb.plan.state_dir.clone();
    let st = blocking(move || Ok(monitor_status(&dir))).await?;
    Ok(containers
        .iter()
        .map(|c| to_status(c, st.as_ref()))
        .collect())
}

pub async fn status(
    cri: &Arc<Cri>,
    req: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    let (c, sb) = find(cri, &req.container_id)?;
    let dir = sb.plan.state_dir.clone();
    let st = blocking(move || Ok(monitor_status(&dir))).await?;
    let status = to_status(&c, st.as_ref());
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        let pid = st
            .as_ref()
            .and_then(|s| s.containers.iter().find(|x| x.id == c.id))
            .and_then(|x| match &x.state {
                podrun_runtime::status::ContainerState::Running { pid, .. } => Some(*pid),
                _ => None,
            })
            .unwrap_or(0);
        // The monitor records PIDs of the pod's PID namespace; `info.pid` is the host's,
        // as containerd reports it (for `nsenter -t`).
        let monitor = st.as_ref().map_or(0, |s| s.monitor_pid);
        let pid = blocking(move || Ok(podrun_runtime::procfs::host_pid_of_child(monitor, pid)))
            .await?
            .unwrap_or(0);
        info.insert(
            "info".to_owned(),
            serde_json::json!({
                "sandboxID": sb.id,
                "pid": pid,
                "runtimeSpec": { "root": cri.rt.config.paths.container_data(&c.id).join("rootfs") },
            })
            .to_string(),
        );
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(status),
        info,
    })
}

pub async fn list(
    cri: &Arc<Cri>,
    req: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let containers: Vec<Container> = cri
        .store
        .containers()
        .into_iter()
        .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
        .filter(|c| {
            filter.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&filter.pod_sandbox_id)
        })
        .filter(|c| labels_match(&filter.label_selector, &c.config.labels))
        .collect();
    let mut dirs: Vec<(String, std::path::PathBuf)> = Vec::new();
    for c in &containers {
        if !dirs.iter().any(|(id, _)| *id == c.sandbox_id) {
            if let Some(sb) = cri.store.sandbox(&c.sandbox_id) {
                dirs.push((sb.id.clone(), sb.plan.state_dir.clone()));
            }
        }
    }
    let statuses = blocking(move || {
        Ok(dirs
            .into_iter()
            .map(|(id, dir)| (id, monitor_status(&dir)))
            .collect::<std::collections::HashMap<_, _>>())
    })
    .await?;
    let mut out: Vec<cri::Container> = containers
        .iter()
        .map(|c| {
            let st = statuses.get(&c.sandbox_id).and_then(|s| s.as_ref());
            let s = state_of(st, &c.id);
            cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(image_spec(c)),
                image_ref: c.image_id.clone(),
                state: s.state as i32,
                created_at: c.created_at_ns,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_id.clone(),
            }
        })
        .filter(|c| filter.state.as_ref().is_none_or(|f| f.state == c.state))
        .collect();
    out.sort_by_key(|c| c.created_at);
    Ok(cri::ListContainersResponse { containers: out })
}

pub async fn update_resources(
    cri: &Arc<Cri>,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, Status> {
    let (c, sb) = find(cri, &req.container_id)?;
    let lock = cri.sandbox_lock(&sb.id);
    let _guard = lock.lock().await;
    let resources = convert::resources(req.linux.as_ref());
    let id = c.id.clone();
    let dir = sb.plan.state_dir.clone();
    blocking(move || {
        monitor_call(
            &dir,
            &Request::UpdateResources { id, resources },
            Duration::from_secs(30),
        )
        .map_err(protocol_status)
    })
    .await?;
    // Keep the record in step, so ContainerStatus reports the new resources.
    let mut updated = c.clone();
    let mut linux = updated.config.linux.clone().unwrap_or_default();
    linux.resources = req.linux.clone();
    updated.config.linux = Some(linux);
    if let Err(e) = store::write_container(&sb.plan.state_dir, &updated) {
        warn!(container = %c.id, error = %e, "record container resources");
    }
    let key = store::container_name_key(&sb, &updated.config);
    cri.store.add_container(updated, key);
    Ok(cri::UpdateContainerResourcesResponse {})
}

pub async fn reopen_log(
    cri: &Arc<Cri>,
    req: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse, Status> {
    let (c, sb) = find(cri, &req.container_id)?;
    let id = c.id.clone();
    let dir = sb.plan.state_dir.clone();
    blocking(move || {
        monitor_call(&dir, &Request::ReopenLog { id }, Duration::from_secs(30))
            .map_err(protocol_status)
    })
    .await?;
    Ok(cri::ReopenContainerLogResponse {})
}
