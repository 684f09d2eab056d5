//! xDS State-of-the-World: frames decoded as `DiscoveryRequest`s go through a stream's
//! `on_request` (node id and certificate binding, ACK/NACK by nonce, subscriptions) without a
//! panic; responses carry only the stream's own node's subscribed resources.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis::xds::server::fuzzing::sotw(data);
});
