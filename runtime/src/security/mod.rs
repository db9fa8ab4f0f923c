//! Security settings of a container process: the Linux capability sets it runs with
//! (`capabilities`) and the seccomp filters that restrict its syscalls (`seccomp`).
//!
//! Both halves have a pure part that runs in the caller (resolving a Kubernetes
//! `securityContext` into sets and compiling BPF programs) and a small privileged part that
//! runs in the container's init process between fork and execve (`capabilities::apply`,
//! `seccomp::install`). The expected order in the init process is:
//!
//! ```text
//! capabilities::prepare_for_setuid()   keep the permitted set across setuid
//! setgroups / setgid / setuid
//! capabilities::apply(&set)            bounding, effective, permitted, inheritable, ambient
//! prctl(PR_SET_NO_NEW_PRIVS)           when allowPrivilegeEscalation is false
//! seccomp::install(&programs)          last, so only execve runs under the filter
//! execve
//! ```
//!
//! When no_new_privs is not set, `seccomp::install` needs CAP_SYS_ADMIN and must therefore
//! run before `capabilities::apply` drops it (see `seccomp::install`).

pub mod capabilities;
pub mod seccomp;

use std::path::PathBuf;

pub use capabilities::CapabilitySet;
pub use seccomp::SeccompProfile;

/// Everything that can go wrong while resolving or applying security settings.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A capability name in `securityContext.capabilities` that Linux does not define.
    #[error("unknown capability {name:?} in securityContext.capabilities.{field}")]
    UnknownCapability { field: &'static str, name: String },

    /// A capability syscall failed in the container's init process.
    #[error("capabilities: {step} failed: {source}")]
    ApplyCapabilities {
        step: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },

    /// The `seccompProfile` field of a securityContext is not one podrun accepts.
    #[error("invalid {field}: {reason}")]
    InvalidSeccompField { field: &'static str, reason: String },

    /// A Localhost seccomp profile file could not be read.
    #[error("reading seccomp profile {path}: {source}")]
    ReadSeccompProfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A Localhost seccomp profile file is not a valid OCI/Docker seccomp profile.
    #[error("seccomp profile {path}: field {field}: {reason}")]
    InvalidSeccompProfile {
        path: PathBuf,
        field: String,
        reason: String,
    },

    /// seccompiler refused the filter built from a profile (e.g. too many instructions).
    #[error("compiling seccomp filter for {profile}: {source}")]
    CompileSeccomp {
        profile: String,
        #[source]
        source: seccompiler::BackendError,
    },

    /// Seccomp filters are only built for the architectures in `seccomp::syscalls`.
    #[error("seccomp filters are not supported on architecture {0}")]
    UnsupportedArchitecture(&'static str),

    /// The seccomp(2) call failed in the container's init process. Holds only the errno so
    /// that building the error never allocates between fork and execve.
    #[error("installing seccomp filter {index}: {errno}")]
    InstallSeccomp {
        index: usize,
        errno: nix::errno::Errno,
    },
}
