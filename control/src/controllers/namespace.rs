//! The namespace controller: a namespace being deleted is emptied, resource by
//! resource, and goes once nothing is left in it (as kube-controller-manager's).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::api::handlers::ListOptions;
use crate::api::storage::{DeleteOptions, WriteOptions};
use crate::api::{object, Api};

/// How long to wait before looking again at a namespace whose contents are still going
/// (pods bound to a node wait for their kubelet).
const RECHECK: Duration = Duration::from_secs(2);

/// Runs until the server shuts down.
pub async fn run(api: Arc<Api>) {
    let mut shutdown = api.shutdown.clone();
    loop {
        // The revision before looking: a change made while reconciling wakes the next round.
        let rev = api.store.revision().await.unwrap_or(0);
        let pending = match reconcile_all(&api).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "namespace controller");
                true
            }
        };
        // Wake on any namespace change, or soon when something is still draining.
        let mut events = match api.store.watch("/registry/core/namespaces/", rev).await {
            Ok(w) => w,
            Err(_) => {
                tokio::time::sleep(RECHECK).await;
                continue;
            }
        };
        tokio::select! {
            _ = events.recv() => {}
            _ = tokio::time::sleep(RECHECK), if pending => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Works on every terminating namespace; true while one is still not empty.
async fn reconcile_all(api: &Api) -> Result<bool, String> {
    let Some(namespaces) = api.strategy("", "namespaces") else {
        return Ok(false);
    };
    let (all, _, _, _) = api
        .list_objects(namespaces, None, &ListOptions::default())
        .await
        .map_err(|e| e.message)?;
    let mut pending = false;
    for ns in all
        .iter()
        .filter(|n| object::deletion_timestamp(n).is_some())
    {
        let name = object::name(ns).unwrap_or_default().to_string();
        if !empty_namespace(api, &name).await? {
            pending = true;
            continue;
        }
        let opts = WriteOptions {
            manager: "kube-controller-manager".into(),
            ..Default::default()
        };
        let finalized = api
            .guaranteed_update(
                namespaces,
                None,
                &name,
                Some("finalize"),
                &opts,
                |old: &Value| {
                    let mut new = old.clone();
                    new["spec"]["finalizers"] = json!([]);
                    Ok(new)
                },
            )
            .await;
        match finalized {
            Ok(_) => {}
            Err(e) if e.reason == "NotFound" => continue,
            Err(e) => return Err(e.message),
        }
        match api
            .delete_object(namespaces, None, &name, &DeleteOptions::default())
            .await
        {
            Ok((_, true)) => info!(namespace = %name, "namespace deleted"),
            Ok((_, false)) => pending = true,
            Err(e) if e.reason == "NotFound" => {}
            Err(e) => return Err(e.message),
        }
    }
    Ok(pending)
}

/// Deletes what is in the namespace; true when nothing is left.
async fn empty_namespace(api: &Api, ns: &str) -> Result<bool, String> {
    let mut empty = true;
    for s in api.resources().filter(|s| s.info().namespaced) {
        let (items, _, _, _) = api
            .list_objects(s, Some(ns), &ListOptions::default())
            .await
            .map_err(|e| e.message)?;
        for item in items {
            empty = false;
            if object::deletion_timestamp(&item).is_some() {
                continue;
            }
            let name = object::name(&item).unwrap_or_default().to_string();
            match api
                .delete_object(s, Some(ns), &name, &DeleteOptions::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == "NotFound" => {}
                Err(e) => return Err(e.message),
            }
        }
    }
    Ok(empty)
}
