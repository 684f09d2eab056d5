//! Entry points for the fuzz targets (`fuzz/fuzz_targets/ratelimit_*.rs`), also run over
//! pseudo-random inputs by the unit tests: nothing here may panic, whatever the bytes.

use std::time::{Duration, UNIX_EPOCH};

use super::client_ip::{client_ip, parse_address};
use super::engine::{Decision, GlobalResult, RateLimitHost, RateLimiter, RequestState};
use super::key::{key_values, matches, RequestView};
use super::proto;
use crate::host::{Direction, Host, LogLevel, SharedDataError, SharedValue};
use crate::testing::MemoryHost;

/// Config parsing: any bytes; a config that parses must round-trip through serde.
pub fn config(data: &[u8]) {
    if let Ok(cfg) = super::Config::from_json(data) {
        let text = serde_json::to_string(&cfg).unwrap_or_default();
        let again = super::Config::from_json(text.as_bytes());
        assert_eq!(again.as_ref().ok(), Some(&cfg), "round trip of {text}");
    }
}

/// Request-side parsing: a fixed set of rules over headers, XFF and a downstream address taken
/// from the input, then the whole engine (local and global paths) and the response decoder.
pub fn request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let downstream = parts.next().map(str::to_string);
    let hops = parts
        .next()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1);
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in parts {
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        let k = if k.is_empty() {
            ":path".to_string()
        } else {
            k.to_ascii_lowercase()
        };
        headers.push((k, v.to_string()));
    }
    let view = RequestView::from_headers(&headers);
    let _ = client_ip(&view.xff, hops, downstream.as_deref());
    let _ = downstream.as_deref().map(parse_address);

    let cfg = serde_json::json!({
        "client_ip": {"trusted_hops": hops.min(64)},
        "rules": [
            {"name": "ip", "key": ["client_ip"], "limit": {"requests": 2, "unit": "second"},
             "match": {"path_prefix": "/", "headers": [{"name": "x-tier"}]}},
            {"name": "all", "key": ["header:x-api-key", "path", "method", "authority"], "limit": {"requests": 3, "unit": "minute"}, "burst": 1},
            {"name": "g", "key": ["client_ip", "header:x-api-key"], "limit": {"requests": 1, "unit": "hour"}, "scope": "global"}
        ],
        "global": {"cluster": "c", "domain": "d"},
        "local": {"slots": 4, "slot_entries": 2}
    });
    let Ok(rl) = RateLimiter::from_json(cfg.to_string().as_bytes()) else {
        return;
    };
    for r in &rl.config().rules {
        if matches(r, &view) {
            let _ = key_values(r, &view, None);
        }
    }
    let mut host = FuzzHost {
        inner: MemoryHost {
            request: headers,
            ..MemoryHost::default()
        },
        downstream,
    };
    host.inner.now =
        Some(UNIX_EPOCH + Duration::from_secs(u64::from(data.first().copied().unwrap_or(0))));
    let _ = rl.init(&mut host);
    for _ in 0..3 {
        let mut state = RequestState::default();
        if let Decision::CallGlobal(req) = rl.on_request(&mut host, &mut state) {
            let _ = proto::encode_request(&req);
            // The dynamic module frames gRPC itself: unframe, then decode, as it does.
            let result: GlobalResult = match proto::grpc_unframe(data) {
                Ok(msg) => proto::decode_response(msg),
                Err(_) => proto::decode_response(data),
            };
            rl.on_global(&mut host, &mut state, result);
        }
        rl.on_response(&mut host, &state);
        rl.tick(&mut host);
    }
    // Whatever the request carried, shared data only ever holds well-formed slots.
    for v in host.inner.shared.values() {
        assert_eq!(super::store::decode(&v.data).len() * 24 + 1, v.data.len());
    }
}

struct FuzzHost {
    inner: MemoryHost,
    downstream: Option<String>,
}

impl Host for FuzzHost {
    fn header(&self, d: Direction, n: &str) -> Option<String> {
        self.inner.header(d, n)
    }
    fn headers(&self, d: Direction) -> Vec<(String, String)> {
        self.inner.headers(d)
    }
    fn set_header(&mut self, d: Direction, n: &str, v: &str) {
        self.inner.set_header(d, n, v)
    }
    fn add_header(&mut self, d: Direction, n: &str, v: &str) {
        self.inner.add_header(d, n, v)
    }
    fn remove_header(&mut self, d: Direction, n: &str) {
        self.inner.remove_header(d, n)
    }
    fn send_local_response(&mut self, s: u16, h: &[(&str, &str)], b: &[u8]) {
        self.inner.send_local_response(s, h, b)
    }
    fn now(&self) -> std::time::SystemTime {
        self.inner.now()
    }
    fn shared_get(&self, k: &str) -> Option<SharedValue> {
        self.inner.shared_get(k)
    }
    fn shared_set(&mut self, k: &str, d: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
        self.inner.shared_set(k, d, cas)
    }
    fn counter_add(&mut self, n: &str, by: u64) {
        self.inner.counter_add(n, by)
    }
    fn log(&self, l: LogLevel, m: &str) {
        self.inner.log(l, m)
    }
}

impl RateLimitHost for FuzzHost {
    fn downstream_address(&self) -> Option<String> {
        self.downstream.clone()
    }
}

#[cfg(test)]
mod tests {
    /// A cheap deterministic stand-in for the fuzzer, so `cargo test` exercises the targets.
    fn inputs() -> impl Iterator<Item = Vec<u8>> {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let seeds: Vec<Vec<u8>> = vec![
            b"1.2.3.4:5\n1\n:method:GET\n:path:/api?x\nx-forwarded-for:9.9.9.9, 8.8.8.8\nx-api-key:k\nx-tier:a".to_vec(),
            b"[::1]:1\n0\nx-forwarded-for:,,,\nx-forwarded-for:::ffff:1.2.3.4".to_vec(),
            br#"{"rules":[{"name":"a","limit":{"requests":1,"unit":"day"},"key":["header:x"]}]}"#.to_vec(),
            Vec::new(),
        ];
        let mut out = seeds.clone();
        for i in 0..3000 {
            let mut v = seeds[i % seeds.len()].clone();
            for _ in 0..(i % 7) + 1 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let pos = (x as usize) % (v.len() + 1);
                let byte = (x >> 32) as u8;
                match x % 3 {
                    0 if pos < v.len() => v[pos] = byte,
                    1 => v.insert(pos, byte),
                    _ if pos < v.len() => {
                        v.remove(pos);
                    }
                    _ => v.push(byte),
                }
            }
            out.push(v);
        }
        out.into_iter()
    }

    #[test]
    fn targets_survive_mutated_inputs() {
        for input in inputs() {
            super::config(&input);
            super::request(&input);
        }
    }
}
