//! HTTP clients for tests: no proxy, no default User-Agent, no redirects, generous timeouts.

use std::time::Duration;

use reqwest::blocking::{Client, Response};

/// A plain client. reqwest sends no User-Agent unless asked, which the ua-block tests rely on.
pub fn client() -> Client {
    builder().build().unwrap_or_else(|_| Client::new())
}

/// A client that accepts any certificate (for TLS listeners with a test's self-signed cert).
pub fn insecure_client() -> Client {
    builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap_or_else(|_| Client::new())
}

/// A client that also trusts the CA certificates in `pem` (a test's own CA).
pub fn client_trusting(pem: &[u8]) -> reqwest::Result<Client> {
    let mut b = builder();
    for cert in reqwest::Certificate::from_pem_bundle(pem)? {
        b = b.add_root_certificate(cert);
    }
    b.build()
}

fn builder() -> reqwest::blocking::ClientBuilder {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
}

/// GET `url` with the given User-Agent: `None` sends no User-Agent header at all,
/// `Some("")` sends an empty one.
pub fn get_with_ua(
    client: &Client,
    url: &str,
    user_agent: Option<&str>,
) -> reqwest::Result<Response> {
    let mut req = client.get(url);
    if let Some(ua) = user_agent {
        req = req.header(reqwest::header::USER_AGENT, ua);
    }
    req.send()
}
