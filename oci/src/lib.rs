//! OCI images for wasm filters (issue 4): package, push, pull, verify.

pub mod cli;
