//! Behaviour checks on the IR, independent of the golden files: precedence, policy override and
//! failure modes, hostname virtual hosts, statuses.

mod support;

use portcullis_translator::ir::{ActionIr, PathMatchIr, RouteIr};
use portcullis_translator::wasm::source::{WasmResolution, WasmResolver, WasmSource};
use portcullis_translator::{
    parse_documents, translate, Resources, TranslateOptions, TranslateOutput,
};
use support::{gw, translate_loopback};

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
"#;

struct Resolver(WasmResolution);
impl WasmResolver for Resolver {
    fn resolve(&self, _: &WasmSource) -> WasmResolution {
        self.0.clone()
    }
}

fn ready() -> Resolver {
    Resolver(WasmResolution::Ready {
        sha256: "ab".repeat(32),
        serve_url: "http://127.0.0.1:1/m.wasm".into(),
    })
}

fn run(extra: &str, resolver: &Resolver) -> TranslateOutput {
    translate_loopback(&format!("{BASE}---\n{extra}"), resolver)
}

fn routes<'a>(out: &'a TranslateOutput, domain: &str) -> Vec<&'a RouteIr> {
    gw(out).ports[0].chains[0]
        .virtual_hosts
        .iter()
        .find(|v| v.domains == [domain.to_string()])
        .map(|v| v.routes.iter().map(|r| &**r).collect())
        .unwrap_or_default()
}

fn route(name: &str, ts: &str, rules: &str) -> String {
    format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: ns, creationTimestamp: \"{ts}\"}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}\n")
}

fn condition<'a>(out: &'a TranslateOutput, kind: &str, name: &str) -> Vec<&'a serde_json::Value> {
    let s = out
        .statuses
        .iter()
        .find(|s| s.kind == kind && s.metadata.name == name)
        .unwrap_or_else(|| panic!("no status for {kind} {name}"));
    let mut found = Vec::new();
    fn walk<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        match v {
            serde_json::Value::Object(o) => {
                if o.contains_key("reason") {
                    out.push(v);
                }
                o.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&s.status, &mut found);
    found
}

#[test]
fn precedence_follows_the_spec() {
    let be = "    backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: be}]";
    let newer = route(
        "newer",
        "2025-01-01T00:00:00Z",
        &format!("  - matches: [{{path: {{type: PathPrefix, value: /a}}}}]\n{be}"),
    );
    let older = route(
        "older",
        "2024-01-01T00:00:00Z",
        &format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /a}}}}]\n{be}\n  - matches: [{{path: {{type: PathPrefix, value: /a/b}}}}]\n{be}\n  - matches: [{{path: {{type: Exact, value: /a}}}}]\n{be}\n  - matches: [{{path: {{type: PathPrefix, value: /a}}, method: GET}}]\n{be}\n  - matches: [{{path: {{type: PathPrefix, value: /a}}, headers: [{{name: x, value: '1'}}]}}]\n{be}\n  - matches: [{{path: {{type: PathPrefix, value: /a}}, queryParams: [{{name: q, value: '1'}}]}}]\n{be}\n  - matches: [{{path: {{type: PathPrefix, value: /a}}, headers: [{{name: x, value: '1'}}, {{name: y, value: '2'}}]}}]\n{be}"
        ),
    );
    let out = run(&format!("{newer}---\n{older}"), &ready());
    let names: Vec<&str> = routes(&out, "*").iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "httproute/ns/older/rule/2/match/0", // Exact
            "httproute/ns/older/rule/1/match/0", // longest prefix
            "httproute/ns/older/rule/3/match/0", // method
            "httproute/ns/older/rule/6/match/0", // two headers
            "httproute/ns/older/rule/4/match/0", // one header
            "httproute/ns/older/rule/5/match/0", // query param
            "httproute/ns/older/rule/0/match/0", // oldest route wins the tie
            "httproute/ns/newer/rule/0/match/0",
        ]
    );
    assert_eq!(
        routes(&out, "*")[1].path,
        PathMatchIr::Prefix("/a/b".into())
    );
}

#[test]
fn route_policy_overrides_gateway_policy_and_fetch_failures_follow_fail_open() {
    let be = "    backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: be}]";
    let r1 = route(
        "one",
        "2024-01-01T00:00:00Z",
        &format!("  - matches: [{{path: {{type: PathPrefix, value: /one}}}}]\n{be}"),
    );
    let r2 = route(
        "two",
        "2024-01-01T00:00:00Z",
        &format!("  - matches: [{{path: {{type: PathPrefix, value: /two}}}}]\n{be}"),
    );
    let policy = |name: &str, target: &str, fail_open: bool| {
        format!("apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, {target}}}]\n  wasm:\n  - name: {name}\n    failOpen: {fail_open}\n    code: {{type: HTTP, http: {{url: 'http://x/{name}.wasm'}}}}\n")
    };
    let docs = format!(
        "{r1}---\n{r2}---\n{}---\n{}",
        policy("gwide", "kind: Gateway, name: gw", false),
        policy("r1only", "kind: HTTPRoute, name: one", false)
    );
    let out = run(&docs, &ready());
    let rs = routes(&out, "*");
    let one = rs
        .iter()
        .find(|r| r.route_name == "one")
        .expect("route one");
    let two = rs
        .iter()
        .find(|r| r.route_name == "two")
        .expect("route two");
    assert_eq!(
        one.enabled_filters,
        vec!["envoy.filters.http.wasm/envoyextensionpolicy/ns/r1only/wasm/0".to_string()]
    );
    assert_eq!(
        two.enabled_filters,
        vec!["envoy.filters.http.wasm/envoyextensionpolicy/ns/gwide/wasm/0".to_string()]
    );
    // Both filters are placed once in the HCM, VM shared by digest.
    assert_eq!(gw(&out).filters.len(), 2);
    let gwide = condition(&out, "EnvoyExtensionPolicy", "gwide");
    let overridden: Vec<_> = gwide.iter().filter(|c| c["type"] == "Overridden").collect();
    assert_eq!(overridden.len(), 1, "{gwide:?}");
    assert!(overridden[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("ns/one") && !m.contains("ns/two")));

    // Failed fetch, fail closed: the targeted routes answer 500, the others keep forwarding.
    let failed = Resolver(WasmResolution::Failed {
        reason: "GET http://x/m.wasm: HTTP 404".into(),
    });
    let docs = format!(
        "{r1}---\n{r2}---\n{}",
        policy("r1only", "kind: HTTPRoute, name: one", false)
    );
    let out = run(&docs, &failed);
    let rs = routes(&out, "*");
    let one = rs
        .iter()
        .find(|r| r.route_name == "one")
        .expect("route one");
    let two = rs
        .iter()
        .find(|r| r.route_name == "two")
        .expect("route two");
    assert!(
        matches!(one.action, ActionIr::Direct { status: 500, .. }),
        "{:?}",
        one.action
    );
    assert!(matches!(two.action, ActionIr::Forward { .. }));
    assert!(gw(&out).filters.is_empty());
    let conds = condition(&out, "EnvoyExtensionPolicy", "r1only");
    assert_eq!(conds[0]["status"], "False");
    assert!(
        conds[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("HTTP 404")),
        "{conds:?}"
    );

    // Same failure, fail open: the route passes unfiltered.
    let docs = format!(
        "{r1}---\n{r2}---\n{}",
        policy("r1only", "kind: HTTPRoute, name: one", true)
    );
    let out = run(&docs, &failed);
    let one = routes(&out, "*")
        .into_iter()
        .find(|r| r.route_name == "one")
        .expect("route one");
    assert!(matches!(one.action, ActionIr::Forward { .. }));
    assert!(one.enabled_filters.is_empty());
}

#[test]
fn hostnames_make_virtual_hosts_and_attachment_reasons() {
    let be = "    backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: be}]";
    let with_hosts = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: hosts, namespace: ns}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [a.example.com, '*.b.example.com']\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /}}]\n".to_string() + be;
    let bad_section = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad, namespace: ns}\nspec:\n  parentRefs: [{name: gw, sectionName: https}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /}}]\n".to_string() + be;
    let out = run(&format!("{with_hosts}\n---\n{bad_section}"), &ready());
    let domains: Vec<Vec<String>> = gw(&out).ports[0].chains[0]
        .virtual_hosts
        .iter()
        .map(|v| v.domains.clone())
        .collect();
    assert_eq!(
        domains,
        vec![
            vec!["*.b.example.com".to_string()],
            vec!["a.example.com".to_string()]
        ]
    );
    let bad = condition(&out, "HTTPRoute", "bad");
    assert_eq!(bad[0]["reason"], "NoMatchingParent");
    let listener_attached = &out
        .statuses
        .iter()
        .find(|s| s.kind == "Gateway")
        .expect("gateway status")
        .status["listeners"][0]["attachedRoutes"];
    assert_eq!(listener_attached, 1);
}

/// A module still being fetched shows its URL in the policy status with the userinfo redacted.
#[test]
fn pending_module_status_redacts_url_userinfo() {
    let eep = "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n  wasm:\n  - name: m\n    code: {type: HTTP, http: {url: 'https://bob:t0ken@wasm.example.com/m.wasm'}}\n";
    let out = run(eep, &Resolver(WasmResolution::Pending));
    let messages: Vec<String> = condition(&out, "EnvoyExtensionPolicy", "p")
        .iter()
        .filter_map(|c| c["message"].as_str().map(String::from))
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("module https://***@wasm.example.com/m.wasm is not fetched yet")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .all(|m| !m.contains("t0ken") && !m.contains("bob")),
        "{messages:?}"
    );
}

/// `ephemeral_listener_ports` binds on port 0 and changes nothing else: the listener keeps its
/// name (the Gateway's port), so readers map bound ports back to Gateway listeners.
#[test]
fn ephemeral_listener_ports_bind_port_zero_and_keep_names() {
    let (res, errs) = parse_documents("test", BASE);
    assert!(errs.is_empty(), "{errs:?}");
    let render = |ephemeral: bool| {
        let out = translate(
            &Resources::from_parsed(res.clone()),
            &TranslateOptions {
                ephemeral_listener_ports: ephemeral,
                ..TranslateOptions::default()
            },
            &ready(),
        );
        let doc: serde_json::Value = serde_json::from_str(&portcullis_translator::render_output(
            &out,
            portcullis_translator::OutputFormat::Json,
        ))
        .expect("json");
        doc["xds"]["ns/gw"]["listeners"].clone()
    };
    let (fixed, ephemeral) = (render(false), render(true));
    let port = |l: &serde_json::Value| l[0]["address"]["socket_address"]["port_value"].clone();
    assert_eq!(port(&fixed), 8080, "{fixed}");
    assert_eq!(port(&ephemeral), 0, "{ephemeral}");
    assert_eq!(ephemeral[0]["name"], "ns/gw/8080");
    let mut with_zero = fixed.clone();
    with_zero[0]["address"]["socket_address"]["port_value"] = serde_json::json!(0);
    assert_eq!(with_zero, ephemeral, "only the port differs");
}

/// The xDS route named `name` (rendered as `portcullis translate -o json` prints it).
fn xds_route(out: &TranslateOutput, name: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&portcullis_translator::render_output(
        out,
        portcullis_translator::OutputFormat::Json,
    ))
    .expect("rendered JSON");
    fn find(v: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
        match v {
            serde_json::Value::Object(o) => {
                if o.get("name").and_then(|n| n.as_str()) == Some(name) && o.contains_key("match") {
                    return Some(v.clone());
                }
                o.values().find_map(|x| find(x, name))
            }
            serde_json::Value::Array(a) => a.iter().find_map(|x| find(x, name)),
            _ => None,
        }
    }
    find(&v, name)
}

fn conditions_of<'a>(out: &'a TranslateOutput, name: &str) -> Vec<(&'a str, &'a str, &'a str)> {
    condition(out, "HTTPRoute", name)
        .into_iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or_default(),
                c["status"].as_str().unwrap_or_default(),
                c["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn dropped_rule_answers_500_in_ir_and_xds_and_valid_rules_keep_forwarding() {
    let be = "    backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: be}]";
    let r = route(
        "mixed",
        "2024-01-01T00:00:00Z",
        &format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /good}}}}]\n{be}\n  - matches: [{{path: {{type: PathPrefix, value: /bad}}}}]\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {{set: [{{name: X-Ok, value: fine}}, {{name: X-Bad, value: ' lead'}}]}}\n    - type: URLRewrite\n      urlRewrite: {{hostname: internal.example.com}}\n{be}"
        ),
    );
    let out = run(&r, &ready());
    let rs = routes(&out, "*");
    let good = rs
        .iter()
        .find(|r| r.name == "httproute/ns/mixed/rule/0/match/0")
        .expect("good rule");
    assert!(
        matches!(good.action, ActionIr::Forward { .. }),
        "{:?}",
        good.action
    );
    let bad = rs
        .iter()
        .find(|r| r.name == "httproute/ns/mixed/rule/1/match/0")
        .expect("dropped rule keeps a route that answers 500");
    assert_eq!(
        bad.action,
        ActionIr::Direct {
            status: 500,
            body: String::new()
        }
    );
    // Nothing of the invalid rule reaches Envoy: not even its valid header entry.
    assert!(bad.request_headers.set.is_empty() && bad.request_headers.add.is_empty());
    let x = xds_route(&out, "httproute/ns/mixed/rule/1/match/0").expect("xDS route");
    assert_eq!(x["direct_response"]["status"], 500, "{x}");
    assert!(x.get("request_headers_to_add").is_none(), "{x}");
    let x = xds_route(&out, "httproute/ns/mixed/rule/0/match/0").expect("xDS route");
    assert!(x.get("route").is_some(), "{x}");
    assert_eq!(
        conditions_of(&out, "mixed"),
        vec![
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
            ("PartiallyInvalid", "True", "UnsupportedValue"),
        ]
    );
}

#[test]
fn unprogrammable_match_is_left_out_and_the_rules_other_matches_answer_500() {
    let be = "    backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: be}]";
    let r = route(
        "re",
        "2024-01-01T00:00:00Z",
        &format!(
            "  - matches:\n    - path: {{type: RegularExpression, value: '/v(1'}}\n    - path: {{type: PathPrefix, value: /v2}}\n{be}"
        ),
    );
    let out = run(&r, &ready());
    let rs = routes(&out, "*");
    let names: Vec<&str> = rs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["httproute/ns/re/rule/0/match/1"]);
    assert!(matches!(rs[0].action, ActionIr::Direct { status: 500, .. }));
    assert!(xds_route(&out, "httproute/ns/re/rule/0/match/0").is_none());
    // The only rule is dropped: the route is not accepted.
    assert_eq!(
        conditions_of(&out, "re")[0],
        ("Accepted", "False", "UnsupportedValue")
    );
}

#[test]
fn duplicate_header_names_keep_the_first_entry() {
    let be = "    backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: be}]";
    let r = route(
        "dup",
        "2024-01-01T00:00:00Z",
        &format!(
            "  - filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier:\n        set: [{{name: X-A, value: '1'}}, {{name: x-a, value: '2'}}]\n        add: [{{name: X-B, value: '3'}}]\n        remove: [X-C, x-c]\n{be}"
        ),
    );
    let out = run(&r, &ready());
    let rs = routes(&out, "*");
    assert_eq!(rs[0].response_headers.set, vec![("X-A".into(), "1".into())]);
    assert_eq!(rs[0].response_headers.add, vec![("X-B".into(), "3".into())]);
    assert_eq!(rs[0].response_headers.remove, vec!["X-C".to_string()]);
    assert!(matches!(rs[0].action, ActionIr::Forward { .. }));
    assert_eq!(
        conditions_of(&out, "dup")[0],
        ("Accepted", "True", "Accepted")
    );
}

#[test]
fn redirect_with_rewrite_is_dropped_not_redirected() {
    let r = route(
        "redir",
        "2024-01-01T00:00:00Z",
        "  - filters:\n    - type: RequestRedirect\n      requestRedirect: {scheme: https}\n    - type: URLRewrite\n      urlRewrite: {hostname: internal.example.com}",
    );
    let out = run(&r, &ready());
    let rs = routes(&out, "*");
    assert_eq!(rs.len(), 1);
    assert!(
        matches!(rs[0].action, ActionIr::Direct { status: 500, .. }),
        "{:?}",
        rs[0].action
    );
    let x = xds_route(&out, "httproute/ns/redir/rule/0/match/0").expect("xDS route");
    assert!(
        x.get("redirect").is_none() && x["direct_response"]["status"] == 500,
        "{x}"
    );
    assert_eq!(
        conditions_of(&out, "redir")[0],
        ("Accepted", "False", "IncompatibleFilters")
    );
}
