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

use crate::nft::NftRule;

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

/// The rules of podrun's `postrouting` chains, both families, read from
/// `nft -j`; a family without the chain has none.
fn nft_postrouting_rules(nft: &std::path::Path) -> Vec<NftRule> {
    ["ip", "ip6"]
        .iter()
        .filter_map(|family| {
            run(
                nft,
                &["-j", "list", "chain", family, "podrun", "postrouting"],
                None,
            )
            .ok()
        })
        .filter_map(|listing| crate::nft::parse_rules(&listing).ok())
        .flatten()
        .filter(|r| r.table == "podrun" && r.chain == "postrouting")
        .collect()
}

/// Removes the attachment's rules; rules, chains or tables already gone are fine.
pub fn teardown_masquerade(backend: &Backend, tag: &str) -> Result<(), MasqError> {
    let comment = format!("podrun:{tag}");
    match backend {
        Backend::Nft(nft) => {
            for rule in nft_postrouting_rules(nft)
                .into_iter()
                .filter(|r| r.comment.as_deref() == Some(comment.as_str()))
            {
                // A concurrent DEL may have removed it already.
                let _ = run(nft, &["-f", "-"], Some(&rule.delete_command()));
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

/// The attachment tags of `network` found in the comments of nft rules.
fn nft_network_tags<'a>(rules: &'a [NftRule], network: &str) -> impl Iterator<Item = String> + 'a {
    let prefix = format!("{network}:");
    rules.iter().filter_map(move |r| {
        let tag = r.comment.as_deref()?.strip_prefix("podrun:")?;
        tag.starts_with(&prefix).then(|| tag.to_string())
    })
}

/// Removes the rules of `network` whose tag is not in `keep` (the GC command).
pub fn garbage_collect(backend: &Backend, network: &str, keep: &[String]) -> Result<(), MasqError> {
    let prefix = format!("podrun:{network}:");
    let mut stale = std::collections::BTreeSet::new();
    match backend {
        Backend::Nft(nft) => {
            stale.extend(nft_network_tags(&nft_postrouting_rules(nft), network));
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
        Backend::Nft(nft) => {
            let comment = format!("podrun:{tag}");
            nft_postrouting_rules(nft)
                .iter()
                .any(|r| r.comment.as_deref() == Some(comment.as_str()))
        }
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

    #[test]
    fn gc_finds_the_tags_of_one_network_in_nft_json() {
        // `nft -j list chain ip podrun postrouting` and `nft -j list table ip6 podrun`
        // on Debian 12 (nft 1.0.6).
        let mut rules =
            crate::nft::parse_rules(include_str!("../testdata/nft/masq-ip-postrouting.json"))
                .unwrap();
        rules.extend(
            crate::nft::parse_rules(include_str!("../testdata/nft/masq-ip6.json")).unwrap(),
        );
        assert_eq!(rules.len(), 4);
        let tags: std::collections::BTreeSet<String> = nft_network_tags(&rules, "net").collect();
        assert_eq!(
            tags.into_iter().collect::<Vec<_>>(),
            ["net:0011223344556677", "net:8899aabbccddeeff"]
        );
        let other: Vec<String> = nft_network_tags(&rules, "other").collect();
        assert_eq!(other, ["other:8899aabbccddeeff"]);
        assert_eq!(nft_network_tags(&rules, "ne").count(), 0);
        assert_eq!(
            rules[1].delete_command(),
            "delete rule ip podrun postrouting handle 3\n"
        );
    }
}
