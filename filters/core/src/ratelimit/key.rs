//! Rule matching and bucket keys.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use super::config::{KeyPart, Rule};

/// The request fields rules look at, read once per request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestView {
    pub method: String,
    /// `:path` without the query string.
    pub path: String,
    pub authority: String,
    /// Lowercase names, in order, pseudo-headers excluded.
    pub headers: Vec<(String, String)>,
    /// Every X-Forwarded-For line, in order.
    pub xff: Vec<String>,
}

impl RequestView {
    /// Builds the view from a host's header list (pseudo-headers included).
    pub fn from_headers(all: &[(String, String)]) -> Self {
        let mut v = RequestView::default();
        for (name, value) in all {
            match name.as_str() {
                ":method" => v.method = value.clone(),
                ":path" => {
                    let p = value.split(['?', '#']).next().unwrap_or_default();
                    v.path = p.to_string();
                }
                ":authority" => v.authority = value.to_ascii_lowercase(),
                n if n.starts_with(':') => {}
                n => {
                    let n = n.to_ascii_lowercase();
                    if n == "x-forwarded-for" {
                        v.xff.push(value.clone());
                    }
                    v.headers.push((n, value.clone()));
                }
            }
        }
        v
    }

    /// First value of a header (lowercase name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Does the rule's `match` hold for this request?
pub fn matches(rule: &Rule, req: &RequestView) -> bool {
    let m = &rule.matcher;
    if let Some(prefix) = &m.path_prefix {
        if !req.path.starts_with(prefix.as_str()) {
            return false;
        }
    }
    if !m.methods.is_empty() && !m.methods.contains(&req.method) {
        return false;
    }
    m.headers.iter().all(|h| {
        let name = h.name.to_ascii_lowercase();
        match &h.value {
            Some(want) => req.headers.iter().any(|(n, v)| *n == name && v == want),
            None => req.header(&name).is_some(),
        }
    })
}

/// The rule's key as `(part, value)` pairs; `None` when a `header:` part is missing (then the
/// rule does not apply). A missing client IP reads as `unknown`, so such requests share one
/// bucket rather than escape the limit.
pub fn key_values(
    rule: &Rule,
    req: &RequestView,
    client_ip: Option<IpAddr>,
) -> Option<Vec<(String, String)>> {
    rule.key
        .iter()
        .map(|part| {
            let value = match part {
                KeyPart::ClientIp => client_ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                KeyPart::Header(name) => req.header(name)?.to_string(),
                KeyPart::Path => req.path.clone(),
                KeyPart::Method => req.method.clone(),
                KeyPart::Authority => req.authority.clone(),
            };
            Some((part.to_string(), value))
        })
        .collect()
}

/// The 64-bit bucket tag of a key within a rule's store. Values are length-prefixed, so
/// `("a,b")` and `("a","b")` never collide by construction.
pub fn tag(prefix: &str, values: &[(String, String)]) -> u64 {
    // SipHash (std's default hasher, fixed keys): the same in every worker of one module build.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prefix.hash(&mut h);
    values.len().hash(&mut h);
    for (_, v) in values {
        v.len().hash(&mut h);
        h.write(v.as_bytes());
    }
    h.finish()
}

/// A short stable hash (hex) of some bytes, for shared-data namespaces.
pub fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        p.len().hash(&mut h);
        h.write(p);
    }
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::config::Config;
    use serde_json::json;

    fn rule(v: serde_json::Value) -> Rule {
        let cfg = Config::from_json(json!({"rules": [v]}).to_string().as_bytes()).unwrap();
        cfg.rules[0].clone()
    }

    fn req(h: &[(&str, &str)]) -> RequestView {
        let all: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RequestView::from_headers(&all)
    }

    #[test]
    fn view_strips_query_and_collects_xff() {
        let r = req(&[
            (":method", "GET"),
            (":path", "/api/x?a=1"),
            (":authority", "Example.COM"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        assert_eq!(r.path, "/api/x");
        assert_eq!(r.authority, "example.com");
        assert_eq!(r.xff, vec!["1.1.1.1", "2.2.2.2"]);
    }

    #[test]
    fn match_prefix_methods_and_headers() {
        let r = rule(
            json!({"name": "a", "limit": {"requests": 1, "unit": "minute"},
            "match": {"path_prefix": "/api", "methods": ["GET", "POST"],
                      "headers": [{"name": "X-Tier", "value": "free"}, {"name": "x-present"}]}}),
        );
        let base = [
            (":method", "GET"),
            (":path", "/api/v1"),
            ("x-tier", "free"),
            ("x-present", ""),
        ];
        assert!(matches(&r, &req(&base)));
        let mut m = base;
        m[0] = (":method", "DELETE");
        assert!(!matches(&r, &req(&m)));
        let mut m = base;
        m[1] = (":path", "/ap");
        assert!(!matches(&r, &req(&m)));
        let mut m = base;
        m[2] = ("x-tier", "gold");
        assert!(!matches(&r, &req(&m)));
        assert!(!matches(&r, &req(&base[..3])));
        // No match block: everything matches.
        let any = rule(json!({"name": "b", "limit": {"requests": 1, "unit": "minute"}}));
        assert!(matches(&any, &req(&[])));
    }

    #[test]
    fn keys_from_every_part_and_missing_header_skips() {
        let r = rule(
            json!({"name": "a", "limit": {"requests": 1, "unit": "minute"},
            "key": ["client_ip", "header:x-api-key", "path", "method", "authority"]}),
        );
        let v = req(&[
            (":method", "PUT"),
            (":path", "/p?q"),
            (":authority", "h"),
            ("x-api-key", "k1"),
        ]);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let k = key_values(&r, &v, Some(ip)).unwrap();
        let want: Vec<(String, String)> = [
            ("client_ip", "10.1.2.3"),
            ("header:x-api-key", "k1"),
            ("path", "/p"),
            ("method", "PUT"),
            ("authority", "h"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(k, want);
        let no_key = req(&[(":method", "PUT")]);
        assert_eq!(key_values(&r, &no_key, Some(ip)), None);
        let ip_only = rule(
            json!({"name": "a", "limit": {"requests": 1, "unit": "minute"}, "key": ["client_ip"]}),
        );
        assert_eq!(key_values(&ip_only, &no_key, None).unwrap()[0].1, "unknown");
    }

    #[test]
    fn tags_separate_keys_and_prefixes() {
        let kv = |vals: &[&str]| -> Vec<(String, String)> {
            vals.iter()
                .map(|v| ("k".to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(tag("p", &kv(&["a"])), tag("p", &kv(&["a"])));
        assert_ne!(tag("p", &kv(&["a"])), tag("q", &kv(&["a"])));
        assert_ne!(tag("p", &kv(&["a,b"])), tag("p", &kv(&["a", "b"])));
        assert_ne!(tag("p", &kv(&["ab", ""])), tag("p", &kv(&["a", "b"])));
    }
}
