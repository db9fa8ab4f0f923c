//! The pod garbage collector (kube-controller-manager's podgc): pods bound to a node
//! that no longer exists are force-deleted, as are terminating pods that were never
//! bound. The terminated-pod threshold (--terminated-pod-gc-threshold) is not kept here.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::DeleteParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tracing::{info, warn};

use super::manager::Task;
use super::shared::Informers;

/// How often the pods are looked at without a change, as upstream's gcCheckPeriod.
const CHECK: Duration = Duration::from_secs(20);

/// Runs the collector on pod changes and every [`CHECK`].
pub fn run(client: Client, informers: &Informers) -> Task {
    let pods = informers.pods.store();
    let nodes = informers.nodes.store();
    let mut events = informers.pods.subscribe().map(|_| ()).boxed();
    Box::pin(async move {
        let _ = tokio::join!(pods.wait_until_ready(), nodes.wait_until_ready());
        loop {
            collect(&client, &pods, &nodes).await;
            if let Ok(None) = tokio::time::timeout(CHECK, events.next()).await {
                return;
            }
            while let Ok(Some(())) =
                tokio::time::timeout(Duration::from_millis(50), events.next()).await
            {}
        }
    })
}

/// One pass: force-deletes orphaned pods and unbound terminating pods.
pub async fn collect(client: &Client, pods: &Store<Pod>, nodes: &Store<Node>) {
    let node_api: Api<Node> = Api::all(client.clone());
    for pod in pods.state() {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let reason = match &node {
            None if pod.metadata.deletion_timestamp.is_some() => "unscheduled and terminating",
            None => continue,
            Some(n) if nodes.get(&ObjectRef::new(n)).is_some() => continue,
            // The cache may lag behind: the node is asked for before its pods go.
            Some(n) => match node_api.get_opt(n).await {
                Ok(None) => "node gone",
                Ok(Some(_)) => continue,
                Err(e) => {
                    warn!(node = %n, error = %e, "podgc node lookup");
                    continue;
                }
            },
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match api
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => {
                info!(namespace = %ns, pod = %name, node = ?node, reason, "pod garbage collected")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => warn!(namespace = %ns, pod = %name, error = %e, "podgc delete"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::token::memory_api;
    use crate::api::auth::CONTROLLER_MANAGER_USER;
    use crate::controllers::client::in_process;
    use crate::controllers::endpoints::tests::eventually;
    use kube::api::PostParams;
    use serde_json::json;

    #[tokio::test]
    async fn pods_of_a_missing_node_are_deleted() {
        let (api, _stop) = memory_api().await;
        let client = in_process(api, CONTROLLER_MANAGER_USER);
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "alive"}})).unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        for (name, node) in [("orphan", "gone"), ("kept", "alive")] {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
            }))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
        }
        let mut informers = Informers::new(&client);
        let mut tasks = vec![run(client.clone(), &informers)];
        tasks.extend(informers.run());
        let _h = tokio::spawn(futures_util::future::join_all(tasks));
        eventually(|| async {
            pods.get_opt("orphan")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        assert!(pods.get_opt("kept").await.unwrap().is_some());
    }
}
