//! Probes and lifecycle hooks, run as kubelet runs them: exec through the CRI
//! `ExecSync`, httpGet, tcpSocket and grpc from the node to the pod's IP.
//!
//! [`run_probe`] runs one probe once; [`run_hook`] runs a postStart or preStop handler.
//! [`ProbeManager`] keeps one worker task per probe of each running container and tells
//! the pod sync, through [`ProbeEvent`]s, when a container became ready or started, when
//! a probe failed (an `Unhealthy` Event), and when a liveness or startup probe failed
//! often enough that the container must be restarted.
//!
//! One worker's state (kubelet's `prober/worker.go`):
//!
//! ```text
//!            add_container: result = initial value
//!            (readiness Failure, liveness Success, startup Unknown)
//!                 │
//!                 ▼  first run at once (or after a random part of the period
//!   ┌──────► wait    when the agent started less than one period ago)
//!   │  period │  or a trigger
//!   │         ▼
//!   │       skip ── younger than initialDelaySeconds; startup already succeeded;
//!   │         │     liveness/readiness before the startup probe succeeded
//!   │         ▼
//!   │       run ─── Error: retried twice at once, then an Unhealthy warning
//!   │         │     "… probe errored …" and the run is not counted
//!   │         ▼
//!   │       count the same result in a row (Failure: an Unhealthy warning each run)
//!   │         │  below successThreshold / failureThreshold: result unchanged
//!   │         ▼
//!   └──────  record ── liveness/startup Failure: RestartNeeded once, then on hold
//!                      until add_container brings a new container ID
//! ```

mod exec;
mod grpc;
mod hooks;
mod http;
mod manager;
mod tcp;
mod worker;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cri::CriClient;

pub use hooks::{
    format_pod, run_hook, HookError, REASON_FAILED_POST_START_HOOK, REASON_FAILED_PRE_STOP_HOOK,
};
pub use manager::{ProbeEvent, ProbeEventResult, ProbeManager};
pub use worker::{Clock, CriProbeRunner, ProbeKind, ProbeResult, ProbeRunner, TokioClock};

/// The Kubernetes version whose kubelet this one behaves as (k8s-openapi's v1_33): probes
/// send `User-Agent: kube-probe/1.33`, HTTP hooks `kube-lifecycle/1.33`.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";

/// kubelet's Event reasons for probes.
pub const REASON_UNHEALTHY: &str = "Unhealthy";
pub const REASON_PROBE_WARNING: &str = "ProbeWarning";

/// The futures of [`Clock`] and [`ProbeRunner`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// kubelet's default `timeoutSeconds`.
const DEFAULT_TIMEOUT_SECONDS: i32 = 1;

/// What a probe or hook runs against: the pod's IP (httpGet and tcpSocket without a
/// `host`, and grpc), the container (exec) and its ports (a port given by name).
#[derive(Clone)]
pub struct Target {
    pub pod_ip: Option<IpAddr>,
    pub container_id: String,
    pub ports: Vec<ContainerPort>,
    pub cri: CriClient,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("pod_ip", &self.pod_ip)
            .field("container_id", &self.container_id)
            .field("ports", &self.ports)
            .field("cri", &self.cri.endpoint)
            .finish()
    }
}

/// What one run of a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Success,
    /// A success with something to say: an HTTP redirect to another host, not followed.
    Warning(String),
    /// The probe ran and the container failed it; the message follows "… probe failed: ".
    Failure(String),
    /// The probe could not be run: a port name the container does not have, no pod IP,
    /// a runtime error. kubelet retries it at once, twice, then warns ("… probe errored
    /// and resulted in unknown state: …") and does not count the run.
    Error(String),
}

/// Runs `probe` once against `target`, within the probe's `timeoutSeconds`.
pub async fn run_probe(probe: &Probe, target: &Target) -> ProbeOutcome {
    let timeout = probe_timeout(probe);
    if let Some(action) = &probe.exec {
        let command = action.command.clone().unwrap_or_default();
        return exec::probe(&command, target, timeout).await;
    }
    if let Some(action) = &probe.http_get {
        return http::probe(action, target, timeout).await;
    }
    if let Some(action) = &probe.tcp_socket {
        return tcp::probe(action, target, timeout).await;
    }
    if let Some(action) = &probe.grpc {
        return grpc::probe(action, target, timeout).await;
    }
    ProbeOutcome::Error("missing probe handler".to_owned())
}

/// `timeoutSeconds`, kubelet's default where unset (the API server sets it too).
fn probe_timeout(probe: &Probe) -> Duration {
    let secs = probe
        .timeout_seconds
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    Duration::from_secs(secs as u64)
}

/// A probe's or hook's port: a number, the name of one of the container's ports, or a
/// number written as a string, in that order (kubelet's `ResolveContainerPort`).
fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => {
            match ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
            {
                Some(p) => i64::from(p.container_port),
                None => name.parse::<i64>().map_err(|_| {
                    format!("strconv.Atoi: parsing {}: invalid syntax", go_quote(name))
                })?,
            }
        }
    };
    u16::try_from(number)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid port number: {number}"))
}

/// A duration as Go prints it ("1s", "1m30s"), for messages worded as kubelet's.
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let frac = d.subsec_millis();
    let s = if frac == 0 {
        format!("{}s", secs % 60)
    } else {
        format!("{}.{:03}s", secs % 60, frac)
            .trim_end_matches('0')
            .to_owned()
    };
    match (secs / 3600, secs / 60 % 60) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

/// A string quoted as Go's `%q` does, for messages worded as kubelet's.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A system error as Go words it ("connection refused"), without Rust's "(os error N)".
fn os_error_text(e: &io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(code) => {
            let full = io::Error::from_raw_os_error(code).to_string();
            full.split(" (os error").next().unwrap_or(&full).to_owned()
        }
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// A gRPC status as grpc-go prints it.
fn rpc_error(status: &tonic::Status) -> String {
    let code = match status.code() {
        tonic::Code::Cancelled => "Canceled".to_owned(),
        code => format!("{code:?}"),
    };
    format!("rpc error: code = {code} desc = {}", status.message())
}
