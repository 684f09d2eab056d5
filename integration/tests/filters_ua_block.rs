//! ua-block through a real Envoy 1.40: every behaviour of issue 2, seen from a client, on
//! both runtimes (the proxy-wasm module and the dynamic module).

use portcullis_integration::echo::{Echo, EchoServer};
use portcullis_integration::envoy::{Envoy, EnvoyBuilder};
use portcullis_integration::http::{client, get_with_ua};
use portcullis_integration::on_both_runtimes;
use portcullis_integration::process::workspace_root;
use portcullis_integration::runtime::Runtime;
use serde_json::{json, Value};

on_both_runtimes!(
    deny_allow_exact_regex_and_metrics,
    case_sensitive_matching,
    missing_user_agent_deny_counts_absent_and_empty,
    missing_user_agent_allow_is_explicit_too,
    custom_status_body_and_headers,
    ai_crawlers_preset_blocks_every_listed_agent,
    dry_run_lets_through_counts_and_logs,
    several_workers_share_config_and_counters,
    invalid_config_unknown_field,
    invalid_config_bad_regex,
    invalid_config_wrong_type,
    invalid_config_update_is_rejected_and_envoy_keeps_serving,
    thousands_of_patterns,
    odd_user_agents_are_judged_not_fatal,
);

const DENIED: &str = "portcullis_ua_block_denied_total";
const ALLOWED: &str = "portcullis_ua_block_allowed_total";
const DRY_RUN: &str = "portcullis_ua_block_dry_run_total";

fn start(rt: Runtime, echo: &EchoServer, config: Value) -> Envoy {
    EnvoyBuilder::new()
        .upstream(echo.addr())
        .filter(rt, "ua_block", config)
        .start()
        .unwrap()
}

/// Status and body for one request; `None` sends no User-Agent header.
fn get(envoy: &Envoy, ua: Option<&str>) -> (u16, String) {
    let resp = get_with_ua(&client(), &envoy.url("/"), ua).unwrap();
    (resp.status().as_u16(), resp.text().unwrap())
}

/// Asserts the request reached the upstream, and with its User-Agent intact.
fn assert_passed(envoy: &Envoy, ua: Option<&str>) {
    let (status, body) = get(envoy, ua);
    assert_eq!(status, 200, "UA {ua:?} should pass, got {status}: {body}");
    let echo: Echo = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let seen = echo.header("user-agent");
    match ua {
        Some(ua) if !ua.trim().is_empty() => assert_eq!(seen, Some(ua)),
        _ => assert!(seen.is_none_or(|s| s.trim().is_empty()), "{seen:?}"),
    }
}

fn assert_blocked(envoy: &Envoy, ua: Option<&str>, status: u16, body: &str) {
    let got = get(envoy, ua);
    assert_eq!(
        got,
        (status, body.to_string()),
        "UA {ua:?} should be blocked"
    );
}

fn counters(envoy: &Envoy) -> (Option<u64>, Option<u64>, Option<u64>) {
    (
        envoy.counter(DENIED).unwrap(),
        envoy.counter(ALLOWED).unwrap(),
        envoy.counter(DRY_RUN).unwrap(),
    )
}

fn deny_allow_exact_regex_and_metrics(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = start(
        rt,
        &echo,
        json!({
            "deny":  { "contains": ["GPTBot", "Bytespider"], "exact": ["curl/7.0"], "regex": ["(?i)python-requests/.*"] },
            "allow": { "contains": ["Googlebot"] }
        }),
    );
    // Default status and body.
    let forbidden = |ua| assert_blocked(&envoy, Some(ua), 403, "Forbidden\n");
    forbidden("Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)");
    forbidden("gptbot"); // case-insensitive by default
    forbidden("Mozilla/5.0 (compatible; Bytespider; spider-feedback@bytedance.com)");
    forbidden("curl/7.0"); // exact
    forbidden("CURL/7.0"); // exact, case-insensitive
    forbidden("Python-Requests/2.31.0"); // regex
    assert_passed(&envoy, Some("curl/7.0.1")); // exact means the whole value
    assert_passed(
        &envoy,
        Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
    );
    assert_passed(&envoy, Some("python-request")); // regex does not match
                                                   // Allow wins over deny, in either order inside the header.
    assert_passed(&envoy, Some("Googlebot/2.1 GPTBot"));
    assert_passed(&envoy, Some("GPTBot Googlebot/2.1"));
    // Missing and empty UA pass by default.
    assert_passed(&envoy, None);
    assert_passed(&envoy, Some(""));
    // 6 blocked, 7 passed; Envoy aggregates the counters of every worker.
    assert_eq!(counters(&envoy), (Some(6), Some(7), Some(0)));
    // The names Envoy prints: a prefix (`wasmcustom.` / the `portcullis.` namespace), then ours.
    let stats = envoy.stats("portcullis_ua_block").unwrap();
    assert!(
        stats.keys().any(|k| k.ends_with(DENIED)),
        "stats: {stats:?}"
    );
}

fn case_sensitive_matching(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = start(
        rt,
        &echo,
        json!({
            "deny": { "contains": ["GPTBot"], "exact": ["curl/7.0"], "regex": ["python-requests"] },
            "allow": { "contains": ["Googlebot"] },
            "case_sensitive": true
        }),
    );
    assert_blocked(&envoy, Some("GPTBot/1.0"), 403, "Forbidden\n");
    assert_passed(&envoy, Some("gptbot/1.0"));
    assert_blocked(&envoy, Some("curl/7.0"), 403, "Forbidden\n");
    assert_passed(&envoy, Some("CURL/7.0"));
    assert_blocked(&envoy, Some("python-requests/2"), 403, "Forbidden\n");
    assert_passed(&envoy, Some("Python-Requests/2"));
    // The allow list is case-sensitive too.
    assert_passed(&envoy, Some("Googlebot GPTBot"));
    assert_blocked(&envoy, Some("googlebot GPTBot"), 403, "Forbidden\n");
}

fn missing_user_agent_deny_counts_absent_and_empty(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = start(
        rt,
        &echo,
        json!({ "missing_user_agent": "deny", "status": 400, "body": "user-agent required\n" }),
    );
    assert_blocked(&envoy, None, 400, "user-agent required\n");
    assert_blocked(&envoy, Some(""), 400, "user-agent required\n");
    assert_blocked(&envoy, Some("   "), 400, "user-agent required\n");
    assert_passed(&envoy, Some("Mozilla/5.0"));
    assert_eq!(counters(&envoy), (Some(3), Some(1), Some(0)));
}

fn missing_user_agent_allow_is_explicit_too(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = start(
        rt,
        &echo,
        json!({ "deny": { "contains": ["GPTBot"] }, "missing_user_agent": "allow" }),
    );
    assert_passed(&envoy, None);
    assert_passed(&envoy, Some(""));
    assert_blocked(&envoy, Some("GPTBot"), 403, "Forbidden\n");
}

fn custom_status_body_and_headers(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = start(
        rt,
        &echo,
        json!({
            "deny": { "contains": ["BadBot"] },
            "status": 429,
            "body": "{\"error\":\"go away\"}",
            "response_headers": { "content-type": "application/json", "retry-after": "3600" }
        }),
    );
    let resp = get_with_ua(&client(), &envoy.url("/x"), Some("BadBot/1.0")).unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["retry-after"], "3600");
    assert_eq!(resp.text().unwrap(), "{\"error\":\"go away\"}");
}

fn ai_crawlers_preset_blocks_every_listed_agent(rt: Runtime) {
    let path = workspace_root().join("filters/core/data/ai-crawlers.json");
    let data: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let patterns: Vec<&str> = data["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        patterns.len() >= 20,
        "suspiciously short preset: {patterns:?}"
    );
    assert!(patterns.contains(&"GPTBot"));

    let echo = EchoServer::start().unwrap();
    let envoy = start(rt, &echo, json!({ "deny": { "presets": ["ai-crawlers"] } }));
    for p in &patterns {
        assert_blocked(
            &envoy,
            Some(&format!(
                "Mozilla/5.0 (compatible; {p}/1.0; +https://example.com/bot)"
            )),
            403,
            "Forbidden\n",
        );
        assert_blocked(&envoy, Some(&p.to_uppercase()), 403, "Forbidden\n");
    }
    assert_passed(
        &envoy,
        Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0"),
    );
    assert_passed(&envoy, Some("Mozilla/5.0 (compatible; Googlebot/2.1)"));
    let n = patterns.len() as u64 * 2;
    assert_eq!(counters(&envoy), (Some(n), Some(2), Some(0)));
}

fn dry_run_lets_through_counts_and_logs(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let mut envoy = start(
        rt,
        &echo,
        json!({ "deny": { "contains": ["GPTBot"] }, "missing_user_agent": "deny", "dry_run": true }),
    );
    assert_passed(&envoy, Some("GPTBot/1.0"));
    assert_passed(&envoy, None);
    assert_passed(&envoy, Some("Mozilla/5.0"));
    // Would-be blocks count as denied (and as dry-run hits); the normal pass counts as allowed.
    assert_eq!(counters(&envoy), (Some(2), Some(1), Some(2)));
    let logs = envoy.logs();
    assert!(
        logs.contains("dry run, would deny") && logs.contains("GPTBot/1.0"),
        "no dry-run log line in:\n{}",
        envoy.process().log_tail()
    );
}

fn several_workers_share_config_and_counters(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .upstream(echo.addr())
        .concurrency(4)
        .filter(
            rt,
            "ua_block",
            json!({ "deny": { "contains": ["GPTBot"] } }),
        )
        .start()
        .unwrap();
    // A fresh client per request spreads connections over the workers.
    for i in 0..20 {
        let ua = if i % 2 == 0 { "GPTBot" } else { "Mozilla/5.0" };
        let resp = get_with_ua(&client(), &envoy.url("/"), Some(ua)).unwrap();
        assert_eq!(resp.status().as_u16(), if i % 2 == 0 { 403 } else { 200 });
    }
    assert_eq!(counters(&envoy), (Some(10), Some(10), Some(0)));
}

/// Envoy refuses a static bootstrap whose filter fails to configure: it exits with status 1
/// (no crash, no signal), and one log line from the filter names the field and the reason.
fn assert_config_refused(rt: Runtime, config: &str, expected_in_line: &[&str]) {
    let (status, logs) = EnvoyBuilder::new()
        .filter_raw(rt, "ua_block", config)
        .start_expect_exit()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "config {config}: {status:?}\n{logs}"
    );
    assert!(logs.contains(rt.config_refused_marker()), "{logs}");
    assert!(
        logs.lines().any(|l| l.contains(rt.filter_log_marker())
            && l.contains("ua-block: invalid config")
            && expected_in_line.iter().all(|n| l.contains(n))),
        "config {config}: no filter log line with {expected_in_line:?}:\n{logs}"
    );
}

fn invalid_config_unknown_field(rt: Runtime) {
    assert_config_refused(
        rt,
        r#"{"deny": {"contans": ["GPTBot"]}}"#,
        &["deny", "unknown field `contans`"],
    );
    assert_config_refused(rt, r#"{"dryrun": true}"#, &["unknown field `dryrun`"]);
}

fn invalid_config_bad_regex(rt: Runtime) {
    assert_config_refused(
        rt,
        r#"{"deny": {"regex": ["ok", "(unclosed"]}}"#,
        &["deny.regex[1]", "(unclosed"],
    );
}

fn invalid_config_wrong_type(rt: Runtime) {
    assert_config_refused(rt, r#"{"status": "403"}"#, &["status", "invalid type"]);
    assert_config_refused(
        rt,
        r#"{"missing_user_agent": "block"}"#,
        &["missing_user_agent", "unknown variant `block`"],
    );
    assert_config_refused(
        rt,
        r#"{"deny": {"contains": "GPTBot"}}"#,
        &["deny.contains", "invalid type"],
    );
    assert_config_refused(
        rt,
        r#"{"deny": {"presets": ["ai-crawler"]}}"#,
        &["deny.presets", "ai-crawler"],
    );
    assert_config_refused(rt, r#"{"deny": "#, &["EOF"]);
}

/// Under a control plane (here file-based LDS) a listener whose ua-block config is invalid is
/// rejected with the same log line, while Envoy keeps running and serving the listener it has.
fn invalid_config_update_is_rejected_and_envoy_keeps_serving(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let mut envoy = EnvoyBuilder::new()
        .upstream(echo.addr())
        .dynamic_listeners()
        .filter(
            rt,
            "ua_block",
            json!({ "deny": { "contains": ["GPTBot"] } }),
        )
        .start()
        .unwrap();
    assert_blocked(&envoy, Some("GPTBot"), 403, "Forbidden\n");

    // Port 0: Envoy would pick one; the rejected listener must not exist at all.
    let bad = EnvoyBuilder::new()
        .filter_raw(rt, "ua_block", r#"{"deny": {"regex": ["(unclosed"]}}"#)
        .listeners("bad-", 0, None);
    let mut listeners = envoy.dynamic_listeners();
    listeners.extend(bad);
    assert!(
        !envoy.apply_dynamic_listeners(listeners).unwrap(),
        "the bad listener was accepted"
    );

    assert!(envoy.process().try_status().is_none(), "Envoy exited");
    let logs = envoy.logs();
    assert!(
        logs.lines().any(|l| l.contains(rt.filter_log_marker())
            && l.contains("deny.regex[0]")
            && l.contains("unclosed group")),
        "{logs}"
    );
    assert_eq!(envoy.listener_port("bad-http").unwrap(), None);
    assert_blocked(&envoy, Some("GPTBot"), 403, "Forbidden\n");
    assert_passed(&envoy, Some("Mozilla/5.0"));

    // A valid update afterwards is accepted: nothing was left half-configured.
    let good = EnvoyBuilder::new()
        .direct_response(200, "second\n")
        .filter(
            rt,
            "ua_block",
            json!({ "deny": { "contains": ["ClaudeBot"] } }),
        )
        .listeners("second-", 0, None);
    let mut listeners = envoy.dynamic_listeners();
    listeners.extend(good);
    assert!(envoy.apply_dynamic_listeners(listeners).unwrap());
    let good_port = envoy
        .listener_port("second-http")
        .unwrap()
        .expect("the accepted listener is bound");
    let second = format!("http://127.0.0.1:{good_port}/");
    let c = client();
    let resp = get_with_ua(&c, &second, Some("ClaudeBot")).unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let resp = get_with_ua(&c, &second, Some("GPTBot")).unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.text().unwrap()),
        (200, "second\n".to_string())
    );
}

fn thousands_of_patterns(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let contains: Vec<String> = (0..5000).map(|i| format!("crawler-{i:05}-bot")).collect();
    let regex: Vec<String> = (0..200)
        .map(|i| format!("^scraper/{i}\\.[0-9]+$"))
        .collect();
    let envoy = start(
        rt,
        &echo,
        json!({ "deny": { "contains": contains, "regex": regex } }),
    );
    assert_blocked(
        &envoy,
        Some("Mozilla/5.0 CRAWLER-04999-BOT/1"),
        403,
        "Forbidden\n",
    );
    assert_blocked(&envoy, Some("crawler-00000-bot"), 403, "Forbidden\n");
    assert_blocked(&envoy, Some("scraper/199.3"), 403, "Forbidden\n");
    assert_passed(&envoy, Some("crawler-5000-bot"));
    assert_passed(&envoy, Some("scraper/200.3"));
    assert_passed(&envoy, Some("x scraper/1.3"));
}

/// Odd request input never breaks the filter: non-UTF-8 bytes, a very long value, several
/// User-Agent headers. Envoy stays up and the decision is still made.
fn odd_user_agents_are_judged_not_fatal(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let mut envoy = start(
        rt,
        &echo,
        json!({ "deny": { "contains": ["GPTBot"] }, "allow": { "contains": ["Googlebot"] } }),
    );
    let c = client();
    let send = |ua: &[u8]| {
        let value = reqwest::header::HeaderValue::from_bytes(ua).unwrap();
        c.get(envoy.url("/"))
            .header("user-agent", value)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(send(b"GPTBot \xff\xfe"), 403);
    assert_eq!(send(b"\xc3\x28 Mozilla"), 200);
    let long = format!("{}GPTBot", "a".repeat(40_000));
    assert_eq!(send(long.as_bytes()), 403);
    assert_eq!(send("a".repeat(40_000).as_bytes()), 200);
    let two = |first: &str, second: &str| {
        c.get(envoy.url("/"))
            .header("user-agent", first)
            .header("user-agent", second)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(two("Mozilla/5.0", "GPTBot"), 403);
    assert_eq!(two("GPTBot", "Googlebot"), 200);
    assert!(envoy.process().try_status().is_none(), "Envoy exited");
    assert_eq!(counters(&envoy), (Some(3), Some(3), Some(0)));
}
