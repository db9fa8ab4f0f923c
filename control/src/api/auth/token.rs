//! Bootstrap tokens as Kubernetes defines them: `<id>.<secret>` (6 and 16 characters of
//! [a-z0-9]), stored as Secrets `bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` in kube-system, which a joining node presents as a
//! bearer token.

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{json, Value};

use super::{AuthError, User};

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The group kubeadm puts its default node tokens in.
pub const DEFAULT_GROUP: &str = "system:bootstrappers:podrun:default-node-token";

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

    pub fn secret_name(&self) -> String {
        format!("bootstrap-token-{}", self.id)
    }

    /// The Secret that holds the token, expiring at `expires`.
    pub fn to_secret(&self, expires: DateTime<Utc>) -> Value {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": SECRET_TYPE,
            "metadata": { "name": self.secret_name(), "namespace": "kube-system" },
            "data": {
                "token-id": b64(&self.id),
                "token-secret": b64(&self.secret),
                "expiration": b64(&expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                "usage-bootstrap-authentication": b64("true"),
                "usage-bootstrap-signing": b64("true"),
                "auth-extra-groups": b64(DEFAULT_GROUP),
                "description": b64("node join token made by podrun server token create"),
            },
        })
    }

    /// The user a bearer token is, checked against its Secret: None when it does not
    /// match, has expired, or may not authenticate.
    pub fn authenticate(&self, secret: &Value, now: DateTime<Utc>) -> Option<User> {
        if secret["type"] != SECRET_TYPE || secret["metadata"]["deletionTimestamp"].is_string() {
            return None;
        }
        let field = |k: &str| -> Option<String> {
            let raw = secret["data"][k].as_str()?;
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(raw).ok()?).ok()
        };
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
        if let Some(exp) = field("expiration") {
            let exp = DateTime::parse_from_rfc3339(&exp).ok()?;
            if exp <= now {
                return None;
            }
        }
        let mut groups = vec!["system:bootstrappers".to_string()];
        if let Some(extra) = field("auth-extra-groups") {
            groups.extend(
                extra
                    .split(',')
                    .map(|g| g.trim().to_string())
                    .filter(|g| g.starts_with("system:bootstrappers:")),
            );
        }
        groups.push("system:authenticated".into());
        Some(User {
            name: format!("system:bootstrap:{}", self.id),
            groups,
        })
    }
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
