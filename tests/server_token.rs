//! `podrun server token create|list|delete` against a real `podrun server`, and the
//! tokens it makes used as bearer tokens by the real kubectl (PyPI's 1.37): a token
//! authenticates as system:bootstrap:<id>, may read discovery but not pods, a wrong or
//! deleted token is 401.

mod server_common;

use std::path::PathBuf;
use std::process::{Command, Output};

use server_common::{cannot_run, mark_ran, Server};

const TEST: &str = "tokens_authenticate_kubectl_until_deleted";

fn kubectl_1_37() -> Option<PathBuf> {
    let path = std::env::var_os("PODRUN_KUBECTL_1_37")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/podrun-test/kubectl-venv/bin/kubectl".into());
    if !path.exists() {
        cannot_run(
            TEST,
            &format!(
                "kubectl 1.37 not found at {} (scripts/setup.sh installs it)",
                path.display()
            ),
        );
        return None;
    }
    Some(path)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `podrun --root <the server's> server token ARGS`.
fn podrun_token(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podrun"))
        .arg("--root")
        .arg(&server.root)
        .args(["server", "token"])
        .args(args)
        .output()
        .expect("run podrun server token")
}

fn token_ok(server: &Server, args: &[&str]) -> String {
    let out = podrun_token(server, args);
    assert!(
        out.status.success(),
        "podrun server token {args:?} failed: {}\n--- server log ---\n{}",
        text(&out.stderr),
        server.log_text()
    );
    text(&out.stdout)
}

/// kubectl with only a bearer token: no kubeconfig user, the server's CA.
fn kubectl_with_token(server: &Server, kubectl: &PathBuf, token: &str, args: &[&str]) -> Output {
    let home = server.root.parent().unwrap();
    let empty = home.join("empty.kubeconfig");
    std::fs::write(&empty, "").unwrap();
    Command::new(kubectl)
        .env("KUBECONFIG", &empty)
        .env("HOME", home)
        .arg(format!("--server=https://127.0.0.1:{}", server.port))
        .arg(format!(
            "--certificate-authority={}",
            server.root.join("server/pki/ca.crt").display()
        ))
        .arg(format!("--token={token}"))
        .args(args)
        .output()
        .expect("run kubectl")
}

fn is_token(s: &str) -> bool {
    let Some((id, secret)) = s.split_once('.') else {
        return false;
    };
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    ok(id, 6) && ok(secret, 16)
}

#[test]
fn tokens_authenticate_kubectl_until_deleted() {
    let Some(kubectl) = kubectl_1_37() else {
        return;
    };
    mark_ran();
    let mut server = Server::start(&[]);

    let created = token_ok(&server, &["create", "--ttl", "1h"]);
    let lines: Vec<&str> = created.lines().collect();
    assert_eq!(lines.len(), 1, "one line, the token: {created:?}");
    let token = lines[0].to_string();
    assert!(is_token(&token), "{token:?}");
    let (id, _) = token.split_once('.').unwrap();

    // Authenticated: discovery is open to every authenticated user...
    let out = kubectl_with_token(&server, &kubectl, &token, &["get", "--raw", "/api"]);
    assert!(
        out.status.success(),
        "get --raw /api with the token: {}\n--- server log ---\n{}",
        text(&out.stderr),
        server.log_text()
    );
    let api: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(api["kind"], "APIVersions", "{api}");
    // ...but bootstrappers may not list pods: 403, naming the token's user.
    let out = kubectl_with_token(&server, &kubectl, &token, &["get", "pods", "-A"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("Error from server (Forbidden): pods is forbidden"),
        "{err}"
    );
    assert!(
        err.contains(&format!("User \"system:bootstrap:{id}\"")),
        "{err}"
    );

    // A wrong secret, an unknown token and no token format at all: 401.
    for bad in [
        format!("{id}.{}", "0".repeat(16)),
        "zzzzzz.zzzzzzzzzzzzzzzz".to_string(),
        "not-a-token".to_string(),
    ] {
        let out = kubectl_with_token(&server, &kubectl, &bad, &["get", "--raw", "/api"]);
        assert!(!out.status.success(), "{bad}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(err.contains("Unauthorized"), "{bad}: {err}");
    }

    // A second token that never expires, with a description.
    let forever = token_ok(
        &server,
        &["create", "--ttl", "0", "--description", "for w1"],
    );
    let forever = forever.trim();
    assert!(is_token(forever), "{forever:?}");
    assert_ne!(forever, token);

    let list = token_ok(&server, &["list"]);
    let mut rows = list.lines();
    let header: Vec<&str> = rows.next().unwrap_or_default().split("   ").collect();
    let header: Vec<&str> = header
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "TOKEN",
            "TTL",
            "EXPIRES",
            "USAGES",
            "DESCRIPTION",
            "EXTRA GROUPS"
        ],
        "{list}"
    );
    let row = |t: &str| -> Vec<String> {
        let line = list
            .lines()
            .find(|l| l.split_whitespace().next() == Some(t))
            .unwrap_or_else(|| panic!("token list lacks {t}:\n{list}"));
        line.split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let r = row(&token);
    assert!(r[1] == "59m" || r[1] == "1h", "TTL {:?}:\n{list}", r[1]);
    let expires = chrono::DateTime::parse_from_rfc3339(&r[2]).expect("EXPIRES is RFC 3339");
    let left = expires.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        left > chrono::Duration::minutes(55) && left <= chrono::Duration::hours(1),
        "{list}"
    );
    assert_eq!(r[3], "authentication,signing", "{list}");
    assert_eq!(r[4], "<none>", "{list}");
    assert!(r[5].starts_with("system:bootstrappers:"), "{list}");
    let r = row(forever);
    assert_eq!(
        &r[1..5],
        ["<forever>", "<never>", "authentication,signing", "for w1"]
    );

    // Deleted by id (the other by whole token): the token no longer authenticates.
    let deleted = token_ok(&server, &["delete", id]);
    assert_eq!(deleted.trim(), format!("bootstrap token \"{id}\" deleted"));
    let out = kubectl_with_token(&server, &kubectl, &token, &["get", "--raw", "/api"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("Unauthorized"),
        "{}",
        text(&out.stderr)
    );
    token_ok(&server, &["delete", forever]);
    let list = token_ok(&server, &["list"]);
    assert_eq!(list.lines().count(), 1, "only the header is left:\n{list}");
    // Deleting it again fails, naming the token.
    let out = podrun_token(&server, &["delete", id]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(id) && err.contains("not found"), "{err}");

    // Bad flags fail before any request, naming the flag; a missing kubeconfig is named.
    let out = podrun_token(&server, &["create", "--ttl", "tomorrow"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--ttl"), "{}", text(&out.stderr));
    let out = podrun_token(
        &server,
        &["list", "--kubeconfig", "/nonexistent/admin.conf"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/admin.conf"),
        "{}",
        text(&out.stderr)
    );

    let pid = server.pid();
    server.stop();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the server (pid {pid}) is still there"
    );
}
