//! Fault injection for crash tests: with `PODRUN_FAULT=<point>` in its environment, the
//! process kills itself with SIGKILL when it reaches that point, exactly as `kill -9`
//! would. Points are named `<operation>:<step>`, e.g. `sandbox:network`.

use std::sync::OnceLock;

static FAULT: OnceLock<Option<String>> = OnceLock::new();

/// Die here if this is the configured fault point.
pub fn point(name: &str) {
    let fault = FAULT.get_or_init(|| std::env::var("PODRUN_FAULT").ok().filter(|v| !v.is_empty()));
    if fault.as_deref() == Some(name) {
        tracing::warn!(point = name, "fault injection: killing this process");
        // SAFETY: plain signal to ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
