//! The harness itself against real Envoy, with no Portcullis filter: proxying to the echo
//! upstream, direct responses, Lua filters, stats, TLS, and Envoy refusing a bad bootstrap.

use portcullis_integration::echo::{Echo, EchoServer, RESPONSE_HEADER};
use portcullis_integration::envoy::{EnvoyBuilder, Tls};
use serde_json::json;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
}

#[test]
fn proxies_to_echo_upstream_with_repeated_headers() {
    let echo = EchoServer::start().unwrap();
    let envoy = EnvoyBuilder::new().upstream(echo.addr()).start().unwrap();
    let resp = client()
        .get(envoy.url("/hello?x=1"))
        .header("x-a", "1")
        .header("x-a", "2")
        .header(RESPONSE_HEADER, "x-from-upstream: yes")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-from-upstream"], "yes");
    let seen: Echo = resp.json().unwrap();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/hello?x=1");
    assert_eq!(seen.header_all("x-a"), ["1", "2"]);
    // Envoy added its own request id: proof the request went through Envoy.
    assert!(seen.header("x-request-id").is_some(), "{seen:?}");
    assert!(
        envoy.counter("http.http.downstream_rq_completed").unwrap() >= Some(1),
        "{:?}",
        envoy.stats("downstream_rq").unwrap()
    );
}

#[test]
fn lua_filter_and_direct_response() {
    let envoy = EnvoyBuilder::new()
        .direct_response(202, "direct\n")
        .lua(r#"function envoy_on_response(h) h:headers():add("x-lua", "ran") end"#)
        .start()
        .unwrap();
    let resp = client().get(envoy.url("/")).send().unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-lua"], "ran");
    assert_eq!(resp.text().unwrap(), "direct\n");
}

#[test]
fn tls_listener_serves_the_same_chain() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let echo = EchoServer::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .upstream(echo.addr())
        .tls(Tls {
            cert_pem: cert.cert.pem(),
            key_pem: cert.signing_key.serialize_pem(),
        })
        .start()
        .unwrap();
    let https = reqwest::blocking::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let seen: Echo = https
        .get(envoy.https_url("/tls").unwrap())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(seen.path, "/tls");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    let plain: Echo = client().get(envoy.url("/")).send().unwrap().json().unwrap();
    assert_eq!(plain.header("x-forwarded-proto"), Some("http"));
}

#[test]
fn broken_bootstrap_exits_non_zero_with_reason() {
    let (status, logs) = EnvoyBuilder::new()
        .raw_filter(
            json!({"name": "envoy.filters.http.does_not_exist", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope"}}),
        )
        .start_expect_exit()
        .unwrap();
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(logs.contains("nope.v3.Nope"), "{logs}");
}
