//! The controller's runtime: one pipeline, two providers.
//!
//! ```text
//! provider (file::FileSource | kubernetes::KubeSource)
//!   -> pipeline::ProviderSnapshot -> translate (portcullis-translator)
//!   -> pipeline::TranslationSink (xDS server, admin board, metrics)
//!   -> the provider's Outputs (host Envoys | Kubernetes statuses and fleets)
//! ```
//!
//! [`pipeline::run`] is the loop both modes use; `file` and `kubernetes` set up their
//! listeners, provider and outputs around it; `servers` holds what they share to serve.

pub mod file;
pub mod kubernetes;
pub mod pipeline;
pub mod servers;

pub use file::{run, EnvoyConfig, RuntimeConfig};
pub use servers::BoundAddresses;
