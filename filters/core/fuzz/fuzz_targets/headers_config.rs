//! headers config parsing never panics, errors are one line that names a field, and any config
//! that parses can run a whole stream.
#![no_main]

use portcullis_core::headers::HeadersFilter;
use portcullis_core::testing::MemoryHost;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match HeadersFilter::from_json(data) {
        Ok(f) => {
            let mut host = MemoryHost::with_request(&[
                (":method", "GET"),
                (":path", "/"),
                (":scheme", "https"),
                ("x-internal-a", "1"),
            ]);
            let state = f.on_request_headers(&mut host);
            host.response = vec![
                (":status".into(), "200".into()),
                ("server".into(), "x".into()),
            ];
            f.on_response_headers(&mut host, state);
            assert_eq!(
                &host.request[..3],
                &[
                    (":method".to_string(), "GET".to_string()),
                    (":path".to_string(), "/".to_string()),
                    (":scheme".to_string(), "https".to_string()),
                ]
            );
            assert_eq!(host.response[0], (":status".to_string(), "200".to_string()));
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.chars().any(char::is_control),
                "config errors are one log line: {msg:?}"
            );
            assert!(!e.field().is_empty(), "config errors name a field: {msg:?}");
        }
    }
});
