//! Keeping credentials and attacker-controlled bytes out of log lines and error messages.
//!
//! - [`redact_url`]: the Redis URL as it may be shown: userinfo (`user:password@`) and the
//!   credential query parameters the redis crate reads (`pass`, `user`; `password` and
//!   `username` too) become `REDACTED`. A URL that does not parse is never echoed.
//! - [`Secrets`]: the credentials of one URL, to scrub out of any message that might carry them
//!   (a Redis error, say), raw and percent-decoded.
//! - [`show`]: a request string for a log field: Debug-escaped (quotes, `\n`, control bytes) and
//!   cut to a bounded length, so a caller can neither forge log lines nor flood them.

use std::borrow::Cow;

/// What replaces a credential.
pub const REDACTED: &str = "REDACTED";

/// Query parameters that carry credentials (redis-rs reads `user` and `pass` on `unix://` URLs).
const SECRET_PARAMS: [&str; 4] = ["pass", "password", "user", "username"];

/// Longest request string [`show`] prints, in characters.
pub const SHOW_MAX_CHARS: usize = 128;

/// `raw` without its credentials, for logs and errors.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "<Redis URL that does not parse; not shown>".to_string();
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Cannot fail on the schemes that have userinfo at all.
        let _ = url.set_password(None);
        let _ = url.set_username(REDACTED);
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if SECRET_PARAMS.contains(&k.as_ref()) {
                    Cow::Borrowed(REDACTED)
                } else {
                    v
                };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// The credentials in one Redis URL, scrubbed out of messages that might echo them.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    pub fn from_url(raw: &str) -> Self {
        let mut out = Vec::new();
        let mut add = |s: &str| {
            if !s.is_empty() && !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        };
        match url::Url::parse(raw) {
            Ok(url) => {
                if let Some(p) = url.password() {
                    add(p);
                    if let Ok(d) = percent_decode(p) {
                        add(&d);
                    }
                }
                for (k, v) in url.query_pairs() {
                    if k == "pass" || k == "password" {
                        add(&v);
                    }
                }
            }
            // Unparseable: the whole URL is the secret.
            Err(_) => add(raw),
        }
        // Longest first, so a secret that contains another is replaced whole.
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self(out)
    }

    /// `msg` with every credential replaced by [`REDACTED`].
    pub fn scrub(&self, msg: &str) -> String {
        let mut out = msg.to_string();
        for s in &self.0 {
            out = out.replace(s.as_str(), REDACTED);
        }
        out
    }
}

fn percent_decode(s: &str) -> Result<String, std::str::Utf8Error> {
    // `url` exposes no decoder of its own; form_urlencoded would also turn `+` into a space.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|e| e.utf8_error())
}

/// A request string for a log field: escaped like `{:?}` and at most [`SHOW_MAX_CHARS`]
/// characters of it (then `…+N`, N the characters left out).
pub fn show(s: &str) -> String {
    let total = s.chars().count();
    if total <= SHOW_MAX_CHARS {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(SHOW_MAX_CHARS).collect();
    format!("{head:?}…+{}", total - SHOW_MAX_CHARS)
}

/// A descriptor's entries for a log field, each part through [`show`].
pub fn show_entries(entries: &[(String, String)]) -> String {
    let parts: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}={}", show(k), show(v)))
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(
            redact_url("redis://:s3cr3t@redis.example:6379/0"),
            "redis://REDACTED@redis.example:6379/0"
        );
        assert_eq!(
            redact_url("redis://alice:s3cr3t@10.0.0.1:6380"),
            "redis://REDACTED@10.0.0.1:6380"
        );
        assert_eq!(
            redact_url("rediss://alice@redis.example"),
            "rediss://REDACTED@redis.example"
        );
        // Nothing to hide: unchanged.
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn credential_query_parameters_are_redacted() {
        let r = redact_url("redis+unix:///run/redis.sock?db=2&pass=s3cr3t&user=alice");
        assert!(!r.contains("s3cr3t") && !r.contains("alice"), "{r}");
        assert!(r.contains("db=2") && r.contains("pass=REDACTED"), "{r}");
        let r = redact_url("unix:///run/redis.sock?password=s3cr3t");
        assert!(!r.contains("s3cr3t"), "{r}");
    }

    #[test]
    fn unparseable_url_is_not_echoed() {
        let r = redact_url("redis://:s3cr3t@[not-an-ip");
        assert!(!r.contains("s3cr3t"), "{r}");
    }

    #[test]
    fn secrets_are_scrubbed_raw_and_decoded() {
        let s = Secrets::from_url("redis://u:p%40ss%2Fw0rd@host/");
        assert_eq!(
            s.scrub("auth p%40ss%2Fw0rd / p@ss/w0rd failed"),
            "auth REDACTED / REDACTED failed"
        );
        let s = Secrets::from_url("unix:///x.sock?pass=hunter22");
        assert_eq!(s.scrub("WRONGPASS hunter22"), "WRONGPASS REDACTED");
        // No credentials: messages are untouched.
        assert_eq!(
            Secrets::from_url("redis://h:1").scrub("Connection refused"),
            "Connection refused"
        );
    }

    #[test]
    fn show_escapes_and_bounds() {
        assert_eq!(show("a\nb\"c"), r#""a\nb\"c""#);
        let long = "x".repeat(SHOW_MAX_CHARS + 10);
        let s = show(&long);
        assert!(s.ends_with("…+10"), "{s}");
        assert!(s.len() < SHOW_MAX_CHARS + 10);
        assert_eq!(
            show_entries(&[("k".into(), "v\r\n".into())]),
            r#"["k"="v\r\n"]"#
        );
    }
}
