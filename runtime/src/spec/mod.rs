//! spec: Pod manifests and the Kubernetes semantics podrun applies to them.
//!
//! It owns reading a multi-document YAML file (one v1 Pod plus the ConfigMaps and Secrets
//! it refers to) into k8s-openapi types, validating it the way the API server would, the
//! API server's defaults, and the kubelet rules that turn a Pod into what a runtime needs:
//! the QoS class, cgroup resources, the effective command line, the environment, the
//! pod's hostname, and the files of configMap/secret volumes. Everything here is pure: no
//! privileges, no syscalls beyond reading the manifest and a few /proc files.

mod command;
mod defaults;
mod env;
mod hostname;
mod manifest;
mod quantity;
mod resource_names;
mod resources;
mod validate;
mod volumes;

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use serde::{Deserialize, Serialize};

pub use command::{effective_command, expand};
pub use defaults::{apply_defaults, default_image_pull_policy};
pub use env::{resolve_env, EnvContext};
pub use hostname::{truncate_pod_hostname, HOSTNAME_MAX_LEN};
pub use manifest::{load_manifest, parse_manifest};
pub use quantity::{parse_quantity_bytes, parse_quantity_milli, parse_quantity_milli_cpu};
pub use resources::{container_resources, pod_resources, qos_class};
pub use volumes::volume_files;

/// A parsed and validated Pod manifest: the Pod plus the ConfigMaps and Secrets given
/// next to it in the same file, keyed by name.
#[derive(Debug, Clone, PartialEq)]
pub struct PodManifest {
    pub pod: Pod,
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
    /// The file it came from, used in error messages.
    pub source: PathBuf,
}

impl PodManifest {
    /// The pod's name (validated non-empty by the loader).
    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    /// The pod's namespace, "default" when unset.
    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// Init containers (regular and native sidecars, in spec order) then app containers:
    /// the order in which the kubelet starts them.
    pub fn containers_in_start_order(&self) -> Vec<&Container> {
        all_containers(&self.pod).collect()
    }
}

/// Kubernetes QoS class of a pod (kept local so this module does not depend on the
/// cgroup module's copy; callers map one to the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// Lower-case name as used in cgroup paths ("kubepods-burstable.slice", ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            QosClass::Guaranteed => "guaranteed",
            QosClass::Burstable => "burstable",
            QosClass::BestEffort => "besteffort",
        }
    }

    /// The name the API reports in `status.qosClass`.
    pub fn as_kubernetes_str(&self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// An init container with `restartPolicy: Always` is a native sidecar (KEP-753): it is
/// started in init order but keeps running next to the app containers.
pub fn is_native_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Init containers then app containers, in spec order.
pub(crate) fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .chain(spec.map(|s| s.containers.as_slice()).unwrap_or_default())
}

/// serde_norway stops expanding a document's aliases after this many expansions per
/// event (node) of the document, with "repetition limit exceeded".
pub const ALIAS_EXPANSIONS_PER_NODE: usize = 100;

/// Errors of this module. Each variant names the step that failed; messages are one line
/// meant to be shown to the user as is.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: read manifest: {source}", path.display())]
    ReadManifest {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The YAML itself is malformed.
    #[error("{}: document {document}: {message}", path.display())]
    ParseYaml {
        path: PathBuf,
        document: usize,
        message: String,
    },
    /// A document's aliases expand past serde_norway's repetition limit (a "billion
    /// laughs" document); `source` is the parser's own error.
    #[error(
        "{}: document {document}: YAML aliases expand beyond the allowed size \
         (at most {ALIAS_EXPANSIONS_PER_NODE} alias expansions per node written): a YAML bomb?",
        path.display()
    )]
    YamlBomb {
        path: PathBuf,
        document: usize,
        source: serde_norway::Error,
    },
    /// A document is well-formed YAML but not a valid object; `field` is the path inside it.
    #[error("{}: {document}: {field}: {message}", path.display())]
    InvalidField {
        path: PathBuf,
        /// "document 1 (Pod sidecar-demo)"
        document: String,
        field: String,
        message: String,
    },
    /// A problem with the file as a whole (no Pod, two Pods).
    #[error("{}: {message}", path.display())]
    InvalidManifest { path: PathBuf, message: String },
    #[error("invalid quantity {value:?}: {reason}")]
    InvalidQuantity { value: String, reason: String },
    #[error("{container}: no command: image has no Entrypoint/Cmd and the pod sets none")]
    NoCommand { container: String },
    #[error("{container}: env {variable}: {reason}")]
    ResolveEnv {
        container: String,
        variable: String,
        reason: String,
    },
    #[error("volume {volume}: {reason}")]
    VolumeFiles { volume: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_names() {
        assert_eq!(QosClass::Guaranteed.as_str(), "guaranteed");
        assert_eq!(QosClass::Burstable.as_str(), "burstable");
        assert_eq!(QosClass::BestEffort.as_str(), "besteffort");
        assert_eq!(QosClass::BestEffort.as_kubernetes_str(), "BestEffort");
    }

    #[test]
    fn sidecar_detection_and_start_order() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  initContainers:
  - {name: setup, image: busybox}
  - {name: proxy, image: envoy, restartPolicy: Always}
  containers:
  - {name: app, image: nginx}
"#;
        let m = parse_manifest(text, std::path::Path::new("p.yaml")).unwrap();
        let order: Vec<_> = m
            .containers_in_start_order()
            .iter()
            .map(|c| (c.name.as_str(), is_native_sidecar(c)))
            .collect();
        assert_eq!(
            order,
            vec![("setup", false), ("proxy", true), ("app", false)]
        );
        assert_eq!(m.name(), "p");
        assert_eq!(m.namespace(), "default");
    }
}
