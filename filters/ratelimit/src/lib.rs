//! Portcullis rate-limit filter (proxy-wasm): thin glue around `portcullis_core::ratelimit`.
//!
//! - configure: parse and validate the JSON config (a bad one fails `on_configure`), define
//!   the counters, create the shared-data slots, start the tick that collects idle buckets;
//! - request headers: local rules decide at once; global rules pause the request for one
//!   `ShouldRateLimit` gRPC call to `global.cluster`;
//! - response headers: add the rate-limit headers.

use std::rc::Rc;
use std::time::Duration;

use portcullis_core::ratelimit::{proto, Decision, GlobalResult, RateLimiter, RequestState};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use portcullis_core::ratelimit::engine::COUNTERS;
use portcullis_proxy_wasm::{log, Metrics, WasmHost};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// The tenant whose policy configured this plugin: the first segment of the plugin name, which
/// the controller sets to `<namespace>/<policy>/...` and no policy config can choose. VMs are
/// shared per module digest, so shared-data keys must carry it.
fn tenant() -> String {
    let name = proxy_wasm::hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .unwrap_or_default();
    let name = String::from_utf8_lossy(&name);
    name.split('/').next().unwrap_or_default().to_string()
}

#[derive(Default)]
struct Root {
    limiter: Option<Rc<RateLimiter>>,
    metrics: Rc<Metrics>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let limiter = match RateLimiter::from_json_for_tenant(&raw, &tenant()) {
            Ok(l) => l,
            Err(e) => {
                log(
                    portcullis_core::LogLevel::Error,
                    &format!("ratelimit: invalid config: {e}"),
                );
                return false;
            }
        };
        self.metrics = Metrics::define(&COUNTERS);
        let mut h = WasmHost::new(self.metrics.clone());
        if let Err(e) = limiter.init(&mut h) {
            log(
                portcullis_core::LogLevel::Error,
                &format!("ratelimit: cannot create shared data: {e}"),
            );
            return false;
        }
        if limiter.config().has_local() {
            let period = Duration::from_millis(limiter.config().local.gc_interval_ms);
            if let Err(e) = proxy_wasm::hostcalls::set_tick_period(period) {
                log(
                    portcullis_core::LogLevel::Error,
                    &format!("ratelimit: cannot set tick period: {e:?}"),
                );
                return false;
            }
        }
        self.limiter = Some(Rc::new(limiter));
        true
    }

    fn on_tick(&mut self) {
        if let Some(l) = &self.limiter {
            l.tick(&mut WasmHost::new(self.metrics.clone()));
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let limiter = self.limiter.clone()?;
        Some(Box::new(Http {
            limiter,
            metrics: self.metrics.clone(),
            state: RequestState::default(),
            pending: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    limiter: Rc<RateLimiter>,
    metrics: Rc<Metrics>,
    state: RequestState,
    /// Token of the rate-limit service call in flight.
    pending: Option<u32>,
}

impl Http {
    fn host(&self) -> WasmHost {
        WasmHost::new(self.metrics.clone())
    }

    fn finish_global(&mut self, result: GlobalResult) -> Decision {
        let mut h = self.host();
        self.limiter.on_global(&mut h, &mut self.state, result)
    }
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if self.pending != Some(token_id) {
            return;
        }
        self.pending = None;
        let result = if status_code != 0 {
            GlobalResult::Error(format!("gRPC status {status_code}"))
        } else {
            let body = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            proto::decode_response(&body)
        };
        if self.finish_global(result) == Decision::Continue {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut h = self.host();
        match self.limiter.on_request(&mut h, &mut self.state) {
            Decision::Continue => Action::Continue,
            Decision::Limited => Action::Pause,
            Decision::CallGlobal(req) => {
                let body = proto::encode_request(&req);
                match self.dispatch_grpc_call(
                    &req.cluster,
                    proto::SERVICE,
                    proto::METHOD,
                    Vec::new(),
                    Some(&body),
                    Duration::from_millis(req.timeout_ms),
                ) {
                    Ok(token) => {
                        self.pending = Some(token);
                        Action::Pause
                    }
                    Err(status) => {
                        let why = format!("cannot call cluster {:?}: {status:?}", req.cluster);
                        match self.finish_global(GlobalResult::Error(why)) {
                            Decision::Continue => Action::Continue,
                            _ => Action::Pause,
                        }
                    }
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut h = self.host();
        self.limiter.on_response(&mut h, &self.state);
        Action::Continue
    }
}
