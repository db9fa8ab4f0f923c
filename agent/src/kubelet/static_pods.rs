//! Static pods: Pod manifests in a directory on the node (`--pod-manifest-path`, default
//! /etc/podrun/manifests) that the kubelet runs on its own, API server or not, as
//! kubelet's file source does. Each gets a name suffixed with the node's, a UID derived
//! from the node and the manifest (a changed manifest is a new pod), the annotations
//! kubelet sets, and a mirror pod in the API so `kubectl get pods` shows it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use sha2::{Digest, Sha256};
use tracing::warn;

pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";

/// Whether a pod came from a manifest file.
pub fn is_static(p: &Pod) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE))
        .is_some_and(|s| s == "file")
}

/// Whether a pod is the API's mirror of a static pod (the kubelet never runs those).
pub fn is_mirror(p: &Pod) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_MIRROR))
}

/// A UID of the node and the manifest, in the form of an API UID.
fn uid_of(node: &str, file: &Path, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(file.to_string_lossy().as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    let x = hex::encode(h.finalize());
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Reads one manifest: a Pod, defaulted as the API server would, bound to `node`.
pub fn parse(node: &str, file: &Path, text: &str) -> Result<Pod, String> {
    let value: serde_json::Value =
        serde_norway::from_str(text).map_err(|e| format!("{}: {e}", file.display()))?;
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind != "Pod" {
        return Err(format!(
            "{}: kind {kind:?}: only Pods can be static",
            file.display()
        ));
    }
    let mut pod: Pod = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("{}: {}: {}", file.display(), e.path(), e.inner()))?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("{}: metadata.name is required", file.display()))?;
    let spec = pod
        .spec
        .as_mut()
        .ok_or_else(|| format!("{}: spec is required", file.display()))?;
    if spec.containers.is_empty() {
        return Err(format!(
            "{}: spec.containers: at least one container is required",
            file.display()
        ));
    }
    let uid = uid_of(node, file, text);
    spec.node_name = Some(node.to_owned());
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    for c in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        if c.image_pull_policy.is_none() {
            let image = c.image.clone().unwrap_or_default();
            let last = image.rsplit('/').next().unwrap_or("");
            let tagged = (last.contains(':') && !last.ends_with(":latest")) || image.contains('@');
            c.image_pull_policy = Some(if tagged { "IfNotPresent" } else { "Always" }.into());
        }
    }
    let md = &mut pod.metadata;
    md.name = Some(format!("{name}-{node}"));
    md.namespace.get_or_insert_with(|| "default".into());
    md.uid = Some(uid.clone());
    let ann = md.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(CONFIG_SOURCE.into(), "file".into());
    ann.insert(CONFIG_HASH.into(), uid);
    ann.insert(CONFIG_SEEN.into(), jiff::Timestamp::now().to_string());
    Ok(pod)
}

/// The static pods of `dir`, by UID; files that do not parse are skipped with a warning
/// naming them. A missing directory holds none.
pub fn read_dir(dir: &Path, node: &str) -> BTreeMap<String, Pod> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !name.starts_with('.') && p.is_file()
        })
        .collect();
    files.sort();
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                warn!(file = %f.display(), error = %e, "static pod manifest");
                continue;
            }
        };
        match parse(node, &f, &text) {
            Ok(p) => {
                out.insert(p.metadata.uid.clone().unwrap_or_default(), p);
            }
            Err(e) => warn!(error = %e, "static pod manifest skipped"),
        }
    }
    out
}

/// The mirror of a static pod: the same pod in the API, marked and owned by the Node.
pub fn mirror(p: &Pod, node_uid: &str) -> Pod {
    let mut m = p.clone();
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    m.status = None;
    let hash = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_HASH).cloned())
        .unwrap_or_default();
    m.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_MIRROR.into(), hash);
    let node = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    m.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node,
            uid: node_uid.to_owned(),
            controller: Some(true),
            ..Default::default()
        },
    ]);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: web\n    image: nginx:1.25\n";

    #[test]
    fn manifests_become_pods_of_the_node() {
        let p = parse("w1", Path::new("/m/web.yaml"), WEB).unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-w1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert!(is_static(&p));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("w1"));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        // The same manifest is the same pod; another node's or a changed one is not.
        let again = parse("w1", Path::new("/m/web.yaml"), WEB).unwrap();
        assert_eq!(p.metadata.uid, again.metadata.uid);
        assert_ne!(
            p.metadata.uid,
            parse("w2", Path::new("/m/web.yaml"), WEB)
                .unwrap()
                .metadata
                .uid
        );
        let changed = WEB.replace("1.25", "1.26");
        assert_ne!(
            p.metadata.uid,
            parse("w1", Path::new("/m/web.yaml"), &changed)
                .unwrap()
                .metadata
                .uid
        );
        let m = mirror(&p, "node-uid");
        assert!(is_mirror(&m));
        assert_eq!(m.metadata.owner_references.unwrap()[0].kind, "Node");
    }

    #[test]
    fn bad_manifests_name_the_file_and_field() {
        let e = parse("w1", Path::new("/m/x.yaml"), "kind: Deployment\n").unwrap_err();
        assert!(e.contains("/m/x.yaml") && e.contains("only Pods"), "{e}");
        let e = parse(
            "w1",
            Path::new("/m/x.yaml"),
            "kind: Pod\nmetadata: {name: a}\nspec:\n  containers: 3\n",
        )
        .unwrap_err();
        assert!(e.contains("spec.containers"), "{e}");
        let e = parse(
            "w1",
            Path::new("/m/x.yaml"),
            "kind: Pod\nmetadata: {}\nspec: {containers: [{name: a}]}\n",
        )
        .unwrap_err();
        assert!(e.contains("metadata.name"), "{e}");
        let e = parse("w1", Path::new("/m/x.yaml"), "kind: Pod\n  bad: [").unwrap_err();
        assert!(e.contains("/m/x.yaml"), "{e}");
    }

    #[test]
    fn a_directory_of_manifests() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("web.yaml"), WEB).unwrap();
        std::fs::write(d.path().join("broken.yaml"), "kind: Pod\n").unwrap();
        std::fs::write(d.path().join(".hidden.yaml"), WEB).unwrap();
        let pods = read_dir(d.path(), "w1");
        assert_eq!(pods.len(), 1);
        assert!(read_dir(&d.path().join("missing"), "w1").is_empty());
    }
}
