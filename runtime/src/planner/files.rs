//! The files every container of a pod shares: /etc/hosts, /etc/hostname and
//! /etc/resolv.conf, written once to the pod's state directory and bind-mounted.

use std::path::Path;

use super::{DnsSpec, HostAlias, PlanError};
use crate::state;

/// The files in the pod's state directory and where containers see them.
pub(crate) const POD_FILES: [(&str, &str); 3] = [
    ("hosts", "/etc/hosts"),
    ("hostname", "/etc/hostname"),
    ("resolv.conf", "/etc/resolv.conf"),
];

/// /etc/hosts of a pod: the host's own file with the host's network, otherwise
/// localhost, the IPv6 names and the pod's address under its hostname, as kubelet writes
/// it; then the aliases.
pub(crate) fn hosts(
    host_network: bool,
    hostname: &str,
    pod_ip: Option<&str>,
    aliases: &[HostAlias],
) -> String {
    let mut out = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        format!(
            "# Kubernetes-managed hosts file.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\n\
             fe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n\
             {}\t{hostname}\n",
            pod_ip.unwrap_or("127.0.1.1")
        )
    };
    for a in aliases {
        out.push_str(&format!("{}\t{}\n", a.ip, a.hostnames.join("\t")));
    }
    out
}

/// resolv.conf content from a DNS configuration.
pub fn resolv_conf(dns: &DnsSpec) -> String {
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for s in &dns.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

/// Write the pod's files to `state_dir`.
pub(crate) fn write(
    state_dir: &Path,
    hosts: String,
    hostname: &str,
    dns: Option<&DnsSpec>,
) -> Result<(), PlanError> {
    let resolv = match dns {
        Some(d) => resolv_conf(d),
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    for (file, content) in [
        ("hosts", hosts),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv),
    ] {
        state::write_atomic(&state_dir.join(file), content.as_bytes(), 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = DnsSpec {
            servers: vec!["10.0.0.10".into(), "8.8.8.8".into()],
            searches: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns),
            "search ns.svc.cluster.local cluster.local\nnameserver 10.0.0.10\nnameserver 8.8.8.8\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_of_a_pod_name_it_and_its_aliases() {
        let aliases = [HostAlias {
            ip: "10.1.2.3".into(),
            hostnames: vec!["foo.local".into(), "bar.local".into()],
        }];
        let h = hosts(false, "web", Some("10.88.0.5"), &aliases);
        assert!(h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(h.contains("\n10.88.0.5\tweb\n"), "{h}");
        assert!(h.ends_with("10.1.2.3\tfoo.local\tbar.local\n"), "{h}");
        assert!(hosts(false, "web", None, &[]).contains("\n127.0.1.1\tweb\n"));
    }
}
