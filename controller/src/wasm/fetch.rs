//! HTTP(S) fetch of a module at a URL a tenant wrote (`wasm[].code.type: HTTP`, an EnvoyProxy's
//! remote dynamic module) or the operator gave (`--builtin-wasm-url`).
//!
//! The controller runs inside the cluster network, so a URL must not make it a tenant's probe:
//! - **Addresses.** The host must pass the egress policy for [`Connector::Controller`] (loopback,
//!   private, ULA, CGNAT, link-local and metadata, unspecified and `localhost` are refused unless
//!   `--allow-backend-cidr` names them). A DNS name is resolved here, every address it resolves
//!   to is checked, and the connection goes to those checked addresses only (no second lookup
//!   that a rebinding DNS server could answer differently). No proxy from the environment is
//!   used: it would connect wherever it resolves.
//! - **Schemes.** `http` and `https`, as Envoy Gateway accepts for HTTP wasm; both are subject to
//!   the same address rule.
//! - **No redirects.** A 3xx is an error naming the host it pointed to.
//! - **Size.** The body is read as a stream and reading stops at `max_bytes` (the OCI pull
//!   limit); a larger `Content-Length` is refused before the body is read.
//! - **Messages.** Errors carry the status code and its canonical reason, never the response
//!   body, and the URL with its userinfo redacted.

use portcullis_translator::egress::{is_localhost, Connector, EgressPolicy};
use portcullis_translator::wasm::source::redact_userinfo;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DNS_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest buffer reserved up front from a `Content-Length` (the body still may grow to the
/// limit): a server cannot make the controller allocate the whole limit by announcing it.
const INITIAL_CAPACITY: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct HttpFetcher {
    pub egress: EgressPolicy,
    /// Largest body accepted: `portcullis_oci::MAX_WASM_SIZE`, as for OCI pulls.
    pub max_bytes: u64,
    /// Bound of one fetch, body included.
    pub timeout: Duration,
}

impl HttpFetcher {
    /// The body at `url`, or one line saying why not (for a status message).
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let shown = redact_userinfo(url);
        let at = |what: String| format!("fetching {shown}: {what}");
        let parsed = reqwest::Url::parse(url).map_err(|e| at(format!("invalid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(at(format!(
                "scheme {:?} is not supported (http or https)",
                parsed.scheme()
            )));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| at("the URL has no host".into()))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let mut client = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            self.egress
                .check_host_for(Connector::Controller, host)
                .map_err(|e| at(e.to_string()))?;
        } else {
            let addrs = self.resolve(host, port).await.map_err(at)?;
            client = client.resolve_to_addrs(host, &addrs);
        }
        let client = client
            .build()
            .map_err(|e| at(format!("cannot build an HTTP client: {}", error_chain(&e))))?;
        let mut resp = client
            .get(parsed.clone())
            .send()
            .await
            .map_err(|e| at(error_chain(&e.without_url())))?;
        let status = resp.status();
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| parsed.join(l).ok())
                .and_then(|u| u.host_str().map(str::to_string));
            return Err(at(match to {
                Some(h) => format!(
                    "HTTP {status}: refused a redirect to host {h} (redirects are not followed; use the module's own URL)"
                ),
                None => format!("HTTP {status}: refused a redirect (redirects are not followed)"),
            }));
        }
        if !status.is_success() {
            return Err(at(format!("HTTP {status}")));
        }
        let limit = self.max_bytes;
        if let Some(n) = resp.content_length() {
            if n > limit {
                return Err(at(format!(
                    "Content-Length {n} bytes is over {}",
                    limit_text(limit)
                )));
            }
        }
        let reserve = resp.content_length().unwrap_or(0).min(INITIAL_CAPACITY);
        let mut body = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            at(format!(
                "reading the body: {}",
                error_chain(&e.without_url())
            ))
        })? {
            let total = body.len() as u64 + chunk.len() as u64;
            if total > limit {
                return Err(at(format!(
                    "the body is over {} (stopped reading at {total} bytes)",
                    limit_text(limit)
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The checked addresses of DNS name `name`: all of them pass the egress policy, or none is
    /// used. `localhost` names are loopback and never asked of DNS (RFC 6761).
    async fn resolve(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        self.egress
            .check_host_for(Connector::Controller, name)
            .map_err(|e| e.to_string())?;
        let addrs: Vec<SocketAddr> = if is_localhost(name) {
            [
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(Ipv6Addr::LOCALHOST),
            ]
            .into_iter()
            .filter(|ip| {
                self.egress
                    .check_resolved(Connector::Controller, name, *ip)
                    .is_ok()
            })
            .map(|ip| SocketAddr::new(ip, port))
            .collect()
        } else {
            tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((name, port)))
                .await
                .map_err(|_| format!("resolving {name}: timed out"))?
                .map_err(|e| format!("resolving {name}: {e}"))?
                .collect()
        };
        checked_addrs(&self.egress, name, addrs)
    }
}

/// `addrs` if every one passes `egress` for the controller; else why the first refused does not.
fn checked_addrs(
    egress: &EgressPolicy,
    name: &str,
    addrs: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, String> {
    if addrs.is_empty() {
        return Err(format!("{name} resolves to no address"));
    }
    for a in &addrs {
        egress
            .check_resolved(Connector::Controller, name, a.ip())
            .map_err(|e| e.to_string())?;
    }
    Ok(addrs)
}

/// "the 256 MiB module size limit".
fn limit_text(limit: u64) -> String {
    if limit >= 1 << 20 && limit.is_multiple_of(1 << 20) {
        format!("the {} MiB module size limit", limit >> 20)
    } else {
        format!("the {limit}-byte module size limit")
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resolved_address_is_checked() {
        let p = EgressPolicy::default();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let public = vec![a("203.0.113.7:443"), a("[2001:db8::1]:443")];
        assert_eq!(checked_addrs(&p, "w.example", public.clone()), Ok(public));
        for mixed in [
            vec![a("203.0.113.7:443"), a("10.0.0.5:443")],
            vec![a("203.0.113.7:443"), a("169.254.169.254:443")],
            vec![a("[::ffff:127.0.0.1]:443")],
            vec![a("[fd00::1]:443")],
        ] {
            let e = checked_addrs(&p, "w.example", mixed.clone()).expect_err("refused");
            assert!(
                e.starts_with("w.example (resolves to ") && e.contains("--allow-backend-cidr"),
                "{mixed:?}: {e}"
            );
        }
        assert!(checked_addrs(&p, "w.example", vec![]).is_err());
        let allowed = EgressPolicy::allowing(["10.0.0.0/8".parse().unwrap()]);
        let private = vec![a("10.0.0.5:80")];
        assert_eq!(checked_addrs(&allowed, "w", private.clone()), Ok(private));
    }

    #[test]
    fn limit_is_named() {
        assert_eq!(
            limit_text(portcullis_oci::MAX_WASM_SIZE),
            "the 256 MiB module size limit"
        );
        assert_eq!(limit_text(1000), "the 1000-byte module size limit");
    }
}
