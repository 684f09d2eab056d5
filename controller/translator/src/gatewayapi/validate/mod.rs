//! Validation of Gateway API resources beyond what the CRD schema checks, reported the way
//! Envoy Gateway reports it (`docs/conformance.md`): one module per subject, pure functions
//! returning typed errors that the translation turns into conditions.

pub mod addresses;
pub mod backend_refs;
pub mod certificates;
pub mod listeners;
pub mod route_filters;
pub mod route_matches;
pub mod route_overlap;
pub mod route_rules;
pub mod rule_error;
