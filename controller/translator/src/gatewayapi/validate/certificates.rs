//! Listener certificates: the reference (`tls.certificateRefs[]`), the Secret it names, and
//! the PEM inside: every certificate parses, the private key parses and is the key of the leaf
//! certificate. Envoy Gateway's `validateTerminateModeAndGetTLSSecrets` (validate.go) and
//! `parseCertsFromTLSSecretsData` (tls.go) give the order and the reasons.

use x509_parser::asn1_rs::{Class, Tag};
use x509_parser::der_parser::ber::{BerObject, BerObjectContent};
use x509_parser::der_parser::der::parse_der;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::{parse_x509_certificate, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::gatewayapi::reference_granted;
use crate::ir::CertificateIr;
use crate::resources::{ObjectRef, Resources, SecretKeyError, GATEWAY_GROUP};

/// Why a `certificateRefs[]` entry cannot be used. [`CertificateError::reason`] is the
/// listener `ResolvedRefs` reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// `group_kind`: `kind` alone for the core group, `group/kind` else.
    #[error("certificateRef {group_kind} {name} is not a core Secret")]
    NotASecret { group_kind: String, name: String },
    #[error("Secret {ns}/{name} is in another namespace and no ReferenceGrant allows it")]
    RefNotPermitted { ns: String, name: String },
    #[error("Secret {ns}/{name} not found")]
    NotFound { ns: String, name: String },
    #[error("Secret {ns}/{name} has type {type_}, want kubernetes.io/tls")]
    WrongType {
        ns: String,
        name: String,
        type_: String,
    },
    #[error("Secret {ns}/{name} {why}")]
    Field {
        ns: String,
        name: String,
        why: String,
    },
    #[error("Secret {ns}/{name} tls.crt holds no PEM certificate")]
    NoCertificate { ns: String, name: String },
    #[error("Secret {ns}/{name} tls.crt: certificate {index} cannot be parsed: {why}")]
    BadCertificate {
        ns: String,
        name: String,
        index: usize,
        why: String,
    },
    #[error("Secret {ns}/{name} tls.key holds no PEM private key")]
    NoKey { ns: String, name: String },
    #[error("Secret {ns}/{name} tls.key: {why}")]
    BadKey {
        ns: String,
        name: String,
        why: String,
    },
    #[error("Secret {ns}/{name}: tls.key is not the private key of the tls.crt certificate")]
    KeyMismatch { ns: String, name: String },
}

impl CertificateError {
    /// The listener `ResolvedRefs=False` reason (Gateway API `ListenerConditionReason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RefNotPermitted { .. } => "RefNotPermitted",
            _ => "InvalidCertificateRef",
        }
    }
}

/// A usable certificate: what goes to Envoy, and the DNS names of its leaf (SANs, else the
/// subject CN) for the overlapping-certificate check.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    pub ir: CertificateIr,
    pub dns_names: Vec<String>,
}

/// Resolves one `certificateRefs[]` entry of a listener of a Gateway in `gw_ns`.
pub fn load(
    res: &Resources,
    gw_ns: &str,
    r: &ObjectRef,
) -> Result<LoadedCertificate, CertificateError> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Secret");
    if !group.is_empty() || kind != "Secret" {
        return Err(CertificateError::NotASecret {
            group_kind: if group.is_empty() {
                kind.to_string()
            } else {
                format!("{group}/{kind}")
            },
            name: r.name.clone(),
        });
    }
    let ns = r.namespace.as_deref().unwrap_or(gw_ns).to_string();
    let name = r.name.clone();
    if !reference_granted(
        res,
        (GATEWAY_GROUP, "Gateway", gw_ns),
        ("", "Secret", &ns, &name),
    ) {
        return Err(CertificateError::RefNotPermitted { ns, name });
    }
    let Some(secret) = res.secrets.get(&(ns.clone(), name.clone())) else {
        return Err(CertificateError::NotFound { ns, name });
    };
    // A Secret without `type` (manifests for the file provider) is read as kubernetes.io/tls.
    if let Some(t) = secret
        .spec
        .type_
        .as_deref()
        .filter(|t| *t != "kubernetes.io/tls")
    {
        return Err(CertificateError::WrongType {
            ns,
            name,
            type_: t.into(),
        });
    }
    let field = |key: &str| {
        secret.spec.text(key).map_err(|e| CertificateError::Field {
            ns: ns.clone(),
            name: name.clone(),
            why: match e {
                SecretKeyError::Missing => format!("has no {key}"),
                SecretKeyError::NotBase64(e) => format!("{key} is not valid base64: {e}"),
                SecretKeyError::NotText => format!("{key} is not PEM text"),
            },
        })
    };
    let cert_pem = field("tls.crt")?;
    let key_pem = field("tls.key")?;
    let dns_names = check_pair(&cert_pem, &key_pem).map_err(|e| match e {
        PairError::NoCertificate => CertificateError::NoCertificate {
            ns: ns.clone(),
            name: name.clone(),
        },
        PairError::BadCertificate { index, why } => CertificateError::BadCertificate {
            ns: ns.clone(),
            name: name.clone(),
            index,
            why,
        },
        PairError::NoKey => CertificateError::NoKey {
            ns: ns.clone(),
            name: name.clone(),
        },
        PairError::BadKey(why) => CertificateError::BadKey {
            ns: ns.clone(),
            name: name.clone(),
            why,
        },
        PairError::Mismatch => CertificateError::KeyMismatch {
            ns: ns.clone(),
            name: name.clone(),
        },
    })?;
    Ok(LoadedCertificate {
        ir: CertificateIr {
            name: format!("{ns}/{name}"),
            cert_pem,
            key_pem,
        },
        dns_names,
    })
}

/// What is wrong with a PEM certificate chain and key, before the Secret is named.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PairError {
    NoCertificate,
    BadCertificate { index: usize, why: String },
    NoKey,
    BadKey(String),
    Mismatch,
}

/// A public key as both a certificate and a private key can state it.
#[derive(Debug, PartialEq, Eq)]
enum KeyId {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec(Vec<u8>),
}

/// Parses the chain and the key; returns the leaf's DNS names. A key whose public half cannot
/// be read without cryptography (an SEC1 key without its public point, Ed25519) is not
/// compared.
fn check_pair(cert_pem: &str, key_pem: &str) -> Result<Vec<String>, PairError> {
    let blocks: Vec<Pem> = Pem::iter_from_buffer(cert_pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .collect();
    if blocks.is_empty() {
        return Err(PairError::NoCertificate);
    }
    let mut leaf: Option<(Option<KeyId>, Vec<String>)> = None;
    for (index, b) in blocks.iter().enumerate() {
        let cert = match parse_x509_certificate(&b.contents) {
            Ok((_, c)) => c,
            Err(e) => {
                return Err(PairError::BadCertificate {
                    index,
                    why: e.to_string(),
                })
            }
        };
        if leaf.is_none() {
            leaf = Some((cert_key(&cert), dns_names(&cert)));
        }
    }
    let (cert_key, names) = leaf.ok_or(PairError::NoCertificate)?;
    let key = Pem::iter_from_buffer(key_pem.as_bytes())
        .filter_map(Result::ok)
        .find(|p| p.label.ends_with("PRIVATE KEY"))
        .ok_or(PairError::NoKey)?;
    let key_id = match key.label.as_str() {
        "PRIVATE KEY" => pkcs8_key(&key.contents),
        "RSA PRIVATE KEY" => pkcs1_key(&key.contents),
        "EC PRIVATE KEY" => sec1_key(&key.contents),
        "ENCRYPTED PRIVATE KEY" => Err("encrypted private keys are not supported".into()),
        other => Err(format!(
            "{other} key format found, supported formats are PKCS#1, PKCS#8 and SEC1 (EC)"
        )),
    }
    .map_err(PairError::BadKey)?;
    if let (Some(c), Some(k)) = (cert_key, key_id) {
        if c != k {
            return Err(PairError::Mismatch);
        }
    }
    Ok(names)
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

fn cert_key(cert: &X509Certificate<'_>) -> Option<KeyId> {
    match cert.public_key().parsed().ok()? {
        PublicKey::RSA(k) => Some(KeyId::Rsa {
            n: strip_zeros(k.modulus),
            e: strip_zeros(k.exponent),
        }),
        PublicKey::EC(p) => Some(KeyId::Ec(p.data().to_vec())),
        _ => None,
    }
}

fn dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut out: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() {
        out.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    out
}

fn der(bytes: &[u8]) -> Result<BerObject<'_>, String> {
    parse_der(bytes)
        .map(|(_, o)| o)
        .map_err(|e| format!("invalid DER: {e}"))
}

fn seq<'a>(o: &'a BerObject<'a>) -> Result<&'a [BerObject<'a>], String> {
    o.as_sequence()
        .map(Vec::as_slice)
        .map_err(|_| "not a DER SEQUENCE".to_string())
}

/// PKCS#1 `RSAPrivateKey`: version, modulus, publicExponent, ...
fn pkcs1_key(bytes: &[u8]) -> Result<Option<KeyId>, String> {
    let o = der(bytes)?;
    let s = seq(&o)?;
    match (s.get(1), s.get(2)) {
        (Some(n), Some(e)) => match (&n.content, &e.content) {
            (BerObjectContent::Integer(n), BerObjectContent::Integer(e)) => Ok(Some(KeyId::Rsa {
                n: strip_zeros(n),
                e: strip_zeros(e),
            })),
            _ => Err("unable to parse PKCS#1 formatted RSA private key".into()),
        },
        _ => Err("unable to parse PKCS#1 formatted RSA private key".into()),
    }
}

/// SEC1 `ECPrivateKey`: version, privateKey, [0] parameters, [1] publicKey (optional).
fn sec1_key(bytes: &[u8]) -> Result<Option<KeyId>, String> {
    let o = der(bytes)?;
    let s = seq(&o).map_err(|_| "unable to parse SEC1 formatted EC private key".to_string())?;
    if !matches!(
        s.get(1).map(|x| &x.content),
        Some(BerObjectContent::OctetString(_))
    ) {
        return Err("unable to parse SEC1 formatted EC private key".into());
    }
    for item in &s[2..] {
        if item.class() != Class::ContextSpecific || item.tag() != Tag(1) {
            continue;
        }
        let point = match &item.content {
            BerObjectContent::Tagged(_, _, inner) => inner.as_slice().ok().map(<[u8]>::to_vec),
            BerObjectContent::Unknown(any) => der(any.data)
                .ok()
                .and_then(|b| b.as_slice().ok().map(<[u8]>::to_vec)),
            _ => None,
        };
        return Ok(point.map(KeyId::Ec));
    }
    Ok(None)
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";

/// PKCS#8 `PrivateKeyInfo`: version, algorithm, privateKey (the PKCS#1 or SEC1 structure).
fn pkcs8_key(bytes: &[u8]) -> Result<Option<KeyId>, String> {
    let bad = || "unable to parse PKCS#8 formatted private key".to_string();
    let o = der(bytes).map_err(|_| bad())?;
    let s = seq(&o).map_err(|_| bad())?;
    let alg = s.get(1).ok_or_else(bad)?;
    let oid = seq(alg)
        .ok()
        .and_then(|a| a.first())
        .and_then(|x| x.as_oid().ok())
        .map(|o| o.to_id_string())
        .ok_or_else(bad)?;
    let inner = s
        .get(2)
        .and_then(|x| match &x.content {
            BerObjectContent::OctetString(b) => Some(*b),
            _ => None,
        })
        .ok_or_else(bad)?;
    match oid.as_str() {
        OID_RSA => pkcs1_key(inner),
        OID_EC => sec1_key(inner),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/testdata/certs/status")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn matching_pairs_of_every_key_format() {
        for (c, k, name) in [
            ("a.crt", "a.key", "a.example.com"),
            ("sec1.crt", "sec1.key", "sec1.example.com"),
            ("rsa.crt", "rsa.key", "rsa.example.com"),
            ("wild.crt", "wild.key", "*.example.com"),
        ] {
            assert_eq!(
                check_pair(&read(c), &read(k)),
                Ok(vec![name.to_string()]),
                "{c}"
            );
        }
    }

    #[test]
    fn mismatched_and_malformed_pairs() {
        assert_eq!(
            check_pair(&read("a.crt"), &read("b.key")),
            Err(PairError::Mismatch)
        );
        assert_eq!(
            check_pair(&read("rsa.crt"), &read("rsa-other.key")),
            Err(PairError::Mismatch)
        );
        assert_eq!(
            check_pair(&read("rsa.crt"), &read("a.key")),
            Err(PairError::Mismatch)
        );
        assert_eq!(
            check_pair("not pem", &read("a.key")),
            Err(PairError::NoCertificate)
        );
        assert_eq!(check_pair(&read("a.crt"), "x"), Err(PairError::NoKey));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            check_pair(garbage, &read("a.key")),
            Err(PairError::BadCertificate { index: 0, .. })
        ));
        // Truncated, badly armoured and non-base64 blocks end the scan; they never loop.
        let broken = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n-----BEGIN X\n-----BEGIN CERTIFICATE-----\nAAAA";
        assert_eq!(
            check_pair(broken, &read("a.key")),
            Err(PairError::NoCertificate)
        );
        let bad_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            check_pair(&read("a.crt"), bad_key),
            Err(PairError::BadKey(_))
        ));
    }
}
