//! The controller manager and the scheduler as `podrun server` runs them (or `podrun
//! controller-manager` against any API server): each behind its own Lease, as
//! kube-controller-manager and kube-scheduler are, so that with several servers on one
//! etcd exactly one of each works at a time.

use std::future::Future;
use std::pin::Pin;

use super::shared::Informers;
use super::{daemonset, deployment, leader, nodeipam, nodelifecycle, replicaset, scheduler};

pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The candidate's identity in the Leases: the host name and a unique suffix, as
/// upstream's `<hostname>_<uuid>`.
pub fn identity() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "podrun".into());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

/// Every controller of the controller manager, each a loop that runs until dropped, and
/// the informers they share.
fn controllers(client: &kube::Client, node_cidrs: Option<&nodeipam::CidrConfig>) -> Vec<Task> {
    let mut informers = Informers::new(client);
    let mut tasks: Vec<Task> = vec![
        replicaset::run(client.clone(), &informers),
        deployment::run(client.clone(), &informers),
        super::endpoints::run(client.clone(), &informers),
        super::endpoints::run_slices(client.clone(), &informers),
        super::disruption::run(client.clone(), &informers),
        super::podgc::run(client.clone(), &informers),
        nodelifecycle::run(client.clone(), &informers),
        daemonset::run(client.clone(), &informers),
        super::gc::run(client.clone()),
    ];
    if let Some(cfg) = node_cidrs {
        tasks.push(nodeipam::run(client.clone(), &informers, cfg.clone()));
    }
    tasks.extend(informers.run());
    tasks
}

/// The scheduler's loops.
fn scheduler(client: &kube::Client) -> Vec<Task> {
    let mut informers = Informers::new(client);
    // The scheduler reads only pods and nodes.
    vec![
        scheduler::run(client.clone(), &informers),
        informers.pods.run(),
        informers.nodes.run(),
    ]
}

async fn all(tasks: Vec<Task>) {
    futures_util::future::join_all(tasks).await;
}

/// Runs the controllers while holding kube-system/kube-controller-manager. Never returns.
pub async fn run_controller_manager(
    client: kube::Client,
    identity: String,
    timing: leader::Timing,
    node_cidrs: Option<nodeipam::CidrConfig>,
) {
    let c = client.clone();
    leader::run(
        client,
        "kube-controller-manager",
        &identity,
        timing,
        move || all(controllers(&c, node_cidrs.as_ref())),
    )
    .await
}

/// Runs the scheduler while holding kube-system/kube-scheduler. Never returns.
pub async fn run_scheduler(client: kube::Client, identity: String, timing: leader::Timing) {
    let c = client.clone();
    leader::run(client, "kube-scheduler", &identity, timing, move || {
        all(scheduler(&c))
    })
    .await
}

/// `podrun controller-manager`: the controllers and the scheduler against the API server
/// `client` reaches, each behind its Lease, until `stop` resolves.
pub async fn run_standalone(
    client: kube::Client,
    node_cidrs: Option<nodeipam::CidrConfig>,
    stop: impl Future<Output = ()>,
) {
    let id = identity();
    let cm = tokio::spawn(run_controller_manager(
        client.clone(),
        id.clone(),
        leader::Timing::default(),
        node_cidrs,
    ));
    let sched = tokio::spawn(run_scheduler(client, id, leader::Timing::default()));
    stop.await;
    cm.abort();
    sched.abort();
}
