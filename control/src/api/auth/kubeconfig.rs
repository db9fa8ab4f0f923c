//! kubeconfig files as kubectl reads them: one cluster, one user, one context.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use serde_json::json;

use super::pki::Pki;
use super::AuthError;

/// Writes `bytes` to `path` with `mode`, through a temporary file and a rename, so a
/// reader never sees half a file and the mode is right before the content is there.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AuthError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| AuthError::Io(dir.to_path_buf(), e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let io = |e| AuthError::Io(path.to_path_buf(), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The credential of a kubeconfig's user.
pub enum Credential<'a> {
    ClientCert { cert_pem: &'a str, key_pem: &'a str },
    Token(&'a str),
}

/// Writes a kubeconfig (mode 0600) for `user` of cluster "podrun" at `server`.
pub fn write(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    cred: Credential,
) -> Result<(), AuthError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user_entry = match cred {
        Credential::ClientCert { cert_pem, key_pem } => json!({
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }),
        Credential::Token(t) => json!({ "token": t }),
    };
    let context = format!("{user}@podrun");
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "podrun", "cluster": { "certificate-authority-data": b64(ca_pem), "server": server } }],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{ "name": context, "context": { "cluster": "podrun", "user": user } }],
        "current-context": context,
        "preferences": {},
    });
    let text = serde_norway::to_string(&doc)
        .map_err(|e| AuthError::Certificate(format!("kubeconfig: {e}")))?;
    write_atomic(path, text.as_bytes(), 0o600)
}

/// The admin kubeconfig: kubernetes-admin in system:masters.
pub fn write_admin(path: &Path, server: &str, pki: &Pki) -> Result<(), AuthError> {
    write(
        path,
        server,
        &pki.ca_pem,
        "kubernetes-admin",
        Credential::ClientCert {
            cert_pem: &pki.admin_cert_pem,
            key_pem: &pki.admin_key_pem,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_names_the_server_and_carries_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.conf");
        write(
            &p,
            "https://127.0.0.1:6443",
            "CA",
            "me",
            Credential::Token("abc.def"),
        )
        .unwrap();
        let v: serde_json::Value =
            serde_norway::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        assert_eq!(v["users"][0]["user"]["token"], "abc.def");
        assert_eq!(v["current-context"], "me@podrun");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&p).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }
}
