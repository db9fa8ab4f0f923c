//! Fault injection for crash tests. With `PODRUN_FAULT=<point>` in its environment, the
//! process kills itself with SIGKILL when it reaches that point, exactly as `kill -9`
//! would (the init of a PID namespace, which cannot, dies of a trap instead); with
//! `PODRUN_FAULT=panic:<point>` it panics there instead. Points are named
//! `<operation>:<step>`, e.g. `sandbox:network`, `run:state`, `monitor:cgroup`,
//! `child:setup`.
//!
//! The pod monitor inherits the variable from whoever launches it ([`inherited`]), and a
//! container's child process inherits the monitor's setting (its own environment is the
//! container's), so one variable reaches every stage of a pod's life.

use std::sync::OnceLock;

/// What `PODRUN_FAULT` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Fault {
    /// SIGKILL at this point.
    Kill(String),
    /// Panic at this point.
    Panic(String),
}

impl Fault {
    fn parse(value: &str) -> Option<Fault> {
        let value = value.trim();
        match value.strip_prefix("panic:") {
            Some("") => None,
            Some(point) => Some(Fault::Panic(point.to_owned())),
            None if value.is_empty() => None,
            None => Some(Fault::Kill(value.to_owned())),
        }
    }
}

const VAR: &str = "PODRUN_FAULT";

static FAULT: OnceLock<Option<Fault>> = OnceLock::new();

/// Die (or panic) here if this is the configured fault point.
pub fn point(name: &str) {
    let fault = FAULT.get_or_init(|| std::env::var(VAR).ok().and_then(|v| Fault::parse(&v)));
    match fault {
        Some(Fault::Kill(p)) if p == name => {
            tracing::warn!(point = name, "fault injection: killing this process");
            // SAFETY: plain signal to ourselves.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            // Still here: this is the init of a PID namespace (a container's child before
            // its execve), which ignores signals it sends itself. abort() ends with a
            // trapping instruction, whose signal the kernel delivers even to an init.
            std::process::abort();
        }
        Some(Fault::Panic(p)) if p == name => {
            panic!("fault injection at {name}");
        }
        _ => {}
    }
}

/// `PODRUN_FAULT` as this process has it, for the environment of a pod monitor it
/// launches (which otherwise gets only a few variables), so one setting reaches the
/// monitor and the container processes it forks.
pub fn inherited() -> Option<(String, String)> {
    std::env::var(VAR)
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| (VAR.to_owned(), v))
}

#[cfg(test)]
mod tests {
    use super::Fault;

    #[test]
    fn a_point_kills_and_a_panic_prefix_panics() {
        assert_eq!(
            Fault::parse("run:state"),
            Some(Fault::Kill("run:state".into()))
        );
        assert_eq!(
            Fault::parse("panic:child:setup"),
            Some(Fault::Panic("child:setup".into()))
        );
        assert_eq!(Fault::parse(""), None);
        assert_eq!(Fault::parse("panic:"), None);
    }
}
