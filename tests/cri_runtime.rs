//! CRI runtime-level and sandbox behaviour of `podrun agent`, after critest's
//! "runtime info" and "PodSandbox" specs: version, status, runtime config, the sandbox
//! lifecycle with list filters, idempotent stop/remove, NotFound and AlreadyExists,
//! hostname, DNS, sysctls, and (on a CNI network) pod IPs and host ports.

mod common;
mod cri_common;

use std::collections::HashMap;
use std::time::Duration;

use cri_common::{Agent, BUSYBOX, NGINX};
use podrun_cri_proto::v1;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_status_and_runtime_config() {
    require_root!();
    let mut a = Agent::start(&[]).await;

    let v =
        a.rt.version(v1::VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "podrun", "{v:?}");
    assert!(!v.runtime_version.is_empty(), "{v:?}");
    assert!(!v.version.is_empty(), "{v:?}");
    assert_eq!(v.runtime_api_version, "v1", "{v:?}");

    let st =
        a.rt.status(v1::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
    let conds = st.status.expect("runtime status").conditions;
    for want in ["RuntimeReady", "NetworkReady"] {
        let c = conds
            .iter()
            .find(|c| c.r#type == want)
            .unwrap_or_else(|| panic!("no {want} condition in {conds:?}"));
        assert!(c.status, "{want} is false: {c:?}");
    }

    let cfg =
        a.rt.runtime_config(v1::RuntimeConfigRequest {})
            .await
            .unwrap()
            .into_inner();
    assert!(cfg.linux.is_some(), "RuntimeConfig without linux: {cfg:?}");

    let fs = a
        .img
        .image_fs_info(v1::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = fs.image_filesystems.first().expect("an image filesystem");
    assert!(first.timestamp > 0);
    assert!(!first.fs_id.as_ref().unwrap().mountpoint.is_empty());
    assert!(first.used_bytes.is_some());

    // UpdateRuntimeConfig with a pod CIDR is accepted (kubelet sends it on start).
    a.rt.update_runtime_config(v1::UpdateRuntimeConfigRequest {
        runtime_config: Some(v1::RuntimeConfig {
            network_config: Some(v1::NetworkConfig {
                pod_cidr: "10.88.0.0/16".into(),
            }),
        }),
    })
    .await
    .unwrap();
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_lifecycle_status_and_list_filters() {
    require_root!();
    let mut a = Agent::start(&[]).await;
    let (id, cfg) = a.sandbox("lifecycle").await;
    let (other, _) = a.sandbox("other").await;

    let st = a.sandbox_status(&id).await.unwrap();
    assert_eq!(st.id, id);
    assert_eq!(st.state, v1::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata, cfg.metadata);
    assert!(st.created_at > 0);
    assert_eq!(st.labels, cfg.labels);
    assert_eq!(st.annotations, cfg.annotations);
    let ns = st
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .expect("namespace options in status");
    assert_eq!(ns.network, v1::NamespaceMode::Pod as i32);

    // Filters: by ID, by state, by label, and all of them at once.
    let all = a.list_sandboxes(None).await;
    assert_eq!(all.len(), 2, "{all:?}");
    let by_id = a
        .list_sandboxes(Some(v1::PodSandboxFilter {
            id: id.clone(),
            ..Default::default()
        }))
        .await;
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].id, id);
    assert_eq!(by_id[0].metadata, cfg.metadata);
    assert_eq!(by_id[0].annotations, cfg.annotations);
    let by_label = a
        .list_sandboxes(Some(v1::PodSandboxFilter {
            label_selector: HashMap::from([("test".into(), "other".into())]),
            ..Default::default()
        }))
        .await;
    assert_eq!(by_label.iter().map(|s| &s.id).collect::<Vec<_>>(), [&other]);
    let none = a
        .list_sandboxes(Some(v1::PodSandboxFilter {
            label_selector: HashMap::from([("test".into(), "nothing".into())]),
            ..Default::default()
        }))
        .await;
    assert!(none.is_empty());
    // A truncated ID prefix is accepted by containerd and CRI-O; an unknown one matches
    // nothing.
    let unknown = a
        .list_sandboxes(Some(v1::PodSandboxFilter {
            id: "0123456789abcdef-nope".into(),
            ..Default::default()
        }))
        .await;
    assert!(unknown.is_empty());

    // Stop: NOTREADY, listed under that state, still has its status. Stop is idempotent.
    a.stop_sandbox(&id).await;
    a.stop_sandbox(&id).await;
    let st = a.sandbox_status(&id).await.unwrap();
    assert_eq!(st.state, v1::PodSandboxState::SandboxNotready as i32);
    let notready = a
        .list_sandboxes(Some(v1::PodSandboxFilter {
            state: Some(v1::PodSandboxStateValue {
                state: v1::PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }))
        .await;
    assert_eq!(notready.iter().map(|s| &s.id).collect::<Vec<_>>(), [&id]);
    let ready = a
        .list_sandboxes(Some(v1::PodSandboxFilter {
            state: Some(v1::PodSandboxStateValue {
                state: v1::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        }))
        .await;
    assert_eq!(ready.iter().map(|s| &s.id).collect::<Vec<_>>(), [&other]);

    // Remove: gone from the list, status NotFound, a second remove succeeds.
    a.rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    a.rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        a.sandbox_status(&id).await.unwrap_err().code(),
        Code::NotFound
    );
    let all = a.list_sandboxes(None).await;
    assert_eq!(all.iter().map(|s| &s.id).collect::<Vec<_>>(), [&other]);

    // Removing a ready sandbox stops it on the way.
    a.rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: other.clone(),
    })
    .await
    .unwrap();
    assert!(a.list_sandboxes(None).await.is_empty());
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_idempotent_for_stop_and_remove_and_not_found_for_status() {
    require_root!();
    let mut a = Agent::start(&[]).await;
    let unknown = "f00d".repeat(16);
    a.rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: unknown.clone(),
    })
    .await
    .expect("StopPodSandbox of an unknown ID succeeds");
    a.rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: unknown.clone(),
    })
    .await
    .expect("RemovePodSandbox of an unknown ID succeeds");
    assert_eq!(
        a.sandbox_status(&unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    a.rt.stop_container(v1::StopContainerRequest {
        container_id: unknown.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer of an unknown ID succeeds");
    a.rt.remove_container(v1::RemoveContainerRequest {
        container_id: unknown.clone(),
    })
    .await
    .expect("RemoveContainer of an unknown ID succeeds");
    assert_eq!(
        a.container_status(&unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    let e = a
        .try_start_container(&unknown)
        .await
        .expect_err("StartContainer of an unknown ID fails");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = a
        .try_exec(&unknown, &["true"], 5)
        .await
        .expect_err("ExecSync in an unknown container fails");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e =
        a.rt.container_stats(v1::ContainerStatsRequest {
            container_id: unknown.clone(),
        })
        .await
        .expect_err("ContainerStats of an unknown ID fails");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    // A container in an unknown sandbox.
    let cfg = a.sandbox_config("ghost");
    let c = a.container_config("c", &["sleep", "60"]);
    let e = a
        .try_create_container(&unknown, &cfg, c)
        .await
        .expect_err("CreateContainer in an unknown sandbox fails");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_sandbox_name_is_already_exists() {
    require_root!();
    let mut a = Agent::start(&[]).await;
    let (id, cfg) = a.sandbox("dup").await;
    let e =
        a.rt.run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("a second sandbox with the same metadata fails");
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    // The failed attempt left nothing: one sandbox.
    assert_eq!(a.list_sandboxes(None).await.len(), 1);
    // Another attempt number is a different name.
    let mut next = cfg.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    let id2 = a.run_sandbox(&next).await;
    assert_ne!(id, id2);
    // Once removed, the name is free again.
    a.remove_sandbox(&id).await;
    let id3 = a.run_sandbox(&cfg).await;
    assert_ne!(id, id3);
    // An unknown runtime handler is refused.
    let mut other = a.sandbox_config("handler");
    other.hostname = "handler".into();
    let e =
        a.rt.run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(other),
            runtime_handler: "no-such-handler".into(),
        })
        .await
        .expect_err("an unknown runtime handler fails");
    assert_ne!(e.code(), Code::Ok);
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_dns_config_and_sysctls() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let mut cfg = a.sandbox_config("dns");
    cfg.hostname = "cri-host-name".into();
    cfg.dns_config = Some(v1::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    cfg.linux.as_mut().unwrap().sysctls = HashMap::from([
        ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
        (
            "net.ipv4.ip_local_port_range".to_string(),
            "20000 30000".to_string(),
        ),
    ]);
    let sb = a.run_sandbox(&cfg).await;
    let c = a.container_config("c", &["sleep", "3600"]);
    let c = a.run_container(&sb, &cfg, c).await;

    assert_eq!(a.exec(&c, &["hostname"]).await.trim(), "cri-host-name");
    let resolv = a.exec(&c, &["cat", "/etc/resolv.conf"]).await;
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let hosts = a.exec(&c, &["cat", "/etc/hosts"]).await;
    assert!(hosts.contains("localhost"), "{hosts}");

    assert_eq!(
        a.exec(&c, &["cat", "/proc/sys/kernel/shm_rmid_forced"])
            .await
            .trim(),
        "1"
    );
    let range = a
        .exec(&c, &["cat", "/proc/sys/net/ipv4/ip_local_port_range"])
        .await;
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["20000", "30000"]
    );
    // The host's own values are untouched.
    let host_range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    assert_ne!(
        host_range.split_whitespace().collect::<Vec<_>>(),
        ["20000", "30000"]
    );
    a.finish().await;
}

/// `prefix`, padded with `fill` to exactly `len` bytes.
fn padded(prefix: &str, fill: char, len: usize) -> String {
    let mut s = prefix.to_owned();
    while s.len() < len {
        s.push(fill);
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_hostname_is_the_nodes_and_long_names_are_truncated() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let node = nix::unistd::gethostname().unwrap().into_string().unwrap();

    // critest's way: a long sandbox name and no hostname. The pod gets the node's
    // hostname, as with containerd: in its UTS namespace, /etc/hostname and $HOSTNAME.
    let name = padded(&cri_common::unique("longname"), 'x', 100);
    let mut cfg = a.sandbox_config(&name);
    cfg.hostname = String::new();
    let sb = a.run_sandbox(&cfg).await;
    let c = a
        .run_container(&sb, &cfg, a.container_config("c", &["sleep", "3600"]))
        .await;
    assert_eq!(a.exec(&c, &["hostname"]).await.trim(), node);
    assert_eq!(a.exec(&c, &["cat", "/etc/hostname"]).await.trim(), node);
    assert_eq!(
        a.exec(&c, &["sh", "-c", "echo $HOSTNAME"]).await.trim(),
        node
    );

    // A hostname too long for the kernel is cut as kubelet cuts it: 63 bytes, without
    // trailing '-' or '.'.
    let long = padded(&format!("{}-.", padded("h", 'h', 61)), 'y', 100);
    let mut cfg = a.sandbox_config(&cri_common::unique("longhost"));
    cfg.hostname = long;
    let sb = a.run_sandbox(&cfg).await;
    let c = a
        .run_container(&sb, &cfg, a.container_config("c", &["sleep", "3600"]))
        .await;
    let want = "h".repeat(61);
    assert_eq!(a.exec(&c, &["hostname"]).await.trim(), want);
    assert_eq!(a.exec(&c, &["cat", "/etc/hostname"]).await.trim(), want);
    assert_eq!(
        a.exec(&c, &["sh", "-c", "echo $HOSTNAME"]).await.trim(),
        want
    );
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_ip_and_port_mapping_on_a_cni_network() {
    require_root!();
    let mut env = common::Env::new(&["nginx", "busybox"]);
    let net = cri_common::network(&mut env);
    let mut a = Agent::start_in(env).await;
    let port = cri_common::free_port();
    let mut cfg = a.sandbox_config("web");
    cfg.port_mappings = vec![v1::PortMapping {
        protocol: v1::Protocol::Tcp as i32,
        container_port: 80,
        host_port: i32::from(port),
        host_ip: String::new(),
    }];
    let sb = a.run_sandbox(&cfg).await;
    let st = a.sandbox_status(&sb).await.unwrap();
    let ip = st
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    assert!(ip.starts_with(&net.subnet_prefix), "pod IP {ip:?}");

    let mut web = a.container_config("nginx", &[]);
    web.command.clear();
    web.image.as_mut().unwrap().image = NGINX.into();
    let web = a.run_container(&sb, &cfg, web).await;
    let page = cri_common::eventually(
        "nginx on the host port",
        Duration::from_secs(30),
        || async { cri_common::http_get(port).filter(|p| p.contains("Welcome to nginx!")) },
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");

    // The pod's eth0 carries the address the status reports.
    let mut sidecar = a.container_config("side", &["sleep", "3600"]);
    sidecar.image.as_mut().unwrap().image = BUSYBOX.into();
    let side = a.run_container(&sb, &cfg, sidecar).await;
    let addr = a
        .exec(&side, &["ip", "-o", "-4", "addr", "show", "eth0"])
        .await;
    assert!(addr.contains(&format!("{ip}/24")), "{addr}");
    // And the sidecar reaches nginx over the shared loopback.
    let local = a
        .exec(&side, &["wget", "-q", "-O", "-", "http://127.0.0.1:80/"])
        .await;
    assert!(local.contains("Welcome to nginx!"), "{local}");
    let _ = web;

    a.remove_sandbox(&sb).await;
    assert!(
        cri_common::http_get(port).is_none_or(|p| !p.contains("Welcome")),
        "host port {port} still answers after the sandbox is gone"
    );
    a.finish().await;
    net.assert_clean_and_remove();
}

/// A caller whose deadline passes while RunPodSandbox and CreateContainer work does not
/// leave them half-done: they finish, the sandbox and the container show in the lists
/// (as with containerd, kubelet finds them there), and they are removed normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_abandoned_by_their_caller_still_complete() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let cfg = a.sandbox_config("impatient");
    let mut req = tonic::Request::new(v1::RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: String::new(),
    });
    req.set_timeout(std::time::Duration::from_micros(1));
    let r = a.rt.run_pod_sandbox(req).await;
    assert!(r.is_err(), "{r:?}");
    // The call never began (its deadline passed before its request was read) or it
    // completes on its own; either way the name is not left reserved for nothing.
    let again =
        a.rt.run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await;
    if let Err(e) = &again {
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
    }
    let sb = cri_common::eventually("the sandbox", std::time::Duration::from_secs(30), || {
        let mut rt = a.rt.clone();
        async move {
            let items = rt
                .list_pod_sandbox(v1::ListPodSandboxRequest::default())
                .await
                .ok()?
                .into_inner()
                .items;
            items.into_iter().next()
        }
    })
    .await;
    assert_eq!(sb.state, v1::PodSandboxState::SandboxReady as i32);
    let sandboxes = a.list_sandboxes(None).await;
    assert_eq!(sandboxes.len(), 1, "one sandbox: {sandboxes:?}");
    if let Ok(r) = again {
        assert_eq!(r.into_inner().pod_sandbox_id, sb.id);
    }
    let mut req = tonic::Request::new(v1::CreateContainerRequest {
        pod_sandbox_id: sb.id.clone(),
        config: Some(a.container_config("c", &["sleep", "3600"])),
        sandbox_config: Some(cfg.clone()),
    });
    req.set_timeout(std::time::Duration::from_micros(1));
    assert!(a.rt.create_container(req).await.is_err());
    // The abandoned call either never began (its deadline passed before its request
    // was read) or completes on its own; either way no stale name is left: the same
    // request again is created, or says the name is taken while the first completes.
    let again =
        a.rt.create_container(v1::CreateContainerRequest {
            pod_sandbox_id: sb.id.clone(),
            config: Some(a.container_config("c", &["sleep", "3600"])),
            sandbox_config: Some(cfg.clone()),
        })
        .await;
    match &again {
        Ok(_) => {}
        Err(e) => assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}"),
    }
    let c = cri_common::eventually("the container", std::time::Duration::from_secs(30), || {
        let mut rt = a.rt.clone();
        async move {
            rt.list_containers(v1::ListContainersRequest::default())
                .await
                .ok()?
                .into_inner()
                .containers
                .into_iter()
                .next()
        }
    })
    .await;
    let all = a.containers(None).await;
    assert_eq!(all.len(), 1, "one container named c: {all:?}");
    if let Ok(r) = again {
        assert_eq!(r.into_inner().container_id, c.id);
    }
    assert_eq!(c.pod_sandbox_id, sb.id);
    a.start_container(&c.id).await;
    a.finish().await;
}

/// Without a LogDirectory podrun keeps the container logs under its log root, and the
/// directory goes with the sandbox; a LogDirectory the caller gave stays the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_log_directory_goes_with_its_sandbox() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let mut cfg = a.sandbox_config("nologdir");
    let given = std::path::PathBuf::from(&cfg.log_directory);
    cfg.log_directory = String::new();
    let sb = a.run_sandbox(&cfg).await;
    let c = a.container_config("talk", &["sh", "-c", "echo said; sleep 3600"]);
    let id = a.run_container(&sb, &cfg, c).await;
    let log_root = a.env.logs.clone();
    let dirs = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&log_root)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let found = dirs();
    assert_eq!(
        found.len(),
        1,
        "one pod log dir under the log root: {found:?}"
    );
    assert!(found[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("default_nologdir_"));
    let log = found[0].join("talk.log");
    cri_common::eventually("the container's log", Duration::from_secs(30), || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("said"))
        }
    })
    .await;
    a.exec(&id, &["true"]).await;
    a.remove_sandbox(&sb).await;
    assert!(dirs().is_empty(), "left: {:?}", dirs());

    // The caller's log directory stays after removal.
    let (sb, cfg) = a.sandbox("keeps").await;
    a.remove_sandbox(&sb).await;
    assert!(std::path::Path::new(&cfg.log_directory).is_dir());
    assert!(given.is_dir(), "the unused given directory was not touched");
    a.finish().await;
}
