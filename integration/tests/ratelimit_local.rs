//! The rate-limit filter's local scope through a real Envoy, on both runtimes: the proxy-wasm
//! module (buckets in shared data, compare-and-swap) and the dynamic module (process-wide
//! buckets; its compare-and-swap counters stay 0).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_integration::on_both_runtimes;
use portcullis_integration::process::wait_until;
use portcullis_integration::ratelimit_env::{Envoy, RateLimitEnvoy};
use portcullis_integration::runtime::Runtime;
use reqwest::blocking::Client;
use serde_json::{json, Value};

on_both_runtimes!(
    exact_count_across_two_workers,
    exact_under_contention_on_one_shared_bucket,
    per_ip_isolation_and_spoofing,
    headers_on_passed_and_limited_responses,
    shadow_mode_counts_but_never_limits,
    invalid_config_fails_on_configure_naming_the_field,
    key_flood_keeps_memory_bounded,
);

/// A client that opens a new connection per request, so the kernel spreads them over workers.
fn fresh_connections() -> Client {
    Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn get(client: &Client, envoy: &Envoy, xff: Option<&str>) -> reqwest::blocking::Response {
    let mut req = client.get(envoy.url("/api/x"));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    req.send().unwrap()
}

fn per_ip(requests: u64, trusted_hops: u32, extra: Value) -> Value {
    let mut cfg = json!({
        "client_ip": {"trusted_hops": trusted_hops},
        "rules": [{"name": "per-ip", "key": ["client_ip"], "limit": {"requests": requests, "unit": "hour"}}]
    });
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    cfg
}

fn exact_count_across_two_workers(rt: Runtime) {
    const LIMIT: u64 = 50;
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 30;
    let envoy = RateLimitEnvoy::new(rt, per_ip(LIMIT, 0, json!({})))
        .concurrency(2)
        .start()
        .unwrap();
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let envoy = Arc::new(envoy);
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (ok, limited, envoy) = (ok.clone(), limited.clone(), envoy.clone());
            std::thread::spawn(move || {
                let client = fresh_connections();
                for _ in 0..PER_THREAD {
                    match get(&client, &envoy, None).status().as_u16() {
                        200 => ok.fetch_add(1, Ordering::SeqCst),
                        429 => limited.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected status {other}"),
                    };
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // The test only means something if both workers served requests.
    let per_worker = envoy.connections_per_worker();
    assert!(
        per_worker.iter().filter(|c| **c > 0).count() >= 2,
        "connections per worker: {per_worker:?}"
    );
    assert_eq!(ok.load(Ordering::SeqCst), LIMIT);
    assert_eq!(limited.load(Ordering::SeqCst), THREADS * PER_THREAD - LIMIT);
    assert_eq!(envoy.counter("portcullis_ratelimit_passed_total"), LIMIT);
    assert_eq!(
        envoy.counter("portcullis_ratelimit_limited_total"),
        THREADS * PER_THREAD - LIMIT
    );
    eprintln!(
        "cas retries: {}, cas fallbacks: {}, per worker connections: {per_worker:?}",
        envoy.counter("portcullis_ratelimit_cas_retries_total"),
        envoy.counter("portcullis_ratelimit_cas_fallback_total")
    );
}

fn exact_under_contention_on_one_shared_bucket(rt: Runtime) {
    // One bucket for everything, hammered from 8 keep-alive clients over 2 workers.
    const LIMIT: u64 = 300;
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 100;
    let cfg = json!({"rules": [{"name": "all", "limit": {"requests": LIMIT, "unit": "day"}}]});
    let envoy = Arc::new(RateLimitEnvoy::new(rt, cfg).concurrency(2).start().unwrap());
    let ok = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (ok, envoy) = (ok.clone(), envoy.clone());
            std::thread::spawn(move || {
                let client = Client::new();
                for _ in 0..PER_THREAD {
                    if get(&client, &envoy, None).status() == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let per_worker = envoy.connections_per_worker();
    assert!(
        per_worker.iter().filter(|c| **c > 0).count() >= 2,
        "{per_worker:?}"
    );
    let fallbacks = envoy.counter("portcullis_ratelimit_cas_fallback_total");
    assert_eq!(fallbacks, 0, "64 attempts are plenty for 2 workers");
    assert_eq!(ok.load(Ordering::SeqCst), LIMIT);
    eprintln!(
        "contention: {} lost compare-and-swaps for {} requests, {fallbacks} fallbacks, connections per worker {per_worker:?}",
        envoy.counter("portcullis_ratelimit_cas_retries_total"),
        THREADS * PER_THREAD
    );
}

fn statuses(client: &Client, envoy: &Envoy, xffs: &[String]) -> Vec<u16> {
    xffs.iter()
        .map(|x| {
            get(client, envoy, Some(x.as_str()).filter(|x| !x.is_empty()))
                .status()
                .as_u16()
        })
        .collect()
}

fn per_ip_isolation_and_spoofing(rt: Runtime) {
    let client = fresh_connections();
    // Zero trusted hops: Envoy appends the real peer (127.0.0.1); whatever the client writes in
    // X-Forwarded-For is to its left and never read.
    let envoy = RateLimitEnvoy::new(rt, per_ip(3, 0, json!({})))
        .start()
        .unwrap();
    let spoofed: Vec<String> = (0..6).map(|i| format!("203.0.113.{i}")).collect();
    assert_eq!(
        statuses(&client, &envoy, &spoofed),
        [200, 200, 200, 429, 429, 429]
    );
    drop(envoy);

    // One trusted hop: the test plays the trusted proxy that appended the real client address.
    let envoy = RateLimitEnvoy::new(rt, per_ip(3, 1, json!({})))
        .start()
        .unwrap();
    let attacker: Vec<String> = (0..6)
        .map(|i| format!("203.0.113.{i}, 198.51.100.7"))
        .collect();
    assert_eq!(
        statuses(&client, &envoy, &attacker),
        [200, 200, 200, 429, 429, 429]
    );
    // Other clients have their own buckets.
    let others: Vec<String> = (1..=3).map(|i| format!("198.51.100.{}", 100 + i)).collect();
    assert_eq!(statuses(&client, &envoy, &others), [200, 200, 200]);
    // A chain with too few entries falls back to the downstream address, one shared bucket.
    let short = vec![String::new(); 4];
    let got = statuses(&client, &envoy, &short);
    assert_eq!(
        got,
        [200, 200, 200, 429],
        "no XFF from the client: keyed on 127.0.0.1"
    );
}

fn headers_on_passed_and_limited_responses(rt: Runtime) {
    let envoy = RateLimitEnvoy::new(rt, per_ip(2, 0, json!({"response_headers": "draft03"})))
        .start()
        .unwrap();
    let client = fresh_connections();
    let h = |r: &reqwest::blocking::Response, n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let first = get(&client, &envoy, None);
    assert_eq!(first.status(), 200);
    assert_eq!(
        h(&first, "x-ratelimit-limit").as_deref(),
        Some("2, 2;w=3600")
    );
    assert_eq!(h(&first, "x-ratelimit-remaining").as_deref(), Some("1"));
    assert!(h(&first, "x-ratelimit-reset").is_some());
    assert!(h(&first, "retry-after").is_none());
    let second = get(&client, &envoy, None);
    assert_eq!(h(&second, "x-ratelimit-remaining").as_deref(), Some("0"));
    let third = get(&client, &envoy, None);
    assert_eq!(third.status(), 429);
    // 2 per hour: the next token in 30 minutes.
    assert_eq!(h(&third, "retry-after").as_deref(), Some("1800"));
    assert_eq!(h(&third, "x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(
        h(&third, "x-ratelimit-limit").as_deref(),
        Some("2, 2;w=3600")
    );
    assert_eq!(third.text().unwrap(), "rate limited\n");

    let quiet = RateLimitEnvoy::new(rt, per_ip(1, 0, json!({"response_headers": "none"})))
        .start()
        .unwrap();
    let a = get(&client, &quiet, None);
    let b = get(&client, &quiet, None);
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 429));
    for r in [&a, &b] {
        assert!(
            r.headers()
                .keys()
                .all(|k| !k.as_str().starts_with("x-ratelimit")),
            "{:?}",
            r.headers()
        );
    }
    assert!(h(&b, "retry-after").is_some());
}

fn shadow_mode_counts_but_never_limits(rt: Runtime) {
    let envoy = RateLimitEnvoy::new(rt, per_ip(2, 0, json!({"shadow": true})))
        .start()
        .unwrap();
    let client = fresh_connections();
    let got: Vec<u16> = (0..5)
        .map(|_| get(&client, &envoy, None).status().as_u16())
        .collect();
    assert_eq!(got, [200; 5]);
    assert_eq!(
        envoy.counter("portcullis_ratelimit_shadow_limited_total"),
        3
    );
    assert_eq!(envoy.counter("portcullis_ratelimit_limited_total"), 0);
    assert!(
        envoy.logs().contains("would limit"),
        "shadow decisions are logged"
    );
}

fn invalid_config_fails_on_configure_naming_the_field(rt: Runtime) {
    let bad = json!({"rules": [{"name": "a", "limit": {"requests": 0, "unit": "minute"}}]});
    let logs = RateLimitEnvoy::new(rt, bad).start_expect_exit().unwrap();
    assert!(logs.contains(rt.config_refused_marker()), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains(rt.filter_log_marker()) && l.contains("rules[0].limit.requests")),
        "{logs}"
    );
}

fn key_flood_keeps_memory_bounded(rt: Runtime) {
    // 1024 slots × 4 buckets: at most 4096 buckets on either runtime (wasm: shared-data slots,
    // dynamic: the process-wide LRU).
    let cfg = json!({
        "client_ip": {"trusted_hops": 1},
        "rules": [{"name": "per-ip", "key": ["client_ip"], "limit": {"requests": 60, "unit": "minute"}}],
        "local": {"slots": 1024, "slot_entries": 4, "gc_interval_ms": 200}
    });
    let envoy = Arc::new(RateLimitEnvoy::new(rt, cfg).concurrency(2).start().unwrap());
    let flood = |from: u32, count: u32| {
        const THREADS: u32 = 8;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let envoy = envoy.clone();
                std::thread::spawn(move || {
                    let client = Client::new(); // keep-alive: the flood is about keys, not sockets
                    let mut i = from + t;
                    while i < from + count {
                        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                        let s = get(&client, &envoy, Some(&ip)).status().as_u16();
                        assert_eq!(s, 200, "a fresh client is never limited");
                        i += THREADS;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    };
    flood(0, 5_000);
    let warm = envoy.rss_kb();
    flood(5_000, 25_000);
    let after_30k = envoy.rss_kb();
    flood(30_000, 30_000);
    let after_60k = envoy.rss_kb();
    let evictions = envoy.counter("portcullis_ratelimit_evictions_total");
    eprintln!(
        "Envoy RSS: {warm} kB after 5k distinct IPs, {after_30k} kB after 30k, {after_60k} kB after 60k; evictions {evictions}"
    );
    // 4096 buckets at most: the second 30k keys must not grow memory like the first ones could.
    assert!(
        after_60k.saturating_sub(after_30k) < 16 * 1024,
        "RSS grew {} kB during the second flood",
        after_60k.saturating_sub(after_30k)
    );
    // 4096 buckets for 60k keys: the least recently used ones went.
    assert!(evictions > 0, "no evictions after 60k keys");
}

/// wasm only: its buckets live in Envoy's shared data, which has no bound of its own, so the
/// filter's tick (`local.gc_interval_ms`) sweeps the slots and drops idle (full) buckets. The
/// dynamic module keeps process-wide buckets bounded by their LRU alone and has no sweep
/// (`filters/core/src/ratelimit/engine.rs`, `tick`), so `collected_total` stays 0 there.
#[test]
fn wasm_idle_buckets_are_collected_on_the_tick() {
    let cfg = json!({
        "client_ip": {"trusted_hops": 1},
        "rules": [{"name": "per-ip", "key": ["client_ip"], "limit": {"requests": 60, "unit": "minute"}}],
        "local": {"slots": 1024, "slot_entries": 4, "gc_interval_ms": 200}
    });
    let envoy = RateLimitEnvoy::new(Runtime::Wasm, cfg).start().unwrap();
    let client = Client::new();
    for i in 0..200 {
        let s = get(
            &client,
            &envoy,
            Some(&format!("10.0.{}.{}", i >> 8, i & 255)),
        );
        assert_eq!(s.status().as_u16(), 200);
    }
    // A bucket that took one token is full again after a second, and the tick collects it.
    wait_until(
        "idle buckets to be collected",
        Duration::from_secs(30),
        || {
            let c = envoy.counter("portcullis_ratelimit_collected_total");
            if c > 0 {
                Ok(c)
            } else {
                Err("collected_total still 0")
            }
        },
    )
    .unwrap();
}

/// Security finding (Low, shared-data prefixes): the controller shares one VM per module digest,
/// so two tenants' instances of the ratelimit module see one shared-data space. Keys are scoped
/// by the tenant in the plugin name the controller sets (`<namespace>/<policy>/...`), which no
/// config chooses: two tenants writing the same `namespace` each keep their own token; one
/// tenant's two instances share it.
#[test]
fn wasm_tenants_in_one_vm_never_share_buckets() {
    let module = portcullis_integration::wasm::module("ratelimit").expect("ratelimit.wasm built");
    let cfg = per_ip(1, 0, json!({"namespace": "btp/victim/limits"})).to_string();
    let filter = |plugin: &str| {
        let mut f = portcullis_integration::runtime::wasm_filter(&module, plugin, "one-vm", &cfg);
        f["typed_config"]["config"]["root_id"] = json!("ratelimit");
        f
    };
    let first_status = |plugins: [&str; 2]| {
        let envoy = portcullis_integration::envoy::EnvoyBuilder::new()
            .raw_filter(filter(plugins[0]))
            .raw_filter(filter(plugins[1]))
            .start()
            .expect("envoy");
        let client = fresh_connections();
        let statuses: Vec<u16> = (0..2)
            .map(|_| {
                client
                    .get(envoy.url("/"))
                    .send()
                    .expect("request")
                    .status()
                    .as_u16()
            })
            .collect();
        statuses
    };
    // Each tenant's filter takes its own token: the first request passes both, the second not.
    assert_eq!(
        first_status(["evil/p/ratelimit", "victim/limits/ratelimit"]),
        vec![200, 429]
    );
    // Control: one tenant's two instances share the bucket, so the second filter finds it empty.
    assert_eq!(
        first_status(["victim/a/ratelimit", "victim/limits/ratelimit"]),
        vec![429, 429]
    );
}
