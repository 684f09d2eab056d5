//! HTTPRoute matches: the match types and regular expressions Envoy Gateway checks in
//! `route.go` `processHTTPRouteRule` (`regex.Validate` on path, header and query parameter
//! regular expressions; an unknown match type is `UnsupportedValue`, Gateway API "Unknown values
//! here must result in ... UnsupportedValue"). Envoy evaluates RE2; the `regex` crate's syntax
//! is close to it (no look-around, no backreferences in either).

use crate::resources::{HttpRouteMatch, ValueMatch};

use super::route_rules::{rule_path, RuleError};

/// A match error; `unprogrammable` when the match cannot be put in xDS at all (Envoy would NACK
/// the regex), so only the rule's other matches can answer 500.
pub struct MatchError {
    pub error: RuleError,
    pub unprogrammable: bool,
}

fn regex_error(pattern: &str) -> Option<String> {
    // Envoy's RE2 has a program-size limit; a generous compiled-size limit catches runaway
    // patterns here too.
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .err()
        .map(|e| {
            // The regex crate's message shows the pattern with a caret, then "error: <why>";
            // keep the why, on one line.
            let e = e.to_string();
            let why = e.rsplit("error: ").next().unwrap_or(&e).trim().to_string();
            why.lines().collect::<Vec<_>>().join(" ")
        })
}

pub fn check_match(ri: usize, mi: usize, m: &HttpRouteMatch) -> Vec<MatchError> {
    let at = format!("{}.matches[{mi}]", rule_path(ri));
    let mut out = Vec::new();
    if let Some(p) = &m.path {
        let t = p.type_.as_deref().unwrap_or("PathPrefix");
        let value = p.value.as_deref().unwrap_or("/");
        match t {
            "PathPrefix" | "Exact" => {}
            "RegularExpression" => {
                if let Some(why) = regex_error(value) {
                    out.push(MatchError {
                        error: RuleError::unsupported(
                            format!("{at}.path.value"),
                            format!("{value:?} is not a valid RE2 regular expression: {why}"),
                        ),
                        unprogrammable: true,
                    });
                }
            }
            other => out.push(MatchError {
                error: RuleError::unsupported(
                    format!("{at}.path.type"),
                    format!(
                        "{other:?} is not supported (use Exact, PathPrefix or RegularExpression)"
                    ),
                ),
                unprogrammable: true,
            }),
        }
    }
    for (list, entries) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
        for (i, v) in entries.iter().enumerate() {
            out.extend(check_value_match(&format!("{at}.{list}[{i}]"), v));
        }
    }
    out
}

fn check_value_match(at: &str, v: &ValueMatch) -> Option<MatchError> {
    match v.type_.as_deref().unwrap_or("Exact") {
        "Exact" => None,
        "RegularExpression" => regex_error(&v.value).map(|why| MatchError {
            error: RuleError::unsupported(
                format!("{at}.value"),
                format!("{:?} is not a valid RE2 regular expression: {why}", v.value),
            ),
            unprogrammable: true,
        }),
        other => Some(MatchError {
            error: RuleError::unsupported(
                format!("{at}.type"),
                format!("{other:?} is not supported (use Exact or RegularExpression)"),
            ),
            unprogrammable: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::PathMatch;

    fn path(t: &str, v: &str) -> HttpRouteMatch {
        HttpRouteMatch {
            path: Some(PathMatch {
                type_: Some(t.into()),
                value: Some(v.into()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn regexes() {
        assert!(check_match(0, 0, &path("RegularExpression", "/api/v[0-9]+")).is_empty());
        let e = check_match(1, 2, &path("RegularExpression", "/api/(v1"));
        assert_eq!(e.len(), 1);
        assert!(e[0].unprogrammable);
        assert!(e[0]
            .error
            .to_string()
            .starts_with("spec.rules[1].matches[2].path.value: "));
        assert!(!e[0].error.to_string().contains('\n'));
        // RE2 has no look-around; neither has the regex crate.
        assert_eq!(
            check_match(0, 0, &path("RegularExpression", "/(?=a)")).len(),
            1
        );
    }
}
