//! IR -> Envoy xDS resources. Pure and deterministic: maps are encoded in key order (prost's
//! HashMap fields would otherwise make the bytes differ from run to run).

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::dynamic_modules::v3 as dm;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3 as dm_filter;
use envoy_types::pb::envoy::extensions::filters::http::lua::v3 as lua;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3 as wasm_filter;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::envoy::extensions::wasm::v3 as wasm;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3 as types;
use envoy_types::pb::google::protobuf as pb;
use prost::Message;

use super::snapshot::{
    XdsResources, XdsSnapshot, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE,
};
use crate::ir::{
    ActionIr, ChainIr, ClientTlsFiles, ClusterIr, ClusterKind, DynamicFilterIr, EndpointIr,
    FilterIr, GatewayIr, HeaderOpsIr, Ir, ModuleSourceIr, PathMatchIr, PathRewriteIr, PortIr,
    Protocol, RouteIr, TrustedCa, ValueMatchIr,
};
use crate::TranslateOptions;

/// Envoy's HCM filter type and the router, by their canonical names.
const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
const ROUTER_NAME: &str = "envoy.filters.http.router";
/// How long Envoy waits for a module download from the controller.
const WASM_FETCH_TIMEOUT_S: i64 = 30;
/// Retries of a failed module fetch (0.5 s doubling to 10 s, about a minute in all): the serve
/// URL may reach a controller replica that is still downloading the module (404 until then).
const WASM_FETCH_RETRIES: u32 = 8;
const CONNECT_TIMEOUT_S: i64 = 10;
/// Stats of every dynamic module Portcullis programs appear under this namespace
/// (`portcullis.<name>` on /stats, `envoy_portcullis_<name>` on /stats/prometheus).
const DYNAMIC_METRICS_NAMESPACE: &str = "portcullis";

pub(super) fn any<M: Message + prost::Name>(m: &M) -> pb::Any {
    pb::Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn top_any(a: pb::Any) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url,
        value: a.value,
    }
}

pub(super) fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn duration_ms(ms: u64) -> pb::Duration {
    pb::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub(super) fn socket_address(address: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: address.to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                port,
            ))),
            ..Default::default()
        })),
    }
}

fn endpoint_address(e: &EndpointIr) -> core::Address {
    match e {
        EndpointIr::Socket { address, port } => socket_address(address, *port),
        EndpointIr::Pipe { path } => core::Address {
            address: Some(core::address::Address::Pipe(core::Pipe {
                path: path.clone(),
                mode: 0,
            })),
        },
    }
}

fn load_assignment(name: &str, eps: &[EndpointIr]) -> endpoint::ClusterLoadAssignment {
    endpoint::ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            lb_endpoints: eps
                .iter()
                .map(|e| endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(endpoint_address(e)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(crate) fn build_cluster(
    c: &ClusterIr,
) -> (cluster::Cluster, Option<endpoint::ClusterLoadAssignment>) {
    let mut out = cluster::Cluster {
        name: c.name.clone(),
        connect_timeout: Some(pb::Duration {
            seconds: CONNECT_TIMEOUT_S,
            nanos: 0,
        }),
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    let mut cla = None;
    match &c.kind {
        ClusterKind::Eds(eps) => {
            out.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::Eds as i32,
            ));
            out.eds_cluster_config = Some(cluster::cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            });
            cla = Some(load_assignment(&c.name, eps));
        }
        ClusterKind::StrictDns(eps) => {
            out.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::StrictDns as i32,
            ));
            out.dns_lookup_family = cluster::cluster::DnsLookupFamily::V4Preferred as i32;
            out.load_assignment = Some(load_assignment(&c.name, eps));
        }
        ClusterKind::Static(eps) => {
            out.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::Static as i32,
            ));
            out.load_assignment = Some(load_assignment(&c.name, eps));
        }
    }
    if c.http2 {
        // gRPC needs HTTP/2 to the upstream.
        let opts = upstream_http::HttpProtocolOptions {
            upstream_protocol_options: Some(
                upstream_http::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    upstream_http::http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                core::Http2ProtocolOptions::default(),
                            ),
                        ),
                    },
                ),
            ),
            ..Default::default()
        };
        out.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            any(&opts),
        );
    }
    if let Some(sni) = &c.tls_sni {
        let ctx = tls::UpstreamTlsContext {
            sni: sni.clone(),
            common_tls_context: match (&c.tls_client, &c.tls_verify) {
                (Some(f), _) => Some(client_tls_context(f, sni)),
                (None, Some(ca)) => Some(tls::CommonTlsContext {
                    validation_context_type: Some(server_validation(
                        match ca {
                            TrustedCa::File(p) => file(p),
                            TrustedCa::Pem(pem) => core::DataSource {
                                specifier: Some(core::data_source::Specifier::InlineString(
                                    pem.clone(),
                                )),
                                ..Default::default()
                            },
                        },
                        sni,
                    )),
                    ..Default::default()
                }),
                (None, None) => None,
            },
            ..Default::default()
        };
        out.transport_socket = Some(core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
        });
    }
    (out, cla)
}

fn file(path: &str) -> core::DataSource {
    core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// Mutual TLS to an upstream: present the client certificate, and accept only a server
/// certificate from the trusted CA whose SAN is `host` (an IP SAN for IP literals).
pub(super) fn client_tls_context(f: &ClientTlsFiles, host: &str) -> tls::CommonTlsContext {
    tls::CommonTlsContext {
        tls_certificates: vec![tls::TlsCertificate {
            certificate_chain: Some(file(&f.cert_chain)),
            private_key: Some(file(&f.private_key)),
            ..Default::default()
        }],
        validation_context_type: Some(server_validation(file(&f.trusted_ca), host)),
        ..Default::default()
    }
}

/// Accept only a server certificate that chains to `ca` and whose SAN is `host`.
fn server_validation(
    ca: core::DataSource,
    host: &str,
) -> tls::common_tls_context::ValidationContextType {
    use tls::subject_alt_name_matcher::SanType;
    let san_type = if host.parse::<std::net::IpAddr>().is_ok() {
        SanType::IpAddress
    } else {
        SanType::Dns
    };
    tls::common_tls_context::ValidationContextType::ValidationContext(
        tls::CertificateValidationContext {
            trusted_ca: Some(ca),
            match_typed_subject_alt_names: vec![tls::SubjectAltNameMatcher {
                san_type: san_type as i32,
                matcher: Some(matcher::StringMatcher {
                    ignore_case: false,
                    match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                        host.to_string(),
                    )),
                }),
                oid: String::new(),
            }],
            ..Default::default()
        },
    )
}

fn string_matcher(v: &ValueMatchIr) -> matcher::StringMatcher {
    matcher::StringMatcher {
        ignore_case: false,
        match_pattern: Some(if v.regex {
            matcher::string_matcher::MatchPattern::SafeRegex(matcher::RegexMatcher {
                regex: v.value.clone(),
                engine_type: None,
            })
        } else {
            matcher::string_matcher::MatchPattern::Exact(v.value.clone())
        }),
    }
}

fn header_options(ops: &HeaderOpsIr) -> Vec<core::HeaderValueOption> {
    let opt = |(k, v): &(String, String), action: core::header_value_option::HeaderAppendAction| {
        core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        }
    };
    let mut out: Vec<_> = ops
        .set
        .iter()
        .map(|h| {
            opt(
                h,
                core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd,
            )
        })
        .collect();
    out.extend(ops.add.iter().map(|h| {
        opt(
            h,
            core::header_value_option::HeaderAppendAction::AppendIfExistsOrAdd,
        )
    }));
    out
}

/// RE2 escaping for a literal path prefix.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn regex_rewrite(pattern: String, substitution: String) -> matcher::RegexMatchAndSubstitute {
    matcher::RegexMatchAndSubstitute {
        pattern: Some(matcher::RegexMatcher {
            regex: pattern,
            engine_type: None,
        }),
        substitution,
    }
}

fn route_match(r: &RouteIr) -> route::RouteMatch {
    use route::route_match::PathSpecifier;
    let path = match &r.path {
        PathMatchIr::Exact(p) => PathSpecifier::Path(p.clone()),
        PathMatchIr::Regex(p) => PathSpecifier::SafeRegex(matcher::RegexMatcher {
            regex: p.clone(),
            engine_type: None,
        }),
        PathMatchIr::Prefix(p) => {
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                PathSpecifier::Prefix("/".into())
            } else {
                // Gateway API prefixes match whole segments: /foo matches /foo and /foo/bar only.
                PathSpecifier::PathSeparatedPrefix(trimmed.to_string())
            }
        }
    };
    let mut headers: Vec<route::HeaderMatcher> = r
        .headers
        .iter()
        .map(|h| route::HeaderMatcher {
            name: h.name.to_ascii_lowercase(),
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
                string_matcher(h),
            )),
            ..Default::default()
        })
        .collect();
    if let Some(m) = &r.method {
        headers.push(route::HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
                string_matcher(&ValueMatchIr {
                    name: String::new(),
                    value: m.clone(),
                    regex: false,
                }),
            )),
            ..Default::default()
        });
    }
    route::RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters: r
            .query_params
            .iter()
            .map(|q| route::QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: Some(
                    route::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        string_matcher(q),
                    ),
                ),
            })
            .collect(),
        ..Default::default()
    }
}

fn build_route(r: &RouteIr) -> (route::Route, BTreeMap<String, pb::Any>) {
    let action = match &r.action {
        ActionIr::Direct { status, body } => {
            route::route::Action::DirectResponse(route::DirectResponseAction {
                status: *status,
                body: (!body.is_empty()).then(|| core::DataSource {
                    specifier: Some(core::data_source::Specifier::InlineString(body.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
        ActionIr::Redirect {
            scheme,
            host,
            port,
            path,
            status,
        } => {
            use route::redirect_action::{
                PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
            };
            let code = match status {
                301 => RedirectResponseCode::MovedPermanently,
                303 => RedirectResponseCode::SeeOther,
                307 => RedirectResponseCode::TemporaryRedirect,
                308 => RedirectResponseCode::PermanentRedirect,
                _ => RedirectResponseCode::Found,
            };
            let path_rewrite_specifier = path.as_ref().map(|p| match p {
                PathRewriteIr::Full(f) => PathRewriteSpecifier::PathRedirect(f.clone()),
                PathRewriteIr::Prefix { replacement, .. } => {
                    // Envoy appends the rest of the path; avoid a doubled slash.
                    let rep = replacement.trim_end_matches('/');
                    PathRewriteSpecifier::PrefixRewrite(if rep.is_empty() {
                        "/".into()
                    } else {
                        rep.to_string()
                    })
                }
            });
            route::route::Action::Redirect(route::RedirectAction {
                scheme_rewrite_specifier: scheme
                    .clone()
                    .map(SchemeRewriteSpecifier::SchemeRedirect),
                host_redirect: host.clone().unwrap_or_default(),
                port_redirect: port.map(u32::from).unwrap_or(0),
                response_code: code as i32,
                path_rewrite_specifier,
                ..Default::default()
            })
        }
        ActionIr::Forward {
            backends,
            host_rewrite,
            path_rewrite,
        } => {
            let cluster_specifier = if backends.len() == 1 {
                route::route_action::ClusterSpecifier::Cluster(backends[0].cluster.clone())
            } else {
                route::route_action::ClusterSpecifier::WeightedClusters(route::WeightedCluster {
                    clusters: backends
                        .iter()
                        .map(|b| route::weighted_cluster::ClusterWeight {
                            name: b.cluster.clone(),
                            weight: Some(pb::UInt32Value { value: b.weight }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
            };
            let mut ra = route::RouteAction {
                cluster_specifier: Some(cluster_specifier),
                // Weight shares of unresolvable backendRefs point at a missing cluster: 500.
                cluster_not_found_response_code:
                    route::route_action::ClusterNotFoundResponseCode::InternalServerError as i32,
                ..Default::default()
            };
            if let Some(h) = host_rewrite {
                ra.host_rewrite_specifier =
                    Some(route::route_action::HostRewriteSpecifier::HostRewriteLiteral(h.clone()));
            }
            match path_rewrite {
                None => {}
                Some(PathRewriteIr::Full(f)) => {
                    ra.regex_rewrite = Some(regex_rewrite("^/.*$".into(), f.clone()))
                }
                Some(PathRewriteIr::Prefix {
                    prefix,
                    replacement,
                }) => {
                    let p = prefix.trim_end_matches('/');
                    let rep = replacement.trim_end_matches('/');
                    if p.is_empty() {
                        // Prefix "/": insert the replacement in front of the whole path.
                        ra.regex_rewrite = Some(regex_rewrite("^/".into(), format!("{rep}/")));
                    } else if rep.is_empty() || replacement.ends_with('/') {
                        // "/foo" -> "/" must turn /foo/bar into /bar, not //bar.
                        ra.regex_rewrite = Some(regex_rewrite(
                            format!("^{}/*", regex_escape(p)),
                            format!("{rep}/"),
                        ));
                    } else {
                        ra.prefix_rewrite = rep.to_string();
                    }
                }
            }
            if let Some(t) = r.timeout_ms.or(r.backend_timeout_ms) {
                ra.timeout = Some(duration_ms(t));
            }
            if let Some(bt) = r.backend_timeout_ms {
                ra.retry_policy = Some(route::RetryPolicy {
                    num_retries: Some(pb::UInt32Value { value: 0 }),
                    per_try_timeout: Some(duration_ms(bt)),
                    ..Default::default()
                });
            }
            ra.request_mirror_policies = r
                .mirrors
                .iter()
                .map(|m| route::route_action::RequestMirrorPolicy {
                    cluster: m.cluster.clone(),
                    runtime_fraction: (m.per_million < 1_000_000).then(|| {
                        core::RuntimeFractionalPercent {
                            default_value: Some(types::FractionalPercent {
                                numerator: m.per_million,
                                denominator: types::fractional_percent::DenominatorType::Million
                                    as i32,
                            }),
                            runtime_key: String::new(),
                        }
                    }),
                    ..Default::default()
                })
                .collect();
            route::route::Action::Route(ra)
        }
    };
    let out = route::Route {
        name: r.name.clone(),
        r#match: Some(route_match(r)),
        action: Some(action),
        request_headers_to_add: header_options(&r.request_headers),
        request_headers_to_remove: r.request_headers.remove.clone(),
        response_headers_to_add: header_options(&r.response_headers),
        response_headers_to_remove: r.response_headers.remove.clone(),
        ..Default::default()
    };
    // Filters are disabled in the HCM; a FilterConfig with an empty `config` turns one on for
    // this route (Envoy rejects a FilterConfig without `config`).
    let per_filter = r
        .enabled_filters
        .iter()
        .map(|f| {
            (
                f.clone(),
                any(&route::FilterConfig {
                    config: Some(pb::Any::default()),
                    is_optional: false,
                    disabled: false,
                }),
            )
        })
        .collect();
    (out, per_filter)
}

/// Appends a length-delimited field to an encoded message.
fn push_field(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

#[derive(Clone, PartialEq, prost::Message)]
struct MapEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<pb::Any>,
}

// Field numbers from envoy/config/route/v3/route.proto and route_components.proto.
const ROUTE_CONFIGURATION_VIRTUAL_HOSTS: u32 = 2;
const VIRTUAL_HOST_ROUTES: u32 = 3;
const ROUTE_TYPED_PER_FILTER_CONFIG: u32 = 13;

/// Encodes a RouteConfiguration with its `typed_per_filter_config` maps in key order.
fn encode_route_configuration(chain: &ChainIr) -> Vec<u8> {
    let rc = route::RouteConfiguration {
        name: chain.name.clone(),
        ignore_port_in_host_matching: true,
        // Routes may name the (never defined) invalid-backend cluster on purpose.
        validate_clusters: Some(pb::BoolValue { value: false }),
        ..Default::default()
    };
    let mut buf = rc.encode_to_vec();
    for vh in &chain.virtual_hosts {
        let mut vbuf = route::VirtualHost {
            name: vh.name.clone(),
            domains: vh.domains.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        for r in &vh.routes {
            let (msg, per_filter) = build_route(r);
            let mut rbuf = msg.encode_to_vec();
            for (key, value) in per_filter {
                push_field(
                    &mut rbuf,
                    ROUTE_TYPED_PER_FILTER_CONFIG,
                    &MapEntry {
                        key,
                        value: Some(value),
                    }
                    .encode_to_vec(),
                );
            }
            push_field(&mut vbuf, VIRTUAL_HOST_ROUTES, &rbuf);
        }
        push_field(&mut buf, ROUTE_CONFIGURATION_VIRTUAL_HOSTS, &vbuf);
    }
    buf
}

/// A module Envoy downloads from `url` through `cluster`, pinned by `sha256`, with retries.
fn remote_source(url: &str, cluster: &str, sha256: &str) -> core::AsyncDataSource {
    core::AsyncDataSource {
        specifier: Some(core::async_data_source::Specifier::Remote(
            core::RemoteDataSource {
                http_uri: Some(core::HttpUri {
                    uri: url.to_string(),
                    timeout: Some(pb::Duration {
                        seconds: WASM_FETCH_TIMEOUT_S,
                        nanos: 0,
                    }),
                    http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(
                        cluster.to_string(),
                    )),
                }),
                sha256: sha256.to_string(),
                retry_policy: Some(core::RetryPolicy {
                    retry_back_off: Some(core::BackoffStrategy {
                        base_interval: Some(pb::Duration {
                            seconds: 0,
                            nanos: 500_000_000,
                        }),
                        max_interval: Some(pb::Duration {
                            seconds: 10,
                            nanos: 0,
                        }),
                    }),
                    num_retries: Some(pb::UInt32Value {
                        value: WASM_FETCH_RETRIES,
                    }),
                    ..Default::default()
                }),
            },
        )),
    }
}

fn dynamic_filter(d: &DynamicFilterIr) -> pb::Any {
    let (module, nack_on_cache_miss) = match &d.module.source {
        ModuleSourceIr::Local { path } => (
            core::AsyncDataSource {
                specifier: Some(core::async_data_source::Specifier::Local(
                    core::DataSource {
                        specifier: Some(core::data_source::Specifier::Filename(path.clone())),
                        ..Default::default()
                    },
                )),
            },
            false,
        ),
        // A module Envoy has not cached yet makes it reject the update and fetch in the
        // background (the xDS server retries); Envoy's default would drop the filter instead.
        ModuleSourceIr::Remote {
            url,
            fetch_cluster,
            sha256,
        } => (remote_source(url, fetch_cluster, sha256), true),
    };
    any(&dm_filter::DynamicModuleFilter {
        dynamic_module_config: Some(dm::DynamicModuleConfig {
            do_not_close: d.module.do_not_close,
            load_globally: d.module.load_globally,
            metrics_namespace: DYNAMIC_METRICS_NAMESPACE.into(),
            module: Some(module),
            nack_on_cache_miss,
            ..Default::default()
        }),
        filter_name: d.filter_name.clone(),
        filter_config: Some(any(&pb::StringValue {
            value: d.config.clone(),
        })),
        terminal_filter: false,
    })
}

fn http_filter(f: &FilterIr) -> hcm::HttpFilter {
    let typed = match f {
        FilterIr::Wasm(w) => {
            let configuration = Some(any(&pb::StringValue {
                value: w.configuration.clone(),
            }));
            let vm = wasm::VmConfig {
                vm_id: w.vm_id.clone(),
                runtime: "envoy.wasm.runtime.v8".into(),
                code: Some(remote_source(&w.url, &w.fetch_cluster, &w.sha256)),
                environment_variables: (!w.host_env_keys.is_empty()).then(|| {
                    wasm::EnvironmentVariables {
                        host_env_keys: w.host_env_keys.clone(),
                        ..Default::default()
                    }
                }),
                ..Default::default()
            };
            let plugin = wasm::PluginConfig {
                name: w.plugin_name.clone(),
                root_id: w.root_id.clone(),
                configuration,
                failure_policy: if w.fail_open {
                    wasm::FailurePolicy::FailOpen
                } else {
                    wasm::FailurePolicy::FailClosed
                } as i32,
                vm: Some(wasm::plugin_config::Vm::VmConfig(vm)),
                ..Default::default()
            };
            any(&wasm_filter::Wasm {
                config: Some(plugin),
            })
        }
        FilterIr::Dynamic(d) => dynamic_filter(d),
        FilterIr::Lua(l) => any(&lua::Lua {
            default_source_code: Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(l.code.clone())),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    hcm::HttpFilter {
        name: f.name().to_string(),
        disabled: true,
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(typed)),
        ..Default::default()
    }
}

fn build_hcm(gw: &GatewayIr, chain: &ChainIr, stat_prefix: &str) -> listener::Filter {
    let mut http_filters: Vec<hcm::HttpFilter> = gw.filters.iter().map(http_filter).collect();
    http_filters.push(hcm::HttpFilter {
        name: ROUTER_NAME.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
            &router::Router::default(),
        ))),
        ..Default::default()
    });
    let h = hcm::HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: chain.name.clone(),
            },
        )),
        http_filters,
        // One spelling per path before routing and filters match on it: `/a/../b`, `//a` and
        // `%2F` cannot slip past a prefix (a redirect shows the client the unescaped path).
        normalize_path: Some(pb::BoolValue { value: true }),
        merge_slashes: true,
        path_with_escaped_slashes_action:
            hcm::http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndRedirect as i32,
        // `x_user_email` would reach WSGI/PHP upstreams as `x-user-email`, past the claim-header
        // stripping.
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            headers_with_underscores_action:
                core::http_protocol_options::HeadersWithUnderscoresAction::RejectRequest as i32,
            ..Default::default()
        }),
        use_remote_address: gw
            .use_remote_address
            .then_some(pb::BoolValue { value: true }),
        ..Default::default()
    };
    listener::Filter {
        name: HCM_NAME.into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(any(&h))),
    }
}

fn build_listener(gw: &GatewayIr, p: &PortIr, opts: &TranslateOptions) -> listener::Listener {
    let name = format!("{}/{}/{}", gw.namespace, gw.name, p.port);
    let mut l = listener::Listener {
        name: name.clone(),
        address: Some(socket_address(
            &opts.listener_address,
            if opts.ephemeral_listener_ports {
                0
            } else {
                p.port
            },
        )),
        ..Default::default()
    };
    for chain in &p.chains {
        let mut fc = listener::FilterChain {
            name: chain.name.clone(),
            filters: vec![build_hcm(
                gw,
                chain,
                &format!("{}-{}", p.protocol.as_str().to_lowercase(), p.port),
            )],
            ..Default::default()
        };
        if p.protocol == Protocol::Https {
            fc.filter_chain_match = Some(listener::FilterChainMatch {
                server_names: chain.server_names.clone(),
                ..Default::default()
            });
            let ctx = tls::DownstreamTlsContext {
                common_tls_context: Some(tls::CommonTlsContext {
                    tls_certificates: chain
                        .certificates
                        .iter()
                        .map(|c| tls::TlsCertificate {
                            certificate_chain: Some(core::DataSource {
                                specifier: Some(core::data_source::Specifier::InlineString(
                                    c.cert_pem.clone(),
                                )),
                                ..Default::default()
                            }),
                            private_key: Some(core::DataSource {
                                specifier: Some(core::data_source::Specifier::InlineString(
                                    c.key_pem.clone(),
                                )),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .collect(),
                    alpn_protocols: if chain.http1_only {
                        vec!["http/1.1".into()]
                    } else {
                        vec!["h2".into(), "http/1.1".into()]
                    },
                    ..Default::default()
                }),
                ..Default::default()
            };
            fc.transport_socket = Some(core::TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
            });
        }
        l.filter_chains.push(fc);
    }
    if p.protocol == Protocol::Https {
        l.listener_filters.push(listener::ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener::listener_filter::ConfigType::TypedConfig(any(
                &tls_inspector::TlsInspector::default(),
            ))),
            ..Default::default()
        });
    }
    l
}

/// Builds the resource set of every Gateway.
pub fn build(ir: &Ir, opts: &TranslateOptions) -> XdsSnapshot {
    ir.gateways
        .iter()
        .map(|(node, gw)| (node.clone(), Arc::new(build_gateway(gw, opts))))
        .collect()
}

/// Builds the resource set of one Gateway.
pub fn build_gateway(gw: &GatewayIr, opts: &TranslateOptions) -> XdsResources {
    {
        let mut res = XdsResources::default();
        for p in &gw.ports {
            let l = build_listener(gw, p, opts);
            res.insert(LISTENER_TYPE, l.name.clone(), top_any(any(&l)));
            for chain in &p.chains {
                let value = encode_route_configuration(chain);
                res.insert(
                    ROUTE_TYPE,
                    chain.name.clone(),
                    prost_types::Any {
                        type_url: ROUTE_TYPE.into(),
                        value,
                    },
                );
            }
        }
        for c in gw.clusters.values() {
            let (cl, cla) = build_cluster(c);
            res.insert(CLUSTER_TYPE, c.name.clone(), top_any(any(&cl)));
            if let Some(cla) = cla {
                res.insert(ENDPOINT_TYPE, c.name.clone(), top_any(any(&cla)));
            }
        }
        res
    }
}
