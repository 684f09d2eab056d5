//! Test-support library for end-to-end tests against real processes.
//!
//! Every process starts on a free loopback port, is waited on until ready, has its logs
//! collected (printed when a test fails) and is killed on drop, even when a test panics.

pub mod browser;
pub mod controller;
pub mod echo;
pub mod envoy;
pub mod http;
pub mod oidc_env;
pub mod oidc_provider;
pub mod process;
pub mod ratelimit_env;
pub mod redis;
pub mod registry;
pub mod runtime;
pub mod wasm;
