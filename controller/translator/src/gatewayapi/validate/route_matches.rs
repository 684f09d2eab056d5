//! HTTPRoute matches: the match types and regular expressions Envoy Gateway checks in
//! `route.go` `processHTTPRouteRule` (`regex.Validate` on path, header and query parameter
//! regular expressions; an unknown match type is `UnsupportedValue`, Gateway API "Unknown values
//! here must result in ... UnsupportedValue"). Envoy evaluates RE2; the `regex` crate's syntax
//! is close to it (no look-around, no backreferences in either).

use crate::resources::{HttpRouteMatch, ValueMatch};

use super::rule_error::{rule_path, RuleError};

/// A match error; `unprogrammable` when the match cannot be put in xDS at all (Envoy would NACK
/// the regex), so only the rule's other matches can answer 500.
pub struct MatchError {
    pub error: RuleError,
    pub unprogrammable: bool,
}

fn regex_error(pattern: &str) -> Option<String> {
    // Envoy's RE2 has a program-size limit; a generous compiled-size limit catches runaway
    // patterns here too.
    if let Err(e) = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
    {
        // The regex crate's message shows the pattern with a caret, then "error: <why>";
        // keep the why, on one line.
        let e = e.to_string();
        let why = e.rsplit("error: ").next().unwrap_or(&e).trim().to_string();
        return Some(why.lines().collect::<Vec<_>>().join(" "));
    }
    // It compiled here; reject what RE2 (Envoy) rejects, which would NACK the route, or reads
    // as another pattern (checked against Envoy 1.40).
    let ast = regex_syntax::ast::parse::Parser::new()
        .parse(pattern)
        .ok()?;
    regex_syntax::ast::visit(&ast, NotRe2).err()
}

/// Finds syntax the `regex` crate accepts and RE2 rejects or reads differently.
struct NotRe2;

impl regex_syntax::ast::Visitor for NotRe2 {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, ast: &regex_syntax::ast::Ast) -> Result<(), String> {
        use regex_syntax::ast::{
            AssertionKind as A, Ast, Flag, FlagsItemKind, GroupKind, RepetitionKind,
            RepetitionRange,
        };
        let flags = match ast {
            Ast::Flags(f) => Some(&f.flags),
            Ast::Group(g) => match &g.kind {
                GroupKind::NonCapturing(f) => Some(f),
                _ => None,
            },
            _ => None,
        };
        if let Some(f) = flags {
            for item in &f.items {
                if let FlagsItemKind::Flag(Flag::Unicode | Flag::CRLF | Flag::IgnoreWhitespace) =
                    item.kind
                {
                    return Err("only the flags i, m, s and U are RE2".into());
                }
            }
        }
        match ast {
            Ast::Assertion(a)
                if !matches!(
                    a.kind,
                    A::StartLine
                        | A::EndLine
                        | A::StartText
                        | A::EndText
                        | A::WordBoundary
                        | A::NotWordBoundary
                ) =>
            {
                Err(
                    "word-boundary assertions other than \\b and \\B mean something else in RE2"
                        .into(),
                )
            }
            Ast::Repetition(r) => match &r.op.kind {
                RepetitionKind::Range(
                    RepetitionRange::Exactly(n)
                    | RepetitionRange::AtLeast(n)
                    | RepetitionRange::Bounded(_, n),
                ) if *n > 1000 => Err("RE2 allows repetition counts up to 1000".into()),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn visit_class_set_item_pre(
        &mut self,
        item: &regex_syntax::ast::ClassSetItem,
    ) -> Result<(), String> {
        match item {
            regex_syntax::ast::ClassSetItem::Bracketed(_) => {
                Err("nested character classes mean something else in RE2".into())
            }
            _ => Ok(()),
        }
    }

    fn visit_class_set_binary_op_pre(
        &mut self,
        _: &regex_syntax::ast::ClassSetBinaryOp,
    ) -> Result<(), String> {
        Err("character class set operations (&&, --, ~~) mean something else in RE2".into())
    }
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
