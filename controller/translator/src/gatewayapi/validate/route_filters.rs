//! HTTPRoute rule filters: the checks Envoy Gateway makes in `filters.go`
//! (`ProcessHTTPFilters`, `processRequestHeaderModifierFilter`,
//! `processResponseHeaderModifierFilter`, `processRedirectFilter`, `processURLRewriteFilter`)
//! and the Gateway API CRD rules a file-mode input has not been through (one filter of a type per
//! rule, the per-type field set, RequestRedirect with URLRewrite).

use crate::resources::{HeaderModifier, HttpRouteRule, PathModifier};

use super::rule_error::{rule_path, RuleError};

/// Filter types of which a rule may hold only one (Gateway API: "Specifying the same filter
/// multiple times is not supported unless explicitly indicated"; CRD "... cannot be repeated").
const SINGLE_PER_RULE: [&str; 4] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
];

/// Redirect codes we program (Gateway API `HTTPRequestRedirectFilter.statusCode` enum).
const REDIRECT_CODES: [u32; 5] = [301, 302, 303, 307, 308];

pub fn check_filters(ri: usize, rule: &HttpRouteRule, errs: &mut Vec<RuleError>) {
    let base = rule_path(ri);
    let mut seen: Vec<&str> = Vec::new();
    let mut redirect_at = None;
    let mut rewrite_at = None;
    let mut mirror_at = None;
    for (fi, f) in rule.filters.iter().enumerate() {
        let at = format!("{base}.filters[{fi}]");
        let t = f.type_.as_str();
        if SINGLE_PER_RULE.contains(&t) {
            if seen.contains(&t) {
                errs.push(RuleError::unsupported(
                    &at,
                    format!("{t} filter cannot be repeated in one rule"),
                ));
                continue;
            }
            seen.push(t);
        }
        match t {
            "RequestHeaderModifier" => check_header_modifier(
                &at,
                t,
                "requestHeaderModifier",
                f.request_header_modifier.as_ref(),
                errs,
            ),
            "ResponseHeaderModifier" => check_header_modifier(
                &at,
                t,
                "responseHeaderModifier",
                f.response_header_modifier.as_ref(),
                errs,
            ),
            "RequestRedirect" => {
                redirect_at.get_or_insert(fi);
                match &f.request_redirect {
                    None => errs.push(missing(&at, "requestRedirect", t)),
                    Some(r) => {
                        let at = format!("{at}.requestRedirect");
                        if let Some(s) = &r.scheme {
                            if s != "http" && s != "https" {
                                errs.push(RuleError::unsupported(
                                    format!("{at}.scheme"),
                                    format!("{s:?} is not supported (use http or https)"),
                                ));
                            }
                        }
                        if let Some(c) = r.status_code {
                            if !REDIRECT_CODES.contains(&c) {
                                errs.push(RuleError::unsupported(
                                    format!("{at}.statusCode"),
                                    format!("{c} is not supported (use 301, 302, 303, 307 or 308)"),
                                ));
                            }
                        }
                        if r.port == Some(0) {
                            errs.push(RuleError::unsupported(
                                format!("{at}.port"),
                                "0 is not a valid port",
                            ));
                        }
                        if let Some(h) = &r.hostname {
                            check_hostname(&format!("{at}.hostname"), h, errs);
                        }
                        if let Some(p) = &r.path {
                            check_path_modifier(&base, &format!("{at}.path"), p, rule, errs);
                        }
                    }
                }
            }
            "URLRewrite" => {
                rewrite_at.get_or_insert(fi);
                match &f.url_rewrite {
                    None => errs.push(missing(&at, "urlRewrite", t)),
                    Some(r) => {
                        let at = format!("{at}.urlRewrite");
                        if let Some(h) = &r.hostname {
                            check_hostname(&format!("{at}.hostname"), h, errs);
                        }
                        if let Some(p) = &r.path {
                            check_path_modifier(&base, &format!("{at}.path"), p, rule, errs);
                        }
                    }
                }
            }
            "RequestMirror" => {
                mirror_at.get_or_insert(fi);
                if f.request_mirror.is_none() {
                    errs.push(missing(&at, "requestMirror", t));
                }
            }
            // Other types are reported by the route translation (UnsupportedFields, 500).
            _ => {}
        }
    }
    if let (Some(r), Some(w)) = (redirect_at, rewrite_at) {
        // Gateway API `RouteReasonIncompatibleFilters` names exactly this pair.
        errs.push(RuleError::incompatible(
            format!("{base}.filters[{}]", r.max(w)),
            "RequestRedirect and URLRewrite cannot be used in one rule",
        ));
    }
    if let (Some(r), Some(m)) = (redirect_at, mirror_at) {
        // Envoy Gateway `requestMirrorRedirectConflictMsg`: a redirect never reaches a backend.
        errs.push(RuleError::incompatible(
            format!("{base}.filters[{}]", r.max(m)),
            "RequestMirror cannot be used together with RequestRedirect",
        ));
    }
}

fn missing(at: &str, field: &str, type_: &str) -> RuleError {
    RuleError::unsupported(
        format!("{at}.{field}"),
        format!("must be set when type is {type_}"),
    )
}

/// An `HTTPHeaderName`: an RFC 7230 token (the CRD pattern), at most 256 characters.
pub fn valid_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 256
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value as Envoy Gateway accepts it (`HeaderValueRegexp`, RFC 7230 field-content):
/// visible ASCII, single spaces or tabs between visible runs, no leading or trailing blank.
pub fn valid_header_value(v: &str) -> bool {
    let b = v.as_bytes();
    let visible = |c: u8| (b'!'..=b'~').contains(&c);
    let blank = |c: u8| c == b' ' || c == b'\t';
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) if visible(f) && visible(l) => {}
        _ => return false,
    }
    b.len() <= 4096
        && b.iter().all(|&c| visible(c) || blank(c))
        && !b.windows(2).any(|w| blank(w[0]) && blank(w[1]))
}

fn check_header_name(at: &str, name: &str, errs: &mut Vec<RuleError>) {
    if name.is_empty() {
        errs.push(RuleError::unsupported(at, "must not be empty"));
    } else if !valid_header_name(name) {
        errs.push(RuleError::unsupported(
            at,
            format!("{name:?} is not a valid header name"),
        ));
    } else if name.eq_ignore_ascii_case("host") {
        // Envoy Gateway `isModifiableHeader`: Envoy does not let a route modify Host.
        errs.push(RuleError::unsupported(
            at,
            "the Host header cannot be modified here (use URLRewrite hostname)",
        ));
    }
}

fn check_header_modifier(
    at: &str,
    type_: &str,
    field: &str,
    m: Option<&HeaderModifier>,
    errs: &mut Vec<RuleError>,
) {
    let Some(m) = m else {
        errs.push(missing(at, field, type_));
        return;
    };
    let at = format!("{at}.{field}");
    for (list, entries) in [("set", &m.set), ("add", &m.add)] {
        for (i, h) in entries.iter().enumerate() {
            check_header_name(&format!("{at}.{list}[{i}].name"), &h.name, errs);
            if !valid_header_value(&h.value) {
                errs.push(RuleError::unsupported(
                    format!("{at}.{list}[{i}].value"),
                    format!("{:?} is not a valid header value", h.value),
                ));
            }
        }
    }
    for (i, n) in m.remove.iter().enumerate() {
        check_header_name(&format!("{at}.remove[{i}]"), n, errs);
    }
}

/// The header operations a valid modifier programs. Header names are case-insensitive and a
/// later entry with an equivalent name is ignored (Gateway API `HTTPHeader.name`); as Envoy
/// Gateway, `add` is taken first and a `set` of a name already added is ignored.
pub fn dedupe_header_modifier(m: &HeaderModifier) -> HeaderModifier {
    let mut names: Vec<String> = Vec::new();
    let mut out = HeaderModifier::default();
    for h in &m.add {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&h.name)) {
            names.push(h.name.clone());
            out.add.push(h.clone());
        }
    }
    for h in &m.set {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&h.name)) {
            names.push(h.name.clone());
            out.set.push(h.clone());
        }
    }
    for n in &m.remove {
        if !out.remove.iter().any(|r| r.eq_ignore_ascii_case(n)) {
            out.remove.push(n.clone());
        }
    }
    out
}

fn check_path_modifier(
    base: &str,
    at: &str,
    p: &PathModifier,
    rule: &HttpRouteRule,
    errs: &mut Vec<RuleError>,
) {
    match p.type_.as_str() {
        "ReplaceFullPath" => {
            if p.replace_full_path.is_none() {
                errs.push(RuleError::unsupported(
                    format!("{at}.replaceFullPath"),
                    "must be set when type is ReplaceFullPath",
                ));
            }
            if p.replace_prefix_match.is_some() {
                errs.push(RuleError::unsupported(
                    format!("{at}.replacePrefixMatch"),
                    "must not be set when type is ReplaceFullPath",
                ));
            }
        }
        "ReplacePrefixMatch" => {
            if p.replace_prefix_match.is_none() {
                errs.push(RuleError::unsupported(
                    format!("{at}.replacePrefixMatch"),
                    "must be set when type is ReplacePrefixMatch",
                ));
            }
            if p.replace_full_path.is_some() {
                errs.push(RuleError::unsupported(
                    format!("{at}.replaceFullPath"),
                    "must not be set when type is ReplacePrefixMatch",
                ));
            }
            // Gateway API `replacePrefixMatch`: only compatible with PathPrefix matches; any other
            // match type on the rule sets Accepted=False. No matches means the default `/` prefix.
            for (mi, m) in rule.matches.iter().enumerate() {
                let t = m
                    .path
                    .as_ref()
                    .and_then(|p| p.type_.as_deref())
                    .unwrap_or("PathPrefix");
                if t != "PathPrefix" {
                    errs.push(RuleError::unsupported(
                        format!("{at}.replacePrefixMatch"),
                        format!(
                            "needs PathPrefix matches, but {base}.matches[{mi}].path.type is {t}"
                        ),
                    ));
                }
            }
        }
        other => errs.push(RuleError::unsupported(
            format!("{at}.type"),
            format!("{other:?} is not supported (use ReplaceFullPath or ReplacePrefixMatch)"),
        )),
    }
}

/// A `PreciseHostname` (RFC 1123 DNS subdomain, lowercase, no wildcard) that is not an IP address.
pub fn hostname_error(h: &str) -> Option<String> {
    if h.is_empty() {
        return Some("must not be empty".into());
    }
    if h.contains('*') {
        return Some(format!("{h:?} must not be a wildcard"));
    }
    if h.parse::<std::net::IpAddr>().is_ok() {
        return Some(format!("{h:?} is an IP address, not a hostname"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.len() > 253 || !h.split('.').all(label_ok) {
        return Some(format!(
            "{h:?} is not a valid hostname (RFC 1123: lowercase letters, digits, '-' and '.')"
        ));
    }
    None
}

fn check_hostname(at: &str, h: &str, errs: &mut Vec<RuleError>) {
    if let Some(why) = hostname_error(h) {
        errs.push(RuleError::unsupported(at, why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::NameValue;

    #[test]
    fn header_values() {
        assert!(valid_header_value("a b\tc"));
        assert!(!valid_header_value(""));
        assert!(!valid_header_value(" a"));
        assert!(!valid_header_value("a "));
        assert!(!valid_header_value("a  b"));
        assert!(!valid_header_value("a\nb"));
        assert!(!valid_header_value("caf\u{e9}"));
    }

    #[test]
    fn header_names() {
        assert!(valid_header_name("X-Foo_1"));
        assert!(!valid_header_name("x foo"));
        assert!(!valid_header_name(":path"));
        assert!(!valid_header_name("a/b"));
        assert!(!valid_header_name(""));
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname_error("api.example.com"), None);
        assert!(hostname_error("*.example.com").is_some());
        assert!(hostname_error("10.0.0.1").is_some());
        assert!(hostname_error("Api.example.com").is_some());
        assert!(hostname_error("-a.example.com").is_some());
        assert!(hostname_error("a..b").is_some());
    }

    #[test]
    fn dedupe_first_wins_case_insensitive() {
        let nv = |n: &str, v: &str| NameValue {
            name: n.into(),
            value: v.into(),
        };
        let m = HeaderModifier {
            set: vec![nv("X-A", "1"), nv("x-a", "2"), nv("X-B", "3")],
            add: vec![nv("x-b", "4")],
            remove: vec!["X-C".into(), "x-c".into()],
        };
        let d = dedupe_header_modifier(&m);
        assert_eq!(d.add, vec![nv("x-b", "4")]);
        assert_eq!(d.set, vec![nv("X-A", "1")]);
        assert_eq!(d.remove, vec!["X-C".to_string()]);
    }
}
