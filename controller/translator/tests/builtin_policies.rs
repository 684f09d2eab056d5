//! SecurityPolicy oidc, BackendTrafficPolicy rateLimit and EEP-attached built-in modules:
//! every emitted filter config is accepted by the filter's own parser, and the behaviour around
//! secrets, module availability, the rate-limit service and client-IP ranges.

use std::path::{Path, PathBuf};

use portcullis_core::oidc::config::Settings;
use portcullis_core::ratelimit::config::Config as RateLimitConfig;
use portcullis_translator::gatewayapi::security::{cookie_secret, PLACEHOLDER_SESSION_KEY};
use portcullis_translator::ir::{ActionIr, ClusterKind, FilterIr, GatewayIr, RouteIr};
use portcullis_translator::wasm::source::{WasmCodeType, WasmResolution, WasmResolver, WasmSource};
use portcullis_translator::{
    parse_documents, translate, Resources, TranslateOptions, TranslateOutput,
};
use serde_json::Value;

/// Ready unless the URL says `pending` or `unreachable`.
struct TestResolver;

impl WasmResolver for TestResolver {
    fn resolve(&self, s: &WasmSource) -> WasmResolution {
        if s.url.contains("pending") {
            WasmResolution::Pending
        } else if s.url.contains("unreachable") {
            WasmResolution::Failed {
                reason: format!("fetching {}: HTTP 503", s.url),
            }
        } else {
            let sha = s.sha256.clone().unwrap_or_else(|| "0".repeat(64));
            WasmResolution::Ready {
                serve_url: format!("http://127.0.0.1:19102/wasm/{sha}.wasm"),
                sha256: sha,
            }
        }
    }
}

fn module(name: &str, url: &str) -> (String, WasmSource) {
    (
        name.to_string(),
        WasmSource {
            code_type: WasmCodeType::Http,
            url: url.to_string(),
            sha256: Some("ab".repeat(32)),
            pull_secret: None,
            pull_policy: None,
        },
    )
}

fn opts() -> TranslateOptions {
    let mut o = TranslateOptions::default();
    o.builtin_modules.extend([
        module("oidc", "http://127.0.0.1:19102/builtin/oidc.wasm"),
        module("ratelimit", "http://127.0.0.1:19102/builtin/ratelimit.wasm"),
    ]);
    o.session_secret = Some([9u8; 32]);
    o.ratelimit_service = Some("ratelimit.internal:8081".into());
    // Local upstreams, as under `portcullis run --allow-backend-cidr 127.0.0.0/8`.
    o.egress = portcullis_translator::egress::EgressPolicy::allowing(["127.0.0.0/8"
        .parse()
        .expect("cidr")]);
    o
}

fn load(yaml: &str) -> Resources {
    let (res, errs) = parse_documents("test", yaml);
    assert!(errs.is_empty(), "{errs:?}");
    Resources::from_parsed(res)
}

fn testdata_inputs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("testdata")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    v.sort();
    v
}

fn wasm_filters(out: &TranslateOutput) -> Vec<(String, String)> {
    out.ir
        .gateways
        .values()
        .flat_map(|g| g.filters.iter())
        .filter_map(|f| match f {
            FilterIr::Wasm(w) => Some((w.name.clone(), w.configuration.clone())),
            FilterIr::Dynamic(d) => Some((d.name.clone(), d.config.clone())),
            FilterIr::Lua(_) => None,
        })
        .collect()
}

/// Every oidc and ratelimit config the translator emits (SecurityPolicy, BTP, and EEP configs
/// after the controller-only fields are stripped) parses with the filter's own parser.
#[test]
fn every_emitted_filter_config_is_accepted_by_the_filter() {
    let mut oidc = 0;
    let mut rl = 0;
    let mut paths = testdata_inputs();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    if let Ok(rd) = std::fs::read_dir(&examples) {
        let mut ex: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        ex.sort();
        paths.extend(ex);
    }
    for p in paths {
        let text = std::fs::read_to_string(&p).expect("read");
        let out = translate(&load(&text), &opts(), &TestResolver);
        for (name, cfg) in wasm_filters(&out) {
            let json: Value = serde_json::from_str(&cfg).unwrap_or(Value::Null);
            let is_oidc = name.contains("/securitypolicy/") || json.get("issuer").is_some();
            let is_rl = name.contains("/backendtrafficpolicy/")
                || (json.get("rules").is_some() && json.get("client_ip").is_some())
                || json.pointer("/global/domain").is_some();
            if is_oidc {
                if let Err(e) = Settings::from_json(cfg.as_bytes()) {
                    panic!("{}: {name}: oidc filter rejects {cfg}: {e}", p.display());
                }
                oidc += 1;
            } else if is_rl {
                if let Err(e) = RateLimitConfig::from_json(cfg.as_bytes()) {
                    panic!(
                        "{}: {name}: ratelimit filter rejects {cfg}: {e}",
                        p.display()
                    );
                }
                rl += 1;
            }
        }
    }
    assert!(oidc >= 4, "only {oidc} oidc configs checked");
    assert!(rl >= 6, "only {rl} ratelimit configs checked");
}

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: pc}
spec: {controllerName: portcullis.dev/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  gatewayClassName: pc
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {name: be, namespace: ns}
spec: {endpoints: [{ip: {address: 127.0.0.1, port: 9}}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: ns}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: be}]
  - matches: [{path: {type: PathPrefix, value: /b}}]
    backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: be}]
"#;

const OIDC: &str = r#"
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: sp, namespace: ns}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  oidc:
    provider: {issuer: "https://iam.example.com/realms/x"}
    clientID: app
    redirectURL: "https://app.example.com/oauth2/callback"
"#;

fn run(extra: &str, o: &TranslateOptions) -> TranslateOutput {
    translate(&load(&format!("{BASE}---\n{extra}")), o, &TestResolver)
}

fn gw(out: &TranslateOutput) -> &GatewayIr {
    out.ir.gateways.get("ns/gw").expect("gateway ns/gw")
}

fn routes(out: &TranslateOutput) -> Vec<&RouteIr> {
    gw(out).ports[0].chains[0]
        .virtual_hosts
        .iter()
        .flat_map(|v| v.routes.iter().map(|r| &**r))
        .collect()
}

fn status_of<'a>(out: &'a TranslateOutput, kind: &str, name: &str) -> &'a Value {
    &out.statuses
        .iter()
        .find(|s| s.kind == kind && s.metadata.name == name)
        .unwrap_or_else(|| panic!("no status for {kind} {name}"))
        .status
}

fn conditions(out: &TranslateOutput, kind: &str, name: &str) -> Vec<(String, String, String)> {
    status_of(out, kind, name)["ancestors"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["conditions"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            (
                format!(
                    "{}={}",
                    c["type"].as_str().unwrap_or(""),
                    c["status"].as_str().unwrap_or("")
                ),
                c["reason"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn is_500(r: &RouteIr) -> bool {
    matches!(r.action, ActionIr::Direct { status: 500, .. })
}

fn oidc_config(out: &TranslateOutput) -> Value {
    let (_, cfg) = wasm_filters(out)
        .into_iter()
        .find(|(n, _)| n.contains("/securitypolicy/"))
        .expect("oidc filter");
    serde_json::from_str(&cfg).expect("json")
}

#[test]
fn oidc_policy_enables_the_filter_and_its_clusters() {
    let out = run(OIDC, &opts());
    for r in routes(&out) {
        assert_eq!(
            r.enabled_filters,
            vec!["envoy.filters.http.wasm/securitypolicy/ns/sp/oidc".to_string()]
        );
        assert!(!is_500(r));
    }
    let clusters = &gw(&out).clusters;
    let idp = clusters
        .get("sp/ns/sp/oidc")
        .expect("provider cluster, named after the policy");
    assert_eq!(idp.tls_sni.as_deref(), Some("iam.example.com"));
    assert!(matches!(idp.kind, ClusterKind::StrictDns(_)));
    assert!(out
        .wasm_needed
        .iter()
        .any(|w| w.url.ends_with("/builtin/oidc.wasm")));
    let cfg = oidc_config(&out);
    assert_eq!(cfg["provider_cluster"], "sp/ns/sp/oidc");
    assert_eq!(cfg["scopes"], serde_json::json!(["openid"]));
    assert_eq!(
        cfg["cookie"]["secret"].as_str(),
        Some(cookie_secret(&[9u8; 32], "ns", "sp").as_str())
    );
    let conds = conditions(&out, "SecurityPolicy", "sp");
    assert_eq!(conds[0].0, "Accepted=True", "{conds:?}");
    assert!(!conds.iter().any(|c| c.1 == "Placeholder"));
}

#[test]
fn session_secret_is_per_key_and_offline_uses_a_labelled_placeholder() {
    let a = oidc_config(&run(OIDC, &opts()));
    let mut o = opts();
    o.session_secret = Some([10u8; 32]);
    let b = oidc_config(&run(OIDC, &o));
    assert_ne!(a["cookie"]["secret"], b["cookie"]["secret"]);
    o.session_secret = None;
    let out = run(OIDC, &o);
    let c = oidc_config(&out);
    assert_eq!(
        c["cookie"]["secret"].as_str(),
        Some(cookie_secret(&PLACEHOLDER_SESSION_KEY, "ns", "sp").as_str())
    );
    let conds = conditions(&out, "SecurityPolicy", "sp");
    assert!(
        conds.iter().any(|c| c.0 == "SessionSecret=False"
            && c.1 == "Placeholder"
            && c.2.contains("offline translate")),
        "{conds:?}"
    );
    // Still applied: offline translate shows the real output.
    assert_eq!(conds[0].0, "Accepted=True");
}

#[test]
fn oidc_module_unavailable_fails_closed() {
    for (o, want) in [
        {
            let mut o = opts();
            o.builtin_modules.remove("oidc");
            (o, "not configured")
        },
        {
            let mut o = opts();
            o.builtin_modules
                .extend([module("oidc", "http://x/pending/oidc.wasm")]);
            (o, "not fetched yet")
        },
        {
            let mut o = opts();
            o.builtin_modules
                .extend([module("oidc", "http://x/unreachable/oidc.wasm")]);
            (o, "HTTP 503")
        },
    ] {
        let out = run(OIDC, &o);
        assert!(routes(&out)
            .iter()
            .all(|r| is_500(r) && r.enabled_filters.is_empty()));
        let conds = conditions(&out, "SecurityPolicy", "sp");
        assert_eq!(conds[0].0, "Accepted=False");
        assert!(conds[0].2.contains(want), "{conds:?}");
    }
}

#[test]
fn oidc_without_redirect_url_or_with_unknown_auth_is_rejected_not_skipped() {
    let no_redirect = OIDC.replace(
        "    redirectURL: \"https://app.example.com/oauth2/callback\"\n",
        "",
    );
    let out = run(&no_redirect, &opts());
    assert!(routes(&out).iter().all(|r| is_500(r)));
    assert!(conditions(&out, "SecurityPolicy", "sp")[0]
        .2
        .contains("redirectURL is required"));
    let with_basic = format!("{OIDC}  basicAuth: {{users: {{name: htpasswd}}}}\n");
    let out = run(&with_basic, &opts());
    assert!(routes(&out).iter().all(|r| is_500(r)));
    assert!(conditions(&out, "SecurityPolicy", "sp")[0]
        .2
        .contains("spec.basicAuth"));
}

const BTP_LOCAL: &str = r#"
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: rl, namespace: ns}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  rateLimit:
    local:
      rules:
      - clientSelectors: [{sourceCIDR: {type: Distinct, value: 0.0.0.0/0}}]
        limit: {requests: 10, unit: Second}
      - clientSelectors: [{headers: [{name: x-team, type: Distinct}]}]
        limit: {requests: 100, unit: Minute}
        shared: true
"#;

fn rl_configs(out: &TranslateOutput) -> Vec<RateLimitConfig> {
    wasm_filters(out)
        .into_iter()
        .filter(|(n, _)| n.contains("/backendtrafficpolicy/"))
        .map(|(n, c)| {
            RateLimitConfig::from_json(c.as_bytes()).unwrap_or_else(|e| panic!("{n}: {e}"))
        })
        .collect()
}

#[test]
fn unshared_rules_count_per_route_shared_rules_once() {
    let out = run(BTP_LOCAL, &opts());
    let cfgs = rl_configs(&out);
    assert_eq!(cfgs.len(), 2, "one instance per route rule");
    // Same namespace: shared rules (same name and limit) share buckets across instances...
    assert_eq!(cfgs[0].namespace, cfgs[1].namespace);
    assert_eq!(cfgs[0].rules[1].name, cfgs[1].rules[1].name);
    // ...unshared ones do not.
    assert_ne!(cfgs[0].rules[0].name, cfgs[1].rules[0].name);
    assert!(
        gw(&out).use_remote_address,
        "client IP must not be spoofable"
    );
    let r = routes(&out);
    assert_eq!(r[0].enabled_filters.len(), 1);
    assert_ne!(r[0].enabled_filters, r[1].enabled_filters);
}

#[test]
fn global_rules_need_the_ratelimit_service() {
    let global = BTP_LOCAL.replace("local:", "global:");
    let out = run(&global, &opts());
    let svc = gw(&out)
        .clusters
        .get("ratelimit/ratelimit.internal:8081")
        .expect("service cluster");
    assert!(svc.http2);
    assert!(rl_configs(&out)
        .iter()
        .all(|c| c.global.as_ref().map(|g| g.cluster.as_str())
            == Some("ratelimit/ratelimit.internal:8081")));
    let mut o = opts();
    o.ratelimit_service = None;
    let out = run(&global, &o);
    let conds = conditions(&out, "BackendTrafficPolicy", "rl");
    assert_eq!(conds[0].0, "Accepted=False");
    assert!(conds[0].2.contains("--ratelimit-service"), "{conds:?}");
    // Not applied, and the route keeps working.
    assert!(routes(&out)
        .iter()
        .all(|r| !is_500(r) && r.enabled_filters.is_empty()));
    assert!(rl_configs(&out).is_empty());
}

#[test]
fn source_cidr_must_cover_the_listener_family() {
    let v6 = BTP_LOCAL.replace("0.0.0.0/0", "\"::/0\"");
    let out = run(&v6, &opts());
    assert_eq!(
        conditions(&out, "BackendTrafficPolicy", "rl")[0].0,
        "Accepted=False"
    );
    let mut o = opts();
    o.listener_address = "::".into();
    let out = run(&v6, &o);
    assert_eq!(
        conditions(&out, "BackendTrafficPolicy", "rl")[0].0,
        "Accepted=True"
    );
    let range = BTP_LOCAL.replace("0.0.0.0/0", "10.0.0.0/8");
    let out = run(&range, &opts());
    let conds = conditions(&out, "BackendTrafficPolicy", "rl");
    assert!(conds[0].2.contains("sourceCIDR 10.0.0.0/8"), "{conds:?}");
}

#[test]
fn ratelimit_module_unavailable_fails_closed() {
    let mut o = opts();
    o.builtin_modules
        .extend([module("ratelimit", "http://x/unreachable/rl.wasm")]);
    let out = run(BTP_LOCAL, &o);
    assert!(routes(&out).iter().all(|r| is_500(r)));
    assert!(conditions(&out, "BackendTrafficPolicy", "rl")[0]
        .2
        .contains("HTTP 503"));
}

#[test]
fn filter_chain_order_is_auth_then_extensions_then_rate_limits() {
    let eep = r#"
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {name: aaa, namespace: ns}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  lua: [{type: Inline, inline: "function envoy_on_request(h) end"}]
"#;
    let out = run(&format!("{OIDC}---\n{BTP_LOCAL}---\n{eep}"), &opts());
    let names: Vec<&str> = gw(&out).filters.iter().map(|f| f.name()).collect();
    assert!(names[0].contains("/securitypolicy/"), "{names:?}");
    assert!(names[1].contains("/envoyextensionpolicy/"), "{names:?}");
    assert!(names[2].contains("/backendtrafficpolicy/"), "{names:?}");
}

#[test]
fn eep_ratelimit_service_address_is_stripped_and_becomes_a_grpc_cluster() {
    let eep = r#"
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {name: e, namespace: ns}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  wasm:
  - code: {type: HTTP, http: {url: "http://m/rl.wasm", sha256: "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"}}
    config:
      rules: [{name: a, limit: {requests: 1, unit: second}, scope: global}]
      global: {cluster: my-rls, domain: d, service_address: "10.0.0.5:8081"}
"#;
    let out = run(eep, &opts());
    let c = gw(&out)
        .clusters
        .get("eep/ns/e/my-rls")
        .expect("cluster from service_address, named inside the policy");
    assert!(c.http2 && matches!(c.kind, ClusterKind::Static(_)));
    let (_, cfg) = wasm_filters(&out).into_iter().next().expect("filter");
    assert!(!cfg.contains("service_address"));
    assert!(cfg.contains(r#""cluster":"eep/ns/e/my-rls""#), "{cfg}");
    RateLimitConfig::from_json(cfg.as_bytes()).expect("filter accepts the stripped config");
    let bad = eep.replace("10.0.0.5:8081", "no-port");
    let out = run(&bad, &opts());
    assert_eq!(
        conditions(&out, "EnvoyExtensionPolicy", "e")[0].0,
        "Accepted=False"
    );
}

/// The policy examples translate with every policy accepted (given the runtime's options).
#[test]
fn policy_examples_are_accepted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/policies")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        let out = translate(
            &load(&std::fs::read_to_string(&f).expect("read")),
            &opts(),
            &TestResolver,
        );
        let policies: Vec<_> = out
            .statuses
            .iter()
            .filter(|s| s.kind == "SecurityPolicy" || s.kind == "BackendTrafficPolicy")
            .collect();
        assert!(!policies.is_empty(), "{}: no policy", f.display());
        for s in policies {
            let conds = conditions(&out, &s.kind, &s.metadata.name);
            assert!(
                !conds.is_empty() && conds.iter().all(|c| c.0 == "Accepted=True"),
                "{}: {} {}: {conds:?}",
                f.display(),
                s.kind,
                s.metadata.name
            );
        }
        assert!(
            wasm_filters(&out).len() == 1,
            "{}: expected one built-in filter",
            f.display()
        );
    }
}

#[test]
fn cookies_are_secure_unless_the_callback_is_plain_http_off_loopback() {
    let secure = |redirect: &str| {
        let sp = OIDC.replace("https://app.example.com/oauth2/callback", redirect);
        oidc_config(&run(&sp, &opts()))["cookie"]["secure"].clone()
    };
    assert_eq!(secure("https://app.example.com/oauth2/callback"), true);
    assert_eq!(secure("http://localhost:10085/oauth2/callback"), true);
    assert_eq!(secure("http://app.localhost:10085/oauth2/callback"), true);
    assert_eq!(secure("http://app.example.com/oauth2/callback"), false);
}

/// With the dynamic runtime, SecurityPolicy oidc and BackendTrafficPolicy rateLimit become
/// filters of `libportcullis.so` (served by the controller, pinned, `nack_on_cache_miss`), with
/// exactly the config the wasm runtime gives them; without the library they are not programmed.
#[test]
fn builtin_policies_run_on_the_dynamic_module_with_the_wasm_config() {
    use portcullis_translator::ir::ModuleSourceIr;
    use portcullis_translator::BuiltinRuntime;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut checked = 0;
    for case in ["07-securitypolicy-oidc.in.yaml", "08-btp-ratelimit.in.yaml"] {
        let res = load(&std::fs::read_to_string(dir.join(case)).expect("read case"));
        let wasm_out = translate(&res, &opts(), &TestResolver);
        let mut o = opts();
        o.builtin_runtime = BuiltinRuntime::Dynamic;
        o.builtin_dynamic_module = Some(WasmSource {
            code_type: WasmCodeType::DynamicModule,
            url: "file:///opt/portcullis/libportcullis.so".into(),
            sha256: Some("cd".repeat(32)),
            pull_secret: None,
            pull_policy: None,
        });
        let dyn_out = translate(&res, &o, &TestResolver);
        // Same configs under the same policy paths, one runtime swapped for the other.
        let wasm: Vec<(String, String)> = wasm_filters(&wasm_out)
            .into_iter()
            .filter(|(n, _)| n.contains("securitypolicy/") || n.contains("backendtrafficpolicy/"))
            .map(|(n, c)| (n.replace("envoy.filters.http.wasm/", ""), c))
            .collect();
        assert!(!wasm.is_empty(), "{case}: no built-in filter");
        let mut dynamic = Vec::new();
        for f in dyn_out.ir.gateways.values().flat_map(|g| g.filters.iter()) {
            match f {
                FilterIr::Dynamic(d) => {
                    let path = d
                        .name
                        .strip_prefix("envoy.filters.http.dynamic_modules/")
                        .expect("dynamic filter name");
                    assert!(
                        path.ends_with(&format!("/{}", d.filter_name))
                            || (d.filter_name == "ratelimit"
                                && path.contains("backendtrafficpolicy/")),
                        "{case}: {} runs filter {}",
                        d.name,
                        d.filter_name
                    );
                    assert!(d.module.do_not_close, "{case}: {}", d.name);
                    match &d.module.source {
                        ModuleSourceIr::Remote { sha256, url, .. } => {
                            assert_eq!(sha256, &"cd".repeat(32));
                            assert!(url.starts_with("http://127.0.0.1:19102/"), "{url}");
                        }
                        other => panic!("{case}: built-in module source {other:?}"),
                    }
                    dynamic.push((path.to_string(), d.config.clone()));
                }
                FilterIr::Wasm(w) => assert!(
                    !w.name.contains("securitypolicy/")
                        && !w.name.contains("backendtrafficpolicy/"),
                    "{case}: {} still on wasm",
                    w.name
                ),
                FilterIr::Lua(_) => {}
            }
        }
        assert_eq!(dynamic, wasm, "{case}");
        checked += dynamic.len();

        // No library: the policies say so and program nothing.
        let mut none = o.clone();
        none.builtin_dynamic_module = None;
        let out = translate(&res, &none, &TestResolver);
        assert!(
            out.ir
                .gateways
                .values()
                .flat_map(|g| g.filters.iter())
                .all(|f| !matches!(f, FilterIr::Dynamic(_))),
            "{case}"
        );
        let text = serde_json::to_string(&out.statuses).expect("statuses");
        assert!(text.contains("libportcullis.so"), "{case}: {text}");
    }
    assert!(checked >= 2);
}

/// A shared Gateway: tenant `ns` (route `r`, SecurityPolicy `sp`, a BackendTrafficPolicy using
/// the operator's rate-limit service) and tenant `evil` (route `er`), both attached.
const SHARED: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: pc}
spec: {controllerName: portcullis.dev/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  gatewayClassName: pc
  listeners: [{name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: ns}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{path: {type: PathPrefix, value: /a}}], backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: be}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: er, namespace: evil}
spec:
  parentRefs: [{name: gw, namespace: ns}]
  rules: [{matches: [{path: {type: PathPrefix, value: /evil}}], backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: be}]}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {name: be, namespace: ns}
spec: {endpoints: [{ip: {address: 127.0.0.1, port: 9}}]}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {name: be, namespace: evil}
spec: {endpoints: [{ip: {address: 127.0.0.1, port: 10}}]}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: sp, namespace: ns}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  oidc:
    provider: {issuer: "https://iam.example.com/realms/x"}
    clientID: app
    redirectURL: "https://app.example.com/oauth2/callback"
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: rl, namespace: ns}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  rateLimit:
    type: Global
    global: {rules: [{limit: {requests: 5, unit: Minute}}]}
"#;

fn evil_eep(wasm: &str) -> String {
    format!(
        r#"
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {{name: e, namespace: evil}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: er}}]
  wasm:
{wasm}"#
    )
}

fn shared(extra: &str) -> TranslateOutput {
    translate(
        &load(&format!("{SHARED}---\n{extra}")),
        &opts(),
        &TestResolver,
    )
}

fn sni_of<'a>(out: &'a TranslateOutput, name: &str) -> Option<&'a str> {
    gw(out)
        .clusters
        .get(name)
        .and_then(|c| c.tls_sni.as_deref())
}

#[test]
fn a_tenant_cannot_redefine_or_reach_another_tenants_clusters() {
    let clean = shared("");
    let victim_idp = "sp/ns/sp/oidc";
    let victim_rls = "ratelimit/ratelimit.internal:8081";
    assert_eq!(sni_of(&clean, victim_idp), Some("iam.example.com"));
    let rls_before = gw(&clean).clusters.get(victim_rls).expect("rls").clone();
    // The attacker names the victim's issuer cluster and the operator's rate-limit cluster, with
    // endpoints of its own.
    let out = shared(&evil_eep(
        r#"  - code: {type: HTTP, http: {url: "http://m/oidc.wasm", sha256: "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"}}
    config:
      issuer: "https://evil.example.net/"
      provider_cluster: "sp/ns/sp/oidc"
      client_id: x
      redirect_uri: "https://evil.example.net/cb"
      cookie: {secret: "0000000000000000000000000000000000000000000000000000000000000000"}
  - code: {type: HTTP, http: {url: "http://m/rl.wasm", sha256: "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"}}
    config:
      rules: [{name: a, limit: {requests: 1, unit: second}, scope: global}]
      global: {cluster: "ratelimit/ratelimit.internal:8081", domain: d, service_address: "evil.example.net:8081"}
"#,
    ));
    assert_eq!(
        conditions(&out, "EnvoyExtensionPolicy", "e")[0].0,
        "Accepted=True",
        "{:?}",
        conditions(&out, "EnvoyExtensionPolicy", "e")
    );
    // The victim's clusters are untouched ...
    assert_eq!(sni_of(&out, victim_idp), Some("iam.example.com"));
    assert_eq!(gw(&out).clusters.get(victim_rls), Some(&rls_before));
    // ... every cluster reaching the attacker's hosts is named inside its policy ...
    for (name, c) in &gw(&out).clusters {
        let evil = format!("{:?}", c.kind).contains("evil.example.net");
        assert_eq!(evil, name.starts_with("eep/evil/e/"), "{name}: {c:?}");
    }
    // ... and the filters it configured call only those.
    for (name, cfg) in wasm_filters(&out) {
        if name.contains("/envoyextensionpolicy/evil/e/") {
            let v: Value = serde_json::from_str(&cfg).expect("json");
            for field in ["/provider_cluster", "/global/cluster"] {
                if let Some(c) = v.pointer(field).and_then(Value::as_str) {
                    assert!(c.starts_with("eep/evil/e/"), "{field} = {c}");
                }
            }
        }
    }
}

#[test]
fn a_cluster_name_without_its_definition_is_refused() {
    // Naming an existing cluster without the field that defines it would reach it as is.
    for wasm in [
        r#"      provider_cluster: "sp/ns/sp/oidc""#,
        r#"      global: {cluster: "ratelimit/ratelimit.internal:8081", domain: d}"#,
    ] {
        let out = shared(&evil_eep(&format!(
            r#"  - code: {{type: HTTP, http: {{url: "http://m/x.wasm", sha256: "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"}}}}
    config:
{wasm}
"#
        )));
        let c = conditions(&out, "EnvoyExtensionPolicy", "e");
        assert_eq!(c[0].0, "Accepted=False", "{wasm}: {c:?}");
        assert!(c[0].2.contains("cannot name one it did not cause"), "{c:?}");
    }
}

#[test]
fn one_name_with_two_definitions_is_refused_and_the_rest_keeps_working() {
    let out = shared(&evil_eep(
        r#"  - code: {type: HTTP, http: {url: "http://m/a.wasm", sha256: "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"}}
    config: {issuer: "https://one.example.net/", provider_cluster: idp}
  - code: {type: HTTP, http: {url: "http://m/b.wasm", sha256: "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"}}
    config: {issuer: "https://two.example.net/", provider_cluster: idp}
"#,
    ));
    let c = conditions(&out, "EnvoyExtensionPolicy", "e");
    assert_eq!(
        (c[0].0.as_str(), c[0].1.as_str()),
        ("Accepted=False", "Conflicted")
    );
    assert!(
        c[0].2.contains("\"eep/evil/e/idp\" is defined twice"),
        "{c:?}"
    );
    assert!(!gw(&out).clusters.contains_key("eep/evil/e/idp"));
    // The refused policy's route fails closed; the other tenant's policies are unaffected.
    let all = routes(&out);
    let (evil, rest): (Vec<&&RouteIr>, Vec<&&RouteIr>) =
        all.iter().partition(|r| r.name.contains("evil"));
    assert!(!evil.is_empty() && evil.iter().all(|r| is_500(r)));
    assert!(rest.iter().all(|r| !is_500(r)));
    assert_eq!(
        conditions(&out, "SecurityPolicy", "sp")[0].0,
        "Accepted=True"
    );
}

#[test]
fn two_security_policies_with_one_issuer_get_their_own_clusters() {
    let second = r#"
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: sp2, namespace: evil}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: er}]
  oidc:
    provider: {issuer: "https://iam.example.com/realms/x"}
    clientID: other
    redirectURL: "https://other.example.com/oauth2/callback"
"#;
    let out = shared(second);
    assert_eq!(sni_of(&out, "sp/ns/sp/oidc"), Some("iam.example.com"));
    assert_eq!(sni_of(&out, "sp/evil/sp2/oidc"), Some("iam.example.com"));
    assert_eq!(
        conditions(&out, "SecurityPolicy", "sp2")[0].0,
        "Accepted=True"
    );
}

#[test]
fn a_pull_secret_in_another_namespace_needs_a_reference_grant() {
    let eep = r#"
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {name: e, namespace: evil}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: er}]
  wasm:
  - code:
      type: Image
      image: {url: "registry.example.com/x:1", pullSecretRef: {name: regcred, namespace: ns}}
"#;
    let out = shared(eep);
    let c = conditions(&out, "EnvoyExtensionPolicy", "e");
    assert_eq!(c[0].0, "Accepted=False", "{c:?}");
    assert!(c[0].2.contains("no ReferenceGrant allows it"), "{c:?}");
    assert!(
        !out.wasm_needed.iter().any(|w| w.pull_secret.is_some()),
        "the runtime is never asked to pull with another tenant's credentials"
    );
    let grant = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: regcred, namespace: ns}
spec:
  from: [{group: gateway.envoyproxy.io, kind: EnvoyExtensionPolicy, namespace: evil}]
  to: [{group: "", kind: Secret, name: regcred}]
"#;
    let out = shared(&format!("{eep}---\n{grant}"));
    assert!(out
        .wasm_needed
        .iter()
        .any(|w| w.pull_secret == Some(("ns".into(), "regcred".into()))));
}

/// `portcullis translate` prints configuration for people and CI logs: no secret value (OIDC
/// client secret, derived cookie key, a secret in an EEP config, a TLS private key) appears in
/// any output format, whichever runtime runs the built-in filters.
#[test]
fn translate_output_never_contains_a_secret_value() {
    use portcullis_translator::{render_output, BuiltinRuntime, OutputFormat};
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/certs");
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).expect("test cert");
    let indent = |pem: String| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let (crt, key) = (read("tls.crt"), read("tls.key"));
    let client_secret = "client-secret-4f1c9e";
    let eep_secret = "eep-client-secret-77ab";
    let eep_cookie = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=";
    let yaml = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: oidc, namespace: ns}}
stringData: {{client-secret: {client_secret}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: ns}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{crt}  tls.key: |
{key}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tls, namespace: ns}}
spec:
  gatewayClassName: pc
  listeners:
  - name: https
    port: 8443
    protocol: HTTPS
    hostname: app.example.com
    tls: {{mode: Terminate, certificateRefs: [{{name: cert}}]}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: sp, namespace: ns}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}}]
  oidc:
    provider: {{issuer: "https://iam.example.com/realms/x"}}
    clientID: app
    clientSecret: {{name: oidc}}
    redirectURL: "https://app.example.com/oauth2/callback"
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {{name: e, namespace: evil}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: er}}]
  wasm:
  - code: {{type: HTTP, http: {{url: "http://m/oidc.wasm", sha256: "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"}}}}
    config:
      issuer: "https://idp.example.net/"
      provider_cluster: idp
      client_id: b
      client_secret: {eep_secret}
      redirect_uri: "https://b.example.com/cb"
      cookie: {{secret: "{eep_cookie}"}}
"#,
        crt = indent(crt),
        key = indent(key.clone()),
    );
    let mut dynamic = opts();
    dynamic.builtin_runtime = BuiltinRuntime::Dynamic;
    dynamic.builtin_dynamic_module = Some(WasmSource {
        code_type: WasmCodeType::DynamicModule,
        url: "file:///opt/portcullis/libportcullis.so".into(),
        sha256: Some("cd".repeat(32)),
        pull_secret: None,
        pull_policy: None,
    });
    let cookie_key = cookie_secret(&[9u8; 32], "ns", "sp");
    let key_body: Vec<&str> = key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    assert!(!key_body.is_empty());
    for (runtime, o) in [("wasm", opts()), ("dynamic", dynamic)] {
        let out = translate(&load(&format!("{SHARED}---\n{yaml}")), &o, &TestResolver);
        // The inputs did reach the filters: otherwise "absent" would prove nothing.
        assert_eq!(
            conditions(&out, "SecurityPolicy", "sp")[0].0,
            "Accepted=True",
            "{runtime}"
        );
        assert_eq!(
            conditions(&out, "EnvoyExtensionPolicy", "e")[0].0,
            "Accepted=True",
            "{runtime}"
        );
        let debug = format!("{:?}", out.ir);
        assert!(debug.contains(client_secret) && debug.contains(&cookie_key));
        for format in [OutputFormat::Json, OutputFormat::Yaml] {
            let text = render_output(&out, format);
            for secret in [client_secret, eep_secret, eep_cookie, cookie_key.as_str()]
                .into_iter()
                .chain(key_body.iter().copied())
            {
                assert!(
                    !text.contains(secret),
                    "{runtime} {format:?}: output contains {secret:?}"
                );
            }
            assert!(text.contains("[redacted]"), "{runtime} {format:?}");
        }
    }
}
