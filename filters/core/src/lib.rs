//! Host-independent policy logic for the Portcullis filters.
//!
//! Everything here is pure Rust with no proxy-wasm types: the filter crates adapt it to a host.

pub mod host;
pub mod oidc;
pub mod ratelimit;
pub mod testing;

pub use host::{Direction, Host, LogLevel, SharedDataError, SharedValue};
