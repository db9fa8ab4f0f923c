//! postStart and preStop handlers: exec, httpGet and sleep, as kubelet's
//! `lifecycle/handlers.go` runs them, with its wording for the FailedPostStartHook and
//! FailedPreStopHook Events.

use std::time::Duration;

use k8s_openapi::api::core::v1::LifecycleHandler;

use super::exec::{exec_sync, ExecError};
use super::{go_quote, http, Target};

/// kubelet's Event reasons for a failed hook.
pub const REASON_FAILED_POST_START_HOOK: &str = "FailedPostStartHook";
pub const REASON_FAILED_PRE_STOP_HOOK: &str = "FailedPreStopHook";

/// How a hook failed. `Display` leaves the container and pod out; [`HookError::message`]
/// is the Event's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("Exec lifecycle hook ([{}]) failed - error: {error}, message: {}", command.join(" "), go_quote(output))]
    Exec {
        command: Vec<String>,
        error: String,
        /// stdout then stderr.
        output: String,
    },
    #[error("HTTP lifecycle hook ({path}) failed - error: {error}")]
    Http { path: String, error: String },
    #[error("Sleep lifecycle hook ({seconds}) failed - error: {error}")]
    Sleep { seconds: i64, error: String },
    /// No exec, httpGet or sleep (tcpSocket is not run as a hook).
    #[error("Cannot run handler: invalid handler")]
    Invalid,
}

impl HookError {
    /// The message kubelet puts in the Event, naming the container and the pod
    /// (as [`format_pod`] prints it).
    pub fn message(&self, container_name: &str, pod: &str) -> String {
        let who = format!(
            "for Container {} in Pod {}",
            go_quote(container_name),
            go_quote(pod)
        );
        match self {
            HookError::Exec {
                command,
                error,
                output,
            } => format!(
                "Exec lifecycle hook ([{}]) {who} failed - error: {error}, message: {}",
                command.join(" "),
                go_quote(output)
            ),
            HookError::Http { path, error } => {
                format!("HTTP lifecycle hook ({path}) {who} failed - error: {error}")
            }
            HookError::Sleep { seconds, error } => {
                format!("Sleep lifecycle hook ({seconds}) {who} failed - error: {error}")
            }
            HookError::Invalid => self.to_string(),
        }
    }
}

/// A pod as kubelet names it in messages: `name_namespace(uid)`.
pub fn format_pod(name: &str, namespace: &str, uid: &str) -> String {
    format!("{name}_{namespace}({uid})")
}

/// Runs a postStart or preStop handler against the container, for at most `timeout`
/// (for preStop, what is left of the grace period).
pub async fn run_hook(
    handler: &LifecycleHandler,
    target: &Target,
    timeout: Duration,
) -> Result<(), HookError> {
    if let Some(exec) = &handler.exec {
        let command = exec.command.clone().unwrap_or_default();
        return match exec_sync(target, &command, timeout).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let (error, output) = match e {
                    ExecError::Exit { message, output } => (message, output),
                    ExecError::Timeout(m) | ExecError::Runtime(m) => (m, Vec::new()),
                };
                Err(HookError::Exec {
                    command,
                    error,
                    output: String::from_utf8_lossy(&output).into_owned(),
                })
            }
        };
    }
    if let Some(action) = &handler.http_get {
        return http::hook(action, target, timeout)
            .await
            .map_err(|error| HookError::Http {
                path: action.path.clone().unwrap_or_default(),
                error,
            });
    }
    if let Some(sleep) = &handler.sleep {
        let wanted = Duration::from_secs(sleep.seconds.max(0) as u64);
        if wanted <= timeout {
            tokio::time::sleep(wanted).await;
            return Ok(());
        }
        tokio::time::sleep(timeout).await;
        return Err(HookError::Sleep {
            seconds: sleep.seconds,
            error: "container terminated before sleep hook finished".to_owned(),
        });
    }
    Err(HookError::Invalid)
}
