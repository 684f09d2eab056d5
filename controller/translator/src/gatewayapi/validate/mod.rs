//! Validation of Gateway API resources beyond what the CRD schema checks, reported the way
//! Envoy Gateway reports it (`docs/conformance.md`). Pure functions; callers turn the typed
//! errors into conditions.

pub mod route_filters;
pub mod route_matches;
pub mod route_overlap;
pub mod route_rules;
