//! The CertificateSigningRequest approver and signer, as kube-controller-manager's
//! csrapproving and csrsigning controllers do it for nodes: a node's client certificate
//! request (signer `kubernetes.io/kube-apiserver-client-kubelet`, subject
//! `CN=system:node:<name>, O=system:nodes`) from a bootstrap token, from that node
//! itself or from an admin is approved on its own; approved requests of the
//! `kube-apiserver-client(-kubelet)` signers are signed with the cluster CA.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use rcgen::{DnType, DnValue};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::api::auth::pki::Pki;
use crate::api::handlers::ListOptions;
use crate::api::storage::WriteOptions;
use crate::api::{object, Api};
use crate::registry::certificatesigningrequest::{condition, request_pem};
use crate::registry::Strategy;

pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// kube-controller-manager's --cluster-signing-duration default: one year.
const MAX_SECONDS: i64 = 365 * 24 * 3600;
const RETRY: Duration = Duration::from_secs(5);

/// Runs until the server shuts down.
pub async fn run(api: Arc<Api>, pki: Arc<Pki>) {
    let mut shutdown = api.shutdown.clone();
    loop {
        // The revision before looking: a change made while reconciling, ours included,
        // wakes the next round.
        let rev = api.store.revision().await.unwrap_or(0);
        let retry = match reconcile_all(&api, &pki).await {
            Ok(()) => false,
            Err(e) => {
                warn!(error = %e, "certificate signing request controller");
                true
            }
        };
        let prefix = "/registry/certificates.k8s.io/certificatesigningrequests/";
        let mut events = match api.store.watch(prefix, rev).await {
            Ok(w) => w,
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        tokio::select! {
            _ = events.recv() => {}
            _ = tokio::time::sleep(RETRY), if retry => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn dn_values(dn: &rcgen::DistinguishedName, ty: DnType) -> Vec<String> {
    dn.iter()
        .filter(|(t, _)| **t == ty)
        .filter_map(|(_, v)| match v {
            DnValue::Utf8String(s) => Some(s.clone()),
            DnValue::PrintableString(s) => Some(s.as_str().to_string()),
            DnValue::Ia5String(s) => Some(s.as_str().to_string()),
            _ => None,
        })
        .collect()
}

/// The node a request asks a client certificate for, when it is a well-formed node
/// client request: CN system:node:<name>, O exactly system:nodes, no alternative names,
/// usages within digital signature, key encipherment and client auth.
pub fn node_client_request(csr: &Value) -> Result<String, String> {
    let pem = request_pem(csr).ok_or("spec.request is not base64 PEM")?;
    let req = rcgen::CertificateSigningRequestParams::from_pem(&pem)
        .map_err(|e| format!("spec.request: {e}"))?;
    let dn = &req.params.distinguished_name;
    let cn = dn_values(dn, DnType::CommonName);
    let node = match cn.as_slice() {
        [one] => one
            .strip_prefix("system:node:")
            .filter(|n| !n.is_empty())
            .ok_or("the common name is not system:node:<name>")?
            .to_string(),
        _ => return Err("the request needs one common name".into()),
    };
    if dn_values(dn, DnType::OrganizationName) != ["system:nodes"] {
        return Err("the organization must be exactly system:nodes".into());
    }
    if !req.params.subject_alt_names.is_empty() {
        return Err("a node client certificate has no alternative names".into());
    }
    let usages: Vec<&str> = csr["spec"]["usages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let allowed = ["digital signature", "key encipherment", "client auth"];
    if !usages.contains(&"client auth") || usages.iter().any(|u| !allowed.contains(u)) {
        return Err(format!(
            "usages {usages:?} are not client auth with digital signature or key encipherment"
        ));
    }
    Ok(node)
}

/// Whether the requester may have a node client certificate for `node` approved on its
/// own: a bootstrap token, the node itself renewing, or an admin.
fn may_request_for(csr: &Value, node: &str) -> bool {
    let user = csr["spec"]["username"].as_str().unwrap_or_default();
    let in_group = |g: &str| {
        csr["spec"]["groups"]
            .as_array()
            .is_some_and(|gs| gs.iter().any(|x| x == g))
    };
    in_group("system:bootstrappers")
        || in_group("system:masters")
        || user == format!("system:node:{node}")
}

fn seconds(csr: &Value) -> i64 {
    csr["spec"]["expirationSeconds"]
        .as_i64()
        .map_or(MAX_SECONDS, |s| s.clamp(600, MAX_SECONDS))
}

async fn reconcile_all(api: &Api, pki: &Pki) -> Result<(), String> {
    let Some(s) = api.strategy("certificates.k8s.io", "certificatesigningrequests") else {
        return Ok(());
    };
    let (all, _, _, _) = api
        .list_objects(s, None, &ListOptions::default())
        .await
        .map_err(|e| e.message)?;
    let opts = WriteOptions {
        manager: "kube-controller-manager".into(),
        ..Default::default()
    };
    for csr in all {
        let name = object::name(&csr).unwrap_or_default().to_string();
        if csr["status"]["certificate"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
            || condition(&csr, "Denied").is_some()
            || condition(&csr, "Failed").is_some()
        {
            continue;
        }
        let signer = csr["spec"]["signerName"].as_str().unwrap_or_default();
        if condition(&csr, "Approved").is_none() {
            if signer == KUBELET_CLIENT {
                if let Ok(node) = node_client_request(&csr) {
                    if may_request_for(&csr, &node) {
                        approve(api, s, &name, &opts).await?;
                        info!(csr = %name, node = %node, "approved a node client certificate");
                    }
                }
            }
            continue;
        }
        match sign(pki, &csr, signer) {
            Ok(Some(pem)) => {
                let cert = base64::engine::general_purpose::STANDARD.encode(pem);
                api.guaranteed_update(s, None, &name, Some("status"), &opts, |old| {
                    let mut new = old.clone();
                    new["status"]["certificate"] = json!(cert);
                    Ok(new)
                })
                .await
                .map_err(|e| e.message)?;
                info!(csr = %name, signer = %signer, "signed");
            }
            Ok(None) => {}
            Err(why) => {
                fail(api, s, &name, &opts, &why).await?;
                warn!(csr = %name, "not signed: {why}");
            }
        }
    }
    Ok(())
}

/// The certificate for an approved request, None for signers this server does not
/// run (another signer may), or why it will not be signed.
fn sign(pki: &Pki, csr: &Value, signer: &str) -> Result<Option<String>, String> {
    match signer {
        KUBELET_CLIENT => {
            node_client_request(csr)?;
        }
        CLIENT => {
            let usages = csr["spec"]["usages"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !usages.iter().any(|u| u == "client auth") {
                return Err("the kube-apiserver-client signer issues client auth only".into());
            }
        }
        _ => return Ok(None),
    }
    let pem = request_pem(csr).ok_or("spec.request is not base64 PEM")?;
    pki.sign_client_request(&pem, seconds(csr))
        .map(Some)
        .map_err(|e| e.to_string())
}

async fn approve(
    api: &Api,
    s: &dyn Strategy,
    name: &str,
    opts: &WriteOptions,
) -> Result<(), String> {
    add_condition(
        api,
        s,
        name,
        opts,
        "approval",
        json!({
            "type": "Approved", "status": "True", "reason": "AutoApproved",
            "message": "Auto approving kubelet client certificate after SubjectAccessReview.",
        }),
    )
    .await
}

async fn fail(
    api: &Api,
    s: &dyn Strategy,
    name: &str,
    opts: &WriteOptions,
    why: &str,
) -> Result<(), String> {
    add_condition(
        api,
        s,
        name,
        opts,
        "status",
        json!({ "type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": why }),
    )
    .await
}

async fn add_condition(
    api: &Api,
    s: &dyn Strategy,
    name: &str,
    opts: &WriteOptions,
    subresource: &str,
    mut cond: Value,
) -> Result<(), String> {
    let now = object::timestamp(Utc::now());
    cond["lastUpdateTime"] = json!(now);
    cond["lastTransitionTime"] = json!(now);
    let t = cond["type"].clone();
    let r = api
        .guaranteed_update(s, None, name, Some(subresource), opts, |old| {
            let mut new = old.clone();
            let mut conds = new["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !conds.iter().any(|c| c["type"] == t) {
                conds.push(cond.clone());
            }
            new["status"]["conditions"] = json!(conds);
            Ok(new)
        })
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "NotFound" => Ok(()),
        Err(e) => Err(e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str, orgs: &[&str], usages: &[&str], groups: &[&str], user: &str) -> Value {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        json!({
            "metadata": {"name": "x"},
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(pem),
                "signerName": KUBELET_CLIENT,
                "usages": usages,
                "username": user,
                "groups": groups,
            }
        })
    }

    #[test]
    fn node_client_requests_are_recognised_and_approved_only_for_those_who_may() {
        let usages = ["digital signature", "client auth"];
        let boot = ["system:bootstrappers", "system:authenticated"];
        let ok = request(
            "system:node:w1",
            &["system:nodes"],
            &usages,
            &boot,
            "system:bootstrap:abcdef",
        );
        assert_eq!(node_client_request(&ok).unwrap(), "w1");
        assert!(may_request_for(&ok, "w1"));

        // Renewal by the node itself, and not by another node.
        let own = request(
            "system:node:w1",
            &["system:nodes"],
            &usages,
            &["system:nodes"],
            "system:node:w1",
        );
        assert!(may_request_for(&own, "w1"));
        let other = request(
            "system:node:w1",
            &["system:nodes"],
            &usages,
            &["system:nodes"],
            "system:node:w2",
        );
        assert!(!may_request_for(&other, "w1"));

        for bad in [
            request("w1", &["system:nodes"], &usages, &boot, "u"),
            request("system:node:w1", &["system:masters"], &usages, &boot, "u"),
            request(
                "system:node:w1",
                &["system:nodes", "system:masters"],
                &usages,
                &boot,
                "u",
            ),
            request(
                "system:node:w1",
                &["system:nodes"],
                &["server auth"],
                &boot,
                "u",
            ),
        ] {
            assert!(node_client_request(&bad).is_err());
        }
    }

    #[test]
    fn approved_requests_are_signed_by_the_cluster_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &Default::default()).unwrap();
        let csr = request(
            "system:node:w1",
            &["system:nodes"],
            &["digital signature", "client auth"],
            &["system:bootstrappers"],
            "system:bootstrap:abcdef",
        );
        let pem = sign(&pki, &csr, KUBELET_CLIENT).unwrap().unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = p.parse_x509().unwrap();
        assert_eq!(
            cert.subject().to_string(),
            "CN=system:node:w1, O=system:nodes"
        );
        let der = rustls::pki_types::CertificateDer::from(p.contents.clone());
        let user = crate::api::auth::user_from_client_cert(&der).unwrap();
        assert_eq!(user.node(), Some("w1"));
        // Another signer's requests are left for that signer.
        assert!(sign(&pki, &csr, "example.com/other").unwrap().is_none());
    }
}
