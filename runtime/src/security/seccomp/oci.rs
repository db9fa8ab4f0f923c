//! Localhost seccomp profiles: the OCI runtime-spec `linux.seccomp` JSON that Kubernetes
//! users put under kubelet's seccomp directory, also in Docker's flavour (`name` besides
//! `names`, `includes`/`excludes`, `archMap`, `comment`).
//!
//! Semantics follow runc: a rule whose action equals the default action is dropped; the
//! conditions of one rule must all hold, except that when two conditions test the same
//! argument each becomes a rule of its own (any may hold); an ERRNO rule without `errnoRet`
//! returns EPERM. Docker's `includes`/`excludes` are honoured for `caps` (against the
//! bounding set) and `arches`; `minKernel` is taken as satisfied. `architectures` is
//! accepted but filters are always built for the architecture podrun runs on, which
//! libseccomp also always includes. Syscall names this architecture lacks are skipped.

use std::path::Path;

use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp};
use serde::Deserialize;

use super::{ArgCheck, CompiledRules};
use crate::security::{CapabilitySet, SecurityError};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Vec<Syscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Syscall {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Arg>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// Docker's conditions on whether a rule applies.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

/// Names of the running architecture in Docker's `arches` lists.
fn arch_names() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["amd64", "x86_64", "SCMP_ARCH_X86_64"]
    } else if cfg!(target_arch = "aarch64") {
        &["arm64", "aarch64", "SCMP_ARCH_AARCH64"]
    } else {
        &[]
    }
}

impl Filter {
    fn arch_matches(&self) -> bool {
        self.arches
            .iter()
            .any(|a| arch_names().contains(&a.as_str()))
    }
    fn caps_held(&self, caps: &CapabilitySet) -> bool {
        self.caps.iter().all(|c| caps.bounding_has(c))
    }
    fn caps_excluded(&self, caps: &CapabilitySet) -> bool {
        !self.caps.is_empty() && self.caps.iter().any(|c| caps.bounding_has(c))
    }
}

fn invalid(path: &Path, field: String, reason: impl Into<String>) -> SecurityError {
    SecurityError::InvalidSeccompProfile {
        path: path.to_path_buf(),
        field,
        reason: reason.into(),
    }
}

fn action(
    path: &Path,
    field: String,
    name: &str,
    errno_ret: Option<u32>,
) -> Result<SeccompAction, SecurityError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno_ret.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno_ret.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_NOTIFY" => {
            return Err(invalid(
                path,
                field,
                "SCMP_ACT_NOTIFY is not supported (podrun has no seccomp agent)",
            ))
        }
        other => return Err(invalid(path, field, format!("unknown action {other:?}"))),
    })
}

fn check(path: &Path, field: String, arg: &Arg) -> Result<ArgCheck, SecurityError> {
    if arg.index > 5 {
        return Err(invalid(
            path,
            format!("{field}.index"),
            format!("argument index {} out of range 0..=5", arg.index),
        ));
    }
    let (op, value) = match arg.op.as_str() {
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, arg.value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, arg.value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, arg.value),
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, arg.value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, arg.value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, arg.value),
        // OCI: (arg & value) == valueTwo.
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(arg.value), arg.value_two),
        other => {
            return Err(invalid(
                path,
                format!("{field}.op"),
                format!("unknown operator {other:?}"),
            ))
        }
    };
    // libseccomp compares whole 64-bit arguments; so do we.
    Ok(ArgCheck {
        index: arg.index,
        len: SeccompCmpArgLen::Qword,
        op,
        value,
    })
}

/// Reads and validates the profile at `path`, resolving Docker's capability conditions
/// against `caps`.
pub(super) fn load(path: &Path, caps: &CapabilitySet) -> Result<CompiledRules, SecurityError> {
    let text = std::fs::read(path).map_err(|source| SecurityError::ReadSeccompProfile {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, caps)
}

pub(super) fn parse(
    path: &Path,
    text: &[u8],
    caps: &CapabilitySet,
) -> Result<CompiledRules, SecurityError> {
    super::target_arch()?;
    let de = &mut serde_json::Deserializer::from_slice(text);
    let profile: Profile = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = match e.path().to_string() {
            p if p == "." || p == "?" => "(document)".to_string(),
            p => p,
        };
        invalid(path, field, e.into_inner().to_string())
    })?;

    let default_action = action(
        path,
        "defaultAction".into(),
        &profile.default_action,
        profile.default_errno_ret,
    )?;
    let mut rules = CompiledRules::new(default_action);
    for (i, syscall) in profile.syscalls.iter().enumerate() {
        let field = format!("syscalls[{i}]");
        let act = action(
            path,
            format!("{field}.action"),
            &syscall.action,
            syscall.errno_ret,
        )?;
        let checks = syscall
            .args
            .iter()
            .enumerate()
            .map(|(j, a)| check(path, format!("{field}.args[{j}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        if syscall.names.is_empty() && syscall.name.is_none() {
            return Err(invalid(path, format!("{field}.names"), "no syscall names"));
        }

        let inc = &syscall.includes;
        let exc = &syscall.excludes;
        if (!inc.arches.is_empty() && !inc.arch_matches())
            || !inc.caps_held(caps)
            || exc.arch_matches()
            || exc.caps_excluded(caps)
        {
            continue;
        }

        // runc: libseccomp once refused two comparisons on one argument, so such rules were
        // split into alternatives, and profiles in the wild rely on that reading.
        let repeats_an_index = checks
            .iter()
            .enumerate()
            .any(|(j, c)| checks[..j].iter().any(|d| d.index == c.index));
        let alternatives: Vec<Vec<ArgCheck>> = if repeats_an_index {
            checks.into_iter().map(|c| vec![c]).collect()
        } else {
            vec![checks]
        };
        for name in syscall.names.iter().chain(syscall.name.iter()) {
            for alt in &alternatives {
                rules.add_named(act.clone(), name, alt.clone());
            }
        }
    }
    Ok(rules)
}
