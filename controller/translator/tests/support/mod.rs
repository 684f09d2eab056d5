//! What the translator's behaviour tests share: manifests translated as `portcullis run
//! --allow-backend-cidr 127.0.0.0/8` would (loopback upstreams allowed), and the test Gateway.

use portcullis_translator::egress::EgressPolicy;
use portcullis_translator::ir::GatewayIr;
use portcullis_translator::wasm::source::WasmResolver;
use portcullis_translator::{
    parse_documents, translate, Resources, TranslateOptions, TranslateOutput,
};

/// Translates `text`, which must load without errors, with the default options and loopback
/// upstreams allowed.
pub fn translate_loopback(text: &str, resolver: &dyn WasmResolver) -> TranslateOutput {
    let (res, errs) = parse_documents("test", text);
    assert!(errs.is_empty(), "{errs:?}");
    translate(
        &Resources::from_parsed(res),
        &TranslateOptions {
            egress: EgressPolicy::allowing(["127.0.0.0/8".parse().expect("cidr")]),
            ..TranslateOptions::default()
        },
        resolver,
    )
}

/// The IR of Gateway `ns/gw`, the one every case declares.
pub fn gw(out: &TranslateOutput) -> &GatewayIr {
    out.ir.gateways.get("ns/gw").expect("gateway ns/gw in IR")
}
