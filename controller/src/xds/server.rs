//! Aggregated Discovery Service (ADS) over gRPC, State-of-the-World and Delta: the tonic
//! service and the wiring.
//!
//! The translator publishes a full [`XdsSnapshot`] (one resource set per node). Each resource's
//! version is a hash of its bytes and an unchanged resource keeps its version (and its entry)
//! across publishes ([`super::versions`]); a publish wakes only the streams of nodes whose
//! resources changed. One stream loop ([`super::stream`]) serves both protocols
//! ([`super::sotw`], [`super::delta`]). ACK/NACK is tracked per node and type
//! ([`super::status`]): a NACKed version is never re-sent, and a node whose current version was
//! rejected keeps getting the last version it ACKed (also after a reconnect).

use super::delta::Delta;
use super::shared::{lock, NodeAuth, Shared};
use super::sotw::Sotw;
use super::stream::Stream;
use super::versions::Published;
use crate::metrics::Metrics;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use portcullis_translator::xds::snapshot::XdsSnapshot;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub use super::status::{EnvoyState, Nack, NodeStatus, TypeStatus, XdsStatus};

#[doc(hidden)]
pub use super::fuzzing;

/// The ADS server: publish snapshots, serve them to Envoys, report ACK/NACK state.
#[derive(Clone)]
pub struct XdsServer {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer").finish_non_exhaustive()
    }
}

impl XdsServer {
    pub fn new(metrics: Metrics) -> Self {
        XdsServer {
            shared: Arc::new(Shared::new(metrics)),
        }
    }

    /// Replace the desired state. Returns the generation now served; an identical snapshot
    /// keeps the current generation and wakes no stream, and a changed one wakes only the
    /// streams of the nodes whose resources changed.
    pub fn publish(&self, snapshot: &XdsSnapshot) -> u64 {
        let (published, changed) = {
            let mut cell = lock(&self.shared.published);
            let (nodes, changed) = cell.next(snapshot);
            if changed.is_empty() && cell.generation > 0 {
                // Same generation; keep the new sets' sources so the next publish can skip them.
                let generation = cell.generation;
                *cell = Arc::new(Published {
                    generation,
                    nodes,
                    sources: snapshot.clone(),
                });
                return generation;
            }
            let published = Arc::new(Published {
                generation: cell.generation + 1,
                nodes,
                sources: snapshot.clone(),
            });
            *cell = published.clone();
            (published, changed)
        };
        let generation = published.generation;
        self.shared
            .metrics
            .snapshot_generation
            .set(generation as i64);
        self.shared.status.published(&published);
        let mut senders = lock(&self.shared.node_changes);
        senders.retain(|_, tx| tx.receiver_count() > 0);
        for node in &changed {
            if let Some(tx) = senders.get(node) {
                tx.send_modify(|v| *v += 1);
            }
        }
        tracing::debug!(
            generation,
            changed_nodes = changed.len(),
            "published xDS snapshot"
        );
        generation
    }

    pub fn generation(&self) -> u64 {
        self.shared.published().generation
    }

    pub fn status(&self) -> XdsStatus {
        XdsStatus {
            generation: self.generation(),
            nodes: self.shared.status.view(),
        }
    }

    /// Forget the ACK/NACK history of nodes that are neither wanted nor connected (their
    /// Gateway is gone and its Envoy has stopped).
    pub fn retain_nodes(&self, wanted: &[String]) {
        self.shared.status.retain(wanted);
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
        let stream = Stream::<Sotw>::new(self.shared.clone(), auth, tx);
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let auth = NodeAuth::of(&request);
        let (tx, rx) = mpsc::channel(16);
        let stream = Stream::<Delta>::new(self.shared.clone(), auth, tx);
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
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

    #[test]
    fn identical_snapshot_keeps_generation_and_change_bumps_it() {
        use crate::xds::stream::testing::snap;
        use portcullis_translator::xds::snapshot::CLUSTER_TYPE;
        let s = XdsServer::new(Metrics::new());
        assert_eq!(s.publish(&snap("ns/gw", &[(CLUSTER_TYPE, "a", "1")])), 1);
        assert_eq!(s.publish(&snap("ns/gw", &[(CLUSTER_TYPE, "a", "1")])), 1);
        assert_eq!(s.publish(&snap("ns/gw", &[(CLUSTER_TYPE, "a", "2")])), 2);
        assert_eq!(s.generation(), 2);
    }
}
