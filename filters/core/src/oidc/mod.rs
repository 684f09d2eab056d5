//! OIDC login at the gateway: authorization code + PKCE, sealed and chunked session cookies,
//! refresh, logout, bearer JWTs, claims to headers.
//!
//! The flow is a host-independent state machine. Calls to the provider are asynchronous in
//! proxy-wasm, so [`RequestFlow`] returns [`Action::Call`] with a [`Callout`]; the glue performs
//! it (`dispatch_http_call`) and feeds the answer back through
//! [`RequestFlow::on_callout_response`]. Background discovery/JWKS fetches are driven by
//! [`Provider::poll`] on a timer.

#[cfg(feature = "oidc")]
pub mod config;
#[cfg(feature = "oidc")]
pub mod cookies;
#[cfg(feature = "oidc")]
mod flow;
#[cfg(feature = "oidc")]
pub mod fuzzing;
#[cfg(feature = "oidc")]
pub mod jwt;
#[cfg(feature = "oidc")]
pub mod provider;
#[cfg(feature = "oidc")]
pub mod seal;
pub mod session;
#[cfg(feature = "oidc")]
pub mod urls;

#[cfg(feature = "oidc")]
pub use config::{ConfigError, OidcConfig, Settings};
#[cfg(feature = "oidc")]
pub use flow::{RequestFlow, Session};
#[cfg(feature = "oidc")]
pub use provider::Provider;

/// What a provider call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    Discovery,
    Jwks,
    /// Authorization-code exchange at the token endpoint.
    Token,
    /// Refresh-token grant at the token endpoint.
    Refresh,
}

/// An HTTP call the glue must make to `provider_cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub kind: CallKind,
    pub method: String,
    /// Path and query on the provider.
    pub path: String,
    pub authority: String,
    /// Extra headers (lowercase names), e.g. `authorization`, `content-type`.
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

/// What the glue does after a call into the flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Let the request go upstream (headers were rewritten).
    Continue,
    /// A local response was sent; stop.
    Responded,
    /// Make this call, then call [`RequestFlow::on_callout_response`].
    Call(Callout),
}

/// Metric names (counters). Rejections are counted in the total and per reason as
/// `portcullis_oidc_rejected_<reason>_total`.
pub mod metrics {
    pub const LOGINS: &str = "portcullis_oidc_logins_total";
    pub const SESSIONS_VALID: &str = "portcullis_oidc_sessions_valid_total";
    pub const REFRESH: &str = "portcullis_oidc_refresh_total";
    pub const BEARER_VALID: &str = "portcullis_oidc_bearer_valid_total";
    pub const REJECTED: &str = "portcullis_oidc_rejected_total";

    pub fn rejected(reason: &str) -> String {
        format!("portcullis_oidc_rejected_{reason}_total")
    }

    /// Every reason the filter can count, so hosts can define all counters up front.
    pub const REASONS: &[&str] = &[
        "bad_state",
        "bad_session",
        "session_expired",
        "code_exchange_failed",
        "provider_error",
        "refresh_failed",
        "forbidden",
        "session_too_large",
        "not_ready",
        "malformed_token",
        "bad_alg",
        "unknown_kid",
        "no_key",
        "bad_signature",
        "bad_issuer",
        "bad_audience",
        "expired",
        "not_yet_valid",
        "bad_nonce",
        "bad_type",
        "bad_azp",
        "not_access_token",
        "session_mismatch",
        "cross_site_logout",
    ];
}

/// Constant-time equality for secrets (state, nonce).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
