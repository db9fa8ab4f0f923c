//! kubeconfig files as kubectl reads them: one cluster, one user, one context written;
//! the current context's cluster and user read back, for podrun's own API clients.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
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

/// The parts of a kubeconfig (clientcmd's v1 Config) that podrun's clients use.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub clusters: Vec<NamedCluster>,
    #[serde(default)]
    pub users: Vec<NamedAuthInfo>,
    #[serde(default)]
    pub contexts: Vec<NamedContext>,
    #[serde(default)]
    pub current_context: String,
}

#[derive(Debug, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: Cluster,
}

#[derive(Debug, Deserialize)]
pub struct NamedAuthInfo {
    pub name: String,
    pub user: AuthInfo,
}

#[derive(Debug, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: Context,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    #[serde(default)]
    pub server: String,
    pub certificate_authority: Option<PathBuf>,
    pub certificate_authority_data: Option<String>,
    pub tls_server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AuthInfo {
    pub client_certificate: Option<PathBuf>,
    pub client_certificate_data: Option<String>,
    pub client_key: Option<PathBuf>,
    pub client_key_data: Option<String>,
    pub token: Option<String>,
    /// clientcmd spells this one in camel case.
    #[serde(rename = "tokenFile")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Context {
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub user: String,
}

/// What a client needs from a kubeconfig: the server and the credentials of the
/// current context, files already read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    pub server: String,
    pub ca_pem: Vec<u8>,
    pub tls_server_name: Option<String>,
    /// The client certificate and key, PEM.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
    pub token: Option<String>,
}

/// The largest kubeconfig (and file it names) read: they hold a few certificates.
const MAX_FILE: u64 = 4 << 20;

fn read_limited(path: &Path) -> Result<Vec<u8>, AuthError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| AuthError::Io(path.to_path_buf(), e))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| AuthError::Io(path.to_path_buf(), e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(AuthError::Kubeconfig {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_FILE} bytes"),
        });
    }
    Ok(bytes)
}

/// Reads the kubeconfig at `path` and resolves its current context; file names in it
/// are relative to its directory, as kubectl takes them.
pub fn read(path: &Path) -> Result<ClientConfig, AuthError> {
    let bad = |message: String| AuthError::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let bytes = read_limited(path)?;
    let config: Config = serde_norway::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == config.current_context)
        .map(|c| &c.context)
        .ok_or_else(|| {
            bad(format!(
                "current-context {:?} is not among the contexts",
                config.current_context
            ))
        })?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .map(|c| &c.cluster)
        .ok_or_else(|| {
            bad(format!(
                "cluster {:?} is not among the clusters",
                context.cluster
            ))
        })?;
    let user = config
        .users
        .iter()
        .find(|u| u.name == context.user)
        .map(|u| &u.user);
    if cluster.server.is_empty() {
        return Err(bad(format!("cluster {:?} has no server", context.cluster)));
    }
    let inline_or_file = |what: &str,
                          data: &Option<String>,
                          file: &Option<PathBuf>|
     -> Result<Option<Vec<u8>>, AuthError> {
        if let Some(d) = data {
            return base64::engine::general_purpose::STANDARD
                .decode(d.trim())
                .map(Some)
                .map_err(|e| bad(format!("{what}-data: {e}")));
        }
        match file {
            Some(f) => read_limited(&dir.join(f)).map(Some),
            None => Ok(None),
        }
    };
    let ca_pem = inline_or_file(
        "certificate-authority",
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    )?
    .ok_or_else(|| {
        bad(format!(
            "cluster {:?} has no certificate-authority(-data)",
            context.cluster
        ))
    })?;
    let mut client = ClientConfig {
        server: cluster.server.trim_end_matches('/').to_string(),
        ca_pem,
        tls_server_name: cluster.tls_server_name.clone(),
        client_cert: None,
        token: None,
    };
    if let Some(u) = user {
        let cert = inline_or_file(
            "client-certificate",
            &u.client_certificate_data,
            &u.client_certificate,
        )?;
        let key = inline_or_file("client-key", &u.client_key_data, &u.client_key)?;
        client.client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(bad(format!(
                    "user {:?} has a client certificate without its key, or a key without its certificate",
                    context.user
                )))
            }
        };
        client.token = match (&u.token, &u.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(
                String::from_utf8_lossy(&read_limited(&dir.join(f))?)
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
    }
    Ok(client)
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

    #[test]
    fn a_kubeconfig_reads_back_with_inline_data_or_relative_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.conf");
        write(
            &p,
            "https://10.0.0.1:6443/",
            "CA PEM",
            "admin",
            Credential::ClientCert {
                cert_pem: "CERT",
                key_pem: "KEY",
            },
        )
        .unwrap();
        let c = read(&p).unwrap();
        assert_eq!(c.server, "https://10.0.0.1:6443");
        assert_eq!(c.ca_pem, b"CA PEM");
        assert_eq!(c.client_cert, Some((b"CERT".to_vec(), b"KEY".to_vec())));
        assert_eq!(c.token, None);

        std::fs::create_dir(dir.path().join("pki")).unwrap();
        std::fs::write(dir.path().join("pki/ca.crt"), "FILE CA").unwrap();
        std::fs::write(dir.path().join("token"), "abcdef.0123456789abcdef\n").unwrap();
        let q = dir.path().join("files.conf");
        std::fs::write(
            &q,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://h:1\n    certificate-authority: pki/ca.crt\nusers:\n- name: u\n  user:\n    tokenFile: token\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
        )
        .unwrap();
        let c = read(&q).unwrap();
        assert_eq!(c.ca_pem, b"FILE CA");
        assert_eq!(c.token.as_deref(), Some("abcdef.0123456789abcdef"));

        std::fs::write(&q, "current-context: nowhere\n").unwrap();
        let e = read(&q).unwrap_err().to_string();
        assert!(e.starts_with(&q.display().to_string()), "{e}");
        assert!(e.contains("\"nowhere\""), "{e}");
    }
}
