//! ua-block on the dynamic-module host.

use std::sync::Arc;

use portcullis_core::ua_block::{UaBlock, METRICS};
use portcullis_core::{Action, LogLevel};
use portcullis_dynamic_module_host::{log, ConfigContext, FilterConfig, Stream, StreamFilter};

pub fn config(raw: &[u8], cx: &mut ConfigContext) -> Result<Arc<dyn FilterConfig>, String> {
    let filter = UaBlock::from_json(raw).map_err(|e| format!("ua-block: invalid config: {e}"))?;
    if filter.is_noop() {
        log::log(
            LogLevel::Warn,
            "ua-block: no deny patterns and missing_user_agent is allow: every request passes",
        );
    }
    cx.define_counters(METRICS);
    Ok(Arc::new(Config(Arc::new(filter))))
}

struct Config(Arc<UaBlock>);

impl FilterConfig for Config {
    fn new_stream(&self) -> Box<dyn StreamFilter> {
        Box::new(Filter(self.0.clone()))
    }
}

struct Filter(Arc<UaBlock>);

impl StreamFilter for Filter {
    fn on_request_headers(&mut self, s: &mut Stream<'_>, _eos: bool) -> Action {
        self.0.on_request_headers(s)
    }
}
