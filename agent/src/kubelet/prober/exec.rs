//! exec probes and hooks: the command runs in the container through the runtime's
//! `ExecSync`, which enforces the timeout; exit code 0 is success.

use std::time::Duration;

use podrun_cri_proto::v1::ExecSyncRequest;

use super::{rpc_error, ProbeOutcome, Target};

/// How much of an exec probe's output kubelet keeps.
const MAX_OUTPUT: usize = 10 * 1024;
/// kubelet's `--runtime-request-timeout`: past the command's own timeout, how long the
/// runtime has to answer before kubelet gives up on the call.
const RUNTIME_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How an exec did not end in exit code 0.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ExecError {
    /// The command ran and exited non-zero: kubelet's message, and stdout then stderr.
    Exit { message: String, output: Vec<u8> },
    /// The command outlived its timeout.
    Timeout(String),
    /// The runtime could not run it.
    Runtime(String),
}

/// Runs `cmd` in the container; on success, its stdout then stderr.
pub(super) async fn exec_sync(
    target: &Target,
    cmd: &[String],
    timeout: Duration,
) -> Result<Vec<u8>, ExecError> {
    let joined = cmd.join(" ");
    let timed_out = || ExecError::Timeout(format!("command \"{joined}\" timed out"));
    let mut request = tonic::Request::new(ExecSyncRequest {
        container_id: target.container_id.clone(),
        cmd: cmd.to_vec(),
        timeout: timeout.as_secs() as i64,
    });
    let deadline = timeout + RUNTIME_REQUEST_TIMEOUT;
    request.set_timeout(deadline);
    let mut client = target.cri.runtime.clone();
    let response = match tokio::time::timeout(deadline, client.exec_sync(request)).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
            return Err(timed_out())
        }
        Ok(Err(status)) => return Err(ExecError::Runtime(rpc_error(&status))),
        Ok(Ok(r)) => r.into_inner(),
    };
    let mut output = response.stdout;
    if response.exit_code != 0 {
        let message = format!(
            "command '{joined}' exited with {}: {}",
            response.exit_code,
            String::from_utf8_lossy(&response.stderr)
        );
        output.extend_from_slice(&response.stderr);
        return Err(ExecError::Exit { message, output });
    }
    output.extend_from_slice(&response.stderr);
    Ok(output)
}

/// An exec probe: its output, cut to 10 KiB, is the failure's message.
pub(super) async fn probe(cmd: &[String], target: &Target, timeout: Duration) -> ProbeOutcome {
    match exec_sync(target, cmd, timeout).await {
        Ok(_) => ProbeOutcome::Success,
        Err(ExecError::Exit { mut output, .. }) => {
            output.truncate(MAX_OUTPUT);
            ProbeOutcome::Failure(String::from_utf8_lossy(&output).into_owned())
        }
        Err(ExecError::Timeout(m)) => ProbeOutcome::Failure(m),
        Err(ExecError::Runtime(m)) => ProbeOutcome::Error(m),
    }
}
