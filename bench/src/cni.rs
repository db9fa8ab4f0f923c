//! Workload 7: one pod network set up and torn down through CNI, podrun's chain
//! (`podrun-bridge` + `podrun-portmap`, cniVersion 1.1.0) against the reference chain
//! (`bridge` + `host-local` + `portmap` from Debian's containernetworking-plugins in
//! /usr/lib/cni, cniVersion 1.0.0). No pod is started: the plugins are executed the way
//! libcni does it (`CNI_*` environment, configuration on stdin, `prevResult` chaining),
//! into a network namespace made with `ip netns add` per round.
//!
//! Setup = ADD bridge, then ADD portmap with the bridge's result and one tcp hostPort;
//! teardown = DEL portmap, then DEL bridge, both with the chain's result as prevResult
//! (what libcni caches). Each system has its own bridge and 10.247.x.0/24 subnet, ipMasq
//! off, and IPAM files in the work directory. After every teardown nothing may be left:
//! no veth on the bridge, no reservation file, no firewall rule for the host port.
//! At the end the bridges, namespaces and IPAM files go, and so do the firewall tables
//! and chains the plugins created during this run and leave behind empty.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::report::{Report, Series, Skipped};
use crate::sys;
use crate::workloads::Ctx;

/// Prefix of every network namespace, bridge and network name the workload creates.
const PREFIX: &str = "pbench";
const REFERENCE_DIR: &str = "/usr/lib/cni";
/// The nft table podrun-portmap keeps its DNAT rules in.
const PODRUN_TABLE: &str = "podrun-portmap";
/// The top-level nat chains Debian's portmap creates once and never removes.
const HOSTPORT_CHAINS: [(&str, &str); 3] = [
    ("CNI-HOSTPORT-DNAT", "PREROUTING"),
    ("CNI-HOSTPORT-SETMARK", ""),
    ("CNI-HOSTPORT-MASQ", "POSTROUTING"),
];

/// One plugin chain and the network it sets up.
struct Chain {
    system: &'static str,
    bridge_plugin: PathBuf,
    portmap_plugin: PathBuf,
    cni_path: String,
    version: &'static str,
    network: &'static str,
    bridge: &'static str,
    subnet: &'static str,
}

impl Chain {
    fn bridge_conf(&self, data_dir: &Path) -> Value {
        json!({
            "cniVersion": self.version,
            "name": self.network,
            "type": type_of(&self.bridge_plugin),
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "subnet": self.subnet,
                "dataDir": data_dir,
            }
        })
    }

    fn portmap_conf(&self, host_port: u16, prev: &Value) -> Value {
        json!({
            "cniVersion": self.version,
            "name": self.network,
            "type": type_of(&self.portmap_plugin),
            "capabilities": {"portMappings": true},
            "runtimeConfig": {
                "portMappings": [
                    {"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}
                ]
            },
            "prevResult": prev,
        })
    }
}

fn type_of(plugin: &Path) -> String {
    plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One attachment's `CNI_*` environment.
struct Attach<'a> {
    id: &'a str,
    netns: &'a str,
}

/// Executes `plugin` like libcni and returns its wall time and its stdout as JSON
/// (Null for DEL, which prints nothing).
fn invoke(
    chain: &Chain,
    plugin: &Path,
    command: &str,
    at: &Attach,
    conf: &Value,
) -> Result<(Duration, Value)> {
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        // The reference portmap runs iptables from PATH.
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", at.id)
        .env("CNI_NETNS", at.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &chain.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", plugin.display()))?;
    let stdin = conf.to_string();
    child
        .stdin
        .take()
        .context("plugin stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{} {command} failed ({}): {} {}",
            plugin.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let json = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{} {command}: result is not JSON", plugin.display()))?
    };
    Ok((took, json))
}

fn ip(args: &[&str]) -> Result<()> {
    sys::timed(Command::new("ip").args(args)).map(|_| ())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("0.0.0.0:0")?.local_addr()?.port())
}

fn data_dir(ctx: &Ctx) -> PathBuf {
    ctx.work.join("cni-ipam")
}

/// podrun's plugins from the same cargo profile as podrun (built when cargo is at hand).
fn podrun_plugins(ctx: &Ctx) -> Result<PathBuf> {
    let dir = ctx
        .podrun
        .parent()
        .context("podrun binary directory")?
        .to_path_buf();
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| sys::which("cargo"));
    if let Some(cargo) = cargo {
        let mut c = Command::new(cargo);
        c.current_dir(&ctx.repo)
            .args(["build", "-q", "-p", "podrun-cni", "--bins"]);
        if dir.ends_with("release") {
            c.arg("--release");
        }
        progress!("building podrun-bridge and podrun-portmap");
        sys::timed(&mut c).context("build podrun-cni")?;
    }
    for p in ["podrun-bridge", "podrun-portmap"] {
        if !dir.join(p).is_file() {
            bail!(
                "{} not found: cargo build -p podrun-cni",
                dir.join(p).display()
            );
        }
    }
    Ok(dir)
}

fn chains(ctx: &Ctx, report: &mut Report) -> Vec<Chain> {
    let mut v = Vec::new();
    match podrun_plugins(ctx) {
        Ok(dir) => v.push(Chain {
            system: "podrun",
            bridge_plugin: dir.join("podrun-bridge"),
            portmap_plugin: dir.join("podrun-portmap"),
            cni_path: dir.to_string_lossy().into_owned(),
            version: "1.1.0",
            network: "pbench-podrun",
            bridge: "pbench-podrun",
            subnet: "10.247.1.0/24",
        }),
        Err(e) => report.skipped.push(Skipped {
            workload: "cni".into(),
            system: "podrun".into(),
            reason: format!("failed: {e:#}"),
        }),
    }
    let reference = Path::new(REFERENCE_DIR);
    let missing: Vec<&str> = ["bridge", "host-local", "portmap"]
        .into_iter()
        .filter(|p| !reference.join(p).is_file())
        .collect();
    if missing.is_empty() {
        v.push(Chain {
            system: "cni-plugins",
            bridge_plugin: reference.join("bridge"),
            portmap_plugin: reference.join("portmap"),
            cni_path: REFERENCE_DIR.into(),
            version: "1.0.0",
            network: "pbench-ref",
            bridge: "pbench-ref",
            subnet: "10.247.2.0/24",
        });
    } else {
        report.skipped.push(Skipped {
            workload: "cni".into(),
            system: "cni-plugins".into(),
            reason: format!(
                "not available: {} missing in {REFERENCE_DIR} (package containernetworking-plugins)",
                missing.join(", ")
            ),
        });
    }
    v
}

/// Firewall state the run may add to and must restore.
struct Firewall {
    podrun_table: bool,
    hostport_chains: Vec<&'static str>,
}

fn nat_rules() -> String {
    sys::output(Command::new("iptables").args(["-w", "-t", "nat", "-S"])).unwrap_or_default()
}

fn nft_table(table: &str) -> Option<String> {
    sys::output(Command::new("nft").args(["list", "table", "ip", table])).ok()
}

impl Firewall {
    fn now() -> Firewall {
        let nat = nat_rules();
        Firewall {
            podrun_table: nft_table(PODRUN_TABLE).is_some(),
            hostport_chains: HOSTPORT_CHAINS
                .iter()
                .map(|(c, _)| *c)
                .filter(|c| nat.lines().any(|l| l == format!("-N {c}")))
                .collect(),
        }
    }

    /// Removes what appeared since `self` was taken, only when nothing uses it.
    fn restore(&self) {
        if !self.podrun_table {
            if let Some(t) = nft_table(PODRUN_TABLE) {
                if !t.contains("dnat to") && !t.contains("masquerade") {
                    sys::quiet(Command::new("nft").args(["delete", "table", "ip", PODRUN_TABLE]));
                }
            }
        }
        let nat = nat_rules();
        // Debian's portmap jumps from CNI-HOSTPORT-DNAT to one chain per attachment;
        // with none left, its top-level chains are unused.
        let in_use = nat.lines().any(|l| l.starts_with("-A CNI-HOSTPORT-DNAT "));
        if in_use {
            return;
        }
        for (chain, from) in HOSTPORT_CHAINS {
            if self.hostport_chains.contains(&chain)
                || !nat.lines().any(|l| l == format!("-N {chain}"))
            {
                continue;
            }
            for parent in [from, "OUTPUT"].into_iter().filter(|p| !p.is_empty()) {
                for rule in nat
                    .lines()
                    .filter(|l| l.starts_with(&format!("-A {parent} ")))
                    .filter(|l| l.ends_with(&format!("-j {chain}")))
                {
                    let spec: Vec<&str> = rule.split_whitespace().skip(2).collect();
                    sys::quiet(
                        Command::new("iptables")
                            .args(["-w", "-t", "nat", "-D", parent])
                            .args(spec_args(&spec)),
                    );
                }
            }
        }
        for (chain, _) in HOSTPORT_CHAINS {
            if self.hostport_chains.contains(&chain) {
                continue;
            }
            sys::quiet(Command::new("iptables").args(["-w", "-t", "nat", "-F", chain]));
            sys::quiet(Command::new("iptables").args(["-w", "-t", "nat", "-X", chain]));
        }
    }
}

/// `iptables -S` quotes comments; the quotes are shell syntax, not part of the value.
fn spec_args(spec: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut open: Option<String> = None;
    for w in spec {
        match open.take() {
            Some(mut acc) => {
                acc.push(' ');
                acc.push_str(w.trim_end_matches('"'));
                if w.ends_with('"') {
                    out.push(acc);
                } else {
                    open = Some(acc);
                }
            }
            None if w.starts_with('"') && !(w.len() > 1 && w.ends_with('"')) => {
                open = Some(w.trim_start_matches('"').to_string());
            }
            None => out.push(w.trim_matches('"').to_string()),
        }
    }
    out.extend(open);
    out
}

/// Nothing of the attachment may survive its DEL.
fn assert_clean(chain: &Chain, ctx: &Ctx, host_port: u16) -> Result<()> {
    let ports =
        sys::output(Command::new("ip").args(["-o", "link", "show", "master", chain.bridge]))
            .unwrap_or_default();
    if !ports.trim().is_empty() {
        bail!("veth left on {}: {}", chain.bridge, ports.trim());
    }
    let reservations: Vec<String> = std::fs::read_dir(data_dir(ctx).join(chain.network))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    if !reservations.is_empty() {
        bail!("reservations left: {}", reservations.join(", "));
    }
    let needle = format!("dport {host_port} ");
    if let Some(t) = nft_table(PODRUN_TABLE) {
        if t.contains(&needle) {
            bail!("{PODRUN_TABLE} still maps host port {host_port}");
        }
    }
    let nat = nat_rules();
    if let Some(l) = nat.lines().find(|l| {
        l.contains(&format!("--dport {host_port} "))
            || l.contains(&format!("--dports {host_port} "))
    }) {
        bail!("iptables nat still maps host port {host_port}: {l}");
    }
    Ok(())
}

/// ADD then DEL of the chain in a fresh netns: the wall time of each of the four
/// plugin calls, in the order of [`STEPS`].
fn cycle(chain: &Chain, ctx: &Ctx, round: usize) -> Result<[Duration; 4]> {
    let name = format!("{PREFIX}-{}-{}-{round}", std::process::id(), chain.system);
    ip(&["netns", "add", &name])?;
    let netns = format!("/run/netns/{name}");
    let at = Attach {
        id: &name,
        netns: &netns,
    };
    let host_port = free_port()?;
    let bridge_conf = chain.bridge_conf(&data_dir(ctx));
    let result = (|| -> Result<[Duration; 4]> {
        let (t1, prev) = invoke(chain, &chain.bridge_plugin, "ADD", &at, &bridge_conf)?;
        let (t2, result) = invoke(
            chain,
            &chain.portmap_plugin,
            "ADD",
            &at,
            &chain.portmap_conf(host_port, &prev),
        )?;
        if result["ips"].as_array().is_none_or(|a| a.is_empty()) {
            bail!("the chain's result has no IP: {result}");
        }
        let mut del_bridge = bridge_conf.clone();
        del_bridge["prevResult"] = result.clone();
        let (t3, _) = invoke(
            chain,
            &chain.portmap_plugin,
            "DEL",
            &at,
            &chain.portmap_conf(host_port, &result),
        )?;
        let (t4, _) = invoke(chain, &chain.bridge_plugin, "DEL", &at, &del_bridge)?;
        assert_clean(chain, ctx, host_port)?;
        Ok([t1, t2, t3, t4])
    })();
    if result.is_err() {
        let null = Value::Null;
        let _ = invoke(
            chain,
            &chain.portmap_plugin,
            "DEL",
            &at,
            &chain.portmap_conf(host_port, &null),
        );
        let _ = invoke(chain, &chain.bridge_plugin, "DEL", &at, &bridge_conf);
    }
    sys::quiet(Command::new("ip").args(["netns", "del", &name]));
    result
}

/// The kernel's share of a teardown: `ip link del` of a veth pair whose peer sits in
/// another netns, as the bridge plugins' DEL does (one `ip` process start included).
fn veth_delete(round: usize) -> Result<Duration> {
    let name = format!("{PREFIX}-{}-veth-{round}", std::process::id());
    ip(&["netns", "add", &name])?;
    let host = format!("pbench-v{}", round % 10_000_000);
    let r = ip(&[
        "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &name,
    ])
    .and_then(|_| sys::timed(Command::new("ip").args(["link", "del", &host])));
    sys::quiet(Command::new("ip").args(["link", "del", &host]));
    sys::quiet(Command::new("ip").args(["netns", "del", &name]));
    r
}

/// The plugin calls of one cycle, each also reported on its own.
const STEPS: [&str; 4] = [
    "setup: ADD bridge",
    "setup: ADD portmap",
    "teardown: DEL portmap",
    "teardown: DEL bridge",
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn cni(ctx: &Ctx, report: &mut Report) {
    if sys::which("ip").is_none() {
        report.skipped.push(Skipped {
            workload: "cni".into(),
            system: "all".into(),
            reason: "not available: ip (iproute2) is not installed".into(),
        });
        return;
    }
    let firewall = Firewall::now();
    let chains = chains(ctx, report);
    let rounds = if ctx.smoke { 1 } else { ctx.rounds.max(10) };
    let mut setup: Vec<Series> = chains
        .iter()
        .map(|c| Series::new("cni", "setup (ADD bridge+portmap)", c.system, "ms"))
        .collect();
    let mut teardown: Vec<Series> = chains
        .iter()
        .map(|c| Series::new("cni", "teardown (DEL portmap+bridge)", c.system, "ms"))
        .collect();
    let mut steps: Vec<Vec<Series>> = chains
        .iter()
        .map(|c| {
            STEPS
                .iter()
                .map(|m| Series::new("cni", m, c.system, "ms"))
                .collect()
        })
        .collect();
    let mut veth = Series::new("cni", "ip link del veth", "kernel", "ms");
    let mut failed = vec![false; chains.len()];
    for round in 0..=rounds {
        for (i, chain) in chains.iter().enumerate() {
            if failed[i] {
                continue;
            }
            match cycle(chain, ctx, round) {
                // Round 0 is the warm-up: binaries in the page cache, bridge created.
                Ok(t) if round > 0 => {
                    setup[i].samples.push(ms(t[0] + t[1]));
                    teardown[i].samples.push(ms(t[2] + t[3]));
                    for (s, d) in steps[i].iter_mut().zip(t) {
                        s.samples.push(ms(d));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failed[i] = true;
                    report.skipped.push(Skipped {
                        workload: "cni".into(),
                        system: chain.system.into(),
                        reason: format!("failed: {e:#}"),
                    });
                }
            }
        }
        match veth_delete(round) {
            Ok(d) if round > 0 => veth.samples.push(ms(d)),
            Ok(_) => {}
            Err(e) => progress!("veth delete not measured: {e:#}"),
        }
    }
    let version = sys::output(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${Version}",
        "containernetworking-plugins",
    ]))
    .unwrap_or_else(|_| "unknown".into());
    for s in setup.iter_mut().chain(teardown.iter_mut()) {
        if s.system != "podrun" {
            s.note = Some(format!(
                "podrun-bridge + podrun-portmap (cniVersion 1.1.0) vs Debian containernetworking-plugins \
                 {version} bridge + host-local + portmap (cniVersion 1.0.0), called as libcni does; \
                 one tcp hostPort, ipMasq false, hairpinMode true, fresh netns per round"
            ));
        }
    }
    veth.note = Some(
        "ip link del of a veth whose peer is in another netns (includes one ip process start)"
            .into(),
    );
    report.series.extend(
        setup
            .into_iter()
            .chain(teardown)
            .chain(steps.into_iter().flatten())
            .chain([veth])
            .filter(|s| !s.samples.is_empty()),
    );
    cleanup(ctx);
    firewall.restore();
}

/// Bridges, namespaces and IPAM files of this workload; safe to run more than once.
pub fn cleanup(ctx: &Ctx) {
    for bridge in ["pbench-podrun", "pbench-ref"] {
        if Path::new("/sys/class/net").join(bridge).exists() {
            sys::quiet(Command::new("ip").args(["link", "del", bridge]));
        }
    }
    let mine = format!("{PREFIX}-{}-", std::process::id());
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&mine) {
                sys::quiet(Command::new("ip").args(["netns", "del", &name]));
            }
        }
    }
    let _ = std::fs::remove_dir_all(data_dir(ctx));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_comments_become_one_argument() {
        let spec = [
            "-m",
            "comment",
            "--comment",
            "\"dnat",
            "name:",
            "x\"",
            "-j",
            "CNI-HOSTPORT-DNAT",
        ];
        assert_eq!(
            spec_args(&spec),
            vec![
                "-m",
                "comment",
                "--comment",
                "dnat name: x",
                "-j",
                "CNI-HOSTPORT-DNAT"
            ]
        );
    }
}
