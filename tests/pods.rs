//! Pods as a whole: several containers sharing network, volumes and process namespaces,
//! init containers and native sidecars, host namespaces.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{state_of, Env};

/// A container command that idles until it gets SIGTERM (PID 1 ignores TERM otherwise).
const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 3600 & wait $!; done";

#[test]
fn sidecar_pod_serves_nginx_to_curl_over_localhost() {
    require_root!();
    let env = Env::new(&["nginx", "curl"]);
    let file = common::repo().join("examples/sidecar-pod.yaml");
    let file = file.to_str().unwrap();
    env.ok(&["run", "-d", file]);

    // nginx needs a moment before it listens.
    let page = env.wait_for("nginx to answer", Duration::from_secs(30), || {
        let out = env.exec("sidecar-demo", "client", &["curl", "-s", "localhost"]);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        body.contains("Welcome to nginx!").then_some(body)
    });
    assert!(page.contains("Welcome to nginx!"));

    let logs = env.wait_for("the GET in the web log", Duration::from_secs(10), || {
        let l = env.ok(&["logs", "-c", "web", "sidecar-demo"]);
        l.contains("GET / ").then_some(l)
    });
    assert!(
        logs.contains("curl/"),
        "access log names the client: {logs}"
    );

    let hostname = env.exec_ok("sidecar-demo", "client", &["hostname"]);
    assert_eq!(hostname.trim(), "sidecar-demo");
    let hosts = env.exec_ok("sidecar-demo", "client", &["cat", "/etc/hosts"]);
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().skip(1).any(|n| n == "sidecar-demo")),
        "/etc/hosts names the pod: {hosts}"
    );
    // Both containers see the same hostname (one UTS namespace per pod).
    let web_hostname = env.exec_ok("sidecar-demo", "web", &["cat", "/etc/hostname"]);
    assert_eq!(web_hostname.trim(), "sidecar-demo");

    let out = env.ok(&["down", file]);
    assert!(out.contains("removed"), "{out}");
    assert!(env.pods_json().as_array().unwrap().is_empty());
    env.assert_no_leaks();
}

#[test]
fn long_pod_name_gives_a_truncated_hostname() {
    require_root!();
    let env = Env::new(&["busybox"]);
    // 100 characters, with a '-' at byte 63: kubelet's cut (63 bytes, then trailing '-'
    // and '.' trimmed) keeps the first 62.
    let mut name = format!("longpod-{}-", std::process::id());
    while name.len() < 62 {
        name.push('a');
    }
    name.push('-');
    while name.len() < 100 {
        name.push('b');
    }
    env.run_pod(
        "longname.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, \"{IDLE}\"]\n"),
    );
    let want = &name[..62];
    assert_eq!(env.exec_ok(&name, "c", &["hostname"]).trim(), want);
    assert_eq!(
        env.exec_ok(&name, "c", &["cat", "/etc/hostname"]).trim(),
        want
    );
    let env_hostname = env.exec_ok(&name, "c", &["sh", "-c", "echo $HOSTNAME"]);
    assert_eq!(env_hostname.trim(), want);
    env.rm(&[&name]);
    env.assert_no_leaks();
}

const VOLUMES: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: vols
spec:
  containers:
  - name: writer
    image: busybox
    command: [sh, -c, "echo shared-data > /data/hello; TRAPIDLE"]
    volumeMounts:
    - {name: shared, mountPath: /data}
    - {name: mem, mountPath: /mem}
  - name: reader
    image: busybox
    command: [sh, -c, "TRAPIDLE"]
    volumeMounts:
    - {name: shared, mountPath: /shared}
    - {name: shared, mountPath: /shared-ro, readOnly: true}
    - {name: cfg, mountPath: /etc/app}
    - {name: cfg, mountPath: /app.conf, subPath: app.conf}
    - {name: sec, mountPath: /secret, readOnly: true}
  volumes:
  - name: shared
    emptyDir: {}
  - name: mem
    emptyDir: {medium: Memory}
  - name: cfg
    configMap:
      name: app-config
      items:
      - key: app.properties
        path: app.conf
  - name: sec
    secret:
      secretName: app-secret
---
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config}
data:
  app.properties: "color=blue\n"
  not-projected: "x"
---
apiVersion: v1
kind: Secret
metadata: {name: app-secret}
data:
  token: dG9rZW4=
stringData:
  password: s3cret
"#;

#[test]
fn volumes_empty_dir_memory_config_map_and_secret() {
    require_root!();
    let env = Env::new(&["busybox"]);
    env.run_pod("vols.yaml", &VOLUMES.replace("TRAPIDLE", IDLE));

    // The writer wrote into the shared emptyDir; the reader sees it.
    let data = env.wait_for("the shared file", Duration::from_secs(10), || {
        let out = env.exec("vols", "reader", &["cat", "/shared/hello"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(data.trim(), "shared-data");
    // And the other way round.
    env.exec_ok("vols", "reader", &["sh", "-c", "echo back > /shared/reply"]);
    assert_eq!(
        env.exec_ok("vols", "writer", &["cat", "/data/reply"])
            .trim(),
        "back"
    );

    // The same volume mounted readOnly refuses writes.
    let ro = env.exec("vols", "reader", &["touch", "/shared-ro/x"]);
    assert!(
        !ro.status.success(),
        "writing to a readOnly mount must fail"
    );
    assert_eq!(
        env.exec_ok("vols", "reader", &["cat", "/shared-ro/hello"])
            .trim(),
        "shared-data"
    );

    // medium: Memory is a tmpfs inside the container.
    let mounts = env.exec_ok("vols", "writer", &["cat", "/proc/mounts"]);
    let mem = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/mem"));
    assert_eq!(
        mem.and_then(|l| l.split_whitespace().nth(2)),
        Some("tmpfs"),
        "{mounts}"
    );
    let data_fs = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/data"));
    assert_ne!(
        data_fs.and_then(|l| l.split_whitespace().nth(2)),
        Some("tmpfs"),
        "a disk emptyDir is not a tmpfs: {mounts}"
    );
    env.exec_ok(
        "vols",
        "writer",
        &["sh", "-c", "echo m > /mem/f && cat /mem/f"],
    );

    // configMap with items: only the listed key, under its path.
    assert_eq!(
        env.exec_ok("vols", "reader", &["cat", "/etc/app/app.conf"]),
        "color=blue\n"
    );
    let ls = env.exec_ok("vols", "reader", &["ls", "/etc/app"]);
    assert!(!ls.contains("not-projected"), "items limits the keys: {ls}");
    // subPath mounts the single file.
    assert_eq!(
        env.exec_ok("vols", "reader", &["cat", "/app.conf"]),
        "color=blue\n"
    );
    // configMap and secret volumes are read-only.
    assert!(!env
        .exec(
            "vols",
            "reader",
            &["sh", "-c", "echo x > /etc/app/app.conf"]
        )
        .status
        .success());
    assert!(!env
        .exec("vols", "reader", &["touch", "/secret/new"])
        .status
        .success());
    // Secret data is decoded; stringData is folded in.
    assert_eq!(
        env.exec_ok("vols", "reader", &["cat", "/secret/token"]),
        "token"
    );
    assert_eq!(
        env.exec_ok("vols", "reader", &["cat", "/secret/password"]),
        "s3cret"
    );

    env.rm(&["vols"]);
    env.assert_no_leaks();
}

#[test]
fn init_containers_run_in_order_before_app_containers() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: inits
spec:
  restartPolicy: Never
  initContainers:
  - name: first
    image: busybox
    command: [sh, -c, "sleep 0.3; echo first >> /work/order"]
    volumeMounts: [{{name: w, mountPath: /work}}]
  - name: second
    image: busybox
    command: [sh, -c, "echo second >> /work/order"]
    volumeMounts: [{{name: w, mountPath: /work}}]
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "echo app >> /work/order; cat /work/order; {IDLE}"]
    volumeMounts: [{{name: w, mountPath: /work}}]
  volumes: [{{name: w, emptyDir: {{}}}}]
"#
    );
    env.run_pod("inits.yaml", &yaml);
    let logs = env.wait_for("the app's output", Duration::from_secs(20), || {
        let l = env.ok(&["logs", "-c", "app", "inits"]);
        l.contains("app").then_some(l)
    });
    assert_eq!(logs, "first\nsecond\napp\n");
    for init in ["first", "second"] {
        let c = env.container_status("inits", init).unwrap();
        let (kind, d) = state_of(&c);
        assert_eq!(kind, "terminated", "{c}");
        assert_eq!(common::detail(&d, "exitCode"), 0);
        assert_eq!(common::detail(&d, "reason"), "Completed");
        assert_eq!(c["init"], true);
    }
    assert_eq!(env.phase("inits").as_deref(), Some("Running"));
    env.rm(&["inits"]);
    env.assert_no_leaks();
}

#[test]
fn failing_init_container_fails_the_pod_and_app_never_starts() {
    require_root!();
    let env = Env::new(&["busybox"]);
    env.run_pod(
        "badinit.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: badinit
spec:
  restartPolicy: Never
  initContainers:
  - name: setup
    image: busybox
    command: [sh, -c, "echo setting up; exit 4"]
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "echo app started"]
"#,
    );
    env.wait_for("phase Failed", Duration::from_secs(20), || {
        (env.phase("badinit").as_deref() == Some("Failed")).then_some(())
    });
    let setup = env.container_status("badinit", "setup").unwrap();
    let (kind, d) = state_of(&setup);
    assert_eq!(kind, "terminated");
    assert_eq!(common::detail(&d, "exitCode"), 4);
    assert_eq!(common::detail(&d, "reason"), "Error");
    // Failed is terminal. The monitor decides what to start in the turn that records the
    // init container's exit, before it reports the phase; this status comes from a later
    // turn still, so an app container started after the failure would show here.
    let app = env.container_status("badinit", "app").unwrap();
    assert_eq!(
        state_of(&app).0,
        "waiting",
        "app container must never start: {app}"
    );
    assert_eq!(app["restartCount"], 0);
    assert_eq!(env.phase("badinit").as_deref(), Some("Failed"));
    assert_eq!(env.ok(&["logs", "-c", "app", "badinit"]), "");
    assert_eq!(env.ok(&["logs", "-c", "setup", "badinit"]), "setting up\n");
    env.rm(&["badinit"]);
    env.assert_no_leaks();
}

#[test]
fn native_sidecar_runs_alongside_the_app_container() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: nsidecar
spec:
  shareProcessNamespace: true
  initContainers:
  - name: helper
    image: busybox
    restartPolicy: Always
    command: [sh, -c, "echo helper-up > /work/helper; exec sleep 3600"]
    volumeMounts: [{{name: w, mountPath: /work}}]
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "cat /work/helper; {IDLE}"]
    volumeMounts: [{{name: w, mountPath: /work}}]
  volumes: [{{name: w, emptyDir: {{}}}}]
"#
    );
    env.run_pod("nsidecar.yaml", &yaml);
    env.wait_state("nsidecar", "app", "running", Duration::from_secs(20));
    let helper = env.container_status("nsidecar", "helper").unwrap();
    assert_eq!(
        state_of(&helper).0,
        "running",
        "the sidecar keeps running: {helper}"
    );
    assert_eq!(helper["init"], true);
    // The sidecar started before the app container.
    let logs = env.wait_for("app output", Duration::from_secs(10), || {
        let l = env.ok(&["logs", "-c", "app", "nsidecar"]);
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(logs, "helper-up\n");
    // While the app container runs, the sidecar's process is alive in the pod.
    let ps = env.exec_ok("nsidecar", "app", &["ps", "-o", "args"]);
    assert!(ps.contains("sleep 3600"), "{ps}");
    let st = env.pod_json("nsidecar").unwrap();
    assert_eq!(st["status_detail"]["phase"], "Running");
    env.rm(&["nsidecar"]);
    env.assert_no_leaks();
}

#[test]
fn share_process_namespace_lets_containers_see_each_other() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: sharepid
spec:
  shareProcessNamespace: true
  containers:
  - name: one
    image: busybox
    command: [sh, -c, "{IDLE}"]
  - name: two
    image: busybox
    command: [sleep, "4242"]
"#
    );
    env.run_pod("sharepid.yaml", &yaml);
    env.wait_state("sharepid", "two", "running", Duration::from_secs(20));
    let ps = env.exec_ok("sharepid", "one", &["ps", "-o", "pid,args"]);
    assert!(
        ps.contains("sleep 4242"),
        "container one sees two's process: {ps}"
    );

    // Without sharing, each container has its own PID namespace.
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: ownpid
spec:
  containers:
  - name: one
    image: busybox
    command: [sh, -c, "{IDLE}"]
  - name: two
    image: busybox
    command: [sleep, "4343"]
"#
    );
    env.run_pod("ownpid.yaml", &yaml);
    env.wait_state("ownpid", "two", "running", Duration::from_secs(20));
    let ps = env.exec_ok("ownpid", "one", &["ps", "-o", "pid,args"]);
    assert!(
        !ps.contains("sleep 4343"),
        "container one must not see two's process: {ps}"
    );
    env.rm(&["sharepid", "ownpid"]);
    env.assert_no_leaks();
}

/// Interface names from /proc/net/dev.
fn interfaces(dev: &str) -> BTreeSet<String> {
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

#[test]
fn host_network_pid_and_ipc_namespaces() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: hostns
spec:
  hostNetwork: true
  hostPID: true
  hostIPC: true
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "{IDLE}"]
"#
    );
    env.run_pod("hostns.yaml", &yaml);
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: podns
spec:
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "{IDLE}"]
"#
    );
    env.run_pod("podns.yaml", &yaml);
    env.wait_state("hostns", "c", "running", Duration::from_secs(20));
    env.wait_state("podns", "c", "running", Duration::from_secs(20));

    // Only reads: the interface list of the network namespace.
    let host_ifaces = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    let inside = interfaces(&env.exec_ok("hostns", "c", &["cat", "/proc/net/dev"]));
    assert_eq!(
        inside, host_ifaces,
        "hostNetwork sees the host's interfaces"
    );
    let isolated = interfaces(&env.exec_ok("podns", "c", &["cat", "/proc/net/dev"]));
    assert_eq!(
        isolated,
        BTreeSet::from(["lo".to_owned()]),
        "a pod network namespace has only lo"
    );

    // Namespace identities: host's for hostNetwork/hostPID/hostIPC, private otherwise.
    let ns = |pid: &str, kind: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    for kind in ["net", "pid", "ipc"] {
        let host = ns("self", kind);
        let inside = env.exec_ok(
            "hostns",
            "c",
            &["readlink", &format!("/proc/self/ns/{kind}")],
        );
        assert_eq!(inside.trim(), host, "host {kind} namespace");
        let private = env.exec_ok(
            "podns",
            "c",
            &["readlink", &format!("/proc/self/ns/{kind}")],
        );
        assert_ne!(private.trim(), host, "pod {kind} namespace");
    }
    // One hostname per pod, whichever way a process asks: the node's with hostNetwork
    // (UTS, /etc/hostname and $HOSTNAME alike), the pod's name otherwise.
    let names = |pod: &str| {
        env.exec_ok(
            pod,
            "c",
            &[
                "sh",
                "-c",
                "echo \"$HOSTNAME $(hostname) $(cat /etc/hostname)\"",
            ],
        )
        .split_whitespace()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let node = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(names("hostns"), vec![node.clone(), node.clone(), node]);
    assert_eq!(names("podns"), vec!["podns"; 3]);
    // hostIPC shares the host's /dev/shm too, not only its IPC namespace.
    use std::os::unix::fs::MetadataExt;
    let shm_dev = |pod: &str| env.exec_ok(pod, "c", &["stat", "-c", "%d", "/dev/shm"]);
    let host_shm = std::fs::metadata("/dev/shm").unwrap().dev().to_string();
    assert_eq!(
        shm_dev("hostns").trim(),
        host_shm,
        "hostIPC: the host's /dev/shm"
    );
    assert_ne!(shm_dev("podns").trim(), host_shm, "a pod's own /dev/shm");
    // With hostPID the container sees this test process.
    let me = std::process::id().to_string();
    // (Asked for directly: a listing of /proc races with host processes exiting.)
    let out = env.exec("hostns", "c", &["test", "-d", &format!("/proc/{me}")]);
    assert!(out.status.success(), "hostPID shows host processes");

    env.rm(&["hostns", "podns"]);
    env.assert_no_leaks();
}
