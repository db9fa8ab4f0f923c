//! The store conformance suite against a real etcd (Debian's /usr/bin/etcd), started on
//! free loopback ports in a temporary directory, and a 3-member cluster that keeps
//! answering through another endpoint when one member is killed.
//!
//! Without /usr/bin/etcd the tests print why and pass, unless PODRUN_TEST_STRICT=1,
//! where they fail.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use podrun_control::store::{testsuite, EtcdStore, Revision, Store};

const ETCD: &str = "/usr/bin/etcd";
const START_WAIT: Duration = Duration::from_secs(60);

fn etcd_available() -> bool {
    if Path::new(ETCD).exists() {
        return true;
    }
    if std::env::var("PODRUN_TEST_STRICT").as_deref() == Ok("1") {
        panic!("{ETCD} is missing (install etcd-server) and PODRUN_TEST_STRICT=1");
    }
    println!("skipping: {ETCD} is missing (install etcd-server to run this test)");
    false
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// One etcd member; killed (by its PID) when dropped, also when a test fails.
struct Member {
    child: Child,
    client_url: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(size: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let log =
                    std::fs::File::create(dir.path().join(format!("m{i}.log"))).expect("log file");
                let child = Command::new(ETCD)
                    .arg("--name")
                    .arg(format!("m{i}"))
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("m{i}.etcd")))
                    .arg("--listen-client-urls")
                    .arg(&client_url)
                    .arg("--advertise-client-urls")
                    .arg(&client_url)
                    .arg("--listen-peer-urls")
                    .arg(&peer_url)
                    .arg("--initial-advertise-peer-urls")
                    .arg(&peer_url)
                    .arg("--initial-cluster")
                    .arg(&initial)
                    .arg("--initial-cluster-state")
                    .arg("new")
                    .arg("--initial-cluster-token")
                    .arg("podrun-test")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("start etcd");
                Member { child, client_url }
            })
            .collect();
        Cluster { members, _dir: dir }
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Connects once the cluster answers a Range, polling until `START_WAIT`.
    async fn connect(&self) -> EtcdStore {
        let deadline = Instant::now() + START_WAIT;
        loop {
            match EtcdStore::connect(&self.endpoints()).await {
                Ok(store) => return store,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("etcd did not answer within {START_WAIT:?}: {e}"),
            }
        }
    }
}

fn compactor(store: &EtcdStore) -> impl Fn(Revision) -> BoxFuture<'static, ()> {
    let store = store.clone();
    move |rev| {
        let s = store.clone();
        Box::pin(async move { s.compact(rev).await.expect("compact") })
    }
}

#[tokio::test]
async fn conformance_on_etcd() {
    if !etcd_available() {
        return;
    }
    let cluster = Cluster::start(1);
    let store = cluster.connect().await;
    assert_eq!(store.backend(), "etcd");
    testsuite::run_all(&store, compactor(&store)).await;
}

#[tokio::test]
async fn keeps_answering_when_a_member_dies() {
    if !etcd_available() {
        return;
    }
    let mut cluster = Cluster::start(3);
    let store = cluster.connect().await;
    let before = store
        .create("/ha/before", b"1".to_vec())
        .await
        .expect("create");

    // Kill the first endpoint's member: calls start there.
    let dead = cluster.members.remove(0);
    drop(dead);

    // The survivors may need a moment to elect a new leader: wait for the condition.
    let deadline = Instant::now() + START_WAIT;
    let after = loop {
        match store.create("/ha/after", b"2".to_vec()).await {
            Ok(kv) => break kv,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no write through the surviving members: {e}"),
        }
    };
    assert!(after.mod_revision > before.mod_revision);
    let got = store.get("/ha/before").await.expect("get");
    assert_eq!(got, Some(before));
    let page = store.list("/ha/", None, None, None).await.expect("list");
    assert_eq!(page.items.len(), 2);
}

#[tokio::test]
#[ignore = "a measurement, not a check: cargo test -- --ignored --nocapture"]
async fn measure_creates_per_second() {
    if !etcd_available() {
        return;
    }
    let cluster = Cluster::start(1);
    let store = cluster.connect().await;
    let n = 500;
    let start = Instant::now();
    for i in 0..n {
        store
            .create(&format!("/bench/{i}"), vec![0; 512])
            .await
            .expect("create");
    }
    let secs = start.elapsed().as_secs_f64();
    println!("etcd: {n} creates in {secs:.2}s: {:.0}/s", n as f64 / secs);
}
