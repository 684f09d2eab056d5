//! The Envoy bootstrap of a managed Envoy, typed (envoy-types) and shared by both
//! infrastructures: one Envoy process per Gateway on this host, and a fleet per Gateway in
//! Kubernetes. Everything else reaches Envoy over ADS; the bootstrap only says who the Envoy is
//! (node id), where the controller is, and where its admin listens.

use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::overload::v3 as overload;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3 as downstream;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::google::protobuf as pb;
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};

use super::builder::{ads, any, client_tls_context, socket_address};
use super::render::{pool, RenderError};
use crate::ir::ClientTlsFiles;

/// Envoy's static cluster for the controller's ADS server.
pub const XDS_CLUSTER: &str = "portcullis_xds";
/// The static cluster that proxies the readiness listener to the admin socket.
pub const ADMIN_CLUSTER: &str = "portcullis_admin";
/// The readiness and metrics listener (`/ready`, `/stats/prometheus`).
pub const READY_LISTENER: &str = "portcullis_ready";
/// Bound on downstream connections (Envoy warns at start-up without one).
const MAX_DOWNSTREAM_CONNECTIONS: u64 = 50_000;

/// Where the controller's ADS server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsUpstream {
    /// On this host, by address, in plain gRPC (file mode: loopback only).
    Static { ip: std::net::IpAddr, port: u16 },
    /// A Service name every controller replica serves, over mutual TLS (TLS 1.3, h2): the
    /// client certificate and the CA are files, the server must present `host` as its SAN.
    Dns {
        host: String,
        port: u16,
        client_tls: ClientTlsFiles,
    },
}

/// Where the Envoy admin listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    /// 127.0.0.1 on a port the kernel picks (read back with `--admin-address-path`).
    LoopbackEphemeral,
    /// A unix socket (mode 0600): no TCP port a tenant's Backend could name.
    Pipe(String),
}

/// One managed Envoy's bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapSpec {
    /// `namespace/name` of its Gateway: the xDS node id.
    pub node_id: String,
    pub xds: XdsUpstream,
    /// Delta (incremental) ADS instead of State of the World.
    pub delta: bool,
    pub admin: AdminAddress,
    /// A listener on `0.0.0.0:<port>` serving exactly `/ready` and `/stats/prometheus` from the
    /// admin socket, for probes and scraping (with [`AdminAddress::Pipe`] only).
    pub ready_port: Option<u16>,
}

fn seconds(s: i64) -> pb::Duration {
    pb::Duration {
        seconds: s,
        nanos: 0,
    }
}

fn pipe_address(path: &str, mode: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::Pipe(core::Pipe {
            path: path.to_string(),
            mode,
        })),
    }
}

fn single_endpoint(cluster: &str, address: core::Address) -> endpoint::ClusterLoadAssignment {
    endpoint::ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            lb_endpoints: vec![endpoint::LbEndpoint {
                host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                    endpoint::Endpoint {
                        address: Some(address),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn discovery(t: cluster::cluster::DiscoveryType) -> Option<cluster::cluster::ClusterDiscoveryType> {
    Some(cluster::cluster::ClusterDiscoveryType::Type(t as i32))
}

/// gRPC needs HTTP/2 to the controller; keepalives notice a dead replica.
fn http2_with_keepalive() -> pb::Any {
    any(&upstream_http::HttpProtocolOptions {
        upstream_protocol_options: Some(
            upstream_http::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                upstream_http::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            core::Http2ProtocolOptions {
                                connection_keepalive: Some(core::KeepaliveSettings {
                                    interval: Some(seconds(30)),
                                    timeout: Some(seconds(5)),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    })
}

fn xds_cluster(xds: &XdsUpstream) -> cluster::Cluster {
    let mut c = cluster::Cluster {
        name: XDS_CLUSTER.into(),
        ..Default::default()
    };
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        http2_with_keepalive(),
    );
    match xds {
        XdsUpstream::Static { ip, port } => {
            c.cluster_discovery_type = discovery(cluster::cluster::DiscoveryType::Static);
            c.connect_timeout = Some(seconds(1));
            c.load_assignment = Some(single_endpoint(
                XDS_CLUSTER,
                socket_address(&ip.to_string(), *port),
            ));
        }
        XdsUpstream::Dns {
            host,
            port,
            client_tls,
        } => {
            // Every controller replica serves xDS: resolve the Service, any endpoint will do.
            c.cluster_discovery_type = discovery(cluster::cluster::DiscoveryType::StrictDns);
            c.connect_timeout = Some(seconds(5));
            c.load_assignment = Some(single_endpoint(XDS_CLUSTER, socket_address(host, *port)));
            let mut common = client_tls_context(client_tls, host);
            // Envoy's client default maximum is TLS 1.2: without raising it, a 1.3 minimum
            // leaves no version and every handshake fails.
            common.tls_params = Some(tls::TlsParameters {
                tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
                tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
                ..Default::default()
            });
            common.alpn_protocols = vec!["h2".into()];
            let ctx = tls::UpstreamTlsContext {
                sni: host.clone(),
                common_tls_context: Some(common),
                ..Default::default()
            };
            c.transport_socket = Some(core::TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
            });
        }
    }
    c
}

/// `/ready` and `/stats/prometheus` (exact paths only) proxied to the admin socket.
fn ready_listener(port: u16) -> listener::Listener {
    let to_admin = |path: &str| route::Route {
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Path(path.into())),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                ADMIN_CLUSTER.into(),
            )),
            ..Default::default()
        })),
        ..Default::default()
    };
    let manager = hcm::HttpConnectionManager {
        stat_prefix: READY_LISTENER.into(),
        // Exact paths only reach admin: no spelling of another admin path.
        normalize_path: Some(pb::BoolValue { value: true }),
        merge_slashes: true,
        path_with_escaped_slashes_action:
            hcm::http_connection_manager::PathWithEscapedSlashesAction::RejectRequest as i32,
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            headers_with_underscores_action:
                core::http_protocol_options::HeadersWithUnderscoresAction::RejectRequest as i32,
            ..Default::default()
        }),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            route::RouteConfiguration {
                name: READY_LISTENER.into(),
                virtual_hosts: vec![route::VirtualHost {
                    name: "ready".into(),
                    domains: vec!["*".into()],
                    routes: vec![to_admin("/ready"), to_admin("/stats/prometheus")],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                &router::Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    listener::Listener {
        name: READY_LISTENER.into(),
        address: Some(socket_address("0.0.0.0", port)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(any(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The typed bootstrap.
pub fn build(spec: &BootstrapSpec) -> bootstrap::Bootstrap {
    let api_type = if spec.delta {
        core::api_config_source::ApiType::DeltaGrpc
    } else {
        core::api_config_source::ApiType::Grpc
    };
    let mut clusters = vec![xds_cluster(&spec.xds)];
    let mut listeners = Vec::new();
    let admin_address = match &spec.admin {
        AdminAddress::LoopbackEphemeral => socket_address("127.0.0.1", 0),
        AdminAddress::Pipe(path) => {
            if let Some(port) = spec.ready_port {
                clusters.push(cluster::Cluster {
                    name: ADMIN_CLUSTER.into(),
                    cluster_discovery_type: discovery(cluster::cluster::DiscoveryType::Static),
                    connect_timeout: Some(seconds(1)),
                    load_assignment: Some(single_endpoint(ADMIN_CLUSTER, pipe_address(path, 0))),
                    ..Default::default()
                });
                listeners.push(ready_listener(port));
            }
            pipe_address(path, 0o600)
        }
    };
    bootstrap::Bootstrap {
        node: Some(core::Node {
            id: spec.node_id.clone(),
            cluster: "portcullis".into(),
            ..Default::default()
        }),
        admin: Some(bootstrap::Admin {
            address: Some(admin_address),
            ..Default::default()
        }),
        dynamic_resources: Some(bootstrap::bootstrap::DynamicResources {
            ads_config: Some(core::ApiConfigSource {
                api_type: api_type as i32,
                transport_api_version: core::ApiVersion::V3 as i32,
                set_node_on_first_message_only: true,
                grpc_services: vec![core::GrpcService {
                    target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                        core::grpc_service::EnvoyGrpc {
                            cluster_name: XDS_CLUSTER.into(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            cds_config: Some(ads()),
            lds_config: Some(ads()),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::bootstrap::StaticResources {
            clusters,
            listeners,
            ..Default::default()
        }),
        overload_manager: Some(overload::OverloadManager {
            resource_monitors: vec![overload::ResourceMonitor {
                name: "envoy.resource_monitors.global_downstream_max_connections".into(),
                config_type: Some(overload::resource_monitor::ConfigType::TypedConfig(any(
                    &downstream::DownstreamConnectionsConfig {
                        max_active_downstream_connections: MAX_DOWNSTREAM_CONNECTIONS as i64,
                    },
                ))),
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The bootstrap as Envoy reads it: proto3 JSON with the proto field names.
pub fn to_json(b: &bootstrap::Bootstrap) -> Result<serde_json::Value, RenderError> {
    let type_url = "envoy.config.bootstrap.v3.Bootstrap";
    let desc = pool()?
        .get_message_by_name(type_url)
        .ok_or_else(|| RenderError::UnknownType(type_url.into()))?;
    let decode = |reason: String| RenderError::Decode {
        type_url: type_url.into(),
        name: "bootstrap".into(),
        reason,
    };
    let msg = DynamicMessage::decode(desc, b.encode_to_vec().as_slice())
        .map_err(|e| decode(e.to_string()))?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| decode(e.to_string()))
}

/// [`build`] then [`to_json`].
pub fn json(spec: &BootstrapSpec) -> Result<serde_json::Value, RenderError> {
    to_json(&build(spec))
}
