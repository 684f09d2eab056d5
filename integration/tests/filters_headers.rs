//! headers through a real Envoy 1.40: operations in both directions, security presets over
//! HTTP and HTTPS, upstream headers never overwritten by a preset, and invalid configs.

use portcullis_integration::echo::{Echo, EchoServer, RESPONSE_HEADER};
use portcullis_integration::envoy::{Envoy, EnvoyBuilder, Tls};
use portcullis_integration::http::{client, insecure_client};
use portcullis_integration::wasm;
use reqwest::blocking::Response;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

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
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    Tls {
        cert_pem: cert.cert.pem(),
        key_pem: cert.signing_key.serialize_pem(),
    }
}

/// Envoy with the headers filter in front of `echo`, a TLS listener too, and the upstream's
/// `server` header passed through to the filter (Envoy overwrites it by default).
fn start(echo: &EchoServer, config: Value) -> Envoy {
    EnvoyBuilder::new()
        .upstream(echo.addr())
        .hcm("server_header_transformation", json!("PASS_THROUGH"))
        .tls(tls())
        .wasm("headers", wasm::module("headers").unwrap(), config)
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

#[test]
fn request_operations() {
    let echo = EchoServer::start().unwrap();
    let envoy = start(
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
    assert_eq!(seen.header_all("x-env"), ["prod"], "set replaces every value");
    assert_eq!(seen.header_all("x-trace"), ["0", "1"], "add appends");
    assert!(seen.header_all("x-debug").is_empty(), "remove: {seen:?}");
    assert!(seen.header_all("x-internal-token").is_empty(), "{seen:?}");
    assert!(seen.header_all("x-internal-user").is_empty(), "{seen:?}");
    assert_eq!(seen.header_all("x-internalish"), ["kept"]);
    assert_eq!(seen.header_all("x-keep"), ["yes"]);
    // Set and add also work when the client sent nothing.
    let (_, seen) = exchange(&client(), &envoy.url("/"), &[], &[]);
    assert_eq!(seen.header_all("x-env"), ["prod"]);
    assert_eq!(seen.header_all("x-trace"), ["1"]);
}

#[test]
fn response_operations() {
    let echo = EchoServer::start().unwrap();
    let envoy = start(
        &echo,
        json!({
            "response": {
                "set": { "x-served-by": "portcullis" },
                "add": { "vary": "origin" },
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
    assert_eq!(values(&h, "vary"), ["accept", "origin"]);
    assert_eq!(values(&h, "x-other"), ["kept"]);
    assert_eq!(values(&h, "cache-control"), ["no-store"]);
    // set_if_absent keeps what the upstream sent.
    let (h, _) = exchange(&client(), &envoy.url("/"), &[], &[("cache-control", "max-age=60")]);
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

#[test]
fn strict_preset_with_and_without_https() {
    let echo = EchoServer::start().unwrap();
    let envoy = start(&echo, json!({ "security_headers": "strict" }));
    let (h, _) = exchange(&client(), &envoy.url("/"), &[], &[]);
    assert_preset(&h, STRICT, None);
    // A client claiming HTTPS over plain HTTP gets no HSTS either.
    let (h, _) = exchange(&client(), &envoy.url("/"), &[("x-forwarded-proto", "https")], &[]);
    assert_preset(&h, STRICT, None);
    let https = envoy.https_url("/").unwrap();
    let (h, seen) = exchange(&insecure_client(), &https, &[], &[]);
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_preset(&h, STRICT, Some(STRICT_HSTS));
}

#[test]
fn basic_preset_with_and_without_https() {
    let echo = EchoServer::start().unwrap();
    let envoy = start(&echo, json!({ "security_headers": "basic" }));
    let (h, _) = exchange(&client(), &envoy.url("/"), &[], &[]);
    assert_preset(&h, BASIC, None);
    let (h, _) = exchange(&insecure_client(), &envoy.https_url("/").unwrap(), &[], &[]);
    assert_preset(&h, BASIC, Some(BASIC_HSTS));
}

#[test]
fn off_preset_adds_nothing() {
    let echo = EchoServer::start().unwrap();
    let envoy = start(&echo, json!({ "security_headers": "off", "response": { "set": { "x-marker": "1" } } }));
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

#[test]
fn preset_never_overwrites_upstream_headers() {
    let echo = EchoServer::start().unwrap();
    let envoy = start(&echo, json!({ "security_headers": "strict" }));
    let upstream = [
        ("x-frame-options", "SAMEORIGIN"),
        ("referrer-policy", "origin"),
        (HSTS, "max-age=60"),
    ];
    let (h, _) = exchange(&insecure_client(), &envoy.https_url("/").unwrap(), &[], &upstream);
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
    assert_eq!(envoy.counter("portcullis_headers_preset_kept_total").unwrap(), Some(3));
    assert_eq!(envoy.counter("portcullis_headers_preset_added_total").unwrap(), Some(3));
}

#[test]
fn filters_chain_in_order_with_ua_block() {
    // ua-block answers locally; the headers filter after it still sees the local response.
    let echo = EchoServer::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .upstream(echo.addr())
        .wasm(
            "ua_block",
            wasm::module("ua_block").unwrap(),
            json!({ "deny": { "contains": ["GPTBot"] } }),
        )
        .wasm(
            "headers",
            wasm::module("headers").unwrap(),
            json!({ "security_headers": "strict", "request": { "set": { "x-env": "prod" } } }),
        )
        .start()
        .unwrap();
    let resp = client().get(envoy.url("/")).header("user-agent", "GPTBot").send().unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_preset(resp.headers(), STRICT, None);
    let (h, seen) = exchange(&client(), &envoy.url("/"), &[], &[]);
    assert_preset(&h, STRICT, None);
    assert_eq!(seen.header_all("x-env"), ["prod"]);
}

fn assert_config_refused(config: &str, expected_in_log: &[&str]) {
    let (status, logs) = EnvoyBuilder::new()
        .wasm_raw("headers", wasm::module("headers").unwrap(), config)
        .start_expect_exit()
        .unwrap();
    assert_eq!(status.code(), Some(1), "config {config}: {status:?}\n{logs}");
    for needle in expected_in_log {
        assert!(logs.contains(needle), "config {config}: {needle:?} not in log:\n{logs}");
    }
}

#[test]
fn invalid_config_unknown_field() {
    assert_config_refused(
        r#"{"request": {"sett": {"a": "b"}}}"#,
        &["request", "unknown field `sett`"],
    );
}

#[test]
fn invalid_config_bad_regex() {
    assert_config_refused(
        r#"{"response": {"remove_matching": ["^x-envoy-", "x-(bad"]}}"#,
        &["response.remove_matching[1]", "x-(bad"],
    );
}

#[test]
fn invalid_config_wrong_type() {
    assert_config_refused(
        r#"{"security_headers": "extreme"}"#,
        &["security_headers", "unknown variant `extreme`"],
    );
    assert_config_refused(r#"{"request": {"remove": "x-debug"}}"#, &["request.remove", "invalid type"]);
    assert_config_refused(
        r#"{"response": {"set": {"bad header": "v"}}}"#,
        &["response.set", "bad header"],
    );
}
