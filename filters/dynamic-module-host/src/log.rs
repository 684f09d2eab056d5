//! Envoy's log (the `dynamic_modules` logger), from any thread.

use crate::abi::{self, log_level, ModuleBuffer};
use portcullis_core::LogLevel;

fn level(l: LogLevel) -> u32 {
    match l {
        LogLevel::Trace => log_level::TRACE,
        LogLevel::Debug => log_level::DEBUG,
        LogLevel::Info => log_level::INFO,
        LogLevel::Warn => log_level::WARN,
        LogLevel::Error => log_level::ERROR,
    }
}

/// Whether Envoy would print a line at `l` (skip formatting when not).
pub fn enabled(l: LogLevel) -> bool {
    // SAFETY: a plain value call; Envoy's logger is thread-safe.
    unsafe { abi::envoy_dynamic_module_callback_log_enabled(level(l)) }
}

/// Writes one line. Logging never fails a request.
pub fn log(l: LogLevel, msg: &str) {
    // SAFETY: `msg` outlives the call; Envoy copies the bytes into its log line.
    unsafe { abi::envoy_dynamic_module_callback_log(level(l), ModuleBuffer::of(msg.as_bytes())) }
}
