//! The gRPC service.
//!
//! Every request is checked before anything touches Redis:
//!
//! - At most [`Bounds::max_descriptors`] descriptors, each with 1 to [`Bounds::max_entries`]
//!   entries, whose keys and values are at most [`Bounds::max_key_bytes`] /
//!   [`Bounds::max_value_bytes`] long: else `INVALID_ARGUMENT` (the caller's failure mode
//!   applies).
//! - A descriptor's `limit` override is honoured only for domains the operator opted in
//!   (`--allow-limit-override`); any other request carrying one is refused whole with
//!   `PERMISSION_DENIED`. Refusing rather than ignoring: an ignored override would leave the
//!   descriptor with the config file's limit or none at all (OK), so a misconfigured fleet would
//!   silently stop limiting; a refusal shows in the caller's error counters and logs.
//! - The rule of a descriptor (domain, window, entry keys) counts at most `--max-keys-per-rule`
//!   distinct descriptors per window; a new one beyond that is answered per `--on-key-cap`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit as RateLimitMsg,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration;
use tonic::{Request, Response, Status};

use crate::config::{unit_seconds, Limit, Limits};
use crate::redact::{show, show_entries};
use crate::store::{Count, Store};

/// Request size bounds (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_descriptors: usize,
    pub max_entries: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Bounds {
    /// The first bound the request breaks, as the `INVALID_ARGUMENT` message.
    pub fn check(&self, req: &RateLimitRequest) -> Result<(), String> {
        let b = self;
        if req.domain.is_empty() {
            return Err("domain must not be empty".into());
        }
        if req.domain.len() > b.max_key_bytes {
            return Err(format!(
                "domain is {} bytes, more than {} (--max-entry-key-bytes)",
                req.domain.len(),
                b.max_key_bytes
            ));
        }
        if req.descriptors.len() > b.max_descriptors {
            return Err(format!(
                "{} descriptors, more than {} (--max-descriptors)",
                req.descriptors.len(),
                b.max_descriptors
            ));
        }
        for (i, d) in req.descriptors.iter().enumerate() {
            if d.entries.is_empty() {
                return Err(format!("descriptor {i} has no entries"));
            }
            if d.entries.len() > b.max_entries {
                return Err(format!(
                    "descriptor {i} has {} entries, more than {} (--max-descriptor-entries)",
                    d.entries.len(),
                    b.max_entries
                ));
            }
            for (j, e) in d.entries.iter().enumerate() {
                if e.key.len() > b.max_key_bytes {
                    return Err(format!(
                        "descriptor {i} entry {j}: key is {} bytes, more than {} (--max-entry-key-bytes)",
                        e.key.len(),
                        b.max_key_bytes
                    ));
                }
                if e.value.len() > b.max_value_bytes {
                    return Err(format!(
                        "descriptor {i} entry {j}: value is {} bytes, more than {} (--max-entry-value-bytes)",
                        e.value.len(),
                        b.max_value_bytes
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Which domains may carry a descriptor `limit` override.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OverridePolicy {
    /// None (the default).
    #[default]
    Refuse,
    /// These domains.
    Domains(Vec<String>),
    /// Every domain (`--allow-limit-override '*'`).
    Any,
}

impl OverridePolicy {
    /// From `--allow-limit-override` values: `*` allows every domain, no value none.
    pub fn from_flags(domains: &[String]) -> Self {
        let domains: Vec<String> = domains
            .iter()
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect();
        if domains.iter().any(|d| d == "*") {
            Self::Any
        } else if domains.is_empty() {
            Self::Refuse
        } else {
            Self::Domains(domains)
        }
    }

    pub fn allows(&self, domain: &str) -> bool {
        match self {
            Self::Refuse => false,
            Self::Domains(d) => d.iter().any(|d| d == domain),
            Self::Any => true,
        }
    }
}

/// What a descriptor new to its rule gets once the rule is at `--max-keys-per-rule`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnKeyCap {
    /// OVER_LIMIT (default): the server never stops limiting silently; keys already counted in
    /// the window keep their own counts.
    #[default]
    OverLimit,
    /// OK without counting it (nothing is written), with a warning.
    Allow,
}

/// Everything the service decides with besides the limits.
#[derive(Debug, Clone)]
pub struct Policy {
    pub bounds: Bounds,
    pub overrides: OverridePolicy,
    /// Distinct descriptors per rule and window; 0: no cap.
    pub max_keys_per_rule: u64,
    pub on_key_cap: OnKeyCap,
}

/// Why a request is refused before anything touches Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A bound is broken (`INVALID_ARGUMENT`); the message names it.
    Invalid(String),
    /// A descriptor carries a `limit` override and the domain may not (`PERMISSION_DENIED`).
    Override,
}

impl Policy {
    /// The checks of the module docs, in order: the bounds, then the overrides.
    pub fn check(&self, req: &RateLimitRequest) -> Result<(), Refusal> {
        self.bounds.check(req).map_err(Refusal::Invalid)?;
        if !self.overrides.allows(&req.domain) && req.descriptors.iter().any(|d| d.limit.is_some())
        {
            return Err(Refusal::Override);
        }
        Ok(())
    }
}

/// What one descriptor is counted against, decided from the request and the limits alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub entries: Vec<(String, String)>,
    pub hits: u32,
    pub limit: Limit,
}

/// The count a descriptor of a checked request needs; `None`: no limit, or unlimited (OK,
/// nothing counted). A `limit` override with a known unit wins over the config file.
pub fn plan(limits: &Limits, req: &RateLimitRequest, d: &RateLimitDescriptor) -> Option<Planned> {
    let entries: Vec<(String, String)> = d
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let hits = d
        .hits_addend
        .map(|h| h.value)
        .filter(|h| *h > 0)
        .unwrap_or(u64::from(req.hits_addend.max(1)));
    let hits = u32::try_from(hits).unwrap_or(u32::MAX);
    let limit = match &d.limit {
        Some(o) if unit_seconds(o.unit) > 0 => Some(Limit {
            requests_per_unit: o.requests_per_unit,
            unit_seconds: unit_seconds(o.unit),
            unit_proto: o.unit,
            unlimited: false,
            shadow: false,
        }),
        _ => limits.lookup(&req.domain, &entries),
    };
    let limit = limit.filter(|l| !l.unlimited)?;
    Some(Planned {
        entries,
        hits,
        limit,
    })
}

/// The answer for a counted descriptor: whether it is over its limit, and its status.
pub fn descriptor_status(
    limit: &Limit,
    count: &Count,
    on_key_cap: OnKeyCap,
) -> (bool, DescriptorStatus) {
    let over = if count.capped {
        on_key_cap == OnKeyCap::OverLimit && !limit.shadow
    } else {
        !count.allowed && !limit.shadow
    };
    let status = DescriptorStatus {
        code: if over { Code::OverLimit } else { Code::Ok } as i32,
        current_limit: Some(RateLimitMsg {
            name: String::new(),
            requests_per_unit: limit.requests_per_unit,
            unit: Unit::try_from(limit.unit_proto).unwrap_or(Unit::Unknown) as i32,
        }),
        limit_remaining: if count.capped && !over {
            limit.requests_per_unit
        } else {
            count.remaining
        },
        duration_until_reset: Some(Duration {
            seconds: i64::try_from(count.reset_ms / 1000).unwrap_or(i64::MAX),
            nanos: i32::try_from((count.reset_ms % 1000) * 1_000_000).unwrap_or(0),
        }),
        ..Default::default()
    };
    (over, status)
}

/// Lets one warning of a kind through per interval, so a caller cannot flood the log; the next
/// one says how many were held back.
#[derive(Debug, Default)]
pub struct LogThrottle {
    last_s: AtomicU64,
    held: AtomicU64,
}

/// Seconds between two warnings of one kind.
const WARN_INTERVAL_S: u64 = 10;

impl LogThrottle {
    /// `Some(held back since the last one)` when a warning may be logged now.
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last_s.load(Ordering::Relaxed);
        if (last == 0 || now >= last.saturating_add(WARN_INTERVAL_S))
            && self
                .last_s
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[derive(Debug, Default)]
struct Throttles {
    invalid: LogThrottle,
    override_refused: LogThrottle,
    key_cap: LogThrottle,
    redis: LogThrottle,
}

pub struct RateLimit {
    limits: Arc<Limits>,
    store: Store,
    policy: Policy,
    throttles: Throttles,
}

impl RateLimit {
    pub fn new(limits: Arc<Limits>, store: Store, policy: Policy) -> Self {
        Self {
            limits,
            store,
            policy,
            throttles: Throttles::default(),
        }
    }
}

pub type Server = RateLimitServiceServer<RateLimit>;

pub fn server(svc: RateLimit) -> Server {
    RateLimitServiceServer::new(svc)
}

#[tonic::async_trait]
impl RateLimitService for RateLimit {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let req = request.into_inner();
        match self.policy.check(&req) {
            Ok(()) => {}
            Err(Refusal::Invalid(reason)) => {
                if let Some(held) = self.throttles.invalid.admit() {
                    tracing::warn!(domain = %show(&req.domain), %reason, held_back = held, "request refused: INVALID_ARGUMENT");
                }
                return Err(Status::invalid_argument(reason));
            }
            Err(Refusal::Override) => {
                if let Some(held) = self.throttles.override_refused.admit() {
                    tracing::warn!(
                        domain = %show(&req.domain),
                        held_back = held,
                        "request refused: it carries a descriptor limit override and its domain is not in --allow-limit-override"
                    );
                }
                return Err(Status::permission_denied(format!(
                    "descriptor limit overrides are not allowed for domain {} (the server's --allow-limit-override)",
                    show(&req.domain)
                )));
            }
        }
        let mut overall = Code::Ok;
        let mut statuses = Vec::with_capacity(req.descriptors.len());
        for d in &req.descriptors {
            let Some(Planned {
                entries,
                hits,
                limit,
            }) = plan(&self.limits, &req, d)
            else {
                statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                });
                continue;
            };
            let keys = self.store.keys(&req.domain, &entries, limit.unit_seconds);
            let count = self
                .store
                .hit(
                    &keys,
                    hits,
                    limit.requests_per_unit,
                    limit.unit_seconds,
                    self.policy.max_keys_per_rule,
                )
                .await
                .map_err(|e| {
                    if let Some(held) = self.throttles.redis.admit() {
                        tracing::warn!(error = %e, held_back = held, "redis");
                    }
                    Status::unavailable(e.to_string())
                })?;
            if count.capped {
                let deny = self.policy.on_key_cap == OnKeyCap::OverLimit;
                if let Some(held) = self.throttles.key_cap.admit() {
                    tracing::warn!(
                        domain = %show(&req.domain),
                        rule = %keys.rule,
                        max_keys_per_rule = self.policy.max_keys_per_rule,
                        answer = if deny { "OVER_LIMIT" } else { "OK, not counted" },
                        held_back = held,
                        "rule has the most distinct keys allowed in this window; a new key is not counted"
                    );
                }
            }
            if !count.allowed && limit.shadow {
                tracing::info!(domain = %show(&req.domain), entries = %show_entries(&entries), "shadow mode: would be over limit");
            }
            let (over, status) = descriptor_status(&limit, &count, self.policy.on_key_cap);
            if over {
                overall = Code::OverLimit;
            }
            statuses.push(status);
        }
        Ok(Response::new(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };

    fn descriptor(entries: &[(&str, &str)], limit: Option<(u32, i32)>) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            limit: limit.map(|(requests_per_unit, unit)| RateLimitOverride {
                requests_per_unit,
                unit,
            }),
            ..Default::default()
        }
    }

    fn policy(overrides: OverridePolicy) -> Policy {
        Policy {
            bounds: Bounds {
                max_descriptors: 2,
                max_entries: 2,
                max_key_bytes: 8,
                max_value_bytes: 8,
            },
            overrides,
            max_keys_per_rule: 0,
            on_key_cap: OnKeyCap::OverLimit,
        }
    }

    #[test]
    fn check_refuses_bounds_before_overrides() {
        let req = |domain: &str, descriptors| RateLimitRequest {
            domain: domain.into(),
            descriptors,
            ..Default::default()
        };
        let p = policy(OverridePolicy::Domains(vec!["ok".into()]));
        let over = descriptor(&[("k", "v")], Some((1, 2)));
        assert_eq!(p.check(&req("ok", vec![over.clone()])), Ok(()));
        assert_eq!(
            p.check(&req("other", vec![over.clone()])),
            Err(Refusal::Override)
        );
        assert_eq!(
            p.check(&req("other", vec![descriptor(&[("k", "v")], None)])),
            Ok(())
        );
        for bad in [
            req("", vec![]),
            req("other", vec![descriptor(&[], Some((1, 2)))]),
            req(
                "other",
                vec![descriptor(&[("k", "123456789")], Some((1, 2)))],
            ),
            req("other", vec![over.clone(), over.clone(), over]),
        ] {
            assert!(matches!(p.check(&bad), Err(Refusal::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn plan_prefers_a_known_override_and_skips_unlimited() {
        let limits = Limits::from_yaml(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 7}\n  - key: free\n    rate_limit: {unlimited: true}\n",
        )
        .unwrap();
        let req = RateLimitRequest {
            domain: "d".into(),
            hits_addend: 0,
            ..Default::default()
        };
        let p = plan(&limits, &req, &descriptor(&[("k", "v")], None)).unwrap();
        assert_eq!(
            (p.hits, p.limit.requests_per_unit, p.limit.unit_seconds),
            (1, 7, 3600)
        );
        let p = plan(&limits, &req, &descriptor(&[("k", "v")], Some((3, 2)))).unwrap();
        assert_eq!((p.limit.requests_per_unit, p.limit.unit_seconds), (3, 60));
        // An override with an unknown unit falls back to the file.
        let p = plan(&limits, &req, &descriptor(&[("k", "v")], Some((3, 99)))).unwrap();
        assert_eq!(p.limit.requests_per_unit, 7);
        assert_eq!(
            plan(&limits, &req, &descriptor(&[("free", "v")], None)),
            None
        );
        assert_eq!(
            plan(&limits, &req, &descriptor(&[("nope", "v")], None)),
            None
        );
        let mut d = descriptor(&[("k", "v")], None);
        d.hits_addend = Some(envoy_types::pb::google::protobuf::UInt64Value { value: 1 << 40 });
        assert_eq!(plan(&limits, &req, &d).unwrap().hits, u32::MAX);
    }

    #[test]
    fn descriptor_status_follows_the_count_shadow_and_key_cap() {
        let limit = Limit {
            requests_per_unit: 5,
            unit_seconds: 60,
            unit_proto: 2,
            unlimited: false,
            shadow: false,
        };
        let count = |allowed, capped| Count {
            allowed,
            remaining: 2,
            reset_ms: 1500,
            capped,
        };
        let (over, s) = descriptor_status(&limit, &count(true, false), OnKeyCap::OverLimit);
        assert!(!over);
        assert_eq!((s.code, s.limit_remaining), (Code::Ok as i32, 2));
        let reset = s.duration_until_reset.unwrap();
        assert_eq!((reset.seconds, reset.nanos), (1, 500_000_000));
        assert!(descriptor_status(&limit, &count(false, false), OnKeyCap::Allow).0);
        assert!(descriptor_status(&limit, &count(false, true), OnKeyCap::OverLimit).0);
        let (over, s) = descriptor_status(&limit, &count(false, true), OnKeyCap::Allow);
        assert!(!over);
        assert_eq!(s.limit_remaining, 5);
        let shadow = Limit {
            shadow: true,
            ..limit
        };
        assert!(!descriptor_status(&shadow, &count(false, false), OnKeyCap::OverLimit).0);
        assert!(!descriptor_status(&shadow, &count(false, true), OnKeyCap::OverLimit).0);
    }
}
