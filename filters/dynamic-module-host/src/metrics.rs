//! Counters, defined when a filter config is created (Envoy freezes stat creation afterwards)
//! and incremented from streams by id.

use std::collections::HashMap;

use crate::abi::{self, metrics_result, ConfigEnvoyPtr, FilterEnvoyPtr, ModuleBuffer};
use crate::log::log;
use portcullis_core::LogLevel;

/// The counters of one filter config.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: HashMap<String, usize>,
}

impl Metrics {
    /// Defines every name. Must run inside `config_new`, on the main thread.
    pub(crate) fn define(config: ConfigEnvoyPtr, names: &[&str]) -> Self {
        let mut ids = HashMap::with_capacity(names.len());
        for name in names {
            if ids.contains_key(*name) {
                continue;
            }
            let mut id = 0usize;
            // SAFETY: `config` is the pointer Envoy passed to the running config_new hook; the
            // name outlives the call (Envoy interns it); no labels.
            let rc = unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                    config,
                    ModuleBuffer::of(name.as_bytes()),
                    std::ptr::null_mut(),
                    0,
                    &mut id,
                )
            };
            if rc == metrics_result::SUCCESS {
                ids.insert((*name).to_string(), id);
            } else {
                log(
                    LogLevel::Warn,
                    &format!("portcullis: cannot define counter {name}: result {rc}"),
                );
            }
        }
        Self { ids }
    }

    /// These counters plus `name`, defined now (still inside `config_new`).
    pub(crate) fn with(mut self, config: ConfigEnvoyPtr, name: &str) -> Self {
        if !self.ids.contains_key(name) {
            let extra = Self::define(config, &[name]);
            self.ids.extend(extra.ids);
        }
        self
    }

    /// Adds `by` to counter `name` for the stream `filter`. Unknown names are ignored: the
    /// filter listed every name up front, so that is a bug, not a request problem.
    pub(crate) fn add(&self, filter: FilterEnvoyPtr, name: &str, by: u64) {
        if let Some(id) = self.ids.get(name) {
            // SAFETY: `filter` is the stream pointer of the running hook.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                    filter,
                    *id,
                    std::ptr::null_mut(),
                    0,
                    by,
                );
            }
        }
    }
}
