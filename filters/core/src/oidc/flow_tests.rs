//! Native tests of the whole flow against [`MemoryHost`], with tokens signed by test keys.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use super::*;
use crate::oidc::config::Settings;
use crate::oidc::jwt::tests::{jwks_json, rsa1, rsa2, sign, ISS, NOW};
use crate::oidc::urls::query_get;
use crate::testing::MemoryHost;

const AUTH: &str = "https://idp.example.com/auth";

fn config(edit: impl FnOnce(&mut Value)) -> Arc<Settings> {
    let mut v = json!({
        "issuer": ISS,
        "provider_cluster": "idp",
        "client_id": "client",
        "client_secret": "s3cret",
        "redirect_uri": "https://app.example.com/oauth2/callback",
        "scopes": ["openid", "email"],
        "logout": {"path": "/logout", "post_logout_redirect_uri": "https://app.example.com/"},
        "cookie": {"secret": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},
        "pass_through": [{"path_prefix": "/healthz"}],
        "api_paths": [{"path_prefix": "/api"}],
        "forward": {"access_token": true, "id_token_header": "x-id-token"},
        "claims_to_headers": {"email": "x-user-email", "groups": "x-user-groups"},
        "bearer": {"accept": true, "audiences": ["api"]}
    });
    edit(&mut v);
    Arc::new(Settings::from_json(v.to_string().as_bytes()).unwrap())
}

fn discovery() -> Vec<u8> {
    json!({
        "issuer": ISS,
        "authorization_endpoint": AUTH,
        "token_endpoint": "https://idp.example.com/token",
        "jwks_uri": "https://idp.example.com/jwks",
        "end_session_endpoint": "https://idp.example.com/session/end"
    })
    .to_string()
    .into_bytes()
}

fn ready(settings: Arc<Settings>) -> Provider {
    let mut p = Provider::new(settings);
    let d = p.poll(NOW).unwrap();
    assert_eq!(
        (d.kind, d.path.as_str(), d.authority.as_str()),
        (
            CallKind::Discovery,
            "/.well-known/openid-configuration",
            "idp.example.com"
        )
    );
    assert!(p.poll(NOW).is_none(), "one fetch at a time");
    p.on_fetch(CallKind::Discovery, 200, &discovery(), NOW)
        .unwrap();
    let j = p.poll(NOW).unwrap();
    assert_eq!((j.kind, j.path.as_str()), (CallKind::Jwks, "/jwks"));
    p.on_fetch(CallKind::Jwks, 200, &jwks_json(&["rsa1"]), NOW)
        .unwrap();
    assert!(p.ready());
    assert!(p.poll(NOW + 1).is_none());
    p
}

/// A tiny cookie jar: applies `Set-Cookie` (deletions included).
#[derive(Default, Clone)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn apply(&mut self, headers: &[(String, String)]) {
        for (k, v) in headers {
            if k != "set-cookie" {
                continue;
            }
            let first = v.split(';').next().unwrap();
            let (name, value) = first.split_once('=').unwrap();
            if v.contains("Max-Age=0") {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_string(), value.to_string());
            }
        }
    }
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

struct Sent {
    host: MemoryHost,
    flow: RequestFlow,
    action: Action,
}

fn send(p: &mut Provider, path: &str, jar: &Jar, extra: &[(&str, &str)], at: u64) -> Sent {
    let mut headers: Vec<(String, String)> = vec![
        (":method".into(), "GET".into()),
        (":path".into(), path.into()),
        (":authority".into(), "app.example.com".into()),
        ("accept".into(), "text/html,application/xhtml+xml".into()),
    ];
    if !jar.0.is_empty() {
        headers.push(("cookie".into(), jar.header()));
    }
    for (k, v) in extra {
        headers.retain(|(n, _)| n != k);
        headers.push((k.to_string(), v.to_string()));
    }
    let mut host = MemoryHost::new();
    host.request = headers;
    host.now = Some(UNIX_EPOCH + Duration::from_secs(at));
    let mut flow = RequestFlow::new();
    let action = flow.on_request_headers(&mut host, p);
    Sent { host, flow, action }
}

impl Sent {
    fn status(&self) -> u16 {
        self.host
            .local_response
            .as_ref()
            .map(|r| r.status)
            .unwrap_or(0)
    }
    fn header(&self, name: &str) -> Option<String> {
        let r = self.host.local_response.as_ref()?;
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
    fn resp_headers(&self) -> Vec<(String, String)> {
        self.host
            .local_response
            .as_ref()
            .map(|r| r.headers.clone())
            .unwrap_or_default()
    }
    fn req(&self, name: &str) -> Option<String> {
        self.host.header(Direction::Request, name)
    }
}

fn token_response(nonce: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut c = json!({"iss": ISS, "aud": "client", "sub": "alice", "exp": NOW + 3600, "iat": NOW, "nonce": nonce,
                       "email": "alice@example.com", "groups": ["admins", "dev"]});
    edit(&mut c);
    let id = sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &c);
    json!({"id_token": id, "access_token": "AT-1", "refresh_token": "RT-1", "expires_in": 300, "token_type": "Bearer"})
        .to_string()
        .into_bytes()
}

/// Runs a full login; returns the jar holding the session.
fn login(p: &mut Provider, path: &str, edit: impl FnOnce(&mut Value)) -> (Jar, Sent) {
    let mut jar = Jar::default();
    let first = send(p, path, &jar, &[], NOW);
    assert_eq!(first.status(), 302, "{:?}", first.host.local_response);
    jar.apply(&first.resp_headers());
    let loc = first.header("location").unwrap();
    assert!(loc.starts_with(AUTH));
    let q = loc.split_once('?').unwrap().1;
    let state = query_get(q, "state").unwrap();
    let nonce = query_get(q, "nonce").unwrap();
    let cb = format!(
        "/oauth2/callback?code=CODE&state={state}&iss={}",
        urlencode(ISS)
    );
    let mut second = send(p, &cb, &jar, &[], NOW);
    let Action::Call(call) = second.action.clone() else {
        panic!("expected token call, got {:?}", second.action)
    };
    assert_eq!(call.kind, CallKind::Token);
    let action =
        second
            .flow
            .on_callout_response(&mut second.host, p, 200, &token_response(&nonce, edit));
    assert_eq!(action, Action::Responded);
    jar.apply(&second.resp_headers());
    (jar, second)
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[test]
fn not_ready_gives_503_never_a_redirect() {
    let mut p = Provider::new(config(|_| {}));
    let r = send(&mut p, "/", &Jar::default(), &[], NOW);
    assert_eq!(r.status(), 503);
    assert!(
        String::from_utf8_lossy(&r.host.local_response.as_ref().unwrap().body)
            .contains("discovery pending")
    );
    assert_eq!(
        r.host.counter("portcullis_oidc_rejected_not_ready_total"),
        1
    );
    // A discovery document for another issuer is refused and keeps the filter unready.
    let bad = json!({"issuer": "https://evil.example.com", "authorization_endpoint": AUTH, "token_endpoint": AUTH, "jwks_uri": AUTH});
    p.poll(NOW).unwrap();
    assert!(p
        .on_fetch(CallKind::Discovery, 200, bad.to_string().as_bytes(), NOW)
        .is_err());
    assert!(!p.ready());
    // Backoff: no immediate retry, then a retry.
    assert!(p.poll(NOW).is_none());
    assert!(p.poll(NOW + 60).is_some());
}

/// Found by the `oidc_discovery` fuzz target: the URL parser drops CR/LF from an endpoint, and
/// the endpoint string then went verbatim into the login (or logout) `location` header.
#[test]
fn discovery_endpoints_with_control_characters_are_refused() {
    for field in [
        "authorization_endpoint",
        "end_session_endpoint",
        "token_endpoint",
        "jwks_uri",
    ] {
        let mut doc: serde_json::Value = serde_json::from_slice(&discovery()).unwrap();
        doc[field] = json!("https://idp.example.com/a\r\nset-cookie: x=y");
        let mut p = Provider::new(config(|_| {}));
        p.poll(NOW).unwrap();
        let err = p
            .on_fetch(CallKind::Discovery, 200, doc.to_string().as_bytes(), NOW)
            .unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
        assert!(!p.ready());
    }
}

#[test]
fn login_flow_end_to_end() {
    let mut p = ready(config(|_| {}));
    let first = send(&mut p, "/dash?x=1", &Jar::default(), &[], NOW);
    let loc = first.header("location").unwrap();
    let q = loc.split_once('?').unwrap().1;
    assert_eq!(
        query_get(q, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(query_get(q, "client_id").as_deref(), Some("client"));
    assert_eq!(query_get(q, "scope").as_deref(), Some("openid email"));
    assert_eq!(
        query_get(q, "redirect_uri").as_deref(),
        Some("https://app.example.com/oauth2/callback")
    );
    assert_eq!(query_get(q, "code_challenge").unwrap().len(), 43);

    let (jar, done) = login(&mut p, "/dash?x=1", |_| {});
    assert_eq!(done.header("location").as_deref(), Some("/dash?x=1"));
    assert_eq!(done.host.counter(metrics::LOGINS), 1);
    let set: Vec<String> = done
        .resp_headers()
        .into_iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v)
        .collect();
    assert!(set
        .iter()
        .all(|c| c.contains("HttpOnly") && c.contains("Secure") && c.contains("SameSite=Lax")));
    assert!(jar
        .0
        .contains_key(&format!("{}-0", p.settings.session_cookie)));
    assert!(
        !jar.0.contains_key(&p.settings.flow_cookie),
        "flow cookie is single-use"
    );

    // The code exchange carried the verifier and client authentication.
    let mut j2 = Jar::default();
    let r = send(&mut p, "/", &j2, &[], NOW);
    j2.apply(&r.resp_headers());
    let state = query_get(
        r.header("location").unwrap().split_once('?').unwrap().1,
        "state",
    )
    .unwrap();
    let cb = send(
        &mut p,
        &format!("/oauth2/callback?code=C&state={state}"),
        &j2,
        &[],
        NOW,
    );
    let Action::Call(call) = cb.action else {
        panic!()
    };
    let body = String::from_utf8(call.body.unwrap()).unwrap();
    assert!(
        body.contains("grant_type=authorization_code")
            && body.contains("code_verifier=")
            && body.contains("code=C")
    );
    assert!(call
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == "Basic Y2xpZW50OnMzY3JldA=="));
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        ("POST", "/token")
    );

    // Authenticated request: claims to headers, tokens forwarded, own cookies stripped.
    let ok = send(
        &mut p,
        "/dash",
        &jar,
        &[
            ("x-user-email", "forged@evil.example"),
            ("cookie", &format!("{}; app=1", jar.header())),
        ],
        NOW + 10,
    );
    assert_eq!(ok.action, Action::Continue);
    assert_eq!(ok.req("x-user-email").as_deref(), Some("alice@example.com"));
    assert_eq!(ok.host.values(Direction::Request, "x-user-email").len(), 1);
    assert_eq!(ok.req("x-user-groups").as_deref(), Some("admins,dev"));
    assert_eq!(ok.req("authorization").as_deref(), Some("Bearer AT-1"));
    assert!(ok.req("x-id-token").unwrap().starts_with("ey"));
    assert_eq!(ok.req("cookie").as_deref(), Some("app=1"));
    assert_eq!(ok.host.counter(metrics::SESSIONS_VALID), 1);
}

#[test]
fn forged_headers_are_removed_even_without_session() {
    let mut p = ready(config(|_| {}));
    let r = send(
        &mut p,
        "/healthz",
        &Jar::default(),
        &[("x-user-email", "root@evil.example"), ("x-id-token", "x")],
        NOW,
    );
    assert_eq!(r.action, Action::Continue);
    assert_eq!(r.req("x-user-email"), None);
    assert_eq!(r.req("x-id-token"), None);
}

#[test]
fn tampered_forged_and_foreign_cookies_mean_no_session() {
    let mut p = ready(config(|_| {}));
    let (jar, _) = login(&mut p, "/", |_| {});
    let name = format!("{}-0", p.settings.session_cookie);
    let mut tampered = jar.clone();
    let v = tampered.0.get_mut(&name).unwrap();
    let mid = v.len() / 2;
    let flipped = if &v[mid..mid + 1] == "A" { "B" } else { "A" };
    v.replace_range(mid..mid + 1, flipped);
    let r = send(&mut p, "/", &tampered, &[], NOW);
    assert_eq!(r.status(), 302);
    assert!(r.header("location").unwrap().starts_with(AUTH));
    assert_eq!(
        r.host.counter("portcullis_oidc_rejected_bad_session_total"),
        1
    );
    // Deletes the bad cookie on the way.
    assert!(r.resp_headers().iter().any(|(k, v)| k == "set-cookie"
        && v.starts_with(&format!("{name}=;"))
        && v.contains("Max-Age=0")));

    let mut forged = Jar::default();
    forged.0.insert(
        name.clone(),
        "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
    );
    assert_eq!(send(&mut p, "/api/x", &forged, &[], NOW).status(), 401);

    // Another policy (other client) on the same provider neither reads nor clobbers it.
    let mut other = ready(config(|v| v["client_id"] = "other".into()));
    assert_ne!(other.settings.session_cookie, p.settings.session_cookie);
    let r = send(&mut other, "/", &jar, &[], NOW);
    assert_eq!(r.status(), 302);
    assert!(r
        .resp_headers()
        .iter()
        .all(|(k, v)| k != "set-cookie" || !v.starts_with(&name)));
    // Same cookie name but a different secret: still no session.
    let mut copy = jar.clone();
    let mut rotated = ready(config(|v| {
        v["cookie"]["secret"] = "Hx4dHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=".into()
    }));
    copy.0
        .retain(|k, _| k.starts_with(&rotated.settings.session_cookie));
    assert_eq!(send(&mut rotated, "/", &copy, &[], NOW).status(), 302);
}

#[test]
fn state_attacks_and_provider_errors() {
    let mut p = ready(config(|_| {}));
    let mut jar = Jar::default();
    let r = send(&mut p, "/", &jar, &[], NOW);
    jar.apply(&r.resp_headers());
    // State mismatch.
    let bad = send(
        &mut p,
        "/oauth2/callback?code=C&state=wrong",
        &jar,
        &[],
        NOW,
    );
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.host.counter("portcullis_oidc_rejected_bad_state_total"),
        1
    );
    // No flow cookie at all (callback opened in another browser).
    let none = send(
        &mut p,
        "/oauth2/callback?code=C&state=x",
        &Jar::default(),
        &[],
        NOW,
    );
    assert_eq!(none.status(), 400);
    // Expired flow.
    let state = query_get(
        r.header("location").unwrap().split_once('?').unwrap().1,
        "state",
    )
    .unwrap();
    let late = send(
        &mut p,
        &format!("/oauth2/callback?code=C&state={state}"),
        &jar,
        &[],
        NOW + 601,
    );
    assert_eq!(late.status(), 400);
    // Wrong iss parameter (mix-up attack).
    let mix = send(
        &mut p,
        &format!("/oauth2/callback?code=C&state={state}&iss=https%3A%2F%2Fevil"),
        &jar,
        &[],
        NOW,
    );
    assert_eq!(mix.status(), 400);
    // Provider error is shown, escaped.
    let err = send(
        &mut p,
        "/oauth2/callback?error=access_denied&error_description=%3Cscript%3E",
        &jar,
        &[],
        NOW,
    );
    assert_eq!(err.status(), 401);
    let body =
        String::from_utf8_lossy(&err.host.local_response.as_ref().unwrap().body).into_owned();
    assert!(
        body.contains("access_denied")
            && body.contains("&lt;script&gt;")
            && !body.contains("<script>")
    );
    // Replayed / refused code.
    let mut cb = send(
        &mut p,
        &format!("/oauth2/callback?code=C&state={state}"),
        &jar,
        &[],
        NOW,
    );
    assert!(matches!(cb.action, Action::Call(_)));
    let a = cb
        .flow
        .on_callout_response(&mut cb.host, &mut p, 400, br#"{"error":"invalid_grant"}"#);
    assert_eq!(a, Action::Responded);
    assert_eq!(cb.status(), 401);
    assert_eq!(
        cb.host
            .counter("portcullis_oidc_rejected_code_exchange_failed_total"),
        1
    );
}

#[test]
fn id_token_checks_at_login() {
    for (edit, reason) in [
        (
            Box::new(|c: &mut Value| c["nonce"] = "other".into()) as Box<dyn FnOnce(&mut Value)>,
            "bad_nonce",
        ),
        (
            Box::new(|c: &mut Value| c["aud"] = "someone-else".into()),
            "bad_audience",
        ),
        (
            Box::new(|c: &mut Value| c["exp"] = json!(NOW - 3600)),
            "expired",
        ),
        (
            Box::new(|c: &mut Value| c["iss"] = "https://evil.example.com".into()),
            "bad_issuer",
        ),
    ] {
        let mut p = ready(config(|_| {}));
        let mut jar = Jar::default();
        let r = send(&mut p, "/", &jar, &[], NOW);
        jar.apply(&r.resp_headers());
        let q = r.header("location").unwrap();
        let q = q.split_once('?').unwrap().1;
        let (state, nonce) = (
            query_get(q, "state").unwrap(),
            query_get(q, "nonce").unwrap(),
        );
        let mut cb = send(
            &mut p,
            &format!("/oauth2/callback?code=C&state={state}"),
            &jar,
            &[],
            NOW,
        );
        cb.flow
            .on_callout_response(&mut cb.host, &mut p, 200, &token_response(&nonce, edit));
        assert_eq!(cb.status(), 401, "{reason}");
        assert_eq!(cb.host.counter(&metrics::rejected(reason)), 1, "{reason}");
        assert!(cb
            .resp_headers()
            .iter()
            .all(|(k, v)| k != "set-cookie" || v.contains("Max-Age=0")));
    }
}

#[test]
fn unknown_kid_triggers_one_rate_limited_jwks_refetch() {
    let mut p = ready(config(|_| {}));
    let now = NOW + 100;
    let token = sign(
        Algorithm::RS256,
        Some("rsa2"),
        &rsa2(),
        &json!({"iss": ISS, "aud": "api", "exp": now + 60, "sub": "svc"}),
    );
    let auth = format!("Bearer {token}");
    let mut r = send(
        &mut p,
        "/api/x",
        &Jar::default(),
        &[("authorization", &auth)],
        now,
    );
    let Action::Call(call) = r.action.clone() else {
        panic!("{:?}", r.action)
    };
    assert_eq!(call.kind, CallKind::Jwks);
    let a = r
        .flow
        .on_callout_response(&mut r.host, &mut p, 200, &jwks_json(&["rsa1", "rsa2"]));
    assert_eq!(a, Action::Continue);
    // A token with a kid that is nowhere: the refetch is rate-limited, so 401 at once.
    let t3 = sign(
        Algorithm::RS256,
        Some("nope"),
        &rsa2(),
        &json!({"iss": ISS, "aud": "api", "exp": now + 60}),
    );
    let auth3 = format!("Bearer {t3}");
    let r3 = send(
        &mut p,
        "/api/x",
        &Jar::default(),
        &[("authorization", &auth3)],
        now + 1,
    );
    assert_eq!(r3.status(), 401);
    assert_eq!(
        r3.host
            .counter("portcullis_oidc_rejected_unknown_kid_total"),
        1
    );
}

#[test]
fn bearer_tokens_verified_once_then_cached() {
    let mut p = ready(config(|_| {}));
    let token = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &rsa1(),
        &json!({"iss": ISS, "aud": ["api"], "exp": NOW + 60, "email": "svc@example.com"}),
    );
    let auth = format!("Bearer {token}");
    let r = send(
        &mut p,
        "/api/x",
        &Jar::default(),
        &[("authorization", &auth), ("x-user-email", "forged")],
        NOW,
    );
    assert_eq!(r.action, Action::Continue);
    assert_eq!(r.req("x-user-email").as_deref(), Some("svc@example.com"));
    assert_eq!(p.bearer_cache_len(), 1);
    let again = send(
        &mut p,
        "/api/x",
        &Jar::default(),
        &[("authorization", &auth)],
        NOW + 1,
    );
    assert_eq!(again.action, Action::Continue);
    assert_eq!(p.bearer_cache_len(), 1);
    // Past expiry (+ skew) the cached entry no longer counts.
    let late = send(
        &mut p,
        "/api/x",
        &Jar::default(),
        &[("authorization", &auth)],
        NOW + 200,
    );
    assert_eq!(late.status(), 401);
    assert!(late
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    // Wrong audience, alg none.
    let wrong = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &rsa1(),
        &json!({"iss": ISS, "aud": "client", "exp": NOW + 60}),
    );
    let r = send(
        &mut p,
        "/api/x",
        &Jar::default(),
        &[("authorization", &format!("Bearer {wrong}"))],
        NOW,
    );
    assert_eq!(
        (
            r.status(),
            r.host
                .counter("portcullis_oidc_rejected_bad_audience_total")
        ),
        (401, 1)
    );
    let none = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbSIsImF1ZCI6ImFwaSIsImV4cCI6OTk5OTk5OTk5OX0.";
    let r = send(
        &mut p,
        "/api/x",
        &Jar::default(),
        &[("authorization", &format!("Bearer {none}"))],
        NOW,
    );
    assert_eq!(
        (
            r.status(),
            r.host.counter("portcullis_oidc_rejected_bad_alg_total")
        ),
        (401, 1)
    );
}

#[test]
fn api_and_non_html_requests_get_401_json() {
    let mut p = ready(config(|_| {}));
    for (path, accept) in [
        ("/api/items", "text/html"),
        ("/page", "application/json"),
        ("/page", "*/*"),
    ] {
        let r = send(&mut p, path, &Jar::default(), &[("accept", accept)], NOW);
        assert_eq!(r.status(), 401, "{path} {accept}");
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer realm=\"client\""));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        let body: Value =
            serde_json::from_slice(&r.host.local_response.as_ref().unwrap().body).unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
    let xhr = send(
        &mut p,
        "/page",
        &Jar::default(),
        &[("x-requested-with", "XMLHttpRequest")],
        NOW,
    );
    assert_eq!(xhr.status(), 401);
}

#[test]
fn require_rejects_with_403() {
    let mut p = ready(config(|v| v["require"] = json!({"groups": ["ops"]})));
    let (jar, _) = login(&mut p, "/", |_| {});
    let r = send(&mut p, "/", &jar, &[], NOW);
    assert_eq!(r.status(), 403);
    let mut p = ready(config(|v| v["require"] = json!({"groups": ["ops", "dev"]})));
    let (jar, _) = login(&mut p, "/", |_| {});
    assert_eq!(send(&mut p, "/", &jar, &[], NOW).action, Action::Continue);
}

#[test]
fn large_tokens_are_chunked_and_reassembled() {
    let mut p = ready(config(|_| {}));
    let big = "x".repeat(9000);
    let (jar, _) = login(&mut p, "/", |c| c["big"] = big.clone().into());
    let base = &p.settings.session_cookie;
    let n = jar
        .0
        .keys()
        .filter(|k| k.starts_with(base.as_str()))
        .count();
    assert!(n >= 3, "expected several chunks, got {n}");
    assert!(jar.0.values().all(|v| v.len() <= cookies::CHUNK_SIZE));
    assert_eq!(send(&mut p, "/", &jar, &[], NOW).action, Action::Continue);
    // Too large for max_chunks: a clear error, not a loop.
    let mut small = ready(config(|v| v["cookie"]["max_chunks"] = 1.into()));
    let mut jar = Jar::default();
    let r = send(&mut small, "/", &jar, &[], NOW);
    jar.apply(&r.resp_headers());
    let q = r.header("location").unwrap();
    let q = q.split_once('?').unwrap().1;
    let (state, nonce) = (
        query_get(q, "state").unwrap(),
        query_get(q, "nonce").unwrap(),
    );
    let mut cb = send(
        &mut small,
        &format!("/oauth2/callback?code=C&state={state}"),
        &jar,
        &[],
        NOW,
    );
    cb.flow.on_callout_response(
        &mut cb.host,
        &mut small,
        200,
        &token_response(&nonce, |c| c["big"] = big.into()),
    );
    assert_eq!(cb.status(), 500);
    assert_eq!(
        cb.host
            .counter("portcullis_oidc_rejected_session_too_large_total"),
        1
    );
}

#[test]
fn expired_session_refreshes_transparently_or_relogs() {
    let mut p = ready(config(|_| {}));
    let (jar, _) = login(&mut p, "/", |_| {});
    let later = NOW + 400; // access token (300 s) expired
    let mut r = send(&mut p, "/dash", &jar, &[], later);
    let Action::Call(call) = r.action.clone() else {
        panic!("{:?}", r.action)
    };
    assert_eq!(call.kind, CallKind::Refresh);
    assert!(String::from_utf8(call.body.clone().unwrap())
        .unwrap()
        .contains("refresh_token=RT-1"));
    let new_id = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &rsa1(),
        &json!({"iss": ISS, "aud": "client", "sub": "alice", "exp": later + 3600, "iat": later, "email": "alice@example.com"}),
    );
    let body = json!({"access_token": "AT-2", "refresh_token": "RT-2", "expires_in": 300, "id_token": new_id}).to_string();
    let a = r
        .flow
        .on_callout_response(&mut r.host, &mut p, 200, body.as_bytes());
    assert_eq!(a, Action::Continue);
    assert_eq!(r.req("authorization").as_deref(), Some("Bearer AT-2"));
    assert_eq!(r.host.counter(metrics::REFRESH), 1);
    r.flow.on_response_headers(&mut r.host);
    let mut jar2 = jar.clone();
    jar2.apply(&r.host.response);
    assert_ne!(jar2.0, jar.0);
    let ok = send(&mut p, "/dash", &jar2, &[], later + 10);
    assert_eq!(ok.action, Action::Continue);
    assert_eq!(ok.req("authorization").as_deref(), Some("Bearer AT-2"));

    // Refresh refused: browser goes back to login, API gets 401.
    for (path, accept, status) in [
        ("/dash", "text/html", 302),
        ("/api/x", "application/json", 401),
    ] {
        let mut r = send(&mut p, path, &jar, &[("accept", accept)], later);
        assert!(matches!(r.action, Action::Call(_)));
        r.flow
            .on_callout_response(&mut r.host, &mut p, 400, br#"{"error":"invalid_grant"}"#);
        assert_eq!(r.status(), status, "{path}");
        assert!(
            r.host
                .counter("portcullis_oidc_rejected_refresh_failed_total")
                == 1
        );
    }
}

#[test]
fn logout_clears_and_goes_to_end_session() {
    let mut p = ready(config(|_| {}));
    let (jar, _) = login(&mut p, "/", |_| {});
    let r = send(
        &mut p,
        "/logout",
        &jar,
        &[("sec-fetch-site", "same-origin")],
        NOW,
    );
    assert_eq!(r.status(), 302);
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with("https://idp.example.com/session/end?"));
    let q = loc.split_once('?').unwrap().1;
    assert_eq!(
        query_get(q, "post_logout_redirect_uri").as_deref(),
        Some("https://app.example.com/")
    );
    assert!(query_get(q, "id_token_hint").unwrap().starts_with("ey"));
    let mut after = jar.clone();
    after.apply(&r.resp_headers());
    assert!(
        after.0.is_empty(),
        "all session cookies deleted: {:?}",
        after.0.keys()
    );
}

#[test]
fn open_redirect_attempts_return_to_root() {
    let mut p = ready(config(|_| {}));
    for evil in ["//evil.example/", "/\\evil.example/"] {
        let (_, done) = login(&mut p, evil, |_| {});
        assert_eq!(done.header("location").as_deref(), Some("/"), "{evil}");
    }
}

#[test]
fn new_login_overwrites_the_single_flow_cookie() {
    let mut p = ready(config(|_| {}));
    let mut jar = Jar::default();
    for _ in 0..5 {
        let r = send(&mut p, "/", &jar, &[], NOW);
        jar.apply(&r.resp_headers());
    }
    assert_eq!(jar.0.len(), 1, "{:?}", jar.0.keys());
}

#[test]
fn discovery_and_keys_are_refreshed_on_schedule() {
    let mut p = ready(config(|v| v["discovery_refresh_seconds"] = 100.into()));
    assert!(p.poll(NOW + 99).is_none());
    let d = p.poll(NOW + 100).unwrap();
    assert_eq!(d.kind, CallKind::Discovery);
    // A lost answer does not block forever: after the timeout a new attempt starts.
    assert!(p.poll(NOW + 101).is_none());
    let again = p.poll(NOW + 200).unwrap();
    assert_eq!(again.kind, CallKind::Discovery);
    p.on_fetch(CallKind::Discovery, 200, &discovery(), NOW + 200)
        .unwrap();
    // Keys are re-read right after discovery; the old ones stay usable meanwhile.
    let j = p.poll(NOW + 200).unwrap();
    assert_eq!(j.kind, CallKind::Jwks);
    assert!(p.ready());
    // A failed JWKS answer keeps the old keys and retries with backoff.
    assert!(p.on_fetch(CallKind::Jwks, 500, b"", NOW + 200).is_err());
    assert!(p.ready());
    assert!(p.poll(NOW + 200).is_none());
    assert_eq!(p.poll(NOW + 201).map(|c| c.kind), Some(CallKind::Jwks));
}

/// Cost of an authenticated request natively (AES-GCM open + claims + headers), of a cached
/// bearer token and of a full RS256 bearer verification. Prints figures; run with
/// `cargo test --release -p portcullis-core --lib bench_ -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: prints figures"]
fn bench_authenticated_request() {
    let mut p = ready(config(|_| {}));
    let (jar, _) = login(&mut p, "/", |_| {});
    let n = 1000u32;
    let fresh: Vec<String> = (0..n)
        .map(|i| {
            let c = json!({"iss": ISS, "aud": "api", "exp": NOW + 600, "i": i});
            format!(
                "Bearer {}",
                sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &c)
            )
        })
        .collect();
    let cached = fresh[0].clone();
    type MakeInput<'a> = Box<dyn Fn(u32) -> (Jar, Vec<(&'static str, String)>) + 'a>;
    let cases: [(&str, &str, MakeInput); 3] = [
        ("session cookie", "/", Box::new(|_| (jar.clone(), vec![]))),
        (
            "bearer (cached)",
            "/api/x",
            Box::new(|_| (Jar::default(), vec![("authorization", cached.clone())])),
        ),
        (
            "bearer (RS256 verify)",
            "/api/x",
            Box::new(|i| {
                (
                    Jar::default(),
                    vec![("authorization", fresh[i as usize].clone())],
                )
            }),
        ),
    ];
    for (label, path, make) in cases {
        let inputs: Vec<_> = (0..n).map(&make).collect();
        let start = std::time::Instant::now();
        for (j, extra) in &inputs {
            let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = send(&mut p, path, j, &extra, NOW);
            assert_eq!(r.action, Action::Continue);
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        println!("{label:<22} {us:>8.1} µs/request (incl. test host setup)");
    }
}

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "Hx4dHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

fn set_cookies(r: &Sent) -> Vec<String> {
    r.resp_headers()
        .into_iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v)
        .collect()
}

fn bearer(p: &mut Provider, token: &str) -> Sent {
    send(
        p,
        "/api/x",
        &Jar::default(),
        &[("authorization", &format!("Bearer {token}"))],
        NOW,
    )
}

#[test]
fn host_prefix_on_secure_host_only_root_cookies() {
    let mut p = ready(config(|_| {}));
    assert!(p.settings.session_cookie.starts_with("__Host-portcullis-"));
    assert_eq!(
        p.settings.flow_cookie,
        format!("{}-flow", p.settings.session_cookie)
    );
    let first = send(&mut p, "/", &Jar::default(), &[], NOW);
    let flow = set_cookies(&first);
    assert!(flow[0].starts_with(&format!("{}=", p.settings.flow_cookie)));
    let (jar, done) = login(&mut p, "/", |_| {});
    for c in set_cookies(&done) {
        assert!(c.starts_with("__Host-"), "{c}");
        // What browsers demand of __Host- cookies.
        assert!(c.contains("; Secure") && c.contains("; Path=/;") && !c.contains("Domain="));
    }
    assert!(jar.0.keys().all(|k| k.starts_with("__Host-")));
    assert_eq!(send(&mut p, "/", &jar, &[], NOW).action, Action::Continue);
    // Any of the three conditions missing: the plain name.
    for edit in [
        Box::new(|v: &mut Value| v["cookie"]["domain"] = "example.com".into())
            as Box<dyn Fn(&mut Value)>,
        Box::new(|v: &mut Value| v["cookie"]["secure"] = false.into()),
        Box::new(|v: &mut Value| v["cookie"]["path"] = "/app".into()),
    ] {
        let s = config(|v| edit(v));
        assert!(
            s.session_cookie.starts_with("portcullis-"),
            "{}",
            s.session_cookie
        );
    }
    // A name that already carries a prefix is used as is, and must meet its rules.
    let s = config(|v| v["cookie"]["name"] = "__Host-mine".into());
    assert!(s.session_cookie.starts_with("__Host-mine-"));
    let mut v = json!({"issuer": ISS, "provider_cluster": "idp", "client_id": "c",
        "redirect_uri": "https://app.example.com/cb",
        "cookie": {"secret": KEY_A, "name": "__Host-mine", "domain": "example.com"}});
    let err = Settings::from_json(v.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.field, "cookie.name");
    v["cookie"] = json!({"secret": KEY_A, "name": "__Secure-mine", "secure": false});
    let err = Settings::from_json(v.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.field, "cookie.name");
}

#[test]
fn login_id_token_is_refused_as_bearer() {
    // Default bearer audiences are the client id, which an ID token also names.
    let mut p = ready(config(|v| v["bearer"] = json!({"accept": true})));
    let id = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &rsa1(),
        &json!({"iss": ISS, "aud": "client", "sub": "alice", "exp": NOW + 60, "nonce": "n", "at_hash": "x"}),
    );
    let r = bearer(&mut p, &id);
    assert_eq!(r.status(), 401);
    assert_eq!(r.host.counter(&metrics::rejected("not_access_token")), 1);
    // The same claims without the ID-token-only ones is an access token.
    let at = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &rsa1(),
        &json!({"iss": ISS, "aud": "client", "sub": "alice", "exp": NOW + 60}),
    );
    assert_eq!(bearer(&mut p, &at).action, Action::Continue);
}

#[test]
fn bearer_typ_and_azp_rules() {
    let typed = |typ: Option<&str>, c: &Value| {
        crate::oidc::jwt::tests::sign_typ(Algorithm::RS256, Some("rsa1"), typ, &rsa1(), c)
    };
    let claims = json!({"iss": ISS, "aud": "api", "exp": NOW + 60});
    let mut p = ready(config(|_| {}));
    let r = bearer(&mut p, &typed(Some("logout+jwt"), &claims));
    assert_eq!(
        (r.status(), r.host.counter(&metrics::rejected("bad_type"))),
        (401, 1)
    );
    assert_eq!(
        bearer(&mut p, &typed(Some("at+jwt"), &claims)).action,
        Action::Continue
    );
    // Strict RFC 9068 on request.
    let mut strict = ready(config(|v| v["bearer"]["require_at_jwt"] = true.into()));
    assert_eq!(
        bearer(&mut strict, &typed(Some("JWT"), &claims)).status(),
        401
    );
    assert_eq!(
        bearer(&mut strict, &typed(Some("application/at+jwt"), &claims)).action,
        Action::Continue
    );
    // Several audiences: azp required, and must be the client, an audience or listed.
    let multi = |azp: Option<&str>| {
        let mut c = json!({"iss": ISS, "aud": ["api", "other"], "exp": NOW + 60});
        if let Some(a) = azp {
            c["azp"] = a.into();
        }
        typed(Some("at+jwt"), &c)
    };
    let r = bearer(&mut p, &multi(None));
    assert_eq!(
        (r.status(), r.host.counter(&metrics::rejected("bad_azp"))),
        (401, 1)
    );
    assert_eq!(bearer(&mut p, &multi(Some("svc"))).status(), 401);
    assert_eq!(
        bearer(&mut p, &multi(Some("client"))).action,
        Action::Continue
    );
    assert_eq!(bearer(&mut p, &multi(Some("api"))).action, Action::Continue);
    let mut listed = ready(config(|v| {
        v["bearer"]["authorized_parties"] = json!(["svc"])
    }));
    assert_eq!(
        bearer(&mut listed, &multi(Some("svc"))).action,
        Action::Continue
    );
}

fn refresh_with(p: &mut Provider, jar: &Jar, id_claims: Value, at: u64) -> Sent {
    let mut r = send(p, "/dash", jar, &[], at);
    assert!(matches!(r.action, Action::Call(_)), "{:?}", r.action);
    let id = sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &id_claims);
    let body =
        json!({"access_token": "AT-2", "refresh_token": "RT-2", "expires_in": 300, "id_token": id})
            .to_string();
    r.action = r
        .flow
        .on_callout_response(&mut r.host, p, 200, body.as_bytes());
    r
}

#[test]
fn refresh_with_another_subject_or_issuer_ends_the_session() {
    let later = NOW + 400;
    let base =
        json!({"iss": ISS, "aud": "client", "sub": "alice", "exp": later + 3600, "iat": later});
    let mut p = ready(config(|_| {}));
    let (jar, _) = login(&mut p, "/", |_| {});
    let ok = refresh_with(&mut p, &jar, base.clone(), later);
    assert_eq!(ok.action, Action::Continue);
    let mut other = base.clone();
    other["sub"] = "mallory".into();
    let r = refresh_with(&mut p, &jar, other, later);
    assert_eq!(r.action, Action::Responded);
    assert_eq!(r.status(), 302);
    assert!(r.header("location").unwrap().starts_with(AUTH));
    assert_eq!(r.host.counter(&metrics::rejected("session_mismatch")), 1);
    let mut after = jar.clone();
    after.apply(&r.resp_headers());
    assert!(
        !after
            .0
            .keys()
            .any(|k| k.starts_with(&p.settings.session_cookie) && !k.ends_with("-flow")),
        "session deleted: {:?}",
        after.0.keys()
    );
    // The issuer is compared too (a trailing-slash variant still verifies, but differs).
    let mut iss = base;
    iss["iss"] = format!("{ISS}/").into();
    let r = refresh_with(&mut p, &jar, iss, later);
    assert_eq!(r.host.counter(&metrics::rejected("session_mismatch")), 1);
}

#[test]
fn require_splits_only_scope_claims_on_spaces() {
    let mut p = ready(config(|v| v["require"] = json!({"name": ["admins"]})));
    let (jar, _) = login(&mut p, "/", |c| c["name"] = "Bob admins".into());
    assert_eq!(send(&mut p, "/", &jar, &[], NOW).status(), 403);
    let (jar, _) = login(&mut p, "/", |c| c["name"] = "admins".into());
    assert_eq!(send(&mut p, "/", &jar, &[], NOW).action, Action::Continue);
    for claim in ["scope", "scp"] {
        let mut p = ready(config(|v| v["require"] = json!({claim: ["write"]})));
        let (jar, _) = login(&mut p, "/", |c| c[claim] = "read write".into());
        assert_eq!(
            send(&mut p, "/", &jar, &[], NOW).action,
            Action::Continue,
            "{claim}"
        );
    }
}

#[test]
fn logout_needs_post_or_same_origin() {
    let mut p = ready(config(|_| {}));
    let (jar, _) = login(&mut p, "/", |_| {});
    let refused: &[&[(&str, &str)]] = &[
        &[],
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[("sec-fetch-site", "none")],
        &[("origin", "https://evil.example")],
        &[("origin", "null")],
        // A foreign Origin wins over a same-origin claim.
        &[
            ("sec-fetch-site", "same-origin"),
            ("origin", "https://evil.example"),
        ],
        &[(":method", "POST"), ("origin", "https://evil.example")],
        &[(":method", "POST"), ("sec-fetch-site", "cross-site")],
        &[(":method", "PUT"), ("sec-fetch-site", "same-origin")],
    ];
    for extra in refused {
        let r = send(&mut p, "/logout", &jar, extra, NOW);
        assert_eq!(r.status(), 403, "{extra:?}");
        assert!(set_cookies(&r).is_empty(), "session kept: {extra:?}");
        let body =
            String::from_utf8_lossy(&r.host.local_response.as_ref().unwrap().body).into_owned();
        assert!(
            body.contains("<form method=\"post\" action=\"/logout\">"),
            "{body}"
        );
    }
    assert_eq!(
        send(&mut p, "/", &jar, &[], NOW).action,
        Action::Continue,
        "still logged in"
    );
    let api = send(
        &mut p,
        "/logout",
        &jar,
        &[("accept", "application/json")],
        NOW,
    );
    assert_eq!(api.status(), 403);
    assert_eq!(
        api.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(api.host.counter(&metrics::rejected("cross_site_logout")), 1);
    let allowed: &[&[(&str, &str)]] = &[
        &[(":method", "POST")],
        &[(":method", "POST"), ("origin", "https://app.example.com")],
        &[(":method", "POST"), ("sec-fetch-site", "same-origin")],
        &[("sec-fetch-site", "same-origin")],
        &[("origin", "https://app.example.com")],
        &[("origin", "https://APP.example.com:443")],
        // TLS ended before Envoy: the redirect_uri origin counts as ours.
        &[(":scheme", "http"), ("origin", "https://app.example.com")],
        &[(":scheme", "http"), ("origin", "http://app.example.com")],
    ];
    for extra in allowed {
        let r = send(&mut p, "/logout", &jar, extra, NOW);
        assert_eq!(r.status(), 302, "{extra:?}");
        let mut after = jar.clone();
        after.apply(&r.resp_headers());
        assert!(after.0.is_empty(), "{extra:?}");
    }
}

#[test]
fn refreshed_cookies_are_never_cached() {
    let later = NOW + 400;
    let mut p = ready(config(|_| {}));
    let (jar, _) = login(&mut p, "/", |_| {});
    let mut r = refresh_with(
        &mut p,
        &jar,
        json!({"iss": ISS, "aud": "client", "sub": "alice", "exp": later + 3600}),
        later,
    );
    assert_eq!(r.action, Action::Continue);
    r.host
        .add_header(Direction::Response, "cache-control", "public, max-age=600");
    r.flow.on_response_headers(&mut r.host);
    assert_eq!(
        r.host.values(Direction::Response, "cache-control"),
        ["no-store"]
    );
    assert!(!r.host.values(Direction::Response, "set-cookie").is_empty());
    // Without new cookies the upstream's caching is left alone.
    let mut ok = send(&mut p, "/", &jar, &[], NOW);
    ok.host
        .add_header(Direction::Response, "cache-control", "public, max-age=600");
    ok.flow.on_response_headers(&mut ok.host);
    assert_eq!(
        ok.host.values(Direction::Response, "cache-control"),
        ["public, max-age=600"]
    );
}

#[test]
fn secret_rotation_keeps_sessions() {
    let mut old = ready(config(|_| {}));
    let (jar, _) = login(&mut old, "/", |_| {});
    // New key first, old key still listed: the old session opens.
    let mut rotating = ready(config(|v| v["cookie"]["secret"] = json!([KEY_B, KEY_A])));
    assert_eq!(
        rotating.settings.session_cookie,
        old.settings.session_cookie
    );
    assert_eq!(
        send(&mut rotating, "/", &jar, &[], NOW).action,
        Action::Continue
    );
    // New sessions are sealed with the new key: they open once the old key is gone.
    let (new_jar, _) = login(&mut rotating, "/", |_| {});
    let mut rotated = ready(config(|v| v["cookie"]["secret"] = json!([KEY_B])));
    assert_eq!(
        send(&mut rotated, "/", &new_jar, &[], NOW).action,
        Action::Continue
    );
    let r = send(&mut rotated, "/", &jar, &[], NOW);
    assert_eq!(r.status(), 302, "old-key session ends with the old key");
    assert_eq!(r.host.counter(&metrics::rejected("bad_session")), 1);
}

#[test]
fn max_age_ends_sessions_that_refresh_forever() {
    let day = 24 * 3600;
    let mut p = ready(config(|_| {}));
    let (jar, _) = login(&mut p, "/", |_| {});
    // Refresh near the end of the day: the new session keeps the login time.
    let at = NOW + day - 100;
    let mut r = refresh_with(
        &mut p,
        &jar,
        json!({"iss": ISS, "aud": "client", "sub": "alice", "exp": at + 3600}),
        at,
    );
    assert_eq!(r.action, Action::Continue);
    r.flow.on_response_headers(&mut r.host);
    let mut jar2 = jar.clone();
    jar2.apply(&r.host.response);
    assert_eq!(
        send(&mut p, "/", &jar2, &[], at + 10).action,
        Action::Continue
    );
    // Its access token is still fresh, but the day since login is over.
    let late = send(&mut p, "/", &jar2, &[], NOW + day);
    assert_eq!(late.status(), 302);
    assert!(late.header("location").unwrap().starts_with(AUTH));
    assert_eq!(late.host.counter(&metrics::rejected("session_expired")), 1);
    // Configurable, as a duration or seconds.
    let mut short = ready(config(|v| v["cookie"]["max_age"] = "1h".into()));
    let (jar, _) = login(&mut short, "/", |_| {});
    assert_eq!(
        send(&mut short, "/", &jar, &[], NOW + 200).action,
        Action::Continue
    );
    assert_eq!(
        send(&mut short, "/api/x", &jar, &[], NOW + 3600).status(),
        401
    );
    assert_eq!(
        config(|v| v["cookie"]["max_age"] = 90.into())
            .config
            .cookie
            .max_age
            .secs(),
        90
    );
}

#[test]
fn pass_through_matches_whole_segments_and_fails_closed() {
    let mut p =
        ready(config(
            |v| {
                v["pass_through"] =
                    json!([{"path_prefix": "/healthz"}, {"path_prefix": "/public/"}])
            },
        ));
    for path in [
        "/healthz",
        "/healthz/",
        "/healthz/live",
        "/healthz?probe=1",
        "/healthz/?a=..;",
        "/public",
        "/public/a.css",
    ] {
        let r = send(&mut p, path, &Jar::default(), &[], NOW);
        assert_eq!(r.action, Action::Continue, "{path} passes through");
    }
    for path in [
        "/healthzadmin",
        "/healthz..;/admin",
        "/healthz%2F..%2Fadmin",
        "/healthz/..%2Fadmin",
        "/healthz/%2e%2e/admin",
        "/healthz/%2E%2E/admin",
        "/healthz/..",
        "/healthz/../admin",
        "/healthz;jsessionid=x",
        "/healthz/%5C..%5Cadmin",
        "/healthz/\\..\\admin",
        "/healthz/%252e%252e/admin",
        "/publicity",
        "/",
    ] {
        let r = send(&mut p, path, &Jar::default(), &[], NOW);
        assert_eq!(r.status(), 302, "{path} needs a login");
    }
    // api_paths: whole segments, query ignored.
    for (path, status) in [
        ("/api", 401),
        ("/api/x?y=1", 401),
        ("/api?x", 401),
        ("/apix", 302),
    ] {
        let r = send(&mut p, path, &Jar::default(), &[], NOW);
        assert_eq!(r.status(), status, "{path}");
    }
    // Prefixes that could never match safely are refused at config time.
    for bad in ["/a/../b", "/a;b", "/a?b", "/a%2Fb"] {
        let mut v = json!({"issuer": ISS, "provider_cluster": "idp", "client_id": "c",
            "redirect_uri": "https://app.example.com/cb", "cookie": {"secret": KEY_A},
            "pass_through": [{"path_prefix": bad}]});
        let err = Settings::from_json(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.field, "pass_through[0].path_prefix", "{bad}");
        v["api_paths"] = v["pass_through"].take();
        v.as_object_mut().unwrap().remove("pass_through");
        let err = Settings::from_json(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.field, "api_paths[0].path_prefix", "{bad}");
    }
}

#[test]
fn claim_header_spellings_are_all_stripped() {
    let mut p = ready(config(|_| {}));
    let forged: &[(&str, &str)] = &[
        ("x_user_email", "root@evil.example"),
        ("X-User-Email", "root@evil.example"),
        ("x-user_email", "root@evil.example"),
        ("X_ID_TOKEN", "forged"),
    ];
    let r = send(&mut p, "/healthz", &Jar::default(), forged, NOW);
    assert_eq!(r.action, Action::Continue);
    for (name, _) in forged {
        assert_eq!(r.req(name), None, "{name}");
    }
    let (jar, _) = login(&mut p, "/", |_| {});
    let ok = send(&mut p, "/", &jar, forged, NOW);
    assert_eq!(ok.action, Action::Continue);
    let emails: Vec<_> = ok
        .host
        .request
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().replace('_', "-") == "x-user-email")
        .collect();
    assert_eq!(
        emails,
        [&("x-user-email".to_string(), "alice@example.com".to_string())]
    );
}

/// issue 16: a valid session cookie is opened (AES-GCM, JSON) once per worker; later requests
/// with the byte-identical cookie use the cached session until it expires, never past it. A
/// tampered cookie is a miss by construction and fails the full open.
#[test]
fn opened_sessions_are_cached_for_the_exact_cookie_until_expiry() {
    let mut p = ready(config(|_| {}));
    let (jar, _) = login(&mut p, "/", |_| {});
    let first = send(&mut p, "/a", &jar, &[], NOW + 1);
    assert_eq!(first.action, Action::Continue);
    assert_eq!(p.sessions.len(), 1, "opened once and kept");
    let again = send(&mut p, "/b", &jar, &[], NOW + 2);
    assert_eq!(again.action, Action::Continue);
    assert_eq!(again.req("authorization"), first.req("authorization"));
    assert_eq!(p.sessions.len(), 1);

    // One character changed in the sealed value: not the cached entry, and it does not open.
    let mut tampered = jar.clone();
    let (name, value) = tampered
        .0
        .iter()
        .find(|(n, _)| n.contains("portcullis") && !n.contains("flow"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .expect("session cookie");
    let mut bytes = value.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    tampered
        .0
        .insert(name, String::from_utf8(bytes).expect("ascii"));
    let r = send(&mut p, "/c", &tampered, &[], NOW + 3);
    assert_ne!(r.action, Action::Continue);
    assert_eq!(
        r.host.counter("portcullis_oidc_rejected_bad_session_total"),
        1
    );
    assert_eq!(
        p.sessions.len(),
        1,
        "a cookie that does not open is never cached"
    );

    // Past the session's expiry the cached entry is dropped, not used: the session refreshes.
    let r = send(&mut p, "/d", &jar, &[], NOW + 400);
    assert!(
        matches!(&r.action, Action::Call(c) if c.kind == CallKind::Refresh),
        "{:?}",
        r.action
    );
    assert!(p.sessions.is_empty());
}
