//! The `--config` limits file (envoyproxy/ratelimit YAML, several domains): `Limits::from_yaml`
//! never panics, and a file that loads answers lookups.
#![no_main]

use portcullis_ratelimit_server::config::Limits;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(limits) = Limits::from_yaml(&text) else {
        return;
    };
    let e = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    for domain in ["portcullis", "d", ""] {
        for entries in [
            e(&[("rule", "a")]),
            e(&[("client_ip", "1.2.3.4"), ("path", "/login")]),
            e(&[]),
        ] {
            if let Some(l) = limits.lookup(domain, &entries) {
                assert!(l.unlimited || l.unit_seconds > 0, "{l:?}");
            }
        }
    }
});
