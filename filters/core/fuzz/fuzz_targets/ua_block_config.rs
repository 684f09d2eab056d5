//! ua-block config parsing never panics, errors are one line that names a field, and any config
//! that parses can decide on arbitrary user agents.
#![no_main]

use portcullis_core::testing::MemoryHost;
use portcullis_core::ua_block::UaBlock;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match UaBlock::from_json(data) {
        Ok(f) => {
            for ua in [
                "",
                "GPTBot/1.0",
                "Mozilla/5.0 (compatible; Googlebot/2.1)",
                "curl/7.0",
                "\u{0130}x",
            ] {
                let _ = f.decide(&[ua]);
            }
            let mut host = MemoryHost::with_request(&[("user-agent", "python-requests/2.31")]);
            let _ = f.on_request_headers(&mut host);
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
