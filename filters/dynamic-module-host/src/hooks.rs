//! The event hooks Envoy resolves by name (`envoy_dynamic_module_on_*`). Every one runs inside
//! [`guard`]: a panic is caught, counted, logged and turned into a 500, never unwound into
//! Envoy (which would abort the process).
//!
//! Envoy may re-enter a hook while another one of the same stream runs (a callout that fails
//! at once reports its end from inside the call that started it). The filter sits in a
//! `RefCell`; an event that finds it busy is queued and delivered when the running hook ends.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use portcullis_core::{Action, LogLevel};

use crate::abi::{
    self, body_status, callout_result, headers_status, trailers_status, ConfigEnvoyPtr,
    EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr,
};
use crate::config::{
    CalloutFailure, CalloutResponse, ConfigContext, FilterConfig, StreamFilter, StreamReset,
    StreamResponse,
};
use crate::log::log;
use crate::metrics::Metrics;
use crate::raw::{bytes, concat, copy_headers, slice};
use crate::stream::{send_response, Stream};

/// Builds a filter config from `filter_name` and its JSON. `Err` is the one log line that says
/// which field is wrong and why; Envoy then rejects the config.
pub type Factory = fn(
    filter_name: &str,
    config: &[u8],
    cx: &mut ConfigContext,
) -> Result<Arc<dyn FilterConfig>, String>;

static FACTORY: OnceLock<Factory> = OnceLock::new();

/// `envoy_dynamic_module_on_program_init`, called through [`crate::export_filters`].
pub fn program_init(factory: Factory) -> *const c_char {
    let _ = FACTORY.set(factory);
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        log(LogLevel::Error, &format!("portcullis: panic{at}: {what}"));
    }));
    abi::ABI_VERSION.as_ptr()
}

/// What every stream of one config shares.
struct Shared {
    metrics: Metrics,
    panics: String,
}

struct ConfigBox {
    shared: Arc<Shared>,
    config: Arc<dyn FilterConfig>,
}

enum Event {
    Callout(u64, Result<CalloutResponse, CalloutFailure>),
    Stream(u64, Result<StreamResponse, StreamReset>),
}

struct FilterBox {
    shared: Arc<Shared>,
    filter: RefCell<Box<dyn StreamFilter>>,
    /// Streamed callouts being collected, by stream id.
    streams: RefCell<Vec<(u64, StreamResponse)>>,
    /// Completions that arrived while the filter was busy.
    deferred: RefCell<VecDeque<Event>>,
    /// The request is held (headers returned StopIteration and no reply was sent yet).
    paused: Cell<bool>,
    /// A panic answered this stream with a 500: nothing more runs.
    poisoned: Cell<bool>,
    /// This filter's request-headers hook ran. Envoy runs a stream's encoder hooks for every
    /// filter in the chain, including the filters behind one that answered with a local reply
    /// during decoding, whose request-headers hook never ran. Envoy's wasm filter skips the
    /// response hooks of such a stream (its context is created by decodeHeaders), and proxy-wasm
    /// is the reference: a filter placed after ua-block does not touch ua-block's 403. So the
    /// response hooks (headers, body, trailers) do nothing until this is set.
    saw_request: Cell<bool>,
}

/// A filter for a config whose factory panicked in `new_stream`: it answers 500.
struct Broken;

impl StreamFilter for Broken {
    fn on_request_headers(&mut self, s: &mut Stream<'_>, _eos: bool) -> Action {
        portcullis_core::Host::send_local_response(s, 500, &[], b"internal error\n");
        Action::Stop
    }
}

fn guard<R>(on_panic: impl FnOnce() -> R, f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| on_panic())
}

/// # Safety
/// `ptr` must come from `Box::into_raw` in config_new and not be destroyed yet.
unsafe fn config_ref<'a>(ptr: *const c_void) -> Option<&'a ConfigBox> {
    // SAFETY: forwarded from the caller; Envoy never passes a destroyed config.
    unsafe { ptr.cast::<ConfigBox>().as_ref() }
}

/// # Safety
/// `ptr` must come from `Box::into_raw` in filter_new and not be destroyed yet. Only shared
/// references are made: every mutable part sits in a `Cell`/`RefCell`.
unsafe fn filter_ref<'a>(ptr: *const c_void) -> Option<&'a FilterBox> {
    // SAFETY: forwarded from the caller; Envoy calls a stream's hooks on one worker thread.
    unsafe { ptr.cast::<FilterBox>().as_ref() }
}

impl FilterBox {
    /// Counts, logs and answers a panic with a 500; the stream is poisoned afterwards.
    fn panicked(&self, fe: FilterEnvoyPtr, hook: &str) {
        self.poisoned.set(true);
        self.paused.set(false);
        self.shared.metrics.add(fe, &self.shared.panics, 1);
        log(
            LogLevel::Error,
            &format!("portcullis: a panic in {hook} was answered with 500"),
        );
        send_response(
            fe,
            500,
            &[("content-type", "text/plain")],
            b"internal error\n",
        );
    }

    /// Runs `f` on the filter, or `None` if it is busy (a re-entrant hook).
    fn with<R>(
        &self,
        fe: FilterEnvoyPtr,
        f: impl FnOnce(&mut dyn StreamFilter, &mut Stream<'_>) -> R,
    ) -> Option<R> {
        let mut filter = self.filter.try_borrow_mut().ok()?;
        let mut s = Stream::new(fe, &self.shared.metrics);
        Some(f(&mut **filter, &mut s))
    }

    fn deliver(&self, fe: FilterEnvoyPtr, ev: Event) -> Option<Action> {
        self.with(fe, |f, s| match ev {
            Event::Callout(id, r) => f.on_callout_done(s, id, r),
            Event::Stream(id, r) => f.on_http_stream_done(s, id, r),
        })
    }

    /// Delivers queued completions; the last one's verdict, if any.
    fn drain(&self, fe: FilterEnvoyPtr) -> Option<Action> {
        let mut last = None;
        loop {
            let next = self.deferred.borrow_mut().pop_front();
            match next {
                Some(ev) => last = self.deliver(fe, ev).or(last),
                None => return last,
            }
        }
    }

    /// An asynchronous completion: deliver it (or queue it if a hook is running), then resume
    /// the request if the filter says so. `continue_decoding` runs with no borrow held, since
    /// it may re-enter our hooks.
    fn complete(&self, fe: FilterEnvoyPtr, ev: Event) {
        if self.poisoned.get() {
            return;
        }
        if self.filter.try_borrow_mut().is_err() {
            self.deferred.borrow_mut().push_back(ev);
            return;
        }
        let mut verdict = self.deliver(fe, ev);
        if let Some(later) = self.drain(fe) {
            verdict = Some(later);
        }
        if verdict == Some(Action::Continue) && self.paused.replace(false) {
            // SAFETY: the stream pointer of the running hook; called once per pause.
            unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(fe) };
        }
    }

    fn request_headers(&self, fe: FilterEnvoyPtr, eos: bool) -> u32 {
        self.saw_request.set(true);
        if self.poisoned.get() {
            return headers_status::CONTINUE;
        }
        let Some(mut verdict) = self.with(fe, |f, s| f.on_request_headers(s, eos)) else {
            return headers_status::CONTINUE;
        };
        // A callout that ended inside the call that started it: its verdict is final.
        if let Some(later) = self.drain(fe) {
            verdict = later;
        }
        match verdict {
            Action::Continue => headers_status::CONTINUE,
            Action::Stop => {
                self.paused.set(true);
                headers_status::STOP_ITERATION
            }
        }
    }

    fn response_headers(&self, fe: FilterEnvoyPtr, eos: bool) -> u32 {
        // A reply to a request this filter never saw (see `saw_request`): not ours to change.
        if self.poisoned.get() || !self.saw_request.get() {
            return headers_status::CONTINUE;
        }
        match self.with(fe, |f, s| f.on_response_headers(s, eos)) {
            Some(Action::Stop) => headers_status::STOP_ITERATION,
            _ => headers_status::CONTINUE,
        }
    }

    fn stream_event(&self, id: u64, f: impl FnOnce(&mut StreamResponse)) {
        let mut streams = self.streams.borrow_mut();
        match streams.iter_mut().find(|(s, _)| *s == id) {
            Some((_, r)) => f(r),
            None => {
                let mut r = StreamResponse::default();
                f(&mut r);
                streams.push((id, r));
            }
        }
    }

    fn take_stream(&self, id: u64) -> StreamResponse {
        let mut streams = self.streams.borrow_mut();
        match streams.iter().position(|(s, _)| *s == id) {
            Some(i) => streams.swap_remove(i).1,
            None => StreamResponse::default(),
        }
    }
}

// ---- config ----

/// `envoy_dynamic_module_on_http_filter_config_new`: null rejects the config.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard(
        || {
            log(
                LogLevel::Error,
                "portcullis: a panic while creating the filter config; rejected",
            );
            std::ptr::null()
        },
        || {
            // SAFETY: Envoy lends both buffers for the length of this hook; copied here.
            let (name, config) = unsafe {
                (
                    bytes(name.ptr, name.len).to_vec(),
                    bytes(config.ptr, config.len).to_vec(),
                )
            };
            let Ok(name) = String::from_utf8(name) else {
                log(LogLevel::Error, "portcullis: filter_name is not UTF-8");
                return std::ptr::null();
            };
            let Some(factory) = FACTORY.get() else {
                log(
                    LogLevel::Error,
                    "portcullis: the library was not initialised",
                );
                return std::ptr::null();
            };
            let mut cx = ConfigContext::new(config_envoy);
            let built = factory(&name, &config, &mut cx);
            let filter_config = match built {
                Ok(c) => c,
                Err(line) => {
                    log(LogLevel::Error, &line);
                    return std::ptr::null();
                }
            };
            let panics = format!("portcullis_{name}_panics_total");
            // The panic counter joins the filter's own names in one definition pass.
            let metrics = cx.metrics.take().unwrap_or_default();
            let metrics = metrics.with(config_envoy, &panics);
            let boxed = Box::new(ConfigBox {
                shared: Arc::new(Shared { metrics, panics }),
                config: filter_config,
            });
            Box::into_raw(boxed).cast_const().cast()
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guard(
        || (),
        || {
            if config.is_null() {
                return;
            }
            // SAFETY: `config` came from Box::into_raw in config_new; Envoy destroys it once.
            let boxed = unsafe { Box::from_raw(config.cast::<ConfigBox>().cast_mut()) };
            boxed.config.shutdown();
            drop(boxed);
        },
    )
}

/// Per-route configs are not used (Envoy Gateway enables filters per route with an empty
/// `FilterConfig`); a `DynamicModuleFilterPerRoute` is rejected with a reason.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    guard(std::ptr::null, || {
        log(
            LogLevel::Error,
            "portcullis: per-route config (DynamicModuleFilterPerRoute) is not supported; configure the filter itself",
        );
        std::ptr::null()
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _config: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoyPtr,
    config: *const c_void,
    event_id: u64,
) {
    guard(
        || (),
        || {
            // SAFETY: Envoy passes the live config this scheduler belongs to.
            if let Some(c) = unsafe { config_ref(config) } {
                c.config
                    .on_scheduled(&mut ConfigContext::new(config_envoy), event_id);
            }
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: ConfigEnvoyPtr,
    config: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    guard(
        || (),
        || {
            // SAFETY: headers and body chunks are valid until this hook returns; copied now.
            let r = unsafe { callout_outcome(result, headers, headers_size, body, body_size) };
            // SAFETY: Envoy passes the live config that made the callout.
            if let Some(c) = unsafe { config_ref(config) } {
                c.config
                    .on_callout_done(&mut ConfigContext::new(config_envoy), callout_id, r);
            }
        },
    )
}

/// # Safety
/// The pointers must satisfy [`slice`]'s contract for this hook.
unsafe fn callout_outcome(
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) -> Result<CalloutResponse, CalloutFailure> {
    match result {
        callout_result::SUCCESS => {
            // SAFETY: forwarded from the caller.
            let (h, b) = unsafe { (slice(headers, headers_size), slice(body, body_size)) };
            // SAFETY: as above, for every entry.
            let mut r = unsafe {
                CalloutResponse {
                    status: 0,
                    headers: copy_headers(h),
                    body: concat(b),
                }
            };
            r.status_from_headers();
            Ok(r)
        }
        callout_result::RESET => Err(CalloutFailure::Reset),
        callout_result::EXCEED_RESPONSE_BUFFER_LIMIT => {
            Err(CalloutFailure::ExceedResponseBufferLimit)
        }
        other => Err(CalloutFailure::Other(other)),
    }
}

// ---- streams ----

/// `envoy_dynamic_module_on_http_filter_new`: never null (Envoy would dereference it).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: FilterEnvoyPtr,
) -> *const c_void {
    // SAFETY: Envoy passes a config it created with config_new and has not destroyed.
    let Some(c) = (unsafe { config_ref(config) }) else {
        // Unreachable in practice; a stream still gets a filter that answers 500.
        let shared = Arc::new(Shared {
            metrics: Metrics::default(),
            panics: String::new(),
        });
        return new_box(shared, Box::new(Broken));
    };
    let filter = guard(
        || -> Box<dyn StreamFilter> {
            log(
                LogLevel::Error,
                "portcullis: a panic while creating a stream filter",
            );
            Box::new(Broken)
        },
        || c.config.new_stream(),
    );
    new_box(c.shared.clone(), filter)
}

fn new_box(shared: Arc<Shared>, filter: Box<dyn StreamFilter>) -> *const c_void {
    let b = Box::new(FilterBox {
        shared,
        filter: RefCell::new(filter),
        streams: RefCell::new(Vec::new()),
        deferred: RefCell::new(VecDeque::new()),
        paused: Cell::new(false),
        poisoned: Cell::new(false),
        saw_request: Cell::new(false),
    });
    Box::into_raw(b).cast_const().cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    guard(
        || (),
        || {
            if !filter.is_null() {
                // SAFETY: from Box::into_raw in filter_new; Envoy destroys each stream once.
                drop(unsafe { Box::from_raw(filter.cast::<FilterBox>().cast_mut()) });
            }
        },
    )
}

/// Runs a stream hook under the guard; `on_panic` is what the hook returns after a panic.
fn stream_hook<R: Copy>(
    fe: FilterEnvoyPtr,
    fm: *const c_void,
    hook: &str,
    on_panic: R,
    otherwise: R,
    f: impl FnOnce(&FilterBox) -> R,
) -> R {
    // SAFETY: Envoy passes the stream's live filter pointer.
    let Some(fb) = (unsafe { filter_ref(fm) }) else {
        return otherwise;
    };
    guard(
        || {
            fb.panicked(fe, hook);
            on_panic
        },
        || f(fb),
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    fe: FilterEnvoyPtr,
    fm: *const c_void,
    end_of_stream: bool,
) -> u32 {
    stream_hook(
        fe,
        fm,
        "request_headers",
        headers_status::STOP_ITERATION,
        headers_status::CONTINUE,
        |fb| fb.request_headers(fe, end_of_stream),
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    fe: FilterEnvoyPtr,
    fm: *const c_void,
    end_of_stream: bool,
) -> u32 {
    stream_hook(
        fe,
        fm,
        "response_headers",
        headers_status::STOP_ITERATION,
        headers_status::CONTINUE,
        |fb| fb.response_headers(fe, end_of_stream),
    )
}

/// While the request is held for a callout, its body is held too: continuing it would let the
/// request through unchecked.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    fe: FilterEnvoyPtr,
    fm: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    stream_hook(
        fe,
        fm,
        "request_body",
        body_status::STOP_ITERATION_NO_BUFFER,
        body_status::CONTINUE,
        |fb| {
            if fb.paused.get() {
                body_status::STOP_ITERATION_AND_BUFFER
            } else {
                body_status::CONTINUE
            }
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    fe: FilterEnvoyPtr,
    fm: *const c_void,
) -> u32 {
    stream_hook(
        fe,
        fm,
        "request_trailers",
        trailers_status::STOP_ITERATION,
        trailers_status::CONTINUE,
        |fb| {
            if fb.paused.get() {
                trailers_status::STOP_ITERATION
            } else {
                trailers_status::CONTINUE
            }
        },
    )
}

// The hooks below return a constant and call nothing: they cannot panic, so they need no guard.
// The response body and trailers hooks pass everything on, so a stream this filter never saw
// the request of (`FilterBox::saw_request`) is left alone here as well. If they ever call into
// the filter, they must check `saw_request` as `response_headers` does.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _fe: FilterEnvoyPtr,
    _fm: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    body_status::CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _fe: FilterEnvoyPtr,
    _fm: *const c_void,
) -> u32 {
    trailers_status::CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _fe: FilterEnvoyPtr,
    _fm: *const c_void,
) {
}

/// Stream schedulers are not used.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _fe: FilterEnvoyPtr,
    _fm: *const c_void,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _fe: FilterEnvoyPtr,
    _fm: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _fe: FilterEnvoyPtr,
    _fm: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    fe: FilterEnvoyPtr,
    fm: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    stream_hook(fe, fm, "http_callout_done", (), (), |fb| {
        // SAFETY: valid until this hook returns; copied now.
        let r = unsafe { callout_outcome(result, headers, headers_size, body, body_size) };
        fb.complete(fe, Event::Callout(callout_id, r));
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    fe: FilterEnvoyPtr,
    fm: *const c_void,
    stream_id: u64,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    _end_stream: bool,
) {
    stream_hook(fe, fm, "http_stream_headers", (), (), |fb| {
        // SAFETY: valid until this hook returns; copied now.
        let h = unsafe { copy_headers(slice(headers, headers_size)) };
        fb.stream_event(stream_id, |r| r.headers.extend(h));
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    fe: FilterEnvoyPtr,
    fm: *const c_void,
    stream_id: u64,
    data: *const EnvoyBuffer,
    data_count: usize,
    _end_stream: bool,
) {
    stream_hook(fe, fm, "http_stream_data", (), (), |fb| {
        // SAFETY: valid until this hook returns; copied now.
        let d = unsafe { concat(slice(data, data_count)) };
        fb.stream_event(stream_id, |r| r.body.extend_from_slice(&d));
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    fe: FilterEnvoyPtr,
    fm: *const c_void,
    stream_id: u64,
    trailers: *const EnvoyHttpHeader,
    trailers_size: usize,
) {
    stream_hook(fe, fm, "http_stream_trailers", (), (), |fb| {
        // SAFETY: valid until this hook returns; copied now.
        let t = unsafe { copy_headers(slice(trailers, trailers_size)) };
        fb.stream_event(stream_id, |r| r.trailers.extend(t));
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    fe: FilterEnvoyPtr,
    fm: *const c_void,
    stream_id: u64,
) {
    stream_hook(fe, fm, "http_stream_complete", (), (), |fb| {
        let r = fb.take_stream(stream_id);
        fb.complete(fe, Event::Stream(stream_id, Ok(r)));
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    fe: FilterEnvoyPtr,
    fm: *const c_void,
    stream_id: u64,
    reason: u32,
) {
    stream_hook(fe, fm, "http_stream_reset", (), (), |fb| {
        let _ = fb.take_stream(stream_id);
        fb.complete(fe, Event::Stream(stream_id, Err(StreamReset(reason))));
    })
}
