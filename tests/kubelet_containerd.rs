//! `podrun agent`'s kubelet half with containerd as the node's CRI runtime, as kubelet
//! runs with it: the node joins and reports containerd, and real kubectl runs a pod
//! that answers on its pod IP, reads logs and execs through the API server, watches a
//! crash loop and deletes pods. At the end containerd holds no sandbox or container,
//! its shims are gone, and the node has no veth, IP, netns pin, mount or pod cgroup
//! left.

// Both harnesses carry the record of which tests ran.
#![allow(clippy::duplicate_mod)]

mod common;
mod kubelet_common;
mod server_common;

use kubelet_common::{Cluster, Runtime};
use serde_json::Value;

fn container_status(p: &Value) -> Option<&Value> {
    p["status"]["containerStatuses"].get(0)
}

#[test]
fn containerd_runs_the_pods_of_a_node() {
    let Some(c) = Cluster::start_with(
        "containerd_runs_the_pods_of_a_node",
        &["ctd-k8s"],
        Runtime::Containerd,
    ) else {
        return;
    };
    let n = &c.nodes[0];
    let ctd = n.containerd.as_ref().unwrap();

    let version = c.ok(&[
        "get",
        "node",
        "ctd-k8s",
        "-o",
        "jsonpath={.status.nodeInfo.containerRuntimeVersion}",
    ]);
    assert!(version.starts_with("containerd://"), "{version}");

    // nginx, pulled by containerd through its docker.io mirror.
    c.ok(&["run", "web", "--image=nginx"]);
    let ip = c.wait_pod("web", "Running with an IP", |p| {
        (p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
            .then(|| p["status"]["podIP"].as_str().unwrap().to_owned())
    });
    assert!(
        ip.starts_with(&n.net.subnet_prefix),
        "{ip} is in the node's pod network {}",
        n.net.subnet_prefix
    );
    let pod = c.pod("web").unwrap();
    let cs = container_status(&pod).unwrap();
    let id = cs["containerID"].as_str().unwrap();
    assert!(id.starts_with("containerd://"), "{cs}");
    assert!(cs["imageID"].as_str().unwrap().contains("sha256:"), "{cs}");
    assert_eq!(cs["ready"], true, "{cs}");
    // The container is containerd's, and its pod cgroup is under the node's cgroup root.
    let ps = ctd.crictl_ok(&["ps", "-q"]);
    assert!(
        ps.contains(id.trim_start_matches("containerd://")),
        "crictl ps: {ps}"
    );
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let pod_cgroup = format!("{}/kubepods/besteffort/pod{uid}", n.env.cgroup_root);
    // The pids hierarchy of cgroup v1, or the unified tree.
    let pod_cgroup = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|h| std::path::Path::new(h).join(&pod_cgroup))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no cgroup {pod_cgroup} in /sys/fs/cgroup"));

    // It answers from the node, and its access log is read through the API server.
    let got = n.exec(&["curl", "-s", "-m", "10", &format!("http://{ip}/")]);
    let body = String::from_utf8_lossy(&got.stdout);
    assert!(
        body.to_lowercase().contains("nginx"),
        "curl {ip}: {body}{}",
        String::from_utf8_lossy(&got.stderr)
    );
    server_common::wait_until("nginx's access log", kubelet_common::SLOW, || {
        let out = c.kubectl(&["logs", "web"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("GET / HTTP")
            .then_some(())
    });
    // exec through the API server, the kubelet API and containerd's streaming server.
    let out = c.ok(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo hello from $(hostname)",
    ]);
    assert_eq!(out.trim(), "hello from web");

    // A container that keeps failing.
    c.ok(&[
        "run",
        "crash",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "echo dying; exit 3",
    ]);
    c.wait_pod("crash", "CrashLoopBackOff after two restarts", |p| {
        let cs = container_status(p)?;
        (cs["restartCount"].as_i64()? >= 2
            && cs["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            .then_some(())
    });
    let pod = c.pod("crash").unwrap();
    let last = &container_status(&pod).unwrap()["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 3, "{last}");
    assert_eq!(last["reason"], "Error", "{last}");
    assert!(c.ok(&["logs", "crash"]).contains("dying"));
    assert!(c.ok(&["logs", "crash", "--previous"]).contains("dying"));

    // Deleted: gone from the API and from containerd.
    c.ok(&["delete", "pod", "web", "--wait=true"]);
    assert!(c.pod("web").is_none());
    let left = ctd.crictl_ok(&["pods", "-q", "--label", "io.kubernetes.pod.name=web"]);
    assert!(left.trim().is_empty(), "web's sandbox is left: {left}");
    assert!(!pod_cgroup.exists(), "{} is left", pod_cgroup.display());

    c.finish();
}
