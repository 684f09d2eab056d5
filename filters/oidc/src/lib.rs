//! Portcullis oidc filter (proxy-wasm glue).
//!
//! All logic lives in `portcullis_core::oidc`; this file only maps it to proxy-wasm: the root
//! context keeps per-worker provider state (discovery, JWKS, bearer cache) fresh on a timer,
//! and each HTTP context drives a [`RequestFlow`], performing its provider calls with
//! `dispatch_http_call` while the request is paused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use portcullis_core::oidc::{
    metrics, Action as FlowAction, CallKind, Callout, Provider, RequestFlow, Settings,
};
use portcullis_core::LogLevel;
use portcullis_proxy_wasm::{log, plugin_config, Metrics, WasmHost};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel as WasmLogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(WasmLogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

const TICK: Duration = Duration::from_secs(1);

fn now_secs() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sends a provider call to `cluster`; returns the call token.
fn dispatch(settings: &Settings, call: &Callout) -> Result<u32, String> {
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", &call.method),
        (":path", &call.path),
        (":authority", &call.authority),
    ];
    for (k, v) in &call.headers {
        headers.push((k, v));
    }
    hostcalls::dispatch_http_call(
        &settings.config.provider_cluster,
        headers,
        call.body.as_deref(),
        vec![],
        Duration::from_millis(settings.config.provider_timeout_ms),
    )
    .map_err(|s| {
        format!(
            "dispatch_http_call to cluster {:?} failed: {s:?}",
            settings.config.provider_cluster
        )
    })
}

/// Status and body of the call answer being delivered (status 0 when it failed or timed out).
fn call_answer(body_size: usize) -> (u32, Vec<u8>) {
    // Bytes getter: the string one panics on non-UTF-8 values.
    let status = hostcalls::get_map_value_bytes(
        proxy_wasm::types::MapType::HttpCallResponseHeaders,
        ":status",
    )
    .ok()
    .flatten()
    .and_then(|b| String::from_utf8(b).ok())
    .and_then(|s| s.parse().ok())
    .unwrap_or(0);
    let body = hostcalls::get_buffer(
        proxy_wasm::types::BufferType::HttpCallResponseBody,
        0,
        body_size,
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    (status, body)
}

#[derive(Default)]
struct Root {
    provider: Option<Rc<RefCell<Provider>>>,
    metrics: Option<Rc<Metrics>>,
    calls: HashMap<u32, CallKind>,
    was_ready: bool,
}

impl Root {
    fn poll(&mut self) {
        let Some(provider) = self.provider.clone() else {
            return;
        };
        let now = now_secs();
        let mut p = provider.borrow_mut();
        if let Some(call) = p.poll(now) {
            match dispatch(&p.settings, &call) {
                Ok(token) => {
                    self.calls.insert(token, call.kind);
                }
                Err(e) => {
                    log(LogLevel::Warn, &format!("oidc: {e}"));
                    let _ = p.on_fetch(call.kind, 0, b"", now);
                }
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(kind) = self.calls.remove(&token) else {
            return;
        };
        let Some(provider) = self.provider.clone() else {
            return;
        };
        let (status, body) = call_answer(body_size);
        {
            let mut p = provider.borrow_mut();
            if let Err(e) = p.on_fetch(kind, status, &body, now_secs()) {
                log(
                    LogLevel::Warn,
                    &format!("oidc: {} ({kind:?}): {e}", p.settings.issuer),
                );
            }
            if p.ready() && !self.was_ready {
                self.was_ready = true;
                log(
                    LogLevel::Info,
                    &format!("oidc: provider {} ready", p.settings.issuer),
                );
            }
        }
        // Discovery done: fetch the keys right away rather than on the next tick.
        self.poll();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let settings = match Settings::from_json(&plugin_config()) {
            Ok(s) => s,
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("oidc: invalid config: {}: {}", e.field, e.reason),
                );
                return false;
            }
        };
        let mut names: Vec<String> = vec![
            metrics::LOGINS.into(),
            metrics::SESSIONS_VALID.into(),
            metrics::REFRESH.into(),
            metrics::BEARER_VALID.into(),
            metrics::REJECTED.into(),
        ];
        names.extend(metrics::REASONS.iter().map(|r| metrics::rejected(r)));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.metrics = Some(Metrics::define(&refs));
        self.provider = Some(Rc::new(RefCell::new(Provider::new(std::sync::Arc::new(
            settings,
        )))));
        self.was_ready = false;
        self.set_tick_period(TICK);
        self.poll();
        true
    }

    fn on_tick(&mut self) {
        self.poll();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let provider = self.provider.clone()?;
        let metrics = self.metrics.clone()?;
        Some(Box::new(Http {
            provider,
            host: WasmHost::new(metrics),
            flow: RequestFlow::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    provider: Rc<RefCell<Provider>>,
    host: WasmHost,
    flow: RequestFlow,
}

enum Next {
    Continue,
    Paused,
}

impl Http {
    fn apply(&mut self, action: FlowAction) -> Next {
        match action {
            FlowAction::Continue => Next::Continue,
            FlowAction::Responded => Next::Paused,
            FlowAction::Call(call) => {
                let result = {
                    let p = self.provider.borrow();
                    dispatch(&p.settings, &call)
                };
                if let Err(e) = result {
                    log(LogLevel::Warn, &format!("oidc: {e}"));
                    let _ = hostcalls::send_http_response(
                        503,
                        vec![
                            ("content-type", "text/plain"),
                            ("cache-control", "no-store"),
                        ],
                        Some(b"identity provider unreachable\n"),
                    );
                }
                Next::Paused
            }
        }
    }
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let (status, body) = call_answer(body_size);
        let action = {
            let mut p = self.provider.borrow_mut();
            self.flow
                .on_callout_response(&mut self.host, &mut p, status, &body)
        };
        if let Next::Continue = self.apply(action) {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let action = {
            let mut p = self.provider.borrow_mut();
            self.flow.on_request_headers(&mut self.host, &mut p)
        };
        match self.apply(action) {
            Next::Continue => Action::Continue,
            Next::Paused => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.flow.on_response_headers(&mut self.host);
        Action::Continue
    }
}
