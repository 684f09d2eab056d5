//! headers as a proxy-wasm module: parses the config per root context and runs
//! [`portcullis_core::headers`] on request and response headers. All logic lives in core.

use portcullis_core::headers::{HeadersFilter, StreamState, METRICS};
use portcullis_core::LogLevel;
use portcullis_proxy_wasm::{configure, log, Metrics, WasmHost};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel as WasmLogLevel};
use std::rc::Rc;

proxy_wasm::main! {{
    // The host decides what is written; the SDK forwards every level and logs panics.
    proxy_wasm::set_log_level(WasmLogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

/// One per plugin config. Several roots with different configs can share a VM, so the config
/// lives here and never in a global.
#[derive(Default)]
struct Root {
    filter: Option<Rc<HeadersFilter>>,
    metrics: Rc<Metrics>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(filter) = configure("headers", HeadersFilter::from_json) else {
            return false;
        };
        if filter.is_noop() {
            log(
                LogLevel::Info,
                "headers: empty config, the filter changes nothing",
            );
        }
        self.metrics = Metrics::define(METRICS);
        self.filter = Some(Rc::new(filter));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            filter: self.filter.clone(),
            host: WasmHost::new(self.metrics.clone()),
            state: StreamState::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    /// `None` only if Envoy created a stream for a root whose on_configure failed: then the
    /// filter changes nothing.
    filter: Option<Rc<HeadersFilter>>,
    host: WasmHost,
    /// Learned in the request phase (the scheme), used in the response phase.
    state: StreamState,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(filter) = &self.filter {
            self.state = filter.on_request_headers(&mut self.host);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(filter) = &self.filter {
            filter.on_response_headers(&mut self.host, self.state);
        }
        Action::Continue
    }
}
