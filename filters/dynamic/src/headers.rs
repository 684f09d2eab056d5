//! headers on the dynamic-module host.

use std::sync::Arc;

use portcullis_core::headers::{HeadersFilter, StreamState, METRICS};
use portcullis_core::{Action, LogLevel};
use portcullis_dynamic_module_host::{log, ConfigContext, FilterConfig, Stream, StreamFilter};

pub fn config(raw: &[u8], cx: &mut ConfigContext) -> Result<Arc<dyn FilterConfig>, String> {
    let filter =
        HeadersFilter::from_json(raw).map_err(|e| format!("headers: invalid config: {e}"))?;
    if filter.is_noop() {
        log::log(
            LogLevel::Info,
            "headers: empty config, the filter changes nothing",
        );
    }
    cx.define_counters(METRICS);
    Ok(Arc::new(Config(Arc::new(filter))))
}

struct Config(Arc<HeadersFilter>);

impl FilterConfig for Config {
    fn new_stream(&self) -> Box<dyn StreamFilter> {
        Box::new(Filter {
            filter: self.0.clone(),
            state: StreamState::default(),
        })
    }
}

struct Filter {
    filter: Arc<HeadersFilter>,
    /// Learned in the request phase (the scheme), used in the response phase.
    state: StreamState,
}

impl StreamFilter for Filter {
    fn on_request_headers(&mut self, s: &mut Stream<'_>, _eos: bool) -> Action {
        self.state = self.filter.on_request_headers(s);
        Action::Continue
    }

    fn on_response_headers(&mut self, s: &mut Stream<'_>, _eos: bool) -> Action {
        self.filter.on_response_headers(s, self.state);
        Action::Continue
    }
}
