//! Limits per domain and descriptor, in envoyproxy/ratelimit's YAML shape:
//!
//! ```yaml
//! domain: portcullis
//! descriptors:
//!   - key: rule
//!     value: per-key-global
//!     rate_limit: { unit: hour, requests_per_unit: 1000 }
//!   - key: client_ip            # no value: any value, each with its own counter
//!     rate_limit: { unit: minute, requests_per_unit: 60 }
//!     descriptors:               # nested: matched against the next entry
//!       - key: path
//!         value: /login
//!         rate_limit: { unit: minute, requests_per_unit: 5 }
//! ```
//!
//! Several domains: several YAML documents (`---`) in one file. A descriptor's `limit` override
//! in the request (which the Portcullis filter always sends) takes precedence over this file.

use std::collections::HashMap;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config document {doc}: {source}")]
    Yaml {
        doc: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("domain {domain:?}: {reason}")]
    Invalid { domain: String, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainDoc {
    domain: String,
    #[serde(default)]
    descriptors: Vec<DescriptorDoc>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorDoc {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimitDoc>,
    #[serde(default)]
    shadow_mode: bool,
    /// Accepted for compatibility with envoyproxy/ratelimit configs; unused.
    #[serde(default)]
    #[allow(dead_code)]
    detailed_metric: bool,
    #[serde(default)]
    descriptors: Vec<DescriptorDoc>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitDoc {
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    requests_per_unit: u32,
    #[serde(default)]
    unlimited: bool,
    /// Accepted for compatibility; unused.
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    /// Accepted for compatibility; unused.
    #[serde(default)]
    #[allow(dead_code)]
    replaces: Option<serde_yaml::Value>,
}

/// A limit that applies to one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests_per_unit: u32,
    pub unit_seconds: u64,
    /// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit` value.
    pub unit_proto: i32,
    pub unlimited: bool,
    pub shadow: bool,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Children by (key, Some(value)) exact, or (key, None) wildcard.
    children: HashMap<(String, Option<String>), Node>,
    limit: Option<Limit>,
}

/// All domains' descriptor trees.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    domains: HashMap<String, Node>,
}

/// Unit name (case-insensitive) → (seconds, proto enum value).
pub fn unit(name: &str) -> Option<(u64, i32)> {
    match name.to_ascii_lowercase().as_str() {
        "second" => Some((1, 1)),
        "minute" => Some((60, 2)),
        "hour" => Some((3600, 3)),
        "day" => Some((86_400, 4)),
        "month" => Some((30 * 86_400, 5)),
        "year" => Some((365 * 86_400, 6)),
        "week" => Some((7 * 86_400, 7)),
        _ => None,
    }
}

/// Proto unit value → seconds (0 if unknown).
pub fn unit_seconds(proto: i32) -> u64 {
    match proto {
        1 => 1,
        2 => 60,
        3 => 3600,
        4 => 86_400,
        5 => 30 * 86_400,
        6 => 365 * 86_400,
        7 => 7 * 86_400,
        _ => 0,
    }
}

impl Limits {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let mut limits = Limits::default();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| ConfigError::Yaml {
                doc: i + 1,
                source: e,
            })?;
            if value.is_null() {
                continue; // empty document
            }
            let d: DomainDoc = serde_yaml::from_value(value).map_err(|e| ConfigError::Yaml {
                doc: i + 1,
                source: e,
            })?;
            if d.domain.is_empty() {
                return Err(ConfigError::Invalid {
                    domain: d.domain,
                    reason: "domain must not be empty".into(),
                });
            }
            if limits.domains.contains_key(&d.domain) {
                return Err(ConfigError::Invalid {
                    domain: d.domain,
                    reason: "defined twice".into(),
                });
            }
            let mut root = Node::default();
            build(&d.domain, &d.descriptors, &mut root)?;
            limits.domains.insert(d.domain, root);
        }
        Ok(limits)
    }

    /// The configured limit of a descriptor: every entry must match a level of the tree (exact
    /// value first, then a wildcard), and the last level must carry a limit.
    pub fn lookup(&self, domain: &str, entries: &[(String, String)]) -> Option<Limit> {
        let mut node = self.domains.get(domain)?;
        for (k, v) in entries {
            node = node
                .children
                .get(&(k.clone(), Some(v.clone())))
                .or_else(|| node.children.get(&(k.clone(), None)))?;
        }
        node.limit
    }
}

fn build(domain: &str, docs: &[DescriptorDoc], parent: &mut Node) -> Result<(), ConfigError> {
    for d in docs {
        let invalid = |reason: String| ConfigError::Invalid {
            domain: domain.to_string(),
            reason,
        };
        if d.key.is_empty() {
            return Err(invalid("descriptor key must not be empty".into()));
        }
        let limit = match &d.rate_limit {
            None => None,
            Some(r) if r.unlimited => Some(Limit {
                requests_per_unit: 0,
                unit_seconds: 0,
                unit_proto: 0,
                unlimited: true,
                shadow: d.shadow_mode,
            }),
            Some(r) => {
                let name = r.unit.as_deref().unwrap_or("");
                let (secs, proto) = unit(name).ok_or_else(|| {
                    invalid(format!("descriptor {:?}: unknown unit {name:?}", d.key))
                })?;
                Some(Limit {
                    requests_per_unit: r.requests_per_unit,
                    unit_seconds: secs,
                    unit_proto: proto,
                    unlimited: false,
                    shadow: d.shadow_mode,
                })
            }
        };
        let mut node = Node {
            limit,
            ..Node::default()
        };
        build(domain, &d.descriptors, &mut node)?;
        if parent
            .children
            .insert((d.key.clone(), d.value.clone()), node)
            .is_some()
        {
            return Err(invalid(format!(
                "descriptor {:?}={:?} defined twice",
                d.key, d.value
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nested_exact_and_wildcard_lookup() {
        let l = Limits::from_yaml(
            r#"
domain: d
descriptors:
  - key: rule
    value: a
    rate_limit: { unit: hour, requests_per_unit: 10 }
  - key: client_ip
    rate_limit: { unit: minute, requests_per_unit: 60 }
    descriptors:
      - key: path
        value: /login
        rate_limit: { unit: second, requests_per_unit: 1 }
  - key: free
    rate_limit: { unlimited: true }
---
domain: other
descriptors: []
"#,
        )
        .unwrap();
        assert_eq!(
            l.lookup("d", &e(&[("rule", "a")]))
                .map(|x| x.requests_per_unit),
            Some(10)
        );
        assert_eq!(l.lookup("d", &e(&[("rule", "b")])), None);
        assert_eq!(
            l.lookup("d", &e(&[("client_ip", "1.2.3.4")]))
                .map(|x| x.unit_seconds),
            Some(60)
        );
        let nested = l
            .lookup("d", &e(&[("client_ip", "1.2.3.4"), ("path", "/login")]))
            .unwrap();
        assert_eq!((nested.requests_per_unit, nested.unit_proto), (1, 1));
        assert_eq!(
            l.lookup("d", &e(&[("client_ip", "1.2.3.4"), ("path", "/x")])),
            None
        );
        assert!(l.lookup("d", &e(&[("free", "x")])).unwrap().unlimited);
        assert_eq!(l.lookup("nope", &e(&[("rule", "a")])), None);
    }

    #[test]
    fn bad_configs_are_rejected() {
        assert!(Limits::from_yaml("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n").is_err());
        assert!(Limits::from_yaml("domain: d\nbogus: 1\n").is_err());
        assert!(Limits::from_yaml("domain: d\n---\ndomain: d\n").is_err());
    }
}
