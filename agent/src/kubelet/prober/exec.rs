//! exec probes and hooks: the command runs in the container through the runtime's
//! `ExecSync`, which enforces the timeout; exit code 0 is success.

use std::time::Duration;

use k8s_openapi::api::core::v1::EnvVar;
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

/// `$(VAR)` in an exec probe's command, from the container's env given by value only
/// (kubelet's `ExpandContainerCommandOnlyStatic`): `$$` is a literal `$`, and a
/// reference to anything else stays as written.
pub(super) fn expand_command(command: &[String], env: &[EnvVar]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|e| e.name == name && e.value_from.is_none())
            .map(|e| e.value.clone().unwrap_or_default())
    };
    command.iter().map(|arg| expand(arg, &lookup)).collect()
}

fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A lone `$` at the end.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                // Unclosed: kept as written.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    #[test]
    fn expands_static_env_only() {
        let env = [
            env("PORT", "8080"),
            EnvVar {
                name: "SECRET".into(),
                value: None,
                value_from: Some(Default::default()),
            },
        ];
        let got = expand_command(
            &[
                "curl".into(),
                "localhost:$(PORT)/$(SECRET)".into(),
                "$$(PORT) $x $ $(unclosed".into(),
                "é$é$".into(),
            ],
            &env,
        );
        assert_eq!(
            got,
            [
                "curl",
                "localhost:8080/$(SECRET)",
                "$(PORT) $x $ $(unclosed",
                "é$é$"
            ]
        );
    }
}
