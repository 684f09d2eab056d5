//! URL helpers: query parsing, form encoding, same-origin return URLs.

/// Decoded `key=value` pairs of a query string (`+` is a space). Never fails.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `key` in a query string.
pub fn query_get(query: &str, key: &str) -> Option<String> {
    query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// `application/x-www-form-urlencoded` body or query from pairs.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Appends encoded parameters to an endpoint URL that may already carry a query.
pub fn with_query(endpoint: &str, pairs: &[(&str, &str)]) -> String {
    let sep = if endpoint.contains('?') { '&' } else { '?' };
    format!("{endpoint}{sep}{}", form_encode(pairs))
}

/// Splits a `:path` into path and query (without the `?`).
pub fn split_path(path: &str) -> (&str, &str) {
    match path.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path, ""),
    }
}

/// The URL to return to after login: the request's own origin-form path, or `/` whenever it
/// could be read as pointing elsewhere (`//host`, `/\host`, absolute-form, control bytes).
pub fn safe_return_path(path: &str) -> String {
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && path.len() <= 4096
        && !path.bytes().any(|b| b.is_ascii_control() || b == b' ');
    if ok {
        path.to_string()
    } else {
        "/".to_string()
    }
}

/// Minimal HTML escaping for the few messages the filter renders.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_forms() {
        let q = "code=a%2Bb&state=x+y&empty=&code=second&%ZZ=1";
        assert_eq!(query_get(q, "code").as_deref(), Some("a+b"));
        assert_eq!(query_get(q, "state").as_deref(), Some("x y"));
        assert_eq!(query_get(q, "empty").as_deref(), Some(""));
        assert_eq!(query_get(q, "missing"), None);
        assert_eq!(
            form_encode(&[("a", "b c"), ("u", "https://x/?y=1&z")]),
            "a=b+c&u=https%3A%2F%2Fx%2F%3Fy%3D1%26z"
        );
        assert_eq!(
            with_query("https://i/auth", &[("a", "1")]),
            "https://i/auth?a=1"
        );
        assert_eq!(
            with_query("https://i/auth?t=1", &[("a", "1")]),
            "https://i/auth?t=1&a=1"
        );
        assert_eq!(split_path("/a?b=1?c"), ("/a", "b=1?c"));
        assert_eq!(split_path("/a"), ("/a", ""));
    }

    #[test]
    fn return_paths_stay_same_origin() {
        assert_eq!(safe_return_path("/dash/x?y=1#f"), "/dash/x?y=1#f");
        for evil in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "evil",
            "",
            "/a\r\nb",
            "/a b",
        ] {
            assert_eq!(safe_return_path(evil), "/", "{evil:?}");
        }
        assert_eq!(safe_return_path(&format!("/{}", "a".repeat(5000))), "/");
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
