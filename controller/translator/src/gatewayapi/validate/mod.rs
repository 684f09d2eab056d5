//! Validation rules with Envoy Gateway's conditions and reasons (`docs/conformance.md`): one
//! module per subject, each returning typed errors that the translation turns into conditions.

pub mod addresses;
pub mod backend_refs;
pub mod certificates;
pub mod listeners;
