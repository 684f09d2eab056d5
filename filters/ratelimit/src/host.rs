//! `Host` over proxy-wasm hostcalls. (No shared proxy-wasm adapter crate existed when this was
//! written; this one is small and could move into one.)

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_core::ratelimit::engine::COUNTERS;
use portcullis_core::ratelimit::RateLimitHost;
use portcullis_core::{Direction, Host, LogLevel, SharedDataError, SharedValue};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, MetricType, Status};

/// Counter ids by name, defined once per VM at configure time.
#[derive(Default)]
pub struct Metrics {
    ids: HashMap<&'static str, u32>,
}

impl Metrics {
    pub fn define_all(&mut self) {
        for name in COUNTERS {
            if let Ok(id) = hostcalls::define_metric(MetricType::Counter, name) {
                self.ids.insert(name, id);
            }
        }
    }
}

pub fn log_error(msg: &str) {
    let _ = hostcalls::log(proxy_wasm::types::LogLevel::Error, msg);
}

pub struct WasmHost {
    metrics: Rc<RefCell<Metrics>>,
}

impl WasmHost {
    pub fn new(metrics: Rc<RefCell<Metrics>>) -> Self {
        Self { metrics }
    }
}

fn map(dir: Direction) -> MapType {
    match dir {
        Direction::Request => MapType::HttpRequestHeaders,
        Direction::Response => MapType::HttpResponseHeaders,
    }
}

fn lossy(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Host for WasmHost {
    fn header(&self, dir: Direction, name: &str) -> Option<String> {
        // The bytes variant: header values need not be UTF-8, and the SDK's string one panics.
        hostcalls::get_map_value_bytes(map(dir), name)
            .ok()
            .flatten()
            .map(lossy)
    }

    fn headers(&self, dir: Direction) -> Vec<(String, String)> {
        hostcalls::get_map_bytes(map(dir))
            .map(|m| m.into_iter().map(|(k, v)| (k, lossy(v))).collect())
            .unwrap_or_default()
    }

    fn set_header(&mut self, dir: Direction, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(map(dir), name, Some(value));
    }

    fn add_header(&mut self, dir: Direction, name: &str, value: &str) {
        let _ = hostcalls::add_map_value(map(dir), name, value);
    }

    fn remove_header(&mut self, dir: Direction, name: &str) {
        let _ = hostcalls::set_map_value(map(dir), name, None);
    }

    fn send_local_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let _ = hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body));
    }

    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
    }

    fn shared_get(&self, key: &str) -> Option<SharedValue> {
        match hostcalls::get_shared_data(key) {
            Ok((data, Some(cas))) => Some(SharedValue {
                data: data.unwrap_or_default(),
                cas,
            }),
            _ => None,
        }
    }

    fn shared_set(
        &mut self,
        key: &str,
        data: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        match hostcalls::set_shared_data(key, Some(data), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedDataError::CasMismatch),
            Err(other) => Err(SharedDataError::Unavailable(format!("{other:?}"))),
        }
    }

    fn counter_add(&mut self, name: &str, by: u64) {
        let id = self.metrics.borrow().ids.get(name).copied();
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
        }
    }

    fn log(&self, level: LogLevel, msg: &str) {
        use proxy_wasm::types::LogLevel as L;
        let level = match level {
            LogLevel::Trace => L::Trace,
            LogLevel::Debug => L::Debug,
            LogLevel::Info => L::Info,
            LogLevel::Warn => L::Warn,
            LogLevel::Error => L::Error,
        };
        let _ = hostcalls::log(level, msg);
    }
}

impl RateLimitHost for WasmHost {
    fn downstream_address(&self) -> Option<String> {
        hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
            .map(lossy)
    }
}
