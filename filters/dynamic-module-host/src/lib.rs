//! Envoy dynamic modules (Envoy 1.40, ABI v0.2.0) as a host for the `portcullis-core` filters:
//! the twin of `portcullis-proxy-wasm`.
//!
//! - [`abi`]: the C declarations we use, nothing more;
//! - [`Stream`]: one HTTP stream during a hook, implementing [`portcullis_core::Host`];
//! - [`FilterConfig`] / [`StreamFilter`]: what a filter implements;
//! - the hooks Envoy calls, each behind a panic guard (a panic becomes a 500 and the counter
//!   `portcullis_<filter_name>_panics_total`, never an aborted Envoy).
//!
//! All `unsafe` lives in this crate. A cdylib names its factory once:
//!
//! ```ignore
//! portcullis_dynamic_module_host::export_filters!(crate::new_config);
//! ```

pub mod abi;
mod config;
mod hooks;
pub mod log;
mod metrics;
mod raw;
mod shared;
mod stream;

pub use config::{
    CalloutFailure, CalloutResponse, ConfigContext, ConfigScheduler, FilterConfig, StreamFilter,
    StreamReset, StreamResponse,
};
pub use hooks::{program_init, Factory};
pub use stream::{CalloutError, Stream};

/// Defines `envoy_dynamic_module_on_program_init` for a cdylib, registering `$factory` (a
/// [`Factory`]). Every other hook is defined by this crate.
#[macro_export]
macro_rules! export_filters {
    ($factory:path) => {
        #[no_mangle]
        pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const ::std::ffi::c_char {
            $crate::program_init($factory)
        }
    };
}
