//! Seccomp for container processes: which profile a container asked for
//! (`parse_profile`), the BPF programs that implement it (`compile`), and installing them in
//! the container's init process (`install`).
//!
//! RuntimeDefault is containerd's default profile written as an allow list (see `default`):
//! everything it does not allow fails with EPERM. Localhost profiles are OCI/Docker JSON
//! files (see `oci`).
//!
//! seccompiler builds filters with a single "on match" and a single "no match" action, while
//! profiles mix actions. A profile therefore becomes several filters: one whose no-match
//! action is the profile's default and which lets through every syscall some rule mentions,
//! plus one filter per other action that applies that action to its own rules and allows
//! everything else. The kernel runs every installed filter and keeps the most severe result
//! (kill > trap > errno > trace > log > allow), so a syscall gets the strictest action of the
//! rules it matches, or the default when it matches none.
//!
//! Filters check the architecture first and kill the process on a foreign one, so 32-bit
//! (i386/arm) syscalls are refused inside containers; x32 syscall numbers on x86_64 match no
//! rule and get the default action.

mod default;
mod oci;
pub mod syscalls;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

use super::{CapabilitySet, SecurityError};

/// The seccomp profile of a container, as Kubernetes names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    /// No filter at all.
    Unconfined,
    /// containerd's default profile.
    RuntimeDefault,
    /// An OCI/Docker JSON profile at this absolute path on the node.
    Localhost(PathBuf),
}

/// Parses a Kubernetes `securityContext.seccompProfile` (`kind` is its `type`, with
/// `localhostProfile` relative to `profile_root`, kubelet's `<root-dir>/seccomp`) or a CRI
/// style profile string (`runtime/default`, `docker/default`, `unconfined`,
/// `localhost/<absolute path>`). An empty kind means Unconfined, as in the CRI.
pub fn parse_profile(
    kind: &str,
    localhost_profile: Option<&str>,
    profile_root: &Path,
) -> Result<SeccompProfile, SecurityError> {
    match kind {
        "" | "Unconfined" | "unconfined" => Ok(SeccompProfile::Unconfined),
        "RuntimeDefault" | "runtime/default" | "docker/default" => {
            Ok(SeccompProfile::RuntimeDefault)
        }
        "Localhost" => {
            let field = "seccompProfile.localhostProfile";
            let rel = localhost_profile.filter(|p| !p.is_empty()).ok_or_else(|| {
                SecurityError::InvalidSeccompField {
                    field,
                    reason: "required when type is Localhost".into(),
                }
            })?;
            let rel = Path::new(rel);
            if rel.is_absolute() {
                return Err(SecurityError::InvalidSeccompField {
                    field,
                    reason: format!(
                        "{} must be relative to {}",
                        rel.display(),
                        profile_root.display()
                    ),
                });
            }
            reject_parent_components(field, rel)?;
            Ok(SeccompProfile::Localhost(profile_root.join(rel)))
        }
        other => match other.strip_prefix("localhost/") {
            Some(path) => {
                let field = "seccompProfile";
                let path = Path::new(path);
                if !path.is_absolute() {
                    return Err(SecurityError::InvalidSeccompField {
                        field,
                        reason: format!("localhost profile {} must be absolute", path.display()),
                    });
                }
                reject_parent_components(field, path)?;
                Ok(SeccompProfile::Localhost(path.to_path_buf()))
            }
            None => Err(SecurityError::InvalidSeccompField {
                field: "seccompProfile.type",
                reason: format!(
                    "unknown profile type {other:?} (want RuntimeDefault, Unconfined or Localhost)"
                ),
            }),
        },
    }
}

/// A profile path must not climb out of the directory it is meant to live in.
fn reject_parent_components(field: &'static str, path: &Path) -> Result<(), SecurityError> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(SecurityError::InvalidSeccompField {
            field,
            reason: format!("{} must not contain \"..\"", path.display()),
        });
    }
    Ok(())
}

/// The architecture filters are built for: the one podrun runs on.
fn target_arch() -> Result<TargetArch, SecurityError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SecurityError::UnsupportedArchitecture(
            std::env::consts::ARCH,
        ))
    }
}

/// Builds the BPF programs implementing `profile` for a container whose capabilities are
/// `caps` (RuntimeDefault unlocks syscalls by bounding-set capability, as containerd's does).
/// Unconfined yields no programs. Install them all with `install`.
pub fn compile(
    profile: &SeccompProfile,
    caps: &CapabilitySet,
) -> Result<Vec<BpfProgram>, SecurityError> {
    match profile {
        SeccompProfile::Unconfined => Ok(Vec::new()),
        SeccompProfile::RuntimeDefault => {
            build_programs("RuntimeDefault", &runtime_default_rules(caps)?)
        }
        SeccompProfile::Localhost(path) => {
            let rules = oci::load(path, caps)?;
            build_programs(&path.display().to_string(), &rules)
        }
    }
}

/// One condition on a syscall argument.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ArgCheck {
    index: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
}

/// Rules of one profile, ready to become filters: for each syscall number, `None` means
/// "always", `Some(alternatives)` means "when any alternative's checks all hold".
type RuleMap = BTreeMap<i64, Option<Vec<Vec<ArgCheck>>>>;

/// A profile reduced to numbers: the action for syscalls no rule matches, and per action
/// the syscalls it applies to.
#[derive(Debug, Clone)]
struct CompiledRules {
    default_action: SeccompAction,
    by_action: Vec<(SeccompAction, RuleMap)>,
}

impl CompiledRules {
    fn new(default_action: SeccompAction) -> Self {
        CompiledRules {
            default_action,
            by_action: Vec::new(),
        }
    }

    /// Adds a rule; `checks` empty means unconditional. Rules whose action is the default
    /// change nothing and are dropped, as runc does.
    fn add(&mut self, action: SeccompAction, nr: i64, checks: Vec<ArgCheck>) {
        if action == self.default_action {
            return;
        }
        let map = match self.by_action.iter().position(|(a, _)| *a == action) {
            Some(i) => &mut self.by_action[i].1,
            None => {
                self.by_action.push((action, RuleMap::new()));
                &mut self.by_action.last_mut().expect("just pushed").1
            }
        };
        merge(map, nr, checks);
    }

    /// Adds a rule for a syscall name, skipping names this architecture does not have.
    fn add_named(&mut self, action: SeccompAction, name: &str, checks: Vec<ArgCheck>) {
        match syscalls::number(name) {
            Some(nr) => self.add(action, nr, checks),
            None => tracing::trace!(syscall = name, "syscall not on this architecture"),
        }
    }
}

/// Adds one alternative for syscall `nr` to `map`; empty `checks` make it unconditional.
fn merge(map: &mut RuleMap, nr: i64, checks: Vec<ArgCheck>) {
    let entry = map.entry(nr).or_insert_with(|| Some(Vec::new()));
    let Some(alternatives) = entry else {
        // Already unconditional: nothing can widen it.
        return;
    };
    if checks.is_empty() {
        *entry = None;
    } else if !alternatives.contains(&checks) {
        alternatives.push(checks);
    }
}

fn dword(index: u8, op: SeccompCmpOp, value: u64) -> ArgCheck {
    ArgCheck {
        index,
        len: SeccompCmpArgLen::Dword,
        op,
        value,
    }
}

fn runtime_default_rules(caps: &CapabilitySet) -> Result<CompiledRules, SecurityError> {
    target_arch()?;
    let allow = SeccompAction::Allow;
    let mut rules = CompiledRules::new(SeccompAction::Errno(libc::EPERM as u32));
    for name in default::ALLOWED {
        rules.add_named(allow.clone(), name, Vec::new());
    }
    for (cap, names) in default::BY_CAPABILITY {
        if caps.bounding_has(cap) {
            for name in *names {
                rules.add_named(allow.clone(), name, Vec::new());
            }
        }
    }
    // The argument checks compare only the low 32 bits: these arguments are C ints (or, for
    // clone, flags that all live in the low half), which is also what the kernel reads.
    rules.add_named(
        allow.clone(),
        "socket",
        vec![dword(0, SeccompCmpOp::Ne, default::AF_VSOCK)],
    );
    for persona in default::PERSONALITIES {
        rules.add_named(
            allow.clone(),
            "personality",
            vec![dword(0, SeccompCmpOp::Eq, *persona)],
        );
    }
    if !caps.bounding_has("CAP_SYS_ADMIN") {
        rules.add_named(
            allow.clone(),
            "clone",
            vec![dword(
                0,
                SeccompCmpOp::MaskedEq(default::CLONE_NAMESPACE_FLAGS),
                0,
            )],
        );
        // Let clone3 past the allow-list filter so that the ENOSYS filter decides it.
        rules.add_named(allow, "clone3", Vec::new());
        rules.add_named(
            SeccompAction::Errno(default::CLONE3_ERRNO),
            "clone3",
            Vec::new(),
        );
    }
    Ok(rules)
}

fn to_seccompiler_rules(
    profile: &str,
    map: &RuleMap,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SecurityError> {
    let backend = |source| SecurityError::CompileSeccomp {
        profile: profile.to_string(),
        source,
    };
    let mut out = BTreeMap::new();
    for (nr, alternatives) in map {
        let mut rules = Vec::new();
        for checks in alternatives.iter().flatten() {
            let conditions = checks
                .iter()
                .map(|c| SeccompCondition::new(c.index, c.len.clone(), c.op.clone(), c.value))
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            rules.push(SeccompRule::new(conditions).map_err(backend)?);
        }
        out.insert(*nr, rules);
    }
    Ok(out)
}

/// Turns rules into filters as the module doc describes.
fn build_programs(profile: &str, rules: &CompiledRules) -> Result<Vec<BpfProgram>, SecurityError> {
    let arch = target_arch()?;
    let backend = |source| SecurityError::CompileSeccomp {
        profile: profile.to_string(),
        source,
    };
    let mut programs = Vec::new();
    if rules.default_action != SeccompAction::Allow {
        // Everything any rule mentions passes this filter (under the same argument checks);
        // the per-action filters below then apply the rule's own action.
        let mut gate = RuleMap::new();
        for (_, map) in &rules.by_action {
            for (nr, alternatives) in map {
                match alternatives {
                    None => merge(&mut gate, *nr, Vec::new()),
                    Some(alts) => {
                        for checks in alts {
                            merge(&mut gate, *nr, checks.clone());
                        }
                    }
                }
            }
        }
        let filter = SeccompFilter::new(
            to_seccompiler_rules(profile, &gate)?,
            rules.default_action.clone(),
            SeccompAction::Allow,
            arch,
        )
        .map_err(backend)?;
        programs.push(BpfProgram::try_from(filter).map_err(backend)?);
    }
    for (action, map) in &rules.by_action {
        if *action == SeccompAction::Allow {
            continue;
        }
        let filter = SeccompFilter::new(
            to_seccompiler_rules(profile, map)?,
            SeccompAction::Allow,
            action.clone(),
            arch,
        )
        .map_err(backend)?;
        programs.push(BpfProgram::try_from(filter).map_err(backend)?);
    }
    tracing::debug!(
        profile,
        filters = programs.len(),
        instructions = programs.iter().map(Vec::len).sum::<usize>(),
        "compiled seccomp profile"
    );
    Ok(programs)
}

/// Installs `programs` on the calling thread. Runs in the container's init process right
/// before execve, and does not allocate (it runs between fork and exec).
///
/// The kernel accepts a filter only from a thread that has set no_new_privs or holds
/// CAP_SYS_ADMIN in its effective set. So either:
/// - set `PR_SET_NO_NEW_PRIVS` first (Kubernetes `allowPrivilegeEscalation: false`) and call
///   this last, after `capabilities::apply`, so only execve runs under the filter; or
/// - without no_new_privs, call this before `capabilities::apply` drops CAP_SYS_ADMIN (and
///   before setuid); the profile must then allow the syscalls of the remaining steps
///   (capset, prctl, setuid, setgroups, execve), as RuntimeDefault does.
///
/// Unlike `seccompiler::apply_filter`, this does not turn no_new_privs on by itself: whether
/// setuid binaries keep working is the pod's decision, not a side effect of seccomp.
pub fn install(programs: &[BpfProgram]) -> Result<(), SecurityError> {
    for (index, program) in programs.iter().enumerate() {
        if program.is_empty() {
            continue;
        }
        let fprog = libc::sock_fprog {
            // seccompiler refuses programs over BPF_MAXINSNS (4096), so this fits.
            len: program.len() as libc::c_ushort,
            // seccompiler's sock_filter is #[repr(C)] with the kernel's layout.
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fprog points at a live, correctly laid out BPF program; the kernel copies
        // it during the call and keeps no reference.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0 as libc::c_ulong,
                &fprog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(SecurityError::InstallSeccomp {
                index,
                errno: nix::errno::Errno::last(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
