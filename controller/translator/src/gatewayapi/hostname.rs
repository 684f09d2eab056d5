//! Hostname matching and intersection, Gateway API semantics: `*.example.com` matches one or
//! more labels before `.example.com`, never `example.com` itself.

/// True when `host` (possibly itself a wildcard) falls within `pattern`.
pub fn within(pattern: &str, host: &str) -> bool {
    if pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => false,
    }
}

/// The hostnames a route serves on a listener, or `None` when they do not intersect.
/// A listener without hostname and a route without hostnames give `["*"]`.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let mut out: Vec<String> = match (listener, route.is_empty()) {
        (None, true) => vec!["*".to_string()],
        (None, false) => route.to_vec(),
        (Some(l), true) => vec![l.to_string()],
        (Some(l), false) => route
            .iter()
            .filter_map(|r| {
                if within(l, r) {
                    Some(r.clone())
                } else if within(r, l) {
                    Some(l.to_string())
                } else {
                    None
                }
            })
            .collect(),
    };
    out.sort();
    out.dedup();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn wildcard_needs_a_label() {
        assert!(within("*.example.com", "a.example.com"));
        assert!(within("*.example.com", "a.b.example.com"));
        assert!(!within("*.example.com", "example.com"));
        assert!(!within("a.example.com", "b.example.com"));
        assert!(within("*.example.com", "*.foo.example.com"));
    }

    #[test]
    fn intersections() {
        assert_eq!(intersect(None, &[]), Some(v(&["*"])));
        assert_eq!(intersect(Some("a.com"), &[]), Some(v(&["a.com"])));
        assert_eq!(
            intersect(Some("*.ex.com"), &v(&["foo.ex.com", "bar.org"])),
            Some(v(&["foo.ex.com"]))
        );
        assert_eq!(
            intersect(Some("foo.ex.com"), &v(&["*.ex.com"])),
            Some(v(&["foo.ex.com"]))
        );
        assert_eq!(
            intersect(Some("*.ex.com"), &v(&["*.a.ex.com"])),
            Some(v(&["*.a.ex.com"]))
        );
        assert_eq!(intersect(Some("a.com"), &v(&["b.com"])), None);
    }
}
