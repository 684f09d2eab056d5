//! xDS Delta: frames decoded as `DeltaDiscoveryRequest`s go through a stream's `on_request`
//! (node id and certificate binding, subscribe/unsubscribe, initial versions, ACK/NACK by
//! nonce) without a panic; responses carry only the stream's own node's subscribed resources.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis::xds::server::fuzzing::delta(data);
});
