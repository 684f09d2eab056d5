//! Rate-limit request handling: headers, X-Forwarded-For, downstream address, key building,
//! the shared-data buckets and the rate-limit service response decoder never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_core::ratelimit::fuzzing::request(data);
});
