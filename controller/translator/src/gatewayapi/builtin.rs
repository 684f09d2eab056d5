//! Built-in filter modules (oidc, ratelimit): resolving their code and rendering their filter.
//! The clusters they call are built in [`super::clusters`].

use std::collections::BTreeSet;

use crate::ir::{
    ClusterIr, DynamicFilterIr, DynamicModuleIr, FilterIr, ModuleSourceIr, WasmFilterIr,
};
use crate::wasm::source::{WasmResolution, WasmResolver, WasmSource};
use crate::{BuiltinRuntime, TranslateOptions};

/// A built-in filter's code, ready to load: a wasm module, or `libportcullis.so`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReadyModule {
    pub runtime: BuiltinRuntime,
    pub sha256: String,
    pub serve_url: String,
    pub fetch_cluster: ClusterIr,
}

impl ReadyModule {
    /// The HCM filter running built-in filter `filter` (`oidc`, `ratelimit`) with `config`.
    /// `path` names it after its policy (`securitypolicy/<ns>/<name>/oidc`).
    pub fn filter(&self, path: &str, filter: &str, config: String) -> FilterIr {
        match self.runtime {
            BuiltinRuntime::Wasm => FilterIr::Wasm(WasmFilterIr {
                name: format!("envoy.filters.http.wasm/{path}"),
                plugin_name: path.split_once('/').map(|(_, p)| p).unwrap_or(path).into(),
                root_id: filter.into(),
                vm_id: self.sha256.clone(),
                url: self.serve_url.clone(),
                fetch_cluster: self.fetch_cluster.name.clone(),
                sha256: self.sha256.clone(),
                configuration: config,
                fail_open: false,
                host_env_keys: vec![],
            }),
            BuiltinRuntime::Dynamic => FilterIr::Dynamic(DynamicFilterIr {
                name: format!("envoy.filters.http.dynamic_modules/{path}"),
                module: DynamicModuleIr {
                    source: ModuleSourceIr::Remote {
                        url: self.serve_url.clone(),
                        fetch_cluster: self.fetch_cluster.name.clone(),
                        sha256: self.sha256.clone(),
                    },
                    // Local rate-limit buckets and the OIDC poller live as long as the process.
                    do_not_close: true,
                    load_globally: false,
                },
                filter_name: filter.into(),
                config,
            }),
        }
    }
}

/// Resolves built-in filter `name` through the same resolver as EEP modules: the wasm module
/// `name`, or the dynamic module when [`TranslateOptions::builtin_runtime`] says so. `Err` says
/// why it is not available (not configured, pending, failed).
pub(crate) fn builtin_module(
    opts: &TranslateOptions,
    wasm: &dyn WasmResolver,
    name: &str,
    needed: &mut BTreeSet<WasmSource>,
) -> Result<ReadyModule, String> {
    let (src, what) = match opts.builtin_runtime {
        BuiltinRuntime::Wasm => (
            opts.builtin_modules.get(name).ok_or_else(|| {
                format!("the built-in {name} filter module is not configured in this controller")
            })?,
            format!("the built-in {name} module"),
        ),
        BuiltinRuntime::Dynamic => (
            opts.builtin_dynamic_module.as_ref().ok_or_else(|| {
                format!("the built-in dynamic module (libportcullis.so, for {name}) is not configured in this controller")
            })?,
            format!("the built-in dynamic module (for {name})"),
        ),
    };
    needed.insert(src.clone());
    match wasm.resolve(src) {
        WasmResolution::Ready { sha256, serve_url } => {
            let fetch_cluster = super::clusters::fetch_cluster(opts, &serve_url)?;
            Ok(ReadyModule {
                runtime: opts.builtin_runtime,
                sha256,
                serve_url,
                fetch_cluster,
            })
        }
        WasmResolution::Pending => Err(format!("{what} {} is not fetched yet", src.url)),
        WasmResolution::Failed { reason } => Err(format!("{what}: {reason}")),
    }
}
