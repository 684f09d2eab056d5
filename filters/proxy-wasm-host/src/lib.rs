//! The proxy-wasm side of [`portcullis_core::Host`], shared by every Portcullis filter module.
//!
//! It is deliberately thin: it maps each trait method to one host call. Header values are read as
//! bytes and converted lossily, because the SDK's string getters panic on non-UTF-8 values and a
//! request may carry any byte in a header (obs-text).

use portcullis_core::{ConfigError, Direction, Host, LogLevel, SharedDataError, SharedValue};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel as WasmLogLevel, MapType, MetricType, Status};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

fn map_type(dir: Direction) -> MapType {
    match dir {
        Direction::Request => MapType::HttpRequestHeaders,
        Direction::Response => MapType::HttpResponseHeaders,
    }
}

fn wasm_level(level: LogLevel) -> WasmLogLevel {
    match level {
        LogLevel::Trace => WasmLogLevel::Trace,
        LogLevel::Debug => WasmLogLevel::Debug,
        LogLevel::Info => WasmLogLevel::Info,
        LogLevel::Warn => WasmLogLevel::Warn,
        LogLevel::Error => WasmLogLevel::Error,
    }
}

/// Write one line to the host log. Logging must never take a request down, so errors are dropped.
pub fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(wasm_level(level), msg);
}

/// Counter ids, defined once per root context and looked up by name afterwards.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: RefCell<Vec<(String, u32)>>,
}

impl Metrics {
    /// Define the counters up front, so they show up (at 0) before the first request.
    pub fn define(names: &[&str]) -> Rc<Self> {
        let m = Self::default();
        for name in names {
            m.id(name);
        }
        Rc::new(m)
    }

    fn id(&self, name: &str) -> Option<u32> {
        if let Some((_, id)) = self.ids.borrow().iter().find(|(n, _)| n == name) {
            return Some(*id);
        }
        match hostcalls::define_metric(MetricType::Counter, name) {
            Ok(id) => {
                self.ids.borrow_mut().push((name.to_string(), id));
                Some(id)
            }
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("cannot define metric {name}: {status:?}"),
                );
                None
            }
        }
    }

    pub fn increment(&self, name: &str, by: u64) {
        if let Some(id) = self.id(name) {
            let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
        }
    }
}

/// [`Host`] over the proxy-wasm host calls of the current HTTP context.
#[derive(Debug, Clone)]
pub struct WasmHost {
    metrics: Rc<Metrics>,
}

impl WasmHost {
    pub fn new(metrics: Rc<Metrics>) -> Self {
        Self { metrics }
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Host for WasmHost {
    fn header(&self, dir: Direction, name: &str) -> Option<String> {
        hostcalls::get_map_value_bytes(map_type(dir), name)
            .ok()
            .flatten()
            .map(lossy)
    }

    fn headers(&self, dir: Direction) -> Vec<(String, String)> {
        hostcalls::get_map_bytes(map_type(dir))
            .map(|pairs| pairs.into_iter().map(|(k, v)| (k, lossy(v))).collect())
            .unwrap_or_default()
    }

    fn set_header(&mut self, dir: Direction, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(map_type(dir), name, Some(value));
    }

    fn add_header(&mut self, dir: Direction, name: &str, value: &str) {
        let _ = hostcalls::add_map_value(map_type(dir), name, value);
    }

    fn remove_header(&mut self, dir: Direction, name: &str) {
        let _ = hostcalls::remove_map_value(map_type(dir), name);
    }

    fn send_local_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let _ = hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body));
    }

    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
    }

    fn shared_get(&self, key: &str) -> Option<SharedValue> {
        // An entry exists exactly when Envoy hands out a CAS token; its data may be empty.
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
        self.metrics.increment(name, by);
    }

    fn log(&self, level: LogLevel, msg: &str) {
        log(level, msg);
    }
}

impl portcullis_core::ratelimit::RateLimitHost for WasmHost {
    fn downstream_address(&self) -> Option<String> {
        hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
            .map(lossy)
    }
}

/// The plugin configuration bytes; empty when the filter has none.
pub fn plugin_config() -> Vec<u8> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Read and compile the plugin configuration for `on_configure`. On error it writes exactly one
/// error line, `<filter>: invalid config: <field>: <reason>`, and returns `None`: the caller then
/// returns `false` and Envoy refuses the filter.
pub fn configure<T>(
    filter: &str,
    compile: impl FnOnce(&[u8]) -> Result<T, ConfigError>,
) -> Option<T> {
    match compile(&plugin_config()) {
        Ok(compiled) => Some(compiled),
        Err(e) => {
            log(LogLevel::Error, &format!("{filter}: invalid config: {e}"));
            None
        }
    }
}
