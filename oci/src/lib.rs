//! OCI images for wasm filters: not implemented yet (issue 4).
