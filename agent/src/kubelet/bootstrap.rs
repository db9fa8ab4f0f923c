//! Joining a cluster as kubelet's TLS bootstrap does it: with a bootstrap token, the node
//! asks for its own client certificate through a CertificateSigningRequest (signer
//! `kubernetes.io/kube-apiserver-client-kubelet`, subject `system:node:<name>` in
//! `system:nodes`), waits for the control plane to approve and sign it, and keeps the
//! result in `<state>/kubelet.conf`. From then on the node is itself, across restarts,
//! and the token is no longer needed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;
use tracing::info;

use super::ApiAccess;

pub const KUBELET_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// How long to wait for the certificate before giving up (kubelet waits as long).
const WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("--server {0:?}: not an https URL")]
    Server(String),
    #[error("--certificate-authority {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("the API server: {0}")]
    Api(#[from] kube::Error),
    #[error("certificate signing request {name}: {message}")]
    Csr { name: String, message: String },
    #[error("node key: {0}")]
    Key(#[from] rcgen::Error),
}

/// The node's own kubeconfig under the agent's state directory.
pub fn kubeconfig_path(state_dir: &Path) -> PathBuf {
    state_dir.join("kubelet.conf")
}

/// A client with the node's own identity: the stored credential when there is one,
/// the given kubeconfig, or a new credential obtained with the bootstrap token.
pub async fn client(
    access: &ApiAccess,
    node_name: &str,
    state_dir: &Path,
) -> Result<(Client, Config), BootstrapError> {
    let own = kubeconfig_path(state_dir);
    let path = match access {
        ApiAccess::Kubeconfig(path) => path.clone(),
        ApiAccess::Bootstrap { .. } if own.exists() => own,
        ApiAccess::Bootstrap {
            server,
            token,
            ca_file,
        } => {
            let ca_pem = std::fs::read_to_string(ca_file).map_err(|e| BootstrapError::Ca {
                path: ca_file.clone(),
                message: e.to_string(),
            })?;
            if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(BootstrapError::Ca {
                    path: ca_file.clone(),
                    message: "no PEM certificate in it".into(),
                });
            }
            if !server.starts_with("https://") {
                return Err(BootstrapError::Server(server.clone()));
            }
            join(server, token, &ca_pem, node_name, &own).await?;
            own
        }
    };
    let config = load(&path).await?;
    let client = Client::try_from(config.clone())?;
    Ok((client, config))
}

async fn load(path: &Path) -> Result<Config, BootstrapError> {
    let bad = |message: String| BootstrapError::Kubeconfig {
        path: path.to_owned(),
        message,
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))
}

/// Requests and stores the node's credential.
async fn join(
    server: &str,
    token: &str,
    ca_pem: &str,
    node_name: &str,
    out: &Path,
) -> Result<(), BootstrapError> {
    let doc = kubeconfig_doc(
        server,
        ca_pem,
        "kubelet-bootstrap",
        json!({ "token": token }),
    );
    let kc = Kubeconfig::from_yaml(&doc).map_err(|e| BootstrapError::Kubeconfig {
        path: "(bootstrap)".into(),
        message: e.to_string(),
    })?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| BootstrapError::Kubeconfig {
            path: "(bootstrap)".into(),
            message: e.to_string(),
        })?;
    let client = Client::try_from(config)?;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let request = csr_pem(node_name, &key)?;
    let csrs: Api<CertificateSigningRequest> = Api::all(client);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("node-csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: KUBELET_SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let created = csrs.create(&PostParams::default(), &csr).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    info!(csr = %name, node = node_name, "asked for the node's client certificate");
    let cert = tokio::time::timeout(WAIT, wait_for_certificate(&csrs, &name))
        .await
        .map_err(|_| BootstrapError::Csr {
            name: name.clone(),
            message: format!("not signed within {}s", WAIT.as_secs()),
        })??;
    let user = format!("system:node:{node_name}");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let doc = kubeconfig_doc(
        server,
        ca_pem,
        &user,
        json!({
            "client-certificate-data": b64(&cert),
            "client-key-data": b64(key.serialize_pem().as_bytes()),
        }),
    );
    write_private(out, doc.as_bytes())?;
    info!(csr = %name, path = %out.display(), "the node's credential is stored");
    Ok(())
}

/// A PEM certificate request for `system:node:<name>` in `system:nodes`.
pub fn csr_pem(node_name: &str, key: &rcgen::KeyPair) -> Result<String, rcgen::Error> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    params.serialize_request(key)?.pem()
}

async fn wait_for_certificate(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
) -> Result<Vec<u8>, BootstrapError> {
    let failed = |message: String| BootstrapError::Csr {
        name: name.to_owned(),
        message,
    };
    loop {
        let current = csrs.get(name).await?;
        if let Some(status) = &current.status {
            for c in status.conditions.iter().flatten() {
                if (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True" {
                    return Err(failed(format!(
                        "{}: {}",
                        c.type_,
                        c.message
                            .as_deref()
                            .unwrap_or(c.reason.as_deref().unwrap_or(""))
                    )));
                }
            }
            if let Some(cert) = &status.certificate {
                if !cert.0.is_empty() {
                    return Ok(cert.0.clone());
                }
            }
        }
        let rv = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(60);
        let mut stream = csrs.watch(&wp, &rv).await?.boxed();
        // Any change is read again from the top; a closed watch is simply reopened.
        while let Some(ev) = stream.next().await {
            if matches!(ev?, WatchEvent::Modified(_) | WatchEvent::Deleted(_)) {
                break;
            }
        }
    }
}

fn kubeconfig_doc(server: &str, ca_pem: &str, user: &str, cred: serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let context = format!("{user}@podrun");
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "podrun", "cluster": { "certificate-authority-data": b64, "server": server } }],
        "users": [{ "name": user, "user": cred }],
        "contexts": [{ "name": context, "context": { "cluster": "podrun", "user": user } }],
        "current-context": context,
    });
    // JSON is YAML.
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Writes a file readable by root only, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BootstrapError> {
    let io = |source| BootstrapError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_node() {
        use x509_parser::prelude::FromDer;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = csr_pem("w1-k8s", &key).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateSigningRequestDer| d.as_ref().to_vec())
            .unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        let subject = csr.certification_request_info.subject.to_string();
        assert!(subject.contains("CN=system:node:w1-k8s"), "{subject}");
        assert!(subject.contains("O=system:nodes"), "{subject}");
    }

    #[test]
    fn the_kubeconfig_parses_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = kubeconfig_path(dir.path());
        let doc = kubeconfig_doc(
            "https://10.0.0.1:6443",
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            "system:node:n1",
            json!({ "token": "abcdef.0123456789abcdef" }),
        );
        write_private(&path, doc.as_bytes()).unwrap();
        let kc = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("system:node:n1@podrun"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
