//! The defaults the API server fills in on create, so that a pod run from a file behaves
//! like the same pod applied to a cluster.

use super::{all_containers, PodManifest};

/// Kubernetes' default for `imagePullPolicy`: Always when the tag is `latest` or there is
/// neither tag nor digest (which means `latest`), IfNotPresent otherwise.
pub fn default_image_pull_policy(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    // A tag is a ':' after the last '/', so "registry:5000/app" has none.
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.split_once(':').map(|(_, t)| t);
    match (tag, digest) {
        (Some("latest"), _) => "Always",
        (None, None) => "Always",
        _ => "IfNotPresent",
    }
}

/// Read a random version-4 UUID from the kernel, so no RNG crate is needed.
pub(crate) fn new_uid() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/random/uuid") {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        // Not Linux or /proc not mounted: still unique per process and time, v4-shaped.
        _ => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let x = nanos ^ ((std::process::id() as u128) << 96);
            let h = format!("{x:032x}");
            format!(
                "{}-{}-4{}-8{}-{}",
                &h[0..8],
                &h[8..12],
                &h[13..16],
                &h[17..20],
                &h[20..32]
            )
        }
    }
}

/// The API server's name for an object with only `generateName`: the prefix plus five
/// characters from an alphabet without vowels or look-alikes.
pub(crate) fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let random: Vec<u8> = new_uid().bytes().filter(u8::is_ascii_hexdigit).collect();
    let suffix: String = random
        .chunks(2)
        .take(5)
        .map(|pair| {
            let v = pair.iter().fold(0usize, |acc, b| {
                acc * 16 + (*b as char).to_digit(16).unwrap_or(0) as usize
            });
            ALPHABET[v % ALPHABET.len()] as char
        })
        .collect();
    format!("{prefix}{suffix}")
}

/// Fill in the defaults the API server would: namespace ("default" or the override),
/// uid, restartPolicy Always, terminationGracePeriodSeconds 30, dnsPolicy ClusterFirst,
/// and per container terminationMessagePath/Policy, imagePullPolicy, port protocol TCP,
/// plus defaultMode 0644 on configMap/secret volumes. Values already set are kept.
pub fn apply_defaults(m: &mut PodManifest, namespace_override: Option<&str>) {
    let ns = namespace_override
        .map(str::to_string)
        .or_else(|| m.pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_string());
    m.pod.metadata.namespace = Some(ns.clone());
    for cm in m.config_maps.values_mut() {
        cm.metadata.namespace = Some(ns.clone());
    }
    for s in m.secrets.values_mut() {
        s.metadata.namespace = Some(ns.clone());
        // The API server folds stringData into data on write.
        if let Some(sd) = s.string_data.take() {
            let data = s.data.get_or_insert_with(Default::default);
            for (k, v) in sd {
                data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
        }
        s.type_.get_or_insert_with(|| "Opaque".to_string());
    }
    if m.pod.metadata.uid.as_deref().unwrap_or_default().is_empty() {
        m.pod.metadata.uid = Some(new_uid());
    }

    let spec = m.pod.spec.get_or_insert_with(Default::default);
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.enable_service_links.get_or_insert(true);
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(cm) = v.config_map.as_mut() {
            cm.default_mode.get_or_insert(0o644);
        }
        if let Some(s) = v.secret.as_mut() {
            s.default_mode.get_or_insert(0o644);
        }
        if let Some(p) = v.projected.as_mut() {
            p.default_mode.get_or_insert(0o644);
        }
    }
    let init = spec.init_containers.iter_mut().flatten();
    for c in init.chain(spec.containers.iter_mut()) {
        c.termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy
            .get_or_insert_with(|| "File".into());
        if c.image_pull_policy.is_none() {
            let policy = default_image_pull_policy(c.image.as_deref().unwrap_or_default());
            c.image_pull_policy = Some(policy.to_string());
        }
        for p in c.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
        }
        // Requests default to limits when only limits are set (ResourceRequirements
        // defaulting), which the QoS class and cgroup values depend on.
        if let Some(r) = c.resources.as_mut() {
            if let Some(limits) = r.limits.clone() {
                let requests = r.requests.get_or_insert_with(Default::default);
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        }
    }
    debug_assert!(all_containers(&m.pod).all(|c| c.image_pull_policy.is_some()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_manifest;
    use std::path::Path;

    #[test]
    fn generated_names() {
        let a = generate_name("web-");
        assert_eq!(a.len(), 9, "{a}");
        assert!(a.starts_with("web-"));
        assert!(
            a[4..]
                .bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)),
            "{a}"
        );
        let m = parse_manifest(
            "apiVersion: v1\nkind: Pod\nmetadata: {generateName: job-}\nspec: {containers: [{name: c, image: x}]}\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert!(
            m.name().starts_with("job-") && m.name().len() == 9,
            "{}",
            m.name()
        );
    }

    #[test]
    fn pull_policy_table() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("docker.io/library/nginx", "Always"),
            ("localhost:5000/app", "Always"),
            ("localhost:5000/app:v1", "IfNotPresent"),
            ("localhost:5000/app:latest", "Always"),
            ("nginx@sha256:abcd", "IfNotPresent"),
            ("nginx:latest@sha256:abcd", "Always"),
            ("nginx:1.2@sha256:abcd", "IfNotPresent"),
        ] {
            assert_eq!(default_image_pull_policy(image), want, "{image}");
        }
    }

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  initContainers:
  - {name: init, image: "busybox:1.36"}
  containers:
  - name: web
    image: nginx
    ports: [{containerPort: 80}]
    resources: {limits: {cpu: "1", memory: 1Gi}}
  - name: keep
    image: app:v2
    imagePullPolicy: Never
    terminationMessagePath: /tmp/msg
  volumes:
  - {name: c, configMap: {name: cm, optional: true}}
  - {name: s, secret: {secretName: sec, optional: true, defaultMode: 0400}}
"#;

    #[test]
    fn defaults_like_the_api_server() {
        let mut m = parse_manifest(POD, Path::new("p.yaml")).unwrap();
        apply_defaults(&mut m, None);
        let meta = &m.pod.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        let uid = meta.uid.as_deref().unwrap();
        assert_eq!(uid.len(), 36, "{uid}");
        assert_eq!(uid.as_bytes()[14], b'4', "{uid}");
        let spec = m.pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let web = &spec.containers[0];
        assert_eq!(web.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(
            web.termination_message_path.as_deref(),
            Some("/dev/termination-log")
        );
        assert_eq!(web.termination_message_policy.as_deref(), Some("File"));
        assert_eq!(
            web.ports.as_ref().unwrap()[0].protocol.as_deref(),
            Some("TCP")
        );
        let requests = web.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["cpu"].0, "1");
        assert_eq!(requests["memory"].0, "1Gi");
        let keep = &spec.containers[1];
        assert_eq!(keep.image_pull_policy.as_deref(), Some("Never"));
        assert_eq!(keep.termination_message_path.as_deref(), Some("/tmp/msg"));
        let vols = spec.volumes.as_ref().unwrap();
        assert_eq!(
            vols[0].config_map.as_ref().unwrap().default_mode,
            Some(0o644)
        );
        assert_eq!(vols[1].secret.as_ref().unwrap().default_mode, Some(0o400));
    }

    #[test]
    fn keeps_set_values_and_uid_is_fresh() {
        let mut a = parse_manifest(POD, Path::new("p.yaml")).unwrap();
        let mut b = a.clone();
        apply_defaults(&mut a, None);
        apply_defaults(&mut b, None);
        assert_ne!(a.pod.metadata.uid, b.pod.metadata.uid);
        // Idempotent: a second pass changes nothing.
        let before = a.clone();
        apply_defaults(&mut a, None);
        assert_eq!(a, before);
    }

    #[test]
    fn namespace_override_wins() {
        let text = POD.replace(
            "metadata: {name: p}",
            "metadata: {name: p, namespace: team-a}",
        );
        let mut m = parse_manifest(&text, Path::new("p.yaml")).unwrap();
        let mut m2 = m.clone();
        apply_defaults(&mut m, None);
        assert_eq!(m.namespace(), "team-a");
        apply_defaults(&mut m2, Some("other"));
        assert_eq!(m2.namespace(), "other");
    }

    #[test]
    fn string_data_folds_into_data() {
        let text = format!(
            "{POD}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: sec}}\ndata: {{a: YQ==}}\nstringData: {{a: override, b: bee}}\n"
        );
        let mut m = parse_manifest(&text, Path::new("p.yaml")).unwrap();
        apply_defaults(&mut m, None);
        let s = &m.secrets["sec"];
        let data = s.data.as_ref().unwrap();
        assert_eq!(data["a"].0, b"override");
        assert_eq!(data["b"].0, b"bee");
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
    }
}
