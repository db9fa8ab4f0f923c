//! `/etc/podrun/config.toml`: defaults for the global options and the agent's, one key
//! per option (`cgroup_driver = "systemd"`, `cni_bin_dir = ["/opt/cni/bin"]`, ...). A
//! key is applied as its `PODRUN_*` environment variable unless that is already set, so
//! the order of precedence is: command-line flag, environment, config file, built-in
//! default. Unknown keys are errors that name the file and the key.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const DEFAULT_CONFIG: &str = "/etc/podrun/config.toml";

/// Config key -> environment variable of the option it sets.
const KEYS: &[(&str, &str)] = &[
    ("root", "PODRUN_ROOT"),
    ("state", "PODRUN_STATE"),
    ("log_root", "PODRUN_LOG_ROOT"),
    ("cgroup_driver", "PODRUN_CGROUP_DRIVER"),
    ("cgroup_root", "PODRUN_CGROUP_ROOT"),
    ("network", "PODRUN_NETWORK"),
    ("cni_conf_dir", "PODRUN_CNI_CONF_DIR"),
    ("cni_bin_dir", "PODRUN_CNI_BIN_DIR"),
    ("hosts_dir", "PODRUN_HOSTS_DIR"),
    ("pod_max_pids", "PODRUN_POD_MAX_PIDS"),
    ("pull", "PODRUN_PULL"),
    ("socket", "PODRUN_SOCKET"),
    ("stream_addr", "PODRUN_STREAM_ADDR"),
    ("server", "PODRUN_SERVER"),
    ("token", "PODRUN_TOKEN"),
    ("certificate_authority", "PODRUN_CERTIFICATE_AUTHORITY"),
    ("kubeconfig", "PODRUN_KUBECONFIG"),
    ("node_name", "PODRUN_NODE_NAME"),
    ("node_ip", "PODRUN_NODE_IP"),
    ("runtime_endpoint", "PODRUN_RUNTIME_ENDPOINT"),
    ("kubelet_port", "PODRUN_KUBELET_PORT"),
    ("max_pods", "PODRUN_MAX_PODS"),
    ("pod_manifest_path", "PODRUN_POD_MANIFEST_PATH"),
    ("eviction_hard", "PODRUN_EVICTION_HARD"),
    ("cluster_network", "PODRUN_CLUSTER_NETWORK"),
    ("cluster_cidr", "PODRUN_CLUSTER_CIDR"),
    ("network_backend", "PODRUN_NETWORK_BACKEND"),
    ("cluster_dns", "PODRUN_CLUSTER_DNS"),
    ("cluster_domain", "PODRUN_CLUSTER_DOMAIN"),
];

/// Keys whose value is a number.
const NUMBERS: &[&str] = &["pod_max_pids", "kubelet_port", "max_pods"];

/// The config file named by `--config FILE` / `--config=FILE` in `args`, else
/// `PODRUN_CONFIG`, else the default (which may be missing).
pub fn config_path(args: &[String]) -> (PathBuf, bool) {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            if let Some(p) = it.next() {
                return (PathBuf::from(p), true);
            }
        } else if let Some(p) = a.strip_prefix("--config=") {
            return (PathBuf::from(p), true);
        }
    }
    match std::env::var_os("PODRUN_CONFIG") {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    }
}

/// Parse a config file into (environment variable, value) pairs.
pub fn parse(path: &Path, text: &str) -> Result<Vec<(&'static str, String)>> {
    let table: toml::Table =
        toml::from_str(text).with_context(|| format!("{}: not valid TOML", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let Some((_, env)) = KEYS.iter().find(|(k, _)| *k == key) else {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            bail!(
                "{}: unknown key {key:?} (known: {})",
                path.display(),
                known.join(", ")
            );
        };
        let v = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) if NUMBERS.contains(&key.as_str()) => n.to_string(),
            toml::Value::Array(items) => {
                let mut parts = Vec::new();
                for i in items {
                    match i {
                        toml::Value::String(s) => parts.push(s),
                        other => bail!(
                            "{}: {key}: list items must be strings, got {other}",
                            path.display()
                        ),
                    }
                }
                parts.join(",")
            }
            other => bail!("{}: {key}: must be a string, got {other}", path.display()),
        };
        out.push((*env, v));
    }
    Ok(out)
}

/// Apply the config file before the command line is parsed (and before any thread
/// exists, as setting the environment requires).
pub fn apply(args: &[String]) -> Result<()> {
    let (path, explicit) = config_path(args);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    for (env, value) in parse(&path, &text)? {
        if std::env::var_os(env).is_none() {
            std::env::set_var(env, value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_environment_variables() {
        let v = parse(
            Path::new("c.toml"),
            "cgroup_driver = \"systemd\"\ncni_bin_dir = [\"/a\", \"/b\"]\n",
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                ("PODRUN_CGROUP_DRIVER", "systemd".to_string()),
                ("PODRUN_CNI_BIN_DIR", "/a,/b".to_string())
            ]
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_key() {
        let e = parse(
            Path::new("/etc/podrun/config.toml"),
            "cgroup_drvier = \"x\"",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/etc/podrun/config.toml") && e.contains("cgroup_drvier"),
            "{e}"
        );
        let e = parse(Path::new("c.toml"), "root = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("root"), "{e}");
        assert!(parse(Path::new("c.toml"), "root = ").is_err());
        assert_eq!(
            parse(Path::new("c.toml"), "pod_max_pids = 100").unwrap(),
            vec![("PODRUN_POD_MAX_PIDS", "100".to_string())]
        );
    }

    #[test]
    fn config_flag_wins_over_the_default() {
        let args: Vec<String> = ["podrun", "--config", "/x.toml", "agent"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(config_path(&args), (PathBuf::from("/x.toml"), true));
        let args: Vec<String> = ["podrun", "--config=/y.toml"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(config_path(&args).0, PathBuf::from("/y.toml"));
    }
}
