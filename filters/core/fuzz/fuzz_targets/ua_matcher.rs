//! The compiled UA matcher (aho-corasick + hash + RegexSet) agrees with a naive reference
//! implementation on random patterns and random user agents, in both case modes.
#![no_main]

use arbitrary::Arbitrary;
use portcullis_core::testing::MemoryHost;
use portcullis_core::ua_block::{Decision, MissingUserAgent, Patterns, UaBlock, UaBlockConfig};
use portcullis_core::{Action, Direction};

#[derive(Debug, Arbitrary)]
struct Input {
    deny_contains: Vec<String>,
    deny_exact: Vec<String>,
    deny_regex: Vec<String>,
    allow_contains: Vec<String>,
    allow_regex: Vec<String>,
    preset: bool,
    case_sensitive: bool,
    missing_deny: bool,
    dry_run: bool,
    user_agents: Vec<String>,
}

fn fold(s: &str, cs: bool) -> String {
    if cs {
        s.to_string()
    } else {
        s.to_lowercase()
    }
}

fn regex_match(pats: &[String], ua: &str, cs: bool) -> bool {
    pats.iter().any(|p| {
        regex::RegexBuilder::new(p)
            .case_insensitive(!cs)
            .build()
            .map(|r| r.is_match(ua))
            .unwrap_or(false)
    })
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    // Keep regex compilation cheap: the point is the matcher, not the regex compiler.
    if input
        .deny_regex
        .iter()
        .chain(&input.allow_regex)
        .any(|r| r.len() > 40)
        || input.deny_regex.len() + input.allow_regex.len() > 8
    {
        return;
    }
    let cs = input.case_sensitive;
    let cfg = UaBlockConfig {
        deny: Patterns {
            contains: input.deny_contains.clone(),
            exact: input.deny_exact.clone(),
            regex: input.deny_regex.clone(),
            presets: if input.preset {
                vec!["ai-crawlers".into()]
            } else {
                vec![]
            },
        },
        allow: Patterns {
            contains: input.allow_contains.clone(),
            regex: input.allow_regex.clone(),
            ..Patterns::default()
        },
        missing_user_agent: if input.missing_deny {
            MissingUserAgent::Deny
        } else {
            MissingUserAgent::Allow
        },
        case_sensitive: cs,
        dry_run: input.dry_run,
        ..UaBlockConfig::default()
    };
    let Ok(f) = UaBlock::new(&cfg) else {
        return;
    };

    let present: Vec<&str> = input
        .user_agents
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .collect();
    let allow_hit = present.iter().any(|ua| {
        input
            .allow_contains
            .iter()
            .any(|p| fold(ua, cs).contains(&fold(p, cs)))
            || regex_match(&input.allow_regex, ua, cs)
    });
    let deny_hit = present.iter().any(|ua| {
        input
            .deny_contains
            .iter()
            .any(|p| fold(ua, cs).contains(&fold(p, cs)))
            || input
                .deny_exact
                .iter()
                .any(|p| fold(ua, cs) == fold(p.trim(), cs))
            || regex_match(&input.deny_regex, ua, cs)
    });
    let decision = f.decide(&input.user_agents);
    match decision {
        Decision::DenyMissing => assert!(present.is_empty() && input.missing_deny),
        Decision::AllowListed(_) => assert!(allow_hit, "{decision:?}"),
        Decision::DenyMatched(hit) => {
            assert!(!allow_hit);
            if hit.source != "deny.presets[ai-crawlers]" {
                assert!(deny_hit, "{decision:?}");
            }
        }
        Decision::Pass => {
            assert!(
                !allow_hit && !deny_hit,
                "reference found a match the matcher missed"
            );
            assert!(!(present.is_empty() && input.missing_deny));
        }
    }

    // The host-facing entry point agrees with `decide`, and answers only when it denies.
    let headers: Vec<(&str, &str)> = input
        .user_agents
        .iter()
        .map(|u| ("user-agent", u.as_str()))
        .collect();
    let mut host = MemoryHost::with_request(&headers);
    let action = f.on_request_headers(&mut host);
    let blocked = decision.is_deny() && !input.dry_run;
    assert_eq!(action == Action::Stop, blocked);
    assert_eq!(host.local_response.is_some(), blocked);
    assert_eq!(
        host.values(Direction::Request, "user-agent").len(),
        input.user_agents.len()
    );
});
