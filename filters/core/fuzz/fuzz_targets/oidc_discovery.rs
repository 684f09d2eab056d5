//! oidc: `portcullis_core::oidc::fuzzing::discovery`: a discovery document and a JWKS (split at
//! the first NUL byte) load or fail without a panic, and the redirects built from a loaded
//! document stay one header line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_core::oidc::fuzzing::discovery(data);
});
