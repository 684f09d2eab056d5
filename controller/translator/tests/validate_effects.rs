//! What the listener, address and backendRef rules (`gatewayapi/validate/`) do to the IR and
//! xDS, beyond the statuses the status goldens check: refused listeners and Gateways are not
//! programmed, overlapping TLS listeners offer http/1.1 only, a refused backendRef keeps only
//! its share of 500s.

mod support;

use portcullis_translator::ir::{ActionIr, WeightedCluster};
use portcullis_translator::wasm::source::{WasmResolution, WasmResolver, WasmSource};
use portcullis_translator::{render_output, OutputFormat, TranslateOutput};
use support::{gw, translate_loopback};

struct NoWasm;
impl WasmResolver for NoWasm {
    fn resolve(&self, _: &WasmSource) -> WasmResolution {
        WasmResolution::Pending
    }
}

const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: pc}
spec: {controllerName: portcullis.dev/gatewayclass-controller}
";

const ECHO: &str = "apiVersion: v1
kind: Service
metadata: {name: echo, namespace: ns}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: ns, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [127.0.0.1]}]
";

fn run(docs: &str) -> TranslateOutput {
    translate_loopback(&format!("{CLASS}---\n{ECHO}---\n{docs}"), &NoWasm)
}

fn cert_secret(name: &str, crt: &str, key: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/certs/status");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("test certificate");
    let indent = |s: String| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: ns}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(read(crt)),
        indent(read(key))
    )
}

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: ns}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: echo, port: 80}]
";

#[test]
fn overlapping_tls_listeners_offer_http11_only() {
    let gateway = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  gatewayClassName: pc
  listeners:
  - {name: wild, port: 443, protocol: HTTPS, hostname: '*.example.com', tls: {certificateRefs: [{name: rsa}]}}
  - {name: a, port: 443, protocol: HTTPS, hostname: a.example.com, tls: {certificateRefs: [{name: a}]}}
  - {name: b, port: 8443, protocol: HTTPS, hostname: b.example.com, tls: {certificateRefs: [{name: b}]}}
";
    let docs = format!(
        "{gateway}---\n{}---\n{}---\n{}---\n{ROUTE}",
        cert_secret("rsa", "rsa.crt", "rsa.key"),
        cert_secret("a", "a.crt", "a.key"),
        cert_secret("b", "b.crt", "b.key"),
    );
    let out = run(&docs);
    let http1: Vec<(u16, String, bool)> = gw(&out)
        .ports
        .iter()
        .flat_map(|p| {
            p.chains
                .iter()
                .map(move |c| (p.port, c.name.clone(), c.http1_only))
        })
        .collect();
    assert_eq!(
        http1,
        vec![
            (443, "ns/gw/a".to_string(), true),
            (443, "ns/gw/wild".to_string(), true),
            (8443, "ns/gw/b".to_string(), false),
        ]
    );
    let json = render_output(&out, OutputFormat::Json);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("json");
    let mut alpn: Vec<String> = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(a) = o.get("alpn_protocols") {
                    out.push(a.to_string());
                }
                o.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&doc["xds"], &mut alpn);
    alpn.sort();
    assert_eq!(
        alpn,
        vec![
            r#"["h2","http/1.1"]"#.to_string(),
            r#"["http/1.1"]"#.to_string(),
            r#"["http/1.1"]"#.to_string(),
        ]
    );
}

#[test]
fn refused_listeners_and_gateways_are_not_programmed() {
    // Conflicted listeners (no winner), a listener with a refused kind, a certificate whose
    // key does not match: only port 80 is programmed.
    let gateway = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  gatewayClassName: pc
  listeners:
  - {name: ok, port: 80, protocol: HTTP}
  - {name: dup-a, port: 81, protocol: HTTP, hostname: x.example.com}
  - {name: dup-b, port: 81, protocol: HTTP, hostname: x.example.com}
  - {name: kinds, port: 82, protocol: HTTP, allowedRoutes: {kinds: [{kind: TCPRoute}]}}
  - {name: tls, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: bad}]}}
";
    let docs = format!(
        "{gateway}---\n{}---\n{ROUTE}",
        cert_secret("bad", "a.crt", "b.key")
    );
    let out = run(&docs);
    let ports: Vec<u16> = gw(&out).ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, vec![80]);

    // A Gateway asking for a Hostname address is not accepted: nothing is programmed.
    let gateway = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  gatewayClassName: pc
  addresses: [{type: Hostname, value: gw.example.com}]
  listeners:
  - {name: ok, port: 80, protocol: HTTP}
";
    let out = run(&format!("{gateway}---\n{ROUTE}"));
    assert!(gw(&out).ports.is_empty(), "{:?}", gw(&out).ports);
}

#[test]
fn a_refused_backend_ref_keeps_only_its_share_of_500s() {
    let gateway = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  gatewayClassName: pc
  listeners: [{name: http, port: 80, protocol: HTTP}]
";
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: ns}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs:
    - {name: echo, port: 80, weight: 3}
    - name: echo
      port: 80
      weight: 1
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: y}]}}]
";
    let out = run(&format!("{gateway}---\n{route}"));
    let r = &gw(&out).ports[0].chains[0].virtual_hosts[0].routes[0];
    match &r.action {
        ActionIr::Forward { backends, .. } => assert_eq!(
            backends,
            &vec![
                WeightedCluster {
                    cluster: "service/ns/echo/80".into(),
                    weight: 3
                },
                WeightedCluster {
                    cluster: "portcullis/invalid-backend".into(),
                    weight: 1
                },
            ]
        ),
        other => panic!("expected a weighted forward, got {other:?}"),
    }
}
