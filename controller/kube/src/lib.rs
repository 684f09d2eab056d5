//! Kubernetes edges of the Portcullis controller (issue 7), as composable pieces the runtime calls:
//!
//! - [`provider`]: watchers + reflectors over the Gateway API, Envoy Gateway and core kinds,
//!   debounced into [`snapshot::Snapshot`]s of the objects that belong to our GatewayClasses;
//! - [`status`]: the translator's statuses written back with server-side apply;
//! - [`infra`]: the Envoy fleet per Gateway (Deployment, Service, ServiceAccount, bootstrap
//!   ConfigMap, client-certificate Secret), owned by the Gateway;
//! - [`certs`]: the xDS mutual-TLS CA and certificates (rcgen);
//! - [`leader`]: Lease-based leader election; only the leader writes.
//!
//! This crate does not depend on the translator: snapshots are JSON objects (or one YAML stream
//! for the translator's `parse_documents`), and status records are anything with the serde shape of
//! `ResourceStatus`.

pub mod backoff;
pub mod certs;
pub mod error;
pub mod infra;
pub mod leader;
pub mod provider;
pub mod reconcile;
pub mod snapshot;
pub mod status;
pub mod types;

pub use error::{Error, Result};
pub use leader::{LeaderElector, LeaderState, LeaseConfig};
pub use snapshot::{ObjectKey, Snapshot};
pub use status::{StatusRecord, StatusWriter, WriteReport, FIELD_MANAGER};

/// Default `spec.controllerName` of our GatewayClasses.
pub const DEFAULT_CONTROLLER_NAME: &str = "portcullis.dev/gatewayclass-controller";
