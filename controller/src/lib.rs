//! Portcullis controller runtime: the I/O edges of the pipeline (provider watch, xDS server,
//! wasm cache, host infra, admin endpoint). The pure stages live in `portcullis-translator`.

pub mod admin;
pub mod builtin;
pub mod cli;
pub mod infra {
    pub mod host;
}
pub mod metrics;
pub mod provider {
    pub mod file;
}
pub mod logging;
pub mod runtime;
/// Kubernetes mode (`portcullis run --provider kubernetes`).
pub use runtime::kubernetes;
pub mod tls;
pub mod wasm {
    pub mod access;
    pub mod cache;
    pub mod fetch;
    pub mod serve;
}
pub mod xds {
    mod delta;
    #[doc(hidden)]
    pub mod fuzzing;
    mod resource_type;
    pub mod server;
    mod shared;
    mod sotw;
    mod status;
    mod stream;
    mod versions;
}

/// The pure stages, re-exported for callers (tests, tools) that drive the runtime directly.
pub use portcullis_translator as translator;
