//! certificates.k8s.io/v1 CertificateSigningRequests: how a node trades its bootstrap
//! token for its own client certificate (kubelet's TLS bootstrap). The request is a PEM
//! PKCS#10 request; the server records who asked (spec.username, groups) on create, the
//! approval subresource adds Approved or Denied, and the signer writes
//! status.certificate. The spec never changes after create.

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use serde_json::Value;

use super::generic::{self, Def};
use super::meta::{invalid, not_supported, required};
use super::{Cause, ResourceInfo};

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "certificates.k8s.io",
        version: "v1",
        kind: "CertificateSigningRequest",
        plural: "certificatesigningrequests",
        singular: "certificatesigningrequest",
        namespaced: false,
        short_names: &["csr"],
        categories: &[],
        subresources: &["status", "approval"],
    },
    decode: generic::decode::<CertificateSigningRequest>,
    default: generic::no_defaults,
    validate,
    validate_update,
    status: true,
    generation: false,
    initial_status: generic::empty_status,
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: generic::field_value,
    fields: &["spec.signerName"],
};

/// The key usages a request may ask for (certificates.k8s.io/v1 KeyUsage).
const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// The PEM request of spec.request, decoded from its base64 form.
pub fn request_pem(obj: &Value) -> Option<String> {
    let raw = obj["spec"]["request"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    String::from_utf8(bytes).ok()
}

fn validate(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &obj["spec"];
    match request_pem(obj) {
        None if spec["request"].is_null() => causes.push(required("spec.request")),
        None => causes.push(invalid(
            "spec.request",
            &Value::String("<bytes>".into()),
            "must be base64-encoded PEM",
        )),
        Some(pem) => {
            if rcgen::CertificateSigningRequestParams::from_pem(&pem).is_err() {
                causes.push(invalid(
                    "spec.request",
                    &Value::String("<bytes>".into()),
                    "no valid CERTIFICATE REQUEST PEM block with a valid signature",
                ));
            }
        }
    }
    match spec["signerName"].as_str() {
        None | Some("") => causes.push(required("spec.signerName")),
        Some(s) => {
            // A signer name is a domain, a slash and a path: "example.com/name".
            let ok = s.split_once('/').is_some_and(|(domain, path)| {
                super::meta::is_dns1123_subdomain(domain) && !path.is_empty()
            });
            if !ok {
                causes.push(invalid(
                    "spec.signerName",
                    &spec["signerName"],
                    "must be a fully qualified domain and path of the form 'example.com/signer-name'",
                ));
            }
        }
    }
    if let Some(secs) = spec["expirationSeconds"].as_i64() {
        if secs < 600 {
            causes.push(invalid(
                "spec.expirationSeconds",
                &spec["expirationSeconds"],
                "may not specify a duration less than 600 seconds (10 minutes)",
            ));
        }
    }
    for (i, u) in spec["usages"].as_array().into_iter().flatten().enumerate() {
        let s = u.as_str().unwrap_or_default();
        if !USAGES.contains(&s) {
            causes.push(not_supported(&format!("spec.usages[{i}]"), s, USAGES));
        }
    }
    for (i, c) in obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let t = c["type"].as_str().unwrap_or_default();
        if !["Approved", "Denied", "Failed"].contains(&t) {
            causes.push(not_supported(
                &format!("status.conditions[{i}].type"),
                t,
                &["Approved", "Denied", "Failed"],
            ));
        }
    }
    let types: Vec<&str> = obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str())
        .collect();
    if types.contains(&"Approved") && types.contains(&"Denied") {
        causes.push(invalid(
            "status.conditions",
            &Value::String("Approved,Denied".into()),
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
    causes
}

fn validate_update(obj: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if obj["spec"] != old["spec"] {
        causes.push(Cause {
            field: "spec".into(),
            reason: "FieldValueForbidden",
            message: "Forbidden: updates to certificatesigningrequest spec are forbidden".into(),
        });
    }
    let old_cert = old["status"]["certificate"].as_str().unwrap_or_default();
    let cert = obj["status"]["certificate"].as_str().unwrap_or_default();
    if !old_cert.is_empty() && cert != old_cert {
        causes.push(Cause {
            field: "status.certificate".into(),
            reason: "FieldValueForbidden",
            message: "Forbidden: updates may not modify existing certificate content".into(),
        });
    }
    causes
}

/// A CertificateSigningRequest's condition of `type`, if it has one.
pub fn condition<'a>(obj: &'a Value, t: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Strategy;
    use serde_json::json;

    fn csr() -> Value {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:w1");
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": "node-csr-w1"},
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(pem),
                "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                "usages": ["digital signature", "client auth"],
            }
        })
    }

    #[test]
    fn requests_must_be_pem_with_a_signer_and_known_usages() {
        let s = generic::Static(&DEF);
        let good = csr();
        assert!(s.validate(&good).is_empty(), "{:?}", s.validate(&good));
        let mut bad = good.clone();
        bad["spec"]["request"] = json!(base64::engine::general_purpose::STANDARD.encode("junk"));
        bad["spec"]["signerName"] = json!("nodomain");
        bad["spec"]["usages"] = json!(["client auth", "flying"]);
        let fields: Vec<String> = s.validate(&bad).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            ["spec.request", "spec.signerName", "spec.usages[1]"]
        );
    }

    #[test]
    fn the_spec_and_an_issued_certificate_are_immutable() {
        let s = generic::Static(&DEF);
        let old = csr();
        let mut new = old.clone();
        new["spec"]["usages"] = json!(["server auth"]);
        assert_eq!(s.validate_update(&new, &old)[0].field, "spec");
        let mut issued = old.clone();
        issued["status"]["certificate"] = json!("Y2VydA==");
        let mut changed = issued.clone();
        changed["status"]["certificate"] = json!("b3RoZXI=");
        assert_eq!(
            s.validate_update(&changed, &issued)[0].field,
            "status.certificate"
        );
        assert!(s.validate_update(&issued, &old).is_empty());
    }
}
