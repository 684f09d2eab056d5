//! Entry points for the `xds_sotw` and `xds_delta` fuzz targets (`controller/fuzz`): requests
//! decoded from bytes go through the same `on_request` and `push_all` as a live stream's loop.
//! Nothing here may panic, whatever the bytes.

use super::delta::Delta;
use super::resource_type::ResourceType;
use super::server::XdsServer;
use super::shared::NodeAuth;
use super::sotw::Sotw;
use super::stream::{Protocol, Stream};
use crate::metrics::Metrics;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::Any;
use portcullis_translator::xds::snapshot::{
    XdsResources, XdsSnapshot, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE,
};
use prost::Message;
use tokio::sync::mpsc;

/// Nodes of the published snapshot. Every resource's value is `<node>:<name>`, so a response
/// shows whose resources it carries.
const NODES: [&str; 2] = ["ns/gw", "other/gw"];

fn snapshot(round: u8) -> XdsSnapshot {
    let mut snap = XdsSnapshot::new();
    for node in NODES {
        let mut r = XdsResources::default();
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
        snap.insert(node.to_string(), std::sync::Arc::new(r));
    }
    snap
}

/// What a frame of the input asks for.
enum Frame<'a> {
    /// A zero-length frame: publish the next snapshot (the stream loop's node-change arm).
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

/// What a protocol's harness checks of each response.
trait Harness: Protocol {
    fn decode(bytes: &[u8]) -> Option<Self::Request>;
    fn nonce(resp: &Self::Response) -> &str;
    fn resp_type_url(resp: &Self::Response) -> &str;
    /// A response for a type not served carries nothing.
    fn check_unknown(resp: &Self::Response);
    fn check(stream: &Stream<Self>, rt: ResourceType, node: &str, resp: &Self::Response);
}

fn run<P: Harness>(data: &[u8]) {
    let Some((auth, frames)) = frames(data) else {
        return;
    };
    let server = XdsServer::new(Metrics::new());
    let mut round = 0u8;
    server.publish(&snapshot(round));
    let (tx, mut rx) = mpsc::channel(16);
    let mut stream = Stream::<P>::new(server.shared.clone(), auth.clone(), tx);
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
                stream.fire_retries();
                rt.block_on(stream.push_all())
            }
            // tonic ends the stream on a message it cannot decode.
            Frame::Request(bytes) => match P::decode(bytes) {
                None => false,
                Some(req) => rt.block_on(stream.on_request(req)).is_ok(),
            },
        };
        check_node(&auth, &stream.node);
        while let Ok(resp) = rx.try_recv() {
            let Ok(resp) = resp else { continue };
            let node = stream.node.as_deref().expect("a response names its node");
            let nonce: u64 = P::nonce(&resp).parse().expect("numeric nonce");
            assert!(nonce > last_nonce, "nonces increase");
            last_nonce = nonce;
            match ResourceType::from_url(P::resp_type_url(&resp)) {
                None => P::check_unknown(&resp),
                Some(t) => {
                    let w = &stream.watches[&t];
                    assert!(w
                        .in_flight
                        .as_ref()
                        .is_some_and(|f| f.nonce == P::nonce(&resp)));
                    P::check(&stream, t, node, &resp);
                }
            }
        }
        if !ok {
            break;
        }
    }
    stream.close();
    let _ = serde_json::to_string(&server.status());
    assert!(server
        .status()
        .nodes
        .values()
        .all(|n| n.connected_streams == 0));
    // Only the served types are tracked.
    for n in server.status().nodes.values() {
        for t in n.types.keys() {
            assert!(
                ResourceType::ALL.iter().any(|rt| rt.short() == t),
                "{t} tracked"
            );
        }
    }
}

impl Harness for Sotw {
    fn decode(bytes: &[u8]) -> Option<DiscoveryRequest> {
        DiscoveryRequest::decode(bytes).ok()
    }
    fn nonce(resp: &Self::Response) -> &str {
        &resp.nonce
    }
    fn resp_type_url(resp: &Self::Response) -> &str {
        &resp.type_url
    }
    fn check_unknown(resp: &Self::Response) {
        assert!(resp.resources.is_empty());
    }
    fn check(stream: &Stream<Self>, rt: ResourceType, node: &str, resp: &Self::Response) {
        let w = &stream.watches[&rt].sub;
        for any in &resp.resources {
            assert_eq!(any.type_url, resp.type_url);
            let name = resource_name(node, any);
            assert!(w.wildcard || w.names.contains(&name), "{name} unsubscribed");
        }
    }
}

impl Harness for Delta {
    fn decode(bytes: &[u8]) -> Option<DeltaDiscoveryRequest> {
        DeltaDiscoveryRequest::decode(bytes).ok()
    }
    fn nonce(resp: &Self::Response) -> &str {
        &resp.nonce
    }
    fn resp_type_url(resp: &Self::Response) -> &str {
        &resp.type_url
    }
    fn check_unknown(resp: &Self::Response) {
        assert!(resp.resources.is_empty());
    }
    fn check(stream: &Stream<Self>, rt: ResourceType, node: &str, resp: &Self::Response) {
        let w = &stream.watches[&rt].sub;
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
}

/// State-of-the-World: each request frame is a `DiscoveryRequest`.
pub fn sotw(data: &[u8]) {
    run::<Sotw>(data)
}

/// Delta: each request frame is a `DeltaDiscoveryRequest`.
pub fn delta(data: &[u8]) {
    run::<Delta>(data)
}

#[cfg(test)]
mod tests {

    /// The path the fuzz targets (`controller/fuzz/fuzz_targets/xds_*.rs`) call.
    #[test]
    fn the_fuzz_targets_path_resolves() {
        crate::xds::server::fuzzing::sotw(&[]);
        crate::xds::server::fuzzing::delta(&[0]);
    }

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
                    super::sotw(d)
                } else {
                    super::delta(d)
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
}
