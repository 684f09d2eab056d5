//! Mutual TLS for the gRPC listener: `--tls-cert`, `--tls-key` and `--client-ca`, all three or
//! none. With them, the server speaks TLS only and serves only clients whose certificate chains
//! to `--client-ca` (in Kubernetes mode: the controller's CA, `ca.crt` of its CA Secret, which
//! signs the fleet's client certificates). Handshakes run in tonic's own tasks, each bounded by
//! [`HANDSHAKE_TIMEOUT`], so a client that never finishes one cannot stall the listener.
//!
//! The files are read once at startup: restart the server when they rotate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Longest a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert, --tls-key and --client-ca go together (all three or none); missing: {0}")]
    Incomplete(String),
    #[error("read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {}: {reason}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The three TLS paths as given (each `None` when its flag is absent).
#[derive(Debug, Clone, Copy)]
pub struct TlsPaths<'a> {
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub client_ca: Option<&'a Path>,
}

/// `Ok(None)`: plaintext (no flag given). `Ok(Some)`: mutual TLS. Every file is read and its PEM
/// checked here, so a bad file fails startup with its name rather than the first handshake.
pub fn server_config(p: TlsPaths<'_>) -> Result<Option<ServerTlsConfig>, TlsError> {
    let (cert, key, ca) = match (p.cert, p.key, p.client_ca) {
        (None, None, None) => return Ok(None),
        (Some(c), Some(k), Some(a)) => (c, k, a),
        _ => {
            let missing: Vec<&str> = [
                (p.cert.is_none(), "--tls-cert"),
                (p.key.is_none(), "--tls-key"),
                (p.client_ca.is_none(), "--client-ca"),
            ]
            .iter()
            .filter(|(m, _)| *m)
            .map(|(_, n)| *n)
            .collect();
            return Err(TlsError::Incomplete(missing.join(", ")));
        }
    };
    let cert_pem = read("--tls-cert", cert)?;
    let key_pem = read("--tls-key", key)?;
    let ca_pem = read("--client-ca", ca)?;
    check_pem("--tls-cert", cert, &cert_pem, false)?;
    check_pem("--tls-key", key, &key_pem, true)?;
    check_pem("--client-ca", ca, &ca_pem, false)?;
    install_crypto_provider();
    Ok(Some(
        ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .client_ca_root(Certificate::from_pem(ca_pem))
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT),
    ))
}

/// tonic builds its rustls config from the process-wide provider. In the `portcullis` binary
/// both ring and aws-lc-rs are linked, so none can be picked from crate features: choose ring
/// unless the process already chose.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err: another thread installed one first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The file holds what its flag needs: one or more certificates, or a private key.
fn check_pem(what: &'static str, path: &Path, pem: &[u8], key: bool) -> Result<(), TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let err = |reason: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason,
    };
    if key {
        PrivateKeyDer::from_pem_slice(pem)
            .map(drop)
            .map_err(|e| err(format!("no usable PEM private key: {e}")))
    } else {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(format!("invalid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate".into()));
        }
        Ok(())
    }
}
