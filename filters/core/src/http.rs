//! Header name and value rules shared by the filters' configs.

use crate::config::ConfigError;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use std::fmt;

/// Pseudo-headers (`:path`, `:scheme`, ...) belong to Envoy: filters never change them.
pub fn is_pseudo_header(name: &str) -> bool {
    name.starts_with(':')
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Check a header name from config and return it lowercased (Envoy stores names lowercase, and
/// HTTP names are case-insensitive). Pseudo-headers are refused.
pub fn normalize_header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    let err = |reason: &str| ConfigError::HeaderName {
        field: field.to_string(),
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(err("empty name"));
    }
    if is_pseudo_header(name) {
        return Err(err("pseudo-headers cannot be changed by this filter"));
    }
    if let Some(bad) = name.bytes().find(|b| !is_tchar(*b)) {
        return Err(err(&format!(
            "character {:?} is not allowed in a header name",
            char::from(bad)
        )));
    }
    Ok(name.to_ascii_lowercase())
}

/// Check a header value from config: no control characters (CR/LF would split headers), and no
/// leading or trailing whitespace (HTTP/2 and HTTP/3 forbid it).
pub fn check_header_value(field: &str, name: &str, value: &str) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::HeaderValue {
        field: field.to_string(),
        name: name.to_string(),
        reason,
    };
    if let Some(c) = value
        .chars()
        .find(|c| (c.is_ascii_control() && *c != '\t') || *c == '\u{7f}')
    {
        return Err(err(format!("control character {c:?} is not allowed")));
    }
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err(err(
            "leading or trailing whitespace is not allowed".to_string()
        ));
    }
    Ok(())
}

/// A JSON object of header name to value, in document order. Unlike a `HashMap`, a repeated key
/// is an error instead of silently keeping the last value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList(pub Vec<(String, String)>);

impl HeaderList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Validate every entry and return `(lowercase name, value)` pairs. Names that collide after
    /// lowercasing are an error.
    pub fn normalized(&self, field: &str) -> Result<Vec<(String, String)>, ConfigError> {
        let mut out: Vec<(String, String)> = Vec::with_capacity(self.0.len());
        for (name, value) in &self.0 {
            let lower = normalize_header_name(field, name)?;
            check_header_value(field, name, value)?;
            if out.iter().any(|(n, _)| *n == lower) {
                return Err(ConfigError::Invalid {
                    field: field.to_string(),
                    reason: format!(
                        "header {lower:?} is listed twice (names are case-insensitive)"
                    ),
                });
            }
            out.push((lower, value.clone()));
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = HeaderList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of header name to string value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderList, A::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(serde::de::Error::custom(format!("duplicate header {k:?}")));
                    }
                    out.push((k, v));
                }
                Ok(HeaderList(out))
            }
        }
        deserializer.deserialize_map(ListVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercased_and_checked() {
        assert_eq!(normalize_header_name("f", "X-Env").unwrap(), "x-env");
        let e = normalize_header_name("f", ":path").unwrap_err();
        assert!(e.to_string().contains("pseudo-header"), "{e}");
        let e = normalize_header_name("f", "bad name").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("f: invalid header name \"bad name\""),
            "{e}"
        );
        assert!(normalize_header_name("f", "").is_err());
        assert!(normalize_header_name("f", "x\u{e9}").is_err());
    }

    #[test]
    fn values_reject_crlf_and_edges() {
        assert!(check_header_value("f", "x", "a b\tc").is_ok());
        assert!(check_header_value("f", "x", "").is_ok());
        assert!(check_header_value("f", "x", "a\r\nx-evil: 1").is_err());
        assert!(check_header_value("f", "x", "a\0").is_err());
        assert!(check_header_value("f", "x", " a").is_err());
        assert!(check_header_value("f", "x", "a\t").is_err());
    }

    #[test]
    fn header_list_keeps_order_and_rejects_duplicates() {
        let l: HeaderList = serde_json::from_str(r#"{"b":"1","a":"2"}"#).unwrap();
        assert_eq!(
            l.0,
            vec![("b".into(), "1".into()), ("a".into(), "2".into())]
        );
        let e = serde_json::from_str::<HeaderList>(r#"{"a":"1","a":"2"}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate header"), "{e}");
        let l: HeaderList = serde_json::from_str(r#"{"X-A":"1","x-a":"2"}"#).unwrap();
        let e = l.normalized("response.set").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("response.set: header \"x-a\" is listed twice"),
            "{e}"
        );
    }
}
