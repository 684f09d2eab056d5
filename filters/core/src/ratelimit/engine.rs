//! The rate limiter: rules in, decisions and responses out, written against [`Host`].

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use super::bucket::Shape;
use super::client_ip::client_ip;
use super::config::{
    Config, ConfigError, ContentionFallback, FailureMode, ResponseHeaders, Scope, Unit,
};
use super::key::{key_values, matches, short_hash, tag, RequestView};
use super::process::{ProcessBuckets, RuleBuckets};
use super::store::{RuleStore, Update};
use crate::host::{Direction, Host, LogLevel};

pub const LIMITED: &str = "portcullis_ratelimit_limited_total";
pub const PASSED: &str = "portcullis_ratelimit_passed_total";
pub const SHADOW_LIMITED: &str = "portcullis_ratelimit_shadow_limited_total";
pub const GLOBAL_ERRORS: &str = "portcullis_ratelimit_global_errors_total";
pub const CAS_FALLBACK: &str = "portcullis_ratelimit_cas_fallback_total";
pub const EVICTIONS: &str = "portcullis_ratelimit_evictions_total";
pub const COLLECTED: &str = "portcullis_ratelimit_collected_total";
pub const CAS_RETRIES: &str = "portcullis_ratelimit_cas_retries_total";

/// Every counter the filter may touch (adapters define them up front).
pub const COUNTERS: [&str; 8] = [
    CAS_RETRIES,
    LIMITED,
    PASSED,
    SHADOW_LIMITED,
    GLOBAL_ERRORS,
    CAS_FALLBACK,
    EVICTIONS,
    COLLECTED,
];

/// Slots swept per rule per tick.
const SWEEP_BATCH: u32 = 512;

/// What the filter needs beyond [`Host`].
pub trait RateLimitHost: Host {
    /// The downstream remote address (`ip:port` or an IP), e.g. proxy-wasm `source.address`.
    fn downstream_address(&self) -> Option<String>;

    /// Process-wide local buckets, when every worker shares this process's memory (dynamic
    /// modules). Local rules then take tokens under a lock instead of compare-and-swap in
    /// shared data. `None` (proxy-wasm: one VM per worker) uses shared data.
    fn process_buckets(&self) -> Option<&'static ProcessBuckets> {
        None
    }
}

/// One rule's standing, for the rate-limit headers and `retry-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    pub window_s: u64,
    pub remaining: u64,
    pub reset_s: u64,
    pub retry_after_s: u64,
}

impl Verdict {
    /// The stricter of two: a denial over a pass; among denials the longer wait; among passes
    /// the fewer remaining, then the smaller limit.
    fn stricter(self, other: Verdict) -> Verdict {
        match (self.allowed, other.allowed) {
            (false, true) => self,
            (true, false) => other,
            (false, false) => {
                if other.retry_after_s > self.retry_after_s {
                    other
                } else {
                    self
                }
            }
            (true, true) => {
                if (other.remaining, other.limit) < (self.remaining, self.limit) {
                    other
                } else {
                    self
                }
            }
        }
    }
}

fn merge(acc: Option<Verdict>, v: Verdict) -> Option<Verdict> {
    Some(match acc {
        Some(a) => a.stricter(v),
        None => v,
    })
}

/// One descriptor for the rate-limit service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    /// The rule's limit, sent as the descriptor's `limit` override.
    pub requests_per_unit: u64,
    pub unit: Unit,
}

/// A call the adapter makes to the rate-limit service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalRequest {
    pub cluster: String,
    pub domain: String,
    pub timeout_ms: u64,
    pub descriptors: Vec<Descriptor>,
}

/// One descriptor's answer, in request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub over_limit: bool,
    /// `current_limit` (requests per unit, unit seconds), if the service said.
    pub limit: Option<(u64, u64)>,
    pub remaining: u64,
    /// `duration_until_reset`, seconds, if the service said.
    pub reset_s: Option<u64>,
}

/// The service's answer, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalResult {
    Ok {
        over_limit: bool,
        statuses: Vec<DescriptorStatus>,
    },
    /// Transport error, timeout, gRPC status or overall code UNKNOWN.
    Error(String),
}

/// Per-request state the adapter keeps between callbacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestState {
    verdict: Option<Verdict>,
    /// The filter answered locally: the response phase adds nothing.
    local_reply: bool,
    /// Global rules pending: (descriptor index → rule limit) for the headers.
    global_limits: Vec<(u64, Unit)>,
}

/// What to do with the request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through (the filter may add response headers later).
    Continue,
    /// The filter sent the limited response.
    Limited,
    /// Call the rate-limit service, keep the request paused, then call [`RateLimiter::on_global`].
    CallGlobal(GlobalRequest),
}

struct CompiledRule {
    store: Option<RuleStore>,
    /// Set by [`RateLimiter::init`] when the host has process-wide buckets.
    process: std::sync::OnceLock<Arc<RuleBuckets>>,
}

/// A configured rate limiter (one per filter instance / root context).
pub struct RateLimiter {
    cfg: Config,
    rules: Vec<CompiledRule>,
    /// Atomic so one limiter can serve every worker of a process (dynamic modules).
    sweep_cursor: std::sync::atomic::AtomicU32,
    /// Some rule matches on or keys by a request field: read the headers. Otherwise (one budget
    /// for all requests) the pass path reads no header at all.
    reads_request: bool,
    /// Some rule keys by the client address.
    needs_ip: bool,
}

impl RateLimiter {
    /// Parses and validates the config; the namespace defaults to a hash of the config text.
    pub fn from_json(raw: &[u8]) -> Result<Self, ConfigError> {
        let cfg = Config::from_json(raw)?;
        Ok(Self::new(cfg, raw))
    }

    /// [`from_json`](Self::from_json) for an instance the controller attributed to `tenant`
    /// (see [`new_for_tenant`](Self::new_for_tenant)).
    pub fn from_json_for_tenant(raw: &[u8], tenant: &str) -> Result<Self, ConfigError> {
        let cfg = Config::from_json(raw)?;
        Ok(Self::new_for_tenant(cfg, raw, tenant))
    }

    /// `seed` names the default namespace (e.g. the raw config bytes).
    pub fn new(cfg: Config, seed: &[u8]) -> Self {
        Self::new_for_tenant(cfg, seed, "")
    }

    /// Like [`new`](Self::new), with every shared-data key scoped to `tenant`: the Kubernetes
    /// namespace of the policy, taken from a name the controller sets (the wasm plugin name) and
    /// no config can choose. Two tenants writing the same `namespace` never share, read or drain
    /// each other's buckets; policies of one tenant still share by `namespace`.
    pub fn new_for_tenant(cfg: Config, seed: &[u8], tenant: &str) -> Self {
        let ns = match (&cfg.namespace, tenant) {
            (Some(n), "") => short_hash(&[b"ns", n.as_bytes()]),
            (None, "") => short_hash(&[b"cfg", seed]),
            (Some(n), t) => short_hash(&[b"tenant-ns", t.as_bytes(), b"\0", n.as_bytes()]),
            (None, t) => short_hash(&[b"tenant-cfg", t.as_bytes(), b"\0", seed]),
        };
        let rules = cfg
            .rules
            .iter()
            .map(|r| {
                let store = (r.scope == Scope::Local).then(|| {
                    // The rule's definition is part of the key: policies sharing a namespace
                    // only share buckets for identical rules.
                    let def = format!(
                        "{}|{}|{:?}|{}|{:?}|{}|{}",
                        r.name,
                        r.limit.requests,
                        r.limit.unit,
                        r.capacity(),
                        r.key,
                        cfg.local.slots,
                        cfg.local.slot_entries
                    );
                    RuleStore {
                        prefix: format!("pcrl/{ns}/{}/", &short_hash(&[def.as_bytes()])[..12]),
                        slots: cfg.local.slots,
                        slot_entries: usize::try_from(cfg.local.slot_entries).unwrap_or(8),
                        shape: Shape {
                            requests: r.limit.requests,
                            unit: r.limit.unit,
                            burst: r.capacity(),
                        },
                    }
                });
                CompiledRule {
                    store,
                    process: std::sync::OnceLock::new(),
                }
            })
            .collect();
        let reads_request = cfg.rules.iter().any(|r| {
            let m = &r.matcher;
            !r.key.is_empty()
                || m.path_prefix.is_some()
                || !m.methods.is_empty()
                || !m.headers.is_empty()
        });
        let needs_ip = cfg
            .rules
            .iter()
            .any(|r| r.key.contains(&super::config::KeyPart::ClientIp));
        Self {
            cfg,
            rules,
            sweep_cursor: std::sync::atomic::AtomicU32::new(0),
            reads_request,
            needs_ip,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Binds each local rule to its buckets (configure time): the host's process-wide buckets
    /// if it has them, else shared-data slots, created here.
    pub fn init<H: RateLimitHost + ?Sized>(
        &self,
        host: &mut H,
    ) -> Result<(), crate::host::SharedDataError> {
        let cap = usize::try_from(
            u64::from(self.cfg.local.slots) * u64::from(self.cfg.local.slot_entries),
        )
        .unwrap_or(usize::MAX);
        for r in &self.rules {
            let Some(s) = &r.store else { continue };
            match host.process_buckets() {
                Some(pb) => {
                    let _ = r.process.set(pb.rule(&s.prefix, cap));
                }
                None => s.init(host)?,
            }
        }
        Ok(())
    }

    /// Collects idle buckets from the next batch of slots (call on every tick).
    pub fn tick<H: Host + ?Sized>(&self, host: &mut H) {
        let now = now_ms(host);
        let mut dropped = 0u64;
        for r in &self.rules {
            // Process-wide buckets are bounded by their LRU; only shared-data slots are swept.
            if r.process.get().is_some() {
                continue;
            }
            if let Some(s) = &r.store {
                let from = self.sweep_cursor.load(std::sync::atomic::Ordering::Relaxed);
                let (_, d) = s.sweep(host, from, SWEEP_BATCH, now);
                dropped += u64::from(d);
            }
        }
        let next = self
            .sweep_cursor
            .load(std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(SWEEP_BATCH)
            % self.cfg.local.slots.max(1);
        self.sweep_cursor
            .store(next, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            host.counter_add(COLLECTED, dropped);
        }
    }

    /// Buckets stored for local rule `index` (diagnostics, tests).
    pub fn stored_buckets<H: Host + ?Sized>(&self, host: &H, index: usize) -> usize {
        let Some(r) = self.rules.get(index) else {
            return 0;
        };
        if let Some(p) = r.process.get() {
            return p.len();
        }
        r.store.as_ref().map(|s| s.count(host)).unwrap_or(0)
    }

    /// Request headers arrived: check local rules, and say whether to call the service.
    pub fn on_request<H: RateLimitHost + ?Sized>(
        &self,
        host: &mut H,
        state: &mut RequestState,
    ) -> Decision {
        let view = if self.reads_request {
            RequestView::from_headers(&host.headers(Direction::Request))
        } else {
            RequestView::default()
        };
        let ip = if self.needs_ip {
            let downstream = host.downstream_address();
            client_ip(
                &view.xff,
                self.cfg.client_ip.trusted_hops,
                downstream.as_deref(),
            )
        } else {
            None
        };
        let now = now_ms(host);
        let mut global = Vec::new();
        for (rule, compiled) in self.cfg.rules.iter().zip(&self.rules) {
            if !matches(rule, &view) {
                continue;
            }
            let Some(values) = key_values(rule, &view, ip) else {
                continue;
            };
            match &compiled.store {
                Some(store) => {
                    let t = tag(&store.prefix, &values);
                    let update = match compiled.process.get() {
                        Some(buckets) => {
                            let (take, evicted) = buckets.take(&store.shape, t, now);
                            Update::Done {
                                take,
                                retries: 0,
                                evicted,
                            }
                        }
                        None => store.take(host, t, now, self.cfg.local.max_retries),
                    };
                    let verdict = match update {
                        Update::Done {
                            take,
                            evicted,
                            retries,
                        } => {
                            if retries > 0 {
                                host.counter_add(CAS_RETRIES, u64::from(retries));
                            }
                            if evicted {
                                host.counter_add(EVICTIONS, 1);
                            }
                            Verdict {
                                allowed: take.allowed,
                                limit: rule.limit.requests,
                                window_s: rule.limit.unit.seconds(),
                                remaining: take.remaining,
                                reset_s: ceil_s(take.reset_ms),
                                retry_after_s: ceil_s(take.retry_after_ms).max(1),
                            }
                        }
                        failure @ (Update::Contended | Update::Unavailable) => {
                            host.counter_add(CAS_FALLBACK, 1);
                            let allowed = self.cfg.local.on_contention == ContentionFallback::Allow;
                            host.log(
                                LogLevel::Warn,
                                &format!(
                                    "ratelimit: rule {:?}: shared data {} after {} attempts, {}",
                                    rule.name,
                                    if failure == Update::Contended {
                                        "contended"
                                    } else {
                                        "unavailable"
                                    },
                                    self.cfg.local.max_retries,
                                    if allowed { "allowing" } else { "denying" }
                                ),
                            );
                            Verdict {
                                allowed,
                                limit: rule.limit.requests,
                                window_s: rule.limit.unit.seconds(),
                                remaining: 0,
                                reset_s: 1,
                                retry_after_s: 1,
                            }
                        }
                    };
                    state.verdict = merge(state.verdict, verdict);
                    if !verdict.allowed && self.limit(host, state, &rule.name) {
                        // Denied: later rules are not charged, the service is not asked.
                        return Decision::Limited;
                    }
                }
                None => {
                    let mut entries = vec![("rule".to_string(), rule.name.clone())];
                    entries.extend(values);
                    state
                        .global_limits
                        .push((rule.limit.requests, rule.limit.unit));
                    global.push(Descriptor {
                        entries,
                        requests_per_unit: rule.limit.requests,
                        unit: rule.limit.unit,
                    });
                }
            }
        }
        match (&self.cfg.global, global.is_empty()) {
            (Some(g), false) => Decision::CallGlobal(GlobalRequest {
                cluster: g.cluster.clone(),
                domain: g.domain.clone(),
                timeout_ms: g.timeout_ms,
                descriptors: global,
            }),
            _ => {
                host.counter_add(PASSED, 1);
                Decision::Continue
            }
        }
    }

    /// The service answered (or failed): finish the decision.
    pub fn on_global<H: Host + ?Sized>(
        &self,
        host: &mut H,
        state: &mut RequestState,
        result: GlobalResult,
    ) -> Decision {
        let mode = self
            .cfg
            .global
            .as_ref()
            .map(|g| g.failure_mode)
            .unwrap_or_default();
        match result {
            GlobalResult::Ok {
                over_limit,
                statuses,
            } => {
                for (i, s) in statuses.iter().enumerate() {
                    let fallback = state.global_limits.get(i).copied();
                    let (limit, window_s) = s
                        .limit
                        .or(fallback.map(|(r, u)| (r, u.seconds())))
                        .unwrap_or((0, 0));
                    let reset_s = s.reset_s.unwrap_or(window_s);
                    let v = Verdict {
                        allowed: !s.over_limit,
                        limit,
                        window_s,
                        remaining: s.remaining,
                        reset_s,
                        retry_after_s: reset_s.max(1),
                    };
                    state.verdict = merge(state.verdict, v);
                }
                if over_limit {
                    if state.verdict.is_none_or(|v| v.allowed) {
                        // OVER_LIMIT without per-descriptor detail.
                        let (limit, unit) = state
                            .global_limits
                            .first()
                            .copied()
                            .unwrap_or((0, Unit::Second));
                        state.verdict = Some(Verdict {
                            allowed: false,
                            limit,
                            window_s: unit.seconds(),
                            remaining: 0,
                            reset_s: unit.seconds(),
                            retry_after_s: unit.seconds(),
                        });
                    }
                    if self.limit(host, state, "global") {
                        return Decision::Limited;
                    }
                }
            }
            GlobalResult::Error(why) => {
                host.counter_add(GLOBAL_ERRORS, 1);
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "ratelimit: rate-limit service failed ({why}); failure_mode {}",
                        if mode == FailureMode::Deny {
                            "deny"
                        } else {
                            "allow"
                        }
                    ),
                );
                if mode == FailureMode::Deny {
                    let v = Verdict {
                        allowed: false,
                        limit: 0,
                        window_s: 0,
                        remaining: 0,
                        reset_s: 1,
                        retry_after_s: 1,
                    };
                    // No limit is known: the headers must not claim one.
                    state.verdict = Some(v);
                    if self.limit(host, state, "global (service unavailable)") {
                        return Decision::Limited;
                    }
                }
            }
        }
        host.counter_add(PASSED, 1);
        Decision::Continue
    }

    /// Response headers: add the rate-limit headers of a passed request.
    pub fn on_response<H: Host + ?Sized>(&self, host: &mut H, state: &RequestState) {
        if state.local_reply || self.cfg.response_headers == ResponseHeaders::None {
            return;
        }
        if let Some(v) = state.verdict {
            for (name, value) in rate_headers(&v) {
                host.set_header(Direction::Response, name, &value);
            }
        }
    }

    /// Denies (or, in shadow mode, counts and logs). True when the request was answered.
    fn limit<H: Host + ?Sized>(&self, host: &mut H, state: &mut RequestState, rule: &str) -> bool {
        if self.cfg.shadow {
            host.counter_add(SHADOW_LIMITED, 1);
            host.log(
                LogLevel::Info,
                &format!("ratelimit: shadow: rule {rule:?} would limit this request"),
            );
            return false;
        }
        host.counter_add(LIMITED, 1);
        host.log(
            LogLevel::Debug,
            &format!("ratelimit: rule {rule:?} limited a request"),
        );
        let v = state.verdict.unwrap_or(Verdict {
            allowed: false,
            limit: 0,
            window_s: 0,
            remaining: 0,
            reset_s: 1,
            retry_after_s: 1,
        });
        let mut headers: Vec<(&str, String)> = vec![
            ("retry-after", v.retry_after_s.max(1).to_string()),
            ("content-type", "text/plain".to_string()),
        ];
        if self.cfg.response_headers == ResponseHeaders::Draft03 {
            headers.extend(rate_headers(&v));
        }
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host.send_local_response(self.cfg.status, &refs, b"rate limited\n");
        state.local_reply = true;
        true
    }
}

/// draft-ietf-httpapi-ratelimit-headers-03 fields. Without a known limit (service down) only
/// `remaining` and `reset` are sent.
fn rate_headers(v: &Verdict) -> Vec<(&'static str, String)> {
    let mut h = Vec::with_capacity(3);
    if v.limit > 0 {
        h.push((
            "x-ratelimit-limit",
            format!("{}, {};w={}", v.limit, v.limit, v.window_s),
        ));
    }
    h.push(("x-ratelimit-remaining", v.remaining.to_string()));
    h.push(("x-ratelimit-reset", v.reset_s.to_string()));
    h
}

fn ceil_s(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

fn now_ms<H: Host + ?Sized>(host: &H) -> u64 {
    host.now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
