//! The cluster's certificates, as kubeadm lays them out: a CA, the API server's serving
//! certificate (with every name clients use for it), and client certificates whose
//! subject says who the holder is (CN the user, O the groups): the admin's, and the
//! API server's own for talking to kubelets.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::AuthError;

/// The names the serving certificate must carry besides the fixed ones.
#[derive(Clone, Debug, Default)]
pub struct ServingNames {
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
}

/// The names every API server certificate has, as kubeadm gives them.
const FIXED_DNS: &[&str] = &[
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// The subject of the API server's client certificate for kubelets, as kubeadm issues
/// it (apiserver-kubelet-client.crt): kubelets let it do anything.
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
pub const KUBELET_CLIENT_GROUP: &str = "system:masters";

pub struct Pki {
    dir: PathBuf,
    pub ca_pem: String,
    ca_key: KeyPair,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
}

fn write_secret(path: &Path, text: &str) -> Result<(), AuthError> {
    crate::api::auth::kubeconfig::write_atomic(path, text.as_bytes(), 0o600)
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn rc(what: &str) -> impl FnOnce(rcgen::Error) -> AuthError + '_ {
    move |e| AuthError::Certificate(format!("{what}: {e}"))
}

/// The SANs and expiry of an existing certificate.
fn inspect(pem: &str) -> Option<(Vec<String>, OffsetDateTime)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b).ok()?),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*b).ok()?),
                        _ => continue,
                    };
                    names.push(ip.to_string());
                }
                _ => {}
            }
        }
    }
    let expiry = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()?;
    Some((names, expiry))
}

impl Pki {
    /// Loads the PKI under `dir`, creating what is missing. The serving certificate is
    /// issued again (by the same CA) when it lacks a wanted name or expires within 30
    /// days; so is the admin certificate when it expires within 30 days.
    pub fn load_or_create(dir: &Path, names: &ServingNames) -> Result<Pki, AuthError> {
        std::fs::create_dir_all(dir).map_err(|e| AuthError::Io(dir.to_path_buf(), e))?;
        let (ca_crt, ca_key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (ca_pem, ca_key) = match (read(&ca_crt), read(&ca_key_path)) {
            (Some(c), Some(k)) => (c, KeyPair::from_pem(&k).map_err(rc("ca.key"))?),
            _ => {
                let key = KeyPair::generate().map_err(rc("CA key"))?;
                let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA"))?;
                p.distinguished_name.push(DnType::CommonName, "podrun-ca");
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                let now = OffsetDateTime::now_utc();
                p.not_before = now - Duration::hours(1);
                p.not_after = now + Duration::days(3650);
                let cert = p.self_signed(&key).map_err(rc("CA"))?;
                write_secret(&ca_key_path, &key.serialize_pem())?;
                write_secret(&ca_crt, &cert.pem())?;
                (cert.pem(), key)
            }
        };
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_key,
            serving_cert_pem: String::new(),
            serving_key_pem: String::new(),
            admin_cert_pem: String::new(),
            admin_key_pem: String::new(),
            kubelet_client_cert_pem: String::new(),
            kubelet_client_key_pem: String::new(),
        };
        let mut wanted: Vec<String> = FIXED_DNS.iter().map(|s| s.to_string()).collect();
        wanted.extend(names.dns.iter().cloned());
        wanted.push("127.0.0.1".into());
        wanted.extend(names.ips.iter().map(|i| i.to_string()));
        wanted.dedup();
        let soon = OffsetDateTime::now_utc() + Duration::days(30);
        let (crt, key) = (dir.join("apiserver.crt"), dir.join("apiserver.key"));
        match (read(&crt), read(&key)) {
            (Some(c), Some(k))
                if inspect(&c).is_some_and(|(have, exp)| {
                    exp > soon && wanted.iter().all(|w| have.contains(w))
                }) =>
            {
                pki.serving_cert_pem = c;
                pki.serving_key_pem = k;
            }
            _ => {
                let (c, k) = pki.issue(
                    "kube-apiserver",
                    &[],
                    &wanted,
                    ExtendedKeyUsagePurpose::ServerAuth,
                    365,
                )?;
                write_secret(&key, &k)?;
                write_secret(&crt, &c)?;
                pki.serving_cert_pem = c;
                pki.serving_key_pem = k;
            }
        }
        (pki.admin_cert_pem, pki.admin_key_pem) =
            pki.ensure_client_cert("admin", "kubernetes-admin", "system:masters", soon)?;
        (pki.kubelet_client_cert_pem, pki.kubelet_client_key_pem) = pki.ensure_client_cert(
            "apiserver-kubelet-client",
            KUBELET_CLIENT_CN,
            KUBELET_CLIENT_GROUP,
            soon,
        )?;
        Ok(pki)
    }

    /// The client certificate `<file>.crt` and its key, issued again when missing or
    /// expiring before `soon`.
    fn ensure_client_cert(
        &self,
        file: &str,
        common_name: &str,
        group: &str,
        soon: OffsetDateTime,
    ) -> Result<(String, String), AuthError> {
        let (crt, key) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        match (read(&crt), read(&key)) {
            (Some(c), Some(k)) if inspect(&c).is_some_and(|(_, exp)| exp > soon) => Ok((c, k)),
            _ => {
                let (c, k) = self.issue_client_cert(common_name, &[group], 365)?;
                write_secret(&key, &k)?;
                write_secret(&crt, &c)?;
                Ok((c, k))
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client certificate for `common_name` in `groups`, signed by the CA: the
    /// credential of a node or a user. Returns the certificate and key, PEM.
    pub fn issue_client_cert(
        &self,
        common_name: &str,
        groups: &[&str],
        days: i64,
    ) -> Result<(String, String), AuthError> {
        self.issue(
            common_name,
            groups,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            days,
        )
    }

    /// Signs a PKCS#10 request (PEM) as a client certificate valid for `seconds`,
    /// keeping its subject and public key. What the subject may be is the caller's check.
    pub fn sign_client_request(
        &self,
        request_pem: &str,
        seconds: i64,
    ) -> Result<String, AuthError> {
        let mut req = rcgen::CertificateSigningRequestParams::from_pem(request_pem)
            .map_err(rc("the certificate signing request"))?;
        let p = &mut req.params;
        p.is_ca = rcgen::IsCa::NoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        // As kube-controller-manager's signer: a little back-dated for clock skew.
        p.not_before = now - Duration::minutes(5);
        p.not_after = now + Duration::seconds(seconds);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &self.ca_key).map_err(rc("ca.crt"))?;
        let cert = req.signed_by(&issuer).map_err(rc("signing the request"))?;
        Ok(cert.pem())
    }

    fn issue(
        &self,
        cn: &str,
        orgs: &[&str],
        sans: &[String],
        usage: ExtendedKeyUsagePurpose,
        days: i64,
    ) -> Result<(String, String), AuthError> {
        let key = KeyPair::generate().map_err(rc(cn))?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc(cn))?;
        p.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        for s in sans {
            p.subject_alt_names.push(match s.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(s.as_str().try_into().map_err(rc(cn))?),
            });
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(days);
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &self.ca_key).map_err(rc("ca.crt"))?;
        let cert = p.signed_by(&key, &issuer).map_err(rc(cn))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_reloaded_after_and_reissued_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = ServingNames {
            ips: vec!["10.0.0.5".parse().unwrap()],
            dns: vec!["m-k8s".into()],
        };
        let a = Pki::load_or_create(dir.path(), &names).unwrap();
        let (sans, _) = inspect(&a.serving_cert_pem).unwrap();
        for n in ["10.0.0.5", "m-k8s", "127.0.0.1", "kubernetes.default.svc"] {
            assert!(sans.iter().any(|s| s == n), "{n} in {sans:?}");
        }
        let b = Pki::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(
            (a.ca_pem.as_str(), a.serving_cert_pem.as_str()),
            (b.ca_pem.as_str(), b.serving_cert_pem.as_str())
        );
        assert_eq!(a.kubelet_client_cert_pem, b.kubelet_client_cert_pem);
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(a.kubelet_client_cert_pem.as_bytes()).unwrap();
        let user = crate::api::auth::user_from_client_cert(
            &rustls_pki_types::CertificateDer::from(pem.contents),
        )
        .unwrap();
        assert_eq!(user.name, KUBELET_CLIENT_CN);
        assert!(user.in_group(KUBELET_CLIENT_GROUP));
        assert!(dir.path().join("apiserver-kubelet-client.key").exists());
        let more = ServingNames {
            ips: vec!["10.0.0.6".parse().unwrap()],
            dns: vec![],
        };
        let c = Pki::load_or_create(dir.path(), &more).unwrap();
        assert_eq!(a.ca_pem, c.ca_pem);
        assert_ne!(a.serving_cert_pem, c.serving_cert_pem);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("ca.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
