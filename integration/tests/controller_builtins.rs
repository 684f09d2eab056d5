//! `portcullis run` with the built-in filter modules (`--builtin-wasm-dir dist/wasm`): Envoy
//! Gateway's BackendTrafficPolicy `rateLimit` and SecurityPolicy `oidc` translated to the
//! built-in ratelimit and oidc modules, served from the controller's wasm cache to real Envoy.
//! Each test runs twice: on `oidc.wasm` / `ratelimit.wasm` (`--builtin-runtime wasm`) and on
//! `libportcullis.so` (`--builtin-runtime dynamic`), which the controller serves the same way.

use portcullis_integration::controller::{
    conditions_of, gateway_with_echo_backend, resource, Controller, KeepAlive, CONVERGE,
};
use portcullis_integration::echo::EchoServer;
use portcullis_integration::on_both_runtimes;
use portcullis_integration::process::ClosedPort;
use portcullis_integration::runtime::Runtime;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-e2e");
const NODE: &str = "default/gw";
/// The Gateway's listener port; Envoy binds it on port 0 (`Controller::gateway_port`).
const GW_PORT: u16 = 8080;

fn route(name: &str, prefix: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: echo}}]
"#
    )
}

fn builtin_dir() -> String {
    for m in ["ratelimit", "oidc"] {
        portcullis_integration::wasm::module(m).expect("built-in module built");
    }
    portcullis_integration::wasm::dist_dir()
        .display()
        .to_string()
}

/// The controller flags that run the built-in filters on `runtime`.
fn runtime_args(runtime: Runtime) -> Vec<String> {
    let mut args = vec![
        "--builtin-wasm-dir".to_string(),
        builtin_dir(),
        "--builtin-runtime".to_string(),
        runtime.name().to_string(),
    ];
    if runtime == Runtime::Dynamic {
        let lib = portcullis_integration::wasm::dynamic_library().expect("libportcullis.so built");
        let dir = lib.parent().expect("library dir").display().to_string();
        args.extend(["--dynamic-module-dir".to_string(), dir]);
    }
    args
}

/// The file the built-in filters of `runtime` come from.
fn builtin_file(runtime: Runtime, filter: &str) -> String {
    match runtime {
        Runtime::Wasm => format!("{filter}.wasm"),
        Runtime::Dynamic => "libportcullis.so".into(),
    }
}

on_both_runtimes!(
    backend_traffic_policy_local_rate_limit_runs_the_builtin_module,
    security_policy_oidc_with_unreachable_issuer_answers_503,
);

fn get(port: u16, path: &str) -> portcullis_integration::controller::RawResponse {
    KeepAlive::connect(port)
        .and_then(|mut k| k.get("example.com", path, &[]))
        .expect("request")
}

/// Wait until `kind/name` is Accepted=True on its ancestor (the translator programmed it).
fn wait_accepted(c: &mut Controller, kind: &str, name: &str) {
    c.wait_status(&format!("{kind} {name} accepted"), |d| {
        let conds = resource(d, kind, Some("default"), name)
            .map(|r| conditions_of(&r["status"], "Accepted"))
            .unwrap_or_default();
        if !conds.is_empty() && conds.iter().all(|(s, _, _)| s == "True") {
            Ok(())
        } else {
            Err(format!("{conds:?}"))
        }
    })
    .expect("policy accepted");
}

/// Wait until `path` answers 200 through the managed Envoy (the listener is warm: every filter
/// of it, the wasm modules included, is loaded).
fn wait_serving(c: &mut Controller, port: u16, path: &str) {
    let path = path.to_string();
    c.process()
        .wait_until(&format!("{path} serves"), CONVERGE, || {
            let r = KeepAlive::connect(port)
                .and_then(|mut k| k.get("example.com", &path, &[]))
                .map_err(|e| e.to_string())?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("HTTP {} {}", r.status, r.body))
            }
        })
        .expect("serving");
}

fn backend_traffic_policy_local_rate_limit_runs_the_builtin_module(runtime: Runtime) {
    let echo = EchoServer::start().expect("echo");
    let policy = r#"apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: three-per-minute, namespace: default}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: limited}
  rateLimit:
    local:
      rules:
      - clientSelectors:
        - sourceCIDR: {type: Distinct, value: 0.0.0.0/0}
        limit: {requests: 3, unit: Minute}
"#;
    let mut c = Controller::builder(BIN)
        .manifest("base.yaml", gateway_with_echo_backend(GW_PORT, echo.port()))
        .manifest("limited.yaml", route("limited", "/limited"))
        .manifest("open.yaml", route("open", "/open"))
        .manifest("policy.yaml", policy)
        .args(runtime_args(runtime))
        .start()
        .expect("controller starts");
    wait_accepted(&mut c, "BackendTrafficPolicy", "three-per-minute");
    c.wait_synced(NODE).expect("synced");
    let gw_port = c.gateway_port(NODE, GW_PORT).expect("listener bound");
    // Probe the neighbour route only: probing the limited one would spend its budget.
    wait_serving(&mut c, gw_port, "/open");

    let statuses: Vec<u16> = (0..4)
        .map(|i| get(gw_port, &format!("/limited/{i}")).status)
        .collect();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 429],
        "3 per minute, then limited"
    );
    for i in 0..10 {
        assert_eq!(
            get(gw_port, &format!("/open/{i}")).status,
            200,
            "neighbour route is unlimited"
        );
    }
    assert_eq!(get(gw_port, "/limited/again").status, 429, "still limited");

    // The module is served from the controller's cache by sha256.
    let doc = c.status().expect("status");
    let modules = doc["wasm"].as_array().cloned().unwrap_or_default();
    assert!(
        modules
            .iter()
            .any(|m| m["source"]["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("file://")
                    && u.ends_with(&builtin_file(runtime, "ratelimit")))
                && m["state"] == "ready"),
        "{}",
        doc["wasm"]
    );
    // The session secret was created in the cache dir, private.
    let secret = c.cache_dir().join("session-secret");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&secret)
            .expect("session secret")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

fn security_policy_oidc_with_unreachable_issuer_answers_503(runtime: Runtime) {
    let echo = EchoServer::start().expect("echo");
    let dead = ClosedPort::new().expect("closed port");
    let dead_port = dead.port();
    let policy = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: client, namespace: default}}
type: Opaque
stringData: {{client-secret: s3cret}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: login, namespace: default}}
spec:
  targetRefs:
  - {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: private}}
  oidc:
    provider: {{issuer: "http://127.0.0.1:{dead_port}/realm"}}
    clientID: app
    clientSecret: {{name: client}}
    redirectURL: http://example.com/oauth2/callback
"#
    );
    let mut c = Controller::builder(BIN)
        .manifest("base.yaml", gateway_with_echo_backend(GW_PORT, echo.port()))
        .manifest("private.yaml", route("private", "/private"))
        .manifest("open.yaml", route("open", "/open"))
        .manifest("policy.yaml", policy)
        .args(runtime_args(runtime))
        .start()
        .expect("controller starts");
    wait_accepted(&mut c, "SecurityPolicy", "login");
    c.wait_synced(NODE).expect("synced");
    let gw_port = c.gateway_port(NODE, GW_PORT).expect("listener bound");
    wait_serving(&mut c, gw_port, "/open");
    let doc = c.status().expect("status");
    let policy = resource(&doc, "SecurityPolicy", Some("default"), "login").expect("policy");
    assert!(
        conditions_of(&policy["status"], "SessionSecret")
            .iter()
            .all(|(_, reason, _)| reason != "Placeholder"),
        "the runtime's persisted session secret is used: {}",
        policy["status"]
    );
    let r = get(gw_port, "/private/page");
    assert_eq!(
        r.status, 503,
        "the oidc filter cannot reach the issuer: {}",
        r.body
    );
    assert!(
        !c.logs().contains("s3cret"),
        "the client secret is never logged"
    );
}
