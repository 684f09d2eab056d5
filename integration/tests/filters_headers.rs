//! headers through a real Envoy 1.40: operations in both directions, security presets over
//! HTTP and HTTPS, upstream headers never overwritten by a preset, and invalid configs; on both
//! runtimes (the proxy-wasm module and the dynamic module).

use portcullis_integration::echo::{Echo, EchoServer, RESPONSE_HEADER};
use portcullis_integration::envoy::{Envoy, EnvoyBuilder, Tls};
use portcullis_integration::http::{client, insecure_client};
use portcullis_integration::on_both_runtimes;
use portcullis_integration::runtime::Runtime;
use reqwest::blocking::Response;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

on_both_runtimes!(
    request_operations,
    response_operations,
    strict_preset_with_and_without_https,
    behind_a_proxy_forwarded_proto_decides_https,
    basic_preset_with_and_without_https,
    off_preset_adds_nothing,
    preset_never_overwrites_upstream_headers,
    filter_order_decides_whether_local_replies_get_headers,
    invalid_config_update_is_rejected_and_envoy_keeps_serving,
    invalid_config_unknown_field,
    invalid_config_bad_regex,
    invalid_config_wrong_type,
);

const STRICT: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "frame-ancestors 'none'"),
    (
        "permissions-policy",
        "accelerometer=(), browsing-topics=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), \
         magnetometer=(), microphone=(), midi=(), payment=(), usb=()",
    ),
];
const STRICT_HSTS: &str = "max-age=63072000; includeSubDomains";
const BASIC: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("x-frame-options", "SAMEORIGIN"),
    ("content-security-policy", "frame-ancestors 'self'"),
    (
        "permissions-policy",
        "browsing-topics=(), camera=(self), geolocation=(self), microphone=(self), payment=(self), usb=(self)",
    ),
];
const BASIC_HSTS: &str = "max-age=31536000";
const HSTS: &str = "strict-transport-security";

fn tls() -> Tls {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    Tls {
        cert_pem: cert.cert.pem(),
        key_pem: cert.signing_key.serialize_pem(),
    }
}

/// Envoy with the headers filter in front of `echo`, a TLS listener too, and the upstream's
/// `server` header passed through to the filter (Envoy overwrites it by default).
fn start(rt: Runtime, echo: &EchoServer, config: Value) -> Envoy {
    start_with(rt, echo, config, |b| b)
}

fn start_with(
    rt: Runtime,
    echo: &EchoServer,
    config: Value,
    more: impl FnOnce(EnvoyBuilder) -> EnvoyBuilder,
) -> Envoy {
    more(
        EnvoyBuilder::new()
            .upstream(echo.addr())
            .hcm("server_header_transformation", json!("PASS_THROUGH"))
            .tls(tls()),
    )
    .filter(rt, "headers", config)
    .start()
    .unwrap()
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// Sends `req_headers`; the upstream answers with `upstream_sets` as response headers.
fn exchange(
    client: &reqwest::blocking::Client,
    url: &str,
    req_headers: &[(&str, &str)],
    upstream_sets: &[(&str, &str)],
) -> (HeaderMap, Echo) {
    let mut req = client.get(url).header("user-agent", "test");
    for (k, v) in req_headers {
        req = req.header(*k, *v);
    }
    for (k, v) in upstream_sets {
        req = req.header(RESPONSE_HEADER, format!("{k}: {v}"));
    }
    let resp: Response = req.send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let headers = resp.headers().clone();
    let echo: Echo = resp.json().unwrap();
    (headers, echo)
}

fn request_operations(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = start(
        rt,
        &echo,
        json!({
            "request": {
                "set": { "x-env": "prod" },
                "add": { "x-trace": "1" },
                "remove": ["x-debug"],
                "remove_matching": ["^x-internal-"]
            }
        }),
    );
    let (_, seen) = exchange(
        &client(),
        &envoy.url("/"),
        &[
            ("x-env", "dev"),
            ("x-env", "staging"),
            ("x-trace", "0"),
            ("x-debug", "1"),
            ("x-debug", "2"),
            ("x-internal-token", "secret"),
            ("X-Internal-User", "alice"),
            ("x-internalish", "kept"),
            ("x-keep", "yes"),
        ],
        &[],
    );
    assert_eq!(
        seen.header_all("x-env"),
        ["prod"],
        "set replaces every value"
    );
    assert_eq!(seen.header_all("x-trace"), ["0", "1"], "add appends");
    assert!(seen.header_all("x-debug").is_empty(), "remove: {seen:?}");
    assert!(seen.header_all("x-internal-token").is_empty(), "{seen:?}");
    assert!(seen.header_all("x-internal-user").is_empty(), "{seen:?}");
    assert_eq!(seen.header_all("x-internalish"), ["kept"]);
    assert_eq!(seen.header_all("x-keep"), ["yes"]);
    // Bodies and methods pass untouched.
    let seen: Echo = client()
        .post(envoy.url("/submit?a=1"))
        .header("x-debug", "1")
        .body("payload \u{1F600}")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/submit?a=1")
    );
    assert_eq!(seen.body, "payload \u{1F600}");
    assert!(seen.header_all("x-debug").is_empty());
    // Set and add also work when the client sent nothing.
    let (_, seen) = exchange(&client(), &envoy.url("/"), &[], &[]);
    assert_eq!(seen.header_all("x-env"), ["prod"]);
    assert_eq!(seen.header_all("x-trace"), ["1"]);
}

fn response_operations(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = start(
        rt,
        &echo,
        json!({
            "response": {
                "set": { "x-served-by": "portcullis" },
                "add": { "x-tag": "b", "vary": "origin" },
                "remove": ["server", "x-powered-by"],
                "remove_matching": ["^x-envoy-"],
                "set_if_absent": { "cache-control": "no-store" }
            }
        }),
    );
    let (h, _) = exchange(
        &client(),
        &envoy.url("/"),
        &[],
        &[
            ("server", "nginx/1.25"),
            ("x-powered-by", "PHP/8"),
            ("x-envoy-foo", "leak"),
            ("x-served-by", "upstream"),
            ("x-tag", "a"),
            ("vary", "accept"),
            ("x-other", "kept"),
        ],
    );
    assert!(values(&h, "server").is_empty(), "{h:?}");
    assert!(values(&h, "x-powered-by").is_empty(), "{h:?}");
    // Both the upstream's and the router's own x-envoy-upstream-service-time are gone.
    assert!(
        !h.keys().any(|k| k.as_str().starts_with("x-envoy-")),
        "{h:?}"
    );
    assert_eq!(values(&h, "x-served-by"), ["portcullis"]);
    assert_eq!(values(&h, "x-tag"), ["a", "b"]);
    // Envoy keeps some headers (vary among them) as one comma-joined value: same meaning.
    let vary: Vec<String> = values(&h, "vary")
        .iter()
        .flat_map(|v| {
            v.split(',')
                .map(|p| p.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(vary, ["accept", "origin"]);
    assert_eq!(values(&h, "x-other"), ["kept"]);
    assert_eq!(values(&h, "cache-control"), ["no-store"]);
    // set_if_absent keeps what the upstream sent.
    let (h, _) = exchange(
        &client(),
        &envoy.url("/"),
        &[],
        &[("cache-control", "max-age=60")],
    );
    assert_eq!(values(&h, "cache-control"), ["max-age=60"]);
}

fn assert_preset(h: &HeaderMap, preset: &[(&str, &str)], hsts: Option<&str>) {
    for (name, value) in preset {
        assert_eq!(values(h, name), [*value], "{name} in {h:?}");
    }
    match hsts {
        Some(v) => assert_eq!(values(h, HSTS), [v], "{h:?}"),
        None => assert!(values(h, HSTS).is_empty(), "no HSTS over plain HTTP: {h:?}"),
    }
}

fn strict_preset_with_and_without_https(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    // An edge Envoy (use_remote_address) sets x-forwarded-proto and :scheme from the connection.
    let envoy = start_with(rt, &echo, json!({ "security_headers": "strict" }), |b| {
        b.hcm("use_remote_address", json!(true))
    });
    let (h, seen) = exchange(&client(), &envoy.url("/"), &[], &[]);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_preset(&h, STRICT, None);
    // A client claiming HTTPS over plain HTTP gets no HSTS at the edge.
    let (h, seen) = exchange(
        &client(),
        &envoy.url("/"),
        &[("x-forwarded-proto", "https")],
        &[],
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_preset(&h, STRICT, None);
    let https = envoy.https_url("/").unwrap();
    let (h, seen) = exchange(&insecure_client(), &https, &[], &[]);
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_preset(&h, STRICT, Some(STRICT_HSTS));
}

/// Behind another proxy (Envoy's default, `use_remote_address: false`) Envoy trusts the
/// x-forwarded-proto it receives and derives `:scheme` from it, so the filter treats such a
/// request as HTTPS. Browsers ignore HSTS received over plain HTTP (RFC 6797 8.1), so this
/// only matters for deployments that expose a non-edge Envoy directly: use the edge setting.
fn behind_a_proxy_forwarded_proto_decides_https(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = start(rt, &echo, json!({ "security_headers": "strict" }));
    let (h, _) = exchange(&client(), &envoy.url("/"), &[], &[]);
    assert_preset(&h, STRICT, None);
    let (h, _) = exchange(
        &client(),
        &envoy.url("/"),
        &[("x-forwarded-proto", "https")],
        &[],
    );
    assert_preset(&h, STRICT, Some(STRICT_HSTS));
}

fn basic_preset_with_and_without_https(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = start(rt, &echo, json!({ "security_headers": "basic" }));
    let (h, _) = exchange(&client(), &envoy.url("/"), &[], &[]);
    assert_preset(&h, BASIC, None);
    let (h, _) = exchange(&insecure_client(), &envoy.https_url("/").unwrap(), &[], &[]);
    assert_preset(&h, BASIC, Some(BASIC_HSTS));
}

fn off_preset_adds_nothing(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = start(
        rt,
        &echo,
        json!({ "security_headers": "off", "response": { "set": { "x-marker": "1" } } }),
    );
    for (c, url) in [
        (client(), envoy.url("/")),
        (insecure_client(), envoy.https_url("/").unwrap()),
    ] {
        let (h, _) = exchange(&c, &url, &[], &[]);
        assert_eq!(values(&h, "x-marker"), ["1"], "the filter ran");
        for (name, _) in STRICT.iter().chain(BASIC) {
            assert!(values(&h, name).is_empty(), "{name} in {h:?}");
        }
        assert!(values(&h, HSTS).is_empty(), "{h:?}");
    }
}

fn preset_never_overwrites_upstream_headers(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let envoy = start(rt, &echo, json!({ "security_headers": "strict" }));
    let upstream = [
        ("x-frame-options", "SAMEORIGIN"),
        ("referrer-policy", "origin"),
        (HSTS, "max-age=60"),
    ];
    let (h, _) = exchange(
        &insecure_client(),
        &envoy.https_url("/").unwrap(),
        &[],
        &upstream,
    );
    for (name, value) in upstream {
        assert_eq!(values(&h, name), [value], "{name} was overwritten: {h:?}");
    }
    // The rest of the preset still fills in.
    assert_eq!(values(&h, "x-content-type-options"), ["nosniff"]);
    assert_eq!(
        values(&h, "content-security-policy"),
        ["frame-ancestors 'none'"]
    );
    // 3 of 6 preset headers were kept, 3 added.
    assert_eq!(
        envoy
            .counter("portcullis_headers_preset_kept_total")
            .unwrap(),
        Some(3)
    );
    assert_eq!(
        envoy
            .counter("portcullis_headers_preset_added_total")
            .unwrap(),
        Some(3)
    );
}

/// Envoy sends a local reply back through the encoder side of the filters *before* the one
/// that replied: put headers before ua-block so blocked responses get the preset too.
fn filter_order_decides_whether_local_replies_get_headers(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let ua_block = json!({ "deny": { "contains": ["GPTBot"] } });
    let headers =
        json!({ "security_headers": "strict", "request": { "set": { "x-env": "prod" } } });
    let headers_first = EnvoyBuilder::new()
        .upstream(echo.addr())
        .filter(rt, "headers", headers.clone())
        .filter(rt, "ua_block", ua_block.clone())
        .start()
        .unwrap();
    let ua_block_first = EnvoyBuilder::new()
        .upstream(echo.addr())
        .filter(rt, "ua_block", ua_block)
        .filter(rt, "headers", headers)
        .start()
        .unwrap();
    for envoy in [&headers_first, &ua_block_first] {
        // Proxied responses pass through both filters either way.
        let (h, seen) = exchange(&client(), &envoy.url("/"), &[], &[]);
        assert_preset(&h, STRICT, None);
        assert_eq!(seen.header_all("x-env"), ["prod"]);
    }
    let blocked = |envoy: &Envoy| {
        let resp = client()
            .get(envoy.url("/"))
            .header("user-agent", "GPTBot")
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403);
        resp.headers().clone()
    };
    assert_preset(&blocked(&headers_first), STRICT, None);
    // docs/filters.md (ua-block): filters after ua-block do not see its local response.
    let h = blocked(&ua_block_first);
    assert!(
        values(&h, "x-frame-options").is_empty(),
        "{}: headers placed after ua-block changed ua-block's local reply: {h:?}",
        rt.name()
    );
}

/// Envoy refuses a static bootstrap whose filter fails to configure: it exits with status 1
/// (no crash, no signal), and one log line from the filter names the field and the reason.
fn assert_config_refused(rt: Runtime, config: &str, expected_in_line: &[&str]) {
    let (status, logs) = EnvoyBuilder::new()
        .filter_raw(rt, "headers", config)
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
            && l.contains("invalid config")
            && expected_in_line.iter().all(|n| l.contains(n))),
        "config {config}: no filter log line with {expected_in_line:?}:\n{logs}"
    );
}

/// Under a control plane (file-based LDS here) the invalid listener is rejected and Envoy
/// keeps serving what it had.
fn invalid_config_update_is_rejected_and_envoy_keeps_serving(rt: Runtime) {
    let echo = EchoServer::start().unwrap();
    let mut envoy = EnvoyBuilder::new()
        .upstream(echo.addr())
        .dynamic_listeners()
        .filter(rt, "headers", json!({ "security_headers": "strict" }))
        .start()
        .unwrap();
    let bad = EnvoyBuilder::new()
        .filter_raw(rt, "headers", r#"{"security_headers": "extreme"}"#)
        .listeners("bad-", 0, None);
    let mut listeners = envoy.dynamic_listeners();
    listeners.extend(bad);
    assert!(!envoy.apply_dynamic_listeners(listeners).unwrap());
    assert!(envoy.process().try_status().is_none(), "Envoy exited");
    assert_eq!(envoy.listener_port("bad-http").unwrap(), None);
    assert!(
        envoy.logs().contains("unknown variant `extreme`"),
        "{}",
        envoy.logs()
    );
    let (h, _) = exchange(&client(), &envoy.url("/"), &[], &[]);
    assert_preset(&h, STRICT, None);
}

fn invalid_config_unknown_field(rt: Runtime) {
    assert_config_refused(
        rt,
        r#"{"request": {"sett": {"a": "b"}}}"#,
        &["request", "unknown field `sett`"],
    );
}

fn invalid_config_bad_regex(rt: Runtime) {
    assert_config_refused(
        rt,
        r#"{"response": {"remove_matching": ["^x-envoy-", "x-(bad"]}}"#,
        &["response.remove_matching[1]", "x-(bad"],
    );
}

fn invalid_config_wrong_type(rt: Runtime) {
    assert_config_refused(
        rt,
        r#"{"security_headers": "extreme"}"#,
        &["security_headers", "unknown variant `extreme`"],
    );
    assert_config_refused(
        rt,
        r#"{"request": {"remove": "x-debug"}}"#,
        &["request.remove", "invalid type"],
    );
    assert_config_refused(
        rt,
        r#"{"response": {"set": {"bad header": "v"}}}"#,
        &["response.set", "bad header"],
    );
}
