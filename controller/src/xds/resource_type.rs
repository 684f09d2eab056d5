//! The resource types the server serves, as an enum: a type URL Envoy asks for that is not one
//! of these is answered per protocol (nothing to serve) and never tracked.

use portcullis_translator::xds::snapshot::{
    CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE,
};

/// One of the five xDS resource types. The declaration order is the push order: clusters before
/// endpoints, secrets and listeners before routes (make before break).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Secret,
    Listener,
    Route,
}

impl ResourceType {
    /// Every type, in push order.
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Secret,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    pub fn from_url(type_url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.url() == type_url)
    }

    pub fn url(self) -> &'static str {
        match self {
            ResourceType::Cluster => CLUSTER_TYPE,
            ResourceType::Endpoint => ENDPOINT_TYPE,
            ResourceType::Secret => SECRET_TYPE,
            ResourceType::Listener => LISTENER_TYPE,
            ResourceType::Route => ROUTE_TYPE,
        }
    }

    /// The message name (the last segment of the type URL): the key in `/status/xds` and the
    /// metrics' `type_url` label.
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "Cluster",
            ResourceType::Endpoint => "ClusterLoadAssignment",
            ResourceType::Secret => "Secret",
            ResourceType::Listener => "Listener",
            ResourceType::Route => "RouteConfiguration",
        }
    }

    /// Listener and Cluster: an empty subscription means every resource (wildcard), and a
    /// State-of-the-World response must carry all of them.
    pub fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }

    /// RDS and EDS: a State-of-the-World response may carry only some of the subscribed names
    /// (Envoy updates the ones present and keeps the others).
    pub fn sotw_subsets(self) -> bool {
        matches!(self, ResourceType::Route | ResourceType::Endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::short_type;

    #[test]
    fn urls_round_trip_and_short_names_match_the_metrics_label() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_url(t.url()), Some(t));
            assert_eq!(t.short(), short_type(t.url()));
        }
        assert_eq!(
            ResourceType::from_url("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"),
            None
        );
        assert_eq!(ResourceType::from_url(""), None);
        let mut sorted = ResourceType::ALL;
        sorted.sort();
        assert_eq!(sorted, ResourceType::ALL, "Ord is the push order");
    }
}
