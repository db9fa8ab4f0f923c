//! Linux capabilities of a container process: resolving a Kubernetes
//! `securityContext.capabilities` (add/drop) plus `privileged` into the five capability sets
//! the way containerd's CRI plugin does, and applying those sets in the container's init
//! process.
//!
//! Resolution order (containerd's `WithCapabilities`): start from the 14 default
//! capabilities; `ALL` in add replaces the set with every capability of the running kernel;
//! `ALL` in drop then empties it; individual adds are applied next and individual drops last,
//! so a capability both added and dropped ends up dropped.
//!
//! Non-root processes: containerd 1.7 puts the resolved set into the bounding, effective and
//! permitted sets for every user, and it is the kernel that clears effective and permitted
//! when a non-root user execs a binary without file capabilities. podrun writes that outcome
//! down directly: for `uid != 0` only the bounding set is filled, and effective, permitted,
//! inheritable and ambient are empty. The process can still gain capabilities through setuid
//! or file-capability binaries up to the bounding set, exactly as under containerd, and
//! nothing is put in the ambient set (Kubernetes has no field that asks for it).

use std::collections::BTreeSet;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use serde::{Deserialize, Serialize};

use super::SecurityError;

/// The capability sets a container process runs with. Each list holds names such as
/// `"CAP_CHOWN"`, sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitySet {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
}

impl CapabilitySet {
    /// Whether `name` (e.g. `"CAP_SYS_ADMIN"`) is in the bounding set. The bounding set is
    /// the ceiling of what the process can ever hold, so this is what seccomp's
    /// capability-conditional rules look at, as containerd's do.
    pub fn bounding_has(&self, name: &str) -> bool {
        self.bounding.iter().any(|c| c == name)
    }
}

/// containerd's default capability set for unprivileged containers.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// containerd's 14 default capabilities, as sorted `CAP_*` names.
pub fn default_capabilities() -> Vec<String> {
    names(DEFAULT_CAPABILITIES.iter().copied())
}

/// Every capability the running kernel knows and podrun holds. Probed with `PR_CAPBSET_READ`, which needs no
/// /proc (the init process may already be inside the container's rootfs), falling back to
/// everything the caps crate knows if probing finds nothing.
fn kernel_capabilities() -> CapsHashSet {
    let supported = caps::runtime::thread_all_supported();
    let supported = if supported.is_empty() {
        caps::all()
    } else {
        supported
    };
    // "All" can only be what podrun itself may hand on: its own bounding set (some hosts
    // withhold capabilities such as CAP_SYS_RESOURCE even from root), as containerd does.
    match caps::read(None, caps::CapSet::Bounding) {
        Ok(own) if !own.is_empty() => supported.intersection(&own).copied().collect(),
        _ => supported,
    }
}

fn names(caps: impl Iterator<Item = Capability>) -> Vec<String> {
    caps.map(|c| c.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Parses a Kubernetes capability name: case-insensitive, with or without the `CAP_`
/// prefix (Kubernetes documents names without it; OCI specs carry them with it).
fn parse_capability(field: &'static str, name: &str) -> Result<Capability, SecurityError> {
    let upper = name.trim().to_ascii_uppercase();
    let canonical = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    Capability::from_str(&canonical).map_err(|_| SecurityError::UnknownCapability {
        field,
        name: name.to_string(),
    })
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// Resolves `securityContext.capabilities.add` / `.drop` and `privileged` for a process
/// running as `uid` into its capability sets (see the module doc for the rules).
///
/// Unknown names are rejected with an error naming the capability, whether they appear in
/// add or drop. Capabilities that Linux defines but the running kernel does not support are
/// left out, since the kernel would refuse to grant them.
pub fn resolve(
    add: &[String],
    drop: &[String],
    privileged: bool,
    uid: u32,
) -> Result<CapabilitySet, SecurityError> {
    resolve_with(add, drop, privileged, uid, &kernel_capabilities())
}

fn resolve_with(
    add: &[String],
    drop: &[String],
    privileged: bool,
    uid: u32,
    kernel: &CapsHashSet,
) -> Result<CapabilitySet, SecurityError> {
    // Validate every name first so a bad name is reported even when privileged makes the
    // lists irrelevant: a typo should never pass silently.
    let added: Vec<Capability> = add
        .iter()
        .filter(|n| !is_all(n))
        .map(|n| parse_capability("add", n))
        .collect::<Result<_, _>>()?;
    let dropped: Vec<Capability> = drop
        .iter()
        .filter(|n| !is_all(n))
        .map(|n| parse_capability("drop", n))
        .collect::<Result<_, _>>()?;

    let mut set: CapsHashSet = if privileged {
        kernel.clone()
    } else {
        let mut set: CapsHashSet = DEFAULT_CAPABILITIES.iter().copied().collect();
        if add.iter().any(|n| is_all(n)) {
            set = kernel.clone();
        }
        if drop.iter().any(|n| is_all(n)) {
            set.clear();
        }
        set.extend(added);
        for cap in &dropped {
            set.remove(cap);
        }
        set
    };
    set.retain(|c| kernel.contains(c));

    let all = names(set.into_iter());
    Ok(if uid == 0 {
        CapabilitySet {
            bounding: all.clone(),
            effective: all.clone(),
            permitted: all,
            inheritable: Vec::new(),
            ambient: Vec::new(),
        }
    } else {
        CapabilitySet {
            bounding: all,
            ..CapabilitySet::default()
        }
    })
}

/// The capability syscalls `apply` needs, behind a trait so the order of operations can be
/// tested without privileges.
pub trait CapabilityOps {
    /// The capabilities this kernel supports.
    fn supported(&mut self) -> CapsHashSet;
    fn read(&mut self, set: CapSet) -> Result<CapsHashSet, caps::errors::CapsError>;
    fn set(&mut self, set: CapSet, caps: &CapsHashSet) -> Result<(), caps::errors::CapsError>;
    fn drop_bounding(&mut self, cap: Capability) -> Result<(), caps::errors::CapsError>;
    fn set_keepcaps(&mut self, keep: bool) -> Result<(), caps::errors::CapsError>;
}

/// The real capability syscalls of the calling thread, through the caps crate.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxCapabilities;

impl CapabilityOps for LinuxCapabilities {
    fn supported(&mut self) -> CapsHashSet {
        kernel_capabilities()
    }
    fn read(&mut self, set: CapSet) -> Result<CapsHashSet, caps::errors::CapsError> {
        caps::read(None, set)
    }
    fn set(&mut self, set: CapSet, value: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
        caps::set(None, set, value)
    }
    fn drop_bounding(&mut self, cap: Capability) -> Result<(), caps::errors::CapsError> {
        caps::drop(None, CapSet::Bounding, cap)
    }
    fn set_keepcaps(&mut self, keep: bool) -> Result<(), caps::errors::CapsError> {
        caps::securebits::set_keepcaps(keep)
    }
}

/// Call in the container's init process before setuid: asks the kernel to keep the
/// permitted set across the switch to a non-root uid, so `apply` can still drop from the
/// bounding set (which needs CAP_SETPCAP) afterwards. `apply` clears the flag again.
pub fn prepare_for_setuid() -> Result<(), SecurityError> {
    LinuxCapabilities
        .set_keepcaps(true)
        .map_err(|source| SecurityError::ApplyCapabilities {
            step: "set keepcaps",
            source,
        })
}

/// Applies `set` to the calling thread. Runs in the container's init process (a
/// single-threaded forked child) after setuid, which must have been preceded by
/// `prepare_for_setuid` when switching away from root.
pub fn apply(set: &CapabilitySet) -> Result<(), SecurityError> {
    apply_with(&mut LinuxCapabilities, set)
}

fn to_caps(step: &'static str, names: &[String]) -> Result<CapsHashSet, SecurityError> {
    names
        .iter()
        .map(|n| parse_capability(step, n))
        .collect::<Result<_, _>>()
}

/// `apply` against any `CapabilityOps`: the order of operations lives here.
pub fn apply_with(ops: &mut impl CapabilityOps, set: &CapabilitySet) -> Result<(), SecurityError> {
    let err = |step| move |source| SecurityError::ApplyCapabilities { step, source };
    let bounding = to_caps("bounding", &set.bounding)?;
    let effective = to_caps("effective", &set.effective)?;
    let permitted = to_caps("permitted", &set.permitted)?;
    let inheritable = to_caps("inheritable", &set.inheritable)?;
    let ambient = to_caps("ambient", &set.ambient)?;

    // After setuid with keepcaps the kernel has emptied the effective set; raise what is
    // still permitted so CAP_SETPCAP is effective for the bounding-set drops below.
    let held = ops.read(CapSet::Permitted).map_err(err("read permitted"))?;
    ops.set(CapSet::Effective, &held)
        .map_err(err("raise effective"))?;

    // Deterministic order keeps logs and the fake's record stable.
    let mut supported: Vec<Capability> = ops.supported().into_iter().collect();
    supported.sort_by_key(|c| c.index());
    for cap in supported.into_iter().filter(|c| !bounding.contains(c)) {
        ops.drop_bounding(cap)
            .map_err(err("drop from bounding set"))?;
    }

    // Effective first: each capset call must keep effective within permitted.
    ops.set(CapSet::Effective, &effective)
        .map_err(err("set effective"))?;
    ops.set(CapSet::Permitted, &permitted)
        .map_err(err("set permitted"))?;
    ops.set(CapSet::Inheritable, &inheritable)
        .map_err(err("set inheritable"))?;
    // Ambient capabilities must be both permitted and inheritable, so they come last.
    ops.set(CapSet::Ambient, &ambient)
        .map_err(err("set ambient"))?;
    ops.set_keepcaps(false).map_err(err("clear keepcaps"))?;
    tracing::debug!(
        bounding = set.bounding.len(),
        effective = set.effective.len(),
        "applied capabilities"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// A kernel that knows every capability the caps crate knows, so tests do not depend on
    /// the machine they run on.
    fn kernel() -> CapsHashSet {
        caps::all()
    }

    fn all_names() -> Vec<String> {
        names(caps::all().into_iter())
    }

    #[test]
    fn default_set_is_containerds() {
        let d = default_capabilities();
        assert_eq!(d.len(), 14);
        assert!(d.windows(2).all(|w| w[0] < w[1]));
        assert!(d.contains(&"CAP_AUDIT_WRITE".to_string()));
        assert!(!d.contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn resolve_table() {
        struct Case {
            add: &'static [&'static str],
            drop: &'static [&'static str],
            privileged: bool,
            want: fn() -> Vec<String>,
        }
        let cases = [
            Case {
                add: &[],
                drop: &[],
                privileged: false,
                want: default_capabilities,
            },
            Case {
                add: &["ALL"],
                drop: &[],
                privileged: false,
                want: all_names,
            },
            Case {
                add: &["all"],
                drop: &["CHOWN"],
                privileged: false,
                want: || {
                    let mut v = all_names();
                    v.retain(|c| c != "CAP_CHOWN");
                    v
                },
            },
            Case {
                add: &["NET_BIND_SERVICE", "cap_sys_time"],
                drop: &["ALL"],
                privileged: false,
                want: || s(&["CAP_NET_BIND_SERVICE", "CAP_SYS_TIME"]),
            },
            Case {
                add: &[],
                drop: &["all"],
                privileged: false,
                want: Vec::new,
            },
            Case {
                add: &["SYS_ADMIN", "NET_ADMIN"],
                drop: &["NET_ADMIN", "KILL", "MKNOD"],
                privileged: false,
                want: || {
                    let mut v = default_capabilities();
                    v.retain(|c| c != "CAP_KILL" && c != "CAP_MKNOD");
                    v.push("CAP_SYS_ADMIN".into());
                    v.sort();
                    v
                },
            },
            Case {
                add: &[],
                drop: &["ALL"],
                privileged: true,
                want: all_names,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let got = resolve_with(&s(c.add), &s(c.drop), c.privileged, 0, &kernel()).unwrap();
            let want = (c.want)();
            assert_eq!(got.bounding, want, "case {i}");
            assert_eq!(got.effective, want, "case {i}");
            assert_eq!(got.permitted, want, "case {i}");
            assert!(
                got.inheritable.is_empty() && got.ambient.is_empty(),
                "case {i}"
            );
        }
    }

    #[test]
    fn non_root_gets_bounding_only() {
        let got = resolve_with(&s(&["NET_ADMIN"]), &[], false, 1000, &kernel()).unwrap();
        assert!(got.bounding_has("CAP_NET_ADMIN"));
        assert_eq!(got.bounding.len(), 15);
        assert!(got.effective.is_empty());
        assert!(got.permitted.is_empty());
        assert!(got.inheritable.is_empty());
        assert!(got.ambient.is_empty());
    }

    #[test]
    fn unknown_names_are_named() {
        let err = resolve_with(&s(&["CHOWN", "NET_FLY"]), &[], false, 0, &kernel()).unwrap_err();
        assert!(err.to_string().contains("NET_FLY"), "{err}");
        assert!(err.to_string().contains("add"), "{err}");
        let err = resolve_with(&[], &s(&["CAP_BOGUS"]), true, 0, &kernel()).unwrap_err();
        assert!(err.to_string().contains("CAP_BOGUS"), "{err}");
    }

    #[test]
    fn capabilities_the_kernel_lacks_are_left_out() {
        let mut k = kernel();
        k.remove(&Capability::CAP_CHECKPOINT_RESTORE);
        let got = resolve_with(&s(&["ALL"]), &[], false, 0, &k).unwrap();
        assert!(!got.bounding_has("CAP_CHECKPOINT_RESTORE"));
        assert!(got.bounding_has("CAP_SYS_ADMIN"));
    }

    #[test]
    fn resolve_uses_the_running_kernel() {
        let got = resolve(&[], &[], true, 0).unwrap();
        assert!(got.bounding_has("CAP_SYS_ADMIN"));
    }

    #[derive(Default)]
    struct FakeCaps {
        calls: Vec<String>,
        permitted: CapsHashSet,
    }

    impl CapabilityOps for FakeCaps {
        fn supported(&mut self) -> CapsHashSet {
            [
                Capability::CAP_CHOWN,
                Capability::CAP_KILL,
                Capability::CAP_SYS_ADMIN,
            ]
            .into_iter()
            .collect()
        }
        fn read(&mut self, set: CapSet) -> Result<CapsHashSet, caps::errors::CapsError> {
            self.calls.push(format!("read {set:?}"));
            Ok(self.permitted.clone())
        }
        fn set(&mut self, set: CapSet, v: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
            self.calls
                .push(format!("set {set:?} {:?}", names(v.iter().copied())));
            if matches!(set, CapSet::Permitted) {
                self.permitted = v.clone();
            }
            Ok(())
        }
        fn drop_bounding(&mut self, cap: Capability) -> Result<(), caps::errors::CapsError> {
            self.calls.push(format!("drop {cap}"));
            Ok(())
        }
        fn set_keepcaps(&mut self, keep: bool) -> Result<(), caps::errors::CapsError> {
            self.calls.push(format!("keepcaps {keep}"));
            Ok(())
        }
    }

    #[test]
    fn apply_order() {
        let mut fake = FakeCaps {
            permitted: [Capability::CAP_SETPCAP].into_iter().collect(),
            ..Default::default()
        };
        let set = CapabilitySet {
            bounding: s(&["CAP_CHOWN"]),
            effective: s(&["CAP_CHOWN"]),
            permitted: s(&["CAP_CHOWN"]),
            ..Default::default()
        };
        apply_with(&mut fake, &set).unwrap();
        assert_eq!(
            fake.calls,
            s(&[
                "read Permitted",
                r#"set Effective ["CAP_SETPCAP"]"#,
                "drop CAP_KILL",
                "drop CAP_SYS_ADMIN",
                r#"set Effective ["CAP_CHOWN"]"#,
                r#"set Permitted ["CAP_CHOWN"]"#,
                "set Inheritable []",
                "set Ambient []",
                "keepcaps false",
            ])
        );
    }
}
