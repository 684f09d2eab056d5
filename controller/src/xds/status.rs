//! Per-Envoy ACK/NACK state: what each node was sent, what it ACKed (the last good set, which
//! keeps serving after a NACK), what it rejected and why. Only the five served types are
//! tracked; `/status/xds` shows a view of this state.

use super::resource_type::ResourceType;
use super::versions::{Published, TypeSet};
use crate::metrics::{type_label, Metrics};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// A rejected version and Envoy's reason.
#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    pub version: String,
    pub error: String,
    pub at_unix: u64,
}

/// Where one node's Envoy stands with one type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvoyState {
    /// A response is out and Envoy has not answered it yet.
    #[default]
    Pending,
    /// Envoy holds the version it last ACKed, and rejected nothing since.
    Acked,
    /// Envoy rejected a version; it keeps the last version it ACKed (if any).
    Nacked,
}

/// What the server knows of one node and type.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    pub state: EnvoyState,
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    pub nack: Option<Nack>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub connected_streams: u32,
    /// The newest snapshot generation this node has fully ACKed (every type it subscribes to).
    pub synced_generation: Option<u64>,
    /// Keyed by the type's message name (`Cluster`, `RouteConfiguration`, ...).
    pub types: BTreeMap<String, TypeStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsStatus {
    pub generation: u64,
    pub nodes: BTreeMap<String, NodeStatus>,
}

#[derive(Debug, Default)]
struct TypeState {
    sent: Option<String>,
    /// A response is out, not yet ACKed or NACKed.
    awaiting: bool,
    /// The last set Envoy ACKed: what it serves.
    acked: Option<Arc<TypeSet>>,
    nack: Option<Nack>,
}

impl TypeState {
    fn view(&self) -> TypeStatus {
        let state = if self.awaiting {
            EnvoyState::Pending
        } else if self.nack.is_some() {
            EnvoyState::Nacked
        } else if self.acked.is_some() {
            EnvoyState::Acked
        } else {
            EnvoyState::Pending
        };
        TypeStatus {
            state,
            sent_version: self.sent.clone(),
            acked_version: self.acked.as_ref().map(|s| s.version.clone()),
            nack: self.nack.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct NodeState {
    streams: u32,
    synced_generation: Option<u64>,
    types: BTreeMap<ResourceType, TypeState>,
}

impl NodeState {
    /// Every type this node has seen is ACKed at the published version.
    fn synced(&self, published: &Published, node: &str) -> bool {
        self.types.iter().all(|(rt, s)| {
            s.acked.as_ref().map(|a| a.version.as_str())
                == Some(published.type_set(node, *rt).version.as_str())
        })
    }
}

/// Every node's state.
pub(crate) struct Statuses {
    nodes: Mutex<BTreeMap<String, NodeState>>,
    metrics: Metrics,
}

impl Statuses {
    pub fn new(metrics: Metrics) -> Self {
        Statuses {
            nodes: Mutex::new(BTreeMap::new()),
            metrics,
        }
    }

    fn nodes(&self) -> MutexGuard<'_, BTreeMap<String, NodeState>> {
        // A panic while holding this lock leaves plain data behind: keep serving.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn type_state<'a>(
        nodes: &'a mut BTreeMap<String, NodeState>,
        node: &str,
        rt: ResourceType,
    ) -> &'a mut TypeState {
        nodes
            .entry(node.to_string())
            .or_default()
            .types
            .entry(rt)
            .or_default()
    }

    /// The set to serve to `node` for `rt`: the current one, unless the node rejected exactly
    /// that version, then the last one it ACKed (None: nothing good to send).
    pub fn desired(
        &self,
        published: &Published,
        node: &str,
        rt: ResourceType,
    ) -> Option<Arc<TypeSet>> {
        let current = published.type_set(node, rt);
        let nodes = self.nodes();
        match nodes.get(node).and_then(|n| n.types.get(&rt)) {
            Some(TypeState {
                nack: Some(n),
                acked,
                ..
            }) if n.version == current.version => acked.clone(),
            _ => Some(current),
        }
    }

    pub fn record_sent(&self, node: &str, rt: ResourceType, version: &str) {
        self.metrics
            .xds_pushes
            .get_or_create(&type_label(rt.url()))
            .inc();
        let mut nodes = self.nodes();
        let ts = Self::type_state(&mut nodes, node, rt);
        ts.sent = Some(version.to_string());
        ts.awaiting = true;
    }

    /// Envoy ACKed `set`.
    pub fn record_ack(
        &self,
        published: &Published,
        node: &str,
        rt: ResourceType,
        set: &Arc<TypeSet>,
    ) {
        self.metrics
            .xds_acks
            .get_or_create(&type_label(rt.url()))
            .inc();
        self.holds(published, node, rt, set, true);
    }

    /// Envoy holds every resource of `set` it subscribes to without a push (what changed is
    /// nothing it asked for): the same as an ACK of `set`, less the metric.
    pub fn record_current(
        &self,
        published: &Published,
        node: &str,
        rt: ResourceType,
        set: &Arc<TypeSet>,
    ) {
        let current = published.type_set(node, rt);
        if set.version != current.version {
            return;
        }
        let held = self
            .nodes()
            .get(node)
            .and_then(|n| n.types.get(&rt))
            .map(|t| (t.awaiting, t.acked.as_ref().map(|a| a.version.clone())));
        match held {
            // Not seen yet: the first answer is a push, nothing to record.
            None => {}
            Some((false, acked)) if acked.as_deref() != Some(&set.version) => {
                self.holds(published, node, rt, set, false)
            }
            Some(_) => {}
        }
    }

    fn holds(
        &self,
        published: &Published,
        node: &str,
        rt: ResourceType,
        set: &Arc<TypeSet>,
        answered: bool,
    ) {
        let mut nodes = self.nodes();
        let ns = nodes.entry(node.to_string()).or_default();
        let ts = ns.types.entry(rt).or_default();
        if answered {
            ts.awaiting = false;
        }
        ts.acked = Some(set.clone());
        let current = published.type_set(node, rt);
        if ts
            .nack
            .as_ref()
            .is_some_and(|n| n.version != current.version)
            && set.version == current.version
        {
            tracing::info!(node, type_url = rt.short(), version = %set.version, "xDS recovered: new version ACKed");
            ts.nack = None;
        }
        if ns.synced(published, node) {
            ns.synced_generation = Some(published.generation);
        }
    }

    pub fn record_nack(&self, node: &str, rt: ResourceType, version: &str, error: &str) {
        self.metrics
            .xds_nacks
            .get_or_create(&type_label(rt.url()))
            .inc();
        tracing::warn!(
            node,
            type_url = rt.short(),
            version,
            error,
            "Envoy rejected xDS (NACK); keeping the last good version"
        );
        let at_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut nodes = self.nodes();
        let ts = Self::type_state(&mut nodes, node, rt);
        ts.awaiting = false;
        ts.nack = Some(Nack {
            version: version.to_string(),
            error: error.to_string(),
            at_unix,
        });
    }

    /// Forgets the NACK of `version` so that [`Self::desired`] serves the current set again
    /// (a retry of a transient rejection).
    pub fn clear_nack(&self, node: &str, rt: ResourceType, version: &str) {
        let mut nodes = self.nodes();
        if let Some(ts) = nodes.get_mut(node).and_then(|n| n.types.get_mut(&rt)) {
            if ts.nack.as_ref().is_some_and(|n| n.version == version) {
                ts.nack = None;
            }
        }
    }

    /// After a publish: a node whose Envoy holds every type at the new versions (its resources
    /// did not change) is synced at the new generation without a push.
    pub fn published(&self, published: &Published) {
        for (node, ns) in self.nodes().iter_mut() {
            if !ns.types.is_empty() && ns.synced(published, node) {
                ns.synced_generation = Some(published.generation);
            }
        }
    }

    pub fn stream_opened(&self, node: &str) {
        self.metrics.xds_streams.inc();
        self.nodes().entry(node.to_string()).or_default().streams += 1;
    }

    pub fn stream_closed(&self, node: &str) {
        self.metrics.xds_streams.dec();
        if let Some(n) = self.nodes().get_mut(node) {
            n.streams = n.streams.saturating_sub(1);
        }
    }

    /// Forget nodes that are neither wanted nor connected.
    pub fn retain(&self, wanted: &[String]) {
        self.nodes()
            .retain(|node, n| n.streams > 0 || wanted.contains(node));
    }

    pub fn view(&self) -> BTreeMap<String, NodeStatus> {
        self.nodes()
            .iter()
            .map(|(node, ns)| {
                (
                    node.clone(),
                    NodeStatus {
                        connected_streams: ns.streams,
                        synced_generation: ns.synced_generation,
                        types: ns
                            .types
                            .iter()
                            .map(|(rt, ts)| (rt.short().to_string(), ts.view()))
                            .collect(),
                    },
                )
            })
            .collect()
    }
}
