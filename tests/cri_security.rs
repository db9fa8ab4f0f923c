//! CRI security contexts and namespaces of `podrun agent`, after critest's "Security
//! Context" specs: users, groups and supplemental groups, read-only rootfs, privileged
//! containers, capabilities (add, drop, ALL), no_new_privs, masked and read-only paths,
//! seccomp (RuntimeDefault, Unconfined, Localhost), and host or shared namespaces.

mod common;
mod cri_common;

use cri_common::{host_ns, Agent};
use podrun_cri_proto::v1;
use v1::security_profile::ProfileType;

const CAP_CHOWN: u32 = 0;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// A security context with `f` applied, on a long-running busybox container.
fn secured(
    a: &Agent,
    name: &str,
    f: impl FnOnce(&mut v1::LinuxContainerSecurityContext),
) -> v1::ContainerConfig {
    let mut c = a.container_config(name, &["sleep", "3600"]);
    f(c.linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default));
    c
}

/// A field of /proc/self/status as the exec'd process sees it.
async fn status_field(a: &mut Agent, c: &str, field: &str) -> String {
    let out = a
        .exec(c, &["grep", &format!("^{field}:"), "/proc/self/status"])
        .await;
    out.split(':').nth(1).unwrap_or_default().trim().to_string()
}

async fn cap_eff(a: &mut Agent, c: &str) -> u64 {
    u64::from_str_radix(&status_field(a, c, "CapEff").await, 16).unwrap()
}

fn has(caps: u64, bit: u32) -> bool {
    caps & (1u64 << bit) != 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_groups_and_supplemental_groups() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("users").await;

    let c = secured(&a, "ids", |s| {
        s.run_as_user = Some(v1::Int64Value { value: 1000 });
        s.run_as_group = Some(v1::Int64Value { value: 2000 });
        s.supplemental_groups = vec![1234, 5678];
    });
    let c = a.run_container(&sb, &cfg, c).await;
    assert_eq!(a.exec(&c, &["id", "-u"]).await.trim(), "1000");
    assert_eq!(a.exec(&c, &["id", "-g"]).await.trim(), "2000");
    let groups = a.exec(&c, &["id", "-G"]).await;
    let groups: Vec<&str> = groups.split_whitespace().collect();
    assert!(
        groups.contains(&"1234") && groups.contains(&"5678"),
        "{groups:?}"
    );
    let u = a
        .container_status(&c)
        .await
        .unwrap()
        .user
        .and_then(|u| u.linux)
        .expect("the user in the container status");
    assert_eq!((u.uid, u.gid), (1000, 2000));
    assert!(u.supplemental_groups.contains(&1234));

    // A user name is resolved in the image's /etc/passwd, with its primary group.
    let named = secured(&a, "named", |s| s.run_as_username = "app".into());
    let named = a.run_container(&sb, &cfg, named).await;
    assert_eq!(a.exec(&named, &["id", "-u"]).await.trim(), "1000");
    assert_eq!(a.exec(&named, &["id", "-g"]).await.trim(), "1000");
    assert_eq!(a.exec(&named, &["id", "-un"]).await.trim(), "app");

    // A UID without an entry in the image still runs.
    let anon = secured(&a, "anon", |s| {
        s.run_as_user = Some(v1::Int64Value { value: 4242 })
    });
    let anon = a.run_container(&sb, &cfg, anon).await;
    assert_eq!(a.exec(&anon, &["id", "-u"]).await.trim(), "4242");

    // An unknown user name is refused at create, naming the field and the user.
    let bad = secured(&a, "baduser", |s| s.run_as_username = "no-such-user".into());
    refused_at_create(
        a.try_create_container(&sb, &cfg, bad).await,
        "config.linux.security_context.run_as_username: user \"no-such-user\" not found",
    );
    // A group without a user is refused at create.
    let bad = secured(&a, "groupnouser", |s| {
        s.run_as_group = Some(v1::Int64Value { value: 2000 })
    });
    refused_at_create(
        a.try_create_container(&sb, &cfg, bad).await,
        "config.linux.security_context.run_as_group: set without run_as_user",
    );
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_and_privileged() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("ro").await;

    let ro = secured(&a, "ro", |s| s.readonly_rootfs = true);
    let ro = a.run_container(&sb, &cfg, ro).await;
    let (code, _, _) = a.exec_any(&ro, &["touch", "/new-file"]).await;
    assert_ne!(code, 0, "a read-only rootfs took a write");
    let rw = a
        .run_container(&sb, &cfg, a.container_config("rw", &["sleep", "3600"]))
        .await;
    a.exec(&rw, &["touch", "/new-file"]).await;

    // Not privileged: no mount, no SYS_ADMIN.
    let (code, _, _) = a
        .exec_any(
            &rw,
            &["sh", "-c", "mkdir -p /tmp/m && mount -t tmpfs x /tmp/m"],
        )
        .await;
    assert_ne!(code, 0);
    assert!(!has(cap_eff(&mut a, &rw).await, CAP_SYS_ADMIN));

    let mut pcfg = a.sandbox_config("privileged");
    pcfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    let psb = a.run_sandbox(&pcfg).await;
    let p = secured(&a, "priv", |s| s.privileged = true);
    let p = a.run_container(&psb, &pcfg, p).await;
    assert!(has(cap_eff(&mut a, &p).await, CAP_SYS_ADMIN));
    a.exec(
        &p,
        &["sh", "-c", "mkdir -p /tmp/m && mount -t tmpfs x /tmp/m"],
    )
    .await;
    // No seccomp filter, the host's devices, writable /sys.
    assert_eq!(status_field(&mut a, &p, "Seccomp").await, "0");
    let devs = a.exec(&p, &["ls", "/dev"]).await;
    assert!(devs.lines().count() > 10, "{devs}");
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_container_needs_a_privileged_sandbox() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("unpriv").await;
    // A privileged container needs a privileged sandbox.
    let p = secured(&a, "priv", |s| s.privileged = true);
    refused_at_create(
        a.try_create_container(&sb, &cfg, p).await,
        "config.linux.security_context.privileged: no privileged container allowed in a sandbox that is not privileged",
    );

    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_add_drop_and_all() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("caps").await;
    let caps = |add: &[&str], drop: &[&str]| {
        let add: Vec<String> = add.iter().map(|s| s.to_string()).collect();
        let drop: Vec<String> = drop.iter().map(|s| s.to_string()).collect();
        move |s: &mut v1::LinuxContainerSecurityContext| {
            s.capabilities = Some(v1::Capability {
                add_capabilities: add,
                drop_capabilities: drop,
                add_ambient_capabilities: vec![],
            })
        }
    };

    let def = a
        .run_container(&sb, &cfg, a.container_config("default", &["sleep", "3600"]))
        .await;
    let d = cap_eff(&mut a, &def).await;
    assert!(
        has(d, CAP_CHOWN) && !has(d, CAP_NET_ADMIN) && !has(d, CAP_SYS_ADMIN),
        "{d:x}"
    );

    let c = secured(&a, "add", caps(&["NET_ADMIN"], &[]));
    let c = a.run_container(&sb, &cfg, c).await;
    assert!(has(cap_eff(&mut a, &c).await, CAP_NET_ADMIN));

    // The CAP_ prefix is accepted as well.
    let c = secured(&a, "addprefix", caps(&["CAP_SYS_ADMIN"], &[]));
    let c = a.run_container(&sb, &cfg, c).await;
    assert!(has(cap_eff(&mut a, &c).await, CAP_SYS_ADMIN));

    let c = secured(&a, "drop", caps(&[], &["CHOWN"]));
    let c = a.run_container(&sb, &cfg, c).await;
    assert!(!has(cap_eff(&mut a, &c).await, CAP_CHOWN));
    let (code, _, _) = a
        .exec_any(&c, &["sh", "-c", "touch /tmp/f && chown 1000 /tmp/f"])
        .await;
    assert_ne!(code, 0, "chown worked without CAP_CHOWN");

    let c = secured(&a, "dropall", caps(&[], &["ALL"]));
    let c = a.run_container(&sb, &cfg, c).await;
    assert_eq!(cap_eff(&mut a, &c).await, 0);
    assert_eq!(
        u64::from_str_radix(&status_field(&mut a, &c, "CapBnd").await, 16).unwrap(),
        0
    );

    let c = secured(&a, "dropalladdone", caps(&["NET_BIND_SERVICE"], &["ALL"]));
    let c = a.run_container(&sb, &cfg, c).await;
    assert_eq!(cap_eff(&mut a, &c).await, 1 << CAP_NET_BIND_SERVICE);

    let c = secured(&a, "addall", caps(&["ALL"], &[]));
    let c = a.run_container(&sb, &cfg, c).await;
    let all = cap_eff(&mut a, &c).await;
    assert!(
        has(all, CAP_SYS_ADMIN) && has(all, CAP_NET_ADMIN),
        "{all:x}"
    );

    // A non-root user keeps no effective capabilities unless they are ambient.
    let c = secured(&a, "nonroot", |s| {
        s.run_as_user = Some(v1::Int64Value { value: 1000 });
        s.capabilities = Some(v1::Capability {
            add_capabilities: vec!["NET_BIND_SERVICE".into()],
            drop_capabilities: vec![],
            add_ambient_capabilities: vec![],
        });
    });
    let c = a.run_container(&sb, &cfg, c).await;
    assert_eq!(cap_eff(&mut a, &c).await, 0);
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_new_privs_masked_and_readonly_paths() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("paths").await;

    let nnp = secured(&a, "nnp", |s| s.no_new_privs = true);
    let nnp = a.run_container(&sb, &cfg, nnp).await;
    assert_eq!(status_field(&mut a, &nnp, "NoNewPrivs").await, "1");
    let plain = a
        .run_container(&sb, &cfg, a.container_config("plain", &["sleep", "3600"]))
        .await;
    assert_eq!(status_field(&mut a, &plain, "NoNewPrivs").await, "0");

    let c = secured(&a, "masked", |s| {
        s.masked_paths = vec!["/etc/group".into(), "/tmp".into(), "/no/such/path".into()];
        s.readonly_paths = vec!["/etc".into(), "/proc/sys".into()];
    });
    let c = a.run_container(&sb, &cfg, c).await;
    assert_eq!(
        a.exec(&c, &["cat", "/etc/group"]).await,
        "",
        "a masked file is readable"
    );
    assert_eq!(a.exec(&c, &["ls", "-A", "/tmp"]).await.trim(), "");
    let (code, _, _) = a.exec_any(&c, &["touch", "/tmp/x"]).await;
    assert_ne!(code, 0, "a masked directory took a write");
    let (code, _, _) = a.exec_any(&c, &["touch", "/etc/new"]).await;
    assert_ne!(code, 0, "a read-only path took a write");
    let (code, _, _) = a
        .exec_any(
            &c,
            &["sh", "-c", "echo 1 > /proc/sys/kernel/shm_rmid_forced"],
        )
        .await;
    assert_ne!(code, 0, "/proc/sys is writable");
    a.exec(&c, &["touch", "/elsewhere"]).await;
    // In the plain container the same files are as the image has them.
    assert!(a
        .exec(&plain, &["cat", "/etc/group"])
        .await
        .contains("root:x:0:"));
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_runtime_default_unconfined_and_localhost() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("seccomp").await;
    let profile = |t: ProfileType, r: &str| v1::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: r.to_string(),
    };

    let c = secured(&a, "default", |s| {
        s.seccomp = Some(profile(ProfileType::RuntimeDefault, ""))
    });
    let c = a.run_container(&sb, &cfg, c).await;
    assert_eq!(status_field(&mut a, &c, "Seccomp").await, "2");
    // The default profile refuses what a container has no business doing.
    let (code, _, _) = a.exec_any(&c, &["unshare", "-U", "true"]).await;
    assert_ne!(code, 0, "unshare of a user namespace under RuntimeDefault");

    let c = secured(&a, "unconfined", |s| {
        s.seccomp = Some(profile(ProfileType::Unconfined, ""))
    });
    let c = a.run_container(&sb, &cfg, c).await;
    assert_eq!(status_field(&mut a, &c, "Seccomp").await, "0");

    let path = a.env.dir.path().join("no-mkdir.json");
    std::fs::write(
        &path,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let c = secured(&a, "localhost", |s| {
        s.seccomp = Some(profile(ProfileType::Localhost, path.to_str().unwrap()))
    });
    let c = a.run_container(&sb, &cfg, c).await;
    assert_eq!(status_field(&mut a, &c, "Seccomp").await, "2");
    let (code, _, err) = a.exec_any(&c, &["mkdir", "/tmp/d"]).await;
    assert_ne!(code, 0, "mkdir passed a profile that forbids it");
    assert!(err.contains("not permitted"), "{err}");
    assert_eq!(a.exec(&c, &["echo", "ok"]).await, "ok\n");

    // A profile that does not exist is refused at create, not run unconfined.
    let missing = a.env.dir.path().join("missing.json");
    let c = secured(&a, "missing", |s| {
        s.seccomp = Some(profile(ProfileType::Localhost, missing.to_str().unwrap()))
    });
    refused_at_create(
        a.try_create_container(&sb, &cfg, c).await,
        &format!(
            "config.linux.security_context.seccomp.localhost_ref: profile {:?} not found",
            missing.to_str().unwrap()
        ),
    );
    a.finish().await;
}

/// CreateContainer was refused as an invalid argument, with `cause` in the message.
fn refused_at_create(r: Result<String, tonic::Status>, cause: &str) {
    let e = r.expect_err("CreateContainer accepted a config it must refuse");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains(cause), "expected {cause:?} in: {e}");
}

fn ns_option(
    network: v1::NamespaceMode,
    pid: v1::NamespaceMode,
    ipc: v1::NamespaceMode,
) -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: network as i32,
        pid: pid as i32,
        ipc: ipc as i32,
        ..Default::default()
    }
}

async fn ns_of(a: &mut Agent, c: &str, kind: &str) -> String {
    a.exec(c, &["readlink", &format!("/proc/self/ns/{kind}")])
        .await
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_namespaces() {
    require_root!();
    use v1::NamespaceMode::{Container, Node};
    let mut a = Agent::start(&["busybox"]).await;
    let mut cfg = a.sandbox_config("hostns");
    cfg.hostname = String::new();
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(ns_option(Node, Node, Node));
    let sb = a.run_sandbox(&cfg).await;
    let c = secured(&a, "c", |s| {
        s.namespace_options = Some(ns_option(Node, Node, Node))
    });
    let c = a.run_container(&sb, &cfg, c).await;
    for kind in ["net", "pid", "ipc"] {
        assert_eq!(ns_of(&mut a, &c, kind).await, host_ns(kind), "{kind}");
    }
    let st = a.sandbox_status(&sb).await.unwrap();
    let opts = st.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(opts.network, Node as i32);

    // The default: pod network and IPC, a PID namespace of the container's own.
    let (sb2, cfg2) = a.sandbox("podns").await;
    let c2 = secured(&a, "c", |s| {
        s.namespace_options = Some(ns_option(
            v1::NamespaceMode::Pod,
            Container,
            v1::NamespaceMode::Pod,
        ))
    });
    let c2 = a.run_container(&sb2, &cfg2, c2).await;
    for kind in ["net", "pid", "ipc", "uts", "mnt"] {
        assert_ne!(ns_of(&mut a, &c2, kind).await, host_ns(kind), "{kind}");
    }
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_and_container_pid_namespaces() {
    require_root!();
    use v1::NamespaceMode::{Container, Pod};

    // Pod-wide PID namespace: each container sees the other's processes.
    let mut a = Agent::start(&["busybox"]).await;
    let mut cfg = a.sandbox_config("sharedpid");
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(ns_option(Pod, Pod, Pod));
    let sb = a.run_sandbox(&cfg).await;
    let one = secured(&a, "one", |s| {
        s.namespace_options = Some(ns_option(Pod, Pod, Pod))
    });
    let mut one = one;
    one.command = vec!["sleep".into(), "4321".into()];
    let one = a.run_container(&sb, &cfg, one).await;
    let two = secured(&a, "two", |s| {
        s.namespace_options = Some(ns_option(Pod, Pod, Pod))
    });
    let two = a.run_container(&sb, &cfg, two).await;
    assert_eq!(
        ns_of(&mut a, &one, "pid").await,
        ns_of(&mut a, &two, "pid").await
    );
    assert!(a.exec(&two, &["ps"]).await.contains("sleep 4321"));
    // Network, IPC and UTS are shared in any case.
    for kind in ["net", "ipc", "uts"] {
        assert_eq!(
            ns_of(&mut a, &one, kind).await,
            ns_of(&mut a, &two, kind).await,
            "{kind}"
        );
    }

    // Per-container PID namespaces: neither sees the other; each has its own PID 1.
    let mut cfg = a.sandbox_config("ownpid");
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(ns_option(Pod, Container, Pod));
    let sb = a.run_sandbox(&cfg).await;
    let mut one = secured(&a, "one", |s| {
        s.namespace_options = Some(ns_option(Pod, Container, Pod))
    });
    one.command = vec!["sleep".into(), "4322".into()];
    let one = a.run_container(&sb, &cfg, one).await;
    let two = secured(&a, "two", |s| {
        s.namespace_options = Some(ns_option(Pod, Container, Pod))
    });
    let two = a.run_container(&sb, &cfg, two).await;
    assert_ne!(
        ns_of(&mut a, &one, "pid").await,
        ns_of(&mut a, &two, "pid").await
    );
    assert!(!a.exec(&two, &["ps"]).await.contains("sleep 4322"));
    let init = a.exec(&one, &["cat", "/proc/1/cmdline"]).await;
    assert!(
        init.starts_with("sleep"),
        "PID 1 of a container is its own process: {init:?}"
    );
    a.finish().await;
}

/// CRI devices: the host node appears at the container path, and the device cgroup lets
/// the container use it although the container is not privileged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_mapped_and_allowed() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("dev").await;
    // /dev/net/tun (10:200) is not among the devices every container may use.
    let mut c = a.container_config("c", &["sleep", "3600"]);
    c.devices = vec![v1::Device {
        container_path: "/dev/mytun".into(),
        host_path: "/dev/net/tun".into(),
        permissions: "rw".into(),
    }];
    let c = a.run_container(&sb, &cfg, c).await;
    let out = a
        .exec(
            &c,
            &[
                "sh",
                "-c",
                "test -c /dev/mytun && exec 3<>/dev/mytun && echo opened",
            ],
        )
        .await;
    assert_eq!(out, "opened\n");
    // Another container without the device entry may not open the same node, even
    // when it sees it (bind-mounted from the host).
    let mut other = a.container_config("other", &["sleep", "3600"]);
    other.mounts = vec![v1::Mount {
        container_path: "/dev/mytun".into(),
        host_path: "/dev/net/tun".into(),
        ..Default::default()
    }];
    let other = a.run_container(&sb, &cfg, other).await;
    let (code, _, err) = a
        .exec_any(&other, &["sh", "-c", "exec 3<>/dev/mytun"])
        .await;
    assert_ne!(code, 0, "opened a device the container was not given");
    assert!(
        err.contains("not permitted") || err.contains("denied"),
        "{err}"
    );
    // A host path that is not a device is refused at creation, naming the field.
    let mut bad = a.container_config("bad", &["true"]);
    bad.devices = vec![v1::Device {
        container_path: "/dev/x".into(),
        host_path: "/etc/hostname".into(),
        permissions: "rw".into(),
    }];
    let err = a.try_create_container(&sb, &cfg, bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("config.devices[0].host_path"),
        "{err}"
    );
    a.finish().await;
}
