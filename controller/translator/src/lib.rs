//! Pure stages of the Portcullis controller (DESIGN.md): resource snapshot -> translator -> IR ->
//! xDS builder. No I/O lives here: the same input gives byte-identical output.

pub mod status;
pub mod wasm {
    pub mod source;
}
pub mod xds {
    pub mod snapshot;
}
