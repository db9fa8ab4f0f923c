//! Pods on a CNI network: podrun's bridge and portmap plugins give each pod an address on
//! a bridge of the test's own (a unique name and a 10.246.x.0/24 subnet, no masquerade,
//! nothing routed off the machine); pods reach each other by pod IP and the host reaches
//! a hostPort on 127.0.0.1. Each test ends by checking that no veth, IP reservation,
//! pinned namespace or port rule is left, then deletes its bridge.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Env;

type Net = common::TestNet;

/// Give `env` a network of its own.
fn network(env: &mut Env) -> Net {
    common::test_network(env, "prt", 246)
}

impl Net {
    /// Nothing of any pod is left on the network; then the bridge goes.
    fn assert_clean_and_remove(&self, env: &Env) {
        let ports = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&ports.stdout).trim().is_empty(),
            "veths left on {}: {}",
            self.bridge,
            String::from_utf8_lossy(&ports.stdout)
        );
        let reservations: Vec<_> = walk(&self.ipam_dir)
            .into_iter()
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.parse::<std::net::IpAddr>().is_ok()
            })
            .collect();
        assert!(
            reservations.is_empty(),
            "IP reservations left: {reservations:?}"
        );
        let pinned: Vec<_> = std::fs::read_dir(env.state.join("netns"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(pinned.is_empty(), "pinned netns left: {pinned:?}");
        env.assert_no_leaks();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn walk(p: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn pod_ip(env: &Env, pod: &str) -> String {
    let pods = env.pods_json();
    pods.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod)
        .unwrap()["ip"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn pods_get_addresses_reach_each_other_and_publish_host_ports() {
    require_root!();
    let mut env = Env::new(&["nginx", "curl"]);
    let net = network(&mut env);
    let port = free_port();
    let web = env.manifest(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: nginx\n    image: nginx\n    ports:\n    - containerPort: 80\n      hostPort: {port}\n"
        ),
    );
    let client = env.manifest(
        "client.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: curl\n    command: [sh, -c, \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n    env:\n    - name: MY_IP\n      valueFrom: {fieldRef: {fieldPath: status.podIP}}\n",
    );
    env.ok(&["run", "-d", web.to_str().unwrap()]);
    env.ok(&["run", "-d", client.to_str().unwrap()]);

    let web_ip = pod_ip(&env, "web");
    let client_ip = pod_ip(&env, "client");
    assert!(web_ip.starts_with(&net.subnet_prefix), "web IP {web_ip:?}");
    assert!(
        client_ip.starts_with(&net.subnet_prefix),
        "client IP {client_ip:?}"
    );
    assert_ne!(web_ip, client_ip);

    // The address is on the pod's eth0, in /etc/hosts, and in status.podIP.
    let addr = env.ok(&[
        "exec", "client", "--", "ip", "-o", "-4", "addr", "show", "eth0",
    ]);
    assert!(addr.contains(&format!("{client_ip}/24")), "{addr}");
    let hosts = env.ok(&["exec", "client", "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{client_ip}\tclient")), "{hosts}");
    assert_eq!(
        env.ok(&["exec", "client", "--", "sh", "-c", "echo $MY_IP"])
            .trim(),
        client_ip
    );

    // Pod to pod by IP, across the bridge.
    let page = env.ok(&[
        "exec",
        "client",
        "--",
        "curl",
        "-s",
        "--max-time",
        "10",
        &format!("http://{web_ip}/"),
    ]);
    assert!(page.contains("Welcome to nginx!"), "{page}");

    // hostPort from the host itself, on loopback.
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Welcome to nginx!"),
        "hostPort {port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    env.ok(&["rm", "--grace-period", "0", "web", "client"]);
    // The port is closed again.
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "3",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("Welcome"),
        "hostPort {port} still answers"
    );
    net.assert_clean_and_remove(&env);
}

#[test]
fn a_killed_monitor_leaves_the_network_to_the_next_command() {
    require_root!();
    let mut env = Env::new(&["busybox"]);
    let net = network(&mut env);
    let f = env.manifest(
        "p.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, \"3600\"]\n",
    );
    env.ok(&["run", "-d", f.to_str().unwrap()]);
    assert!(pod_ip(&env, "p").starts_with(&net.subnet_prefix));
    let pods = env.pods_json();
    let monitor = pods[0]["status_detail"]["monitorPid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    env.wait_for(
        "the monitor to be gone",
        std::time::Duration::from_secs(10),
        || (!std::path::Path::new(&format!("/proc/{monitor}")).exists()).then_some(()),
    );
    // The next command reaps the pod: processes, cgroups, CNI DEL, the netns pin.
    env.ok(&["pods"]);
    assert!(env.pods_json().as_array().unwrap().is_empty());
    net.assert_clean_and_remove(&env);
}

#[test]
fn a_broken_network_config_fails_the_pod_cleanly() {
    require_root!();
    let mut env = Env::new(&["busybox"]);
    let _ = network(&mut env);
    let conf_dir = env.dir.path().join("net.d");
    std::fs::write(
        conf_dir.join("10-test.conflist"),
        r#"{"cniVersion":"1.1.0","name":"bad","plugins":[{"type":"podrun-bridge","bridge":"prtbad","ipam":{"type":"host-local","ranges":[[{"subnet":"not-a-cidr"}]]}}]}"#,
    )
    .unwrap();
    let f = env.manifest(
        "p.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, \"3600\"]\n",
    );
    let out = env.podrun(&["run", "-d", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("network"), "{stderr}");
    assert!(env.pods_json().as_array().unwrap().is_empty());
    let pinned: Vec<_> = std::fs::read_dir(env.state.join("netns"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(pinned.is_empty(), "pinned netns left: {pinned:?}");
    env.assert_no_leaks();
    let _ = Command::new("ip").args(["link", "del", "prtbad"]).status();
}
