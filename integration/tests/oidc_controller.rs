//! OIDC login under the controller (`portcullis run --builtin-wasm-dir dist/wasm`): an Envoy
//! Gateway `SecurityPolicy` with `oidc` against a real oidc-provider (devInteractions login
//! form submitted by the test), translated to the built-in oidc filter in the managed Envoy,
//! in front of an echo upstream. The whole browser flow: redirect with PKCE, login, back on
//! the original URL with the tokens forwarded, session kept, API requests 401, logout.
//! Runs on both built-in runtimes (`--builtin-runtime wasm` and `dynamic`).

use base64::Engine;
use portcullis_integration::controller::{
    conditions_of, gateway_with_echo_backend, resource, Controller, KeepAlive, CONVERGE,
};
use portcullis_integration::echo::EchoServer;
use portcullis_integration::oidc_env::Agent;
use portcullis_integration::oidc_provider::{
    OidcProvider, ProviderOptions, ProviderTls, TestClient,
};
use portcullis_integration::on_both_runtimes;
use portcullis_integration::process::wait_until;
use portcullis_integration::runtime::Runtime;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-e2e");
const NODE: &str = "default/gw";

/// The Gateway's listener port; Envoy binds it on port 0 (`Controller::gateway_port`).
const GW_PORT: u16 = 8080;

/// The Gateway, the echo Backend and the two routes (`private`, `open`).
fn routes(echo_port: u16) -> String {
    let base = gateway_with_echo_backend(GW_PORT, echo_port);
    format!(
        r#"{base}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: private, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: echo}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: open, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /open}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: echo}}]
"#
    )
}

/// The login on route `private`, its callback on `redirect_port` (the port Envoy bound: written
/// once the listener is up, as a user edits a running Gateway).
fn login_policy(redirect_port: u16, issuer: &str, secret: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: app-oidc, namespace: default}}
type: Opaque
stringData: {{client-secret: {secret}}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: login, namespace: default}}
spec:
  targetRefs:
  - {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: private}}
  oidc:
    provider: {{issuer: "{issuer}"}}
    clientID: app
    clientSecret: {{name: app-oidc}}
    redirectURL: "http://127.0.0.1:{redirect_port}/oauth2/callback"
    logoutPath: /logout
    scopes: [email, groups]
    forwardAccessToken: true
    forwardIDToken: {{header: X-ID-Token}}
"#
    )
}

/// The claims of a JWT (unverified: the gateway verified it; the test reads what it forwards).
fn jwt_claims(jwt: &str) -> serde_json::Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {jwt}");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .expect("JWT payload is base64url");
    serde_json::from_slice(&payload).expect("JWT payload is JSON")
}

fn query_param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

on_both_runtimes!(security_policy_oidc_login_flow_under_the_controller);

fn security_policy_oidc_login_flow_under_the_controller(runtime: Runtime) {
    let dir = portcullis_integration::wasm::dist_dir()
        .display()
        .to_string();
    portcullis_integration::wasm::module("oidc").expect("built-in oidc module built");
    let mut args = vec![
        "--builtin-wasm-dir".to_string(),
        dir,
        "--builtin-runtime".to_string(),
        runtime.name().to_string(),
    ];
    if runtime == Runtime::Dynamic {
        let lib = portcullis_integration::wasm::dynamic_library().expect("libportcullis.so built");
        args.push("--dynamic-module-dir".to_string());
        args.push(lib.parent().expect("library dir").display().to_string());
    }
    let client = TestClient::loopback("app");
    let secret = client.client_secret.clone();
    let provider = OidcProvider::start(ProviderOptions {
        clients: vec![client],
        ..ProviderOptions::default()
    })
    .expect("oidc-provider");
    let issuer = provider.issuer();
    let echo = EchoServer::start().expect("echo");

    let mut c = Controller::builder(BIN)
        .manifest("routes.yaml", routes(echo.port()))
        .args(args)
        .start()
        .expect("controller starts");
    let gw_port = c.gateway_port(NODE, GW_PORT).expect("listener bound");
    let gw = |path: &str| format!("http://127.0.0.1:{gw_port}{path}");
    c.write_manifest("login.yaml", &login_policy(gw_port, &issuer, &secret))
        .expect("write the login policy");
    c.wait_status("SecurityPolicy login accepted", |d| {
        let conds = resource(d, "SecurityPolicy", Some("default"), "login")
            .map(|r| conditions_of(&r["status"], "Accepted"))
            .unwrap_or_default();
        if !conds.is_empty() && conds.iter().all(|(s, _, _)| s == "True") {
            Ok(())
        } else {
            Err(format!("{conds:?}"))
        }
    })
    .expect("policy accepted");
    c.wait_synced(NODE).expect("synced");
    // The listener is warm once the unprotected route serves; the protected one answers 503
    // until the filter has fetched the provider's discovery document and keys.
    c.process()
        .wait_until(
            "protected route leaves 503 (discovery done)",
            CONVERGE,
            || {
                let probe = |path: &str, headers: &[(&str, &str)]| {
                    KeepAlive::connect(gw_port)
                        .and_then(|mut k| k.get(&format!("127.0.0.1:{gw_port}"), path, headers))
                        .map_err(|e| format!("{path}: {e}"))
                };
                let r = probe("/open/probe", &[])?;
                if r.status != 200 {
                    return Err(format!("open route: HTTP {} {}", r.status, r.body));
                }
                let r = probe("/probe", &[("accept", "text/html")])?;
                if r.status == 302 {
                    Ok(())
                } else {
                    Err(format!("protected route: HTTP {} {}", r.status, r.body))
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nprovider logs:\n{}", provider.logs()));

    // API-style request without a session: 401, never a redirect.
    let mut anon = Agent::new();
    let r = anon.send(
        "GET",
        &gw("/dashboard"),
        &[("accept", "application/json")],
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("location").is_none());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        r.headers
    );
    // The unprotected route still needs no login.
    let r = anon.send("GET", &gw("/open/page"), &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().path, "/open/page");

    // Browser request: 302 to the provider's authorization endpoint, PKCE S256 and state.
    let mut agent = Agent::new();
    let r = agent.get(&gw("/dashboard?tab=1"));
    assert_eq!(r.status, 302, "{}", r.body);
    let loc = r.location().expect("location");
    assert!(loc.starts_with(&format!("{issuer}/auth?")), "{loc}");
    assert_eq!(query_param(&loc, "client_id").as_deref(), Some("app"));
    assert_eq!(
        query_param(&loc, "redirect_uri"),
        Some(gw("/oauth2/callback"))
    );
    assert_eq!(query_param(&loc, "response_type").as_deref(), Some("code"));
    assert_eq!(
        query_param(&loc, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(query_param(&loc, "code_challenge").is_some_and(|v| v.len() >= 43));
    assert!(query_param(&loc, "state").is_some_and(|v| !v.is_empty()));
    let scope = query_param(&loc, "scope").unwrap_or_default();
    for s in ["openid", "email", "groups"] {
        assert!(
            scope.split(' ').any(|x| x == s),
            "scope {scope:?} lacks {s}"
        );
    }

    // Log in at the provider and land back on the original URL, at the upstream.
    let done = agent.follow(r, "alice", false);
    assert_eq!(
        done.status,
        200,
        "{} {}\nprovider logs:\n{}",
        done.url,
        done.body,
        provider.logs()
    );
    assert_eq!(done.url, gw("/dashboard?tab=1"));
    assert!(
        agent.find("/oauth2/callback?").is_some(),
        "came back through the callback"
    );
    let echo_seen = done.echo();
    assert_eq!(echo_seen.path, "/dashboard?tab=1");
    // forwardAccessToken: the access token as a bearer token.
    let authz = echo_seen.header("authorization").expect("authorization");
    assert!(
        authz.starts_with("Bearer ") && authz.len() > "Bearer ".len(),
        "{authz}"
    );
    // forwardIDToken: the ID token of alice, from this issuer, for this client.
    let id_token = echo_seen.header("x-id-token").expect("x-id-token");
    let claims = jwt_claims(id_token);
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["aud"], "app");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    // The gateway's own cookies never reach the upstream.
    let cookie_upstream = echo_seen.header("cookie").unwrap_or("");
    assert!(
        !cookie_upstream.contains("portcullis"),
        "session cookies stripped: {cookie_upstream}"
    );
    let session: Vec<String> = agent
        .jar
        .keys()
        // Secure, no domain, path /: the `__Host-` prefix.
        .filter(|k| k.starts_with("__Host-portcullis"))
        .cloned()
        .collect();
    assert!(!session.is_empty(), "session cookie set: {:?}", agent.jar);

    // Second request: still logged in, no redirect, same identity.
    let r = agent.get(&gw("/other"));
    assert_eq!(r.status, 200, "{}", r.body);
    let again = r.echo();
    assert_eq!(again.path, "/other");
    assert_eq!(
        jwt_claims(again.header("x-id-token").expect("x-id-token"))["sub"],
        "alice"
    );
    assert!(again.header("authorization").is_some());
    // With the session, an API-style request is let through too.
    let r = agent.send("GET", &gw("/api"), &[("accept", "application/json")], None);
    assert_eq!(r.status, 200, "{}", r.body);

    // Logout: the session cookies go, and the browser is sent to the provider's end_session.
    let r = agent.send("POST", &gw("/logout"), &[("accept", "text/html")], None);
    assert_eq!(r.status, 302, "{}", r.body);
    let loc = r.location().expect("location");
    assert!(
        loc.starts_with(&format!("{issuer}/session/end?")) && loc.contains("id_token_hint="),
        "{loc}"
    );
    let left: Vec<&String> = agent.jar.keys().filter(|k| session.contains(k)).collect();
    assert!(left.is_empty(), "session cookies cleared: {left:?}");
    // The gateway no longer knows us: back to the provider.
    let r = agent.get(&gw("/dashboard"));
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(r
        .location()
        .is_some_and(|l| l.starts_with(&format!("{issuer}/auth?"))));

    assert!(
        !c.logs().contains(&secret),
        "the client secret is never logged"
    );
}

/// A private CA and a leaf for 127.0.0.1 signed by it: `(ca_pem, chain_file, key_file)`.
fn private_ca(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis test IdP CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "idp.test".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let chain = dir.join("idp-chain.pem");
    let key = dir.join("idp-key.pem");
    std::fs::write(&chain, format!("{}{}", leaf.pem(), ca.pem())).expect("write chain");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("write key");
    (ca.pem(), chain, key)
}

/// Security finding High #2: the issuer cluster verifies the provider's certificate. An https
/// provider whose CA the gateway does not trust fails closed (503, and a log line naming the
/// certificate failure); trusted through `--issuer-ca-bundle`, the same login works.
#[test]
fn an_https_issuer_is_verified_against_the_trusted_cas() {
    let dir = portcullis_integration::wasm::dist_dir()
        .display()
        .to_string();
    portcullis_integration::wasm::module("oidc").expect("built-in oidc module built");
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca_pem, chain, key) = private_ca(certs.path());
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("write CA");

    let client = TestClient::loopback("app");
    let secret = client.client_secret.clone();
    let provider = OidcProvider::start(ProviderOptions {
        clients: vec![client],
        tls: Some(ProviderTls {
            cert_chain: chain,
            key,
        }),
        ..ProviderOptions::default()
    })
    .expect("oidc-provider over https");
    let issuer = provider.issuer();
    assert!(issuer.starts_with("https://"), "{issuer}");
    let echo = EchoServer::start().expect("echo");
    let gw = |gw_port: u16, path: &str| format!("http://127.0.0.1:{gw_port}{path}");
    let probe = |gw_port: u16, path: &str| {
        KeepAlive::connect(gw_port)
            .and_then(|mut k| {
                k.get(
                    &format!("127.0.0.1:{gw_port}"),
                    path,
                    &[("accept", "text/html")],
                )
            })
            .map_err(|e| format!("{path}: {e}"))
    };
    let plain = |gw_port: u16| login_policy(gw_port, &issuer, &secret);
    // A controller with the routes; once its Envoy has bound the listener, the login policy
    // (`policy` of the bound port) is added. Returns the controller and that port.
    let start = |policy: &dyn Fn(u16) -> String, extra: &[&str]| {
        let mut args = vec!["--builtin-wasm-dir".to_string(), dir.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut c = Controller::builder(BIN)
            .manifest("routes.yaml", routes(echo.port()))
            .args(args)
            .start()
            .expect("controller starts");
        let gw_port = c.gateway_port(NODE, GW_PORT).expect("listener bound");
        c.write_manifest("login.yaml", &policy(gw_port))
            .expect("write the login policy");
        c.wait_status("the login policy is translated", |d| {
            resource(d, "SecurityPolicy", Some("default"), "login")
                .map(|_| ())
                .ok_or_else(|| "no SecurityPolicy status yet".to_string())
        })
        .expect("policy seen");
        c.wait_synced(NODE).expect("synced");
        c.process()
            .wait_until("open route serves", CONVERGE, || {
                let r = probe(gw_port, "/open/probe")?;
                (r.status == 200)
                    .then_some(())
                    .ok_or_else(|| format!("open route: HTTP {}", r.status))
            })
            .expect("listener up");
        (c, gw_port)
    };

    // Discovery over verified TLS done: the protected route sends browsers to the login.
    let redirects_to_login = |c: &mut Controller, gw_port: u16| {
        c.process()
            .wait_until("protected route redirects", CONVERGE, || {
                let r = probe(gw_port, "/probe")?;
                (r.status == 302)
                    .then_some(())
                    .ok_or_else(|| format!("protected route: HTTP {} {}", r.status, r.body))
            })
            .unwrap_or_else(|e| panic!("{e}\nprovider logs:\n{}", provider.logs()));
    };

    // Default trust (the platform bundle): the provider's certificate is not trusted.
    let (c, gw_port) = start(&plain, &[]);
    wait_until(
        "a log line naming the certificate failure",
        CONVERGE,
        || {
            let logs = c.logs();
            if logs.contains("certificate chains to a CA") && logs.contains(&issuer) {
                Ok(())
            } else {
                Err("not yet")
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nprovider logs:\n{}", provider.logs()));
    let r = probe(gw_port, "/dashboard").expect("protected route answers");
    assert_eq!(r.status, 503, "fails closed: {}", r.body);
    assert!(r.body.contains("not reachable"), "{}", r.body);
    let line = c
        .logs()
        .lines()
        .find(|l| l.contains("certificate chains to a CA"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        line.contains("oidc:") && line.contains("Discovery"),
        "{line}"
    );
    drop(c);

    // The operator trusts the provider's CA: login works over verified TLS.
    let ca_arg = ca_file.display().to_string();
    let (mut c, gw_port) = start(&plain, &["--issuer-ca-bundle", &ca_arg]);
    redirects_to_login(&mut c, gw_port);
    let mut agent = Agent::trusting(ca_pem.as_bytes());
    let r = agent.get(&gw(gw_port, "/dashboard"));
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(r
        .location()
        .is_some_and(|l| l.starts_with(&format!("{issuer}/auth?"))));
    let done = agent.follow(r, "alice", false);
    assert_eq!(
        done.status,
        200,
        "{} {}\nprovider logs:\n{}",
        done.url,
        done.body,
        provider.logs()
    );
    assert_eq!(done.url, gw(gw_port, "/dashboard"));
    assert_eq!(done.echo().path, "/dashboard");
    drop(c);

    // The tenant's own CA option instead: the provider reached through a Backend, verified by a
    // BackendTLSPolicy (CA from a ConfigMap, SNI/SAN idp.test); no operator flag.
    let provider_line = format!("    provider: {{issuer: \"{issuer}\"}}\n");
    assert!(
        plain(GW_PORT).contains(&provider_line),
        "{}",
        plain(GW_PORT)
    );
    let ca_block: String = ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    let tenant_ca = |gw_port: u16| {
        format!(
        "{}---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: idp, namespace: default}}
spec:
  endpoints: [{{ip: {{address: 127.0.0.1, port: {port}}}}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: idp-ca, namespace: default}}
data:
  ca.crt: |
{ca_block}---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: idp, namespace: default}}
spec:
  targetRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: idp}}]
  validation:
    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: idp-ca}}]
    hostname: idp.test
",
        plain(gw_port).replace(
            &provider_line,
            &format!("    provider:\n      issuer: \"{issuer}\"\n      backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: idp}}]\n"),
        ),
        port = provider.port(),
    )
    };
    let (mut c, gw_port) = start(&tenant_ca, &[]);
    redirects_to_login(&mut c, gw_port);
    let mut agent = Agent::trusting(ca_pem.as_bytes());
    let r = agent.get(&gw(gw_port, "/tenant"));
    let done = agent.follow(r, "alice", false);
    assert_eq!(done.status, 200, "{} {}", done.url, done.body);
    assert_eq!(done.echo().path, "/tenant");
}
