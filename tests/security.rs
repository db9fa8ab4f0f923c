//! Security contexts as the container sees them: capabilities, users and groups,
//! read-only root, no_new_privs, seccomp profiles.

mod common;

use std::time::Duration;

use common::Env;

const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 3600 & wait $!; done";

/// The value of a `Key:\tvalue` line of /proc/<pid>/status text.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_owned()
}

/// The first line a container logged, waiting for it.
fn first_log_line(env: &Env, pod: &str, container: &str) -> String {
    env.wait_for(
        &format!("output of {container}"),
        Duration::from_secs(20),
        || {
            let l = env.ok(&["logs", "-c", container, pod]);
            l.lines().next().map(str::to_owned)
        },
    )
}

#[test]
fn capabilities_default_drop_and_add() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let cmd = format!("grep CapEff /proc/self/status; {IDLE}");
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: caps
spec:
  containers:
  - name: default
    image: busybox
    command: [sh, -c, "{cmd}"]
  - name: dropall
    image: busybox
    command: [sh, -c, "{cmd}"]
    securityContext:
      capabilities: {{drop: [ALL]}}
  - name: netbind
    image: busybox
    command: [sh, -c, "{cmd}"]
    securityContext:
      capabilities: {{drop: [ALL], add: [NET_BIND_SERVICE]}}
"#
    );
    env.run_pod("caps.yaml", &yaml);
    for (c, want) in [
        // containerd's and Docker's default set.
        ("default", "00000000a80425fb".to_owned()),
        ("dropall", "0000000000000000".to_owned()),
        ("netbind", "0000000000000400".to_owned()),
    ] {
        let line = first_log_line(&env, "caps", c);
        assert_eq!(status_field(&line, "CapEff"), want, "container {c}");
        // exec'd processes get the same set as the container's init.
        let status = env.exec_ok("caps", c, &["cat", "/proc/self/status"]);
        assert_eq!(status_field(&status, "CapEff"), want, "exec in {c}");
    }
    // Without CAP_CHOWN even root cannot give a file away.
    let out = env.exec(
        "caps",
        "dropall",
        &["sh", "-c", "touch /tmp/f && chown 1000 /tmp/f"],
    );
    assert!(!out.status.success(), "chown must fail without CAP_CHOWN");
    env.exec_ok(
        "caps",
        "default",
        &["sh", "-c", "touch /tmp/f && chown 1000 /tmp/f"],
    );
    env.rm(&["caps"]);
    env.assert_no_leaks();
}

#[test]
fn privileged_container_gets_every_capability_podrun_holds() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: priv
spec:
  containers:
  - name: priv
    image: busybox
    command: [sh, -c, "grep CapEff /proc/self/status; {IDLE}"]
    securityContext:
      privileged: true
"#
    );
    env.run_pod("priv.yaml", &yaml);
    // containerd gives a privileged container the full set of the runtime's own process.
    let ours = status_field(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
        "CapBnd",
    );
    let line = first_log_line(&env, "priv", "priv");
    assert_eq!(status_field(&line, "CapEff"), ours);
    let status = env.exec_ok("priv", "priv", &["cat", "/proc/self/status"]);
    assert_eq!(status_field(&status, "CapEff"), ours);
    assert_eq!(
        status_field(&status, "Seccomp"),
        "0",
        "privileged runs unconfined"
    );
    env.rm(&["priv"]);
    env.assert_no_leaks();
}

#[test]
fn read_only_root_users_groups_and_no_new_privs() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: users
spec:
  securityContext:
    supplementalGroups: [2000, 3000]
  containers:
  - name: ro
    image: busybox
    command: [sh, -c, "{IDLE}"]
    securityContext:
      readOnlyRootFilesystem: true
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  - name: app
    image: busybox
    command: [sh, -c, "{IDLE}"]
    securityContext:
      runAsUser: 1000
      runAsGroup: 1000
      allowPrivilegeEscalation: false
  - name: rootdefault
    image: busybox
    command: [sh, -c, "{IDLE}"]
  volumes: [{{name: scratch, emptyDir: {{}}}}]
"#
    );
    env.run_pod("users.yaml", &yaml);
    env.wait_state("users", "rootdefault", "running", Duration::from_secs(20));

    assert!(
        !env.exec("users", "ro", &["touch", "/x"]).status.success(),
        "read-only root refuses writes"
    );
    env.exec_ok(
        "users",
        "ro",
        &["sh", "-c", "echo ok > /scratch/f && cat /scratch/f"],
    );

    assert_eq!(env.exec_ok("users", "app", &["id", "-u"]).trim(), "1000");
    assert_eq!(env.exec_ok("users", "app", &["id", "-g"]).trim(), "1000");
    let groups = env.exec_ok("users", "app", &["id", "-G"]);
    let groups: Vec<&str> = groups.split_whitespace().collect();
    for g in ["1000", "2000", "3000"] {
        assert!(groups.contains(&g), "id -G has {g}: {groups:?}");
    }
    let status = env.exec_ok("users", "app", &["cat", "/proc/self/status"]);
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    // The container's own process, not only exec'd ones.
    let status = env.exec_ok("users", "app", &["cat", "/proc/1/status"]);
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(
        status_field(&status, "Uid").split_whitespace().next(),
        Some("1000")
    );
    // Writing as uid 1000 into root-owned places fails.
    assert!(!env
        .exec("users", "app", &["touch", "/etc/x"])
        .status
        .success());

    let status = env.exec_ok("users", "rootdefault", &["cat", "/proc/self/status"]);
    assert_eq!(status_field(&status, "NoNewPrivs"), "0");
    assert_eq!(
        env.exec_ok("users", "rootdefault", &["id", "-u"]).trim(),
        "0"
    );

    env.rm(&["users"]);
    env.assert_no_leaks();
}

#[test]
fn run_as_non_root_with_a_root_image_is_refused() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let f = env.manifest(
        "nonroot.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: nonroot
spec:
  containers:
  - name: strict
    image: busybox
    command: [sleep, "60"]
    securityContext:
      runAsNonRoot: true
"#,
    );
    let (_, _, stderr) = env.fail(&["run", "-d", f.to_str().unwrap()]);
    assert!(stderr.contains("strict"), "names the container: {stderr}");
    assert!(stderr.contains("runAsNonRoot"), "names the field: {stderr}");
    assert!(stderr.contains("nonroot.yaml"), "names the file: {stderr}");
    assert!(env.pods_json().as_array().unwrap().is_empty());
    env.assert_no_leaks();

    // The same pod with a non-root user runs.
    let f = env.manifest(
        "nonroot2.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: nonroot
spec:
  securityContext:
    runAsUser: 65534
  containers:
  - name: strict
    image: busybox
    command: [sleep, "60"]
    securityContext:
      runAsNonRoot: true
"#,
    );
    env.ok(&["run", "-d", f.to_str().unwrap()]);
    assert_eq!(
        env.exec_ok("nonroot", "strict", &["id", "-u"]).trim(),
        "65534"
    );
    env.rm(&["nonroot"]);
    env.assert_no_leaks();
}

#[test]
fn seccomp_runtime_default_unconfined_and_localhost() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let profiles = env.root.join("seccomp/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(
        profiles.join("deny-mkdir.json"),
        r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
  ]
}"#,
    )
    .unwrap();
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: seccomp
spec:
  containers:
  - name: default
    image: busybox
    command: [sh, -c, "{IDLE}"]
  - name: unconfined
    image: busybox
    command: [sh, -c, "{IDLE}"]
    securityContext:
      seccompProfile: {{type: Unconfined}}
  - name: local
    image: busybox
    command: [sh, -c, "{IDLE}"]
    securityContext:
      seccompProfile: {{type: Localhost, localhostProfile: profiles/deny-mkdir.json}}
"#
    );
    env.run_pod("seccomp.yaml", &yaml);
    env.wait_state("seccomp", "local", "running", Duration::from_secs(20));

    let status = env.exec_ok("seccomp", "default", &["cat", "/proc/1/status"]);
    assert_eq!(status_field(&status, "Seccomp"), "2");
    // RuntimeDefault blocks new user namespaces for a process without CAP_SYS_ADMIN.
    let out = env.exec("seccomp", "default", &["unshare", "-U", "true"]);
    assert!(
        !out.status.success(),
        "unshare -U must fail under RuntimeDefault"
    );

    let status = env.exec_ok("seccomp", "unconfined", &["cat", "/proc/1/status"]);
    assert_eq!(status_field(&status, "Seccomp"), "0");
    env.exec_ok("seccomp", "unconfined", &["unshare", "-U", "true"]);

    let status = env.exec_ok("seccomp", "local", &["cat", "/proc/1/status"]);
    assert_eq!(status_field(&status, "Seccomp"), "2");
    let out = env.exec("seccomp", "local", &["mkdir", "/tmp/x"]);
    assert!(
        !out.status.success(),
        "mkdir is denied by the Localhost profile"
    );
    env.exec_ok("seccomp", "local", &["touch", "/tmp/y"]);
    env.exec_ok("seccomp", "default", &["mkdir", "/tmp/x"]);

    env.rm(&["seccomp"]);
    env.assert_no_leaks();

    // A Localhost profile that does not exist fails the run, naming the field.
    let f = env.manifest(
        "missing.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: missing
spec:
  containers:
  - name: c
    image: busybox
    command: ["true"]
    securityContext:
      seccompProfile: {type: Localhost, localhostProfile: profiles/nope.json}
"#,
    );
    let (_, _, stderr) = env.fail(&["run", "-d", f.to_str().unwrap()]);
    assert!(stderr.contains("seccomp"), "{stderr}");
    env.assert_no_leaks();
}
