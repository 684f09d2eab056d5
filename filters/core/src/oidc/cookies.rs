//! Cookie header parsing, session chunking and `Set-Cookie` building.

use super::config::{CookieConfig, SameSite};

/// Bytes of sealed value per chunk: keeps each `Set-Cookie` under browsers' 4096-byte limit
/// with room for the name and attributes.
pub const CHUNK_SIZE: usize = 3800;

/// All `name=value` pairs from every `Cookie` header value, in order. Malformed pieces
/// (no `=`) are skipped; nothing here can fail.
pub fn parse_cookie_headers<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in values {
        for piece in v.split(';') {
            let Some((name, value)) = piece.split_once('=') else {
                continue;
            };
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            out.push((name.to_string(), value.to_string()));
        }
    }
    out
}

pub fn get<'a>(cookies: &'a [(String, String)], name: &str) -> Option<&'a str> {
    cookies
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Splits a sealed session into chunk values; `None` when it needs more than `max_chunks`.
pub fn split_chunks(sealed: &str, max_chunks: usize) -> Option<Vec<&str>> {
    // Sealed values are ASCII (base64url), so byte offsets are char boundaries.
    let chunks: Vec<&str> = sealed
        .as_bytes()
        .chunks(CHUNK_SIZE)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    if chunks.is_empty() || chunks.len() > max_chunks {
        return None;
    }
    Some(chunks)
}

/// Reassembles `<base>-0`, `<base>-1`, ... up to the first gap (at most `max_chunks`).
pub fn join_chunks(cookies: &[(String, String)], base: &str, max_chunks: usize) -> Option<String> {
    let mut out = String::new();
    for i in 0..max_chunks {
        match get(cookies, &format!("{base}-{i}")) {
            Some(v) => out.push_str(v),
            None => break,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Names of chunks of `base` present in the request.
pub fn present_chunks(cookies: &[(String, String)], base: &str, max_chunks: usize) -> Vec<usize> {
    (0..max_chunks)
        .filter(|i| get(cookies, &format!("{base}-{i}")).is_some())
        .collect()
}

/// Whether `name` belongs to this policy (session chunk or flow cookie).
pub fn is_own_cookie(name: &str, session_base: &str, flow_name: &str) -> bool {
    name == flow_name
        || name
            .strip_prefix(session_base)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The `Cookie` header to send upstream without this policy's cookies; `None` if nothing is left.
pub fn strip_own(
    cookies: &[(String, String)],
    session_base: &str,
    flow_name: &str,
) -> Option<String> {
    let kept: Vec<String> = cookies
        .iter()
        .filter(|(n, _)| !is_own_cookie(n, session_base, flow_name))
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// `Set-Cookie` value. `max_age`: `Some(0)` deletes, `None` makes a browser-session cookie.
pub fn set_cookie(
    cfg: &CookieConfig,
    name: &str,
    value: &str,
    max_age: Option<u64>,
    same_site: SameSite,
) -> String {
    let mut s = format!("{name}={value}; Path={}; HttpOnly", cfg.path);
    if cfg.secure {
        s.push_str("; Secure");
    }
    s.push_str("; SameSite=");
    s.push_str(same_site.as_str());
    if let Some(d) = &cfg.domain {
        s.push_str("; Domain=");
        s.push_str(d);
    }
    if let Some(age) = max_age {
        s.push_str(&format!("; Max-Age={age}"));
        if age == 0 {
            s.push_str("; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multiple_headers_and_junk() {
        let c = parse_cookie_headers(["a=1; b=\"2\";;junk; =x", "c=3=4 ;  d= "]);
        assert_eq!(
            c,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("c".into(), "3=4".into()),
                ("d".into(), "".into())
            ]
        );
        assert_eq!(get(&c, "c"), Some("3=4"));
        assert_eq!(get(&c, "zz"), None);
    }

    #[test]
    fn chunks_round_trip_and_respect_limits() {
        let sealed = "x".repeat(CHUNK_SIZE * 2 + 5);
        let chunks = split_chunks(&sealed, 8).unwrap();
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_SIZE));
        let cookies: Vec<(String, String)> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("s-{i}"), c.to_string()))
            .collect();
        assert_eq!(join_chunks(&cookies, "s", 8).unwrap(), sealed);
        assert_eq!(present_chunks(&cookies, "s", 8), vec![0, 1, 2]);
        assert!(split_chunks(&sealed, 2).is_none());
        assert!(split_chunks("", 2).is_none());
        // A gap ends the session value: chunk 2 without chunk 1 is ignored.
        let gap = vec![
            ("s-0".to_string(), "a".to_string()),
            ("s-2".to_string(), "c".to_string()),
        ];
        assert_eq!(join_chunks(&gap, "s", 8).unwrap(), "a");
        assert_eq!(join_chunks(&[], "s", 8), None);
    }

    #[test]
    fn strips_only_own_cookies() {
        let c =
            parse_cookie_headers(["s-0=a; s-1=b; s-flow=f; s-x=keep; s-=keep2; other=1; s-10=c"]);
        assert_eq!(
            strip_own(&c, "s", "s-flow").unwrap(),
            "s-x=keep; s-=keep2; other=1"
        );
        let only = parse_cookie_headers(["s-0=a"]);
        assert_eq!(strip_own(&only, "s", "s-flow"), None);
    }

    #[test]
    fn set_cookie_attributes() {
        let cfg = CookieConfig {
            name: "n".into(),
            secret: String::new().into(),
            domain: Some("example.com".into()),
            same_site: SameSite::Strict,
            max_chunks: 8,
            secure: true,
            path: "/".into(),
            max_age: Default::default(),
        };
        let s = set_cookie(&cfg, "n-0", "v", None, SameSite::Strict);
        assert_eq!(
            s,
            "n-0=v; Path=/; HttpOnly; Secure; SameSite=Strict; Domain=example.com"
        );
        let d = set_cookie(&cfg, "n-0", "", Some(0), SameSite::Lax);
        assert!(d.contains("Max-Age=0") && d.contains("SameSite=Lax") && d.contains("1970"));
    }
}
