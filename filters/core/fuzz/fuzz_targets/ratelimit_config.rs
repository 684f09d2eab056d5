//! Rate-limit config parsing: never panics; whatever parses round-trips through serde.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_core::ratelimit::fuzzing::config(data);
});
