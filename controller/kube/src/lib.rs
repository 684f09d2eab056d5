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
mod secret;
pub mod session;
pub mod snapshot;
pub mod status;
pub mod types;

pub use error::{Error, Result};
pub use leader::{LeaderElector, LeaderState, LeaseConfig};
pub use snapshot::{ObjectKey, Snapshot};
pub use status::{StatusRecord, StatusWriter, WriteReport, FIELD_MANAGER};

/// Default `spec.controllerName` of our GatewayClasses.
pub const DEFAULT_CONTROLLER_NAME: &str = "portcullis.dev/gatewayclass-controller";

/// What `/readyz` reports: ready once every watch has synced (every replica serves xDS, so
/// leadership is reported but not required), with per-kind detail.
pub fn readiness(
    health: &provider::WatchHealth,
    leader: &LeaderState,
) -> (bool, serde_json::Value) {
    let ready = health.all_synced();
    let kinds: serde_json::Map<String, serde_json::Value> = health
        .kinds()
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::Bool(v)))
        .collect();
    let body = serde_json::json!({
        "ready": ready,
        "leader": leader.is_leader(),
        "watches": kinds,
        "absentKinds": health.absent().into_iter().collect::<Vec<_>>(),
        "snapshots": health.snapshots_emitted(),
    });
    (ready, body)
}
