//! Pure stages of the Portcullis controller (docs/architecture.md): resources -> translator -> IR ->
//! xDS builder. No I/O lives here: the same input gives byte-identical output.
//!
//! Entry points: [`parse_documents`] + [`Resources::from_parsed`] to load manifests (the caller
//! reads the files), [`translate`] to compute IR, xDS and statuses, [`render_output`] to print
//! them as `portcullis translate` does.
//!
//! Conventions the runtime relies on:
//! - one Envoy per Gateway, node id `namespace/name`; Envoy listener `ns/gw/<port>`; route
//!   configuration `ns/gw/<port>` (HTTP: all listeners of the port share it) or
//!   `ns/gw/<listener>` (HTTPS: one filter chain per listener, selected by SNI);
//! - clusters `service/<ns>/<name>/<port>` and `backend/<ns>/<name>` (EDS over ADS, or
//!   STRICT_DNS for fqdn Backends), `<wasm_serve_cluster>/<host>:<port>` per wasm serve URL
//!   (for https: SNI = host, plus mutual TLS with [`TranslateOptions::wasm_fetch_tls`]);
//! - EnvoyExtensionPolicy filters are named
//!   `envoy.filters.http.{wasm,lua}/envoyextensionpolicy/<ns>/<policy>/{wasm,lua}/<index>`,
//!   placed disabled in the HCM and enabled per route; the wasm `vm_id` is the module sha256;
//! - SecurityPolicy `oidc` runs the built-in oidc module ([`TranslateOptions::builtin_modules`])
//!   as `envoy.filters.http.wasm/securitypolicy/<ns>/<policy>/oidc`, with the provider cluster
//!   `sp/<ns>/<policy>/oidc` reaching the issuer (named after the policy, never the issuer); BackendTrafficPolicy `rateLimit` runs the
//!   ratelimit module as `envoy.filters.http.wasm/backendtrafficpolicy/<ns>/<policy>/ratelimit[/<route>]`
//!   (one instance per route rule unless every rule is `shared`), with the HTTP/2 cluster
//!   `ratelimit/<host:port>` of [`TranslateOptions::ratelimit_service`]. HCM order:
//!   SecurityPolicy, then EnvoyExtensionPolicy, then BackendTrafficPolicy filters;
//! - an EnvoyExtensionPolicy that attaches the oidc module gets a cluster for its config's
//!   `provider_cluster` (from `issuer`); one that attaches the ratelimit module with the
//!   controller-only `global.service_address: "host:port"` gets an HTTP/2 cluster for
//!   `global.cluster`, and `service_address` is removed before the config reaches the filter.
//!   Both names are rewritten to `eep/<ns>/<policy>/<name>` in the filter's config, and a name
//!   without the field that defines its cluster is refused;
//! - a cluster name has one definition: routes claim theirs first, then policies oldest first;
//!   a policy whose cluster another defines differently gets `Accepted=False` / `Conflicted`;
//! - conditions carry `lastTransitionTime: 1970-01-01T00:00:00Z` (pure output has no clock; the
//!   runtime stamps real times when a condition changes) and `observedGeneration` when the
//!   manifest sets `metadata.generation`;
//! - EnvoyExtensionPolicy `dynamicModule[i]` becomes
//!   `envoy.filters.http.dynamic_modules/envoyextensionpolicy/<ns>/<policy>/dynamic-module/<i>`
//!   (after the policy's wasm and lua filters), its module taken from the registry
//!   (`EnvoyProxy.spec.dynamicModules`) of each Gateway it reaches: the Gateway's
//!   `infrastructure.parametersRef`, else its GatewayClass's `parametersRef`. `Remote` modules
//!   are fetched and served like wasm, with `nack_on_cache_miss`; `metrics_namespace` is
//!   `portcullis`. With [`BuiltinRuntime::Dynamic`] the built-in filters are
//!   `envoy.filters.http.dynamic_modules/{securitypolicy,backendtrafficpolicy}/...`.

pub mod egress;
pub mod gatewayapi;
pub mod ir;
pub mod resources;
pub mod status;
pub mod wasm {
    pub mod source;
}
pub mod xds {
    pub mod bootstrap;
    pub mod builder;
    pub mod render;
    pub mod snapshot;
}

pub use ir::ClientTlsFiles;
pub use resources::{
    parse_documents, parse_values, LoadError, ParseCache, ParseCacheStats, Resource, Resources,
};
pub use xds::render::{render_output, try_render_output, OutputFormat, RenderError};

use std::collections::BTreeMap;

use status::ResourceStatus;
use wasm::source::{WasmResolver, WasmSource};
use xds::snapshot::XdsSnapshot;

pub const DEFAULT_CONTROLLER_NAME: &str = "portcullis.dev/gatewayclass-controller";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateOptions {
    /// GatewayClasses whose `controllerName` equals this are ours.
    pub controller_name: String,
    /// Prefix of the cluster names Envoy uses to fetch wasm modules from their serve URLs
    /// (one cluster per URL authority: `<prefix>/<host>:<port>`).
    pub wasm_serve_cluster: String,
    /// Address Envoy listeners bind to.
    pub listener_address: String,
    /// Bind every Gateway listener on port 0, so the kernel picks a free port; listener names
    /// keep the Gateway's port. For tests and local runs on busy machines, where a chosen port
    /// may already be taken; the bound ports are read from Envoy's admin (`/listeners`).
    pub ephemeral_listener_ports: bool,
    /// Where the built-in filter modules come from, by name (`"oidc"`, `"ratelimit"`): the
    /// runtime points these at its own served copies of `dist/wasm/<name>.wasm`. They are
    /// listed in `wasm_needed` and resolved through the [`WasmResolver`] like EEP modules.
    /// SecurityPolicy `oidc` needs `"oidc"`; BackendTrafficPolicy `rateLimit` needs `"ratelimit"`.
    pub builtin_modules: BTreeMap<String, WasmSource>,
    /// Key from which each SecurityPolicy's OIDC cookie secret is derived
    /// (`HMAC-SHA256(key, "oidc-cookie/<ns>/<name>")`). The runtime persists a random one. `None`
    /// (offline translate) derives from a public placeholder key and says so in the status.
    pub session_secret: Option<[u8; 32]>,
    /// `host:port` of the rate-limit gRPC service for BackendTrafficPolicy global limits
    /// (`portcullis run --ratelimit-service`). Global limits are rejected without it.
    pub ratelimit_service: Option<String>,
    /// Client certificate and CA for the fetch clusters of `https` wasm serve URLs (Kubernetes
    /// mode: the controller serves modules over mutual TLS). `None`: TLS with SNI only.
    pub wasm_fetch_tls: Option<ClientTlsFiles>,
    /// Which runtime runs the built-in filters (SecurityPolicy `oidc`, BackendTrafficPolicy
    /// `rateLimit`).
    pub builtin_runtime: BuiltinRuntime,
    /// `libportcullis.so`, resolved like a module: used when `builtin_runtime` is
    /// [`BuiltinRuntime::Dynamic`]. The runtime serves its own copy.
    pub builtin_dynamic_module: Option<WasmSource>,
    /// Which upstreams tenant config may reach (`Backend` on or off, refused ranges allowed).
    /// The default refuses `Backend` and every loopback/link-local/metadata target.
    pub egress: egress::EgressPolicy,
}

/// The runtime of the built-in filters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinRuntime {
    /// `oidc.wasm` and `ratelimit.wasm` ([`TranslateOptions::builtin_modules`]).
    #[default]
    Wasm,
    /// The `oidc` and `ratelimit` filters of `libportcullis.so`
    /// ([`TranslateOptions::builtin_dynamic_module`]).
    Dynamic,
}

impl std::str::FromStr for BuiltinRuntime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wasm" => Ok(Self::Wasm),
            "dynamic" => Ok(Self::Dynamic),
            _ => Err(format!("{s:?} is not a runtime (wasm or dynamic)")),
        }
    }
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            controller_name: DEFAULT_CONTROLLER_NAME.to_string(),
            wasm_serve_cluster: "portcullis-wasm".to_string(),
            listener_address: "0.0.0.0".to_string(),
            ephemeral_listener_ports: false,
            builtin_modules: BTreeMap::new(),
            session_secret: None,
            ratelimit_service: None,
            wasm_fetch_tls: None,
            builtin_runtime: BuiltinRuntime::Wasm,
            builtin_dynamic_module: None,
            egress: egress::EgressPolicy::default(),
        }
    }
}

/// One Envoy the runtime must run: for Gateway `namespace/name`, presenting `node_id`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GatewayInfra {
    pub namespace: String,
    pub name: String,
    pub node_id: String,
    /// Port and protocol of each programmed Envoy listener: what the Gateway's Service and
    /// NetworkPolicy expose.
    pub listeners: Vec<(u16, ir::Protocol)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TranslateOutput {
    pub ir: ir::Ir,
    pub xds: XdsSnapshot,
    /// Sorted by (apiVersion, kind, namespace, name).
    pub statuses: Vec<ResourceStatus>,
    /// Every module referenced by a policy, deduplicated and sorted.
    pub wasm_needed: Vec<WasmSource>,
    pub gateways: Vec<GatewayInfra>,
}

/// Translates a snapshot: Gateway API + policies -> IR -> xDS, and every status.
pub fn translate(
    resources: &Resources,
    opts: &TranslateOptions,
    wasm: &dyn WasmResolver,
) -> TranslateOutput {
    let t = gatewayapi::translate(resources, opts, wasm);
    let xds = xds::builder::build(&t.ir, opts);
    output(t, xds)
}

/// Translation across snapshots, for a runtime that translates one snapshot after another.
/// It remembers what the previous translation computed and reuses it where the inputs are
/// unchanged; [`Translator::translate`] always returns what [`translate`] returns.
/// - Per HTTPRoute, its translated rules, while the route and every object rules can read
///   (Services, EndpointSlices, Backends, BackendTLSPolicies, Secrets, ConfigMaps,
///   ReferenceGrants) are unchanged ([`gatewayapi::RuleMemo`]).
/// - Per listener, the route overlap check, while its attached routes are unchanged.
/// - Per Gateway, its IR, while its listeners, its attached routes and every policy are
///   unchanged ([`gatewayapi::Memo`]), and its xDS resources while its IR is the same: after an
///   edit to one Gateway's route the other Gateways get the previous `Arc<XdsResources>` itself,
///   so the server skips them without comparing a byte.
///
/// Everything is forgotten when the options change.
#[derive(Default)]
pub struct Translator {
    opts: Option<TranslateOptions>,
    memo: gatewayapi::Memo,
    xds: BTreeMap<
        String,
        (
            std::sync::Arc<ir::GatewayIr>,
            std::sync::Arc<xds::snapshot::XdsResources>,
        ),
    >,
    stats: TranslatorStats,
}

/// What the last [`Translator::translate`] reused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TranslatorStats {
    pub routes_translated: usize,
    pub routes_reused: usize,
    /// Gateway IRs built, and taken unchanged from the last translation.
    pub irs_built: usize,
    pub irs_reused: usize,
    /// Gateway xDS sets built, and taken from the last translation (IR unchanged).
    pub xds_built: usize,
    pub xds_reused: usize,
}

impl Translator {
    pub fn translate(
        &mut self,
        resources: &Resources,
        opts: &TranslateOptions,
        wasm: &dyn WasmResolver,
    ) -> TranslateOutput {
        if self.opts.as_ref() != Some(opts) {
            *self = Translator {
                opts: Some(opts.clone()),
                ..Default::default()
            };
        }
        let t = gatewayapi::translate_with(resources, opts, wasm, &mut self.memo);
        let mut stats = TranslatorStats {
            routes_translated: self.memo.rules.stats.translated,
            routes_reused: self.memo.rules.stats.reused,
            irs_built: self.memo.irs_built,
            irs_reused: self.memo.irs_reused,
            ..Default::default()
        };
        let mut memo = BTreeMap::new();
        let mut xds = xds::snapshot::XdsSnapshot::new();
        for (node, gw) in &t.ir.gateways {
            let built = match self.xds.remove(node) {
                // The same Arc when the IR was reused: a pointer check.
                Some((was, built)) if &was == gw => {
                    stats.xds_reused += 1;
                    (was, built)
                }
                _ => {
                    stats.xds_built += 1;
                    let built = std::sync::Arc::new(xds::builder::build_gateway(gw, opts));
                    (gw.clone(), built)
                }
            };
            xds.insert(node.clone(), built.1.clone());
            memo.insert(node.clone(), built);
        }
        self.xds = memo;
        self.stats = stats;
        output(t, xds)
    }

    /// What the last translation reused.
    pub fn stats(&self) -> TranslatorStats {
        self.stats
    }
}

fn output(t: gatewayapi::Translation, xds: XdsSnapshot) -> TranslateOutput {
    let gateways =
        t.ir.gateways
            .iter()
            .map(|(node, g)| GatewayInfra {
                namespace: g.namespace.clone(),
                name: g.name.clone(),
                node_id: node.clone(),
                listeners: g.ports.iter().map(|p| (p.port, p.protocol)).collect(),
            })
            .collect();
    TranslateOutput {
        ir: t.ir,
        xds,
        statuses: t.statuses,
        wasm_needed: t.wasm_needed,
        gateways,
    }
}
