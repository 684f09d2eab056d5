//! Filter configs: what a filter implements ([`FilterConfig`], [`StreamFilter`]) and what the
//! host offers it on the main thread ([`ConfigContext`], [`ConfigScheduler`]).

use portcullis_core::Action;

use crate::abi::{self, ConfigEnvoyPtr, ModuleBuffer, SchedulerPtr};
use crate::metrics::Metrics;
use crate::stream::{callout_result, module_headers, CalloutError, Stream};

/// A one-shot callout's answer, copied out of Envoy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalloutResponse {
    /// `:status`, 0 if missing or not a number.
    pub status: u32,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl CalloutResponse {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn status_from_headers(&mut self) {
        self.status = self
            .header(":status")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
}

/// Why a one-shot callout has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutFailure {
    /// Connection failure, timeout or reset.
    Reset,
    ExceedResponseBufferLimit,
    Other(u32),
}

impl std::fmt::Display for CalloutFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reset => f.write_str("reset (connection failure or timeout)"),
            Self::ExceedResponseBufferLimit => f.write_str("response exceeds the buffer limit"),
            Self::Other(rc) => write!(f, "failed ({rc})"),
        }
    }
}

/// A streamed callout's whole answer: headers, body and trailers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamResponse {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl StreamResponse {
    /// A header, else a trailer, of that name (gRPC puts `grpc-status` in either).
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .chain(&self.trailers)
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// A streamed callout that ended without completing; the ABI's reset reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamReset(pub u32);

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.0 {
            0 => "connection failure",
            1 => "connection termination",
            2 => "local reset (timeout)",
            3 => "local refused stream reset",
            4 => "overflow",
            5 => "remote reset",
            6 => "remote refused stream reset",
            7 => "protocol error",
            _ => "reset",
        };
        f.write_str(why)
    }
}

/// One filter on one HTTP stream, on its worker thread. Every method runs inside the host's
/// panic guard. `Action::Stop` from a header hook means "I answered, or I am waiting for a
/// callout"; from a completion it means "stay paused" (or "I answered").
pub trait StreamFilter {
    fn on_request_headers(&mut self, _s: &mut Stream<'_>, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    fn on_response_headers(&mut self, _s: &mut Stream<'_>, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    /// A callout from [`Stream::http_callout`] ended. `Continue` resumes the request.
    fn on_callout_done(
        &mut self,
        _s: &mut Stream<'_>,
        _id: u64,
        _result: Result<CalloutResponse, CalloutFailure>,
    ) -> Action {
        Action::Stop
    }
    /// A stream from [`Stream::start_http_stream`] ended. `Continue` resumes the request.
    fn on_http_stream_done(
        &mut self,
        _s: &mut Stream<'_>,
        _id: u64,
        _result: Result<StreamResponse, StreamReset>,
    ) -> Action {
        Action::Stop
    }
}

/// One filter config: created on the main thread, shared by every worker.
pub trait FilterConfig: Send + Sync {
    fn new_stream(&self) -> Box<dyn StreamFilter>;
    /// A [`ConfigScheduler`] commit arrived, on the main thread.
    fn on_scheduled(&self, _cx: &mut ConfigContext, _event_id: u64) {}
    /// A [`ConfigContext::http_callout`] ended, on the main thread.
    fn on_callout_done(
        &self,
        _cx: &mut ConfigContext,
        _id: u64,
        _result: Result<CalloutResponse, CalloutFailure>,
    ) {
    }
    /// Envoy is destroying the config: stop and join any thread the config started.
    fn shutdown(&self) {}
}

/// The config's Envoy handle, valid on the main thread for the length of one hook.
pub struct ConfigContext {
    pub(crate) envoy: ConfigEnvoyPtr,
    pub(crate) metrics: Option<Metrics>,
}

impl ConfigContext {
    pub(crate) fn new(envoy: ConfigEnvoyPtr) -> Self {
        Self {
            envoy,
            metrics: None,
        }
    }

    /// Defines the config's counters. Only in the factory (Envoy freezes stats afterwards).
    pub fn define_counters(&mut self, names: &[&str]) {
        self.metrics = Some(Metrics::define(self.envoy, names));
    }

    /// A one-shot HTTP call from the main thread; the answer arrives in
    /// [`FilterConfig::on_callout_done`].
    pub fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, CalloutError> {
        let mut hs = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: `envoy` is the config pointer of the running main-thread hook; every buffer
        // outlives the call and Envoy copies them.
        let rc = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.envoy,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                hs.as_mut_ptr(),
                hs.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        callout_result(rc, id)
    }

    /// A handle any thread may use to wake the config on the main thread.
    pub fn scheduler(&mut self) -> Option<ConfigScheduler> {
        // SAFETY: `envoy` is the config pointer of the running hook.
        let ptr = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.envoy)
        };
        (!ptr.is_null()).then_some(ConfigScheduler { ptr })
    }
}

/// Runs [`FilterConfig::on_scheduled`] on the main thread, from any thread. Deleted on drop.
pub struct ConfigScheduler {
    ptr: SchedulerPtr,
}

// SAFETY: Envoy's config scheduler is built for cross-thread use: `commit` posts to the main
// dispatcher and may be called from any thread; delete happens once, from drop.
unsafe impl Send for ConfigScheduler {}
// SAFETY: as above; `commit` takes no lock the caller could hold.
unsafe impl Sync for ConfigScheduler {}

impl ConfigScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: `ptr` came from scheduler_new and is deleted only in drop.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                self.ptr, event_id,
            )
        }
    }
}

impl Drop for ConfigScheduler {
    fn drop(&mut self) {
        // SAFETY: deleted exactly once; after this no commit can reach it (we own it).
        unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.ptr) }
    }
}
