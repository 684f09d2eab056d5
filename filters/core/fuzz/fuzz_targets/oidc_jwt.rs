//! oidc: `portcullis_core::oidc::fuzzing::jwt` never panics on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_core::oidc::fuzzing::jwt(data);
});
