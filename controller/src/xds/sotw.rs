//! State of the World: each response carries a type's version and its resources. Listener and
//! Cluster responses carry every subscribed resource; RDS and EDS responses to a subscription by
//! name carry only what Envoy lacks (changed or newly subscribed names), which SotW allows.

use super::resource_type::ResourceType;
use super::stream::{Answer, Protocol, Watch};
use super::versions::TypeSet;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub(crate) struct Sotw;

#[derive(Default)]
pub(crate) struct SotwSub {
    pub names: BTreeSet<String>,
    pub wildcard: bool,
    /// Version Envoy reported it holds (request `version_info`).
    envoy_version: String,
    /// Names the last response was computed for.
    sent_names: Option<(BTreeSet<String>, bool)>,
    /// RDS and EDS by name: the resource versions Envoy holds, as far as ACKs tell.
    known: BTreeMap<String, String>,
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    type Sub = SotwSub;
    /// What `known` becomes on ACK.
    type Pending = BTreeMap<String, String>;
    const NAME: &'static str = "SotW";
    const REQUEST: &'static str = "DiscoveryRequest";

    fn node_id(req: &DiscoveryRequest) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str())
    }

    fn type_url(req: &DiscoveryRequest) -> &str {
        &req.type_url
    }

    fn on_request(w: &mut Watch<Self>, rt: ResourceType, req: DiscoveryRequest) -> Answer {
        let mut answer = Answer::None;
        if !req.response_nonce.is_empty() {
            if req.response_nonce != w.last_nonce {
                return Answer::Superseded;
            }
            // The newest response: its ACK or NACK if still unanswered; else a change of
            // subscription (e.g. EDS names for a new cluster) after it was ACKed.
            if let Some(done) = w.take_in_flight(&req.response_nonce) {
                answer = match &req.error_detail {
                    Some(err) => Answer::Nack(done.set, err.message.clone()),
                    None => {
                        w.sub.known = done.pending;
                        Answer::Ack(done.set)
                    }
                };
            }
        }
        let s = &mut w.sub;
        s.names = req
            .resource_names
            .iter()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        s.wildcard = req.resource_names.iter().any(|n| n == "*")
            || (rt.is_wildcard() && req.resource_names.is_empty());
        s.envoy_version = req.version_info;
        // A name Envoy no longer subscribes to is a name it no longer holds.
        let (names, wildcard) = (&s.names, s.wildcard);
        s.known.retain(|n, _| wildcard || names.contains(n));
        answer
    }

    fn response(
        w: &mut Watch<Self>,
        rt: ResourceType,
        set: &Arc<TypeSet>,
    ) -> Option<(DiscoveryResponse, Self::Pending)> {
        let s = &mut w.sub;
        let names = (s.names.clone(), s.wildcard);
        let first = s.sent_names.is_none();
        let names_changed = s.sent_names.as_ref() != Some(&names);
        let wanted = |n: &String| s.wildcard || s.names.contains(n);
        let mut pending = BTreeMap::new();
        let resources = if rt.sotw_subsets() && !s.wildcard {
            let lacking: Vec<_> = set
                .resources
                .iter()
                .filter(|(n, e)| wanted(n) && s.known.get(*n) != Some(&e.version))
                .collect();
            if !first && !names_changed && lacking.is_empty() {
                return None;
            }
            pending = s.known.clone();
            lacking
                .into_iter()
                .map(|(n, e)| {
                    pending.insert(n.clone(), e.version.clone());
                    e.wire()
                })
                .collect()
        } else {
            if !first && set.version == s.envoy_version && !names_changed {
                return None;
            }
            set.resources
                .iter()
                .filter(|(n, _)| wanted(n))
                .map(|(_, e)| e.wire())
                .collect()
        };
        s.sent_names = Some(names);
        let resp = DiscoveryResponse {
            version_info: set.version.clone(),
            resources,
            type_url: rt.url().to_string(),
            ..Default::default()
        };
        Some((resp, pending))
    }

    fn set_nonce(resp: &mut DiscoveryResponse, nonce: String) {
        resp.nonce = nonce;
    }

    fn counts(resp: &DiscoveryResponse) -> (usize, usize) {
        (resp.resources.len(), 0)
    }

    /// An empty response, once: a request that already holds it (its `version_info`) or that
    /// rejects it gets none, so ACKs end there.
    fn unknown(req: &DiscoveryRequest) -> Option<DiscoveryResponse> {
        let empty = TypeSet::empty();
        if req.error_detail.is_some() || req.version_info == empty.version {
            return None;
        }
        Some(DiscoveryResponse {
            version_info: empty.version.clone(),
            type_url: req.type_url.clone(),
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
    use portcullis_translator::xds::snapshot::{
        CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE,
    };

    const NODE: &str = "ns/gw";

    fn req(type_url: &str, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            node: node(NODE),
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ack(r: &DiscoveryResponse, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            ..req(&r.type_url, names)
        }
    }

    fn nack(r: &DiscoveryResponse, held: &str, why: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: held.into(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(RpcStatus {
                message: why.into(),
                ..Default::default()
            }),
            ..req(&r.type_url, &[])
        }
    }

    fn bodies(r: &DiscoveryResponse) -> Vec<String> {
        r.resources
            .iter()
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
            .collect()
    }

    fn one(mut v: Vec<DiscoveryResponse>) -> DiscoveryResponse {
        assert_eq!(v.len(), 1, "one response");
        v.remove(0)
    }

    #[test]
    fn an_unchanged_type_is_not_sent_again() {
        let mut h = Harness::<Sotw>::new();
        let s1 = snap(
            NODE,
            &[(CLUSTER_TYPE, "c", "c1"), (LISTENER_TYPE, "l", "l1")],
        );
        h.server.publish(&s1);
        let cds = one(h.request(req(CLUSTER_TYPE, &[])));
        assert_eq!(bodies(&cds), ["c1"]);
        assert!(h.request(ack(&cds, &[])).is_empty());
        let lds = one(h.request(req(LISTENER_TYPE, &[])));
        assert!(h.request(ack(&lds, &[])).is_empty());

        // Only the listener changes: only LDS goes out, with every listener.
        let s2 = snap(
            NODE,
            &[(CLUSTER_TYPE, "c", "c1"), (LISTENER_TYPE, "l", "l2")],
        );
        let pushed = one(h.publish(&s2));
        assert_eq!(pushed.type_url, LISTENER_TYPE);
        assert_eq!(bodies(&pushed), ["l2"]);
        assert!(h.request(ack(&pushed, &[])).is_empty());
        assert_eq!(h.server.status().nodes[NODE].synced_generation, Some(2));
    }

    #[test]
    fn rds_by_name_sends_only_the_changed_and_newly_subscribed_names() {
        let mut h = Harness::<Sotw>::new();
        let routes = |r: &str, s: &str| {
            snap(
                NODE,
                &[
                    (ROUTE_TYPE, "r", r),
                    (ROUTE_TYPE, "s", s),
                    (ROUTE_TYPE, "t", "t1"),
                ],
            )
        };
        h.server.publish(&routes("r1", "s1"));
        let first = one(h.request(req(ROUTE_TYPE, &["r", "s"])));
        assert_eq!(
            bodies(&first),
            ["r1", "s1"],
            "a first answer has every name"
        );
        assert!(h.request(ack(&first, &["r", "s"])).is_empty());

        let pushed = one(h.publish(&routes("r2", "s1")));
        assert_eq!(bodies(&pushed), ["r2"], "only the changed route");
        assert!(h.request(ack(&pushed, &["r", "s"])).is_empty());

        // A change to a route Envoy does not subscribe to: nothing to send, and still synced.
        let mut s3 = routes("r2", "s1");
        std::sync::Arc::make_mut(s3.get_mut(NODE).expect("node")).insert(
            ROUTE_TYPE,
            "t",
            prost_types::Any {
                type_url: ROUTE_TYPE.into(),
                value: b"t2".to_vec(),
            },
        );
        assert!(h.publish(&s3).is_empty());
        let st = h.server.status();
        assert_eq!(st.nodes[NODE].synced_generation, Some(st.generation));

        // A new name: only it goes out.
        let added = one(h.request(DiscoveryRequest {
            version_info: pushed.version_info.clone(),
            ..req(ROUTE_TYPE, &["r", "s", "t"])
        }));
        assert_eq!(bodies(&added), ["t2"]);
    }

    #[test]
    fn a_new_eds_name_after_an_ack_is_answered_and_a_stale_nonce_is_not() {
        let mut h = Harness::<Sotw>::new();
        let eds = |names: &[&str]| {
            let r: Vec<_> = names.iter().map(|n| (ENDPOINT_TYPE, *n, *n)).collect();
            snap(NODE, &r)
        };
        h.server.publish(&eds(&["a"]));
        let first = one(h.request(req(ENDPOINT_TYPE, &["a"])));
        assert!(h.request(ack(&first, &["a"])).is_empty());
        // A new cluster's endpoints appear; Envoy does not ask for them yet: nothing to send.
        assert!(h.publish(&eds(&["a", "b"])).is_empty());
        // Envoy subscribes to b, quoting the nonce it last got (already ACKed).
        let r = one(h.request(ack(&first, &["a", "b"])));
        assert_eq!(bodies(&r), ["b"]);
        // An older nonce than the newest response's is superseded.
        assert!(h.request(ack(&first, &["a", "b", "c"])).is_empty());
        assert!(h.request(ack(&r, &["a", "b"])).is_empty());
    }

    #[test]
    fn a_nack_keeps_the_last_good_set_and_reports_why() {
        let mut h = Harness::<Sotw>::new();
        h.server
            .publish(&snap(NODE, &[(CLUSTER_TYPE, "c", "good")]));
        let good = one(h.request(req(CLUSTER_TYPE, &[])));
        assert!(h.request(ack(&good, &[])).is_empty());

        let bad = one(h.publish(&snap(NODE, &[(CLUSTER_TYPE, "c", "bad")])));
        assert!(
            h.request(nack(&bad, &good.version_info, "bad cluster"))
                .is_empty(),
            "the rejected version is not sent again"
        );
        let st = &h.server.status().nodes[NODE].types["Cluster"];
        assert_eq!(st.state, EnvoyState::Nacked);
        assert_eq!(
            st.acked_version.as_deref(),
            Some(good.version_info.as_str())
        );
        assert_eq!(st.sent_version.as_deref(), Some(bad.version_info.as_str()));
        let n = st.nack.as_ref().expect("a NACK");
        assert_eq!(
            (n.version.as_str(), n.error.as_str()),
            (bad.version_info.as_str(), "bad cluster")
        );

        // A reconnecting Envoy gets the last good set, not the rejected one.
        let mut again = Harness::<Sotw>::on(&h.server);
        let r = one(again.request(req(CLUSTER_TYPE, &[])));
        assert_eq!(bodies(&r), ["good"]);
        assert_eq!(r.version_info, good.version_info);
        assert!(again.request(ack(&r, &[])).is_empty());

        // A fix goes out and its ACK clears the NACK.
        let fixed = one(h.publish(&snap(NODE, &[(CLUSTER_TYPE, "c", "fixed")])));
        assert_eq!(bodies(&fixed), ["fixed"]);
        assert!(h.request(ack(&fixed, &[])).is_empty());
        let st = &h.server.status().nodes[NODE].types["Cluster"];
        assert_eq!(st.state, EnvoyState::Acked);
        assert!(st.nack.is_none());
    }

    #[test]
    fn an_unknown_type_is_answered_once_and_not_tracked() {
        let mut h = Harness::<Sotw>::new();
        h.server.publish(&snap(NODE, &[(CLUSTER_TYPE, "c", "c1")]));
        let ecds = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
        let r = one(h.request(req(ecds, &["x"])));
        assert!(r.resources.is_empty());
        assert_eq!(r.type_url, ecds);
        assert!(h.request(ack(&r, &["x"])).is_empty(), "its ACK ends it");
        assert!(h.stream.watches.is_empty());
        let st = h.server.status();
        assert!(
            st.nodes[NODE].types.is_empty(),
            "{:?}",
            st.nodes[NODE].types
        );
    }
}
