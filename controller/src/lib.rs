//! Portcullis controller library.
//!
//! Pipeline (one direction): provider -> translator -> IR -> xds builder -> xds server,
//! with the wasm cache, infra and status at the edges. See DESIGN.md.

pub mod status;
pub mod wasm {
    pub mod source;
}
pub mod xds {
    pub mod snapshot;
}
