//! The `podrun-portmap` chained plugin: the `portMappings` capability becomes hostPort
//! DNAT in nftables, in podrun's own tables `ip podrun-portmap` / `ip6
//! podrun-portmap`, and nothing else in the firewall is touched.
//!
//! Per mapping, tagged with a comment naming the network and attachment:
//! ```text
//! prerouting  (dstnat): fib daddr type local <proto> dport H  dnat to POD:C   traffic from other hosts and pods
//! output      (dstnat): fib daddr type local <proto> dport H  dnat to POD:C   traffic from the host, 127.0.0.1 too
//! postrouting (srcnat): daddr POD dport C, saddr in the pod subnet or loopback -> masquerade
//!                       (hairpin from pods on the same bridge, and 127.0.0.1 clients)
//! ```
//! Connections from 127.0.0.1 also need `route_localnet` on the host-side interfaces
//! of the result (the bridge), which ADD turns on.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::masq::attachment_tag;
use crate::nft::NftRule;
use crate::skel::{CmdArgs, Plugin};
use crate::spec::{code, Attachment, CniError, CniResult, VALID_ATTACHMENTS_KEY};

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

fn default_protocol() -> String {
    "tcp".into()
}

const TABLE: &str = "podrun-portmap";
const CHAINS: &[&str] = &["prerouting", "output", "postrouting"];

fn mappings(args: &CmdArgs) -> Result<Vec<PortMapping>, CniError> {
    let Some(raw) = args
        .conf
        .runtime_config
        .as_ref()
        .and_then(|r| r.get("portMappings"))
    else {
        return Ok(Vec::new());
    };
    let list: Vec<PortMapping> = serde_json::from_value(raw.clone())
        .map_err(|e| CniError::invalid_config(format!("invalid portMappings: {e}")))?;
    for m in &list {
        let proto = m.protocol.to_ascii_lowercase();
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(CniError::invalid_config(format!(
                "unsupported protocol {:?}",
                m.protocol
            )));
        }
        if m.host_port == 0 || m.container_port == 0 {
            return Err(CniError::invalid_config("port 0 cannot be mapped"));
        }
        if let Some(ip) = m.host_ip.as_deref().filter(|s| !s.is_empty()) {
            ip.parse::<IpAddr>()
                .map_err(|_| CniError::invalid_config(format!("invalid hostIP {ip:?}")))?;
        }
    }
    Ok(list)
}

fn prev_result(args: &CmdArgs) -> Result<CniResult, CniError> {
    let prev = args.conf.prev_result.as_ref().ok_or_else(|| {
        CniError::invalid_config(
            "podrun-portmap must be chained after a plugin that assigns addresses",
        )
    })?;
    CniResult::from_value(prev)
}

/// Container addresses: those on an interface inside the sandbox, or all when the
/// result does not say which interface an address is on.
fn container_addresses(result: &CniResult) -> Vec<IpNet> {
    result
        .ips
        .iter()
        .filter(|ip| match ip.interface {
            Some(i) => result
                .interfaces
                .get(i)
                .is_none_or(|iface| !iface.sandbox.is_empty()),
            None => true,
        })
        .map(|ip| ip.address)
        .collect()
}

/// The nft script that adds the mappings for the attachment `tag`.
pub fn rules_script(tag: &str, addrs: &[IpNet], maps: &[PortMapping]) -> String {
    let mut script = String::new();
    for addr in addrs {
        let (family, proto) = if addr.addr().is_ipv4() {
            ("ip", "ip")
        } else {
            ("ip6", "ip6")
        };
        script.push_str(&format!("add table {family} {TABLE}\n"));
        script.push_str(&format!(
            "add chain {family} {TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
             add chain {family} {TABLE} output {{ type nat hook output priority -100; policy accept; }}\n\
             add chain {family} {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
        ));
        let pod = addr.addr();
        let dest = if pod.is_ipv4() {
            format!("{pod}")
        } else {
            format!("[{pod}]")
        };
        let loopback = if pod.is_ipv4() { "127.0.0.0/8" } else { "::1" };
        for m in maps {
            let host_ip = m
                .host_ip
                .as_deref()
                .filter(|s| !s.is_empty())
                .and_then(|s| s.parse::<IpAddr>().ok());
            if host_ip.is_some_and(|h| h.is_ipv4() != pod.is_ipv4()) {
                continue;
            }
            let l4 = m.protocol.to_ascii_lowercase();
            let matcher = match host_ip {
                Some(h) if !h.is_unspecified() => format!("{proto} daddr {h}"),
                _ => "fib daddr type local".to_string(),
            };
            for chain in ["prerouting", "output"] {
                script.push_str(&format!(
                    "add rule {family} {TABLE} {chain} {matcher} {l4} dport {hp} dnat to {dest}:{cp} comment \"{TABLE}:{tag}\"\n",
                    hp = m.host_port,
                    cp = m.container_port,
                ));
            }
            for src in [addr.trunc().to_string(), loopback.to_string()] {
                script.push_str(&format!(
                    "add rule {family} {TABLE} postrouting {proto} saddr {src} {proto} daddr {pod} {l4} dport {cp} ct status dnat masquerade comment \"{TABLE}:{tag}\"\n",
                    cp = m.container_port,
                ));
            }
        }
    }
    script
}

fn nft() -> Result<PathBuf, CniError> {
    match crate::masq::Backend::detect() {
        Some(crate::masq::Backend::Nft(p)) => Ok(p),
        _ => Err(CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            "podrun-portmap needs nft, which is not installed",
        )),
    }
}

fn run_nft(nft: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Result<String, CniError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(nft)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("run nft: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("wait for nft: {e}")))?;
    if !out.status.success() {
        return Err(CniError::internal(format!(
            "nft {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `delete rule` lines for every rule of podrun's tables whose comment matches
/// `pred`: one listing per address family instead of one per chain, so a DEL costs
/// three nft processes at most rather than one per chain and rule.
fn matching_rule_deletes(nft: &std::path::Path, pred: impl Fn(&str) -> bool) -> String {
    let mut script = String::new();
    for family in ["ip", "ip6"] {
        let Ok(listing) = run_nft(nft, &["-j", "list", "table", family, TABLE], None) else {
            continue; // no such table: nothing of ours in this family
        };
        script.push_str(&deletes_from_listing(&listing, &pred));
    }
    script
}

/// `delete rule` lines for the rules of a `nft -j list table` listing that sit in
/// our chains and whose comment matches `pred`. An unreadable listing yields none.
fn deletes_from_listing(listing: &str, pred: &impl Fn(&str) -> bool) -> String {
    let Ok(rules) = crate::nft::parse_rules(listing) else {
        return String::new();
    };
    our_rules(rules)
        .filter(|r| r.comment.as_deref().is_some_and(pred))
        .map(|r| r.delete_command())
        .collect()
}

fn our_rules(rules: Vec<NftRule>) -> impl Iterator<Item = NftRule> {
    rules
        .into_iter()
        .filter(|r| r.table == TABLE && CHAINS.contains(&r.chain.as_str()))
}

/// Deletes every rule whose comment matches `pred`, in one nft transaction; rules
/// already gone are fine.
fn delete_rules(nft: &std::path::Path, pred: impl Fn(&str) -> bool) {
    let script = matching_rule_deletes(nft, pred);
    if !script.is_empty() {
        let _ = run_nft(nft, &["-f", "-"], Some(&script));
    }
}

fn rule_count(nft: &std::path::Path, tag: &str) -> usize {
    let own = format!("{TABLE}:{tag}");
    ["ip", "ip6"]
        .iter()
        .filter_map(|family| run_nft(nft, &["-j", "list", "table", family, TABLE], None).ok())
        .filter_map(|listing| crate::nft::parse_rules(&listing).ok())
        .flat_map(our_rules)
        .filter(|r| r.comment.as_deref() == Some(own.as_str()))
        .count()
}

/// The portmap plugin.
#[derive(Default)]
pub struct PortmapPlugin;

impl Plugin for PortmapPlugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let prev = prev_result(args)?;
        let maps = mappings(args)?;
        if maps.is_empty() {
            return Ok(prev);
        }
        let nft = nft()?;
        let tag = attachment_tag(&args.conf.name, &args.container_id, &args.ifname);
        let addrs = container_addresses(&prev);
        // Replace, so a repeated ADD does not duplicate rules: the old rules go and the
        // new ones come in one nft transaction.
        let own = format!("{TABLE}:{tag}");
        let mut script = matching_rule_deletes(&nft, |c| c == own);
        script.push_str(&rules_script(&tag, &addrs, &maps));
        if !script.is_empty() {
            run_nft(&nft, &["-f", "-"], Some(&script))?;
        }
        if addrs.iter().any(|a| a.addr().is_ipv4()) {
            for iface in prev.interfaces.iter().filter(|i| i.sandbox.is_empty()) {
                let key = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", iface.name);
                if std::path::Path::new(&key).exists() {
                    std::fs::write(&key, "1").map_err(|e| {
                        CniError::new(code::IO_FAILURE, format!("write {key}: {e}"))
                    })?;
                }
            }
        }
        Ok(prev)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        // Without nft there cannot be rules to remove.
        let Ok(nft) = nft() else { return Ok(()) };
        let tag = format!(
            "{TABLE}:{}",
            attachment_tag(&args.conf.name, &args.container_id, &args.ifname)
        );
        delete_rules(&nft, |c| c == tag);
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        prev_result(args)?;
        let maps = mappings(args)?;
        if maps.is_empty() {
            return Ok(());
        }
        let nft = nft()?;
        let tag = attachment_tag(&args.conf.name, &args.container_id, &args.ifname);
        if rule_count(&nft, &tag) == 0 {
            return Err(CniError::internal("port mapping rules are missing"));
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let Ok(nft) = nft() else { return Ok(()) };
        let valid: Vec<Attachment> = match args.raw_conf().get(VALID_ATTACHMENTS_KEY) {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                CniError::invalid_config(format!("invalid {VALID_ATTACHMENTS_KEY}: {e}"))
            })?,
            None => Vec::new(),
        };
        let keep: Vec<String> = valid
            .iter()
            .map(|a| {
                format!(
                    "{TABLE}:{}",
                    attachment_tag(&args.conf.name, &a.container_id, &a.ifname)
                )
            })
            .collect();
        let prefix = format!("{TABLE}:{}:", args.conf.name);
        delete_rules(&nft, |c| {
            c.starts_with(&prefix) && !keep.iter().any(|k| k == c)
        });
        Ok(())
    }

    fn status(&self, _args: &CmdArgs) -> Result<(), CniError> {
        nft().map(|_| ())
    }
}

/// Parses `portMappings` from a runtimeConfig value (for callers building configs).
pub fn parse_mappings(value: &Value) -> Result<Vec<PortMapping>, serde_json::Error> {
    serde_json::from_value(value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `nft -j list table ... podrun-portmap` on Debian 12 (nft 1.0.6); the ip
    /// table also holds a rule of someone else and rules whose text form misled
    /// the reading of `nft -a list` output.
    const LISTING_IP: &str = include_str!("../testdata/nft/portmap-ip.json");
    const LISTING_IP6: &str = include_str!("../testdata/nft/portmap-ip6.json");

    #[test]
    fn deletes_only_matching_rules_of_our_chains() {
        let script = deletes_from_listing(LISTING_IP, &|c: &str| c == "podrun-portmap:net:abc");
        assert_eq!(
            script,
            "delete rule ip podrun-portmap prerouting handle 4\n\
             delete rule ip podrun-portmap output handle 5\n\
             delete rule ip podrun-portmap postrouting handle 6\n\
             delete rule ip podrun-portmap postrouting handle 7\n\
             delete rule ip podrun-portmap postrouting handle 10\n\
             delete rule ip podrun-portmap postrouting handle 12\n"
        );
        assert!(deletes_from_listing(LISTING_IP, &|_: &str| false).is_empty());
        assert_eq!(
            deletes_from_listing(LISTING_IP6, &|c: &str| c == "podrun-portmap:net:abc"),
            "delete rule ip6 podrun-portmap prerouting handle 4\n\
             delete rule ip6 podrun-portmap postrouting handle 5\n"
        );
    }

    /// In `nft -a list` text, `log prefix "hairpin comment " comment "podrun-portmap:net:abc"`
    /// read as the comment `" "`, so DEL left that rule behind. JSON keeps the
    /// comment, the handle and the statements in fields of their own.
    #[test]
    fn rule_text_that_looks_like_a_comment_or_handle_is_not_misread() {
        let abc = deletes_from_listing(LISTING_IP, &|c: &str| c == "podrun-portmap:net:abc");
        assert!(abc.contains("postrouting handle 10\n"));
        let def = deletes_from_listing(LISTING_IP, &|c: &str| {
            c.starts_with("podrun-portmap:net:def")
        });
        assert_eq!(def, "delete rule ip podrun-portmap prerouting handle 8\n");
    }

    #[test]
    fn rules_of_other_tables_or_chains_are_left_alone() {
        let json = r#"{"nftables": [
            {"rule": {"family": "ip", "table": "nat", "chain": "prerouting", "handle": 3,
                      "comment": "podrun-portmap:a", "expr": []}},
            {"rule": {"family": "ip", "table": "podrun-portmap", "chain": "forward", "handle": 4,
                      "comment": "podrun-portmap:a", "expr": []}},
            {"rule": {"family": "ip", "table": "podrun-portmap", "chain": "output", "handle": 5,
                      "comment": "podrun-portmap:a", "expr": []}}
        ]}"#;
        assert_eq!(
            deletes_from_listing(json, &|c: &str| c == "podrun-portmap:a"),
            "delete rule ip podrun-portmap output handle 5\n"
        );
        assert!(deletes_from_listing("not json", &|_: &str| true).is_empty());
    }

    #[test]
    fn script_covers_remote_local_and_hairpin_paths() {
        let maps = parse_mappings(&json!([
            {"hostPort": 8080, "containerPort": 80},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
            {"hostPort": 9000, "containerPort": 90, "hostIP": "::1"}
        ]))
        .unwrap();
        let s = rules_script("net:abc", &["10.88.0.5/16".parse().unwrap()], &maps);
        assert!(s.contains("add rule ip podrun-portmap prerouting fib daddr type local tcp dport 8080 dnat to 10.88.0.5:80 comment \"podrun-portmap:net:abc\""));
        assert!(s.contains("add rule ip podrun-portmap output fib daddr type local tcp dport 8080 dnat to 10.88.0.5:80"));
        assert!(s.contains("output ip daddr 127.0.0.1 udp dport 5353 dnat to 10.88.0.5:53"));
        assert!(s.contains("postrouting ip saddr 10.88.0.0/16 ip daddr 10.88.0.5 tcp dport 80 ct status dnat masquerade"));
        assert!(s.contains("postrouting ip saddr 127.0.0.0/8 ip daddr 10.88.0.5 tcp dport 80 ct status dnat masquerade"));
        // An IPv6 hostIP does not apply to an IPv4 pod address.
        assert!(!s.contains("dport 9000"));
        let v6 = rules_script("t", &["fd00::5/64".parse().unwrap()], &maps[..1]);
        assert!(v6.contains("add rule ip6 podrun-portmap prerouting fib daddr type local tcp dport 8080 dnat to [fd00::5]:80"));
    }
}
