//! Engine tests against the in-memory host.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::engine::*;
use crate::host::{Direction, Host, LogLevel, SharedDataError, SharedValue};
use crate::testing::MemoryHost;

/// [`MemoryHost`] plus a downstream address.
#[derive(Default)]
struct TestHost {
    inner: MemoryHost,
    downstream: Option<String>,
    /// Process-wide buckets, as the dynamic-module host offers them.
    process: Option<&'static super::process::ProcessBuckets>,
}

impl Host for TestHost {
    fn header(&self, d: Direction, n: &str) -> Option<String> {
        self.inner.header(d, n)
    }
    fn headers(&self, d: Direction) -> Vec<(String, String)> {
        self.inner.headers(d)
    }
    fn set_header(&mut self, d: Direction, n: &str, v: &str) {
        self.inner.set_header(d, n, v)
    }
    fn add_header(&mut self, d: Direction, n: &str, v: &str) {
        self.inner.add_header(d, n, v)
    }
    fn remove_header(&mut self, d: Direction, n: &str) {
        self.inner.remove_header(d, n)
    }
    fn send_local_response(&mut self, s: u16, h: &[(&str, &str)], b: &[u8]) {
        self.inner.send_local_response(s, h, b)
    }
    fn now(&self) -> SystemTime {
        self.inner.now()
    }
    fn shared_get(&self, k: &str) -> Option<SharedValue> {
        self.inner.shared_get(k)
    }
    fn shared_set(&mut self, k: &str, d: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
        self.inner.shared_set(k, d, cas)
    }
    fn counter_add(&mut self, n: &str, by: u64) {
        self.inner.counter_add(n, by)
    }
    fn log(&self, l: LogLevel, m: &str) {
        self.inner.log(l, m)
    }
}

impl RateLimitHost for TestHost {
    fn downstream_address(&self) -> Option<String> {
        self.downstream.clone()
    }
    fn process_buckets(&self) -> Option<&'static super::process::ProcessBuckets> {
        self.process
    }
}

const T0: u64 = 1_700_000_000;

/// Shared state across "requests": shared data, counters and the clock persist.
struct World {
    rl: RateLimiter,
    shared: std::collections::HashMap<String, SharedValue>,
    counters: std::collections::BTreeMap<String, u64>,
    now: SystemTime,
}

struct Outcome {
    decision: Decision,
    status: u16,
    headers: Vec<(String, String)>,
    state: RequestState,
}

impl Outcome {
    fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    }
}

impl World {
    fn new(cfg: Value) -> Self {
        let rl = RateLimiter::from_json(cfg.to_string().as_bytes()).unwrap();
        let mut h = TestHost::default();
        rl.init(&mut h).unwrap();
        Self {
            rl,
            shared: h.inner.shared,
            counters: Default::default(),
            now: UNIX_EPOCH + Duration::from_secs(T0),
        }
    }

    fn host(&mut self, headers: &[(&str, &str)], downstream: &str) -> TestHost {
        let mut inner = MemoryHost::with_request(headers);
        inner.shared = std::mem::take(&mut self.shared);
        inner.counters = std::mem::take(&mut self.counters);
        inner.now = Some(self.now);
        TestHost {
            inner,
            downstream: Some(downstream.to_string()),
            process: None,
        }
    }

    /// Serve the next requests with `rl` (another filter instance on the same shared data).
    fn switch_to(&mut self, rl: RateLimiter) {
        let mut h = self.host(&[], "127.0.0.1:1");
        rl.init(&mut h).unwrap();
        self.put_back(h);
        self.rl = rl;
    }

    fn put_back(&mut self, h: TestHost) {
        self.shared = h.inner.shared;
        self.counters = h.inner.counters;
    }

    /// One request through request and response phases; global calls answered by `global`.
    fn request_with(
        &mut self,
        headers: &[(&str, &str)],
        downstream: &str,
        global: impl FnOnce(&GlobalRequest) -> GlobalResult,
    ) -> Outcome {
        let mut h = self.host(headers, downstream);
        let mut state = RequestState::default();
        let mut decision = self.rl.on_request(&mut h, &mut state);
        if let Decision::CallGlobal(req) = &decision {
            let result = global(req);
            decision = self.rl.on_global(&mut h, &mut state, result);
        }
        let (status, headers) = match &h.inner.local_response {
            Some(r) => (r.status, r.headers.clone()),
            None => {
                self.rl.on_response(&mut h, &state);
                (200, h.inner.response.clone())
            }
        };
        self.put_back(h);
        Outcome {
            decision,
            status,
            headers,
            state,
        }
    }

    fn request(&mut self, headers: &[(&str, &str)], downstream: &str) -> Outcome {
        self.request_with(headers, downstream, |_| panic!("no global rules expected"))
    }

    fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

fn get(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":path", path.to_string()),
        (":authority", "h".into()),
    ]
}

fn per_ip(requests: u64, extra: Value) -> Value {
    let mut cfg = json!({
        "rules": [{"name": "per-ip", "key": ["client_ip"], "limit": {"requests": requests, "unit": "hour"}}]
    });
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    cfg
}

fn req<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn exact_limit_per_ip_with_headers() {
    let mut w = World::new(per_ip(3, json!({})));
    let h = get("/");
    for i in 0..3u64 {
        let o = w.request(&req(&h), "10.0.0.1:1000");
        assert_eq!(o.status, 200);
        assert_eq!(o.header("x-ratelimit-limit"), Some("3, 3;w=3600"));
        assert_eq!(
            o.header("x-ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
    }
    let o = w.request(&req(&h), "10.0.0.1:1001");
    assert_eq!(o.status, 429);
    assert_eq!(o.decision, Decision::Limited);
    // 3 per hour: the next token in 20 minutes.
    assert_eq!(o.header("retry-after"), Some("1200"));
    assert_eq!(o.header("x-ratelimit-remaining"), Some("0"));
    // Another client is untouched.
    assert_eq!(w.request(&req(&h), "10.0.0.2:1000").status, 200);
    assert_eq!(w.counter(LIMITED), 1);
    assert_eq!(w.counter(PASSED), 4);
    // The clock moves: one token back after 20 minutes.
    w.now += Duration::from_secs(1200);
    assert_eq!(w.request(&req(&h), "10.0.0.1:1").status, 200);
    assert_eq!(w.request(&req(&h), "10.0.0.1:1").status, 429);
}

#[test]
fn spoofed_xff_does_not_escape_with_zero_and_one_hops() {
    // Zero hops: Envoy (use_remote_address) appended the peer, the client prepended junk.
    let mut w = World::new(per_ip(2, json!({"client_ip": {"trusted_hops": 0}})));
    let mut statuses = Vec::new();
    for i in 0..5 {
        let mut h = get("/");
        h.push(("x-forwarded-for", format!("203.0.113.{i}, 127.0.0.1")));
        statuses.push(w.request(&req(&h), "127.0.0.1:5555").status);
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    // One hop: the trusted proxy appended the real client 198.51.100.7; junk on the left varies.
    let mut w = World::new(per_ip(2, json!({"client_ip": {"trusted_hops": 1}})));
    let mut statuses = Vec::new();
    for i in 0..5 {
        let mut h = get("/");
        h.push((
            "x-forwarded-for",
            format!("203.0.113.{i}, 198.51.100.7, 10.0.0.9"),
        ));
        statuses.push(w.request(&req(&h), "10.0.0.9:5555").status);
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    // ... while a different real client behind the proxy has its own bucket.
    let mut h = get("/");
    h.push(("x-forwarded-for", "198.51.100.8, 10.0.0.9".into()));
    assert_eq!(w.request(&req(&h), "10.0.0.9:5555").status, 200);
}

#[test]
fn strictest_rule_wins_and_unmatched_rules_do_not_apply() {
    let mut w = World::new(json!({"rules": [
        {"name": "loose", "limit": {"requests": 10, "unit": "minute"}},
        {"name": "api", "match": {"path_prefix": "/api"}, "key": ["header:x-api-key"], "limit": {"requests": 1, "unit": "minute"}}
    ]}));
    let mut h = get("/api/x");
    h.push(("x-api-key", "k".into()));
    let o = w.request(&req(&h), "1.1.1.1:1");
    assert_eq!(o.status, 200);
    // The stricter rule (0 left of 1) is reported.
    assert_eq!(o.header("x-ratelimit-limit"), Some("1, 1;w=60"));
    assert_eq!(w.request(&req(&h), "1.1.1.1:1").status, 429);
    // Missing header: the api rule does not apply; other paths: neither does it.
    assert_eq!(w.request(&req(&get("/api/x")), "1.1.1.1:1").status, 200);
    let o = w.request(&req(&get("/other")), "1.1.1.1:1");
    assert_eq!(o.status, 200);
    assert_eq!(o.header("x-ratelimit-limit"), Some("10, 10;w=60"));
}

#[test]
fn shadow_counts_but_never_limits() {
    let mut w = World::new(per_ip(1, json!({"shadow": true})));
    for _ in 0..4 {
        let o = w.request(&req(&get("/")), "10.0.0.1:1");
        assert_eq!(o.status, 200);
        assert_eq!(o.decision, Decision::Continue);
    }
    assert_eq!(w.counter(SHADOW_LIMITED), 3);
    assert_eq!(w.counter(LIMITED), 0);
    assert_eq!(w.counter(PASSED), 4);
}

#[test]
fn headers_none_adds_nothing_but_retry_after() {
    let mut w = World::new(per_ip(
        1,
        json!({"response_headers": "none", "status": 503}),
    ));
    let o = w.request(&req(&get("/")), "10.0.0.1:1");
    assert!(o.headers.iter().all(|(k, _)| !k.starts_with("x-ratelimit")));
    let o = w.request(&req(&get("/")), "10.0.0.1:1");
    assert_eq!(o.status, 503);
    assert!(o.header("retry-after").is_some());
    assert!(o.headers.iter().all(|(k, _)| !k.starts_with("x-ratelimit")));
}

fn global_cfg(mode: &str) -> Value {
    json!({
        "rules": [{"name": "g", "key": ["header:x-api-key", "path"], "limit": {"requests": 5, "unit": "minute"}, "scope": "global"}],
        "global": {"cluster": "rls", "domain": "d", "timeout_ms": 50, "failure_mode": mode}
    })
}

#[test]
fn global_descriptors_carry_keys_and_limit() {
    let mut w = World::new(global_cfg("allow"));
    let mut h = get("/p?x");
    h.push(("x-api-key", "key1".into()));
    let mut seen = None;
    let o = w.request_with(&req(&h), "1.1.1.1:1", |r| {
        seen = Some(r.clone());
        GlobalResult::Ok {
            over_limit: false,
            statuses: vec![DescriptorStatus {
                over_limit: false,
                limit: Some((5, 60)),
                remaining: 4,
                reset_s: Some(30),
            }],
        }
    });
    let r = seen.unwrap();
    assert_eq!(
        (r.cluster.as_str(), r.domain.as_str(), r.timeout_ms),
        ("rls", "d", 50)
    );
    let d = &r.descriptors[0];
    let entries: Vec<(&str, &str)> = d
        .entries
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        entries,
        [("rule", "g"), ("header:x-api-key", "key1"), ("path", "/p")]
    );
    assert_eq!(
        (d.requests_per_unit, d.unit),
        (5, super::config::Unit::Minute)
    );
    assert_eq!(o.status, 200);
    assert_eq!(o.header("x-ratelimit-remaining"), Some("4"));
    assert_eq!(o.header("x-ratelimit-reset"), Some("30"));
    // Over limit.
    let o = w.request_with(&req(&h), "1.1.1.1:1", |_| GlobalResult::Ok {
        over_limit: true,
        statuses: vec![DescriptorStatus {
            over_limit: true,
            limit: Some((5, 60)),
            remaining: 0,
            reset_s: Some(12),
        }],
    });
    assert_eq!(o.status, 429);
    assert_eq!(o.header("retry-after"), Some("12"));
    // No api key: the rule does not apply, the service is not called.
    let o = w.request(&req(&get("/p")), "1.1.1.1:1");
    assert_eq!(o.status, 200);
    assert!(o.state == RequestState::default() || o.header("x-ratelimit-limit").is_none());
}

#[test]
fn global_failure_modes() {
    let mut h = get("/p");
    h.push(("x-api-key", "key1".into()));
    let mut w = World::new(global_cfg("allow"));
    let o = w.request_with(&req(&h), "1.1.1.1:1", |_| {
        GlobalResult::Error("timeout".into())
    });
    assert_eq!(o.status, 200);
    assert_eq!(w.counter(GLOBAL_ERRORS), 1);
    let mut w = World::new(global_cfg("deny"));
    let o = w.request_with(&req(&h), "1.1.1.1:1", |_| {
        GlobalResult::Error("unavailable".into())
    });
    assert_eq!(o.status, 429);
    assert_eq!(o.header("x-ratelimit-limit"), None);
    assert_eq!(w.counter(GLOBAL_ERRORS), 1);
    assert_eq!(w.counter(LIMITED), 1);
}

#[test]
fn local_denial_skips_the_service() {
    let mut w = World::new(json!({
        "rules": [
            {"name": "l", "limit": {"requests": 1, "unit": "hour"}},
            {"name": "g", "limit": {"requests": 5, "unit": "minute"}, "scope": "global"}
        ],
        "global": {"cluster": "rls", "domain": "d"}
    }));
    let ok = |_: &GlobalRequest| GlobalResult::Ok {
        over_limit: false,
        statuses: vec![],
    };
    assert_eq!(w.request_with(&req(&get("/")), "1.1.1.1:1", ok).status, 200);
    let o = w.request(&req(&get("/")), "1.1.1.1:1");
    assert_eq!(o.status, 429);
}

#[test]
fn tick_collects_idle_buckets_and_memory_is_bounded() {
    let mut w = World::new(per_ip(
        100,
        json!({"local": {"slots": 64, "slot_entries": 4}}),
    ));
    for i in 0..2000u32 {
        let ip = format!("10.{}.{}.{}:1", i >> 16, (i >> 8) & 255, i & 255);
        assert_eq!(w.request(&req(&get("/")), &ip).status, 200);
    }
    let h = w.host(&[], "x");
    assert_eq!(w.rl.stored_buckets(&h, 0), 64 * 4);
    w.put_back(h);
    assert!(w.counter(EVICTIONS) > 0);
    // 100 per hour: one token back after 36 s, so every bucket is full again.
    w.now += Duration::from_secs(37);
    let mut h = w.host(&[], "x");
    w.rl.tick(&mut h);
    assert_eq!(w.rl.stored_buckets(&h, 0), 0);
    assert_eq!(h.inner.counter(COLLECTED), 256);
    w.put_back(h);
}

#[test]
fn namespaces_separate_policies_unless_shared() {
    let a = RateLimiter::from_json(per_ip(1, json!({})).to_string().as_bytes()).unwrap();
    let b =
        RateLimiter::from_json(per_ip(1, json!({"shadow": false})).to_string().as_bytes()).unwrap();
    let mut h = TestHost::default();
    a.init(&mut h).unwrap();
    b.init(&mut h).unwrap();
    // Two distinct policy texts: two sets of slots.
    assert_eq!(h.inner.shared.len(), 2 * 4096);
    let c = RateLimiter::from_json(
        per_ip(1, json!({"namespace": "team"}))
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let d = RateLimiter::from_json(
        per_ip(1, json!({"namespace": "team", "shadow": false}))
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let mut h = TestHost::default();
    c.init(&mut h).unwrap();
    d.init(&mut h).unwrap();
    assert_eq!(h.inner.shared.len(), 4096);
}

/// Security finding (Low): VMs are shared per module digest, so a tenant loading the same module
/// could write the victim's `namespace` and drain its buckets. Keys are scoped to the tenant the
/// controller names (the plugin name's namespace), which no config can choose.
#[test]
fn tenants_never_share_buckets_even_when_they_write_the_same_namespace() {
    let cfg = per_ip(1, json!({"namespace": "btp/victim/policy"})).to_string();
    let of = |tenant: &str| RateLimiter::from_json_for_tenant(cfg.as_bytes(), tenant).unwrap();
    let h = get("/");
    let mut w = World::new(per_ip(5, json!({"namespace": "unrelated"})));
    // The attacker spends the client's only token under the victim's namespace name.
    w.switch_to(of("evil"));
    assert_eq!(w.request(&req(&h), "10.0.0.1:1000").status, 200);
    assert_eq!(w.request(&req(&h), "10.0.0.1:1000").status, 429);
    // The victim's own bucket is untouched...
    w.switch_to(of("victim"));
    assert_eq!(w.request(&req(&h), "10.0.0.1:1000").status, 200);
    // ...and shared by the victim's other instances (another route or worker).
    w.switch_to(of("victim"));
    assert_eq!(w.request(&req(&h), "10.0.0.1:1000").status, 429);
}

#[test]
fn process_buckets_replace_shared_data_with_the_same_decisions() {
    let pb: &'static super::process::ProcessBuckets =
        Box::leak(Box::new(super::process::ProcessBuckets::new()));
    let cfg = per_ip(3, json!({"local": {"slots": 1, "slot_entries": 2}}));
    let rl = RateLimiter::from_json(cfg.to_string().as_bytes()).unwrap();
    let mut h = TestHost {
        process: Some(pb),
        ..TestHost::default()
    };
    rl.init(&mut h).unwrap();
    assert!(
        h.inner.shared.is_empty(),
        "no shared-data slots are created"
    );
    let g = get("/");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let mut h = TestHost {
            inner: MemoryHost::with_request(&req(&g)),
            downstream: Some("10.0.0.1:5000".into()),
            process: Some(pb),
        };
        let mut st = RequestState::default();
        let d = rl.on_request(&mut h, &mut st);
        statuses.push(match d {
            Decision::Continue => 200,
            Decision::Limited => h.inner.local_response.as_ref().map_or(0, |r| r.status),
            Decision::CallGlobal(_) => 0,
        });
        assert!(h.inner.shared.is_empty());
        assert_eq!(h.inner.counter(CAS_RETRIES), 0);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // slots x slot_entries = 2 keys per rule: a third client evicts the least recently used.
    let mut evictions = 0;
    for ip in ["10.0.0.2", "10.0.0.3"] {
        let mut h = TestHost {
            inner: MemoryHost::with_request(&req(&g)),
            downstream: Some(format!("{ip}:1")),
            process: Some(pb),
        };
        assert_eq!(
            rl.on_request(&mut h, &mut RequestState::default()),
            Decision::Continue
        );
        evictions += h.inner.counter(EVICTIONS);
    }
    assert_eq!(evictions, 1);
    assert_eq!(rl.stored_buckets(&h, 0), 2);
}

/// issue 16: one budget for every request (no matcher, no key) is the cheapest rule: the pass
/// path reads no request header at all.
#[test]
fn one_budget_for_all_reads_no_request_header() {
    let cfg = json!({"rules": [{"name": "all", "limit": {"requests": 10, "unit": "second"}}]});
    let rl = RateLimiter::from_json(cfg.to_string().as_bytes()).unwrap();
    let mut h = TestHost::default();
    rl.init(&mut h).unwrap();
    h.inner.request = vec![
        (":path".into(), "/".into()),
        ("x-forwarded-for".into(), "1.2.3.4".into()),
    ];
    h.inner.header_calls.set(0);
    let mut state = RequestState::default();
    assert_eq!(rl.on_request(&mut h, &mut state), Decision::Continue);
    assert_eq!(h.inner.header_calls.get(), 0);
    // A keyed rule still reads them.
    let keyed = RateLimiter::from_json(per_ip(10, json!({})).to_string().as_bytes()).unwrap();
    keyed.init(&mut h).unwrap();
    let mut state = RequestState::default();
    assert_eq!(keyed.on_request(&mut h, &mut state), Decision::Continue);
    assert!(h.inner.header_calls.get() > 0);
}
