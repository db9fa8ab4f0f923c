//! grpc probes: `grpc.health.v1.Health/Check` on the pod IP, with the probe's service
//! name; SERVING is success, anything else a failure worded as kubelet words it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::GRPCAction;
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::{go_duration, go_quote, rpc_error, tcp, ProbeOutcome, Target, KUBE_MAJOR, KUBE_MINOR};

pub(super) async fn probe(action: &GRPCAction, target: &Target, timeout: Duration) -> ProbeOutcome {
    let Some(ip) = target.pod_ip else {
        return ProbeOutcome::Error("the pod has no IP address".to_owned());
    };
    let Some(port) = u16::try_from(action.port).ok().filter(|p| *p > 0) else {
        return ProbeOutcome::Error(format!("invalid port number: {}", action.port));
    };
    let service = action.service.clone().unwrap_or_default();
    match tokio::time::timeout(timeout, check(SocketAddr::new(ip, port), service, timeout)).await {
        Ok(outcome) => outcome,
        Err(_) => ProbeOutcome::Failure(format!(
            "timeout: health rpc did not complete within {}",
            go_duration(timeout)
        )),
    }
}

async fn check(addr: SocketAddr, service: String, timeout: Duration) -> ProbeOutcome {
    let stream = match tcp::dial(&addr.ip().to_string(), addr.port(), None).await {
        Ok(s) => s,
        // What grpc-go says when the dial under a health check fails.
        Err(e) => {
            let status = tonic::Status::unavailable(format!(
                "connection error: desc = {}",
                go_quote(&format!("transport: Error while dialing: {e}"))
            ));
            return ProbeOutcome::Failure(format!(
                "error: health rpc probe failed: {}",
                rpc_error(&status)
            ));
        }
    };
    // The connection is already made; the channel takes it once.
    let stream = Arc::new(Mutex::new(Some(stream)));
    let endpoint = match Endpoint::from_shared(format!("http://{addr}"))
        .and_then(|e| e.user_agent(format!("kube-probe/{KUBE_MAJOR}.{KUBE_MINOR}")))
    {
        Ok(e) => e,
        Err(e) => return ProbeOutcome::Error(format!("grpc endpoint {addr}: {e}")),
    };
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let stream = stream.lock().ok().and_then(|mut s| s.take());
            async move {
                stream
                    .map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the probe's connection is closed"))
            }
        }))
        .await;
    let channel = match channel {
        Ok(c) => c,
        Err(e) => {
            return ProbeOutcome::Failure(format!(
                "error: failed to connect service at {}: {e}",
                go_quote(&addr.to_string())
            ))
        }
    };
    match HealthClient::new(channel).check(HealthCheckRequest { service }).await {
        Ok(resp) => match resp.into_inner().status() {
            ServingStatus::Serving => ProbeOutcome::Success,
            other => ProbeOutcome::Failure(format!(
                "service unhealthy (responded with {})",
                go_quote(other.as_str_name())
            )),
        },
        Err(status) => ProbeOutcome::Failure(match status.code() {
            tonic::Code::Unimplemented => format!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                status.message()
            ),
            tonic::Code::DeadlineExceeded => {
                format!("timeout: health rpc did not complete within {}", go_duration(timeout))
            }
            _ => format!("error: health rpc probe failed: {}", rpc_error(&status)),
        }),
    }
}
