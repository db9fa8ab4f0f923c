//! The token cleaner: bootstrap-token Secrets past their expiration are deleted, as
//! kube-controller-manager's tokencleaner does, at start and then once a minute.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::api::auth::token;
use crate::api::object;
use crate::api::status::ApiError;
use crate::api::storage::DeleteOptions;
use crate::api::Api;

/// How often the token Secrets are looked at.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// Runs until the server shuts down.
pub async fn run(api: Arc<Api>) {
    let mut shutdown = api.shutdown.clone();
    loop {
        if let Err(e) = clean(&api, Utc::now()).await {
            warn!(error = %e.message, "token cleaner");
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Deletes the token Secrets expired at `now` (an unreadable expiration counts as
/// past); returns the names of those it deleted.
pub async fn clean(api: &Api, now: DateTime<Utc>) -> Result<Vec<String>, ApiError> {
    let secrets = api
        .strategy("", "secrets")
        .ok_or_else(|| ApiError::internal("secrets are not served"))?;
    let mut deleted = Vec::new();
    for secret in token::list_secrets(api).await? {
        if !token::is_expired(&secret, now) || object::deletion_timestamp(&secret).is_some() {
            continue;
        }
        let name = object::name(&secret).unwrap_or_default().to_string();
        // The UID precondition leaves alone a Secret of the same name made since the list.
        let opts = DeleteOptions {
            uid: object::uid(&secret).map(str::to_string),
            ..Default::default()
        };
        match api
            .delete_object(secrets, Some(token::NAMESPACE), &name, &opts)
            .await
        {
            Ok(_) => {
                info!(secret = %name, "expired bootstrap token deleted");
                deleted.push(name);
            }
            Err(e) if e.reason == "NotFound" || e.reason == "Conflict" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use serde_json::json;

    use super::*;
    use crate::api::auth::token::{memory_api, store_secret, BootstrapToken};

    #[tokio::test]
    async fn only_expired_token_secrets_go() {
        let (api, _stop) = memory_api().await;
        let now = Utc::now();
        let expired = BootstrapToken::generate();
        store_secret(&api, expired.to_secret(now - chrono::Duration::minutes(1))).await;
        let unreadable = BootstrapToken::generate();
        let mut s = unreadable.secret_with(None, "");
        s["data"]["expiration"] = json!(base64::engine::general_purpose::STANDARD.encode("soon"));
        store_secret(&api, s).await;
        let valid = BootstrapToken::generate();
        store_secret(&api, valid.to_secret(now + chrono::Duration::hours(1))).await;
        let forever = BootstrapToken::generate();
        store_secret(&api, forever.secret_with(None, "")).await;
        // Not a token Secret, though it has an expiration in the past.
        store_secret(
            &api,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": "bootstrap-token-opaque1" },
                "data": { "expiration": base64::engine::general_purpose::STANDARD.encode("2000-01-01T00:00:00Z") },
            }),
        )
        .await;

        let mut deleted = clean(&api, now).await.unwrap();
        deleted.sort();
        let mut want = vec![expired.secret_name(), unreadable.secret_name()];
        want.sort();
        assert_eq!(deleted, want);
        let secrets = api.strategy("", "secrets").unwrap();
        let (left, _, _, _) = api
            .list_objects(
                secrets,
                Some("kube-system"),
                &crate::api::handlers::ListOptions::default(),
            )
            .await
            .unwrap();
        let mut names: Vec<&str> = left.iter().filter_map(object::name).collect();
        names.sort();
        let mut kept = vec![
            valid.secret_name(),
            forever.secret_name(),
            "bootstrap-token-opaque1".to_string(),
        ];
        kept.sort();
        assert_eq!(names, kept);
        // Nothing more to do: idempotent.
        assert!(clean(&api, now).await.unwrap().is_empty());
        // An hour and more later, the one-hour token goes too.
        let later = now + chrono::Duration::hours(2);
        assert_eq!(clean(&api, later).await.unwrap(), [valid.secret_name()]);
    }
}
