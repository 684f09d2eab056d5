//! OIDC filter configuration: the public JSON shape and its validation.
//!
//! [`OidcConfig`] is what users (or a translator) write; [`Settings`] is the validated form
//! the filter runs on (decoded secret, derived cookie names, parsed URLs).

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The filter's JSON config. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL; discovery is read from `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// Envoy cluster that reaches the provider (discovery, JWKS, token endpoint).
    pub provider_cluster: String,
    pub client_id: String,
    /// Confidential clients send it with HTTP Basic; public clients leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Absolute callback URL registered at the provider; its path is intercepted.
    pub redirect_uri: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logout: Option<LogoutConfig>,
    pub cookie: CookieConfig,
    /// Requests under these path prefixes (whole segments) skip authentication entirely.
    /// Paths with `..`, `;`, a backslash or percent-encoded `/`, `\`, `.`, `%` never pass through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pass_through: Vec<PathMatch>,
    /// Requests under these path prefixes (whole segments) get 401 JSON instead of a login
    /// redirect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_paths: Vec<PathMatch>,
    #[serde(default)]
    pub forward: ForwardConfig,
    /// Claim name -> upstream header name. Arrays are joined with commas.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Claim name -> accepted values: the claim must contain at least one of them, else 403.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub require: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub bearer: BearerConfig,
    /// Allowed clock difference with the provider for `exp`, `iat`, `nbf`.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    /// How often discovery and JWKS are re-read after the first success.
    #[serde(default = "default_discovery_refresh")]
    pub discovery_refresh_seconds: u64,
    /// Minimum time between JWKS refetches triggered by an unknown `kid`.
    #[serde(default = "default_jwks_min_refetch")]
    pub jwks_min_refetch_seconds: u64,
    /// Timeout of every call to the provider.
    #[serde(default = "default_timeout_ms")]
    pub provider_timeout_ms: u64,
    /// Lifetime of the login-flow cookie (time the user has to log in).
    #[serde(default = "default_flow_ttl")]
    pub flow_ttl_seconds: u64,
    /// Session lifetime when the token response has no `expires_in`.
    #[serde(default = "default_session_ttl")]
    pub default_session_seconds: u64,
    /// Verified bearer tokens cached per worker.
    #[serde(default = "default_bearer_cache")]
    pub bearer_cache_size: usize,
    /// `:authority` sent to the provider; defaults to the issuer's host\[:port\].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_authority: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogoutConfig {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_logout_redirect_uri: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieConfig {
    /// Base name; the filter appends a hash of issuer, client and redirect URI.
    #[serde(default = "default_cookie_name")]
    pub name: String,
    /// Base64 (standard or URL-safe) of exactly 32 random bytes, or a list of them: the first
    /// seals, every one opens (key rotation).
    pub secret: CookieSecret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default)]
    pub same_site: SameSite,
    #[serde(default = "default_max_chunks")]
    pub max_chunks: usize,
    /// Mark cookies `Secure` (needed for `SameSite=None`). Browsers accept Secure cookies
    /// from `http://localhost` and `http://127.0.0.1`.
    #[serde(default = "default_true")]
    pub secure: bool,
    #[serde(default = "default_cookie_path")]
    pub path: String,
    /// Absolute session lifetime from login, refreshes included.
    #[serde(default, skip_serializing_if = "MaxAge::is_default")]
    pub max_age: MaxAge,
}

/// `cookie.secret`: one key or several (the first seals, all open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CookieSecret {
    One(String),
    Many(Vec<String>),
}

impl CookieSecret {
    pub fn keys(&self) -> &[String] {
        match self {
            CookieSecret::One(s) => std::slice::from_ref(s),
            CookieSecret::Many(v) => v,
        }
    }
}

impl<'de> Deserialize<'de> for CookieSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CookieSecret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64 key or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<CookieSecret, E> {
                Ok(CookieSecret::One(s.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<CookieSecret, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = seq.next_element::<String>()? {
                    keys.push(k);
                }
                Ok(CookieSecret::Many(keys))
            }
        }
        d.deserialize_any(V)
    }
}

impl From<String> for CookieSecret {
    fn from(s: String) -> Self {
        CookieSecret::One(s)
    }
}

impl From<&str> for CookieSecret {
    fn from(s: &str) -> Self {
        CookieSecret::One(s.to_string())
    }
}

/// `cookie.max_age`: seconds as a number, or a duration string such as `"24h"`, `"90m"`,
/// `"1h30m"`, `"3600s"` (units `h`, `m`, `s`). Serialized as `"<seconds>s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge(pub u64);

impl MaxAge {
    pub const DEFAULT_SECS: u64 = 24 * 3600;

    pub fn secs(self) -> u64 {
        self.0
    }

    fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT_SECS
    }
}

impl Default for MaxAge {
    fn default() -> Self {
        MaxAge(Self::DEFAULT_SECS)
    }
}

impl Serialize for MaxAge {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", self.0))
    }
}

impl<'de> Deserialize<'de> for MaxAge {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MaxAge;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("seconds or a duration string like \"24h\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<MaxAge, E> {
                Ok(MaxAge(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<MaxAge, E> {
                u64::try_from(n)
                    .map(MaxAge)
                    .map_err(|_| E::custom("must be positive"))
            }
            fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<MaxAge, E> {
                parse_duration(t).map(MaxAge).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `1h30m`, `45m`, `3600s`, `24h`: one or more `<digits><h|m|s>` groups, each unit at most once.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let err = || format!("{text:?} is not a duration like \"24h\", \"90m\" or \"1h30m\"");
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut seen = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(err()),
        };
        if digits.is_empty() || seen.contains(c) {
            return Err(err());
        }
        seen.push(c);
        let n: u64 = digits.parse().map_err(|_| err())?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() || seen.is_empty() {
        return Err(err());
    }
    Ok(total)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    pub path_prefix: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Send the access token upstream as `Authorization: Bearer`.
    #[serde(default)]
    pub access_token: bool,
    /// Send the ID token upstream in this header.
    #[serde(default)]
    pub id_token_header: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerConfig {
    #[serde(default)]
    pub accept: bool,
    /// Accepted `aud` values; empty means the client id.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Extra `azp` values accepted on tokens with several audiences (besides the client id
    /// and `audiences`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorized_parties: Vec<String>,
    /// Strict RFC 9068: only tokens whose header `typ` is `at+jwt` (or `application/at+jwt`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_at_jwt: bool,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into()]
}
fn default_clock_skew() -> u64 {
    60
}
fn default_discovery_refresh() -> u64 {
    3600
}
fn default_jwks_min_refetch() -> u64 {
    30
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_flow_ttl() -> u64 {
    600
}
fn default_session_ttl() -> u64 {
    300
}
fn default_bearer_cache() -> usize {
    1024
}
fn default_cookie_name() -> String {
    "portcullis".into()
}
fn default_max_chunks() -> usize {
    8
}
fn default_true() -> bool {
    true
}
fn default_cookie_path() -> String {
    "/".into()
}

/// An invalid config: the field (JSON path) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("oidc config: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A parsed absolute http(s) URL split into the parts the filter needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub scheme: String,
    /// host\[:port\] as it appears in the URL (port omitted when default).
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
    pub path: String,
}

impl HttpUrl {
    /// Parses an absolute `http(s)` URL. Control characters are refused although the URL
    /// parser would drop tabs and line breaks: callers put the string itself in headers
    /// (`location` of the login and logout redirects), where they would split the header.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.bytes().any(|b| b.is_ascii_control()) {
            return Err("must not contain control characters".into());
        }
        let u = url::Url::parse(s).map_err(|e| e.to_string())?;
        if u.scheme() != "http" && u.scheme() != "https" {
            return Err(format!("scheme must be http or https, got {}", u.scheme()));
        }
        let host = u.host_str().ok_or("no host")?;
        let authority = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let path = u.path().to_string();
        let path_and_query = match u.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        Ok(Self {
            scheme: u.scheme().into(),
            authority,
            path_and_query,
            path,
        })
    }

    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// The validated config the filter runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: OidcConfig,
    pub issuer: String,
    pub issuer_url: HttpUrl,
    pub redirect: HttpUrl,
    pub provider_authority: String,
    /// Sealing keys: the first seals, all open.
    pub keys: Vec<[u8; 32]>,
    /// Session cookie base name: chunks are `<session_cookie>-0..N`. Starts with `__Host-`
    /// when the cookies are `Secure`, host-only and `Path=/`.
    pub session_cookie: String,
    /// The one login-flow cookie of this policy.
    pub flow_cookie: String,
    pub scope: String,
    pub bearer_audiences: Vec<String>,
    /// `azp` values accepted on bearer tokens with several audiences.
    pub bearer_authorized_parties: Vec<String>,
}

/// Whether a header name is safe to set (lowercase token characters only).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(':')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Settings {
    /// Parses and validates JSON config; the error names the offending field.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let config: OidcConfig = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| bad(&e.path().to_string(), e.inner().to_string()))?;
        Self::new(config)
    }

    pub fn new(config: OidcConfig) -> Result<Self, ConfigError> {
        let issuer = config.issuer.trim_end_matches('/').to_string();
        let issuer_url = HttpUrl::parse(&config.issuer).map_err(|e| bad("issuer", e))?;
        if config.provider_cluster.is_empty() {
            return Err(bad("provider_cluster", "must not be empty"));
        }
        if config.client_id.is_empty() {
            return Err(bad("client_id", "must not be empty"));
        }
        let redirect = HttpUrl::parse(&config.redirect_uri).map_err(|e| bad("redirect_uri", e))?;
        if redirect.path == "/" {
            return Err(bad(
                "redirect_uri",
                "needs a dedicated callback path, not /",
            ));
        }
        if !config.scopes.iter().any(|s| s == "openid") {
            return Err(bad("scopes", "must include \"openid\""));
        }
        if let Some(s) = config
            .scopes
            .iter()
            .find(|s| s.is_empty() || s.contains(' '))
        {
            return Err(bad("scopes", format!("invalid scope {s:?}")));
        }
        if let Some(l) = &config.logout {
            if !l.path.starts_with('/') {
                return Err(bad("logout.path", "must start with /"));
            }
            if l.path == redirect.path {
                return Err(bad("logout.path", "must differ from the redirect_uri path"));
            }
            if let Some(p) = &l.post_logout_redirect_uri {
                HttpUrl::parse(p).map_err(|e| bad("logout.post_logout_redirect_uri", e))?;
            }
        }
        let c = &config.cookie;
        if !valid_cookie_name(&c.name) {
            return Err(bad("cookie.name", "use letters, digits, '-', '_' or '.'"));
        }
        let keys = decode_secrets(&c.secret)?;
        let host_prefix = c.secure && c.domain.is_none() && c.path == "/";
        let lower = c.name.to_ascii_lowercase();
        if lower.starts_with("__host-") && !host_prefix {
            return Err(bad(
                "cookie.name",
                "a __Host- name needs cookie.secure, no cookie.domain and cookie.path \"/\"",
            ));
        }
        if lower.starts_with("__secure-") && !c.secure {
            return Err(bad("cookie.name", "a __Secure- name needs cookie.secure"));
        }
        if c.max_age.secs() == 0 {
            return Err(bad("cookie.max_age", "must be positive"));
        }
        if !(1..=32).contains(&c.max_chunks) {
            return Err(bad("cookie.max_chunks", "must be between 1 and 32"));
        }
        if c.same_site == SameSite::None && !c.secure {
            return Err(bad(
                "cookie.same_site",
                "None requires cookie.secure = true",
            ));
        }
        if !c.path.starts_with('/') || c.path.contains(';') {
            return Err(bad("cookie.path", "must start with / and contain no ';'"));
        }
        if let Some(d) = &c.domain {
            if d.is_empty() || d.contains(';') || d.contains(' ') {
                return Err(bad("cookie.domain", "invalid domain"));
            }
        }
        for (list, paths) in [
            ("pass_through", &config.pass_through),
            ("api_paths", &config.api_paths),
        ] {
            for (i, p) in paths.iter().enumerate() {
                let field = format!("{list}[{i}].path_prefix");
                if !p.path_prefix.starts_with('/') {
                    return Err(bad(&field, "must start with /"));
                }
                if p.path_prefix.contains(['?', '#']) {
                    return Err(bad(&field, "a path only, without query or fragment"));
                }
                if is_ambiguous_path(&p.path_prefix) {
                    return Err(bad(
                        &field,
                        "must not contain '..', ';', '\\', control characters or percent-encoded '/', '\\', '.' or '%'",
                    ));
                }
            }
        }
        for (claim, header) in &config.claims_to_headers {
            if !valid_header_name(header) {
                return Err(bad(
                    &format!("claims_to_headers.{claim}"),
                    "header name must be lowercase letters, digits, '-' or '_'",
                ));
            }
        }
        if let Some(h) = &config.forward.id_token_header {
            if !valid_header_name(h) {
                return Err(bad(
                    "forward.id_token_header",
                    "header name must be lowercase letters, digits, '-' or '_'",
                ));
            }
        }
        for (claim, values) in &config.require {
            if values.is_empty() {
                return Err(bad(
                    &format!("require.{claim}"),
                    "list at least one accepted value",
                ));
            }
        }
        if config.bearer_cache_size == 0 {
            return Err(bad("bearer_cache_size", "must be at least 1"));
        }
        if config.provider_timeout_ms == 0 {
            return Err(bad("provider_timeout_ms", "must be positive"));
        }
        let provider_authority = config
            .provider_authority
            .clone()
            .unwrap_or_else(|| issuer_url.authority.clone());

        // Names derive from issuer, client and callback, so policies sharing a provider (or a
        // cookie domain) never read or overwrite each other's cookies.
        let mut h = Sha256::new();
        h.update(issuer.as_bytes());
        h.update([0]);
        h.update(config.client_id.as_bytes());
        h.update([0]);
        h.update(config.redirect_uri.as_bytes());
        let digest = h.finalize();
        let suffix: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        // RFC 6265bis __Host-: the browser then refuses the cookie from any other host or
        // without Secure, so a sibling subdomain or plain-http page cannot plant or shadow it.
        let prefix =
            if host_prefix && !lower.starts_with("__host-") && !lower.starts_with("__secure-") {
                "__Host-"
            } else {
                ""
            };
        let session_cookie = format!("{prefix}{}-{suffix}", c.name);
        let flow_cookie = format!("{session_cookie}-flow");
        let scope = config.scopes.join(" ");
        let bearer_audiences = if config.bearer.audiences.is_empty() {
            vec![config.client_id.clone()]
        } else {
            config.bearer.audiences.clone()
        };
        let mut bearer_authorized_parties = vec![config.client_id.clone()];
        for a in bearer_audiences
            .iter()
            .chain(&config.bearer.authorized_parties)
        {
            if !bearer_authorized_parties.contains(a) {
                bearer_authorized_parties.push(a.clone());
            }
        }
        Ok(Self {
            issuer,
            issuer_url,
            redirect,
            provider_authority,
            keys,
            session_cookie,
            flow_cookie,
            scope,
            bearer_audiences,
            bearer_authorized_parties,
            config,
        })
    }

    /// The discovery document path on the provider.
    pub fn discovery_path(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer_url.path.trim_end_matches('/')
        )
    }

    /// Whether the request `:path` skips authentication. Fails closed: a path an upstream
    /// could normalize differently (`..`, `;`, encoded separators) never passes through.
    pub fn is_pass_through(&self, path: &str) -> bool {
        let path = path_only(path);
        !is_ambiguous_path(path)
            && self
                .config
                .pass_through
                .iter()
                .any(|p| prefix_matches(&p.path_prefix, path))
    }

    pub fn is_api_path(&self, path: &str) -> bool {
        let path = path_only(path);
        self.config
            .api_paths
            .iter()
            .any(|p| prefix_matches(&p.path_prefix, path))
    }
}

/// The path of a `:path`, without query or fragment.
fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or_default()
}

/// Gateway API `PathPrefix`: whole segments, a trailing `/` in the prefix ignored.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A path that upstreams may decode or normalize into something else: dot segments,
/// `;` parameters, backslashes, control bytes, or percent-encoded `/`, `\`, `.` and `%`.
pub fn is_ambiguous_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("..")
        || lower.contains(';')
        || lower.contains('\\')
        || lower.bytes().any(|b| b.is_ascii_control())
        || ["%2f", "%5c", "%2e", "%25"]
            .iter()
            .any(|e| lower.contains(e))
}

/// Most keys `cookie.secret` may list: each one is tried when a value's key id is unknown.
const MAX_SECRETS: usize = 8;

fn decode_secrets(secret: &CookieSecret) -> Result<Vec<[u8; 32]>, ConfigError> {
    let list = secret.keys();
    if list.is_empty() {
        return Err(bad("cookie.secret", "list at least one key"));
    }
    if list.len() > MAX_SECRETS {
        return Err(bad(
            "cookie.secret",
            format!("at most {MAX_SECRETS} keys, got {}", list.len()),
        ));
    }
    let many = matches!(secret, CookieSecret::Many(_));
    let mut keys: Vec<[u8; 32]> = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let field = if many {
            format!("cookie.secret[{i}]")
        } else {
            "cookie.secret".to_string()
        };
        let key = decode_secret(s).map_err(|e| bad(&field, e))?;
        if keys.contains(&key) {
            return Err(bad(&field, "the same key is listed twice"));
        }
        keys.push(key);
    }
    Ok(keys)
}

fn decode_secret(s: &str) -> Result<[u8; 32], String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
        .ok_or_else(|| "not base64".to_string())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("must decode to 32 bytes, got {}", bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> serde_json::Value {
        serde_json::json!({
            "issuer": "https://iam.example.com/realms/picluster",
            "provider_cluster": "oidc-idp",
            "client_id": "longhorn",
            "client_secret": "s3cret",
            "redirect_uri": "https://longhorn.example.com/oauth2/callback",
            "scopes": ["openid", "email", "groups"],
            "logout": { "path": "/logout", "post_logout_redirect_uri": "https://longhorn.example.com/" },
            "cookie": { "name": "portcullis-session", "secret": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "domain": null, "same_site": "Lax", "max_chunks": 8 },
            "pass_through": [{ "path_prefix": "/healthz" }],
            "api_paths": [{ "path_prefix": "/api" }],
            "forward": { "access_token": true, "id_token_header": null },
            "claims_to_headers": { "email": "x-user-email", "groups": "x-user-groups" },
            "require": { "groups": ["admins"] },
            "bearer": { "accept": true, "audiences": ["longhorn"] }
        })
    }

    #[test]
    fn issue_example_parses_and_round_trips() {
        let s = Settings::from_json(sample().to_string().as_bytes()).unwrap();
        assert_eq!(s.issuer, "https://iam.example.com/realms/picluster");
        assert_eq!(s.redirect.path, "/oauth2/callback");
        assert_eq!(s.provider_authority, "iam.example.com");
        assert_eq!(
            s.discovery_path(),
            "/realms/picluster/.well-known/openid-configuration"
        );
        assert_eq!(s.keys[0][1], 1);
        assert!(s.session_cookie.starts_with("__Host-portcullis-session-"));
        assert_eq!(s.flow_cookie, format!("{}-flow", s.session_cookie));
        // Serializable for a translator, and the output parses back to the same config.
        let out = serde_json::to_string(&s.config).unwrap();
        let back = Settings::from_json(out.as_bytes()).unwrap();
        assert_eq!(back.config, s.config);
    }

    #[test]
    fn names_differ_per_client() {
        let a = Settings::from_json(sample().to_string().as_bytes()).unwrap();
        let mut v = sample();
        v["client_id"] = "hubble".into();
        let b = Settings::from_json(v.to_string().as_bytes()).unwrap();
        assert_ne!(a.session_cookie, b.session_cookie);
        assert_ne!(a.flow_cookie, b.flow_cookie);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            (
                "/cookie/secret",
                serde_json::json!("c2hvcnQ="),
                "cookie.secret",
            ),
            (
                "/cookie/max_chunks",
                serde_json::json!(0),
                "cookie.max_chunks",
            ),
            (
                "/redirect_uri",
                serde_json::json!("not a url"),
                "redirect_uri",
            ),
            (
                "/logout/post_logout_redirect_uri",
                serde_json::json!("https://longhorn.example.com/\r\nset-cookie: a=b"),
                "logout.post_logout_redirect_uri",
            ),
            ("/scopes", serde_json::json!(["email"]), "scopes"),
            (
                "/claims_to_headers",
                serde_json::json!({"email": "X-Bad Header"}),
                "claims_to_headers.email",
            ),
            (
                "/surprise",
                serde_json::json!(1),
                "unknown field `surprise`",
            ),
        ];
        for (ptr, val, field) in cases {
            let mut v = sample();
            let (parent, key) = ptr.rsplit_once('/').unwrap();
            let target = if parent.is_empty() {
                &mut v
            } else {
                v.pointer_mut(parent).unwrap()
            };
            target[key] = val;
            let err = Settings::from_json(v.to_string().as_bytes()).unwrap_err();
            assert!(err.to_string().contains(field), "{ptr}: {err}");
        }
        let mut v = sample();
        v["cookie"]["same_site"] = "None".into();
        v["cookie"]["secure"] = false.into();
        assert_eq!(
            Settings::from_json(v.to_string().as_bytes())
                .unwrap_err()
                .field,
            "cookie.same_site"
        );
    }

    #[test]
    fn secret_lists_and_max_age() {
        const A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        const B: &str = "Hx4dHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA";
        let parse = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = sample();
            edit(&mut v);
            Settings::from_json(v.to_string().as_bytes())
        };
        let s = parse(&|v| v["cookie"]["secret"] = serde_json::json!([B, A])).unwrap();
        assert_eq!(s.keys.len(), 2);
        assert_eq!((s.keys[0][0], s.keys[1][0]), (0x1f, 0));
        assert_eq!(s.config.cookie.max_age.secs(), 24 * 3600);
        let out = serde_json::to_value(&s.config).unwrap();
        assert_eq!(out["cookie"]["secret"], serde_json::json!([B, A]));
        assert!(
            out["cookie"].get("max_age").is_none(),
            "default not written"
        );
        for (secret, field) in [
            (serde_json::json!([]), "cookie.secret"),
            (serde_json::json!([A, "c2hvcnQ="]), "cookie.secret[1]"),
            (serde_json::json!([A, A]), "cookie.secret[1]"),
            (
                serde_json::json!([A, B, A, B, A, B, A, B, A]),
                "cookie.secret",
            ),
        ] {
            let err = parse(&|v| v["cookie"]["secret"] = secret.clone()).unwrap_err();
            assert_eq!(err.field, field, "{secret}");
        }
        for (text, secs) in [
            ("24h", 86400),
            ("90m", 5400),
            ("1h30m", 5400),
            ("3600s", 3600),
            ("9999999999999999999h", u64::MAX),
        ] {
            let s = parse(&|v| v["cookie"]["max_age"] = text.into()).unwrap();
            assert_eq!(s.config.cookie.max_age.secs(), secs, "{text}");
            // Written back as seconds, which parse to the same value.
            let back = serde_json::to_string(&s.config).unwrap();
            assert_eq!(
                Settings::from_json(back.as_bytes()).unwrap().config,
                s.config
            );
        }
        assert_eq!(
            parse(&|v| v["cookie"]["max_age"] = 600.into())
                .unwrap()
                .config
                .cookie
                .max_age
                .secs(),
            600
        );
        for bad in [
            serde_json::json!(0),
            serde_json::json!("0s"),
            serde_json::json!("1d"),
            serde_json::json!("h"),
            serde_json::json!("10"),
            serde_json::json!("1h1h"),
            serde_json::json!("99999999999999999999999s"),
            serde_json::json!(""),
            serde_json::json!(-5),
        ] {
            let err = parse(&|v| v["cookie"]["max_age"] = bad.clone()).unwrap_err();
            assert!(err.field.contains("max_age"), "{bad}: {err}");
        }
        let err = parse(&|v| v["cookie"]["max_age"] = "1d".into()).unwrap_err();
        assert!(err.reason.contains("like \"24h\""), "{err}");
        let err = parse(&|v| v["cookie"]["max_age"] = (-5).into()).unwrap_err();
        assert!(err.reason.contains("positive"), "{err}");
        let err = parse(&|v| v["cookie"]["secret"] = 5.into()).unwrap_err();
        assert!(
            err.field == "cookie.secret" && err.reason.contains("a base64 key or a list"),
            "{err}"
        );
    }
}
