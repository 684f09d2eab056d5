//! One HTTPRoute rule checked as a whole: its filters and its matches. A rule with an error is
//! dropped: its routes answer 500 (Gateway API: requests a rejected rule would have handled must
//! get an error response, not pass unfiltered), and the route reports `Accepted=False` when every
//! rule is dropped, `PartiallyInvalid=True` when only some are (Envoy Gateway
//! `route.go` `processHTTPRouteParentRefs`, Gateway API `RouteConditionPartiallyInvalid`).

use std::collections::BTreeSet;

use crate::resources::HttpRouteRule;

use super::rule_error::RuleError;
use super::{route_filters, route_matches};

/// What is wrong with one rule.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuleVerdict {
    pub errors: Vec<RuleError>,
    /// Matches that cannot be programmed at all (an invalid regular expression): they are left
    /// out, the rule's other matches answer 500.
    pub unprogrammable_matches: BTreeSet<usize>,
}

impl RuleVerdict {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

pub fn check_rule(ri: usize, rule: &HttpRouteRule) -> RuleVerdict {
    let mut v = RuleVerdict::default();
    route_filters::check_filters(ri, rule, &mut v.errors);
    for (mi, m) in rule.matches.iter().enumerate() {
        let errs = route_matches::check_match(ri, mi, m);
        if errs.iter().any(|e| e.unprogrammable) {
            v.unprogrammable_matches.insert(mi);
        }
        v.errors.extend(errs.into_iter().map(|e| e.error));
    }
    v
}

/// The route-level summary of its rules' verdicts, for one parentRef that accepted the route.
pub enum RouteVerdict {
    Valid,
    /// Some rules dropped: `Accepted` stays True, `PartiallyInvalid=True` with this condition.
    Partial {
        reason: &'static str,
        message: String,
    },
    /// Every rule dropped: `Accepted=False`.
    Invalid {
        reason: &'static str,
        message: String,
    },
}

pub fn summarize(verdicts: &[RuleVerdict]) -> RouteVerdict {
    let dropped: Vec<usize> = verdicts
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_valid())
        .map(|(i, _)| i)
        .collect();
    let Some(first) = verdicts.iter().flat_map(|v| v.errors.first()).next() else {
        return RouteVerdict::Valid;
    };
    let reason = first.reason();
    let details: Vec<String> = verdicts
        .iter()
        .flat_map(|v| v.errors.iter().map(ToString::to_string))
        .collect();
    let details = details.join("; ");
    if dropped.len() == verdicts.len() {
        RouteVerdict::Invalid {
            reason,
            message: details,
        }
    } else {
        // Gateway API: the message MUST start with "Dropped Rule" and name the rules dropped;
        // the list is written as Envoy Gateway's `formatDroppedRuleMessage` writes it.
        let list: Vec<String> = dropped.iter().map(ToString::to_string).collect();
        RouteVerdict::Partial {
            reason,
            message: format!("Dropped Rule(s) [{}]: {details}", list.join(" ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rule_error::rule_path;
    use super::*;

    fn bad(ri: usize) -> RuleVerdict {
        RuleVerdict {
            errors: vec![RuleError::incompatible(rule_path(ri), "x")],
            ..Default::default()
        }
    }

    #[test]
    fn summary() {
        assert!(matches!(
            summarize(&[RuleVerdict::default()]),
            RouteVerdict::Valid
        ));
        match summarize(&[RuleVerdict::default(), bad(1), bad(2)]) {
            RouteVerdict::Partial { reason, message } => {
                assert_eq!(reason, "IncompatibleFilters");
                assert_eq!(
                    message,
                    "Dropped Rule(s) [1 2]: spec.rules[1]: x; spec.rules[2]: x"
                );
            }
            _ => panic!("partial expected"),
        }
        assert!(matches!(
            summarize(&[bad(0)]),
            RouteVerdict::Invalid {
                reason: "IncompatibleFilters",
                ..
            }
        ));
    }
}
