//! ratelimit on the dynamic-module host.
//!
//! Local rules take tokens from process-wide buckets (every worker shares them, exactly, with
//! no compare-and-swap). Global rules call the rate-limit service over a streamed HTTP/2
//! callout with unary gRPC framing, since the ABI has no gRPC client: `grpc-status` arrives in
//! the trailers, which one-shot callouts do not expose.

use std::sync::{Arc, Once};

use portcullis_core::ratelimit::engine::COUNTERS;
use portcullis_core::ratelimit::{proto, Decision, GlobalResult, RateLimiter, RequestState};
use portcullis_core::Action;
use portcullis_dynamic_module_host::{
    ConfigContext, FilterConfig, Stream, StreamFilter, StreamReset, StreamResponse,
};

pub fn config(raw: &[u8], cx: &mut ConfigContext) -> Result<Arc<dyn FilterConfig>, String> {
    let limiter =
        RateLimiter::from_json(raw).map_err(|e| format!("ratelimit: invalid config: {e}"))?;
    cx.define_counters(&COUNTERS);
    Ok(Arc::new(Config(Arc::new(Shared {
        limiter,
        bound: Once::new(),
    }))))
}

struct Shared {
    limiter: RateLimiter,
    /// Local rules are bound to the process buckets by the first stream (binding needs a host).
    bound: Once,
}

struct Config(Arc<Shared>);

impl FilterConfig for Config {
    fn new_stream(&self) -> Box<dyn StreamFilter> {
        Box::new(Filter {
            shared: self.0.clone(),
            state: RequestState::default(),
            pending: None,
        })
    }
}

struct Filter {
    shared: Arc<Shared>,
    state: RequestState,
    /// The rate-limit service stream in flight.
    pending: Option<u64>,
}

fn decision(d: Decision) -> Action {
    match d {
        Decision::Continue => Action::Continue,
        _ => Action::Stop,
    }
}

/// The service's answer from a finished gRPC stream.
fn global_result(r: Result<StreamResponse, StreamReset>) -> GlobalResult {
    let resp = match r {
        Ok(resp) => resp,
        Err(reset) => return GlobalResult::Error(format!("stream {reset}")),
    };
    let status = resp.field(":status").unwrap_or_default();
    if status != b"200" {
        return GlobalResult::Error(format!("HTTP status {}", String::from_utf8_lossy(status)));
    }
    match resp.field("grpc-status") {
        Some(b"0") => {}
        Some(code) => {
            let msg = resp.field("grpc-message").unwrap_or_default();
            return GlobalResult::Error(format!(
                "gRPC status {} {}",
                String::from_utf8_lossy(code),
                String::from_utf8_lossy(msg)
            ));
        }
        None => return GlobalResult::Error("no grpc-status".into()),
    }
    match proto::grpc_unframe(&resp.body) {
        Ok(msg) => proto::decode_response(msg),
        Err(e) => GlobalResult::Error(e),
    }
}

impl StreamFilter for Filter {
    fn on_request_headers(&mut self, s: &mut Stream<'_>, _eos: bool) -> Action {
        let shared = &*self.shared;
        // Binding cannot fail with process buckets: no shared data is written.
        shared.bound.call_once(|| {
            let _ = shared.limiter.init(s);
        });
        let limiter = &shared.limiter;
        match limiter.on_request(s, &mut self.state) {
            Decision::CallGlobal(req) => {
                let body = proto::grpc_frame(&proto::encode_request(&req));
                let headers = [
                    (":method", "POST"),
                    (":path", proto::PATH),
                    (":authority", req.cluster.as_str()),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                ];
                match s.start_http_stream(&req.cluster, &headers, &body, true, req.timeout_ms) {
                    Ok(id) => {
                        self.pending = Some(id);
                        Action::Stop
                    }
                    Err(e) => {
                        let why = format!("cannot call cluster {:?}: {e}", req.cluster);
                        decision(limiter.on_global(s, &mut self.state, GlobalResult::Error(why)))
                    }
                }
            }
            d => decision(d),
        }
    }

    fn on_http_stream_done(
        &mut self,
        s: &mut Stream<'_>,
        id: u64,
        result: Result<StreamResponse, StreamReset>,
    ) -> Action {
        if self.pending != Some(id) {
            return Action::Stop;
        }
        self.pending = None;
        decision(
            self.shared
                .limiter
                .on_global(s, &mut self.state, global_result(result)),
        )
    }

    fn on_response_headers(&mut self, s: &mut Stream<'_>, _eos: bool) -> Action {
        self.shared.limiter.on_response(s, &self.state);
        Action::Continue
    }
}
