//! Manifests to xDS: multi-document YAML/JSON through `parse_documents`,
//! `Resources::from_parsed`, `translate` (IR, xDS, statuses) and the rendered output value,
//! with the options `portcullis run` uses. Never panics, every output renders, and the same
//! input gives the same output.
#![no_main]

use portcullis_translator::egress::EgressPolicy;
use portcullis_translator::wasm::source::{WasmCodeType, WasmResolution, WasmResolver, WasmSource};
use portcullis_translator::xds::render::output_value;
use portcullis_translator::{
    parse_documents, translate, BuiltinRuntime, Resources, TranslateOptions,
};

/// The runtime's cache, as the golden tests stand it in: URLs containing `pending` are being
/// fetched, `unreachable` failed, anything else is served at a digest-named URL.
struct Resolver;

impl WasmResolver for Resolver {
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
                serve_url: self.serve_url_for(&s.code_type, &sha).unwrap_or_default(),
                sha256: sha,
            }
        }
    }

    fn serve_url_for(&self, kind: &WasmCodeType, sha256: &str) -> Option<String> {
        Some(match kind {
            WasmCodeType::DynamicModule => format!("http://127.0.0.1:19102/dynamic/{sha256}.so"),
            _ => format!("http://127.0.0.1:19102/wasm/{sha256}.wasm"),
        })
    }
}

fn source(code_type: WasmCodeType, name: &str, sha: &str) -> WasmSource {
    WasmSource {
        code_type,
        url: format!("http://127.0.0.1:19102/builtin/{name}"),
        sha256: Some(sha.repeat(64)),
        pull_secret: None,
        pull_policy: None,
    }
}

fn options(runtime: BuiltinRuntime) -> TranslateOptions {
    let mut o = TranslateOptions::default();
    o.builtin_modules.insert("oidc".into(), source(WasmCodeType::Http, "oidc.wasm", "1"));
    o.builtin_modules.insert(
        "ratelimit".into(),
        source(WasmCodeType::Http, "ratelimit.wasm", "2"),
    );
    o.builtin_dynamic_module = Some(source(WasmCodeType::DynamicModule, "libportcullis.so", "3"));
    o.builtin_runtime = runtime;
    o.session_secret = Some([7u8; 32]);
    o.ratelimit_service = Some("127.0.0.1:8081".into());
    o.egress = EgressPolicy {
        enable_backend: true,
        allowed_cidrs: vec!["127.0.0.0/8".parse().expect("cidr")],
        allow_unix: true,
        issuer_ca_bundle: None,
    };
    o
}

fn run(resources: &Resources, runtime: BuiltinRuntime) {
    let opts = options(runtime);
    let out = translate(resources, &opts, &Resolver);
    // What `portcullis translate` prints (JSON; YAML is the same value through serde_yaml). A
    // rendering error means our own protos failed to decode: a bug.
    let value = match output_value(&out) {
        Ok(v) => v,
        Err(e) => panic!("rendering failed: {e}"),
    };
    let _ = serde_json::to_string(&value);
    // Pure and deterministic: a second run gives the same xDS and statuses.
    let again = translate(resources, &opts, &Resolver);
    assert!(again.xds == out.xds, "xDS is not deterministic");
    assert!(again.statuses == out.statuses, "statuses are not deterministic");
    assert_eq!(again.wasm_needed, out.wasm_needed);
    assert_eq!(again.gateways, out.gateways);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (parsed, errors) = parse_documents("fuzz.yaml", &text);
    for e in &errors {
        let _ = e.to_string();
    }
    let resources = Resources::from_parsed(parsed);
    run(&resources, BuiltinRuntime::Wasm);
    // The runtime only matters to the built-in filters.
    if !resources.security_policies.is_empty() || !resources.backend_traffic_policies.is_empty() {
        run(&resources, BuiltinRuntime::Dynamic);
    }
});
