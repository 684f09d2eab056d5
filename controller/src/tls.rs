//! Mutual TLS for the endpoints managed Envoys call in Kubernetes mode (xDS and wasm serving).
//!
//! Both endpoints share one [`ServerIdentity`]: the server certificate the controller issues
//! itself from the xDS CA, swapped in place on renewal (new handshakes pick it up; open streams
//! keep theirs), and a client verifier that accepts only certificates chaining to that CA (the
//! fleet's client certificates, see `portcullis_kube::infra`).
//!
//! [`incoming`] turns a TCP listener into a stream of verified TLS connections. Handshakes run in
//! their own tasks, so a client that never finishes one cannot stall `accept`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Longest a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: &'static str },
    #[error("{what}: invalid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("server key does not fit the certificate or is unsupported: {0}")]
    Key(rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    // Both ring and aws-lc-rs are in the dependency graph, so no process default can be assumed.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs("server certificate", cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "server key",
        reason: e.to_string(),
    })?;
    let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Key)?;
    Ok(Arc::new(ck))
}

/// The current server certificate; replaced on renewal.
#[derive(Debug)]
struct RotatingCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The controller's TLS server identity and the CA its clients must chain to.
#[derive(Clone)]
pub struct ServerIdentity {
    cert: Arc<RotatingCert>,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity").finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// `client_ca_pem`: clients must present a certificate chaining to it.
    pub fn new(client_ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs("client CA", client_ca_pem)? {
            roots.add(c)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(Self {
            cert: Arc::new(RotatingCert(RwLock::new(certified_key(cert_pem, key_pem)?))),
            verifier,
        })
    }

    /// Serve a renewed certificate from the next handshake on. A bad one is refused and the
    /// current one stays.
    pub fn rotate(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let next = certified_key(cert_pem, key_pem)?;
        *self.cert.0.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// An acceptor offering `alpn` (e.g. `h2` for gRPC, `http/1.1` for the wasm endpoint).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(self.verifier.clone())
            .with_cert_resolver(self.cert.clone());
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }
}

/// Who is on the other end of a verified connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    /// The xDS node id the client certificate was issued for (`<namespace>/<gateway>`, from its
    /// URI SAN `spiffe://portcullis/ns/<ns>/gateway/<name>`); `None` when it names no Gateway.
    pub node_id: Option<String>,
}

/// URI SAN prefix of fleet client certificates (see `portcullis_kube::certs::issue_client`).
const FLEET_SPIFFE_PREFIX: &str = "spiffe://portcullis/ns/";

/// The node id a fleet client certificate (DER) is for, from its URI SAN.
pub fn node_id_of_certificate(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => {
            let rest = uri.strip_prefix(FLEET_SPIFFE_PREFIX)?;
            let (ns, name) = rest.split_once("/gateway/")?;
            let valid = |s: &str| !s.is_empty() && !s.contains('/');
            (valid(ns) && valid(name)).then(|| format!("{ns}/{name}"))
        }
        _ => None,
    })
}

/// One accepted, verified connection.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    peer: TlsPeer,
}

impl TlsConn {
    fn new(inner: TlsStream<TcpStream>, addr: SocketAddr) -> Self {
        let node_id = inner
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| node_id_of_certificate(leaf.as_ref()));
        Self {
            inner,
            peer: TlsPeer { addr, node_id },
        }
    }

    pub fn peer(&self) -> &TlsPeer {
        &self.peer
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsPeer;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

/// Verified connections from `listener`, handshaken concurrently. `what` names the endpoint in
/// logs. The accept loop ends when the receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    what: &'static str,
) -> mpsc::Receiver<TlsConn> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(endpoint = what, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(inner)) => {
                        let _ = tx.send(TlsConn::new(inner, peer)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(endpoint = what, %peer, error = %e, "TLS handshake refused")
                    }
                    Err(_) => {
                        tracing::warn!(endpoint = what, %peer, "TLS handshake timed out")
                    }
                }
            });
        }
    });
    rx
}

/// [`incoming`] as a tonic incoming stream.
pub fn incoming_stream(
    rx: mpsc::Receiver<TlsConn>,
) -> impl tokio_stream::Stream<Item = Result<TlsConn, io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
}

/// [`incoming`] as an axum listener.
pub struct TlsListener {
    rx: mpsc::Receiver<TlsConn>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        what: &'static str,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self {
            rx: incoming(listener, acceptor, what),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => {
                let addr = c.peer.addr;
                (c, addr)
            }
            // The accept task only ends when this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_kube::certs::{CertAuthority, LEAF_VALIDITY};

    fn ca() -> CertAuthority {
        CertAuthority::generate(time::OffsetDateTime::now_utc()).expect("ca")
    }

    #[test]
    fn refuses_bad_pem_with_a_reason() {
        let ca = ca();
        let now = time::OffsetDateTime::now_utc();
        let server = ca
            .issue_server(&["x.svc".into()], now, LEAF_VALIDITY)
            .expect("server");
        let e =
            ServerIdentity::new("garbage", &server.cert_pem, &server.key_pem).expect_err("no CA");
        assert!(e.to_string().contains("client CA"), "{e}");
        let e = ServerIdentity::new(ca.cert_pem(), &server.cert_pem, "nope").expect_err("key");
        assert!(e.to_string().contains("server key"), "{e}");
        let id = ServerIdentity::new(ca.cert_pem(), &server.cert_pem, &server.key_pem)
            .expect("identity");
        // A key that does not match the certificate is refused; the old identity stays usable.
        let other = ca
            .issue_server(&["y.svc".into()], now, LEAF_VALIDITY)
            .expect("other");
        assert!(id.rotate(&server.cert_pem, &other.key_pem).is_err());
        assert!(id.rotate(&other.cert_pem, &other.key_pem).is_ok());
        assert!(id.acceptor(&[b"h2"]).is_ok());
    }

    #[test]
    fn fleet_certificates_name_their_node() {
        let ca = ca();
        let now = time::OffsetDateTime::now_utc();
        let pem_der = |pem: &str| {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .expect("pem")
                .to_vec()
        };
        let client = ca
            .issue_client("infra", "web", now, LEAF_VALIDITY)
            .expect("client");
        assert_eq!(
            node_id_of_certificate(&pem_der(&client.cert_pem)).as_deref(),
            Some("infra/web")
        );
        // A server certificate (DNS SANs only) names no Gateway; garbage is not a certificate.
        let server = ca
            .issue_server(&["x.svc".into()], now, LEAF_VALIDITY)
            .expect("server");
        assert_eq!(node_id_of_certificate(&pem_der(&server.cert_pem)), None);
        assert_eq!(node_id_of_certificate(b"\x30\x03garbage"), None);
    }
}
