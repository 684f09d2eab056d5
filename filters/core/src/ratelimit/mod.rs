//! Rate limiting (host-independent): config, client IP from X-Forwarded-For, rule matching and
//! keys, exact token buckets in shared data with compare-and-swap, and the mapping to and from
//! Envoy's rate-limit service (`envoy.service.ratelimit.v3`) for global rules.
//!
//! Adapters implement [`RateLimitHost`] and drive [`RateLimiter`]:
//! configure → [`RateLimiter::from_json`] + [`RateLimiter::init`]; tick → [`RateLimiter::tick`];
//! request headers → [`RateLimiter::on_request`] (maybe a service call, then
//! [`RateLimiter::on_global`]); response headers → [`RateLimiter::on_response`].

pub mod bucket;
pub mod client_ip;
pub mod config;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod key;
pub mod process;
pub mod proto;
pub mod store;

pub use config::{Config, ConfigError};
pub use engine::{
    Decision, Descriptor, DescriptorStatus, GlobalRequest, GlobalResult, RateLimitHost,
    RateLimiter, RequestState, Verdict,
};

#[cfg(test)]
mod tests;
