//! Delta (incremental) xDS: each response carries only the resources whose content version
//! differs from what Envoy holds, and the names it should drop.

use super::resource_type::ResourceType;
use super::stream::{Answer, Protocol, Watch};
use super::versions::TypeSet;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub(crate) struct Delta;

#[derive(Default)]
pub(crate) struct DeltaSub {
    pub names: BTreeSet<String>,
    pub wildcard: bool,
    /// Resource versions Envoy holds (as far as ACKs tell).
    known: BTreeMap<String, String>,
    /// Names newly subscribed that need an answer even if unchanged.
    fresh: BTreeSet<String>,
    started: bool,
    /// Whether this stream answered this type yet: the first answer goes out even when empty,
    /// or Envoy waits for its initial fetch timeout.
    answered: bool,
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    type Sub = DeltaSub;
    /// What `known` becomes on ACK.
    type Pending = BTreeMap<String, String>;
    const NAME: &'static str = "Delta";
    const REQUEST: &'static str = "DeltaDiscoveryRequest";

    fn node_id(req: &DeltaDiscoveryRequest) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str())
    }

    fn type_url(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }

    fn on_request(w: &mut Watch<Self>, rt: ResourceType, req: DeltaDiscoveryRequest) -> Answer {
        let s = &mut w.sub;
        if !s.started {
            s.started = true;
            s.wildcard = rt.is_wildcard() && req.resource_names_subscribe.is_empty();
            s.known = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                s.wildcard = true;
            } else if s.names.insert(n.clone()) {
                s.fresh.insert(n.clone());
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                s.wildcard = false;
            } else {
                s.names.remove(n);
                s.known.remove(n);
                s.fresh.remove(n);
            }
        }
        if req.response_nonce.is_empty() {
            return Answer::None;
        }
        let Some(done) = w.take_in_flight(&req.response_nonce) else {
            return Answer::None;
        };
        match req.error_detail {
            Some(err) => Answer::Nack(done.set, err.message),
            None => {
                let s = &mut w.sub;
                // Keep unsubscriptions that arrived with the ACK.
                let (wildcard, names) = (s.wildcard, &s.names);
                s.known = done
                    .pending
                    .into_iter()
                    .filter(|(n, _)| wildcard || names.contains(n))
                    .collect();
                Answer::Ack(done.set)
            }
        }
    }

    fn response(
        w: &mut Watch<Self>,
        rt: ResourceType,
        set: &Arc<TypeSet>,
    ) -> Option<(DeltaDiscoveryResponse, Self::Pending)> {
        let s = &mut w.sub;
        let wanted = |n: &String| s.wildcard || s.names.contains(n);
        let mut resources = Vec::new();
        let mut next_known = s.known.clone();
        for (name, e) in set.resources.iter().filter(|(n, _)| wanted(n)) {
            if s.known.get(name) != Some(&e.version) {
                resources.push(Resource {
                    name: name.clone(),
                    version: e.version.clone(),
                    resource: Some(e.wire()),
                    ..Default::default()
                });
                next_known.insert(name.clone(), e.version.clone());
            }
        }
        let mut removed: Vec<String> = s
            .known
            .keys()
            .filter(|n| !set.resources.contains_key(*n) || !wanted(n))
            .cloned()
            .collect();
        // Subscribed names that do not exist: say so, so Envoy stops waiting for them.
        removed.extend(
            s.fresh
                .iter()
                .filter(|n| !set.resources.contains_key(*n) && !s.known.contains_key(*n))
                .cloned(),
        );
        for r in &removed {
            next_known.remove(r);
        }
        let fresh_pending = !s.fresh.is_empty();
        s.fresh.clear();
        if resources.is_empty() && removed.is_empty() && !fresh_pending && s.answered {
            return None;
        }
        s.answered = true;
        let resp = DeltaDiscoveryResponse {
            system_version_info: set.version.clone(),
            resources,
            type_url: rt.url().to_string(),
            removed_resources: removed,
            ..Default::default()
        };
        Some((resp, next_known))
    }

    fn set_nonce(resp: &mut DeltaDiscoveryResponse, nonce: String) {
        resp.nonce = nonce;
    }

    fn counts(resp: &DeltaDiscoveryResponse) -> (usize, usize) {
        (resp.resources.len(), resp.removed_resources.len())
    }

    /// Nothing to send, and every subscribed name announced as not existing, so Envoy stops
    /// waiting for it. An ACK or NACK of that answer gets none, unless it subscribes to more.
    fn unknown(req: &DeltaDiscoveryRequest) -> Option<DeltaDiscoveryResponse> {
        let subscribes = req.resource_names_subscribe.iter().any(|n| n != "*");
        if req.error_detail.is_some() || (!req.response_nonce.is_empty() && !subscribes) {
            return None;
        }
        Some(DeltaDiscoveryResponse {
            system_version_info: TypeSet::empty().version.clone(),
            type_url: req.type_url.clone(),
            removed_resources: req
                .resource_names_subscribe
                .iter()
                .filter(|n| *n != "*")
                .cloned()
                .collect(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::status::EnvoyState;
    use crate::xds::stream::testing::*;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use portcullis_translator::xds::snapshot::{CLUSTER_TYPE, ROUTE_TYPE};

    const NODE: &str = "ns/gw";

    fn req(type_url: &str, subscribe: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: node(NODE),
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ack(r: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            response_nonce: r.nonce.clone(),
            ..req(&r.type_url, &[])
        }
    }

    fn one(mut v: Vec<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
        assert_eq!(v.len(), 1, "one response");
        v.remove(0)
    }

    fn updated(r: &DeltaDiscoveryResponse) -> Vec<(String, String)> {
        r.resources
            .iter()
            .map(|x| {
                let body = x
                    .resource
                    .as_ref()
                    .map(|a| a.value.clone())
                    .unwrap_or_default();
                (x.name.clone(), String::from_utf8_lossy(&body).into_owned())
            })
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn clusters(v: &[(&str, &str)]) -> portcullis_translator::xds::snapshot::XdsSnapshot {
        let r: Vec<_> = v.iter().map(|(n, b)| (CLUSTER_TYPE, *n, *b)).collect();
        snap(NODE, &r)
    }

    #[test]
    fn only_changed_resources_are_sent_and_removals_announced() {
        let mut h = Harness::<Delta>::new();
        h.server
            .publish(&clusters(&[("a", "a1"), ("b", "b1"), ("c", "c1")]));
        let first = one(h.request(req(CLUSTER_TYPE, &[])));
        assert_eq!(
            updated(&first),
            pairs(&[("a", "a1"), ("b", "b1"), ("c", "c1")])
        );
        assert!(h.request(ack(&first)).is_empty());

        // a unchanged, b changed, c gone, d new.
        let r = one(h.publish(&clusters(&[("a", "a1"), ("b", "b2"), ("d", "d1")])));
        assert_eq!(updated(&r), pairs(&[("b", "b2"), ("d", "d1")]));
        assert_eq!(r.removed_resources, ["c"]);
        let version = |r: &DeltaDiscoveryResponse, n: &str| {
            r.resources
                .iter()
                .find(|x| x.name == n)
                .map(|x| x.version.clone())
        };
        assert_ne!(version(&r, "b"), version(&first, "b"));
        assert!(h.request(ack(&r)).is_empty());

        // Republishing the same content sends nothing.
        assert!(h
            .publish(&clusters(&[("a", "a1"), ("b", "b2"), ("d", "d1")]))
            .is_empty());
        assert_eq!(h.server.status().nodes[NODE].synced_generation, Some(2));
    }

    #[test]
    fn a_reconnect_with_initial_versions_gets_only_what_differs() {
        let mut h = Harness::<Delta>::new();
        h.server.publish(&clusters(&[("a", "a1"), ("b", "b1")]));
        let first = one(h.request(req(CLUSTER_TYPE, &[])));
        let held: std::collections::HashMap<String, String> = first
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        h.server.publish(&clusters(&[("a", "a1"), ("b", "b2")]));
        let mut again = Harness::<Delta>::on(&h.server);
        let r = one(again.request(DeltaDiscoveryRequest {
            initial_resource_versions: held,
            ..req(CLUSTER_TYPE, &[])
        }));
        assert_eq!(updated(&r), pairs(&[("b", "b2")]));
        assert!(r.removed_resources.is_empty());
    }

    #[test]
    fn a_nack_keeps_the_last_good_set_and_reports_why() {
        let mut h = Harness::<Delta>::new();
        h.server.publish(&snap(NODE, &[(ROUTE_TYPE, "r", "good")]));
        let good = one(h.request(req(ROUTE_TYPE, &["r"])));
        assert!(h.request(ack(&good)).is_empty());
        let bad = one(h.publish(&snap(NODE, &[(ROUTE_TYPE, "r", "bad")])));
        let rejected = h.request(DeltaDiscoveryRequest {
            error_detail: Some(RpcStatus {
                message: "duplicate domain".into(),
                ..Default::default()
            }),
            ..ack(&bad)
        });
        assert!(
            rejected.is_empty(),
            "the rejected version is not sent again"
        );
        let st = &h.server.status().nodes[NODE].types["RouteConfiguration"];
        assert_eq!(st.state, EnvoyState::Nacked);
        assert_eq!(
            st.acked_version.as_deref(),
            Some(good.system_version_info.as_str())
        );
        assert_eq!(
            st.nack.as_ref().map(|n| n.error.as_str()),
            Some("duplicate domain")
        );
        // A reconnect gets the last good route.
        let mut again = Harness::<Delta>::on(&h.server);
        assert_eq!(
            updated(&one(again.request(req(ROUTE_TYPE, &["r"])))),
            pairs(&[("r", "good")])
        );
        // The fix goes out, and its ACK clears the NACK.
        let fixed = one(h.publish(&snap(NODE, &[(ROUTE_TYPE, "r", "fixed")])));
        assert_eq!(updated(&fixed), pairs(&[("r", "fixed")]));
        assert!(h.request(ack(&fixed)).is_empty());
        assert!(h.server.status().nodes[NODE].types["RouteConfiguration"]
            .nack
            .is_none());
    }

    #[test]
    fn an_unknown_type_is_answered_and_not_tracked() {
        let mut h = Harness::<Delta>::new();
        h.server.publish(&clusters(&[("a", "a1")]));
        let rtds = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
        let r = one(h.request(req(rtds, &["x", "y"])));
        assert!(r.resources.is_empty());
        assert_eq!(r.removed_resources, ["x", "y"], "names that do not exist");
        assert!(h.request(ack(&r)).is_empty(), "its ACK ends it");
        // A later subscription is answered the same way.
        let r2 = one(h.request(DeltaDiscoveryRequest {
            response_nonce: r.nonce.clone(),
            ..req(rtds, &["z"])
        }));
        assert_eq!(r2.removed_resources, ["z"]);
        assert!(h.stream.watches.is_empty());
        assert!(h.server.status().nodes[NODE].types.is_empty());
    }
}
