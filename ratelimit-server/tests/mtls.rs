//! `--tls-cert`, `--tls-key`, `--client-ca`: with all three the server serves only clients whose
//! certificate chains to the CA. Certificates are generated here (rcgen), the server listens on
//! 127.0.0.1:0, Redis is real (unix socket).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use portcullis_ratelimit_server::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use support::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let pem = params.clone().self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// (cert PEM, key PEM) signed by `ca`.
fn leaf(ca: &Ca, server: bool) -> (String, String) {
    let mut p = if server {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p
    } else {
        // Like the fleet's client certificates the controller's CA issues.
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://portcullis/ns/default/gateway/eg"
                .try_into()
                .unwrap(),
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p
    };
    p.distinguished_name
        .push(DnType::CommonName, if server { "rls" } else { "envoy" });
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca.params.clone(), &ca.key);
    let cert = p.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Whether one ShouldRateLimit call over `channel` (if it connected) got an answer.
async fn served(channel: Result<Channel, tonic::transport::Error>) -> bool {
    let Ok(channel) = channel else {
        return false;
    };
    let mut c = RateLimitServiceClient::new(channel);
    let req = request("d", vec![descriptor(&[("a", "1")], None)]);
    matches!(
        tokio::time::timeout(Duration::from_secs(10), c.should_rate_limit(req)).await,
        Ok(Ok(r)) if r.get_ref().overall_code == OK
    )
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

#[tokio::test]
async fn only_clients_with_a_certificate_from_the_client_ca_are_served() {
    portcullis_ratelimit_server::tls::install_crypto_provider();
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("portcullis test CA");
    let rogue = new_ca("someone else's CA");
    let (server_cert, server_key) = leaf(&ca, true);
    let good = leaf(&ca, false);
    let bad = leaf(&rogue, false);

    let mut a = Args::new(redis.url());
    a.tls_cert = Some(write(dir.path(), "tls.crt", &server_cert));
    a.tls_key = Some(write(dir.path(), "tls.key", &server_key));
    a.client_ca = Some(write(dir.path(), "ca.crt", &ca.pem));
    let server = Rls::start(a).await;
    let addr = server.addr;

    // A client certificate the CA signed: served.
    assert!(served(tls_channel(addr, &ca.pem, Some(&good)).await).await);
    // No client certificate: refused.
    assert!(!served(tls_channel(addr, &ca.pem, None).await).await);
    // A certificate from another CA: refused.
    assert!(!served(tls_channel(addr, &ca.pem, Some(&bad)).await).await);
    // Plaintext: refused.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    assert!(!served(plain).await);
    // And the certificate the CA signed still is served afterwards.
    assert!(served(tls_channel(addr, &ca.pem, Some(&good)).await).await);
}

#[tokio::test]
async fn tls_flags_go_together_and_bad_files_fail_startup() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("portcullis test CA");
    let (cert, key) = leaf(&ca, true);
    let cert = write(dir.path(), "tls.crt", &cert);
    let key = write(dir.path(), "tls.key", &key);
    let ca_path = write(dir.path(), "ca.crt", &ca.pem);

    let mut a = Args::new(redis.url());
    a.tls_cert = Some(cert.clone());
    let err = format!("{:#}", Rls::start_err(a).await);
    assert!(
        err.contains("all three") && err.contains("--tls-key") && err.contains("--client-ca"),
        "{err}"
    );

    // A key file in place of the CA: named in the error.
    let mut a = Args::new(redis.url());
    a.tls_cert = Some(cert.clone());
    a.tls_key = Some(key.clone());
    a.client_ca = Some(key.clone());
    let err = format!("{:#}", Rls::start_err(a).await);
    assert!(err.contains("--client-ca"), "{err}");

    // A missing file: named.
    let mut a = Args::new(redis.url());
    a.tls_cert = Some(cert);
    a.tls_key = Some(dir.path().join("nope.key"));
    a.client_ca = Some(ca_path);
    let err = format!("{:#}", Rls::start_err(a).await);
    assert!(err.contains("nope.key"), "{err}");
}

#[test]
fn the_cli_requires_all_three_tls_flags() {
    use clap::Parser;
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }
    let r = Cli::try_parse_from(["rls", "--tls-cert", "a.crt", "--tls-key", "a.key"]);
    assert!(r.is_err());
    let r = Cli::try_parse_from([
        "rls",
        "--tls-cert",
        "a.crt",
        "--tls-key",
        "a.key",
        "--client-ca",
        "ca.crt",
    ]);
    assert!(r.is_ok(), "{r:?}");
}
