//! Redis URL redaction: the input is put around a known password (as userinfo, or a `pass` /
//! `password` query parameter); wherever the URL parser reads it as a credential, neither
//! `redact_url` nor `Secrets::scrub` lets it through, and an unparseable URL is never echoed.
#![no_main]

use portcullis_ratelimit_server::redact::{redact_url, Secrets};

const SECRET: &str = "Zq9SeCrEt7";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let rest = String::from_utf8_lossy(rest);
    if rest.contains("Zq9") {
        return;
    }
    let raw = match first % 5 {
        0 => format!("redis://user:{SECRET}@{rest}"),
        1 => format!("redis://:{SECRET}@{rest}"),
        2 => format!("rediss://{rest}?password={SECRET}"),
        3 => format!("unix://{rest}?pass={SECRET}&db=1"),
        _ => rest.to_string(),
    };
    let shown = redact_url(&raw);
    let Ok(url) = url::Url::parse(&raw) else {
        assert_eq!(shown, "<Redis URL that does not parse; not shown>");
        return;
    };
    let in_password = url.password() == Some(SECRET);
    let in_query = url
        .query_pairs()
        .any(|(k, v)| (k == "pass" || k == "password") && v == SECRET);
    if in_password || in_query {
        assert!(!shown.contains(SECRET), "{raw:?} shown as {shown:?}");
        let msg = format!("connecting to {raw}: AUTH {SECRET} failed");
        let scrubbed = Secrets::from_url(&raw).scrub(&msg);
        assert!(!scrubbed.contains(SECRET), "{scrubbed:?}");
    }
});
