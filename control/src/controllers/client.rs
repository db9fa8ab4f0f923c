//! A kube-rs client for the controllers that run inside `podrun server`: requests go
//! straight to the API's handler, as the given control-plane user, with no TLS or socket
//! in between. Out of process (`podrun controller-manager`) the same controllers get a
//! client from a kubeconfig instead, so they work against any API server.

use std::convert::Infallible;
use std::sync::Arc;

use crate::api::auth::User;
use crate::api::Api;

/// A client whose requests `api` serves as `user` (see [`crate::api::auth`] for the
/// control-plane identities).
pub fn in_process(api: Arc<Api>, user: &str) -> kube::Client {
    let user = User {
        name: user.to_string(),
        groups: vec!["system:authenticated".into()],
    };
    // Writes are recorded in managedFields under the program's name, as kube-apiserver
    // takes it from the user agent: kube-controller-manager, kube-scheduler.
    let agent = http::HeaderValue::from_str(user.name.trim_start_matches("system:"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("podrun"));
    let service = tower::service_fn(move |mut req: http::Request<kube::client::Body>| {
        let api = api.clone();
        let user = user.clone();
        req.headers_mut()
            .entry(http::header::USER_AGENT)
            .or_insert_with(|| agent.clone());
        async move { Ok::<_, Infallible>(api.handle(req, Some(user)).await) }
    });
    kube::Client::new(service, "default")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::{ListParams, PostParams};

    #[tokio::test]
    async fn controllers_read_and_write_through_the_api() {
        let (api, _stop) = crate::api::auth::token::memory_api().await;
        let client = in_process(api, crate::api::auth::CONTROLLER_MANAGER_USER);
        let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
        let names: Vec<String> = namespaces
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        assert!(names.contains(&"kube-system".to_string()), "{names:?}");
        let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("c1".into());
        let created = cms.create(&PostParams::default(), &cm).await.unwrap();
        assert!(created.metadata.uid.is_some());
        // Validation errors come back as kube-rs's typed API errors.
        let mut bad = ConfigMap::default();
        bad.metadata.name = Some("Not_Valid".into());
        match cms.create(&PostParams::default(), &bad).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 422),
            other => panic!("{other:?}"),
        }
    }
}
