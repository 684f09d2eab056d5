//! The rate-limit filter's config: JSON, unknown fields rejected, every error names its field.
//!
//! The structs are public and serde-serializable so a translator (e.g. from Envoy Gateway's
//! BackendTrafficPolicy) can emit them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest `requests` or `burst`: keeps the fixed-point bucket math inside `u64`.
pub const MAX_REQUESTS: u64 = 1_000_000_000;
/// Largest number of bucket slots per local rule.
pub const MAX_SLOTS: u32 = 1 << 20;
/// Largest number of buckets in one slot.
pub const MAX_SLOT_ENTRIES: u32 = 64;

/// Why a config was rejected. `Display` starts with the field path, so one log line says what
/// to fix: `rules[1].limit.requests: must be at least 1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The whole filter config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How the client IP (key `client_ip`) is found.
    #[serde(default)]
    pub client_ip: ClientIpConfig,
    /// Every matching rule is checked; the strictest decides.
    pub rules: Vec<Rule>,
    /// Rate-limit headers on limited and passed responses.
    #[serde(default)]
    pub response_headers: ResponseHeaders,
    /// Count and log, never limit.
    #[serde(default)]
    pub shadow: bool,
    /// Status of a limited response (default 429).
    #[serde(default = "default_status")]
    pub status: u16,
    /// The rate-limit service, required when any rule has `scope: global`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalConfig>,
    /// Shared-data layout and contention handling of local rules.
    #[serde(default)]
    pub local: LocalConfig,
    /// Buckets are shared between policies with the same namespace (and the same rule name and
    /// limit). Default: derived from the config text, so each distinct policy has its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

fn default_status() -> u16 {
    429
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpConfig {
    /// Like Envoy's `xff_num_trusted_hops`: the client is the (N+1)th address from the right of
    /// X-Forwarded-For as the filter sees it; with too few entries, the downstream address.
    #[serde(default)]
    pub trusted_hops: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    /// When absent, the rule matches every request.
    #[serde(default, rename = "match", skip_serializing_if = "Match::is_empty")]
    pub matcher: Match,
    /// Parts of the bucket key; empty means one bucket for all matching requests.
    #[serde(default)]
    pub key: Vec<KeyPart>,
    pub limit: Limit,
    /// Bucket capacity (local scope only); defaults to `limit.requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    #[serde(default)]
    pub scope: Scope,
}

impl Rule {
    /// Bucket capacity: `burst`, else `limit.requests`.
    pub fn capacity(&self) -> u64 {
        self.burst.unwrap_or(self.limit.requests)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Uppercase HTTP methods; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Every listed header must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

impl Match {
    pub fn is_empty(&self) -> bool {
        self.path_prefix.is_none() && self.methods.is_empty() && self.headers.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    /// Exact value; when absent the header only has to be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One part of a bucket key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum KeyPart {
    ClientIp,
    /// Lowercase header name.
    Header(String),
    Path,
    Method,
    Authority,
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::ClientIp => f.write_str("client_ip"),
            KeyPart::Header(n) => write!(f, "header:{n}"),
            KeyPart::Path => f.write_str("path"),
            KeyPart::Method => f.write_str("method"),
            KeyPart::Authority => f.write_str("authority"),
        }
    }
}

impl From<KeyPart> for String {
    fn from(k: KeyPart) -> String {
        k.to_string()
    }
}

impl TryFrom<String> for KeyPart {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "client_ip" => Ok(KeyPart::ClientIp),
            "path" => Ok(KeyPart::Path),
            "method" => Ok(KeyPart::Method),
            "authority" => Ok(KeyPart::Authority),
            other => match other.strip_prefix("header:") {
                Some(name) if is_token(name) => Ok(KeyPart::Header(name.to_ascii_lowercase())),
                Some(name) => Err(format!("invalid header name {name:?} in key {other:?}")),
                None => Err(format!(
                    "unknown key {other:?} (use client_ip, header:NAME, path, method or authority)"
                )),
            },
        }
    }
}

/// An HTTP token (RFC 9110), the shape of a header name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub requests: u64,
    pub unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    pub fn millis(self) -> u64 {
        match self {
            Unit::Second => 1_000,
            Unit::Minute => 60_000,
            Unit::Hour => 3_600_000,
            Unit::Day => 86_400_000,
        }
    }

    pub fn seconds(self) -> u64 {
        self.millis() / 1000
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Local,
    Global,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseHeaders {
    /// `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset`.
    #[default]
    Draft03,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// Envoy cluster (HTTP/2) of the rate-limit service.
    pub cluster: String,
    pub domain: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What a request gets when the service errs, times out or answers UNKNOWN.
    #[serde(default)]
    pub failure_mode: FailureMode,
}

fn default_timeout_ms() -> u64 {
    20
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Shared-data slots per local rule; keys are hashed onto them, which bounds memory.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Buckets one slot holds; when full, an idle (refilled) bucket is dropped first, else the
    /// fullest one (counted in `portcullis_ratelimit_evictions_total`).
    #[serde(default = "default_slot_entries")]
    pub slot_entries: u32,
    /// Compare-and-swap attempts per bucket update before `on_contention` applies.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Decision when every attempt lost the race (counted in
    /// `portcullis_ratelimit_cas_fallback_total`).
    #[serde(default)]
    pub on_contention: ContentionFallback,
    /// How often each worker sweeps idle buckets.
    #[serde(default = "default_gc_interval_ms")]
    pub gc_interval_ms: u64,
}

/// Contention fallback. Default `deny`: the filter never fails open silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentionFallback {
    Allow,
    #[default]
    Deny,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            slots: default_slots(),
            slot_entries: default_slot_entries(),
            max_retries: default_max_retries(),
            on_contention: ContentionFallback::Deny,
            gc_interval_ms: default_gc_interval_ms(),
        }
    }
}

fn default_slots() -> u32 {
    4096
}
fn default_slot_entries() -> u32 {
    8
}
fn default_max_retries() -> u32 {
    64
}
fn default_gc_interval_ms() -> u64 {
    1000
}

impl Config {
    /// Parse and validate JSON config.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new(
                "config",
                "missing (at least `rules` is required)",
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." || path == "?" {
                "config".to_string()
            } else {
                path
            };
            ConfigError::new(path, e.into_inner().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(200..=599).contains(&self.status) {
            return Err(ConfigError::new(
                "status",
                "must be an HTTP status between 200 and 599",
            ));
        }
        if self.rules.is_empty() {
            return Err(ConfigError::new("rules", "at least one rule is required"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let f = |s: &str| format!("rules[{i}].{s}");
            if r.name.trim().is_empty() {
                return Err(ConfigError::new(f("name"), "must not be empty"));
            }
            if !names.insert(r.name.as_str()) {
                return Err(ConfigError::new(
                    f("name"),
                    format!("duplicate rule name {:?}", r.name),
                ));
            }
            if r.limit.requests == 0 || r.limit.requests > MAX_REQUESTS {
                return Err(ConfigError::new(
                    f("limit.requests"),
                    format!("must be between 1 and {MAX_REQUESTS}"),
                ));
            }
            if let Some(b) = r.burst {
                if r.scope == Scope::Global {
                    return Err(ConfigError::new(
                        f("burst"),
                        "applies to scope local only (global limits are windows)",
                    ));
                }
                if b == 0 || b > MAX_REQUESTS {
                    return Err(ConfigError::new(
                        f("burst"),
                        format!("must be between 1 and {MAX_REQUESTS}"),
                    ));
                }
            }
            for (j, m) in r.matcher.methods.iter().enumerate() {
                if m.is_empty() || !is_token(m) || m.bytes().any(|b| b.is_ascii_lowercase()) {
                    return Err(ConfigError::new(
                        f(&format!("match.methods[{j}]")),
                        format!("{m:?} is not an uppercase HTTP method"),
                    ));
                }
            }
            for (j, h) in r.matcher.headers.iter().enumerate() {
                if !is_token(&h.name) {
                    return Err(ConfigError::new(
                        f(&format!("match.headers[{j}].name")),
                        format!("invalid header name {:?}", h.name),
                    ));
                }
            }
            if r.matcher
                .path_prefix
                .as_deref()
                .is_some_and(|p| !p.starts_with('/'))
            {
                return Err(ConfigError::new(
                    f("match.path_prefix"),
                    "must start with '/'",
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for (j, k) in r.key.iter().enumerate() {
                if !seen.insert(k) {
                    return Err(ConfigError::new(
                        f(&format!("key[{j}]")),
                        format!("duplicate key part {k}"),
                    ));
                }
            }
            if r.scope == Scope::Global && self.global.is_none() {
                return Err(ConfigError::new(
                    f("scope"),
                    "is global but the config has no `global` block (cluster, domain)",
                ));
            }
        }
        if let Some(g) = &self.global {
            if g.cluster.trim().is_empty() {
                return Err(ConfigError::new("global.cluster", "must not be empty"));
            }
            if g.domain.trim().is_empty() {
                return Err(ConfigError::new("global.domain", "must not be empty"));
            }
            if g.timeout_ms == 0 || g.timeout_ms > 60_000 {
                return Err(ConfigError::new(
                    "global.timeout_ms",
                    "must be between 1 and 60000",
                ));
            }
        }
        let l = &self.local;
        if l.slots == 0 || l.slots > MAX_SLOTS {
            return Err(ConfigError::new(
                "local.slots",
                format!("must be between 1 and {MAX_SLOTS}"),
            ));
        }
        if l.slot_entries == 0 || l.slot_entries > MAX_SLOT_ENTRIES {
            return Err(ConfigError::new(
                "local.slot_entries",
                format!("must be between 1 and {MAX_SLOT_ENTRIES}"),
            ));
        }
        if l.max_retries == 0 || l.max_retries > 10_000 {
            return Err(ConfigError::new(
                "local.max_retries",
                "must be between 1 and 10000",
            ));
        }
        if l.gc_interval_ms < 100 || l.gc_interval_ms > 3_600_000 {
            return Err(ConfigError::new(
                "local.gc_interval_ms",
                "must be between 100 and 3600000",
            ));
        }
        if self
            .namespace
            .as_deref()
            .is_some_and(|n| n.is_empty() || n.len() > 256)
        {
            return Err(ConfigError::new("namespace", "must be 1 to 256 characters"));
        }
        Ok(())
    }

    pub fn has_global(&self) -> bool {
        self.rules.iter().any(|r| r.scope == Scope::Global)
    }

    pub fn has_local(&self) -> bool {
        self.rules.iter().any(|r| r.scope == Scope::Local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Config, ConfigError> {
        Config::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn issue_example_parses_with_defaults() {
        let cfg = parse(json!({
          "client_ip": { "trusted_hops": 1 },
          "rules": [
            { "name": "per-ip",
              "match": { "path_prefix": "/api", "methods": ["GET", "POST"], "headers": [{ "name": "x-tier", "value": "free" }] },
              "key": ["client_ip"], "limit": { "requests": 100, "unit": "minute" }, "burst": 20, "scope": "local" },
            { "name": "per-key-global", "key": ["header:X-Api-Key", "path"],
              "limit": { "requests": 1000, "unit": "hour" }, "scope": "global" }
          ],
          "response_headers": "draft03", "shadow": false,
          "global": { "cluster": "ratelimit", "domain": "portcullis", "timeout_ms": 20, "failure_mode": "allow" }
        }))
        .unwrap();
        assert_eq!(cfg.client_ip.trusted_hops, 1);
        assert_eq!(cfg.rules[0].capacity(), 20);
        assert_eq!(
            cfg.rules[1].key,
            vec![KeyPart::Header("x-api-key".into()), KeyPart::Path]
        );
        assert_eq!(cfg.status, 429);
        assert_eq!(cfg.local, LocalConfig::default());
        // Round trip: what a translator emits parses back to the same thing.
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(Config::from_json(text.as_bytes()).unwrap(), cfg);
    }

    #[test]
    fn burst_defaults_to_requests() {
        let cfg =
            parse(json!({"rules": [{"name": "a", "limit": {"requests": 7, "unit": "second"}}]}))
                .unwrap();
        assert_eq!(cfg.rules[0].capacity(), 7);
        assert_eq!(cfg.rules[0].scope, Scope::Local);
        assert_eq!(cfg.response_headers, ResponseHeaders::Draft03);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"rules": [{"name": "a", "limit": {"requests": 1, "unit": "minute"}, "bogus": 1}]}),
                "rules[0]",
            ),
            (
                json!({"rules": [{"name": "a", "limit": {"requests": "x", "unit": "minute"}}]}),
                "rules[0].limit.requests",
            ),
            (
                json!({"rules": [{"name": "a", "limit": {"requests": 0, "unit": "minute"}}]}),
                "rules[0].limit.requests",
            ),
            (
                json!({"rules": [{"name": "a", "limit": {"requests": 1, "unit": "week"}}]}),
                "rules[0].limit.unit",
            ),
            (
                json!({"rules": [{"name": "a", "key": ["cookie"], "limit": {"requests": 1, "unit": "minute"}}]}),
                "rules[0].key[0]",
            ),
            (
                json!({"rules": [{"name": "a", "limit": {"requests": 1, "unit": "minute"}, "scope": "global"}]}),
                "rules[0].scope",
            ),
            (
                json!({"rules": [
                {"name": "a", "limit": {"requests": 1, "unit": "minute"}},
                {"name": "a", "limit": {"requests": 1, "unit": "minute"}}]}),
                "rules[1].name",
            ),
            (
                json!({"rules": [{"name": "a", "limit": {"requests": 1, "unit": "minute"}, "burst": 0}]}),
                "rules[0].burst",
            ),
            (
                json!({"rules": [{"name": "a", "match": {"methods": ["get"]}, "limit": {"requests": 1, "unit": "minute"}}]}),
                "rules[0].match.methods[0]",
            ),
            (json!({"rules": []}), "rules"),
            (
                json!({"rules": [{"name": "a", "limit": {"requests": 1, "unit": "minute"}}], "local": {"slots": 0}}),
                "local.slots",
            ),
            (
                json!({"rules": [{"name": "a", "limit": {"requests": 1, "unit": "minute"}}], "global": {"cluster": "", "domain": "d"}}),
                "global.cluster",
            ),
            (
                json!({"rules": [{"name": "a", "limit": {"requests": 1, "unit": "minute"}}], "client_ip": {"hops": 1}}),
                "client_ip",
            ),
        ];
        for (cfg, field) in cases {
            let err = parse(cfg.clone()).expect_err(&cfg.to_string());
            assert!(
                err.field.starts_with(field),
                "{cfg}: got {err}, want field {field}"
            );
        }
        assert_eq!(Config::from_json(b"  ").unwrap_err().field, "config");
        assert_eq!(Config::from_json(b"{not json").unwrap_err().field, "config");
    }
}
