//! Source NAT for pod egress (`ipMasq`). Traffic from a pod address to anything
//! outside its subnet (and not multicast) is masqueraded.
//!
//! With `nft` available the rules live in podrun's own tables (`ip podrun` /
//! `ip6 podrun`, chain `postrouting`), one rule per pod address tagged with a comment
//! derived from the attachment so DEL finds exactly its rules. Without `nft`, legacy
//! iptables gets a chain `PODRUN-MASQ-<hash>` per attachment in the nat table and one
//! jump from POSTROUTING. Nothing else in either firewall is touched.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("failed to run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} {args} failed: {stderr}")]
    Failed {
        program: String,
        args: String,
        stderr: String,
    },
}

/// Which firewall front end to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Nft(PathBuf),
    Iptables { v4: PathBuf, v6: PathBuf },
}

impl Backend {
    /// nft when installed, else iptables; None when neither is.
    pub fn detect() -> Option<Backend> {
        if let Some(nft) = find_program("nft") {
            return Some(Backend::Nft(nft));
        }
        let v4 = find_program("iptables")?;
        let v6 = find_program("ip6tables").unwrap_or_else(|| v4.clone());
        Some(Backend::Iptables { v4, v6 })
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The tag identifying one attachment's rules: `<network>:<hash>`. The network name
/// is kept readable so GC of one network never touches another network's rules.
pub fn attachment_tag(network: &str, container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{network}\n{container_id}\n{ifname}").as_bytes());
    format!("{network}:{}", hex::encode(&digest[..8]))
}

fn run(program: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Result<String, MasqError> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|source| MasqError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| MasqError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(MasqError::Failed {
            program: program.display().to_string(),
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const MULTICAST_V4: &str = "224.0.0.0/4";
const MULTICAST_V6: &str = "ff00::/8";

/// Installs masquerading for the pod addresses `ips` (each with its subnet). Repeating
/// it for the same attachment replaces the earlier rules.
pub fn setup_masquerade(backend: &Backend, tag: &str, ips: &[IpNet]) -> Result<(), MasqError> {
    teardown_masquerade(backend, tag)?;
    match backend {
        Backend::Nft(nft) => {
            let mut script = String::new();
            for ip in ips {
                let (family, proto, mcast) = match ip.addr() {
                    IpAddr::V4(_) => ("ip", "ip", MULTICAST_V4),
                    IpAddr::V6(_) => ("ip6", "ip6", MULTICAST_V6),
                };
                script.push_str(&format!(
                    "add table {family} podrun\n\
                     add chain {family} podrun postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
                     add rule {family} podrun postrouting {proto} saddr {addr} {proto} daddr != {subnet} {proto} daddr != {mcast} masquerade comment \"podrun:{tag}\"\n",
                    addr = ip.addr(),
                    subnet = ip.trunc(),
                ));
            }
            if !script.is_empty() {
                run(nft, &["-f", "-"], Some(&script))?;
            }
            Ok(())
        }
        Backend::Iptables { v4, v6 } => {
            let chain = iptables_chain(tag);
            for ip in ips {
                let (prog, mcast) = if ip.addr().is_ipv4() {
                    (v4, MULTICAST_V4)
                } else {
                    (v6, MULTICAST_V6)
                };
                let subnet = ip.trunc().to_string();
                let addr = ip.addr().to_string();
                let comment = format!("podrun:{tag}");
                run(prog, &["-w", "-t", "nat", "-N", &chain], None)?;
                run(
                    prog,
                    &[
                        "-w",
                        "-t",
                        "nat",
                        "-A",
                        &chain,
                        "-d",
                        &subnet,
                        "-j",
                        "ACCEPT",
                        "-m",
                        "comment",
                        "--comment",
                        &comment,
                    ],
                    None,
                )?;
                run(
                    prog,
                    &[
                        "-w",
                        "-t",
                        "nat",
                        "-A",
                        &chain,
                        "!",
                        "-d",
                        mcast,
                        "-j",
                        "MASQUERADE",
                        "-m",
                        "comment",
                        "--comment",
                        &comment,
                    ],
                    None,
                )?;
                run(
                    prog,
                    &[
                        "-w",
                        "-t",
                        "nat",
                        "-A",
                        "POSTROUTING",
                        "-s",
                        &addr,
                        "-j",
                        &chain,
                        "-m",
                        "comment",
                        "--comment",
                        &comment,
                    ],
                    None,
                )?;
            }
            Ok(())
        }
    }
}

fn iptables_chain(tag: &str) -> String {
    // iptables chain names are limited to 28 characters.
    let hash = tag.rsplit(':').next().unwrap_or(tag);
    format!("PODRUN-MASQ-{}", &hash[..hash.len().min(16)])
}

/// Removes the attachment's rules; rules, chains or tables already gone are fine.
pub fn teardown_masquerade(backend: &Backend, tag: &str) -> Result<(), MasqError> {
    let comment = format!("\"podrun:{tag}\"");
    match backend {
        Backend::Nft(nft) => {
            for family in ["ip", "ip6"] {
                let Ok(listing) = run(
                    nft,
                    &["-a", "list", "chain", family, "podrun", "postrouting"],
                    None,
                ) else {
                    continue;
                };
                for line in listing.lines().filter(|l| l.contains(&comment)) {
                    if let Some(handle) = line.rsplit("# handle ").next().map(str::trim) {
                        if handle.chars().all(|c| c.is_ascii_digit()) && !handle.is_empty() {
                            // A concurrent DEL may have removed it already.
                            let _ = run(
                                nft,
                                &[
                                    "delete",
                                    "rule",
                                    family,
                                    "podrun",
                                    "postrouting",
                                    "handle",
                                    handle,
                                ],
                                None,
                            );
                        }
                    }
                }
            }
            Ok(())
        }
        Backend::Iptables { v4, v6 } => {
            let chain = iptables_chain(tag);
            for prog in [v4, v6] {
                let Ok(rules) = run(prog, &["-w", "-t", "nat", "-S", "POSTROUTING"], None) else {
                    continue;
                };
                for rule in rules.lines().filter(|l| l.contains(&format!("-j {chain}"))) {
                    let args: Vec<&str> = rule.split_whitespace().skip(2).collect();
                    let mut full = vec!["-w", "-t", "nat", "-D", "POSTROUTING"];
                    full.extend(args.iter().map(|a| a.trim_matches('"')));
                    let _ = run(prog, &full, None);
                }
                let _ = run(prog, &["-w", "-t", "nat", "-F", &chain], None);
                let _ = run(prog, &["-w", "-t", "nat", "-X", &chain], None);
            }
            Ok(())
        }
    }
}

/// Removes the rules of `network` whose tag is not in `keep` (the GC command).
pub fn garbage_collect(backend: &Backend, network: &str, keep: &[String]) -> Result<(), MasqError> {
    let prefix = format!("podrun:{network}:");
    let mut stale = std::collections::BTreeSet::new();
    match backend {
        Backend::Nft(nft) => {
            for family in ["ip", "ip6"] {
                let Ok(listing) = run(
                    nft,
                    &["list", "chain", family, "podrun", "postrouting"],
                    None,
                ) else {
                    continue;
                };
                for line in listing.lines() {
                    if let Some(rest) = line.split(&format!("comment \"{prefix}")).nth(1) {
                        let hash: String =
                            rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
                        stale.insert(format!("{network}:{hash}"));
                    }
                }
            }
        }
        Backend::Iptables { v4, .. } => {
            let Ok(rules) = run(v4, &["-w", "-t", "nat", "-S", "POSTROUTING"], None) else {
                return Ok(());
            };
            for line in rules.lines() {
                if let Some(rest) = line.split(&prefix).nth(1) {
                    let hash: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
                    stale.insert(format!("{network}:{hash}"));
                }
            }
        }
    }
    for tag in stale.iter().filter(|t| !keep.contains(t)) {
        teardown_masquerade(backend, tag)?;
    }
    Ok(())
}

/// Whether the attachment's rules are present (for CHECK).
pub fn has_masquerade(backend: &Backend, tag: &str) -> bool {
    match backend {
        Backend::Nft(nft) => ["ip", "ip6"].iter().any(|family| {
            run(
                nft,
                &["list", "chain", family, "podrun", "postrouting"],
                None,
            )
            .map(|l| l.contains(&format!("\"podrun:{tag}\"")))
            .unwrap_or(false)
        }),
        Backend::Iptables { v4, .. } => {
            run(v4, &["-w", "-t", "nat", "-S", &iptables_chain(tag)], None).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stable_and_distinct() {
        let a = attachment_tag("net", "c1", "eth0");
        assert_eq!(a, attachment_tag("net", "c1", "eth0"));
        assert_ne!(a, attachment_tag("net", "c2", "eth0"));
        assert!(a.starts_with("net:"));
        assert!(iptables_chain(&a).len() <= 28);
    }
}
