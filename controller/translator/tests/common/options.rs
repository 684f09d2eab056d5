//! Options shared by the golden and incremental tests.

use portcullis_translator::egress::EgressPolicy;
use portcullis_translator::wasm::source::{WasmCodeType, WasmSource};
use portcullis_translator::TranslateOptions;

/// Options as the runtime sets them: built-in modules served by the controller, a session
/// secret and a rate-limit service.
pub fn opts() -> TranslateOptions {
    let mut o = TranslateOptions::default();
    for (name, sha) in [("oidc", "1"), ("ratelimit", "2")] {
        o.builtin_modules.insert(
            name.into(),
            WasmSource {
                code_type: WasmCodeType::Http,
                url: format!("http://127.0.0.1:19102/builtin/{name}.wasm"),
                sha256: Some(sha.repeat(64)),
                pull_secret: None,
                pull_policy: None,
            },
        );
    }
    o.session_secret = Some([7u8; 32]);
    o.ratelimit_service = Some("127.0.0.1:8081".into());
    // As `portcullis run --allow-backend-cidr 127.0.0.0/8 --allow-backend-unix`: cases use
    // loopback and unix upstreams. Cases with an `egress` option test the refusals.
    o.egress = EgressPolicy {
        enable_backend: true,
        allowed_cidrs: vec!["127.0.0.0/8".parse().expect("cidr")],
        allow_unix: true,
        issuer_ca_bundle: None,
    };
    o
}
