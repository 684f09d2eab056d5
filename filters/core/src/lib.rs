//! Host-independent policy logic for the Portcullis filters.
//!
//! Everything here is pure Rust with no proxy-wasm types: the filter crates adapt it to a host.

pub mod config;
pub mod headers;
pub mod host;
pub mod http;
pub mod oidc;
pub mod presets;
pub mod ratelimit;
pub mod testing;
pub mod ua_block;

pub use config::ConfigError;
pub use host::{Direction, Host, LogLevel, SharedDataError, SharedValue};

/// What the host should do with the request after a filter callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on to the next filter.
    Continue,
    /// Stop: the filter answered the request itself (a local response was sent).
    Stop,
}
