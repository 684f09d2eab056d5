//! Header operations on random configs and random header maps: header-name and value rules hold,
//! pseudo-headers are never touched, removed headers are gone, set headers have their value,
//! and preset headers are always present after the response phase.
#![no_main]

use arbitrary::Arbitrary;
use portcullis_core::headers::{
    HeadersConfig, HeadersFilter, OpsConfig, SecurityHeaders, BASIC, STRICT,
};
use portcullis_core::http::{
    check_header_value, is_pseudo_header, normalize_header_name, HeaderList,
};
use portcullis_core::testing::MemoryHost;
use portcullis_core::Direction;

#[derive(Debug, Arbitrary)]
struct Ops {
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
    remove: Vec<String>,
    remove_matching: Vec<String>,
    set_if_absent: Vec<(String, String)>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    request: Ops,
    response: Ops,
    preset: u8,
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
}

fn ops(o: &Ops) -> OpsConfig {
    OpsConfig {
        set: HeaderList(o.set.clone()),
        add: HeaderList(o.add.clone()),
        remove: o.remove.clone(),
        remove_matching: o.remove_matching.clone(),
        set_if_absent: HeaderList(o.set_if_absent.clone()),
    }
}

fn pseudo(h: &[(String, String)]) -> Vec<(String, String)> {
    h.iter()
        .filter(|(k, _)| is_pseudo_header(k))
        .cloned()
        .collect()
}

/// Names the config writes in a direction (these may legitimately reappear after removal).
fn written(o: &Ops) -> Vec<String> {
    o.set
        .iter()
        .chain(&o.add)
        .chain(&o.set_if_absent)
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect()
}

fn check(o: &Ops, host: &MemoryHost, dir: Direction, extra_written: &[&str]) {
    let written = written(o);
    for name in &o.remove {
        let n = name.to_ascii_lowercase();
        if !written.contains(&n) && !extra_written.contains(&n.as_str()) {
            assert!(host.values(dir, &n).is_empty(), "{n} was removed");
        }
    }
    for (name, value) in &o.set {
        let n = name.to_ascii_lowercase();
        let values = host.values(dir, &n);
        assert_eq!(values.first(), Some(value), "{n} was set");
    }
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    if input
        .request
        .remove_matching
        .iter()
        .chain(&input.response.remove_matching)
        .any(|r| r.len() > 40)
    {
        return;
    }
    // The name and value rules themselves.
    for (name, value) in input.request.set.iter().chain(&input.response.add) {
        if let Ok(n) = normalize_header_name("f", name) {
            assert!(!n.is_empty() && !n.starts_with(':'));
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()));
            assert!(!n.contains([
                ':', '"', '(', ')', ',', '/', ';', '<', '=', '>', '?', '@', '[', '\\', ']', '{',
                '}'
            ]));
        }
        if check_header_value("f", name, value).is_ok() {
            assert!(!value.contains(['\r', '\n', '\0']));
        }
    }

    let cfg = HeadersConfig {
        request: ops(&input.request),
        response: ops(&input.response),
        security_headers: match input.preset % 3 {
            0 => SecurityHeaders::Off,
            1 => SecurityHeaders::Basic,
            _ => SecurityHeaders::Strict,
        },
    };
    let Ok(f) = HeadersFilter::new(&cfg) else {
        return;
    };
    // The host stores names as Envoy does: lowercase.
    let lower = |h: &[(String, String)]| -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    let mut host = MemoryHost::new();
    host.request = lower(&input.request_headers);
    let req_pseudo = pseudo(&host.request);
    let state = f.on_request_headers(&mut host);
    assert_eq!(
        pseudo(&host.request),
        req_pseudo,
        "request pseudo-headers untouched"
    );
    check(&input.request, &host, Direction::Request, &[]);

    host.response = lower(&input.response_headers);
    let resp_pseudo = pseudo(&host.response);
    f.on_response_headers(&mut host, state);
    assert_eq!(
        pseudo(&host.response),
        resp_pseudo,
        "response pseudo-headers untouched"
    );
    let preset: &[(&str, &str)] = match input.preset % 3 {
        0 => &[],
        1 => BASIC,
        _ => STRICT,
    };
    let preset_names: Vec<&str> = preset
        .iter()
        .map(|(n, _)| *n)
        .chain(["strict-transport-security"])
        .collect();
    check(&input.response, &host, Direction::Response, &preset_names);
    let removed: Vec<String> = input
        .response
        .remove
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    for (name, _) in preset {
        if !removed.iter().any(|r| r == name) {
            assert!(
                !host.values(Direction::Response, name).is_empty(),
                "preset {name} present"
            );
        }
    }
});
