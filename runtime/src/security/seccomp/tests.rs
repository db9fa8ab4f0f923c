use std::io::Write;

use super::*;
use crate::security::capabilities;

fn caps_with(extra: &[&str]) -> CapabilitySet {
    let mut bounding = capabilities::default_capabilities();
    bounding.extend(extra.iter().map(|s| s.to_string()));
    bounding.sort();
    CapabilitySet {
        effective: bounding.clone(),
        permitted: bounding.clone(),
        bounding,
        ..Default::default()
    }
}

#[test]
fn parse_profile_kinds() {
    let root = Path::new("/var/lib/kubelet/seccomp");
    let ok = |kind, local| parse_profile(kind, local, root).unwrap();
    assert_eq!(ok("RuntimeDefault", None), SeccompProfile::RuntimeDefault);
    assert_eq!(ok("runtime/default", None), SeccompProfile::RuntimeDefault);
    assert_eq!(ok("docker/default", None), SeccompProfile::RuntimeDefault);
    assert_eq!(ok("Unconfined", None), SeccompProfile::Unconfined);
    assert_eq!(ok("unconfined", None), SeccompProfile::Unconfined);
    assert_eq!(ok("", None), SeccompProfile::Unconfined);
    assert_eq!(
        ok("Localhost", Some("profiles/audit.json")),
        SeccompProfile::Localhost(root.join("profiles/audit.json"))
    );
    assert_eq!(
        ok("localhost//etc/podrun/seccomp.json", None),
        SeccompProfile::Localhost("/etc/podrun/seccomp.json".into())
    );
}

#[test]
fn parse_profile_rejects_escapes() {
    let root = Path::new("/var/lib/kubelet/seccomp");
    let err = |kind, local| parse_profile(kind, local, root).unwrap_err().to_string();
    for (kind, local, want) in [
        (
            "Localhost",
            Some("/etc/passwd"),
            "seccompProfile.localhostProfile",
        ),
        (
            "Localhost",
            Some("../x.json"),
            "seccompProfile.localhostProfile",
        ),
        ("Localhost", Some("a/../../x.json"), ".."),
        ("Localhost", None, "seccompProfile.localhostProfile"),
        ("Localhost", Some(""), "required"),
        ("localhost/relative.json", None, "must be absolute"),
        ("localhost//a/../b.json", None, ".."),
        ("Bogus", None, "seccompProfile.type"),
    ] {
        let msg = err(kind, local);
        assert!(msg.contains(want), "{kind} {local:?}: {msg}");
    }
}

#[test]
fn unconfined_compiles_to_nothing() {
    assert!(compile(&SeccompProfile::Unconfined, &caps_with(&[]))
        .unwrap()
        .is_empty());
}

#[test]
fn runtime_default_shape() {
    let plain = compile(&SeccompProfile::RuntimeDefault, &caps_with(&[])).unwrap();
    // The allow list plus the clone3 ENOSYS filter.
    assert_eq!(plain.len(), 2);
    let admin = compile(
        &SeccompProfile::RuntimeDefault,
        &caps_with(&["CAP_SYS_ADMIN"]),
    )
    .unwrap();
    assert_eq!(admin.len(), 1);

    let rules = runtime_default_rules(&caps_with(&[])).unwrap();
    let allowed = &rules.by_action[0].1;
    let nr = |n| syscalls::number(n).unwrap();
    assert_eq!(rules.by_action[0].0, SeccompAction::Allow);
    assert_eq!(allowed.get(&nr("read")), Some(&None));
    assert!(!allowed.contains_key(&nr("keyctl")));
    assert!(!allowed.contains_key(&nr("unshare")));
    assert_eq!(allowed.get(&nr("ptrace")), Some(&None));
    assert_eq!(allowed[&nr("personality")].as_ref().unwrap().len(), 5);
    assert!(allowed[&nr("clone")].is_some());

    let rules = runtime_default_rules(&caps_with(&["CAP_SYS_ADMIN", "CAP_SYS_TIME"])).unwrap();
    let allowed = &rules.by_action[0].1;
    assert_eq!(allowed.get(&nr("unshare")), Some(&None));
    assert_eq!(allowed.get(&nr("clone")), Some(&None));
    assert_eq!(allowed.get(&nr("clock_settime")), Some(&None));
    assert!(!allowed.contains_key(&nr("init_module")));
}

/// Runs `check` in a forked child under `programs` (with no_new_privs) and returns the
/// child's exit code. The child only makes raw syscalls and `_exit`s, which is safe after
/// fork in a multithreaded test binary.
fn run_filtered(programs: &[BpfProgram], check: fn() -> i32) -> i32 {
    // SAFETY: the child does not allocate or take locks: prctl, seccomp, raw syscalls, _exit.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(100);
            }
            if install(programs).is_err() {
                libc::_exit(101);
            }
            libc::_exit(check());
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(
            libc::WIFEXITED(status),
            "child died abnormally, status {status:#x}"
        );
        libc::WEXITSTATUS(status)
    }
}

fn errno() -> i32 {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Returns 0 if the raw syscall failed with `want`, 1 otherwise.
fn fails_with(rc: libc::c_long, want: i32) -> bool {
    rc == -1 && errno() == want
}

fn check_default_unprivileged() -> i32 {
    // SAFETY: raw syscalls with harmless arguments; the ones that are allowed either do
    // nothing (unshare(0)) or fail in the kernel for bad arguments.
    unsafe {
        if libc::getpid() <= 0 {
            return 1;
        }
        if !fails_with(libc::syscall(libc::SYS_keyctl, 0, -3, 0), libc::EPERM) {
            return 2;
        }
        if !fails_with(libc::syscall(libc::SYS_unshare, 0), libc::EPERM) {
            return 3;
        }
        if !fails_with(
            libc::syscall(libc::SYS_socket, 40, libc::SOCK_STREAM, 0),
            libc::EPERM,
        ) {
            return 4;
        }
        let fd = libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return 5;
        }
        libc::close(fd as i32);
        if libc::syscall(libc::SYS_personality, 0xffff_ffffu64) == -1 {
            return 6;
        }
        if !fails_with(
            libc::syscall(libc::SYS_personality, libc::ADDR_NO_RANDOMIZE),
            libc::EPERM,
        ) {
            return 7;
        }
        if !fails_with(
            libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0),
            libc::ENOSYS,
        ) {
            return 8;
        }
        // Namespace flags: refused by the filter. Were it let through, CLONE_SIGHAND
        // without CLONE_VM makes the kernel reject it with EINVAL, so no child appears.
        let flags = (libc::CLONE_NEWUTS | libc::CLONE_SIGHAND) as libc::c_ulong;
        if !fails_with(
            libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0),
            libc::EPERM,
        ) {
            return 9;
        }
        if !fails_with(libc::syscall(libc::SYS_clock_settime, 0, 0), libc::EPERM) {
            return 10;
        }
        0
    }
}

#[test]
fn runtime_default_blocks_for_real() {
    let programs = compile(&SeccompProfile::RuntimeDefault, &caps_with(&[])).unwrap();
    assert_eq!(run_filtered(&programs, check_default_unprivileged), 0);
}

fn check_default_admin() -> i32 {
    // SAFETY: see check_default_unprivileged.
    unsafe {
        if libc::syscall(libc::SYS_unshare, 0) != 0 {
            return 1;
        }
        // Let through to the kernel, which rejects the missing clone_args.
        if !fails_with(
            libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0),
            libc::EINVAL,
        ) {
            return 2;
        }
        if !fails_with(libc::syscall(libc::SYS_keyctl, 0, -3, 0), libc::EPERM) {
            return 3;
        }
        0
    }
}

#[test]
fn runtime_default_with_sys_admin_for_real() {
    let programs = compile(
        &SeccompProfile::RuntimeDefault,
        &caps_with(&["CAP_SYS_ADMIN"]),
    )
    .unwrap();
    assert_eq!(run_filtered(&programs, check_default_admin), 0);
}

fn write_profile(dir: &tempfile::TempDir, json: &str) -> PathBuf {
    let path = dir.path().join("profile.json");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    path
}

fn check_deny_list() -> i32 {
    // SAFETY: raw syscalls without side effects.
    unsafe {
        if !fails_with(libc::syscall(libc::SYS_getppid), libc::ENOSYS) {
            return 1;
        }
        let mut uts = std::mem::zeroed::<libc::utsname>();
        if !fails_with(libc::syscall(libc::SYS_uname, &mut uts), libc::EPERM) {
            return 2;
        }
        if libc::syscall(libc::SYS_getpid) <= 0 {
            return 3;
        }
        0
    }
}

#[test]
fn localhost_deny_list_for_real() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_profile(
        &dir,
        r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
            "syscalls": [
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"name": "uname", "action": "SCMP_ACT_ERRNO", "comment": "no errnoRet: EPERM"},
                {"names": ["not_a_syscall"], "action": "SCMP_ACT_KILL"}
            ]
        }"#,
    );
    let programs = compile(&SeccompProfile::Localhost(path), &caps_with(&[])).unwrap();
    assert_eq!(run_filtered(&programs, check_deny_list), 0);
}

fn check_allow_list() -> i32 {
    // SAFETY: raw syscalls without side effects (signal 0 only probes).
    unsafe {
        let pid = libc::syscall(libc::SYS_getpid);
        if pid <= 0 {
            return 1;
        }
        if libc::syscall(libc::SYS_kill, pid, 0) != 0 {
            return 2;
        }
        if !fails_with(
            libc::syscall(libc::SYS_kill, pid, libc::SIGCONT),
            libc::EACCES,
        ) {
            return 3;
        }
        if !fails_with(libc::syscall(libc::SYS_getuid), libc::EACCES) {
            return 4;
        }
        // Masked: allowed when the low bit of the argument is clear.
        let rc = libc::syscall(libc::SYS_getpriority, 0, 0);
        if rc == -1 && errno() == libc::EACCES {
            return 5;
        }
        if !fails_with(libc::syscall(libc::SYS_getpriority, 1, 0), libc::EACCES) {
            return 6;
        }
        0
    }
}

#[test]
fn localhost_allow_list_for_real() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_profile(
        &dir,
        r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 13,
            "syscalls": [
                {"names": ["getpid", "exit", "exit_group"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getpriority"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 1, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        }"#,
    );
    let programs = compile(&SeccompProfile::Localhost(path), &caps_with(&[])).unwrap();
    assert_eq!(programs.len(), 1);
    assert_eq!(run_filtered(&programs, check_allow_list), 0);
}

#[test]
fn localhost_docker_conditions_and_split_args() {
    let json = br#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["unshare"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW",
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["arch_prctl", "set_tls"], "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["s390x"]}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["read"], "action": "SCMP_ACT_ERRNO"}
        ]
    }"#;
    let nr = |n| syscalls::number(n).unwrap();
    let path = Path::new("p.json");

    let rules = oci::parse(path, json, &caps_with(&[])).unwrap();
    assert_eq!(rules.by_action.len(), 1, "ERRNO rule equals the default");
    let allowed = &rules.by_action[0].1;
    assert!(!allowed.contains_key(&nr("unshare")));
    assert!(allowed.contains_key(&nr("ptrace")));
    assert!(!allowed.contains_key(&nr("read")));
    // Only s390x would get these, whichever of them this architecture has.
    for name in ["arch_prctl", "set_tls"] {
        assert!(syscalls::number(name).is_none_or(|n| !allowed.contains_key(&n)));
    }
    let personality = allowed[&nr("personality")].as_ref().unwrap();
    assert_eq!(
        personality.len(),
        2,
        "same-index conditions become alternatives"
    );

    let rules = oci::parse(path, json, &caps_with(&["CAP_SYS_ADMIN"])).unwrap();
    let allowed = &rules.by_action[0].1;
    assert!(allowed.contains_key(&nr("unshare")));
    assert!(!allowed.contains_key(&nr("ptrace")));
}

#[test]
fn localhost_errors_name_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps_with(&[]);
    let cases = [
        ("{not json", "(document)"),
        (r#"{"syscalls": []}"#, "defaultAction"),
        (
            r#"{"defaultAction": "SCMP_ACT_SOMETIMES"}"#,
            "defaultAction",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": ["write"], "action": "ALLOW"}]}"#,
            "syscalls[1].action",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "syscalls[0].action",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}"#,
            "syscalls[0].args[0].op",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
            "syscalls[0].args[0].index",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": "read", "action": "SCMP_ACT_ALLOW"}]}"#,
            "syscalls[0].names",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#,
            "syscalls[0].names",
        ),
    ];
    for (json, field) in cases {
        let path = write_profile(&dir, json);
        let err = compile(&SeccompProfile::Localhost(path.clone()), &caps).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, SecurityError::InvalidSeccompProfile { .. }),
            "{json}: {msg}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(field), "{json}: want {field} in {msg}");
    }

    let missing = dir.path().join("missing.json");
    let err = compile(&SeccompProfile::Localhost(missing), &caps).unwrap_err();
    assert!(
        matches!(err, SecurityError::ReadSeccompProfile { .. }),
        "{err}"
    );
}

#[test]
fn install_of_nothing_is_a_no_op() {
    install(&[]).unwrap();
}
