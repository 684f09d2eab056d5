//! Config parsing shared by every filter: JSON with the failing field's path in every error.

use serde::de::DeserializeOwned;

/// Why a filter config was rejected. `Display` always starts with the field path
/// (`deny.regex[2]: ...`), so one log line tells the user what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, an unknown field, or a value of the wrong type. `message` is serde_json's.
    #[error("{path}: {message}")]
    Json { path: String, message: String },
    #[error("{field}: invalid regex {pattern:?}: {reason}")]
    Regex {
        field: String,
        pattern: String,
        reason: String,
    },
    #[error("{field}: unknown preset {name:?} (known: {known})")]
    UnknownPreset {
        field: String,
        name: String,
        known: String,
    },
    #[error("{field}: {value} is not a valid status for a local reply (use 200-599)")]
    Status { field: String, value: u16 },
    #[error("{field}: invalid header name {name:?}: {reason}")]
    HeaderName {
        field: String,
        name: String,
        reason: String,
    },
    #[error("{field}: invalid value for header {name:?}: {reason}")]
    HeaderValue {
        field: String,
        name: String,
        reason: String,
    },
    /// Any other rule a field breaks (an empty pattern, a duplicate header, ...).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ConfigError {
    /// The field path the error is about (`config` for the document as a whole).
    pub fn field(&self) -> &str {
        match self {
            ConfigError::Json { path, .. } => path,
            ConfigError::Regex { field, .. }
            | ConfigError::UnknownPreset { field, .. }
            | ConfigError::Status { field, .. }
            | ConfigError::HeaderName { field, .. }
            | ConfigError::HeaderValue { field, .. }
            | ConfigError::Invalid { field, .. } => field,
        }
    }
}

/// Parse a JSON object config. Empty input (no config at all) or only whitespace yields
/// `T::default()`.
pub fn parse_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ConfigError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Ok(T::default()),
        // serde maps a JSON array onto a struct's fields by position; configs are objects only.
        Some(b'{') => {}
        Some(_) => {
            return Err(ConfigError::Json {
                path: "config".to_string(),
                message: "expected a JSON object".to_string(),
            })
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // serde_path_to_error prints "." for the root and "?" for a key it has not read yet; an
        // empty key gives an empty path.
        let path = path.strip_suffix(".?").unwrap_or(&path);
        let path = if matches!(path, "" | "." | "?") {
            "config"
        } else {
            path
        };
        // Field names and values from the document are quoted raw by serde: escape control
        // characters so the error stays one log line.
        ConfigError::Json {
            path: escape_controls(path),
            message: escape_controls(&e.into_inner().to_string()),
        }
    })?;
    Ok(value)
}

/// Compile-time regex errors are multi-line (pattern, caret, message); keep the message only,
/// so the whole config error stays one log line.
pub(crate) fn regex_reason(err: &regex::Error) -> String {
    match err {
        regex::Error::Syntax(text) => text
            .lines()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .map(escape_controls)
            .unwrap_or_else(|| one_line(text)),
        other => one_line(&other.to_string()),
    }
}

/// `\n`, `\r`, `\u{1b}`... instead of the raw control characters.
pub(crate) fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn one_line(text: &str) -> String {
    escape_controls(&text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_reason_is_one_line() {
        let pattern = String::from("(");
        let err = regex::Regex::new(&pattern).unwrap_err();
        let reason = regex_reason(&err);
        assert_eq!(reason, "unclosed group");
        assert!(!reason.contains('\n'));
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        a: u8,
    }

    #[test]
    fn empty_input_is_default() {
        let v: Cfg = parse_json(b"  \n").unwrap();
        assert_eq!(v.a, 0);
        assert_eq!(parse_json::<Cfg>(br#"{"a":3}"#).unwrap().a, 3);
    }

    #[test]
    fn syntax_error_names_config() {
        let err = parse_json::<Cfg>(b"{").unwrap_err();
        assert_eq!(err.field(), "config");
        assert!(err.to_string().starts_with("config: "), "{err}");
    }

    #[test]
    fn errors_from_hostile_documents_stay_one_line_and_name_a_field() {
        for doc in [
            "{\"a\\n[error] forged\": 1}",
            "{\"\": 1}",
            "{\"a\": \"x\"}",
            "{\"\\u001b[31m\":0}",
        ] {
            let err = parse_json::<Cfg>(doc.as_bytes()).unwrap_err();
            let line = err.to_string();
            assert!(!line.chars().any(char::is_control), "{doc}: {line:?}");
            assert!(!err.field().is_empty(), "{doc}: {line}");
        }
        let err = parse_json::<Cfg>(b"{\"\": 1}").unwrap_err();
        assert!(
            err.to_string().starts_with("config: unknown field ``"),
            "{err}"
        );
        let err = parse_json::<Cfg>(b"{\"a\\nb\": 1}").unwrap_err();
        assert!(
            err.to_string().starts_with("a\\nb: unknown field `a\\nb`"),
            "{err}"
        );
    }

    #[test]
    fn only_objects() {
        for bad in ["[]", "[1]", "null", "3", "\"x\""] {
            let err = parse_json::<Cfg>(bad.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), "config: expected a JSON object", "{bad}");
        }
    }
}
