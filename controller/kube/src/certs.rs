//! Mutual TLS between the managed Envoys and the controller (xDS and wasm serving), with
//! certificates the controller issues itself (rcgen):
//!
//! - one CA, kept in a Secret in the controller's namespace (`ca.crt`, `ca.key`); every replica
//!   loads it (the first one to start creates it; a lost create race re-reads the winner's);
//! - a server certificate per replica for the xDS/wasm endpoints (DNS names of the controller
//!   Service), issued in memory at start and re-issued before expiry by the runtime;
//! - a client certificate per Gateway (CN `gateway:<ns>/<name>`, the Envoy node id), stored in a
//!   `kubernetes.io/tls` Secret next to the fleet and renewed once a third of its lifetime is left.
//!   The Deployment's pod template carries the certificate's hash, so a renewal rolls the fleet.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::Client;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// Lifetime of the CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Lifetime of server and client certificates.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Annotation on a client-certificate Secret: when the certificate expires (unix seconds).
pub const NOT_AFTER_ANNOTATION: &str = "portcullis.dev/cert-not-after";

const CA_CN: &str = "portcullis xDS CA";

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

impl IssuedCert {
    /// Hex SHA-256 of the certificate PEM (rolls the fleet when it changes).
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.cert_pem.as_bytes()))
    }
}

/// Whether a certificate valid until `not_after` should be renewed at `now`: once less than a
/// third of `validity` is left.
pub fn needs_renewal(not_after: OffsetDateTime, now: OffsetDateTime, validity: Duration) -> bool {
    let left = not_after - now;
    left < time::Duration::try_from(validity / 3).unwrap_or(time::Duration::ZERO)
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, "portcullis");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::try_from(CA_VALIDITY).unwrap_or(time::Duration::days(365));
    p
}

/// The controller's CA.
pub struct CertAuthority {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// A new self-signed CA.
    pub fn generate(now: OffsetDateTime) -> Result<Self> {
        let key = KeyPair::generate()?;
        let cert = ca_params(now).self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CA from its stored PEMs.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        if !cert_pem.contains("BEGIN CERTIFICATE") {
            return Err(Error::Certs("CA certificate is not PEM".into()));
        }
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key: KeyPair::from_pem(key_pem)?,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        // Same subject and key as the stored CA certificate: what verification matches on
        // (issuer name, authority key id derived from the key).
        Issuer::new(ca_params(OffsetDateTime::now_utc()), &self.key)
    }

    fn issue(
        &self,
        mut p: CertificateParams,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<IssuedCert> {
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::try_from(validity).unwrap_or(time::Duration::days(30));
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer())?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: p.not_after,
        })
    }

    /// A server certificate for the controller's xDS/wasm endpoints.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<IssuedCert> {
        let mut p = CertificateParams::new(dns_names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            dns_names
                .first()
                .map(String::as_str)
                .unwrap_or("portcullis"),
        );
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(p, now, validity)
    }

    /// A client certificate for the Envoy fleet of Gateway `namespace/name`.
    pub fn issue_client(
        &self,
        namespace: &str,
        name: &str,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<IssuedCert> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("gateway:{namespace}/{name}"));
        p.distinguished_name = dn;
        let uri = format!("spiffe://portcullis/ns/{namespace}/gateway/{name}");
        p.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p, now, validity)
    }

    /// The CA as a Secret.
    pub fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let mut data = BTreeMap::new();
        data.insert(
            "ca.crt".to_string(),
            ByteString(self.cert_pem.clone().into_bytes()),
        );
        data.insert(
            "ca.key".to_string(),
            ByteString(self.key.serialize_pem().into_bytes()),
        );
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "portcullis".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    fn from_secret(s: &Secret) -> Result<Self> {
        let get = |k: &str| {
            s.data
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .ok_or_else(|| Error::Certs(format!("CA Secret lacks {k}")))
        };
        Self::from_pem(&get("ca.crt")?, &get("ca.key")?)
    }

    /// Load the CA from its Secret, creating it if missing. Safe to call from every replica at
    /// once: a lost create race re-reads the winner's CA.
    pub async fn load_or_create(client: Client, namespace: &str, name: &str) -> Result<Self> {
        let mut generated = None;
        let (secret, created) = crate::secret::get_or_create(client, namespace, name, || {
            let ca = Self::generate(OffsetDateTime::now_utc())?;
            let secret = ca.to_secret(namespace, name);
            generated = Some(ca);
            Ok(secret)
        })
        .await?;
        match generated.filter(|_| created) {
            Some(ca) => {
                tracing::info!(namespace, name, "created the xDS CA");
                Ok(ca)
            }
            None => Self::from_secret(&secret),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_and_reloads() {
        let now = OffsetDateTime::now_utc();
        let ca = CertAuthority::generate(now).expect("ca");
        let secret = ca.to_secret("ns", "ca");
        let again = CertAuthority::from_secret(&secret).expect("reload");
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let c = again
            .issue_client("infra", "web", now, LEAF_VALIDITY)
            .expect("client");
        assert!(c.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(c.key_pem.contains("PRIVATE KEY"));
        assert_eq!(c.fingerprint().len(), 64);
        assert!(!needs_renewal(c.not_after, now, LEAF_VALIDITY));
        assert!(needs_renewal(
            c.not_after,
            now + time::Duration::days(61),
            LEAF_VALIDITY
        ));
        assert!(CertAuthority::from_pem("nope", &c.key_pem).is_err());
    }
}
