//! `ShouldRateLimit` without Redis: bytes decoded as a `RateLimitRequest`, checked
//! (`Policy::check`), each descriptor planned (`plan`) against a limits file, keyed
//! (`store::keys`), counted by an in-memory stand-in for the Lua script, and answered
//! (`descriptor_status`). No panic; distinct descriptors never share a counter; keys keep
//! their hash tag; an answer is over its limit only when the count says so.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use portcullis_ratelimit_server::config::Limits;
use portcullis_ratelimit_server::redact::show;
use portcullis_ratelimit_server::service::{
    descriptor_status, plan, Bounds, OverridePolicy, Policy, Refusal,
};
use portcullis_ratelimit_server::store::{keys, Count};
use portcullis_ratelimit_server::OnKeyCap;
use prost::Message;

const PREFIX: &str = "portcullis";
/// Distinct descriptors one rule may count per window, in this harness.
const CAP: usize = 3;

fn limits() -> &'static Limits {
    static L: OnceLock<Limits> = OnceLock::new();
    L.get_or_init(|| {
        Limits::from_yaml(
            r#"
domain: portcullis
descriptors:
  - key: rule
    value: per-key-global
    rate_limit: { unit: hour, requests_per_unit: 1000 }
  - key: client_ip
    rate_limit: { unit: minute, requests_per_unit: 3 }
    descriptors:
      - key: path
        value: /login
        rate_limit: { unit: second, requests_per_unit: 1 }
  - key: free
    rate_limit: { unlimited: true }
  - key: shadow
    shadow_mode: true
    rate_limit: { unit: day, requests_per_unit: 0 }
---
domain: other
descriptors:
  - key: k
    rate_limit: { unit: week, requests_per_unit: 2 }
"#,
        )
        .expect("the harness's limits parse")
    })
}

fn policy() -> Policy {
    Policy {
        bounds: Bounds {
            max_descriptors: 16,
            max_entries: 8,
            max_key_bytes: 64,
            max_value_bytes: 256,
        },
        overrides: OverridePolicy::Domains(vec!["portcullis".into()]),
        max_keys_per_rule: CAP as u64,
        on_key_cap: OnKeyCap::OverLimit,
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(req) = RateLimitRequest::decode(data) else {
        return;
    };
    let shown = show(&req.domain);
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    let policy = policy();
    match policy.check(&req) {
        Err(Refusal::Invalid(reason)) => {
            assert!(!reason.is_empty());
            return;
        }
        Err(Refusal::Override) => {
            assert!(!policy.overrides.allows(&req.domain));
            assert!(req.descriptors.iter().any(|d| d.limit.is_some()));
            return;
        }
        Ok(()) => {}
    }
    // Counters of this request's window: counter key -> hits, rule -> distinct members.
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut counter_of: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for d in &req.descriptors {
        let Some(p) = plan(limits(), &req, d) else {
            continue;
        };
        assert!(p.hits >= 1);
        assert!(!p.limit.unlimited && p.limit.unit_seconds > 0, "{:?}", p.limit);
        let k = keys(PREFIX, &req.domain, &p.entries, p.limit.unit_seconds);
        // One hash tag per rule (Redis Cluster slot), and the counter lives under it.
        assert!(k.rule.starts_with(&format!("{{{PREFIX}:")) && k.rule.ends_with('}'));
        assert!(is_hex64(&k.rule[PREFIX.len() + 2..k.rule.len() - 1]), "{}", k.rule);
        assert!(is_hex64(&k.member));
        assert_eq!(k.counter, format!("{}:{}", k.rule, k.member));
        // Distinct descriptors (domain and window fixed) never share a counter.
        let previous = counter_of
            .entry(k.counter.clone())
            .or_insert_with(|| p.entries.clone());
        assert_eq!(*previous, p.entries, "two descriptors share {}", k.counter);
        // A fixed window: count if it stays within the limit; a new key past the cap is not.
        let rule_members = members.entry(k.rule.clone()).or_default();
        let capped = !rule_members.contains(&k.member) && rule_members.len() >= CAP;
        let used = counts.entry(k.counter.clone()).or_default();
        let limit = u64::from(p.limit.requests_per_unit);
        let allowed = !capped && *used + u64::from(p.hits) <= limit;
        if allowed {
            *used += u64::from(p.hits);
            rule_members.insert(k.member.clone());
        }
        let count = Count {
            allowed,
            remaining: u32::try_from(limit.saturating_sub(*used)).unwrap_or(u32::MAX),
            reset_ms: p.limit.unit_seconds.saturating_mul(1000),
            capped,
        };
        for on_key_cap in [OnKeyCap::OverLimit, OnKeyCap::Allow] {
            let (over, status) = descriptor_status(&p.limit, &count, on_key_cap);
            assert_eq!(status.code == Code::OverLimit as i32, over);
            if p.limit.shadow || (allowed && !capped) {
                assert!(!over, "{:?} {count:?}", p.limit);
            }
            if capped {
                assert_eq!(over, on_key_cap == OnKeyCap::OverLimit && !p.limit.shadow);
            }
            let reset = status.duration_until_reset.expect("a reset time");
            assert!(reset.seconds >= 0 && (0..1_000_000_000).contains(&reset.nanos));
            let _ = status.encode_to_vec();
        }
    }
});
