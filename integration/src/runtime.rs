//! The two runtimes every filter test runs on: proxy-wasm in V8 and the native dynamic module
//! (`libportcullis.so`). A test takes a [`Runtime`] and [`on_both_runtimes!`] instantiates it
//! once per runtime, so a behaviour is written once and proven on both.

use std::path::Path;

use serde_json::{json, Value};

use crate::wasm;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `dist/wasm/<filter>.wasm` in Envoy's V8.
    Wasm,
    /// `dist/dynamic/libportcullis.so`, `filter_name` = the filter.
    Dynamic,
}

impl Runtime {
    pub const ALL: [Runtime; 2] = [Runtime::Wasm, Runtime::Dynamic];

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Wasm => "wasm",
            Runtime::Dynamic => "dynamic",
        }
    }

    /// What Envoy logs when it refuses the filter's config (the filter's own line comes first).
    pub fn config_refused_marker(self) -> &'static str {
        match self {
            Runtime::Wasm => "Unable to create Wasm plugin",
            Runtime::Dynamic => "Failed to initialize dynamic module",
        }
    }

    /// What every line the filter itself writes to Envoy's log contains.
    pub fn filter_log_marker(self) -> &'static str {
        match self {
            Runtime::Wasm => "wasm log",
            Runtime::Dynamic => "[dynamic_modules]",
        }
    }

    /// Envoy's `HttpFilter` for filter `name` (`ua_block`, `headers`, `ratelimit`, `oidc`)
    /// with `config` passed verbatim (so tests can hand over invalid JSON). `instance` tells
    /// several filters of one chain apart (their wasm VMs are not shared).
    pub fn http_filter(
        self,
        name: &str,
        config: &str,
        instance: &str,
    ) -> Result<Value, wasm::Error> {
        Ok(match self {
            Runtime::Wasm => wasm_filter(
                &wasm::module(name)?,
                name,
                &format!("{name}-{instance}"),
                config,
            ),
            Runtime::Dynamic => dynamic_filter(&wasm::dynamic_library()?, name, config),
        })
    }
}

/// A proxy-wasm filter from a local module, V8, JSON config as a `StringValue`, fail closed.
pub fn wasm_filter(module: &Path, name: &str, vm_id: &str, config: &str) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": module } }
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config
                },
                "fail_open": false
            }
        }
    })
}

/// A dynamic-module filter as the controller emits it: local library, `do_not_close`, the
/// `portcullis` metrics namespace, JSON config as a `StringValue`.
pub fn dynamic_filter(library: &Path, filter_name: &str, config: &str) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {
                "module": { "local": { "filename": library } },
                "do_not_close": true,
                "metrics_namespace": "portcullis"
            },
            "filter_name": filter_name,
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": config
            }
        }
    })
}

/// Instantiates each named `fn(Runtime)` as two tests, `wasm::<name>` and `dynamic::<name>`.
#[macro_export]
macro_rules! on_both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod wasm {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::runtime::Runtime::Wasm)
                }
            )*
        }
        mod dynamic {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::runtime::Runtime::Dynamic)
                }
            )*
        }
    };
}
