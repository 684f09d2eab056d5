//! Security finding #9: overrides opt-in, hashed and bounded keys, a distinct-key cap per rule,
//! credentials kept out of logs and errors. Real `redis-server` on a unix socket; the server
//! in-process on 127.0.0.1:0.

mod support;

use portcullis_ratelimit_server::{Algorithm, Args, OnKeyCap};
use support::*;
use tonic::Code;

#[tokio::test]
async fn limit_override_is_refused_unless_the_domain_opted_in() {
    let redis = Redis::start();
    let (logs, _guard) = Logs::capture();
    // Default: no domain may override.
    let server = Rls::start(args(&redis)).await;
    let mut c = server.client().await;
    let forged = request(
        "evil\nFORGED ratelimit-server listening",
        vec![descriptor(&[("k", "v")], Some(1))],
    );
    let err = code(&mut c, forged).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let over = || request("portcullis", vec![descriptor(&[("rule", "r")], Some(1))]);
    let err = code(&mut c, over()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("--allow-limit-override"), "{err:?}");
    // Nothing was counted.
    assert!(redis.keys().is_empty(), "{:?}", redis.keys());
    // Without an override the request is served (no config: no limit).
    let plain = request("portcullis", vec![descriptor(&[("rule", "r")], None)]);
    assert_eq!(code(&mut c, plain).await.unwrap(), OK);
    // Refusals are logged (one line per 10 s), with the caller's domain escaped: the line a
    // newline in the domain tries to forge is not there.
    let text = logs.text();
    assert!(text.contains("limit override"), "{text}");
    assert!(text.contains(r#"domain="evil\nFORGED"#), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("FORGED")),
        "unescaped domain in the log:\n{text}"
    );
    drop(server);

    // Opted in for `portcullis`: its overrides count; another domain's are still refused.
    let mut a = args(&redis);
    a.allow_limit_override = vec!["portcullis".into()];
    let server = Rls::start(a).await;
    let mut c = server.client().await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(code(&mut c, over()).await.unwrap());
    }
    assert_eq!(codes, [OK, OVER_LIMIT, OVER_LIMIT]);
    let other = request("other", vec![descriptor(&[("rule", "r")], Some(1))]);
    assert_eq!(
        code(&mut c, other).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    drop(server);

    // `*`: every domain.
    let mut a = args(&redis);
    a.allow_limit_override = vec!["*".into()];
    let server = Rls::start(a).await;
    let mut c = server.client().await;
    let other = request("other", vec![descriptor(&[("rule", "r")], Some(5))]);
    assert_eq!(code(&mut c, other).await.unwrap(), OK);
}

#[tokio::test]
async fn config_file_limits_need_no_opt_in() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.yaml");
    std::fs::write(
        &path,
        "domain: edge\ndescriptors:\n  - key: client_ip\n    rate_limit: {unit: day, requests_per_unit: 1}\n",
    )
    .unwrap();
    let mut a = args(&redis);
    a.config = Some(path);
    let server = Rls::start(a).await;
    let mut c = server.client().await;
    let req = || request("edge", vec![descriptor(&[("client_ip", "1.2.3.4")], None)]);
    assert_eq!(code(&mut c, req()).await.unwrap(), OK);
    assert_eq!(code(&mut c, req()).await.unwrap(), OVER_LIMIT);
}

#[tokio::test]
async fn redis_keys_are_hashes_of_bounded_length() {
    let redis = Redis::start();
    let mut a = args(&redis);
    a.allow_limit_override = vec!["d".into()];
    let server = Rls::start(a).await;
    let mut c = server.client().await;
    // A 60 KiB header value (within the default bound) with a newline and braces in it.
    let value = format!("{{evil}}\n{}", "A".repeat(60 * 1024));
    let req = request(
        "d",
        vec![descriptor(
            &[("rule", "r"), ("header:x-api-key", &value)],
            Some(10),
        )],
    );
    assert_eq!(code(&mut c, req).await.unwrap(), OK);
    let keys = redis.keys();
    assert_eq!(keys.len(), 2, "{keys:?}"); // the counter and the rule's key count
    for k in &keys {
        assert!(k.len() < 200, "key of {} bytes", k.len());
        assert!(
            !k.contains("AAAA") && !k.contains("evil") && !k.contains('\n'),
            "{k}"
        );
        assert!(k.starts_with("{portcullis-rl:"), "{k}");
        assert!(redis.pttl(k) > 0, "{k} does not expire");
    }
}

#[tokio::test]
async fn over_long_or_too_many_entries_are_invalid_argument() {
    let redis = Redis::start();
    let (logs, _guard) = Logs::capture();
    let mut a = args(&redis);
    a.allow_limit_override = vec!["d".into()];
    a.max_descriptor_entries = 3;
    a.max_entry_key_bytes = 32;
    a.max_entry_value_bytes = 100;
    a.max_descriptors = 2;
    let server = Rls::start(a).await;
    let mut c = server.client().await;
    let one = |entries: &[(&str, &str)]| request("d", vec![descriptor(entries, Some(10))]);
    // At the bounds: served.
    let v100 = "v".repeat(100);
    let k32 = "k".repeat(32);
    assert_eq!(
        code(&mut c, one(&[("a", &v100), (&k32, "x"), ("c", "y")]))
            .await
            .unwrap(),
        OK
    );
    let v101 = "v".repeat(101);
    let k33 = "k".repeat(33);
    let cases: Vec<(_, &str)> = vec![
        (one(&[("a", &v101)]), "--max-entry-value-bytes"),
        (one(&[(&k33, "x")]), "--max-entry-key-bytes"),
        (
            one(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]),
            "--max-descriptor-entries",
        ),
        (one(&[]), "no entries"),
        (
            request(
                "d",
                vec![
                    descriptor(&[("a", "1")], Some(1)),
                    descriptor(&[("a", "2")], Some(1)),
                    descriptor(&[("a", "3")], Some(1)),
                ],
            ),
            "--max-descriptors",
        ),
        (
            request(&"d".repeat(33), vec![descriptor(&[("a", "1")], None)]),
            "domain",
        ),
    ];
    for (req, needle) in cases {
        let err = code(&mut c, req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{needle}: {err:?}");
        assert!(err.message().contains(needle), "{needle}: {err:?}");
    }
    // Only the request within bounds touched Redis.
    assert_eq!(redis.keys().len(), 2, "{:?}", redis.keys());
    assert!(logs.text().contains("INVALID_ARGUMENT"), "{}", logs.text());
}

#[tokio::test]
async fn default_bounds_refuse_a_value_above_64_kib() {
    let redis = Redis::start();
    let mut a = args(&redis);
    a.allow_limit_override = vec!["d".into()];
    let server = Rls::start(a).await;
    let mut c = server.client().await;
    let v = "v".repeat(65_537);
    let err = code(
        &mut c,
        request("d", vec![descriptor(&[("a", &v)], Some(1))]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// Counters of the rule, its distinct-key counts.
fn split(keys: &[String]) -> (usize, usize) {
    let hll = keys.iter().filter(|k| k.contains(":keys:")).count();
    (keys.len() - hll, hll)
}

#[tokio::test]
async fn distinct_keys_per_rule_are_capped_over_limit_by_default() {
    for algorithm in [Algorithm::Fixed, Algorithm::Sliding] {
        let redis = Redis::start();
        let (logs, _guard) = Logs::capture();
        let mut a = args(&redis);
        a.algorithm = algorithm;
        a.allow_limit_override = vec!["d".into()];
        a.max_keys_per_rule = 3;
        assert_eq!(a.on_key_cap, OnKeyCap::OverLimit, "the default");
        let server = Rls::start(a).await;
        let mut c = server.client().await;
        let key = |k: &str| {
            request(
                "d",
                vec![descriptor(&[("rule", "r"), ("ip", k)], Some(100))],
            )
        };
        let mut codes = Vec::new();
        for k in ["k1", "k2", "k3", "k4", "k5", "k1", "k3"] {
            codes.push(code(&mut c, key(k)).await.unwrap());
        }
        // Three distinct keys, then new keys are over the limit; known keys keep counting.
        assert_eq!(
            codes,
            [OK, OK, OK, OVER_LIMIT, OVER_LIMIT, OK, OK],
            "{algorithm:?}"
        );
        // Another rule (other entry keys) has its own cap.
        let other = request(
            "d",
            vec![descriptor(&[("rule", "r"), ("path", "/x")], Some(100))],
        );
        assert_eq!(code(&mut c, other).await.unwrap(), OK);
        let keys = redis.keys();
        // k1..k3 and /x: four counters; two rules: two key counts, which expire too.
        assert_eq!(split(&keys), (4, 2), "{algorithm:?} {keys:?}");
        for k in keys.iter().filter(|k| k.contains(":keys:")) {
            let ttl = redis.pttl(k);
            assert!(ttl > 0 && ttl <= 86_401_000, "{k}: {ttl}");
        }
        let text = logs.text();
        assert!(text.contains("distinct keys"), "{algorithm:?}: {text}");
        // The warning is throttled: two refusals, one line.
        assert_eq!(text.matches("distinct keys").count(), 1, "{text}");
    }
}

#[tokio::test]
async fn key_cap_allow_answers_ok_without_counting() {
    let redis = Redis::start();
    let mut a = args(&redis);
    a.allow_limit_override = vec!["d".into()];
    a.max_keys_per_rule = 2;
    a.on_key_cap = OnKeyCap::Allow;
    let server = Rls::start(a).await;
    let mut c = server.client().await;
    let key = |k: &str| request("d", vec![descriptor(&[("ip", k)], Some(1))]);
    let mut codes = Vec::new();
    for k in ["a", "b", "c", "c", "c", "a"] {
        codes.push(code(&mut c, key(k)).await.unwrap());
    }
    // `c` is beyond the cap: always OK, never counted; `a` is known and at its limit of 1.
    assert_eq!(codes, [OK, OK, OK, OK, OK, OVER_LIMIT]);
    assert_eq!(split(&redis.keys()), (2, 1), "{:?}", redis.keys());
}

#[tokio::test]
async fn key_cap_zero_means_no_cap() {
    let redis = Redis::start();
    let mut a = args(&redis);
    a.allow_limit_override = vec!["d".into()];
    a.max_keys_per_rule = 0;
    let server = Rls::start(a).await;
    let mut c = server.client().await;
    for i in 0..20 {
        let req = request("d", vec![descriptor(&[("ip", &i.to_string())], Some(1))]);
        assert_eq!(code(&mut c, req).await.unwrap(), OK);
    }
    assert_eq!(split(&redis.keys()), (20, 0));
}

#[tokio::test]
async fn redis_password_never_reaches_logs_or_errors() {
    const RIGHT: &str = "right-pass-7f3a";
    const WRONG: &str = "wrong-pass-c91e";
    let redis = Redis::start_with(Some(RIGHT));
    let (logs, _guard) = Logs::capture();

    // Wrong password in the URL: startup fails; neither the error nor the logs show it.
    let a = Args::new(format!("unix://{}?pass={WRONG}", redis.socket.display()));
    assert!(!format!("{a:?}").contains(WRONG), "{a:?}");
    let err = format!("{:#}", Rls::start_err(a).await);
    assert!(!err.contains(WRONG), "{err}");
    assert!(err.contains("REDACTED"), "{err}");

    // A TCP URL with userinfo to a peer that hangs up: the error shows no userinfo.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = peer.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in peer.incoming() {
            drop(s);
        }
    });
    let a = Args::new(format!("redis://alice:{WRONG}@127.0.0.1:{port}/0"));
    let err = format!("{:#}", Rls::start_err(a).await);
    assert!(!err.contains(WRONG) && !err.contains("alice"), "{err}");

    // Right password: served, and the startup line shows the URL redacted.
    let server = Rls::start(Args::new(redis.url())).await;
    let mut c = server.client().await;
    let req = request("d", vec![descriptor(&[("a", "1")], None)]);
    assert_eq!(code(&mut c, req).await.unwrap(), OK);
    let text = logs.text();
    assert!(text.contains("ratelimit-server listening"), "{text}");
    assert!(text.contains("pass=REDACTED"), "{text}");
    assert!(!text.contains(RIGHT) && !text.contains(WRONG), "{text}");
}

#[test]
fn help_never_shows_the_redis_url_from_the_environment() {
    use clap::{CommandFactory, Parser};
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }
    // Edition 2021: safe; no other test reads this variable.
    std::env::set_var(
        "PORTCULLIS_RATELIMIT_REDIS",
        "redis://:env-secret-55aa@10.0.0.1:6379",
    );
    let help = Cli::command().render_long_help().to_string();
    assert!(help.contains("PORTCULLIS_RATELIMIT_REDIS"), "{help}");
    assert!(!help.contains("env-secret-55aa"), "{help}");
    for flag in [
        "--allow-limit-override",
        "--max-keys-per-rule",
        "--on-key-cap",
        "--max-entry-value-bytes",
        "--tls-cert",
        "--tls-key",
        "--client-ca",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}
