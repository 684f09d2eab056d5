//! Aggregated Discovery Service (ADS) over gRPC, State-of-the-World and Delta.
//!
//! The translator publishes a full [`XdsSnapshot`] (one resource set per node). Each stream
//! serves its node's set. Versions are content hashes, so an unchanged type is never re-pushed.
//! ACK/NACK is tracked per node and type: a NACKed version is never re-sent, and a node whose
//! current version was rejected keeps getting the last version it ACKed (also after a reconnect).

use crate::metrics::{short_type, type_label, Metrics};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use portcullis_translator::xds::snapshot::{
    XdsSnapshot, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Push order: clusters before endpoints, secrets and listeners before routes (make before break).
const PUSH_ORDER: [&str; 5] = [
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    SECRET_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
];

/// One type's resources for one node, with its content-hash version.
#[derive(Debug)]
struct TypeSet {
    version: String,
    resources: BTreeMap<String, Any>,
    /// Per-resource versions (Delta xDS).
    resource_versions: BTreeMap<String, String>,
}

impl TypeSet {
    fn new(resources: BTreeMap<String, Any>) -> Self {
        let mut all = Sha256::new();
        let mut resource_versions = BTreeMap::new();
        for (name, any) in &resources {
            let h = Sha256::new()
                .chain_update(any.type_url.as_bytes())
                .chain_update(&any.value)
                .finalize();
            let v = hex::encode(&h[..8]);
            all.update(name.as_bytes());
            all.update([0]);
            all.update(v.as_bytes());
            resource_versions.insert(name.clone(), v);
        }
        TypeSet {
            version: hex::encode(&all.finalize()[..8]),
            resources,
            resource_versions,
        }
    }
}

#[derive(Debug, Default)]
struct Published {
    generation: u64,
    nodes: BTreeMap<String, BTreeMap<String, Arc<TypeSet>>>,
}

impl Published {
    fn type_set(&self, node: &str, type_url: &str) -> Arc<TypeSet> {
        self.nodes
            .get(node)
            .and_then(|t| t.get(type_url))
            .cloned()
            .unwrap_or_else(|| Arc::new(TypeSet::new(BTreeMap::new())))
    }
}

/// A rejected version and Envoy's reason.
#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    pub version: String,
    pub error: String,
    pub at_unix: u64,
}

/// What the server knows of one node and type.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    pub nack: Option<Nack>,
    #[serde(skip)]
    last_good: Option<Arc<TypeSet>>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub connected_streams: u32,
    /// The newest snapshot generation this node has fully ACKed (every type it subscribes to).
    pub synced_generation: Option<u64>,
    pub types: BTreeMap<String, TypeStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsStatus {
    pub generation: u64,
    pub nodes: BTreeMap<String, NodeStatus>,
}

struct Shared {
    snapshot: watch::Sender<Arc<Published>>,
    nodes: Mutex<BTreeMap<String, NodeStatus>>,
    nonce: AtomicU64,
    metrics: Metrics,
}

impl Shared {
    fn nodes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NodeStatus>> {
        // A panic while holding this lock leaves plain data behind: keep serving.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_nonce(&self) -> String {
        self.nonce.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// The set to serve to `node` for `type_url`: the current one, unless the node rejected exactly
    /// that version, then the last one it ACKed (None: nothing good to send).
    fn desired(&self, published: &Published, node: &str, type_url: &str) -> Option<Arc<TypeSet>> {
        let current = published.type_set(node, type_url);
        let nodes = self.nodes();
        let ts = nodes
            .get(node)
            .and_then(|n| n.types.get(short_type(type_url)));
        match ts {
            Some(TypeStatus {
                nack: Some(n),
                last_good,
                ..
            }) if n.version == current.version => last_good.clone(),
            _ => Some(current),
        }
    }

    fn record_sent(&self, node: &str, type_url: &str, version: &str) {
        self.metrics
            .xds_pushes
            .get_or_create(&type_label(type_url))
            .inc();
        let mut nodes = self.nodes();
        let ts = nodes
            .entry(node.to_string())
            .or_default()
            .types
            .entry(short_type(type_url).to_string())
            .or_default();
        ts.sent_version = Some(version.to_string());
    }

    fn record_ack(&self, node: &str, type_url: &str, set: &Arc<TypeSet>) {
        self.metrics
            .xds_acks
            .get_or_create(&type_label(type_url))
            .inc();
        let published = self.snapshot.borrow().clone();
        let mut nodes = self.nodes();
        let ns = nodes.entry(node.to_string()).or_default();
        let ts = ns
            .types
            .entry(short_type(type_url).to_string())
            .or_default();
        ts.acked_version = Some(set.version.clone());
        ts.last_good = Some(set.clone());
        let current = published.type_set(node, type_url);
        if ts
            .nack
            .as_ref()
            .is_some_and(|n| n.version != current.version)
            && set.version == current.version
        {
            tracing::info!(node, type_url = short_type(type_url), version = %set.version, "xDS recovered: new version ACKed");
            ts.nack = None;
        }
        // Synced when every type this node has seen is ACKed at the current version.
        let synced = ns.types.iter().all(|(t, s)| {
            let full = PUSH_ORDER
                .iter()
                .find(|u| short_type(u) == t)
                .copied()
                .unwrap_or(t);
            s.acked_version.as_deref() == Some(published.type_set(node, full).version.as_str())
        });
        if synced {
            ns.synced_generation = Some(published.generation);
        }
    }

    fn record_nack(&self, node: &str, type_url: &str, version: &str, error: &str) {
        self.metrics
            .xds_nacks
            .get_or_create(&type_label(type_url))
            .inc();
        tracing::warn!(
            node,
            type_url = short_type(type_url),
            version,
            error,
            "Envoy rejected xDS (NACK); keeping the last good version"
        );
        let at_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut nodes = self.nodes();
        let ts = nodes
            .entry(node.to_string())
            .or_default()
            .types
            .entry(short_type(type_url).to_string())
            .or_default();
        ts.nack = Some(Nack {
            version: version.to_string(),
            error: error.to_string(),
            at_unix,
        });
    }

    /// Forgets the NACK of `version` so that [`Self::desired`] serves the current set again
    /// (a retry of a transient rejection).
    fn clear_nack(&self, node: &str, type_url: &str, version: &str) {
        let mut nodes = self.nodes();
        if let Some(ts) = nodes
            .get_mut(node)
            .and_then(|n| n.types.get_mut(short_type(type_url)))
        {
            if ts.nack.as_ref().is_some_and(|n| n.version == version) {
                ts.nack = None;
            }
        }
    }

    fn stream_opened(&self, node: &str) {
        self.metrics.xds_streams.inc();
        self.nodes()
            .entry(node.to_string())
            .or_default()
            .connected_streams += 1;
    }

    fn stream_closed(&self, node: &str) {
        self.metrics.xds_streams.dec();
        if let Some(n) = self.nodes().get_mut(node) {
            n.connected_streams = n.connected_streams.saturating_sub(1);
        }
    }
}

/// The ADS server: publish snapshots, serve them to Envoys, report ACK/NACK state.
#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer").finish_non_exhaustive()
    }
}

impl XdsServer {
    pub fn new(metrics: Metrics) -> Self {
        let (snapshot, _) = watch::channel(Arc::new(Published::default()));
        XdsServer {
            shared: Arc::new(Shared {
                snapshot,
                nodes: Mutex::new(BTreeMap::new()),
                nonce: AtomicU64::new(1),
                metrics,
            }),
        }
    }

    /// Replace the desired state. Returns the generation now served; an identical snapshot
    /// keeps the current generation and wakes no stream.
    pub fn publish(&self, snapshot: &XdsSnapshot) -> u64 {
        let mut nodes = BTreeMap::new();
        for (node, res) in snapshot {
            let mut types = BTreeMap::new();
            for (type_url, by_name) in &res.by_type {
                let resources = by_name
                    .iter()
                    .map(|(n, a)| {
                        (
                            n.clone(),
                            Any {
                                type_url: a.type_url.clone(),
                                value: a.value.clone(),
                            },
                        )
                    })
                    .collect();
                types.insert(type_url.clone(), Arc::new(TypeSet::new(resources)));
            }
            nodes.insert(node.clone(), types);
        }
        let current = self.shared.snapshot.borrow().clone();
        let same = current.nodes.len() == nodes.len()
            && current
                .nodes
                .iter()
                .zip(nodes.iter())
                .all(|((an, at), (bn, bt))| {
                    an == bn
                        && at.len() == bt.len()
                        && at
                            .iter()
                            .zip(bt.iter())
                            .all(|((ak, av), (bk, bv))| ak == bk && av.version == bv.version)
                });
        if same && current.generation > 0 {
            return current.generation;
        }
        let generation = current.generation + 1;
        self.shared
            .metrics
            .snapshot_generation
            .set(generation as i64);
        self.shared
            .snapshot
            .send_replace(Arc::new(Published { generation, nodes }));
        tracing::debug!(generation, "published xDS snapshot");
        generation
    }

    pub fn generation(&self) -> u64 {
        self.shared.snapshot.borrow().generation
    }

    pub fn status(&self) -> XdsStatus {
        XdsStatus {
            generation: self.generation(),
            nodes: self.shared.nodes().clone(),
        }
    }

    /// Forget the ACK/NACK history of nodes that are neither wanted nor connected (their
    /// Gateway is gone and its Envoy has stopped).
    pub fn retain_nodes(&self, wanted: &[String]) {
        self.shared
            .nodes()
            .retain(|node, n| n.connected_streams > 0 || wanted.contains(node));
    }

    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsService> {
        AggregatedDiscoveryServiceServer::new(AdsService {
            shared: self.shared.clone(),
        })
        // A DiscoveryRequest is names, versions and an error detail: 4 MiB holds a Delta
        // subscription to well over 10,000 resources, and bounds what a peer can make us buffer.
        .max_decoding_message_size(4 << 20)
    }

    /// Serve ADS on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            )
            .await
    }

    /// Serve ADS on verified mutual-TLS connections (Kubernetes mode) until `shutdown` resolves.
    pub async fn serve_tls(
        &self,
        conns: tokio::sync::mpsc::Receiver<crate::tls::TlsConn>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(crate::tls::incoming_stream(conns), shutdown)
            .await
    }
}

/// Which node ids a connection may serve: any over plain TCP (local mode, loopback); over
/// mutual TLS only the node its client certificate was issued for, so one Gateway's fleet cannot
/// read another's configuration (OIDC client secrets included).
#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeAuth {
    Any,
    Only(String),
    /// A verified certificate that names no Gateway.
    NoGateway,
}

impl NodeAuth {
    fn of<T>(request: &Request<T>) -> Self {
        match request.extensions().get::<crate::tls::TlsPeer>() {
            None => NodeAuth::Any,
            Some(peer) => match &peer.node_id {
                Some(id) => NodeAuth::Only(id.clone()),
                None => NodeAuth::NoGateway,
            },
        }
    }

    fn check(&self, node_id: &str) -> Result<(), Status> {
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

/// The tonic service; one task per stream.
pub struct AdsService {
    shared: Arc<Shared>,
}

type RespStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = RespStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = RespStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let auth = NodeAuth::of(&request);
        let (tx, rx) = mpsc::channel(16);
        let stream = SotwStream {
            shared: self.shared.clone(),
            auth,
            node: None,
            watches: HashMap::new(),
            retry: Retry::default(),
            tx,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let auth = NodeAuth::of(&request);
        let (tx, rx) = mpsc::channel(16);
        let stream = DeltaStream {
            shared: self.shared.clone(),
            auth,
            node: None,
            watches: HashMap::new(),
            retry: Retry::default(),
            tx,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER_TYPE || type_url == CLUSTER_TYPE
}

// ---------------------------------------------------------------- State of the World

#[derive(Default)]
struct SotwWatch {
    names: BTreeSet<String>,
    wildcard: bool,
    /// Version Envoy reported it holds (request `version_info`).
    envoy_version: String,
    /// Names the last response was computed for.
    sent_names: Option<(BTreeSet<String>, bool)>,
    /// Response awaiting ACK/NACK: (nonce, set sent).
    in_flight: Option<(String, Arc<TypeSet>)>,
}

struct SotwStream {
    shared: Arc<Shared>,
    /// Which node ids this connection may ask for.
    auth: NodeAuth,
    node: Option<String>,
    watches: HashMap<String, SotwWatch>,
    retry: Retry,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl SotwStream {
    async fn run(mut self, mut inbound: Streaming<DiscoveryRequest>) {
        let mut snap_rx = self.shared.snapshot.subscribe();
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
                        tracing::debug!(node = ?self.node, error = %e, "ADS stream ended");
                        break;
                    }
                },
                changed = snap_rx.changed() => {
                    if changed.is_err() { break; }
                    if !self.push_all().await { break; }
                }
                _ = retry_due(self.retry.due) => {
                    let node = self.node.clone().unwrap_or_default();
                    self.retry.fire(&self.shared, &node);
                    if !self.push_all().await { break; }
                }
            }
        }
        if let Some(node) = &self.node {
            tracing::info!(node, "ADS stream closed");
            self.shared.stream_closed(node);
        }
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), Status> {
        if self.node.is_none() {
            let id = req.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
            if id.is_empty() {
                return Err(Status::invalid_argument(
                    "first DiscoveryRequest must carry node.id",
                ));
            }
            self.auth.check(&id)?;
            tracing::info!(node = %id, "ADS stream opened (SotW)");
            self.shared.stream_opened(&id);
            self.node = Some(id);
        }
        let node = self.node.clone().unwrap_or_default();
        if req.type_url.is_empty() {
            return Ok(());
        }
        let w = self.watches.entry(req.type_url.clone()).or_default();
        if !req.response_nonce.is_empty() {
            match &w.in_flight {
                Some((nonce, set)) if *nonce == req.response_nonce => {
                    let set = set.clone();
                    w.in_flight = None;
                    match &req.error_detail {
                        Some(err) => {
                            self.shared.record_nack(
                                &node,
                                &req.type_url,
                                &set.version,
                                &err.message,
                            );
                            if is_transient_nack(&err.message) {
                                self.retry.schedule(&node, &req.type_url, &set.version);
                            }
                        }
                        None => {
                            self.retry.acked(&req.type_url);
                            self.shared.record_ack(&node, &req.type_url, &set);
                        }
                    }
                }
                // Stale nonce: a newer response is on its way, this request is superseded.
                _ => return Ok(()),
            }
        }
        let w = self.watches.entry(req.type_url.clone()).or_default();
        w.names = req
            .resource_names
            .iter()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        w.wildcard = req.resource_names.iter().any(|n| n == "*")
            || (is_wildcard_type(&req.type_url) && req.resource_names.is_empty());
        w.envoy_version = req.version_info;
        let type_url = req.type_url;
        if self.maybe_send(&type_url).await {
            Ok(())
        } else {
            Err(Status::cancelled("stream closed"))
        }
    }

    async fn push_all(&mut self) -> bool {
        for t in PUSH_ORDER.iter().map(|s| s.to_string()).chain(
            self.watches
                .keys()
                .filter(|k| !PUSH_ORDER.contains(&k.as_str()))
                .cloned()
                .collect::<Vec<_>>(),
        ) {
            if self.watches.contains_key(&t) && !self.maybe_send(&t).await {
                return false;
            }
        }
        true
    }

    /// Send `type_url` if Envoy lacks the desired version or asked for other names. Returns false
    /// once the stream is gone.
    async fn maybe_send(&mut self, type_url: &str) -> bool {
        let Some(node) = self.node.clone() else {
            return true;
        };
        let published = self.shared.snapshot.borrow().clone();
        let Some(w) = self.watches.get_mut(type_url) else {
            return true;
        };
        if w.in_flight.is_some() {
            return true;
        }
        let Some(set) = self.shared.desired(&published, &node, type_url) else {
            return true;
        };
        let names = (w.names.clone(), w.wildcard);
        let first = w.sent_names.is_none();
        if !first && set.version == w.envoy_version && w.sent_names.as_ref() == Some(&names) {
            return true;
        }
        let resources: Vec<Any> = set
            .resources
            .iter()
            .filter(|(n, _)| w.wildcard || w.names.contains(*n))
            .map(|(_, a)| a.clone())
            .collect();
        let nonce = self.shared.next_nonce();
        w.sent_names = Some(names);
        w.in_flight = Some((nonce.clone(), set.clone()));
        tracing::debug!(node, type_url = short_type(type_url), version = %set.version, count = resources.len(), "xDS push");
        self.shared.record_sent(&node, type_url, &set.version);
        let resp = DiscoveryResponse {
            version_info: set.version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        };
        self.tx.send(Ok(resp)).await.is_ok()
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
struct Retry {
    due: Option<tokio::time::Instant>,
    delay: Option<std::time::Duration>,
    /// Type URL and the NACKed version to forget when the retry is due.
    pending: BTreeMap<String, String>,
}

impl Retry {
    fn schedule(&mut self, node: &str, type_url: &str, version: &str) {
        let delay = self.delay.map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX));
        self.delay = Some(delay);
        self.pending
            .insert(type_url.to_string(), version.to_string());
        if self.due.is_none() {
            self.due = Some(tokio::time::Instant::now() + delay);
        }
        tracing::info!(
            node,
            type_url = short_type(type_url),
            version,
            retry_in_ms = delay.as_millis() as u64,
            "Envoy is fetching a dynamic module; sending the update again later"
        );
    }

    fn acked(&mut self, type_url: &str) {
        self.pending.remove(type_url);
        if self.pending.is_empty() {
            self.delay = None;
            self.due = None;
        }
    }

    /// The types due for a re-send; clears their NACKs in `shared`.
    fn fire(&mut self, shared: &Shared, node: &str) {
        self.due = None;
        for (type_url, version) in std::mem::take(&mut self.pending) {
            shared.clear_nack(node, &type_url, &version);
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

// ---------------------------------------------------------------- Delta

#[derive(Default)]
struct DeltaWatch {
    names: BTreeSet<String>,
    wildcard: bool,
    /// Resource versions Envoy holds (as far as ACKs tell).
    known: BTreeMap<String, String>,
    /// Names newly subscribed that need an answer even if unchanged.
    fresh: BTreeSet<String>,
    /// Response awaiting ACK/NACK: (nonce, set, what `known` becomes on ACK).
    in_flight: Option<(String, Arc<TypeSet>, BTreeMap<String, String>)>,
    started: bool,
    /// Whether this stream answered this type yet: the first answer goes out even when empty,
    /// or Envoy waits for its initial fetch timeout.
    answered: bool,
}

struct DeltaStream {
    shared: Arc<Shared>,
    /// Which node ids this connection may ask for.
    auth: NodeAuth,
    node: Option<String>,
    watches: HashMap<String, DeltaWatch>,
    retry: Retry,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl DeltaStream {
    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>) {
        let mut snap_rx = self.shared.snapshot.subscribe();
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
                        tracing::debug!(node = ?self.node, error = %e, "delta ADS stream ended");
                        break;
                    }
                },
                changed = snap_rx.changed() => {
                    if changed.is_err() { break; }
                    if !self.push_all().await { break; }
                }
                _ = retry_due(self.retry.due) => {
                    let node = self.node.clone().unwrap_or_default();
                    self.retry.fire(&self.shared, &node);
                    if !self.push_all().await { break; }
                }
            }
        }
        if let Some(node) = &self.node {
            tracing::info!(node, "delta ADS stream closed");
            self.shared.stream_closed(node);
        }
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Status> {
        if self.node.is_none() {
            let id = req.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
            if id.is_empty() {
                return Err(Status::invalid_argument(
                    "first DeltaDiscoveryRequest must carry node.id",
                ));
            }
            self.auth.check(&id)?;
            tracing::info!(node = %id, "ADS stream opened (Delta)");
            self.shared.stream_opened(&id);
            self.node = Some(id);
        }
        let node = self.node.clone().unwrap_or_default();
        if req.type_url.is_empty() {
            return Ok(());
        }
        let w = self.watches.entry(req.type_url.clone()).or_default();
        if !w.started {
            w.started = true;
            w.wildcard = is_wildcard_type(&req.type_url) && req.resource_names_subscribe.is_empty();
            w.known = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                w.wildcard = true;
            } else if w.names.insert(n.clone()) {
                w.fresh.insert(n.clone());
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                w.wildcard = false;
            } else {
                w.names.remove(n);
                w.known.remove(n);
                w.fresh.remove(n);
            }
        }
        if !req.response_nonce.is_empty() {
            match &w.in_flight {
                Some((nonce, set, known)) if *nonce == req.response_nonce => {
                    let (set, known) = (set.clone(), known.clone());
                    w.in_flight = None;
                    match &req.error_detail {
                        Some(err) => {
                            self.shared.record_nack(
                                &node,
                                &req.type_url,
                                &set.version,
                                &err.message,
                            );
                            if is_transient_nack(&err.message) {
                                self.retry.schedule(&node, &req.type_url, &set.version);
                            }
                        }
                        None => {
                            self.retry.acked(&req.type_url);
                            // Keep unsubscriptions that arrived with the ACK.
                            let w_names = (w.wildcard, w.names.clone());
                            w.known = known
                                .into_iter()
                                .filter(|(n, _)| w_names.0 || w_names.1.contains(n))
                                .collect();
                            self.shared.record_ack(&node, &req.type_url, &set);
                        }
                    }
                }
                _ => {}
            }
        }
        let type_url = req.type_url;
        if self.maybe_send(&type_url).await {
            Ok(())
        } else {
            Err(Status::cancelled("stream closed"))
        }
    }

    async fn push_all(&mut self) -> bool {
        for t in PUSH_ORDER {
            if self.watches.contains_key(t) && !self.maybe_send(t).await {
                return false;
            }
        }
        true
    }

    async fn maybe_send(&mut self, type_url: &str) -> bool {
        let Some(node) = self.node.clone() else {
            return true;
        };
        let published = self.shared.snapshot.borrow().clone();
        let Some(w) = self.watches.get_mut(type_url) else {
            return true;
        };
        if w.in_flight.is_some() {
            return true;
        }
        let Some(set) = self.shared.desired(&published, &node, type_url) else {
            return true;
        };
        let wanted = |n: &String| w.wildcard || w.names.contains(n);
        let mut resources = Vec::new();
        let mut next_known = w.known.clone();
        for (name, any) in set.resources.iter().filter(|(n, _)| wanted(n)) {
            let v = set.resource_versions.get(name).cloned().unwrap_or_default();
            if w.known.get(name) != Some(&v) {
                resources.push(Resource {
                    name: name.clone(),
                    version: v.clone(),
                    resource: Some(any.clone()),
                    ..Default::default()
                });
                next_known.insert(name.clone(), v);
            }
        }
        let mut removed: Vec<String> = w
            .known
            .keys()
            .filter(|n| !set.resources.contains_key(*n) || !wanted(n))
            .cloned()
            .collect();
        // Subscribed names that do not exist: say so, so Envoy stops waiting for them.
        removed.extend(
            w.fresh
                .iter()
                .filter(|n| !set.resources.contains_key(*n) && !w.known.contains_key(*n))
                .cloned(),
        );
        for r in &removed {
            next_known.remove(r);
        }
        let fresh_pending = !w.fresh.is_empty();
        w.fresh.clear();
        if resources.is_empty() && removed.is_empty() && !fresh_pending && w.answered {
            return true;
        }
        w.answered = true;
        let nonce = self.shared.next_nonce();
        w.in_flight = Some((nonce.clone(), set.clone(), next_known));
        tracing::debug!(node, type_url = short_type(type_url), version = %set.version, updated = resources.len(), removed = removed.len(), "delta xDS push");
        self.shared.record_sent(&node, type_url, &set.version);
        let resp = DeltaDiscoveryResponse {
            system_version_info: set.version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        self.tx.send(Ok(resp)).await.is_ok()
    }
}

/// Entry points for the `xds_sotw` and `xds_delta` fuzz targets (`controller/fuzz`): requests
/// decoded from bytes go through the same `on_request` and `push_all` as a live stream's loop.
/// Nothing here may panic, whatever the bytes.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;
    use prost::Message;

    /// Nodes of the published snapshot. Every resource's value is `<node>:<name>`, so a
    /// response shows whose resources it carries.
    const NODES: [&str; 2] = ["ns/gw", "other/gw"];

    fn snapshot(round: u8) -> XdsSnapshot {
        let mut snap = XdsSnapshot::new();
        for node in NODES {
            let mut r = portcullis_translator::xds::snapshot::XdsResources::default();
            for (type_url, names) in [
                (CLUSTER_TYPE, &["a", "b", "c"][..]),
                (ENDPOINT_TYPE, &["a", "b"][..]),
                (LISTENER_TYPE, &["l"][..]),
                (ROUTE_TYPE, &["r", "s"][..]),
                (SECRET_TYPE, &["k"][..]),
            ] {
                // Each round drops one resource and changes another.
                for (i, name) in names.iter().enumerate() {
                    if (i + usize::from(round)) % 4 == 3 {
                        continue;
                    }
                    let mut value = format!("{node}:{name}");
                    if (i + usize::from(round)) % 2 == 1 {
                        value.push_str(&format!("#{round}"));
                    }
                    r.insert(
                        type_url,
                        *name,
                        prost_types::Any {
                            type_url: type_url.into(),
                            value: value.into_bytes(),
                        },
                    );
                }
            }
            snap.insert(node.to_string(), r);
        }
        snap
    }

    /// What a frame of the input asks for.
    enum Frame<'a> {
        /// A zero-length frame: publish the next snapshot (the stream loop's `changed` arm).
        Publish,
        /// A one-byte frame: fire the retries (the loop's `retry_due` arm).
        Retry,
        /// Anything longer: an encoded request.
        Request(&'a [u8]),
    }

    /// `data`: one byte for the connection's identity (`% 3`: plain TCP, a client certificate
    /// for `ns/gw`, a certificate that names no Gateway), then frames of a 2-byte big-endian
    /// length and that many bytes.
    fn frames(data: &[u8]) -> Option<(NodeAuth, Vec<Frame<'_>>)> {
        let (&first, mut rest) = data.split_first()?;
        let auth = match first % 3 {
            0 => NodeAuth::Any,
            1 => NodeAuth::Only(NODES[0].to_string()),
            _ => NodeAuth::NoGateway,
        };
        let mut out = Vec::new();
        while rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let body = &rest[2..];
            let frame = &body[..len.min(body.len())];
            rest = &body[frame.len()..];
            out.push(match frame.len() {
                0 => Frame::Publish,
                1 => Frame::Retry,
                _ => Frame::Request(frame),
            });
        }
        Some((auth, out))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    }

    /// The node a connection may end up serving.
    fn check_node(auth: &NodeAuth, node: &Option<String>) {
        match (auth, node) {
            (NodeAuth::Only(id), Some(n)) => assert_eq!(id, n),
            (NodeAuth::NoGateway, Some(n)) => panic!("node {n:?} served without a Gateway"),
            _ => {}
        }
    }

    /// The name of a resource of the stream's own node (values are `<node>:<name>[#<round>]`).
    fn resource_name(node: &str, any: &Any) -> String {
        let value = String::from_utf8_lossy(&any.value);
        let (owner, rest) = value.rsplit_once(':').expect("a fixture resource");
        assert_eq!(owner, node, "another node's resource");
        rest.split('#').next().unwrap_or_default().to_string()
    }

    /// State-of-the-World: each request frame is a `DiscoveryRequest`.
    pub fn sotw(data: &[u8]) {
        let Some((auth, frames)) = frames(data) else {
            return;
        };
        let server = XdsServer::new(Metrics::new());
        let mut round = 0u8;
        server.publish(&snapshot(round));
        let (tx, mut rx) = mpsc::channel(16);
        let mut stream = SotwStream {
            shared: server.shared.clone(),
            auth: auth.clone(),
            node: None,
            watches: HashMap::new(),
            retry: Retry::default(),
            tx,
        };
        let rt = runtime();
        let mut last_nonce = 0u64;
        for frame in frames {
            let ok = match frame {
                Frame::Publish => {
                    round = round.wrapping_add(1);
                    server.publish(&snapshot(round));
                    rt.block_on(stream.push_all())
                }
                Frame::Retry => {
                    let node = stream.node.clone().unwrap_or_default();
                    stream.retry.fire(&stream.shared, &node);
                    rt.block_on(stream.push_all())
                }
                Frame::Request(bytes) => match DiscoveryRequest::decode(bytes) {
                    // tonic ends the stream on a message it cannot decode.
                    Err(_) => false,
                    Ok(req) => rt.block_on(stream.on_request(req)).is_ok(),
                },
            };
            check_node(&auth, &stream.node);
            while let Ok(resp) = rx.try_recv() {
                let Ok(resp) = resp else { continue };
                let node = stream.node.as_deref().expect("a response names its node");
                let nonce: u64 = resp.nonce.parse().expect("numeric nonce");
                assert!(nonce > last_nonce, "nonces increase");
                last_nonce = nonce;
                let w = &stream.watches[&resp.type_url];
                assert!(w.in_flight.as_ref().is_some_and(|(n, _)| *n == resp.nonce));
                for any in &resp.resources {
                    assert_eq!(any.type_url, resp.type_url);
                    let name = resource_name(node, any);
                    assert!(w.wildcard || w.names.contains(&name), "{name} unsubscribed");
                }
            }
            if !ok {
                break;
            }
        }
        if let Some(node) = &stream.node {
            stream.shared.stream_closed(node);
        }
        let _ = serde_json::to_string(&server.status());
        assert!(server
            .status()
            .nodes
            .values()
            .all(|n| n.connected_streams == 0));
    }

    /// Delta: each request frame is a `DeltaDiscoveryRequest`.
    pub fn delta(data: &[u8]) {
        let Some((auth, frames)) = frames(data) else {
            return;
        };
        let server = XdsServer::new(Metrics::new());
        let mut round = 0u8;
        server.publish(&snapshot(round));
        let (tx, mut rx) = mpsc::channel(16);
        let mut stream = DeltaStream {
            shared: server.shared.clone(),
            auth: auth.clone(),
            node: None,
            watches: HashMap::new(),
            retry: Retry::default(),
            tx,
        };
        let rt = runtime();
        let mut last_nonce = 0u64;
        for frame in frames {
            let ok = match frame {
                Frame::Publish => {
                    round = round.wrapping_add(1);
                    server.publish(&snapshot(round));
                    rt.block_on(stream.push_all())
                }
                Frame::Retry => {
                    let node = stream.node.clone().unwrap_or_default();
                    stream.retry.fire(&stream.shared, &node);
                    rt.block_on(stream.push_all())
                }
                Frame::Request(bytes) => match DeltaDiscoveryRequest::decode(bytes) {
                    Err(_) => false,
                    Ok(req) => rt.block_on(stream.on_request(req)).is_ok(),
                },
            };
            check_node(&auth, &stream.node);
            while let Ok(resp) = rx.try_recv() {
                let Ok(resp) = resp else { continue };
                let node = stream.node.as_deref().expect("a response names its node");
                let nonce: u64 = resp.nonce.parse().expect("numeric nonce");
                assert!(nonce > last_nonce, "nonces increase");
                last_nonce = nonce;
                let w = &stream.watches[&resp.type_url];
                assert!(w
                    .in_flight
                    .as_ref()
                    .is_some_and(|(n, _, _)| *n == resp.nonce));
                for r in &resp.resources {
                    assert!(
                        !resp.removed_resources.contains(&r.name),
                        "{} both updated and removed",
                        r.name
                    );
                    assert!(
                        w.wildcard || w.names.contains(&r.name),
                        "{} unsubscribed",
                        r.name
                    );
                    assert!(!r.version.is_empty());
                    let any = r.resource.as_ref().expect("a resource body");
                    assert_eq!(any.type_url, resp.type_url);
                    assert_eq!(resource_name(node, any), r.name);
                }
            }
            if !ok {
                break;
            }
        }
        if let Some(node) = &stream.node {
            stream.shared.stream_closed(node);
        }
        let _ = serde_json::to_string(&server.status());
        assert!(server
            .status()
            .nodes
            .values()
            .all(|n| n.connected_streams == 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_auth_binds_a_certificate_to_its_node() {
        assert!(NodeAuth::Any.check("infra/web").is_ok());
        let only = NodeAuth::Only("infra/web".into());
        assert!(only.check("infra/web").is_ok());
        let e = only
            .check("infra/other")
            .expect_err("another Gateway's node");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("infra/web"), "{}", e.message());
        let e = NodeAuth::NoGateway
            .check("infra/web")
            .expect_err("no Gateway");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }
    use portcullis_translator::xds::snapshot::XdsResources;

    /// The fuzz entry points over the fuzz crate's seeds and pseudo-random mutations of them.
    #[test]
    fn fuzz_entry_points_survive_seeds_and_noise() {
        let seeds: [(&[u8], bool); 8] = [
            (
                include_bytes!("../../fuzz/seeds/xds_sotw/ack-flow.bin"),
                true,
            ),
            (
                include_bytes!("../../fuzz/seeds/xds_sotw/nack-transient.bin"),
                true,
            ),
            (
                include_bytes!("../../fuzz/seeds/xds_sotw/wrong-node.bin"),
                true,
            ),
            (
                include_bytes!("../../fuzz/seeds/xds_sotw/wildcard-and-names.bin"),
                true,
            ),
            (
                include_bytes!("../../fuzz/seeds/xds_delta/ack-flow.bin"),
                false,
            ),
            (
                include_bytes!("../../fuzz/seeds/xds_delta/initial-versions.bin"),
                false,
            ),
            (
                include_bytes!("../../fuzz/seeds/xds_delta/no-gateway.bin"),
                false,
            ),
            (
                include_bytes!("../../fuzz/seeds/xds_delta/unsubscribe-wildcard.bin"),
                false,
            ),
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (input, sotw) in seeds {
            let run = |d: &[u8]| {
                if sotw {
                    fuzzing::sotw(d)
                } else {
                    fuzzing::delta(d)
                }
            };
            run(input);
            for _ in 0..50 {
                let mut d = input.to_vec();
                for _ in 0..1 + next() % 4 {
                    let i = (next() % d.len() as u64) as usize;
                    d[i] = next() as u8;
                }
                run(&d);
            }
        }
    }

    fn snap(node: &str, names: &[(&str, &[u8])]) -> XdsSnapshot {
        let mut r = XdsResources::default();
        for (n, v) in names {
            r.insert(
                CLUSTER_TYPE,
                *n,
                prost_types::Any {
                    type_url: CLUSTER_TYPE.into(),
                    value: v.to_vec(),
                },
            );
        }
        XdsSnapshot::from([(node.to_string(), r)])
    }

    #[test]
    fn identical_snapshot_keeps_generation_and_change_bumps_it() {
        let s = XdsServer::new(Metrics::new());
        assert_eq!(s.publish(&snap("ns/gw", &[("a", b"1")])), 1);
        assert_eq!(s.publish(&snap("ns/gw", &[("a", b"1")])), 1);
        assert_eq!(s.publish(&snap("ns/gw", &[("a", b"2")])), 2);
    }

    #[test]
    fn nacked_version_falls_back_to_last_good() {
        let s = XdsServer::new(Metrics::new());
        s.publish(&snap("ns/gw", &[("a", b"1")]));
        let good = s.shared.snapshot.borrow().type_set("ns/gw", CLUSTER_TYPE);
        s.shared.record_ack("ns/gw", CLUSTER_TYPE, &good);
        s.publish(&snap("ns/gw", &[("a", b"bad")]));
        let bad = s.shared.snapshot.borrow().type_set("ns/gw", CLUSTER_TYPE);
        s.shared
            .record_nack("ns/gw", CLUSTER_TYPE, &bad.version, "boom");
        let published = s.shared.snapshot.borrow().clone();
        let d = s
            .shared
            .desired(&published, "ns/gw", CLUSTER_TYPE)
            .map(|t| t.version.clone());
        assert_eq!(d.as_deref(), Some(good.version.as_str()));
        assert_eq!(
            s.status().nodes["ns/gw"].types["Cluster"]
                .nack
                .as_ref()
                .map(|n| n.error.as_str()),
            Some("boom")
        );
        // A fix (new version) is served, and its ACK clears the NACK.
        s.publish(&snap("ns/gw", &[("a", b"3")]));
        let published = s.shared.snapshot.borrow().clone();
        let fixed = s
            .shared
            .desired(&published, "ns/gw", CLUSTER_TYPE)
            .unwrap_or_else(|| good.clone());
        assert_ne!(fixed.version, good.version);
        s.shared.record_ack("ns/gw", CLUSTER_TYPE, &fixed);
        assert!(s.status().nodes["ns/gw"].types["Cluster"].nack.is_none());
        assert_eq!(s.status().nodes["ns/gw"].synced_generation, Some(3));
    }
}
