//! Global scope: the filter calls `portcullis ratelimit-server` (gRPC, real Redis), on both
//! runtimes: the proxy-wasm module through Envoy's `dispatch_grpc_call`, the dynamic module
//! through a streamed HTTP/2 callout with gRPC framing. The server's own tests (config file,
//! health) involve no filter and run once.

use std::net::TcpListener;
use std::time::Duration;

use portcullis_integration::on_both_runtimes;
use portcullis_integration::ratelimit_env::{Envoy, RateLimitEnvoy, RlsServer};
use portcullis_integration::redis::Redis;
use portcullis_integration::runtime::Runtime;
use portcullis_ratelimit_server::Algorithm;
use reqwest::blocking::Client;
use serde_json::{json, Value};

on_both_runtimes!(
    global_count_shared_by_two_envoys_and_two_servers,
    sliding_window_counts_exactly_within_the_window,
    service_down_failure_modes,
    slow_service_is_bounded_by_timeout,
    missing_cluster_follows_failure_mode,
);

fn global_cfg(requests: u64, failure_mode: &str, timeout_ms: u64) -> Value {
    json!({
        "rules": [{
            "name": "per-key-global",
            "key": ["header:x-api-key", "path"],
            // A day: a window boundary in the middle of a test run is next to impossible.
            "limit": {"requests": requests, "unit": "day"},
            "scope": "global"
        }],
        "global": {"cluster": "ratelimit", "domain": "portcullis", "timeout_ms": timeout_ms, "failure_mode": failure_mode}
    })
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn call(client: &Client, envoy: &Envoy, key: &str) -> reqwest::blocking::Response {
    client
        .get(envoy.url("/api"))
        .header("x-api-key", key)
        .send()
        .unwrap()
}

fn count_ok(client: &Client, envoys: &[&Envoy], key: &str, n: usize) -> (usize, usize) {
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..n {
        match call(client, envoys[i % envoys.len()], key)
            .status()
            .as_u16()
        {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, limited)
}

fn global_count_shared_by_two_envoys_and_two_servers(rt: Runtime) {
    let redis = Redis::start().unwrap();
    let a = RlsServer::start(&redis.url(), Algorithm::Fixed, None).unwrap();
    let b = RlsServer::start(&redis.url(), Algorithm::Fixed, None).unwrap();
    let cfg = global_cfg(20, "deny", 1000);
    let ea = RateLimitEnvoy::new(rt, cfg.clone())
        .rls(a.addr())
        .start()
        .unwrap();
    let eb = RateLimitEnvoy::new(rt, cfg)
        .concurrency(2)
        .rls(b.addr())
        .start()
        .unwrap();
    let c = client();
    // Alternate Envoys (hence servers): one count in Redis.
    assert_eq!(count_ok(&c, &[&ea, &eb], "key-1", 50), (20, 30));
    // Another key has its own count.
    assert_eq!(count_ok(&c, &[&eb, &ea], "key-2", 5), (5, 0));
    // A request without the key does not match the rule and is never limited.
    let r = c.get(ea.url("/api")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-ratelimit-limit").is_none());
    // Headers come from the service's answer.
    let r = call(&c, &ea, "key-3");
    assert_eq!(r.status(), 200);
    let hv = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(hv("x-ratelimit-limit").as_deref(), Some("20, 20;w=86400"));
    assert_eq!(hv("x-ratelimit-remaining").as_deref(), Some("19"));
    let limited = call(&c, &eb, "key-1");
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "retry-after {retry}");
    assert_eq!(ea.counter("portcullis_ratelimit_global_errors_total"), 0);
    // Counters live in Redis, one per key and window, beside the rule's distinct-key count (a
    // HyperLogLog per window); keys are hashes, never the request's values; every one expires.
    let keys = redis.keys().unwrap();
    let (key_counts, counters): (Vec<&String>, Vec<&String>) =
        keys.iter().partition(|k| k.contains(":keys:"));
    assert_eq!((counters.len(), key_counts.len()), (3, 1), "{keys:?}");
    for k in &keys {
        assert!(k.starts_with("{portcullis-rl:"), "{k}");
        assert!(!k.contains("key-") && k.len() < 200, "{k}");
        let ttl = redis.pttl(k).unwrap();
        assert!(ttl > 0 && ttl <= 86_401_000, "{k}: pttl {ttl}");
    }
    assert_eq!(
        ea.counter("portcullis_ratelimit_limited_total")
            + eb.counter("portcullis_ratelimit_limited_total"),
        31
    );
}

fn sliding_window_counts_exactly_within_the_window(rt: Runtime) {
    let redis = Redis::start().unwrap();
    let a = RlsServer::start(&redis.url(), Algorithm::Sliding, None).unwrap();
    let b = RlsServer::start(&redis.url(), Algorithm::Sliding, None).unwrap();
    let ea = RateLimitEnvoy::new(rt, global_cfg(7, "deny", 1000))
        .rls(a.addr())
        .start()
        .unwrap();
    let eb = RateLimitEnvoy::new(rt, global_cfg(7, "deny", 1000))
        .rls(b.addr())
        .start()
        .unwrap();
    assert_eq!(count_ok(&client(), &[&ea, &eb], "k", 20), (7, 13));
}

fn service_down_failure_modes(rt: Runtime) {
    let redis = Redis::start().unwrap();
    let mut server = RlsServer::start(&redis.url(), Algorithm::Fixed, None).unwrap();
    let allow = RateLimitEnvoy::new(rt, global_cfg(100, "allow", 200))
        .rls(server.addr())
        .start()
        .unwrap();
    let deny = RateLimitEnvoy::new(rt, global_cfg(100, "deny", 200))
        .rls(server.addr())
        .start()
        .unwrap();
    let c = client();
    // Service up: both pass, with the service's headers.
    for e in [&allow, &deny] {
        let r = call(&c, e, "k");
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-ratelimit-remaining").is_some());
    }
    server.stop();
    for _ in 0..3 {
        assert_eq!(call(&c, &allow, "k").status(), 200, "failure_mode allow");
        let r = call(&c, &deny, "k");
        assert_eq!(r.status(), 429, "failure_mode deny");
        assert!(r.headers().get("retry-after").is_some());
        assert!(
            r.headers().get("x-ratelimit-limit").is_none(),
            "no limit is known"
        );
    }
    assert_eq!(allow.counter("portcullis_ratelimit_global_errors_total"), 3);
    assert_eq!(deny.counter("portcullis_ratelimit_global_errors_total"), 3);
}

fn slow_service_is_bounded_by_timeout(rt: Runtime) {
    // Accepts connections and never answers: every call runs into timeout_ms.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for s in silent.incoming() {
            match s {
                Ok(s) => conns.push(s),
                Err(_) => break,
            }
        }
    });
    let allow = RateLimitEnvoy::new(rt, global_cfg(1, "allow", 100))
        .rls(addr)
        .start()
        .unwrap();
    let deny = RateLimitEnvoy::new(rt, global_cfg(1, "deny", 100))
        .rls(addr)
        .start()
        .unwrap();
    let c = client();
    for _ in 0..2 {
        assert_eq!(call(&c, &allow, "k").status(), 200);
        assert_eq!(call(&c, &deny, "k").status(), 429);
    }
    assert_eq!(allow.counter("portcullis_ratelimit_global_errors_total"), 2);
    assert_eq!(deny.counter("portcullis_ratelimit_global_errors_total"), 2);
}

#[test]
fn server_limits_from_config_file_without_override() {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        rate_limit_descriptor::Entry, RateLimitDescriptor,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

    let redis = Redis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.yaml");
    std::fs::write(
        &path,
        "domain: edge\ndescriptors:\n  - key: client_ip\n    rate_limit: {unit: day, requests_per_unit: 2}\n    descriptors:\n      - key: path\n        value: /login\n        rate_limit: {unit: day, requests_per_unit: 1}\n",
    )
    .unwrap();
    let server = RlsServer::start(&redis.url(), Algorithm::Fixed, Some(path)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let codes: Vec<(i32, Vec<i32>)> = rt.block_on(async {
        let mut c = RateLimitServiceClient::connect(format!("http://{}", server.addr()))
            .await
            .unwrap();
        let req = |entries: &[(&str, &str)]| RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| Entry {
                        key: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                ..Default::default()
            }],
            hits_addend: 0,
        };
        let mut out = Vec::new();
        for entries in [
            &[("client_ip", "1.1.1.1")][..],
            &[("client_ip", "1.1.1.1")],
            &[("client_ip", "1.1.1.1")],
            &[("client_ip", "1.1.1.1"), ("path", "/login")],
            &[("client_ip", "1.1.1.1"), ("path", "/login")],
            &[("client_ip", "1.1.1.1"), ("path", "/other")],
            &[("unknown", "x")],
        ] {
            let r = c
                .should_rate_limit(req(entries))
                .await
                .unwrap()
                .into_inner();
            out.push((r.overall_code, r.statuses.iter().map(|s| s.code).collect()));
        }
        out
    });
    // OK = 1, OVER_LIMIT = 2: two a day for the IP, one a day for its /login, no limit
    // for descriptors the file does not know.
    assert_eq!(
        codes,
        vec![
            (1, vec![1]),
            (1, vec![1]),
            (2, vec![2]),
            (1, vec![1]),
            (2, vec![2]),
            (1, vec![1]),
            (1, vec![1])
        ]
    );
}

fn missing_cluster_follows_failure_mode(rt: Runtime) {
    // No `ratelimit` cluster in this Envoy: the call cannot even be dispatched.
    let allow = RateLimitEnvoy::new(rt, global_cfg(1, "allow", 100))
        .start()
        .unwrap();
    let deny = RateLimitEnvoy::new(rt, global_cfg(1, "deny", 100))
        .start()
        .unwrap();
    let c = client();
    for _ in 0..2 {
        assert_eq!(call(&c, &allow, "k").status(), 200);
        assert_eq!(call(&c, &deny, "k").status(), 429);
    }
    assert_eq!(allow.counter("portcullis_ratelimit_global_errors_total"), 2);
    assert!(
        deny.logs().contains("cannot call cluster"),
        "{}",
        deny.logs()
    );
}

#[test]
fn server_reports_grpc_health() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let redis = Redis::start().unwrap();
    let server = RlsServer::start(&redis.url(), Algorithm::Fixed, None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let statuses = rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = HealthClient::new(channel);
        let mut out = Vec::new();
        for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
            let r = c
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            out.push(r.status);
        }
        out
    });
    assert_eq!(statuses, vec![ServingStatus::Serving as i32; 2]);
}

/// A fleet mixing both runtimes counts once: the two filters send the same descriptors.
#[test]
fn mixed_runtimes_share_one_global_count() {
    let redis = Redis::start().unwrap();
    let server = RlsServer::start(&redis.url(), Algorithm::Fixed, None).unwrap();
    let envoys: Vec<Envoy> = Runtime::ALL
        .iter()
        .map(|rt| {
            RateLimitEnvoy::new(*rt, global_cfg(10, "deny", 1000))
                .rls(server.addr())
                .start()
                .unwrap()
        })
        .collect();
    let refs: Vec<&Envoy> = envoys.iter().collect();
    assert_eq!(count_ok(&client(), &refs, "shared", 25), (10, 15));
    // One counter (and the rule's distinct-key count).
    let keys = redis.keys().unwrap();
    assert_eq!(
        keys.iter().filter(|k| !k.contains(":keys:")).count(),
        1,
        "{keys:?}"
    );
}
