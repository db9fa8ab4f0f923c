//! Bootstrap tokens as Kubernetes defines them: `<id>.<secret>` (6 and 16 characters of
//! [a-z0-9]), stored as Secrets `bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` in kube-system, which a joining node presents as a
//! bearer token. Also what `podrun server token` shows of them, the Go durations its
//! `--ttl` takes, and the bearer-token authenticator of the request path.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{json, Value};

use super::{AuthError, User};
use crate::api::handlers::ListOptions;
use crate::api::status::ApiError;
use crate::api::Api;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The group kubeadm puts its default node tokens in.
pub const DEFAULT_GROUP: &str = "system:bootstrappers:podrun:default-node-token";
/// The namespace the token Secrets live in.
pub const NAMESPACE: &str = "kube-system";
const SECRET_PREFIX: &str = "bootstrap-token-";
/// The description of the Secrets `BootstrapToken::to_secret` makes.
pub const DEFAULT_DESCRIPTION: &str = "node join token made by podrun server token create";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

fn random(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn valid(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl BootstrapToken {
    pub fn generate() -> BootstrapToken {
        BootstrapToken {
            id: random(6),
            secret: random(16),
        }
    }

    pub fn parse(s: &str) -> Result<BootstrapToken, AuthError> {
        let (id, secret) = s.trim().split_once('.').ok_or_else(|| {
            AuthError::Token(
                "expected <id>.<secret>, as `podrun server token create` prints it".into(),
            )
        })?;
        if !valid(id, 6) || !valid(secret, 16) {
            return Err(AuthError::Token(
                "the id must be 6 and the secret 16 characters of [a-z0-9]".into(),
            ));
        }
        Ok(BootstrapToken {
            id: id.into(),
            secret: secret.into(),
        })
    }

    /// The token id of a command-line argument that is either a whole token or its id,
    /// as `kubeadm token delete` takes them.
    pub fn id_of(arg: &str) -> Result<String, AuthError> {
        if arg.contains('.') {
            return BootstrapToken::parse(arg).map(|t| t.id);
        }
        if !valid(arg, 6) {
            return Err(AuthError::Token(format!(
                "{arg:?} is neither a token id (6 characters of [a-z0-9]) nor a token <id>.<secret>"
            )));
        }
        Ok(arg.to_string())
    }

    pub fn secret_name(&self) -> String {
        secret_name(&self.id)
    }

    /// The Secret that holds the token, expiring at `expires`.
    pub fn to_secret(&self, expires: DateTime<Utc>) -> Value {
        self.secret_with(Some(expires), DEFAULT_DESCRIPTION)
    }

    /// The Secret that holds the token: it expires at `expires` (never when None), and
    /// authenticates and signs as kubeadm's node tokens do.
    pub fn secret_with(&self, expires: Option<DateTime<Utc>>, description: &str) -> Value {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": SECRET_TYPE,
            "metadata": { "name": self.secret_name(), "namespace": NAMESPACE },
            "data": {
                "token-id": b64(&self.id),
                "token-secret": b64(&self.secret),
                "usage-bootstrap-authentication": b64("true"),
                "usage-bootstrap-signing": b64("true"),
                "auth-extra-groups": b64(DEFAULT_GROUP),
            },
        });
        if let Some(t) = expires {
            secret["data"]["expiration"] =
                json!(b64(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
        }
        if !description.is_empty() {
            secret["data"]["description"] = json!(b64(description));
        }
        secret
    }

    /// The user a bearer token is, checked against its Secret: None when it does not
    /// match, has expired, or may not authenticate.
    pub fn authenticate(&self, secret: &Value, now: DateTime<Utc>) -> Option<User> {
        if secret["type"] != SECRET_TYPE || secret["metadata"]["deletionTimestamp"].is_string() {
            return None;
        }
        let field = |k: &str| data_field(secret, k);
        if field("token-id")? != self.id || field("usage-bootstrap-authentication")? != "true" {
            return None;
        }
        let stored = field("token-secret")?;
        // Constant time: the comparison takes as long whatever the first wrong byte.
        let same = stored.len() == self.secret.len()
            && stored
                .bytes()
                .zip(self.secret.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return None;
        }
        if is_expired(secret, now) {
            return None;
        }
        // As the bootstrap token authenticator's GetGroups: the default group and the
        // extra ones, sorted without duplicates; one invalid extra group and the token
        // does not authenticate at all.
        let mut groups = std::collections::BTreeSet::from(["system:bootstrappers".to_string()]);
        if let Some(extra) = field("auth-extra-groups").filter(|e| !e.is_empty()) {
            for g in extra.split(',') {
                if !valid_extra_group(g) {
                    return None;
                }
                groups.insert(g.to_string());
            }
        }
        let mut groups: Vec<String> = groups.into_iter().collect();
        groups.push("system:authenticated".into());
        Some(User {
            name: format!("system:bootstrap:{}", self.id),
            groups,
        })
    }
}

/// `system:bootstrappers:` then up to 256 of [a-z0-9:-] ending in [a-z0-9], the
/// pattern Kubernetes validates a token's extra groups by.
fn valid_extra_group(g: &str) -> bool {
    let Some(rest) = g.strip_prefix("system:bootstrappers:") else {
        return false;
    };
    (1..=256).contains(&rest.len())
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
        && rest
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The name of the Secret of the token with this id.
pub fn secret_name(id: &str) -> String {
    format!("{SECRET_PREFIX}{id}")
}

/// A data field of a token Secret, decoded.
fn data_field(secret: &Value, key: &str) -> Option<String> {
    let raw = secret["data"][key].as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(raw).ok()?).ok()
}

/// When a token Secret expires: None when it never does. An expiration that is not an
/// RFC 3339 time is an error.
pub fn expiration(secret: &Value) -> Result<Option<DateTime<Utc>>, AuthError> {
    let Some(text) = data_field(secret, "expiration").filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(&text)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| AuthError::Token(format!("expiration {text:?}: {e}")))
}

/// Whether a token Secret has expired at `now`. An expiration that cannot be read
/// counts as past, as Kubernetes' token authenticator and cleaner treat it.
pub fn is_expired(secret: &Value, now: DateTime<Utc>) -> bool {
    match expiration(secret) {
        Ok(Some(t)) => t <= now,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// A token as `podrun server token list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// `<id>.<secret>`.
    pub token: String,
    pub expires: Option<DateTime<Utc>>,
    /// "authentication", "signing": the `usage-bootstrap-*` keys set to "true", sorted.
    pub usages: Vec<String>,
    pub description: String,
    pub extra_groups: Vec<String>,
}

impl TokenInfo {
    /// The token a Secret holds; None when it is not a well-formed token Secret.
    pub fn from_secret(secret: &Value) -> Option<TokenInfo> {
        if secret["type"] != SECRET_TYPE {
            return None;
        }
        let id = data_field(secret, "token-id")?;
        let name = secret["metadata"]["name"].as_str()?;
        if name.strip_prefix(SECRET_PREFIX) != Some(id.as_str()) {
            return None;
        }
        let token =
            BootstrapToken::parse(&format!("{id}.{}", data_field(secret, "token-secret")?)).ok()?;
        let mut usages: Vec<String> = secret["data"]
            .as_object()?
            .keys()
            .filter_map(|k| k.strip_prefix("usage-bootstrap-"))
            .filter(|u| {
                data_field(secret, &format!("usage-bootstrap-{u}")).as_deref() == Some("true")
            })
            .map(str::to_string)
            .collect();
        usages.sort();
        Some(TokenInfo {
            token: format!("{}.{}", token.id, token.secret),
            expires: expiration(secret).ok()?,
            usages,
            description: data_field(secret, "description").unwrap_or_default(),
            extra_groups: data_field(secret, "auth-extra-groups")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// A time to live as kubectl and kubeadm show one: `45s`, `59m`, `23h`, `6d`, `1y`;
/// `<invalid>` when more than a second past.
pub fn short_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s < -1 => "<invalid>".into(),
        s if s < 0 => "0s".into(),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s if s < 365 * 86_400 => format!("{}d", s / 86_400),
        s => format!("{}y", s / (365 * 86_400)),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a duration (such as 24h, 90m, 1h30m or 0)")]
pub struct DurationError(pub String);

/// A duration as Go's time.ParseDuration reads it, without a sign: decimal numbers
/// each with a unit (ns, us, µs, ms, s, m, h), as in `24h`, `1h30m`, `1.5h`; `0` alone
/// needs no unit.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_string());
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err());
        }
        let value: f64 = number.parse().map_err(|_| err())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += value * seconds;
        rest = tail;
    }
    // Go's durations end near 292 years; more is as much an error there.
    if !total.is_finite() || total > (i64::MAX / 1_000_000_000) as f64 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(total))
}

/// The user a bearer token is: the Secret `kube-system/bootstrap-token-<id>` must hold
/// it, unexpired and usable for authentication. Anything else is 401, as
/// kube-apiserver answers a bearer token that no authenticator accepts.
pub async fn authenticate_bearer(api: &Api, bearer: &str) -> Result<User, ApiError> {
    let token = BootstrapToken::parse(bearer).map_err(|_| ApiError::unauthorized())?;
    let Some(secrets) = api.strategy("", "secrets") else {
        return Err(ApiError::unauthorized());
    };
    let secret = match api
        .get_object(secrets, Some(NAMESPACE), &token.secret_name())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            if e.reason != "NotFound" {
                tracing::warn!(token_id = %token.id, error = %e.message, "reading a bootstrap token");
            }
            return Err(ApiError::unauthorized());
        }
    };
    token
        .authenticate(&secret, Utc::now())
        .ok_or_else(ApiError::unauthorized)
}

/// The token Secrets in kube-system.
pub async fn list_secrets(api: &Api) -> Result<Vec<Value>, ApiError> {
    let secrets = api
        .strategy("", "secrets")
        .ok_or_else(|| ApiError::internal("secrets are not served"))?;
    let (items, _, _, _) = api
        .list_objects(secrets, Some(NAMESPACE), &ListOptions::default())
        .await?;
    Ok(items
        .into_iter()
        .filter(|s| s["type"] == SECRET_TYPE)
        .collect())
}

/// An API on a memory store with the system namespaces, for tests.
#[cfg(test)]
pub(crate) async fn memory_api() -> (std::sync::Arc<Api>, tokio::sync::watch::Sender<bool>) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let config = crate::api::ApiConfig {
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        node_ports: (30000, 32767),
        advertise: "127.0.0.1:6443".parse().unwrap(),
    };
    let api = std::sync::Arc::new(Api::new(
        std::sync::Arc::new(crate::store::MemoryStore::new()),
        config,
        crate::registry::all(),
        rx,
    ));
    api.bootstrap().await.unwrap();
    (api, tx)
}

/// Stores a Secret in kube-system, for tests.
#[cfg(test)]
pub(crate) async fn store_secret(api: &Api, secret: Value) -> Value {
    use crate::api::storage::{Warnings, WriteOptions};
    let s = api.strategy("", "secrets").unwrap();
    api.create_object(
        s,
        Some(NAMESPACE),
        secret,
        &WriteOptions::default(),
        &mut Warnings::default(),
    )
    .await
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_authenticate_against_their_secret() {
        let t = BootstrapToken::generate();
        let parsed = BootstrapToken::parse(&format!("{}.{}", t.id, t.secret)).unwrap();
        assert_eq!(parsed, t);
        assert!(BootstrapToken::parse("abc.def").is_err());
        assert!(BootstrapToken::parse("ABCDEF.0123456789abcdef").is_err());
        let now = Utc::now();
        let secret = t.to_secret(now + chrono::Duration::hours(24));
        let user = t.authenticate(&secret, now).unwrap();
        assert_eq!(user.name, format!("system:bootstrap:{}", t.id));
        assert!(user.in_group("system:bootstrappers") && user.in_group(DEFAULT_GROUP));
        let wrong = BootstrapToken {
            secret: "0".repeat(16),
            ..t.clone()
        };
        assert!(wrong.authenticate(&secret, now).is_none());
        assert!(t
            .authenticate(&secret, now + chrono::Duration::hours(25))
            .is_none());
    }
}

#[cfg(test)]
mod request_tests {
    use super::*;
    use crate::api::auth::authenticate;

    fn bearer(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(v).unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn a_bearer_token_is_its_secret_user_and_anything_else_is_401() {
        let (api, _stop) = memory_api().await;
        let now = Utc::now();
        let good = BootstrapToken::generate();
        store_secret(
            &api,
            good.secret_with(Some(now + chrono::Duration::hours(1)), ""),
        )
        .await;
        let forever = BootstrapToken::generate();
        store_secret(&api, forever.secret_with(None, "kept")).await;
        let expired = BootstrapToken::generate();
        store_secret(&api, expired.to_secret(now - chrono::Duration::seconds(5))).await;

        for t in [&good, &forever] {
            let h = bearer(&format!("Bearer {}.{}", t.id, t.secret));
            let user = authenticate(&api, None, &h).await.unwrap().unwrap();
            assert_eq!(user.name, format!("system:bootstrap:{}", t.id));
            assert!(user.in_group("system:bootstrappers"), "{user:?}");
            assert!(user.in_group(DEFAULT_GROUP), "{user:?}");
            assert!(user.in_group("system:authenticated"), "{user:?}");
        }
        // The scheme is case-insensitive, as Go's bearer authenticator takes it.
        let h = bearer(&format!("bearer {}.{}", good.id, good.secret));
        assert!(authenticate(&api, None, &h).await.unwrap().is_some());

        let unknown = BootstrapToken::generate();
        let refused = [
            format!("Bearer {}.{}", good.id, "0".repeat(16)),
            format!("Bearer {}.{}", expired.id, expired.secret),
            format!("Bearer {}.{}", unknown.id, unknown.secret),
            "Bearer abc".to_string(),
            format!("Bearer {}.{}x", good.id, good.secret),
            "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig".to_string(),
        ];
        for v in &refused {
            let e = authenticate(&api, None, &bearer(v)).await.unwrap_err();
            assert_eq!(e.code, http::StatusCode::UNAUTHORIZED, "{v}");
            assert_eq!(e.reason, "Unauthorized", "{v}");
            let status = e.to_status();
            assert_eq!(status["kind"], "Status");
            assert_eq!(status["reason"], "Unauthorized");
            assert_eq!(status["code"], 401);
        }

        // No credentials: anonymous, left to the handlers to refuse.
        let none = authenticate(&api, None, &http::HeaderMap::new())
            .await
            .unwrap();
        assert!(none.is_none());
        // A client certificate wins over a bearer token, even a bad one.
        let admin = User {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into()],
        };
        let u = authenticate(&api, Some(&admin), &bearer(&refused[0]))
            .await
            .unwrap();
        assert_eq!(u, Some(admin));
    }

    #[tokio::test]
    async fn a_secret_that_may_not_authenticate_is_refused() {
        let (api, _stop) = memory_api().await;
        let t = BootstrapToken::generate();
        let mut secret = t.secret_with(None, "");
        secret["data"]["usage-bootstrap-authentication"] =
            json!(base64::engine::general_purpose::STANDARD.encode("false"));
        store_secret(&api, secret).await;
        let h = bearer(&format!("Bearer {}.{}", t.id, t.secret));
        let e = authenticate(&api, None, &h).await.unwrap_err();
        assert_eq!(e.code, http::StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn durations_read_as_go_reads_them() {
        let d = |s: &str| parse_duration(s).unwrap().as_secs_f64();
        assert_eq!(d("24h"), 86_400.0);
        assert_eq!(d("90m"), 5_400.0);
        assert_eq!(d("1h30m"), 5_400.0);
        assert_eq!(d("1.5h"), 5_400.0);
        assert_eq!(d("2h45m30s"), 9_930.0);
        assert_eq!(d("0"), 0.0);
        assert_eq!(d("0s"), 0.0);
        assert_eq!(d("1500ms"), 1.5);
        assert_eq!(d(".5s"), 0.5);
        for bad in [
            "", "5", "h", "5x", "-1h", "+1h", "1h 30m", "1..5h", "1d", "24 h", ".",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e, DurationError(bad.to_string()), "{bad:?}");
            assert!(e.to_string().contains("is not a duration"), "{e}");
        }
        assert!(parse_duration("999999999h").is_err());
    }

    #[test]
    fn token_secrets_list_as_kubeadm_shows_them() {
        let t = BootstrapToken::generate();
        let exp = Utc::now() + chrono::Duration::hours(2);
        let info = TokenInfo::from_secret(&t.secret_with(Some(exp), "for w1")).unwrap();
        assert_eq!(info.token, format!("{}.{}", t.id, t.secret));
        assert_eq!(
            info.expires.map(|e| e.timestamp()),
            Some(exp.timestamp()),
            "{info:?}"
        );
        assert_eq!(info.usages, ["authentication", "signing"]);
        assert_eq!(info.description, "for w1");
        assert_eq!(info.extra_groups, [DEFAULT_GROUP]);
        let forever = TokenInfo::from_secret(&t.secret_with(None, "")).unwrap();
        assert_eq!(forever.expires, None);
        assert_eq!(forever.description, "");
        // A Secret whose name is not its token id's is no token.
        let mut other = t.secret_with(None, "");
        other["metadata"]["name"] = json!("bootstrap-token-zzzzzz");
        assert!(TokenInfo::from_secret(&other).is_none());
        let mut opaque = t.secret_with(None, "");
        opaque["type"] = json!("Opaque");
        assert!(TokenInfo::from_secret(&opaque).is_none());

        assert_eq!(BootstrapToken::id_of(&info.token).unwrap(), t.id);
        assert_eq!(BootstrapToken::id_of(&t.id).unwrap(), t.id);
        assert!(BootstrapToken::id_of("abc").is_err());
        assert!(BootstrapToken::id_of("abcdef.short").is_err());

        let h = |s: i64| short_duration(chrono::Duration::seconds(s));
        assert_eq!(h(3_599), "59m");
        assert_eq!(h(86_399), "23h");
        assert_eq!(h(30), "30s");
        assert_eq!(h(3 * 86_400), "3d");
        assert_eq!(h(400 * 86_400), "1y");
        assert_eq!(h(-1), "0s");
        assert_eq!(h(-60), "<invalid>");
    }
}
