//! Intermediate representation: what each managed Envoy should do, in terms independent of both
//! Gateway API and Envoy protos. Built by [`crate::gatewayapi`], consumed by [`crate::xds`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ir {
    /// Keyed by [`crate::xds::snapshot::node_id`]. Shared: an incremental translation
    /// ([`crate::Translator`]) hands an unchanged Gateway the previous translation's IR.
    #[serde(serialize_with = "shared_gateways")]
    pub gateways: BTreeMap<String, Arc<GatewayIr>>,
}

fn shared_gateways<S: serde::Serializer>(
    m: &BTreeMap<String, Arc<GatewayIr>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().map(|(k, v)| (k, &**v)))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GatewayIr {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<PortIr>,
    pub clusters: BTreeMap<String, ClusterIr>,
    /// HCM filters in chain order (before the router). Each is disabled by default and enabled
    /// per route.
    pub filters: Vec<FilterIr>,
    /// Envoy appends the peer to X-Forwarded-For and trusts no hop (`use_remote_address`), so a
    /// client cannot choose its rate-limit key. Set when a BackendTrafficPolicy rate limit runs.
    pub use_remote_address: bool,
}

/// An Envoy listener's protocol; serialized as Gateway API spells it (`HTTP`, `HTTPS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Http,
    Https,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
        }
    }
}

/// One Envoy listener (one port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortIr {
    pub port: u16,
    pub protocol: Protocol,
    pub chains: Vec<ChainIr>,
}

/// One filter chain with its own route configuration. HTTP ports have one chain; HTTPS ports
/// have one per Gateway listener, selected by SNI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainIr {
    /// Also the route configuration name.
    pub name: String,
    pub server_names: Vec<String>,
    pub certificates: Vec<CertificateIr>,
    /// ALPN offers http/1.1 only: the listener's TLS configuration overlaps another's on the
    /// port (`OverlappingTLSConfig`), and HTTP/2 connection coalescing could cross listeners.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub http1_only: bool,
    pub virtual_hosts: Vec<VirtualHostIr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateIr {
    /// `namespace/name` of the Secret.
    pub name: String,
    pub cert_pem: String,
    #[serde(skip)]
    pub key_pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualHostIr {
    pub name: String,
    pub domains: Vec<String>,
    /// Already in precedence order. Shared with the route table and other virtual hosts: a
    /// route is copied only when a policy changes it for this Gateway.
    #[serde(serialize_with = "shared_routes")]
    pub routes: Vec<std::sync::Arc<RouteIr>>,
}

/// Shared routes serialize as plain routes. (serde's `rc` feature would do it too, but it
/// changes serde's features for the whole workspace and rebuilds every crate that uses it.)
fn shared_routes<S: serde::Serializer>(
    routes: &[std::sync::Arc<RouteIr>],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(routes.iter().map(|r| &**r))
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum PathMatchIr {
    Exact(String),
    /// Gateway API PathPrefix: matches whole path segments.
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueMatchIr {
    pub name: String,
    pub value: String,
    pub regex: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderOpsIr {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderOpsIr {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PathRewriteIr {
    Full(String),
    /// Replace the matched `prefix` with `replacement`, Gateway API semantics.
    Prefix {
        prefix: String,
        replacement: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ActionIr {
    Forward {
        backends: Vec<WeightedCluster>,
        host_rewrite: Option<String>,
        path_rewrite: Option<PathRewriteIr>,
    },
    Redirect {
        scheme: Option<String>,
        host: Option<String>,
        port: Option<u16>,
        path: Option<PathRewriteIr>,
        status: u32,
    },
    Direct {
        status: u32,
        body: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorIr {
    pub cluster: String,
    /// Fraction of requests, per million.
    pub per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteIr {
    /// Unique within the route configuration: `httproute/<ns>/<name>/rule/<i>/match/<j>`.
    pub name: String,
    pub path: PathMatchIr,
    pub headers: Vec<ValueMatchIr>,
    pub query_params: Vec<ValueMatchIr>,
    pub method: Option<String>,
    pub action: ActionIr,
    pub request_headers: HeaderOpsIr,
    pub response_headers: HeaderOpsIr,
    pub mirrors: Vec<MirrorIr>,
    pub timeout_ms: Option<u64>,
    pub backend_timeout_ms: Option<u64>,
    /// Names of HCM filters ([`FilterIr::name`]) enabled on this route.
    pub enabled_filters: Vec<String>,
    pub route_namespace: String,
    pub route_name: String,
    pub rule_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum EndpointIr {
    Socket { address: String, port: u16 },
    Pipe { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ClusterKind {
    /// Endpoints delivered as a ClusterLoadAssignment over ADS.
    Eds(Vec<EndpointIr>),
    /// Hostnames resolved by Envoy.
    StrictDns(Vec<EndpointIr>),
    /// IP addresses given inline (no DNS, no EDS).
    Static(Vec<EndpointIr>),
}

/// PEM files, as paths inside the Envoy pod, for mutual TLS to an upstream (Envoy reads them
/// itself, so keys never travel over xDS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsFiles {
    /// Client certificate chain Envoy presents (e.g. `/etc/envoy/certs/tls.crt`).
    pub cert_chain: String,
    /// Its private key (e.g. `/etc/envoy/certs/tls.key`).
    pub private_key: String,
    /// CA bundle the server certificate must chain to (e.g. `/etc/envoy/certs/ca.crt`).
    pub trusted_ca: String,
}

/// Trust anchors for an upstream's server certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TrustedCa {
    /// A PEM bundle file on Envoy's host (e.g. the platform's `/etc/ssl/certs/ca-certificates.crt`).
    File(String),
    /// PEM certificates inline.
    Pem(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterIr {
    pub name: String,
    pub kind: ClusterKind,
    /// Upstream TLS with this SNI (wasm fetch over https).
    pub tls_sni: Option<String>,
    /// With `tls_sni`: mutual TLS. Present this client certificate, and accept only a server
    /// certificate from `trusted_ca` whose SAN is the `tls_sni` host (wasm fetch from the
    /// controller in Kubernetes mode, which requires client certificates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client: Option<ClientTlsFiles>,
    /// With `tls_sni` and no `tls_client`: accept only a server certificate that chains to this
    /// CA and whose SAN is the `tls_sni` host (identity providers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<TrustedCa>,
    /// Upstream HTTP/2 only (gRPC services such as the rate-limit service).
    pub http2: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FilterIr {
    Wasm(WasmFilterIr),
    Lua(LuaFilterIr),
    Dynamic(DynamicFilterIr),
}

impl FilterIr {
    pub fn name(&self) -> &str {
        match self {
            FilterIr::Wasm(w) => &w.name,
            FilterIr::Lua(l) => &l.name,
            FilterIr::Dynamic(d) => &d.name,
        }
    }
}

/// One `envoy.filters.http.dynamic_modules` filter: a filter of a native module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DynamicFilterIr {
    /// HCM filter name:
    /// `envoy.filters.http.dynamic_modules/envoyextensionpolicy/<ns>/<policy>/dynamic-module/<i>`
    /// (or `.../securitypolicy/<ns>/<policy>/oidc`, `.../backendtrafficpolicy/...` for the
    /// built-in filters).
    pub name: String,
    pub module: DynamicModuleIr,
    /// Selects the filter inside the module (`ua_block`, `headers`, `ratelimit`, `oidc` in
    /// `libportcullis.so`).
    pub filter_name: String,
    /// The filter's config as a JSON string (empty when absent), sent as a `StringValue`.
    pub config: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DynamicModuleIr {
    pub source: ModuleSourceIr,
    pub do_not_close: bool,
    pub load_globally: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ModuleSourceIr {
    /// An absolute path on the Envoy's filesystem.
    Local { path: String },
    /// Fetched by Envoy from `url` through `fetch_cluster`, verified against `sha256`. Envoy
    /// rejects the update (NACK) rather than drop the filter while it is not cached.
    Remote {
        url: String,
        fetch_cluster: String,
        sha256: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WasmFilterIr {
    /// HCM filter name: `envoy.filters.http.wasm/envoyextensionpolicy/<ns>/<policy>/<index>`.
    pub name: String,
    pub plugin_name: String,
    pub root_id: String,
    /// The module digest: VMs are shared per module.
    pub vm_id: String,
    pub url: String,
    pub fetch_cluster: String,
    pub sha256: String,
    /// `wasm[].config` as a JSON string (empty when absent).
    pub configuration: String,
    pub fail_open: bool,
    pub host_env_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LuaFilterIr {
    /// HCM filter name: `envoy.filters.http.lua/envoyextensionpolicy/<ns>/<policy>/<index>`.
    pub name: String,
    pub code: String,
}
