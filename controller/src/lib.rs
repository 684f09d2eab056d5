//! Portcullis controller runtime: the I/O edges of the pipeline (provider watch, xDS server,
//! wasm cache, host infra, admin endpoint). The pure stages live in `portcullis-translator`.

pub mod cli;
