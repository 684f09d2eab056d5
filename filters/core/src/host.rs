//! The small surface a filter needs from its host (proxy-wasm today, Envoy dynamic modules later).
//!
//! Filter logic in this crate is written only against [`Host`], so it can be unit-tested natively
//! with [`crate::testing::MemoryHost`] and served by any adapter.

use std::time::SystemTime;

/// Which header map an operation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Request,
    Response,
}

/// Log levels understood by every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Why a shared-data write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedDataError {
    /// Another worker changed the value since it was read (compare-and-swap lost).
    #[error("compare-and-swap mismatch")]
    CasMismatch,
    /// The host refused the write for another reason.
    #[error("shared data unavailable: {0}")]
    Unavailable(String),
}

/// A value read from host shared data, with the token needed for compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedValue {
    pub data: Vec<u8>,
    pub cas: u32,
}

/// The host surface. Header names are lowercase (HTTP/2 style, as Envoy presents them).
pub trait Host {
    /// First value of a header, if present.
    fn header(&self, dir: Direction, name: &str) -> Option<String>;
    /// All headers in order, pseudo-headers (`:path`, `:method`, ...) included.
    fn headers(&self, dir: Direction) -> Vec<(String, String)>;
    /// Replace every value of `name` with `value`.
    fn set_header(&mut self, dir: Direction, name: &str, value: &str);
    /// Append a value, keeping existing ones.
    fn add_header(&mut self, dir: Direction, name: &str, value: &str);
    /// Remove every value of `name`.
    fn remove_header(&mut self, dir: Direction, name: &str);

    /// Answer the request locally; the upstream is not contacted.
    fn send_local_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]);

    /// Wall-clock time as the host sees it.
    fn now(&self) -> SystemTime;

    /// Read a shared-data value (shared by all workers of one Envoy).
    fn shared_get(&self, key: &str) -> Option<SharedValue>;
    /// Write a shared-data value. With `cas`, the write fails with
    /// [`SharedDataError::CasMismatch`] when the value changed since that token was read.
    fn shared_set(
        &mut self,
        key: &str,
        data: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError>;

    /// Increment a counter named `portcullis_<filter>_<what>_total`.
    fn counter_add(&mut self, name: &str, by: u64);

    fn log(&self, level: LogLevel, msg: &str);
}
