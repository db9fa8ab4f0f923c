//! hostPort end to end as root: podrun-bridge + podrun-portmap chained by the client,
//! a TCP server inside a pod netns, and clients on the host (127.0.0.1 and the bridge
//! address) and in another pod (hairpin through the host). All traffic stays between
//! namespaces the test created and the host's own addresses.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::*;
use podrun_cni::ns::NetNs;
use podrun_cni::{Cni, NetworkConfigList};
use serde_json::{json, Value};

fn portmap_rules(network: &str) -> usize {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "ip", "podrun-portmap"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .matches(&format!("podrun-portmap:{network}:"))
            .count(),
        _ => 0,
    }
}

/// Connects to `addr` and reads the greeting the pod's server sends.
fn greeting(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"hi")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf)
}

#[test]
fn host_port_reaches_the_pod_from_host_loopback_and_other_pods() {
    if !require_root("host_port_end_to_end") {
        return;
    }
    if podrun_cni::masq::Backend::detect()
        .is_none_or(|b| !matches!(b, podrun_cni::masq::Backend::Nft(_)))
    {
        common::cannot_run("host_port_end_to_end", "nft is not installed");
        return;
    }
    let net = TestNetwork::new("10.244.90.0/24");
    let host_port = 20000 + (std::process::id() % 10000) as u16;
    let list: NetworkConfigList = serde_json::from_value(json!({
        "cniVersion": "1.1.0",
        "name": net.name,
        "plugins": [
            {
                "type": "podrun-bridge", "bridge": net.bridge, "isGateway": true, "isDefaultGateway": true,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "subnet": net.subnet, "dataDir": net.data_dir.path()}
            },
            {"type": "podrun-portmap", "capabilities": {"portMappings": true}}
        ]
    }))
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let bin_dir = plugin_path().parent().unwrap().to_path_buf();
    let cni = Cni::new(list, vec![bin_dir], cache.path().to_path_buf());
    let server_ns = TestNetns::new();
    let client_ns = TestNetns::new();
    let caps =
        json!({"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]});
    let server = cni
        .add("web", &server_ns.path(), "eth0", caps.clone())
        .unwrap();
    cni.add("client", &client_ns.path(), "eth0", Value::Null)
        .unwrap();
    cni.check("web", &server_ns.path(), "eth0", caps).unwrap();
    assert!(portmap_rules(&net.name) > 0);

    // The listener is created inside the pod netns and stays there.
    let ns = NetNs::open(Path::new(&server_ns.path())).unwrap();
    let listener = ns.run(|| TcpListener::bind("0.0.0.0:80")).unwrap().unwrap();
    let serving = std::thread::spawn(move || {
        for stream in listener.incoming().take(3) {
            let mut s = stream.unwrap();
            let peer = s.peer_addr().unwrap();
            let mut buf = [0u8; 2];
            let _ = s.read_exact(&mut buf);
            let _ = s.write_all(format!("hello from the pod to {}", peer.ip()).as_bytes());
        }
    });

    let gateway = server.ips[0].gateway.unwrap();
    let from_loopback = greeting(SocketAddr::new("127.0.0.1".parse().unwrap(), host_port)).unwrap();
    assert!(
        from_loopback.starts_with("hello from the pod"),
        "{from_loopback}"
    );
    let from_host = greeting(SocketAddr::new(gateway, host_port)).unwrap();
    assert!(from_host.starts_with("hello from the pod"), "{from_host}");
    // Another pod goes through the host's address and back onto the same bridge.
    let other = NetNs::open(Path::new(&client_ns.path())).unwrap();
    let from_pod = other
        .run(move || greeting(SocketAddr::new(gateway, host_port)))
        .unwrap()
        .unwrap();
    assert!(from_pod.starts_with("hello from the pod"), "{from_pod}");
    serving.join().unwrap();

    cni.del("web", &server_ns.path(), "eth0", Value::Null)
        .unwrap();
    cni.del("client", &client_ns.path(), "eth0", Value::Null)
        .unwrap();
    assert_eq!(portmap_rules(&net.name), 0, "port mapping rules left");
    assert!(greeting(SocketAddr::new("127.0.0.1".parse().unwrap(), host_port)).is_err());
    drop(server_ns);
    drop(client_ns);
    net.assert_clean_and_remove();
}

/// ipMasq: a pod reaches a "remote host" (a netns routed from the host only) and the
/// remote side sees the host's address, not the pod's. The remote netns has no route
/// back to the pod subnet, so without masquerade the connection could not complete.
#[test]
fn ip_masq_gives_pods_egress_to_a_remote_namespace() {
    if !require_root("ip_masq_egress") {
        return;
    }
    if podrun_cni::masq::Backend::detect().is_none() {
        common::cannot_run("ip_masq_egress", "neither nft nor iptables is installed");
        return;
    }
    let net = TestNetwork::new("10.244.92.0/24");
    let remote = TestNetns::new();
    let host_end = format!("pcr{}", std::process::id() % 100000);
    sh(
        "ip",
        &[
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            &remote.name,
        ],
    );
    sh("ip", &["addr", "add", "10.244.91.1/24", "dev", &host_end]);
    sh("ip", &["link", "set", &host_end, "up"]);
    for args in [
        vec!["addr", "add", "10.244.91.2/24", "dev", "uplink"],
        vec!["link", "set", "uplink", "up"],
        vec!["link", "set", "lo", "up"],
    ] {
        let mut full = vec!["-n", remote.name.as_str()];
        full.extend(args);
        sh("ip", &full);
    }

    let mut conf = net.conf("1.1.0", "podrun-bridge");
    conf["ipMasq"] = json!(true);
    let list = NetworkConfigList::from_single(conf.to_string().as_bytes()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cni = Cni::new(
        list,
        vec![plugin_path().parent().unwrap().to_path_buf()],
        cache.path().to_path_buf(),
    );
    let pod = TestNetns::new();
    cni.add("egress", &pod.path(), "eth0", Value::Null).unwrap();

    let listener = NetNs::open(Path::new(&remote.path()))
        .unwrap()
        .run(|| TcpListener::bind("10.244.91.2:8080"))
        .unwrap()
        .unwrap();
    let serving = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 2];
        let _ = s.read_exact(&mut buf);
        let _ = s.write_all(peer.ip().to_string().as_bytes());
    });
    let seen = NetNs::open(Path::new(&pod.path()))
        .unwrap()
        .run(|| greeting("10.244.91.2:8080".parse().unwrap()))
        .unwrap()
        .unwrap();
    serving.join().unwrap();
    assert_eq!(
        seen, "10.244.91.1",
        "remote side saw the pod address: not masqueraded"
    );

    cni.del("egress", &pod.path(), "eth0", Value::Null).unwrap();
    drop(pod);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &host_end])
        .status();
    drop(remote);
    net.assert_clean_and_remove();
}
