//! The incremental path ([`Translator`]): whatever it reuses, its output equals a translation
//! from scratch; an edit to one Gateway's route rebuilds that Gateway only, and hands the other
//! Gateways their previous xDS sets (so the server keeps their versions).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_translator::wasm::source::{WasmCodeType, WasmResolution, WasmResolver, WasmSource};
use portcullis_translator::{
    parse_documents, translate, ParseCache, Resource, Resources, Translator,
};

/// Every module is ready at a digest-named URL.
struct Ready;

impl WasmResolver for Ready {
    fn resolve(&self, s: &WasmSource) -> WasmResolution {
        let sha = s.sha256.clone().unwrap_or_else(|| "0".repeat(64));
        WasmResolution::Ready {
            serve_url: format!("http://127.0.0.1:19102/wasm/{sha}.wasm"),
            sha256: sha,
        }
    }

    fn serve_url_for(&self, kind: &WasmCodeType, sha256: &str) -> Option<String> {
        Some(match kind {
            WasmCodeType::DynamicModule => format!("http://127.0.0.1:19102/dynamic/{sha256}.so"),
            _ => format!("http://127.0.0.1:19102/wasm/{sha256}.wasm"),
        })
    }
}

#[path = "common/options.rs"]
mod options;
use options::opts;

/// Every golden input (translator and status cases), parsed.
fn golden_inputs() -> Vec<(PathBuf, Vec<Resource>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut paths = Vec::new();
    for dir in [root.clone(), root.join("status")] {
        for e in std::fs::read_dir(&dir).expect("testdata") {
            let p = e.expect("entry").path();
            if p.to_string_lossy().ends_with(".in.yaml") {
                paths.push(p);
            }
        }
    }
    paths.sort();
    assert!(
        paths.len() >= 16,
        "expected the golden cases, found {paths:?}"
    );
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read");
            let (res, errs) = parse_documents(&p.display().to_string(), &text);
            assert!(errs.is_empty(), "{}: {errs:?}", p.display());
            (p, res)
        })
        .collect()
}

/// Translates with `t` and from scratch; they must agree.
fn check(
    t: &mut Translator,
    res: &Resources,
    what: &str,
) -> portcullis_translator::TranslateOutput {
    let got = t.translate(res, &opts(), &Ready);
    let want = translate(res, &opts(), &Ready);
    assert!(
        got == want,
        "{what}: the incremental output differs from a full translation"
    );
    got
}

/// One Translator through every golden case, each followed by the same case with one object
/// removed (every object in turn) and the case again: every output equals a full translation.
#[test]
fn incremental_output_equals_full_translation_over_every_golden_case() {
    let mut t = Translator::default();
    let mut variants = 0;
    for (path, docs) in golden_inputs() {
        let name = path.display().to_string();
        let whole = Resources::from_parsed(docs.clone());
        check(&mut t, &whole, &name);
        // Unchanged: everything is reused, nothing differs.
        let again = check(&mut t, &whole, &format!("{name} again"));
        let stats = t.stats();
        assert_eq!(stats.routes_translated, 0, "{name}: {stats:?}");
        assert_eq!(stats.irs_built, 0, "{name}: {stats:?}");
        assert_eq!(stats.xds_built, 0, "{name}: {stats:?}");
        assert_eq!(stats.xds_reused, again.xds.len(), "{name}: {stats:?}");
        for skip in 0..docs.len() {
            let mut fewer = docs.clone();
            fewer.remove(skip);
            check(
                &mut t,
                &Resources::from_parsed(fewer),
                &format!("{name} without document {skip}"),
            );
            check(&mut t, &whole, &format!("{name} restored after {skip}"));
            variants += 1;
        }
    }
    assert!(variants > 100, "only {variants} variants");
}

const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gatewayclass-controller}
";

fn gateway(n: usize) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw{n}, namespace: infra}}
spec:
  gatewayClassName: portcullis
  listeners:
  - {{name: http, port: 8080, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}
"
    )
}

fn route(gw: usize, r: usize, value: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r{gw}-{r}, namespace: shop}}
spec:
  parentRefs: [{{name: gw{gw}, namespace: infra}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /r{r}}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-route, value: {value}}}]}}
    backendRefs: [{{name: app, port: 80}}]
"
    )
}

fn service(port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: app, namespace: shop}}
spec:
  ports:
  - {{name: http, port: {port}, targetPort: 8080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-1
  namespace: shop
  labels: {{kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [127.0.0.2]
  conditions: {{ready: true}}
"
    )
}

/// Three Gateways with two routes each; route r0-0 carries `value`.
fn three_gateways(value: &str, port: u16) -> String {
    let mut docs = vec![CLASS.to_string(), service(port)];
    for g in 0..3 {
        docs.push(gateway(g));
        for r in 0..2 {
            docs.push(route(g, r, if (g, r) == (0, 0) { value } else { "v1" }));
        }
    }
    docs.join("---\n")
}

fn load(cache: &mut ParseCache, text: &str) -> Resources {
    let (res, errs, _) = cache.parse("manifests.yaml", text);
    assert!(errs.is_empty(), "{errs:?}");
    Resources::from_parsed(res)
}

#[test]
fn an_edit_to_one_gateways_route_leaves_the_other_gateways_xds_untouched() {
    let mut cache = ParseCache::default();
    let mut t = Translator::default();
    let first = check(
        &mut t,
        &load(&mut cache, &three_gateways("v1", 80)),
        "first",
    );
    assert_eq!(first.xds.len(), 3);
    assert_eq!(t.stats().routes_translated, 6);
    assert_eq!(t.stats().xds_built, 3);

    let edited = check(&mut t, &load(&mut cache, &three_gateways("v2", 80)), "edit");
    let stats = t.stats();
    assert_eq!(
        (stats.routes_translated, stats.routes_reused),
        (1, 5),
        "{stats:?}"
    );
    assert_eq!((stats.irs_built, stats.irs_reused), (1, 2), "{stats:?}");
    assert_eq!((stats.xds_built, stats.xds_reused), (1, 2), "{stats:?}");
    for node in ["infra/gw1", "infra/gw2"] {
        assert!(
            Arc::ptr_eq(&first.ir.gateways[node], &edited.ir.gateways[node]),
            "{node}: its IR was rebuilt"
        );
        assert!(
            Arc::ptr_eq(&first.xds[node], &edited.xds[node]),
            "{node}: its xDS set was rebuilt"
        );
    }
    assert!(
        first.xds["infra/gw0"] != edited.xds["infra/gw0"],
        "gw0 did not change"
    );
    let routes = |out: &portcullis_translator::TranslateOutput| {
        format!(
            "{:?}",
            out.ir.gateways["infra/gw0"].ports[0].chains[0].virtual_hosts
        )
    };
    assert!(routes(&edited).contains("\"v2\""), "{}", routes(&edited));

    // A Service every route reads: every route is translated again, every Gateway rebuilt.
    let service_edit = check(
        &mut t,
        &load(&mut cache, &three_gateways("v2", 81)),
        "service",
    );
    let stats = t.stats();
    assert_eq!(
        (stats.routes_translated, stats.routes_reused),
        (6, 0),
        "{stats:?}"
    );
    assert_eq!(stats.irs_built, 3, "{stats:?}");
    assert_eq!(stats.xds_built, 3, "{stats:?}");
    assert!(service_edit.xds["infra/gw1"] != edited.xds["infra/gw1"]);

    // Options changed: nothing is reused.
    let mut other = opts();
    other.listener_address = "127.0.0.1".into();
    let res = load(&mut cache, &three_gateways("v2", 81));
    let out = t.translate(&res, &other, &Ready);
    assert!(out == translate(&res, &other, &Ready));
    assert_eq!(t.stats().routes_reused, 0);
    assert_eq!(t.stats().irs_reused, 0);
    assert_eq!(t.stats().xds_reused, 0);
}
