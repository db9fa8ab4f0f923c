//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: read from the
//! cgroups (CPU, memory) and the container's writable layer. `usage_nano_cores` is the
//! rate between this sample and the previous one of the same cgroup, as cAdvisor and
//! containerd compute it.

use std::path::Path;
use std::sync::Arc;

use podrun_cri_proto::v1 as cri;
use podrun_runtime::cgroups::CgroupStats;
use tonic::Status;

use super::convert::labels_match;
use super::{blocking, now_ns, Cri};
use crate::store::{Container, Sandbox};

fn u64v(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// Bytes and inodes used under `dir`, without following symlinks or leaving its device.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = root.dev();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.dev() != dev {
                continue;
            }
            inodes += 1;
            bytes += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

impl Cri {
    fn nano_cores(&self, key: &str, ts: i64, usage: u64) -> Option<u64> {
        let mut g = self.cpu_samples.lock().unwrap();
        let prev = g.insert(key.to_owned(), (ts, usage));
        let (pts, pusage) = prev?;
        let dt = (ts - pts) as u64;
        if dt == 0 || usage < pusage {
            return None;
        }
        Some(((usage - pusage) as u128 * 1_000_000_000 / dt as u128) as u64)
    }
}

fn cpu(cri: &Cri, key: &str, ts: i64, s: &CgroupStats) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: u64v(s.cpu_usage_ns),
        usage_nano_cores: u64v(cri.nano_cores(key, ts, s.cpu_usage_ns).unwrap_or(0)),
        psi: None,
    }
}

fn memory(ts: i64, s: &CgroupStats) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: ts,
        working_set_bytes: u64v(s.memory_working_set_bytes),
        available_bytes: s.memory_limit_bytes.map(|l| cri::UInt64Value {
            value: l.saturating_sub(s.memory_working_set_bytes),
        }),
        usage_bytes: u64v(s.memory_usage_bytes),
        rss_bytes: u64v(s.memory_rss_bytes),
        page_faults: u64v(s.page_faults),
        major_page_faults: u64v(s.major_page_faults),
        psi: None,
    }
}

/// Stats of one container; its cgroup may be gone (exited and removed): zeros then.
fn stats_of_container(cri: &Cri, c: &Container) -> cri::ContainerStats {
    let ts = now_ns();
    let cg = cri.rt.cgroups().container_path(
        &cri.store
            .sandbox(&c.sandbox_id)
            .map(|s| s.plan.cgroup_path)
            .unwrap_or_default(),
        &c.id,
    );
    let s = cri.rt.cgroups().stats(&cg).unwrap_or_default();
    let upper = cri.rt.config.paths.container_data(&c.id).join("upper");
    let (bytes, inodes) = disk_usage(&upper);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu: Some(cpu(cri, &cg, ts, &s)),
        memory: Some(memory(ts, &s)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: cri
                    .rt
                    .config
                    .paths
                    .root
                    .join("containers")
                    .display()
                    .to_string(),
            }),
            used_bytes: u64v(bytes),
            inodes_used: u64v(inodes),
        }),
        swap: None,
        io: None,
    }
}

fn sandbox_stats(cri: &Cri, sb: &Sandbox) -> cri::PodSandboxStats {
    let ts = now_ns();
    let containers = cri.store.containers_of(&sb.id);
    let cstats: Vec<cri::ContainerStats> = containers
        .iter()
        .map(|c| stats_of_container(cri, c))
        .collect();
    let s = cri
        .rt
        .cgroups()
        .stats(&sb.plan.cgroup_path)
        .unwrap_or_default();
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu(cri, &sb.plan.cgroup_path, ts, &s)),
            memory: Some(memory(ts, &s)),
            network: None,
            process: Some(cri::ProcessUsage {
                timestamp: ts,
                process_count: u64v(s.pids),
            }),
            containers: cstats,
            io: None,
        }),
        windows: None,
    }
}

pub async fn container_stats_rpc(
    cri: &Arc<Cri>,
    id: String,
) -> Result<cri::ContainerStats, Status> {
    let c = cri
        .store
        .find_container(&id)
        .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
    let cri = cri.clone();
    blocking(move || Ok(stats_of_container(&cri, &c))).await
}

pub async fn container_stats(
    cri: &Arc<Cri>,
    req: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse, Status> {
    Ok(cri::ContainerStatsResponse {
        stats: Some(container_stats_rpc(cri, req.container_id).await?),
    })
}

pub async fn list_container_stats(
    cri: &Arc<Cri>,
    req: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let containers: Vec<Container> = cri
        .store
        .containers()
        .into_iter()
        .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
        .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
        .filter(|c| labels_match(&f.label_selector, &c.config.labels))
        .collect();
    let cri = cri.clone();
    let stats = blocking(move || {
        Ok(containers
            .iter()
            .map(|c| stats_of_container(&cri, c))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(cri::ListContainerStatsResponse { stats })
}

pub async fn pod_sandbox_stats(
    cri: &Arc<Cri>,
    req: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse, Status> {
    let sb = cri
        .store
        .find_sandbox(&req.pod_sandbox_id)
        .ok_or_else(|| Status::not_found(format!("sandbox {:?} not found", req.pod_sandbox_id)))?;
    let cri = cri.clone();
    let stats = blocking(move || Ok(sandbox_stats(&cri, &sb))).await?;
    Ok(cri::PodSandboxStatsResponse { stats: Some(stats) })
}

pub async fn list_pod_sandbox_stats(
    cri: &Arc<Cri>,
    req: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let sandboxes: Vec<Sandbox> = cri
        .store
        .sandboxes()
        .into_iter()
        .filter(|s| f.id.is_empty() || s.id.starts_with(&f.id))
        .filter(|s| labels_match(&f.label_selector, &s.config.labels))
        .collect();
    let cri = cri.clone();
    let stats = blocking(move || {
        Ok(sandboxes
            .iter()
            .map(|s| sandbox_stats(&cri, s))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(cri::ListPodSandboxStatsResponse { stats })
}
