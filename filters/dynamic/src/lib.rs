//! `libportcullis.so`: ua-block, headers, ratelimit and oidc as one Envoy 1.40 dynamic module.
//!
//! `filter_name` selects the filter; `filter_config` is exactly the JSON its wasm twin takes
//! (a `StringValue`, or a `Struct`, which arrives as JSON) and is rejected with the same log
//! line. Filter logic is `portcullis-core`; this crate only maps it onto the host.

use std::sync::Arc;

use portcullis_dynamic_module_host::{export_filters, ConfigContext, FilterConfig};

mod headers;
mod oidc;
#[cfg(feature = "test-panic")]
mod panic;
mod ratelimit;
mod ua_block;

/// The names `filter_name` accepts.
pub const FILTERS: &[&str] = &["ua_block", "headers", "ratelimit", "oidc"];

fn new_config(
    filter_name: &str,
    config: &[u8],
    cx: &mut ConfigContext,
) -> Result<Arc<dyn FilterConfig>, String> {
    match filter_name {
        "ua_block" => ua_block::config(config, cx),
        "headers" => headers::config(config, cx),
        "ratelimit" => ratelimit::config(config, cx),
        "oidc" => oidc::config(config, cx),
        #[cfg(feature = "test-panic")]
        "panic" => panic::config(config, cx),
        other => Err(format!(
            "portcullis: unknown filter_name {other:?}; expected one of {}",
            FILTERS.join(", ")
        )),
    }
}

export_filters!(new_config);
