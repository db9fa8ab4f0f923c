//! The agent's view of sandboxes and containers: the CRI configs they were created with,
//! checkpointed next to the pod's runtime state so a restarted agent rebuilds the same
//! view (`recover`). What runs, and how it ended, is the monitor's to say; the store
//! keeps only what the CRI caller gave and what the monitor cannot know.
//!
//! Files, per sandbox in `<state>/pods/<id>/`:
//! ```text
//!   plan.json               the runtime's plan (written by podrun-runtime)
//!   cri-sandbox.json        SandboxRecord: the PodSandboxConfig and whether it was stopped
//!   cri-containers/<id>.json ContainerRecord: the ContainerConfig of one container
//! ```
//! A sandbox with a plan but no `cri-sandbox.json`, or a container record its monitor
//! does not know, was half-created when the agent died; recovery reaps it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use podrun_cri_proto::v1::{ContainerConfig, PodSandboxConfig};
use podrun_runtime::plan::PodPlan;
use prost::Message;
use serde::{Deserialize, Serialize};

pub const SANDBOX_RECORD: &str = "cri-sandbox.json";
pub const CONTAINER_RECORDS: &str = "cri-containers";

#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    pub plan: PodPlan,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at_ns: i64,
    pub stopped: bool,
}

impl Sandbox {
    pub fn name_key(&self) -> String {
        sandbox_name_key(&self.config)
    }
}

#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    pub config: ContainerConfig,
    pub created_at_ns: i64,
    pub image_id: String,
    pub log_path: String,
    /// The user the container's process runs as: uid, gid, supplementary groups.
    pub user: (u32, u32, Vec<u32>),
}

/// The unique name containerd derives for a sandbox: name, namespace, uid and attempt.
pub fn sandbox_name_key(c: &PodSandboxConfig) -> String {
    let m = c.metadata.clone().unwrap_or_default();
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// A container's unique name: its own name and attempt within its sandbox.
pub fn container_name_key(sandbox: &Sandbox, c: &ContainerConfig) -> String {
    let m = c.metadata.clone().unwrap_or_default();
    format!("{}_{}_{}", m.name, sandbox.id, m.attempt)
}

#[derive(Serialize, Deserialize)]
struct SandboxFile {
    config: String,
    runtime_handler: String,
    created_at_ns: i64,
    #[serde(default)]
    stopped: bool,
}

#[derive(Serialize, Deserialize)]
struct ContainerFile {
    config: String,
    created_at_ns: i64,
    image_id: String,
    log_path: String,
    #[serde(default)]
    user: (u32, u32, Vec<u32>),
}

fn b64(m: &impl Message) -> String {
    base64::engine::general_purpose::STANDARD.encode(m.encode_to_vec())
}

fn un_b64<M: Message + Default>(s: &str) -> Option<M> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    M::decode(bytes.as_slice()).ok()
}

pub fn write_sandbox(s: &Sandbox) -> Result<(), podrun_runtime::state::StateError> {
    podrun_runtime::state::write_json(
        &s.plan.state_dir.join(SANDBOX_RECORD),
        &SandboxFile {
            config: b64(&s.config),
            runtime_handler: s.runtime_handler.clone(),
            created_at_ns: s.created_at_ns,
            stopped: s.stopped,
        },
    )
}

pub fn container_record_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(CONTAINER_RECORDS).join(format!("{id}.json"))
}

pub fn write_container(
    state_dir: &Path,
    c: &Container,
) -> Result<(), podrun_runtime::state::StateError> {
    let path = container_record_path(state_dir, &c.id);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    podrun_runtime::state::write_json(
        &path,
        &ContainerFile {
            config: b64(&c.config),
            created_at_ns: c.created_at_ns,
            image_id: c.image_id.clone(),
            log_path: c.log_path.clone(),
            user: c.user.clone(),
        },
    )
}

/// Read a sandbox's records; None when it has no sandbox record (half-created).
pub fn read_sandbox(plan: &PodPlan) -> Option<(Sandbox, Vec<Container>)> {
    let f: SandboxFile = podrun_runtime::state::read_json(&plan.state_dir.join(SANDBOX_RECORD))
        .ok()
        .flatten()?;
    let sandbox = Sandbox {
        id: plan.id.clone(),
        plan: plan.clone(),
        config: un_b64(&f.config)?,
        runtime_handler: f.runtime_handler,
        created_at_ns: f.created_at_ns,
        stopped: f.stopped,
    };
    let mut containers = Vec::new();
    if let Ok(entries) = std::fs::read_dir(plan.state_dir.join(CONTAINER_RECORDS)) {
        for e in entries.flatten() {
            let path = e.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_owned)
            else {
                continue;
            };
            let Ok(Some(cf)) = podrun_runtime::state::read_json::<ContainerFile>(&path) else {
                continue;
            };
            let Some(config) = un_b64(&cf.config) else {
                continue;
            };
            containers.push(Container {
                id,
                sandbox_id: plan.id.clone(),
                config,
                created_at_ns: cf.created_at_ns,
                image_id: cf.image_id,
                log_path: cf.log_path,
                user: cf.user,
            });
        }
    }
    Some((sandbox, containers))
}

/// In-memory index: one writer at a time (a std mutex held only for map operations),
/// cloned snapshots for readers.
#[derive(Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sandboxes: HashMap<String, Sandbox>,
    containers: HashMap<String, Container>,
    /// name key -> id, for sandboxes and containers.
    names: HashMap<String, String>,
}

impl Store {
    /// Reserve a name for `id`; Err(existing id) if taken.
    pub fn reserve_name(&self, key: &str, id: &str) -> Result<(), String> {
        let mut g = self.inner.lock().unwrap();
        if let Some(existing) = g.names.get(key) {
            return Err(existing.clone());
        }
        g.names.insert(key.to_owned(), id.to_owned());
        Ok(())
    }

    pub fn release_name(&self, key: &str, id: &str) {
        let mut g = self.inner.lock().unwrap();
        if g.names.get(key).is_some_and(|v| v == id) {
            g.names.remove(key);
        }
    }

    pub fn add_sandbox(&self, s: Sandbox) {
        let mut g = self.inner.lock().unwrap();
        g.names.insert(s.name_key(), s.id.clone());
        g.sandboxes.insert(s.id.clone(), s);
    }

    pub fn update_sandbox(&self, id: &str, f: impl FnOnce(&mut Sandbox)) -> Option<Sandbox> {
        let mut g = self.inner.lock().unwrap();
        let s = g.sandboxes.get_mut(id)?;
        f(s);
        Some(s.clone())
    }

    pub fn remove_sandbox(&self, id: &str) {
        let mut g = self.inner.lock().unwrap();
        if let Some(s) = g.sandboxes.remove(id) {
            let key = s.name_key();
            if g.names.get(&key).is_some_and(|v| v == id) {
                g.names.remove(&key);
            }
        }
        let gone: Vec<String> = g
            .containers
            .values()
            .filter(|c| c.sandbox_id == id)
            .map(|c| c.id.clone())
            .collect();
        for c in gone {
            g.containers.remove(&c);
        }
        g.names.retain(|_, v| v != id);
    }

    pub fn sandbox(&self, id: &str) -> Option<Sandbox> {
        self.inner.lock().unwrap().sandboxes.get(id).cloned()
    }

    /// Find a sandbox by full id or unique id prefix, as containerd does.
    pub fn find_sandbox(&self, id: &str) -> Option<Sandbox> {
        let g = self.inner.lock().unwrap();
        if let Some(s) = g.sandboxes.get(id) {
            return Some(s.clone());
        }
        if id.is_empty() {
            return None;
        }
        let mut found = g.sandboxes.values().filter(|s| s.id.starts_with(id));
        match (found.next(), found.next()) {
            (Some(s), None) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn sandboxes(&self) -> Vec<Sandbox> {
        self.inner
            .lock()
            .unwrap()
            .sandboxes
            .values()
            .cloned()
            .collect()
    }

    pub fn add_container(&self, c: Container, name_key: String) {
        let mut g = self.inner.lock().unwrap();
        g.names.insert(name_key, c.id.clone());
        g.containers.insert(c.id.clone(), c);
    }

    pub fn remove_container(&self, id: &str) {
        let mut g = self.inner.lock().unwrap();
        g.containers.remove(id);
        g.names.retain(|_, v| v != id);
    }

    pub fn find_container(&self, id: &str) -> Option<Container> {
        let g = self.inner.lock().unwrap();
        if let Some(c) = g.containers.get(id) {
            return Some(c.clone());
        }
        if id.is_empty() {
            return None;
        }
        let mut found = g.containers.values().filter(|c| c.id.starts_with(id));
        match (found.next(), found.next()) {
            (Some(c), None) => Some(c.clone()),
            _ => None,
        }
    }

    /// The containers of one sandbox.
    pub fn containers_of(&self, sandbox_id: &str) -> Vec<Container> {
        self.inner
            .lock()
            .unwrap()
            .containers
            .values()
            .filter(|c| c.sandbox_id == sandbox_id)
            .cloned()
            .collect()
    }

    pub fn containers(&self) -> Vec<Container> {
        self.inner
            .lock()
            .unwrap()
            .containers
            .values()
            .cloned()
            .collect()
    }
}

pub type SharedStore = Arc<Store>;

#[cfg(test)]
mod tests {
    use super::*;
    use podrun_cri_proto::v1::PodSandboxMetadata;

    #[test]
    fn names_are_reserved_once() {
        let s = Store::default();
        s.reserve_name("a_ns_uid_0", "id1").unwrap();
        assert_eq!(s.reserve_name("a_ns_uid_0", "id2").unwrap_err(), "id1");
        s.release_name("a_ns_uid_0", "id2");
        assert!(s.reserve_name("a_ns_uid_0", "id3").is_err());
        s.release_name("a_ns_uid_0", "id1");
        s.reserve_name("a_ns_uid_0", "id3").unwrap();
    }

    #[test]
    fn sandbox_name_key_includes_the_attempt() {
        let mut c = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            ..Default::default()
        };
        let a = sandbox_name_key(&c);
        c.metadata.as_mut().unwrap().attempt = 1;
        assert_ne!(a, sandbox_name_key(&c));
        assert_eq!(a, "web_default_u1_0");
    }

    #[test]
    fn config_round_trips_through_base64() {
        let c = ContainerConfig {
            command: vec!["sleep".into(), "1".into()],
            log_path: "c/0.log".into(),
            ..Default::default()
        };
        let back: ContainerConfig = un_b64(&b64(&c)).unwrap();
        assert_eq!(back, c);
    }
}
