//! ua-block as a proxy-wasm module: parses the config per root context and runs
//! [`portcullis_core::ua_block`] on each request's headers. All logic lives in core.

use portcullis_core::ua_block::{UaBlock, METRICS};
use portcullis_core::{Action as CoreAction, LogLevel};
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
    filter: Option<Rc<UaBlock>>,
    metrics: Rc<Metrics>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(filter) = configure("ua-block", UaBlock::from_json) else {
            return false;
        };
        if filter.is_noop() {
            log(
                LogLevel::Warn,
                "ua-block: no deny patterns and missing_user_agent is allow: every request passes",
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
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    filter: Option<Rc<UaBlock>>,
    host: WasmHost,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Envoy does not create streams for a root whose on_configure failed; should it ever,
        // the request passes (ua-block fails open, like a deny list that matched nothing).
        let Some(filter) = &self.filter else {
            return Action::Continue;
        };
        match filter.on_request_headers(&mut self.host) {
            CoreAction::Continue => Action::Continue,
            CoreAction::Stop => Action::Pause,
        }
    }
}
