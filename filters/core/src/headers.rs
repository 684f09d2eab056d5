//! headers: set, add and remove request and response headers, and add security headers.
//!
//! Per direction the operations run in this order: `remove`, `remove_matching`, `set`, `add`,
//! `set_if_absent`. On the response, the security preset runs last and only fills headers that
//! are still absent and that `response.remove` does not name: it never overwrites a header the
//! upstream (or the user's own `set`) put there.

use crate::config::{parse_json, regex_reason, ConfigError};
use crate::http::{is_pseudo_header, normalize_header_name, HeaderList};
use crate::{Direction, Host};
use regex::{RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;

/// Preset headers added to responses (counted per header).
pub const PRESET_ADDED_TOTAL: &str = "portcullis_headers_preset_added_total";
/// Preset headers not added because the response already had that header.
pub const PRESET_KEPT_TOTAL: &str = "portcullis_headers_preset_kept_total";
/// Every counter this filter writes, for hosts that define metrics up front.
pub const METRICS: &[&str] = &[PRESET_ADDED_TOTAL, PRESET_KEPT_TOTAL];

/// The operations for one direction, as the user writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Replace every value of the header (adds it when absent).
    pub set: HeaderList,
    /// Append a value, keeping existing ones.
    pub add: HeaderList,
    /// Delete headers by name.
    pub remove: Vec<String>,
    /// Delete headers whose name matches a regex (case-insensitive, unanchored).
    pub remove_matching: Vec<String>,
    /// Set the header only when it is absent.
    pub set_if_absent: HeaderList,
}

/// `security_headers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityHeaders {
    #[default]
    Off,
    Basic,
    Strict,
}

/// The filter's JSON config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    pub request: OpsConfig,
    pub response: OpsConfig,
    pub security_headers: SecurityHeaders,
}

/// Headers of the `basic` preset (HSTS separate: it depends on the request's scheme).
pub const BASIC: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("x-frame-options", "SAMEORIGIN"),
    ("content-security-policy", "frame-ancestors 'self'"),
    (
        "permissions-policy",
        "browsing-topics=(), camera=(self), geolocation=(self), microphone=(self), payment=(self), usb=(self)",
    ),
];
pub const BASIC_HSTS: &str = "max-age=31536000";

/// Headers of the `strict` preset.
pub const STRICT: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "frame-ancestors 'none'"),
    (
        "permissions-policy",
        "accelerometer=(), browsing-topics=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), \
         magnetometer=(), microphone=(), midi=(), payment=(), usb=()",
    ),
];
pub const STRICT_HSTS: &str = "max-age=63072000; includeSubDomains";

pub const HSTS: &str = "strict-transport-security";

/// Compiled operations for one direction.
#[derive(Debug, Default)]
struct Ops {
    remove: Vec<String>,
    remove_matching: Option<RegexSet>,
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
    set_if_absent: Vec<(String, String)>,
}

impl Ops {
    fn compile(dir: &str, c: &OpsConfig) -> Result<Self, ConfigError> {
        let mut remove = Vec::with_capacity(c.remove.len());
        for (i, name) in c.remove.iter().enumerate() {
            let field = format!("{dir}.remove[{i}]");
            let name = normalize_header_name(&field, name)?;
            // Envoy keeps a request's Host as the `:authority` pseudo-header and maps `host` to it.
            if dir == "request" && name == "host" {
                return Err(ConfigError::HeaderName {
                    field,
                    name,
                    reason: "the request's host is Envoy's :authority and cannot be removed"
                        .to_string(),
                });
            }
            remove.push(name);
        }
        for (i, pat) in c.remove_matching.iter().enumerate() {
            RegexBuilder::new(pat)
                .case_insensitive(true)
                .build()
                .map_err(|e| ConfigError::Regex {
                    field: format!("{dir}.remove_matching[{i}]"),
                    pattern: pat.clone(),
                    reason: regex_reason(&e),
                })?;
        }
        let remove_matching = if c.remove_matching.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(&c.remove_matching)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| ConfigError::Invalid {
                        field: format!("{dir}.remove_matching"),
                        reason: format!(
                            "the patterns together do not compile: {}",
                            regex_reason(&e)
                        ),
                    })?,
            )
        };
        Ok(Self {
            remove,
            remove_matching,
            set: c.set.normalized(&format!("{dir}.set"))?,
            add: c.add.normalized(&format!("{dir}.add"))?,
            set_if_absent: c
                .set_if_absent
                .normalized(&format!("{dir}.set_if_absent"))?,
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.remove_matching.is_none()
            && self.set.is_empty()
            && self.add.is_empty()
            && self.set_if_absent.is_empty()
    }

    fn apply<H: Host>(&self, host: &mut H, dir: Direction) {
        for name in &self.remove {
            host.remove_header(dir, name);
        }
        if let Some(set) = &self.remove_matching {
            let mut doomed: Vec<String> = Vec::new();
            for (name, _) in host.headers(dir) {
                // Pseudo-headers belong to Envoy (routing, status): never removed.
                if !is_pseudo_header(&name) && set.is_match(&name) && !doomed.contains(&name) {
                    doomed.push(name);
                }
            }
            for name in &doomed {
                host.remove_header(dir, name);
            }
        }
        for (name, value) in &self.set {
            host.set_header(dir, name, value);
        }
        for (name, value) in &self.add {
            host.add_header(dir, name, value);
        }
        for (name, value) in &self.set_if_absent {
            if host.header(dir, name).is_none() {
                host.set_header(dir, name, value);
            }
        }
    }
}

/// What the request phase learned that the response phase needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamState {
    /// The client's request was HTTPS (`:scheme` is `https`).
    pub https: bool,
}

/// A validated, compiled headers config.
#[derive(Debug)]
pub struct HeadersFilter {
    request: Ops,
    response: Ops,
    preset: Vec<(&'static str, &'static str)>,
    hsts: Option<&'static str>,
}

impl HeadersFilter {
    /// Parse and compile a JSON config. Empty input means the default config (does nothing).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::new(&parse_json::<HeadersConfig>(bytes)?)
    }

    pub fn new(cfg: &HeadersConfig) -> Result<Self, ConfigError> {
        let request = Ops::compile("request", &cfg.request)?;
        let response = Ops::compile("response", &cfg.response)?;
        let (all, hsts): (&[(&str, &str)], _) = match cfg.security_headers {
            SecurityHeaders::Off => (&[], None),
            SecurityHeaders::Basic => (BASIC, Some(BASIC_HSTS)),
            SecurityHeaders::Strict => (STRICT, Some(STRICT_HSTS)),
        };
        // A header the user removes explicitly stays removed: the preset does not bring it back.
        let preset = all
            .iter()
            .copied()
            .filter(|(n, _)| !response.remove.iter().any(|r| r == n))
            .collect();
        let hsts = hsts.filter(|_| !response.remove.iter().any(|r| r == HSTS));
        Ok(Self {
            request,
            response,
            preset,
            hsts,
        })
    }

    /// True when the filter changes nothing.
    pub fn is_noop(&self) -> bool {
        self.request.is_empty()
            && self.response.is_empty()
            && self.preset.is_empty()
            && self.hsts.is_none()
    }

    /// Request phase: apply the request operations and remember the scheme for HSTS.
    pub fn on_request_headers<H: Host>(&self, host: &mut H) -> StreamState {
        // Envoy sets `:scheme` itself: from the TLS state of the connection, or from a trusted
        // x-forwarded-proto. The filter does not read x-forwarded-proto (clients can send it).
        let https = self.hsts.is_some()
            && host
                .header(Direction::Request, ":scheme")
                .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        self.request.apply(host, Direction::Request);
        StreamState { https }
    }

    /// Response phase: apply the response operations, then fill in missing preset headers.
    /// `state` is what `on_request_headers` returned, or the default when the request phase did
    /// not run for this stream (no HSTS then).
    pub fn on_response_headers<H: Host>(&self, host: &mut H, state: StreamState) {
        self.response.apply(host, Direction::Response);
        let hsts = self.hsts.filter(|_| state.https).map(|v| (HSTS, v));
        let (mut added, mut kept) = (0, 0);
        for (name, value) in self.preset.iter().copied().chain(hsts) {
            if host.header(Direction::Response, name).is_some() {
                kept += 1;
            } else {
                host.set_header(Direction::Response, name, value);
                added += 1;
            }
        }
        if added > 0 {
            host.counter_add(PRESET_ADDED_TOTAL, added);
        }
        if kept > 0 {
            host.counter_add(PRESET_KEPT_TOTAL, kept);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryHost;

    fn filter(json: &str) -> HeadersFilter {
        HeadersFilter::from_json(json.as_bytes())
            .unwrap_or_else(|e| panic!("config {json} rejected: {e}"))
    }

    fn pairs(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Run a whole stream: request phase on `req`, response phase on `resp`.
    fn stream(f: &HeadersFilter, req: &[(&str, &str)], resp: &[(&str, &str)]) -> MemoryHost {
        let mut host = MemoryHost::with_request(req);
        let state = f.on_request_headers(&mut host);
        host.response = pairs(resp);
        f.on_response_headers(&mut host, state);
        host
    }

    const REQ: &[(&str, &str)] = &[
        (":method", "GET"),
        (":path", "/"),
        (":scheme", "http"),
        (":authority", "a"),
    ];
    const RESP: &[(&str, &str)] = &[(":status", "200"), ("content-type", "text/plain")];

    #[test]
    fn set_replaces_in_both_directions() {
        let f = filter(
            r#"{"request":{"set":{"x-env":"prod"}},"response":{"set":{"X-Served-By":"portcullis"}}}"#,
        );
        let mut req = REQ.to_vec();
        req.push(("x-env", "dev"));
        req.push(("x-env", "dev2"));
        let resp = [(":status", "200"), ("x-served-by", "upstream")];
        let h = stream(&f, &req, &resp);
        assert_eq!(h.values(Direction::Request, "x-env"), vec!["prod"]);
        assert_eq!(
            h.values(Direction::Response, "x-served-by"),
            vec!["portcullis"]
        );
        let h = stream(&f, REQ, RESP);
        assert_eq!(h.values(Direction::Request, "x-env"), vec!["prod"]);
    }

    #[test]
    fn add_appends_in_both_directions() {
        let f =
            filter(r#"{"request":{"add":{"x-trace":"1"}},"response":{"add":{"vary":"origin"}}}"#);
        let mut req = REQ.to_vec();
        req.push(("x-trace", "0"));
        let resp = [(":status", "200"), ("vary", "accept")];
        let h = stream(&f, &req, &resp);
        assert_eq!(h.values(Direction::Request, "x-trace"), vec!["0", "1"]);
        assert_eq!(
            h.values(Direction::Response, "vary"),
            vec!["accept", "origin"]
        );
    }

    #[test]
    fn remove_deletes_in_both_directions() {
        let f = filter(r#"{"request":{"remove":["X-Debug"]},"response":{"remove":["server"]}}"#);
        let mut req = REQ.to_vec();
        req.extend([("x-debug", "1"), ("x-debug", "2"), ("x-keep", "1")]);
        let resp = [
            (":status", "200"),
            ("server", "nginx"),
            ("content-type", "a"),
        ];
        let h = stream(&f, &req, &resp);
        assert!(h.values(Direction::Request, "x-debug").is_empty());
        assert_eq!(h.values(Direction::Request, "x-keep"), vec!["1"]);
        assert!(h.values(Direction::Response, "server").is_empty());
        assert_eq!(h.values(Direction::Response, "content-type"), vec!["a"]);
    }

    #[test]
    fn remove_matching_in_both_directions_never_touches_pseudo_headers() {
        let f = filter(
            r#"{"request":{"remove_matching":["^x-internal-", "^:", "path"]},"response":{"remove_matching":["^X-ENVOY-", ".*status.*"]}}"#,
        );
        let mut req = REQ.to_vec();
        req.extend([
            ("x-internal-a", "1"),
            ("x-internal-b", "2"),
            ("x-internalz", "3"),
            ("x-path", "4"),
        ]);
        let resp = [
            (":status", "200"),
            ("x-envoy-upstream-service-time", "3"),
            ("x-status", "x"),
            ("server", "s"),
        ];
        let h = stream(&f, &req, &resp);
        let names: Vec<&str> = h.request.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            vec![":method", ":path", ":scheme", ":authority", "x-internalz"]
        );
        let names: Vec<&str> = h.response.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec![":status", "server"]);
    }

    #[test]
    fn set_if_absent_in_both_directions() {
        let f = filter(
            r#"{"request":{"set_if_absent":{"x-env":"prod"}},"response":{"set_if_absent":{"cache-control":"no-store"}}}"#,
        );
        let h = stream(&f, REQ, RESP);
        assert_eq!(h.values(Direction::Request, "x-env"), vec!["prod"]);
        assert_eq!(
            h.values(Direction::Response, "cache-control"),
            vec!["no-store"]
        );
        let mut req = REQ.to_vec();
        req.push(("x-env", "dev"));
        let resp = [(":status", "200"), ("cache-control", "max-age=60")];
        let h = stream(&f, &req, &resp);
        assert_eq!(h.values(Direction::Request, "x-env"), vec!["dev"]);
        assert_eq!(
            h.values(Direction::Response, "cache-control"),
            vec!["max-age=60"]
        );
    }

    #[test]
    fn operation_order() {
        // remove, then set, then add: the added value survives next to the set one.
        let f = filter(
            r#"{"response":{"remove":["x-a"],"set":{"x-a":"set"},"add":{"x-a":"added"},"set_if_absent":{"x-a":"never"}}}"#,
        );
        let h = stream(&f, REQ, &[(":status", "200"), ("x-a", "upstream")]);
        assert_eq!(h.values(Direction::Response, "x-a"), vec!["set", "added"]);
    }

    fn preset_names(h: &MemoryHost) -> Vec<String> {
        let mut n: Vec<String> = h
            .response
            .iter()
            .filter(|(k, _)| BASIC.iter().any(|(p, _)| p == k) || k == HSTS)
            .map(|(k, _)| k.clone())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn basic_preset_without_https_has_no_hsts() {
        let f = filter(r#"{"security_headers":"basic"}"#);
        let h = stream(&f, REQ, RESP);
        for (name, value) in BASIC {
            assert_eq!(h.values(Direction::Response, name), vec![*value], "{name}");
        }
        assert!(h.values(Direction::Response, HSTS).is_empty());
        assert_eq!(h.counter(PRESET_ADDED_TOTAL), BASIC.len() as u64);
    }

    #[test]
    fn presets_with_https_add_hsts() {
        let mut req = REQ.to_vec();
        req[2] = (":scheme", "https");
        let h = stream(&filter(r#"{"security_headers":"basic"}"#), &req, RESP);
        assert_eq!(h.values(Direction::Response, HSTS), vec![BASIC_HSTS]);
        let h = stream(&filter(r#"{"security_headers":"strict"}"#), &req, RESP);
        assert_eq!(h.values(Direction::Response, HSTS), vec![STRICT_HSTS]);
        for (name, value) in STRICT {
            assert_eq!(h.values(Direction::Response, name), vec![*value], "{name}");
        }
    }

    #[test]
    fn forwarded_proto_alone_does_not_mean_https() {
        let mut req = REQ.to_vec();
        req.push(("x-forwarded-proto", "https"));
        let h = stream(&filter(r#"{"security_headers":"strict"}"#), &req, RESP);
        assert!(h.values(Direction::Response, HSTS).is_empty());
    }

    #[test]
    fn response_phase_without_request_phase_has_no_hsts() {
        let f = filter(r#"{"security_headers":"strict"}"#);
        let mut host = MemoryHost::with_request(&[(":scheme", "https")]);
        host.response = pairs(RESP);
        f.on_response_headers(&mut host, StreamState::default());
        assert!(host.values(Direction::Response, HSTS).is_empty());
        assert_eq!(
            host.values(Direction::Response, "x-frame-options"),
            vec!["DENY"]
        );
    }

    #[test]
    fn preset_never_overwrites_upstream() {
        let mut req = REQ.to_vec();
        req[2] = (":scheme", "https");
        let resp = [
            (":status", "200"),
            ("x-frame-options", "ALLOW-FROM https://a"),
            ("content-security-policy", "default-src 'self'"),
            ("strict-transport-security", "max-age=1"),
        ];
        let h = stream(&filter(r#"{"security_headers":"strict"}"#), &req, &resp);
        assert_eq!(
            h.values(Direction::Response, "x-frame-options"),
            vec!["ALLOW-FROM https://a"]
        );
        assert_eq!(
            h.values(Direction::Response, "content-security-policy"),
            vec!["default-src 'self'"]
        );
        assert_eq!(h.values(Direction::Response, HSTS), vec!["max-age=1"]);
        assert_eq!(
            h.values(Direction::Response, "referrer-policy"),
            vec!["no-referrer"]
        );
        assert_eq!(h.counter(PRESET_KEPT_TOTAL), 3);
        assert_eq!(h.counter(PRESET_ADDED_TOTAL), 3);
    }

    #[test]
    fn user_set_wins_over_preset_and_remove_suppresses_it() {
        let mut req = REQ.to_vec();
        req[2] = (":scheme", "https");
        let f = filter(
            r#"{"security_headers":"strict","response":{"set":{"referrer-policy":"origin"},"remove":["x-frame-options","strict-transport-security"]}}"#,
        );
        let h = stream(
            &f,
            &req,
            &[(":status", "200"), ("x-frame-options", "SAMEORIGIN")],
        );
        assert_eq!(
            h.values(Direction::Response, "referrer-policy"),
            vec!["origin"]
        );
        assert!(h.values(Direction::Response, "x-frame-options").is_empty());
        assert!(h.values(Direction::Response, HSTS).is_empty());
        assert_eq!(
            h.values(Direction::Response, "x-content-type-options"),
            vec!["nosniff"]
        );
    }

    #[test]
    fn preset_off_adds_nothing() {
        let mut req = REQ.to_vec();
        req[2] = (":scheme", "https");
        let f = filter(r#"{"security_headers":"off"}"#);
        assert!(f.is_noop());
        let h = stream(&f, &req, RESP);
        assert!(preset_names(&h).is_empty());
        assert_eq!(h.response, pairs(RESP));
    }

    #[test]
    fn empty_config_is_noop() {
        for json in ["", "{}", r#"{"request":{},"response":{}}"#] {
            let f = filter(json);
            assert!(f.is_noop());
            let h = stream(&f, REQ, RESP);
            assert_eq!(h.request, pairs(REQ));
            assert_eq!(h.response, pairs(RESP));
        }
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"request":{"sett":{}}}"#,
                "request.sett: unknown field `sett`",
            ),
            (
                r#"{"security":"basic"}"#,
                "security: unknown field `security`",
            ),
            (
                r#"{"security_headers":"max"}"#,
                "security_headers: unknown variant `max`",
            ),
            (
                r#"{"response":{"remove_matching":["^x-(", "ok"]}}"#,
                "response.remove_matching[0]: invalid regex \"^x-(\": unclosed group",
            ),
            (
                r#"{"request":{"set":{"x":1}}}"#,
                "request.set.x: invalid type: integer `1`, expected a string",
            ),
            (
                r#"{"request":{"set":["x"]}}"#,
                "request.set: invalid type: sequence, expected an object",
            ),
            (
                r#"{"request":{"remove":"x"}}"#,
                "request.remove: invalid type: string",
            ),
            (
                r#"{"request":{"set":{":path":"/x"}}}"#,
                "request.set: invalid header name \":path\": pseudo-headers",
            ),
            (
                r#"{"response":{"remove":[":status"]}}"#,
                "response.remove[0]: invalid header name \":status\": pseudo-headers",
            ),
            (
                r#"{"request":{"remove":["x","Host"]}}"#,
                "request.remove[1]: invalid header name \"host\": the request's host is Envoy's :authority",
            ),
            (
                r#"{"response":{"add":{"bad name":"v"}}}"#,
                "response.add: invalid header name \"bad name\"",
            ),
            (
                r#"{"response":{"set_if_absent":{"x":"a\nb"}}}"#,
                "response.set_if_absent: invalid value for header \"x\": control character",
            ),
            (
                r#"{"request":{"set":{"x":"1","x":"2"}}}"#,
                "request.set: duplicate header \"x\"",
            ),
            (
                r#"{"request":{"set":{"X":"1","x":"2"}}}"#,
                "request.set: header \"x\" is listed twice",
            ),
        ];
        for (json, want) in cases {
            let e = match HeadersFilter::from_json(json.as_bytes()) {
                Ok(_) => panic!("config {json} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(
                e.starts_with(want),
                "config {json}\n got: {e}\nwant: {want}..."
            );
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
