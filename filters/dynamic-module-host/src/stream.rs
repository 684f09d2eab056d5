//! [`Stream`]: one HTTP stream as a hook sees it, and [`portcullis_core::Host`] over it.

use std::time::SystemTime;

use portcullis_core::ratelimit::process::ProcessBuckets;
use portcullis_core::ratelimit::RateLimitHost;
use portcullis_core::{Direction, Host, LogLevel, SharedDataError, SharedValue};

use crate::abi::{
    self, attribute, callout_init, header_type, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr,
    ModuleBuffer, ModuleHttpHeader,
};
use crate::metrics::Metrics;
use crate::raw::{bytes, lossy};
use crate::{log, shared};

/// Why Envoy refused to start a callout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutError {
    MissingRequiredHeaders,
    ClusterNotFound,
    DuplicateCalloutId,
    /// E.g. no healthy host in the cluster.
    CannotCreateRequest,
    Other(u32),
}

impl std::fmt::Display for CalloutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingRequiredHeaders => f.write_str("missing :method, :path or host"),
            Self::ClusterNotFound => f.write_str("cluster not found"),
            Self::DuplicateCalloutId => f.write_str("duplicate callout id"),
            Self::CannotCreateRequest => f.write_str("cannot create request"),
            Self::Other(rc) => write!(f, "callout failed ({rc})"),
        }
    }
}

impl std::error::Error for CalloutError {}

pub(crate) fn callout_result(rc: u32, id: u64) -> Result<u64, CalloutError> {
    match rc {
        callout_init::SUCCESS => Ok(id),
        callout_init::MISSING_REQUIRED_HEADERS => Err(CalloutError::MissingRequiredHeaders),
        callout_init::CLUSTER_NOT_FOUND => Err(CalloutError::ClusterNotFound),
        callout_init::DUPLICATE_CALLOUT_ID => Err(CalloutError::DuplicateCalloutId),
        callout_init::CANNOT_CREATE_REQUEST => Err(CalloutError::CannotCreateRequest),
        other => Err(CalloutError::Other(other)),
    }
}

/// Module-owned header views for one call; `pairs` must outlive the call.
pub(crate) fn module_headers(pairs: &[(&str, &str)]) -> Vec<ModuleHttpHeader> {
    pairs
        .iter()
        .map(|(k, v)| ModuleHttpHeader::of(k.as_bytes(), v.as_bytes()))
        .collect()
}

fn map(dir: Direction) -> u32 {
    match dir {
        Direction::Request => header_type::REQUEST_HEADER,
        Direction::Response => header_type::RESPONSE_HEADER,
    }
}

/// The process-wide local rate-limit buckets (one per loaded copy of the library).
static PROCESS_BUCKETS: ProcessBuckets = ProcessBuckets::new();

/// One HTTP stream during one hook. It holds Envoy's stream pointer, so it never outlives the
/// hook that made it.
pub struct Stream<'a> {
    envoy: FilterEnvoyPtr,
    metrics: &'a Metrics,
}

impl<'a> Stream<'a> {
    pub(crate) fn new(envoy: FilterEnvoyPtr, metrics: &'a Metrics) -> Self {
        Self { envoy, metrics }
    }

    /// A one-shot HTTP call to `cluster`; the answer arrives in
    /// [`crate::StreamFilter::on_callout_done`] with the returned id. `headers` must include
    /// `:method`, `:path` and `host`.
    pub fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, CalloutError> {
        let mut hs = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: every buffer outlives the call; Envoy copies headers and body before returning.
        let rc = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_http_callout(
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

    /// A streamed HTTP call (needed for gRPC, whose status comes in trailers). Events are
    /// collected by the host and delivered once, as
    /// [`crate::StreamFilter::on_http_stream_done`].
    pub fn start_http_stream(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        end_stream: bool,
        timeout_ms: u64,
    ) -> Result<u64, CalloutError> {
        let mut hs = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: as in `http_callout`.
        let rc = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_start_http_stream(
                self.envoy,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                hs.as_mut_ptr(),
                hs.len(),
                ModuleBuffer::of(body),
                end_stream,
                timeout_ms,
            )
        };
        callout_result(rc, id)
    }
}

impl Host for Stream<'_> {
    fn header(&self, dir: Direction, name: &str) -> Option<String> {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: `out` is writable; the key outlives the call; optional_size may be null.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_get_header(
                self.envoy,
                map(dir),
                ModuleBuffer::of(name.as_bytes()),
                &mut out,
                0,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: Envoy's value stays valid until the map changes; it is copied right here.
        found.then(|| lossy(unsafe { bytes(out.ptr, out.len) }))
    }

    fn headers(&self, dir: Direction) -> Vec<(String, String)> {
        // SAFETY: a size query on the running hook's stream.
        let n = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(self.envoy, map(dir))
        };
        if n == 0 {
            return Vec::new();
        }
        let empty = EnvoyHttpHeader {
            key_ptr: std::ptr::null(),
            key_len: 0,
            value_ptr: std::ptr::null(),
            value_len: 0,
        };
        let mut raw = vec![empty; n];
        // SAFETY: `raw` has room for the `n` entries Envoy just counted; nothing changes the
        // map between the two calls (same thread, same hook).
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                self.envoy,
                map(dir),
                raw.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        raw.iter()
            .map(|h| {
                // SAFETY: Envoy filled these from its live map; copied before any change.
                let (k, v) =
                    unsafe { (bytes(h.key_ptr, h.key_len), bytes(h.value_ptr, h.value_len)) };
                (lossy(k), lossy(v))
            })
            .collect()
    }

    /// Note: Envoy's ABI treats an empty value as "remove" (there is no way to set `""`).
    fn set_header(&mut self, dir: Direction, name: &str, value: &str) {
        // SAFETY: both buffers outlive the call; Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.envoy,
                map(dir),
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    fn add_header(&mut self, dir: Direction, name: &str, value: &str) {
        // SAFETY: as in `set_header`.
        unsafe {
            abi::envoy_dynamic_module_callback_http_add_header(
                self.envoy,
                map(dir),
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    fn remove_header(&mut self, dir: Direction, name: &str) {
        // SAFETY: a null value is the ABI's "remove"; the key outlives the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.envoy,
                map(dir),
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer {
                    ptr: std::ptr::null(),
                    len: 0,
                },
            );
        }
    }

    fn send_local_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        send_response(self.envoy, status, headers, body);
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn shared_get(&self, key: &str) -> Option<SharedValue> {
        shared::get(key)
    }

    fn shared_set(
        &mut self,
        key: &str,
        data: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        shared::set(key, data, cas)
    }

    fn counter_add(&mut self, name: &str, by: u64) {
        self.metrics.add(self.envoy, name, by);
    }

    fn log(&self, level: LogLevel, msg: &str) {
        log::log(level, msg);
    }
}

impl RateLimitHost for Stream<'_> {
    fn downstream_address(&self) -> Option<String> {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: `out` is writable; the attribute id is a valid enum value.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.envoy,
                attribute::SOURCE_ADDRESS,
                &mut out,
            )
        };
        // SAFETY: copied before the hook returns.
        ok.then(|| lossy(unsafe { bytes(out.ptr, out.len) }))
    }

    fn process_buckets(&self) -> Option<&'static ProcessBuckets> {
        Some(&PROCESS_BUCKETS)
    }
}

/// A local reply on stream `envoy`. Envoy copies everything before returning.
pub(crate) fn send_response(
    envoy: FilterEnvoyPtr,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut hs = module_headers(headers);
    // SAFETY: `envoy` is the running hook's stream; every buffer outlives the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_send_response(
            envoy,
            u32::from(status),
            hs.as_mut_ptr(),
            hs.len(),
            ModuleBuffer::of(body),
            ModuleBuffer::of(b"portcullis"),
        );
    }
}
