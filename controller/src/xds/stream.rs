//! The one ADS stream loop, generic over the protocol (State of the World or Delta).
//!
//! A stream learns its node from the first request, then waits on three things: Envoy's next
//! request, a change of its node's resources (a per-node notification: publishing wakes only
//! the streams of nodes whose resources changed) and a due retry of a transient NACK.

use super::resource_type::ResourceType;
use super::shared::{NodeAuth, Shared};
use super::versions::TypeSet;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

/// How a request answered the response in flight.
pub(crate) enum Answer {
    /// It answered nothing (no nonce, or a nonce of an older response).
    None,
    Ack(Arc<TypeSet>),
    Nack(Arc<TypeSet>, String),
    /// A stale nonce in State of the World (not the newest response's): a newer response is on
    /// its way and the request is superseded; nothing else of it applies.
    Superseded,
}

/// A response awaiting Envoy's ACK or NACK.
pub(crate) struct InFlight<T> {
    pub nonce: String,
    pub set: Arc<TypeSet>,
    /// What the watch learns once Envoy ACKs.
    pub pending: T,
}

/// One subscribed type on one stream.
pub(crate) struct Watch<P: Protocol> {
    pub sub: P::Sub,
    pub in_flight: Option<InFlight<P::Pending>>,
    /// The nonce of the newest response sent (empty: none yet).
    pub last_nonce: String,
}

impl<P: Protocol> Default for Watch<P> {
    fn default() -> Self {
        Watch {
            sub: P::Sub::default(),
            in_flight: None,
            last_nonce: String::new(),
        }
    }
}

impl<P: Protocol> Watch<P> {
    /// Takes the response in flight if `nonce` is its nonce.
    pub fn take_in_flight(&mut self, nonce: &str) -> Option<InFlight<P::Pending>> {
        if self.in_flight.as_ref().is_some_and(|f| f.nonce == nonce) {
            self.in_flight.take()
        } else {
            None
        }
    }
}

/// What differs between State of the World and Delta.
pub(crate) trait Protocol: Sized + Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// A type's subscription on one stream.
    type Sub: Default + Send;
    type Pending: Send;
    /// For logs: `SotW` or `Delta`.
    const NAME: &'static str;
    /// The request message's name, for errors.
    const REQUEST: &'static str;

    fn node_id(req: &Self::Request) -> Option<&str>;
    fn type_url(req: &Self::Request) -> &str;
    /// Applies a request for `rt` to its watch: subscriptions and the ACK or NACK it carries.
    fn on_request(w: &mut Watch<Self>, rt: ResourceType, req: Self::Request) -> Answer;
    /// The response that brings Envoy to `set`, with what the watch learns on ACK; None when
    /// Envoy holds all it subscribes to already.
    fn response(
        w: &mut Watch<Self>,
        rt: ResourceType,
        set: &Arc<TypeSet>,
    ) -> Option<(Self::Response, Self::Pending)>;
    fn set_nonce(resp: &mut Self::Response, nonce: String);
    /// Resources updated and removed, for logs.
    fn counts(resp: &Self::Response) -> (usize, usize);
    /// The answer to a request for a type this server does not serve (nothing), or None. No
    /// state is kept for such a type.
    fn unknown(req: &Self::Request) -> Option<Self::Response>;
}

/// One ADS stream.
pub(crate) struct Stream<P: Protocol> {
    pub shared: Arc<Shared>,
    /// Which node ids this connection may ask for.
    pub auth: NodeAuth,
    pub node: Option<String>,
    /// Bumped whenever this node's published resources change.
    node_changes: Option<watch::Receiver<u64>>,
    pub watches: BTreeMap<ResourceType, Watch<P>>,
    pub retry: Retry,
    tx: mpsc::Sender<Result<P::Response, Status>>,
}

impl<P: Protocol> Stream<P> {
    pub fn new(
        shared: Arc<Shared>,
        auth: NodeAuth,
        tx: mpsc::Sender<Result<P::Response, Status>>,
    ) -> Self {
        Stream {
            shared,
            auth,
            node: None,
            node_changes: None,
            watches: BTreeMap::new(),
            retry: Retry::default(),
            tx,
        }
    }

    pub async fn run(mut self, mut inbound: Streaming<P::Request>) {
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if let Err(status) = self.on_request(req).await {
                            let _ = self.tx.send(Err(status)).await;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(node = ?self.node, protocol = P::NAME, error = %e, "ADS stream ended");
                        break;
                    }
                },
                changed = node_changed(&mut self.node_changes) => {
                    if !changed { break; }
                    if !self.push_all().await { break; }
                }
                _ = retry_due(self.retry.due) => {
                    self.fire_retries();
                    if !self.push_all().await { break; }
                }
            }
        }
        self.close();
    }

    /// Ends the stream's share in the node's state.
    pub fn close(&mut self) {
        if let Some(node) = self.node.take() {
            tracing::info!(node, "ADS stream closed ({})", P::NAME);
            self.shared.status.stream_closed(&node);
        }
    }

    /// Forgets the transient NACKs due for a retry, so that the next push sends them again.
    pub fn fire_retries(&mut self) {
        let node = self.node.clone().unwrap_or_default();
        self.retry.fire(&self.shared, &node);
    }

    pub async fn on_request(&mut self, req: P::Request) -> Result<(), Status> {
        if self.node.is_none() {
            let id = P::node_id(&req).unwrap_or_default().to_string();
            if id.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "first {} must carry node.id",
                    P::REQUEST
                )));
            }
            self.auth.check(&id)?;
            tracing::info!(node = %id, "ADS stream opened ({})", P::NAME);
            // Subscribe before the first read of the published state: no change is missed.
            self.node_changes = Some(self.shared.node_changes(&id));
            self.shared.status.stream_opened(&id);
            self.node = Some(id);
        }
        let node = self.node.clone().unwrap_or_default();
        let type_url = P::type_url(&req);
        if type_url.is_empty() {
            return Ok(());
        }
        let Some(rt) = ResourceType::from_url(type_url) else {
            tracing::debug!(
                node,
                protocol = P::NAME,
                type_url,
                "request for a type this server does not serve"
            );
            return match P::unknown(&req) {
                Some(mut resp) => {
                    P::set_nonce(&mut resp, self.shared.next_nonce());
                    self.send(resp).await
                }
                None => Ok(()),
            };
        };
        let w = self.watches.entry(rt).or_default();
        match P::on_request(w, rt, req) {
            Answer::Superseded => return Ok(()),
            Answer::None => {}
            Answer::Ack(set) => {
                self.retry.acked(rt);
                let published = self.shared.published();
                self.shared.status.record_ack(&published, &node, rt, &set);
            }
            Answer::Nack(set, error) => {
                self.shared
                    .status
                    .record_nack(&node, rt, &set.version, &error);
                if is_transient_nack(&error) {
                    self.retry.schedule(&node, rt, &set.version);
                }
            }
        }
        if self.maybe_send(rt).await {
            Ok(())
        } else {
            Err(Status::cancelled("stream closed"))
        }
    }

    async fn send(&self, resp: P::Response) -> Result<(), Status> {
        self.tx
            .send(Ok(resp))
            .await
            .map_err(|_| Status::cancelled("stream closed"))
    }

    /// Every subscribed type, in push order. False once the stream is gone.
    pub async fn push_all(&mut self) -> bool {
        for rt in ResourceType::ALL {
            if self.watches.contains_key(&rt) && !self.maybe_send(rt).await {
                return false;
            }
        }
        true
    }

    /// Sends what Envoy lacks of `rt`, unless a response is in flight. False once the stream is
    /// gone.
    async fn maybe_send(&mut self, rt: ResourceType) -> bool {
        let Some(node) = self.node.clone() else {
            return true;
        };
        let Some(w) = self.watches.get_mut(&rt) else {
            return true;
        };
        if w.in_flight.is_some() {
            return true;
        }
        let published = self.shared.published();
        let Some(set) = self.shared.status.desired(&published, &node, rt) else {
            return true;
        };
        let Some((mut resp, pending)) = P::response(w, rt, &set) else {
            self.shared
                .status
                .record_current(&published, &node, rt, &set);
            return true;
        };
        let nonce = self.shared.next_nonce();
        P::set_nonce(&mut resp, nonce.clone());
        w.last_nonce.clone_from(&nonce);
        w.in_flight = Some(InFlight {
            nonce,
            set: set.clone(),
            pending,
        });
        let (updated, removed) = P::counts(&resp);
        tracing::debug!(node, protocol = P::NAME, type_url = rt.short(), version = %set.version, updated, removed, "xDS push");
        self.shared.status.record_sent(&node, rt, &set.version);
        self.tx.send(Ok(resp)).await.is_ok()
    }
}

/// Whether the node's resources changed (false: the server is gone); never, before the node is
/// known.
async fn node_changed(rx: &mut Option<watch::Receiver<u64>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// A NACK that clears by itself: Envoy rejects a listener whose remote dynamic module it has
/// not cached yet (`nack_on_cache_miss`) while it fetches the module in the background. The
/// same version must be sent again once the fetch is done.
fn is_transient_nack(error: &str) -> bool {
    error.contains("background fetch in progress")
}

const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Re-sends of transiently NACKed types on one stream, with a doubling delay (1 s to 30 s) that
/// restarts once Envoy ACKs.
#[derive(Default)]
pub(crate) struct Retry {
    due: Option<tokio::time::Instant>,
    delay: Option<std::time::Duration>,
    /// Each type and the NACKed version to forget when the retry is due.
    pending: BTreeMap<ResourceType, String>,
}

impl Retry {
    fn schedule(&mut self, node: &str, rt: ResourceType, version: &str) {
        let delay = self.delay.map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX));
        self.delay = Some(delay);
        self.pending.insert(rt, version.to_string());
        if self.due.is_none() {
            self.due = Some(tokio::time::Instant::now() + delay);
        }
        tracing::info!(
            node,
            type_url = rt.short(),
            version,
            retry_in_ms = delay.as_millis() as u64,
            "Envoy is fetching a dynamic module; sending the update again later"
        );
    }

    fn acked(&mut self, rt: ResourceType) {
        self.pending.remove(&rt);
        if self.pending.is_empty() {
            self.delay = None;
            self.due = None;
        }
    }

    /// The types due for a re-send; clears their NACKs.
    fn fire(&mut self, shared: &Shared, node: &str) {
        self.due = None;
        for (rt, version) in std::mem::take(&mut self.pending) {
            shared.status.clear_nack(node, rt, &version);
        }
    }
}

/// Waits until `due`, or forever when there is nothing to retry.
async fn retry_due(due: Option<tokio::time::Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A stream driven by hand, as its loop would: for the protocol tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::metrics::Metrics;
    use crate::xds::server::XdsServer;
    use portcullis_translator::xds::snapshot::{XdsResources, XdsSnapshot};

    pub struct Harness<P: Protocol> {
        pub server: XdsServer,
        pub stream: Stream<P>,
        rx: mpsc::Receiver<Result<P::Response, Status>>,
        rt: tokio::runtime::Runtime,
    }

    impl<P: Protocol> Harness<P> {
        pub fn new() -> Self {
            Self::on(&XdsServer::new(Metrics::new()))
        }

        /// Another stream on `server`.
        pub fn on(server: &XdsServer) -> Self {
            let (tx, rx) = mpsc::channel(64);
            Harness {
                server: server.clone(),
                stream: Stream::new(server.shared.clone(), NodeAuth::Any, tx),
                rx,
                rt: tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime"),
            }
        }

        fn drain(&mut self) -> Vec<P::Response> {
            let mut out = Vec::new();
            while let Ok(r) = self.rx.try_recv() {
                out.push(r.expect("no error status"));
            }
            out
        }

        pub fn request(&mut self, req: P::Request) -> Vec<P::Response> {
            self.rt
                .block_on(self.stream.on_request(req))
                .expect("request accepted");
            self.drain()
        }

        /// Whether the stream's node-change notification fired since the last call (the loop's
        /// wake-up), marking it seen.
        pub fn woken(&mut self) -> bool {
            match &mut self.stream.node_changes {
                Some(rx) => {
                    let changed = rx.has_changed().unwrap_or(true);
                    rx.borrow_and_update();
                    changed
                }
                None => false,
            }
        }

        /// What the loop sends once woken (nothing unless woken).
        pub fn wake(&mut self) -> Vec<P::Response> {
            if !self.woken() {
                return Vec::new();
            }
            assert!(self.rt.block_on(self.stream.push_all()));
            self.drain()
        }

        /// Publishes `snap` and returns what this stream sends for it.
        pub fn publish(&mut self, snap: &XdsSnapshot) -> Vec<P::Response> {
            self.server.publish(snap);
            self.wake()
        }
    }

    /// A snapshot of one node: `(type URL, name, bytes)`.
    pub fn snap(node: &str, resources: &[(&str, &str, &str)]) -> XdsSnapshot {
        let mut r = XdsResources::default();
        for (type_url, name, value) in resources {
            r.insert(
                type_url,
                *name,
                prost_types::Any {
                    type_url: type_url.to_string(),
                    value: value.as_bytes().to_vec(),
                },
            );
        }
        XdsSnapshot::from([(node.to_string(), std::sync::Arc::new(r))])
    }

    pub fn node(id: &str) -> Option<envoy_types::pb::envoy::config::core::v3::Node> {
        Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: id.into(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use crate::xds::delta::Delta;
    use crate::xds::sotw::Sotw;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use portcullis_translator::xds::snapshot::{CLUSTER_TYPE, LISTENER_TYPE};

    fn both(a: &str, b: &str) -> portcullis_translator::xds::snapshot::XdsSnapshot {
        let mut s = snap("ns/a", &[(CLUSTER_TYPE, "c", a), (LISTENER_TYPE, "l", "l")]);
        s.extend(snap(
            "ns/b",
            &[(CLUSTER_TYPE, "c", b), (LISTENER_TYPE, "l", "l")],
        ));
        s
    }

    #[test]
    fn publishing_wakes_only_the_streams_of_changed_nodes() {
        let mut a = Harness::<Sotw>::new();
        let mut b = Harness::<Delta>::on(&a.server);
        a.server.publish(&both("1", "1"));
        let r = a.request(DiscoveryRequest {
            node: node("ns/a"),
            type_url: CLUSTER_TYPE.into(),
            ..Default::default()
        });
        assert_eq!(r.len(), 1);
        let ack = DiscoveryRequest {
            version_info: r[0].version_info.clone(),
            response_nonce: r[0].nonce.clone(),
            type_url: CLUSTER_TYPE.into(),
            ..Default::default()
        };
        assert!(a.request(ack).is_empty());
        let r = b.request(
            envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
                node: node("ns/b"),
                type_url: CLUSTER_TYPE.into(),
                ..Default::default()
            },
        );
        assert_eq!(r.len(), 1);
        assert!(b
            .request(
                envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
                    response_nonce: r[0].nonce.clone(),
                    type_url: CLUSTER_TYPE.into(),
                    ..Default::default()
                }
            )
            .is_empty());
        let synced = |h: &Harness<Sotw>, n: &str| h.server.status().nodes[n].synced_generation;
        assert_eq!(synced(&a, "ns/a"), Some(1));
        assert_eq!(synced(&a, "ns/b"), Some(1));

        // Only ns/a changes: its stream wakes and pushes, ns/b's sleeps.
        a.server.publish(&both("2", "1"));
        assert!(!b.woken(), "ns/b's resources did not change");
        assert_eq!(a.wake().len(), 1);
        // The unchanged node is synced at the new generation without a push.
        assert_eq!(synced(&a, "ns/b"), Some(2));
        assert_eq!(synced(&a, "ns/a"), Some(1), "ns/a has not ACKed yet");
        // An identical snapshot wakes nobody.
        a.server.publish(&both("2", "1"));
        assert!(!a.woken() && !b.woken());
        // ns/b's turn.
        a.server.publish(&both("2", "2"));
        assert!(!a.woken());
        assert_eq!(b.wake().len(), 1);
    }
}
