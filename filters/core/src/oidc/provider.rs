//! Per-worker provider state: discovery document, JWKS, bearer-token cache, and the
//! background fetches that keep them fresh.

use std::num::NonZeroUsize;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::config::{HttpUrl, Settings};
use super::jwt::{Claims, Jwks};
use super::seal::Sealer;
use super::{CallKind, Callout};

/// The parts of the discovery document the filter uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery answered HTTP {0}{1}")]
    Status(u32, UpstreamFailure),
    #[error("discovery document is not valid JSON: {0}")]
    Json(String),
    #[error("discovery issuer {got:?} differs from the configured issuer {want:?}")]
    Issuer { got: String, want: String },
    #[error("discovery endpoint {0}: {1}")]
    Endpoint(&'static str, String),
    #[error("JWKS answered HTTP {0}{1}")]
    JwksStatus(u32, UpstreamFailure),
    #[error("JWKS: {0}")]
    Jwks(String),
}

/// Why Envoy could not reach the provider, from its own local reply (e.g. `transport failure
/// reason: TLS_error:...CERTIFICATE_VERIFY_FAILED`), so a log line says "bad certificate"
/// rather than a bare 503. The provider's own bodies are never repeated: they are not ours to
/// log and can be anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamFailure(Option<String>, bool);

impl UpstreamFailure {
    const MAX: usize = 200;

    /// `https`: the provider is reached over TLS, where a failed connection is most often an
    /// untrusted certificate (Envoy's callout replies do not always carry the TLS reason).
    pub fn of(body: &[u8], https: bool) -> Self {
        let Ok(text) = std::str::from_utf8(body) else {
            return Self(None, false);
        };
        let reason = if let Some((_, r)) = text.split_once("transport failure reason: ") {
            r
        } else if text.starts_with("upstream connect error")
            || text.starts_with("no healthy upstream")
            || text.starts_with("upstream request timeout")
        {
            text
        } else {
            return Self(None, false);
        };
        let hint = https && text.contains("connection failure");
        let clean: String = reason
            .chars()
            .take_while(|c| *c != '\n')
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(Self::MAX)
            .collect();
        Self(Some(clean).filter(|s| !s.is_empty()), hint)
    }
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(r) = &self.0 {
            write!(f, " (Envoy: {r})")?;
        }
        if self.1 {
            f.write_str(
                "; the provider is https: check that its certificate chains to a CA the gateway trusts and names the issuer's host",
            )?;
        }
        Ok(())
    }
}

impl Discovery {
    pub fn parse(body: &[u8], settings: &Settings) -> Result<Self, DiscoveryError> {
        let d: Discovery =
            serde_json::from_slice(body).map_err(|e| DiscoveryError::Json(e.to_string()))?;
        if d.issuer.trim_end_matches('/') != settings.issuer {
            return Err(DiscoveryError::Issuer {
                got: d.issuer,
                want: settings.issuer.clone(),
            });
        }
        HttpUrl::parse(&d.authorization_endpoint)
            .map_err(|e| DiscoveryError::Endpoint("authorization_endpoint", e))?;
        HttpUrl::parse(&d.token_endpoint)
            .map_err(|e| DiscoveryError::Endpoint("token_endpoint", e))?;
        HttpUrl::parse(&d.jwks_uri).map_err(|e| DiscoveryError::Endpoint("jwks_uri", e))?;
        if let Some(e) = &d.end_session_endpoint {
            HttpUrl::parse(e).map_err(|e| DiscoveryError::Endpoint("end_session_endpoint", e))?;
        }
        Ok(d)
    }
}

/// A verified bearer token remembered until its expiry.
#[derive(Debug, Clone)]
pub struct CachedToken {
    pub claims: Arc<Claims>,
    pub exp: u64,
}

/// Everything one worker knows about the provider. Shared (single-threaded) by the root
/// context and every request of that worker.
pub struct Provider {
    pub settings: Arc<Settings>,
    pub sealer: Sealer,
    pub discovery: Option<Discovery>,
    pub jwks: Option<Jwks>,
    discovery_at: Option<u64>,
    /// When the JWKS was last requested (for the unknown-`kid` rate limit).
    jwks_requested_at: Option<u64>,
    /// A background fetch in flight and when it started.
    inflight: Option<(CallKind, u64)>,
    /// Discovery was just (re)loaded: fetch the keys again.
    jwks_stale: bool,
    next_attempt: u64,
    failures: u32,
    bearer_cache: lru::LruCache<[u8; 32], CachedToken>,
    /// Sessions opened by this worker (see [`SessionCache`]).
    pub sessions: super::session::SessionCache,
    /// Last discovery/JWKS error, for the 503 body and logs.
    pub last_error: Option<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("discovery", &self.discovery.is_some())
            .field("jwks", &self.jwks)
            .field("last_error", &self.last_error)
            .finish()
    }
}

impl Provider {
    pub fn new(settings: Arc<Settings>) -> Self {
        let cap = NonZeroUsize::new(settings.config.bearer_cache_size).unwrap_or(NonZeroUsize::MIN);
        Self {
            sealer: Sealer::with_keys(&settings.keys),
            settings,
            discovery: None,
            jwks: None,
            discovery_at: None,
            jwks_requested_at: None,
            inflight: None,
            jwks_stale: false,
            next_attempt: 0,
            failures: 0,
            bearer_cache: lru::LruCache::new(cap),
            sessions: Default::default(),
            last_error: None,
        }
    }

    /// Discovery and JWKS both loaded: the filter can authenticate.
    pub fn ready(&self) -> bool {
        self.discovery.is_some() && self.jwks.is_some()
    }

    /// A `GET` to the provider cluster for an absolute URL on the provider.
    pub fn get(&self, kind: CallKind, url: &str) -> Option<Callout> {
        let u = HttpUrl::parse(url).ok()?;
        Some(Callout {
            kind,
            method: "GET".into(),
            path: u.path_and_query,
            authority: self
                .settings
                .config
                .provider_authority
                .clone()
                .unwrap_or(u.authority),
            headers: vec![("accept".into(), "application/json".into())],
            body: None,
        })
    }

    /// On a timer: the background fetch to start now, if any.
    pub fn poll(&mut self, now: u64) -> Option<Callout> {
        let timeout = self.settings.config.provider_timeout_ms / 1000 + 5;
        if let Some((_, since)) = self.inflight {
            if now < since + timeout {
                return None;
            }
            self.inflight = None; // lost callback: allow a new attempt
        }
        if now < self.next_attempt {
            return None;
        }
        let refresh = self.settings.config.discovery_refresh_seconds;
        let discovery_due = self.discovery_at.is_none_or(|at| now >= at + refresh);
        let call = if self.discovery.is_none() || discovery_due {
            self.discovery_call()
        } else if self.jwks.is_none() || self.jwks_stale {
            let uri = self.discovery.as_ref()?.jwks_uri.clone();
            self.get(CallKind::Jwks, &uri)
        } else {
            None
        }?;
        if call.kind == CallKind::Jwks {
            self.jwks_requested_at = Some(now);
        }
        self.inflight = Some((call.kind, now));
        Some(call)
    }

    fn discovery_call(&self) -> Option<Callout> {
        let s = &self.settings;
        Some(Callout {
            kind: CallKind::Discovery,
            method: "GET".into(),
            path: s.discovery_path(),
            authority: s.provider_authority.clone(),
            headers: vec![("accept".into(), "application/json".into())],
            body: None,
        })
    }

    /// Result of a background fetch started by [`poll`](Self::poll). Returns the error, if any,
    /// so the caller can log it.
    pub fn on_fetch(
        &mut self,
        kind: CallKind,
        status: u32,
        body: &[u8],
        now: u64,
    ) -> Result<(), DiscoveryError> {
        if self.inflight.map(|(k, _)| k) == Some(kind) {
            self.inflight = None;
        }
        let result = match kind {
            CallKind::Discovery => self.apply_discovery(status, body, now),
            CallKind::Jwks => self.apply_jwks(status, body),
            _ => Ok(()),
        };
        match &result {
            Ok(()) => {
                self.failures = 0;
                self.next_attempt = now;
                // Re-read the keys right after every discovery (re)load.
                self.jwks_stale = kind == CallKind::Discovery;
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.next_attempt = now + u64::from(self.failures.min(5)).pow(2);
                self.last_error = Some(e.to_string());
            }
        }
        result
    }

    fn apply_discovery(
        &mut self,
        status: u32,
        body: &[u8],
        now: u64,
    ) -> Result<(), DiscoveryError> {
        if status != 200 {
            return Err(DiscoveryError::Status(
                status,
                UpstreamFailure::of(body, self.settings.issuer.starts_with("https:")),
            ));
        }
        let d = Discovery::parse(body, &self.settings)?;
        self.discovery = Some(d);
        self.discovery_at = Some(now);
        Ok(())
    }

    fn apply_jwks(&mut self, status: u32, body: &[u8]) -> Result<(), DiscoveryError> {
        if status != 200 {
            return Err(DiscoveryError::JwksStatus(
                status,
                UpstreamFailure::of(body, self.settings.issuer.starts_with("https:")),
            ));
        }
        let j = Jwks::parse(body).map_err(|e| DiscoveryError::Jwks(e.to_string()))?;
        self.jwks = Some(j);
        self.last_error = None;
        Ok(())
    }

    /// A request saw an unknown `kid`: the JWKS call to make, unless one was made too recently.
    pub fn jwks_refetch(&mut self, now: u64) -> Option<Callout> {
        let min = self.settings.config.jwks_min_refetch_seconds;
        if self.jwks_requested_at.is_some_and(|at| now < at + min) {
            return None;
        }
        let uri = self.discovery.as_ref()?.jwks_uri.clone();
        let call = self.get(CallKind::Jwks, &uri)?;
        self.jwks_requested_at = Some(now);
        Some(call)
    }

    /// Result of a JWKS refetch made for a request.
    pub fn on_jwks_refetch(&mut self, status: u32, body: &[u8]) -> Result<(), DiscoveryError> {
        let r = self.apply_jwks(status, body);
        if let Err(e) = &r {
            self.last_error = Some(e.to_string());
        }
        r
    }

    pub fn token_hash(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    pub fn cached_bearer(&mut self, hash: &[u8; 32], now: u64) -> Option<Arc<Claims>> {
        match self.bearer_cache.get(hash) {
            Some(c) if c.exp > now => Some(c.claims.clone()),
            Some(_) => {
                self.bearer_cache.pop(hash);
                None
            }
            None => None,
        }
    }

    pub fn cache_bearer(&mut self, hash: [u8; 32], claims: Arc<Claims>, exp: u64) {
        self.bearer_cache.put(hash, CachedToken { claims, exp });
    }

    pub fn bearer_cache_len(&self) -> usize {
        self.bearer_cache.len()
    }
}

#[cfg(test)]
mod upstream_failure_tests {
    use super::UpstreamFailure;

    #[test]
    fn envoys_transport_failure_is_named_and_provider_bodies_are_not() {
        let envoy = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end";
        let shown = UpstreamFailure::of(envoy, true).to_string();
        assert!(shown.contains("CERTIFICATE_VERIFY_FAILED"), "{shown}");
        assert!(!shown.contains("reset reason"), "{shown}");
        // Envoy's callout replies often lack the TLS reason: an https provider gets the hint.
        let bare = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
        assert!(UpstreamFailure::of(bare, true)
            .to_string()
            .contains("certificate chains to a CA"));
        assert!(!UpstreamFailure::of(bare, false)
            .to_string()
            .contains("certificate"));
        assert_eq!(
            UpstreamFailure::of(b"no healthy upstream", true).to_string(),
            " (Envoy: no healthy upstream)"
        );
        // Whatever the provider itself answered stays out of logs.
        assert_eq!(
            UpstreamFailure::of(b"<html>secret-ish</html>", true).to_string(),
            ""
        );
        assert_eq!(UpstreamFailure::of(&[0xff, 0xfe], true).to_string(), "");
        // Control characters cannot forge log lines; length is bounded.
        let long = format!("no healthy upstream\r\x1b[31m{}", "x".repeat(1000));
        let shown = UpstreamFailure::of(long.as_bytes(), false).to_string();
        assert!(
            !shown.contains('\r') && !shown.contains('\x1b'),
            "{shown:?}"
        );
        assert!(shown.len() < 230, "{}", shown.len());
    }
}
