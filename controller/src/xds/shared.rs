//! What the ADS server and its streams share: the published snapshot, per-node change
//! notifications, ACK/NACK state, nonces; and which nodes a connection may serve. Its own module
//! so the server (which starts streams) and the streams (which read this) do not import each
//! other.

use super::status::Statuses;
use super::versions::Published;
use crate::metrics::Metrics;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;
use tonic::{Request, Status};

/// State shared by the server and its streams.
pub(crate) struct Shared {
    pub(super) published: Mutex<Arc<Published>>,
    /// Per node: a counter bumped whenever the node's published resources change.
    pub(super) node_changes: Mutex<BTreeMap<String, watch::Sender<u64>>>,
    pub status: Statuses,
    nonce: AtomicU64,
    pub(super) metrics: Metrics,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind: keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(metrics: Metrics) -> Self {
        Shared {
            published: Mutex::new(Arc::new(Published::default())),
            node_changes: Mutex::new(BTreeMap::new()),
            status: Statuses::new(metrics.clone()),
            nonce: AtomicU64::new(1),
            metrics,
        }
    }

    pub fn published(&self) -> Arc<Published> {
        lock(&self.published).clone()
    }

    pub fn next_nonce(&self) -> String {
        self.nonce.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// A receiver that changes whenever `node`'s resources do.
    pub fn node_changes(&self, node: &str) -> watch::Receiver<u64> {
        lock(&self.node_changes)
            .entry(node.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

/// Which node ids a connection may serve: any over plain TCP (local mode, loopback); over
/// mutual TLS only the node its client certificate was issued for, so one Gateway's fleet cannot
/// read another's configuration (OIDC client secrets included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeAuth {
    Any,
    Only(String),
    /// A verified certificate that names no Gateway.
    NoGateway,
}

impl NodeAuth {
    pub(super) fn of<T>(request: &Request<T>) -> Self {
        match request.extensions().get::<crate::tls::TlsPeer>() {
            None => NodeAuth::Any,
            Some(peer) => match &peer.node_id {
                Some(id) => NodeAuth::Only(id.clone()),
                None => NodeAuth::NoGateway,
            },
        }
    }

    pub fn check(&self, node_id: &str) -> Result<(), Status> {
        let refused = |why: String| {
            tracing::warn!(node = node_id, reason = %why, "ADS stream refused");
            Err(Status::permission_denied(why))
        };
        match self {
            NodeAuth::Any => Ok(()),
            NodeAuth::Only(id) if id == node_id => Ok(()),
            NodeAuth::Only(id) => refused(format!(
                "node id {node_id:?} does not match the client certificate, which is for Gateway {id}"
            )),
            NodeAuth::NoGateway => refused(format!(
                "node id {node_id:?}: the client certificate names no Gateway (URI SAN spiffe://portcullis/ns/<ns>/gateway/<name>)"
            )),
        }
    }
}
