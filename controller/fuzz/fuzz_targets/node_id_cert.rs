//! `node_id_of_certificate` on arbitrary DER: no panic, and a node id it finds is
//! `<namespace>/<name>` with neither part empty.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(id) = portcullis::tls::node_id_of_certificate(data) {
        let (ns, name) = id.split_once('/').expect("namespace/name");
        assert!(!ns.is_empty() && !name.is_empty() && !name.contains('/'), "{id:?}");
    }
});
