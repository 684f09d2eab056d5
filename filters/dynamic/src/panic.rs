//! Test only (feature `test-panic`): a filter that panics where its config says, to prove the
//! host's panic guard. Config: `{"in": "request_headers" | "response_headers"}`.

use std::sync::Arc;

use portcullis_core::Action;
use portcullis_dynamic_module_host::{ConfigContext, FilterConfig, Stream, StreamFilter};

pub fn config(raw: &[u8], _cx: &mut ConfigContext) -> Result<Arc<dyn FilterConfig>, String> {
    let text = std::str::from_utf8(raw).unwrap_or_default();
    let on_response = text.contains("response_headers");
    Ok(Arc::new(Config { on_response }))
}

struct Config {
    on_response: bool,
}

impl FilterConfig for Config {
    fn new_stream(&self) -> Box<dyn StreamFilter> {
        Box::new(Filter {
            on_response: self.on_response,
        })
    }
}

struct Filter {
    on_response: bool,
}

impl StreamFilter for Filter {
    fn on_request_headers(&mut self, _s: &mut Stream<'_>, _eos: bool) -> Action {
        assert!(self.on_response, "test panic in request_headers");
        Action::Continue
    }

    fn on_response_headers(&mut self, _s: &mut Stream<'_>, _eos: bool) -> Action {
        panic!("test panic in response_headers");
    }
}
