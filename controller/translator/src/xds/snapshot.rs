//! The seam between the pure xDS builder and the ADS server.

use std::collections::BTreeMap;
use std::sync::Arc;

pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// xDS resources for one Envoy (one Gateway), keyed by type URL then resource name.
/// BTreeMaps keep output deterministic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsResources {
    /// Each resource is shared with the ADS server's published copy: its bytes exist once.
    pub by_type: BTreeMap<String, BTreeMap<String, Arc<prost_types::Any>>>,
}

impl XdsResources {
    pub fn insert(&mut self, type_url: &str, name: impl Into<String>, value: prost_types::Any) {
        self.by_type
            .entry(type_url.to_string())
            .or_default()
            .insert(name.into(), Arc::new(value));
    }

    pub fn of_type(
        &self,
        type_url: &str,
    ) -> impl Iterator<Item = (&String, &Arc<prost_types::Any>)> {
        self.by_type
            .get(type_url)
            .into_iter()
            .flat_map(|m| m.iter())
    }
}

/// Node id an Envoy managed for Gateway `namespace/name` presents to the ADS server.
pub fn node_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The full desired state: one resource set per Gateway, keyed by [`node_id`]. Shared: an
/// incremental translation ([`crate::Translator`]) hands an unchanged Gateway the previous
/// snapshot's set, and the server skips a set it has already published.
pub type XdsSnapshot = BTreeMap<String, Arc<XdsResources>>;
