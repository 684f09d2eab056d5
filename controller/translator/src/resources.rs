//! Resource model: the Kubernetes objects the translator reads, as lenient serde structs.
//!
//! We use our own structs rather than the `gateway-api` crate: that crate pulls kube and
//! k8s-openapi into a crate that must stay pure and light, and our structs let us record every
//! field we do not implement (via `serde_ignored`) so statuses can say so instead of silently
//! dropping it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// `(namespace, name)`.
pub type NsName = (String, String);

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const EG_GROUP: &str = "gateway.envoyproxy.io";

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub generation: Option<i64>,
    pub creation_timestamp: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    pub values: Vec<String>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let val = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => val.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => !val.is_some_and(|v| e.values.contains(v)),
                    "Exists" => val.is_some(),
                    "DoesNotExist" => val.is_none(),
                    _ => false,
                }
            })
    }
}

// ---------------------------------------------------------------- Gateway API

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayClassSpec {
    pub controller_name: String,
    pub parameters_ref: Option<Value>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
    pub infrastructure: Option<GatewayInfrastructure>,
    /// `spec.addresses`: checked (`gatewayapi/validate/addresses.rs`), never assigned.
    pub addresses: Vec<GatewayAddress>,
}

/// One `spec.addresses` entry; `type` defaults to `IPAddress`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayAddress {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub value: Option<String>,
}

/// `spec.infrastructure`: labels and annotations go to the Envoy fleet (Kubernetes provider);
/// `parametersRef` names an EnvoyProxy in the Gateway's namespace, which replaces the
/// GatewayClass's.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayInfrastructure {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub parameters_ref: Option<LocalParametersRef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalParametersRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct Listener {
    pub name: String,
    pub hostname: Option<String>,
    pub port: u16,
    pub protocol: String,
    pub tls: Option<ListenerTls>,
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ListenerTls {
    pub mode: Option<String>,
    pub certificate_refs: Vec<ObjectRef>,
    pub options: BTreeMap<String, String>,
}

/// A typed reference (SecretObjectReference, BackendObjectReference, LocalObjectReference...).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct AllowedRoutes {
    pub namespaces: Option<RouteNamespaces>,
    pub kinds: Vec<GroupKind>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteNamespaces {
    pub from: Option<String>,
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct GroupKind {
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ParentRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteRule {
    pub name: Option<String>,
    pub matches: Vec<HttpRouteMatch>,
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<HttpBackendRef>,
    pub timeouts: Option<HttpRouteTimeouts>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<ValueMatch>,
    pub query_params: Vec<ValueMatch>,
    pub method: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ValueMatch {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub type_: String,
    pub request_header_modifier: Option<HeaderModifier>,
    pub response_header_modifier: Option<HeaderModifier>,
    pub request_redirect: Option<RequestRedirect>,
    #[serde(rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
    pub request_mirror: Option<RequestMirror>,
    // Known filter types we do not implement: parsed so they are reported by type, not as
    // unknown fields.
    pub extension_ref: Option<Value>,
    pub cors: Option<Value>,
    pub external_auth: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderModifier {
    pub set: Vec<NameValue>,
    pub add: Vec<NameValue>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestRedirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status_code: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub type_: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestMirror {
    pub backend_ref: ObjectRef,
    pub percent: Option<u32>,
    pub fraction: Option<Fraction>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpBackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
    pub weight: Option<u32>,
    pub filters: Vec<HttpRouteFilter>,
}

impl HttpBackendRef {
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            group: self.group.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            port: self.port,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteTimeouts {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReferenceGrantSpec {
    pub from: Vec<ReferenceGrantFrom>,
    pub to: Vec<ReferenceGrantTo>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReferenceGrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReferenceGrantTo {
    pub group: String,
    pub kind: String,
    pub name: Option<String>,
}

// ---------------------------------------------------------------- core kinds

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceSpec {
    pub ports: Vec<ServicePort>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: Option<Value>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointSliceBody {
    pub address_type: Option<String>,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<SlicePort>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct SliceEndpoint {
    pub addresses: Vec<String>,
    pub conditions: Option<SliceConditions>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct SliceConditions {
    pub ready: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct SlicePort {
    pub name: Option<String>,
    pub port: Option<u16>,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct SecretBody {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub data: BTreeMap<String, String>,
    pub string_data: BTreeMap<String, String>,
}

/// Why [`SecretBody::text`] has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretKeyError {
    Missing,
    NotBase64(String),
    NotText,
}

impl SecretBody {
    /// `key` as text: `stringData` first (as the API server merges it into `data`), else the
    /// base64 `data` value.
    pub fn text(&self, key: &str) -> Result<String, SecretKeyError> {
        use base64::Engine;
        if let Some(v) = self.string_data.get(key) {
            return Ok(v.clone());
        }
        let b64 = self.data.get(key).ok_or(SecretKeyError::Missing)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| SecretKeyError::NotBase64(e.to_string()))?;
        String::from_utf8(bytes).map_err(|_| SecretKeyError::NotText)
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ConfigMapBody {
    pub data: BTreeMap<String, String>,
}

// ---------------------------------------------------------------- Envoy Gateway

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub endpoints: Vec<BackendEndpoint>,
    pub app_protocols: Vec<String>,
    /// TLS towards the endpoints (Envoy Gateway's `BackendTLSSettings`); the fields not listed
    /// here are reported unsupported.
    pub tls: Option<BackendTlsSettings>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendTlsSettings {
    pub ca_certificate_refs: Vec<ObjectRef>,
    #[serde(rename = "wellKnownCACertificates")]
    pub well_known_ca_certificates: Option<String>,
    pub sni: Option<String>,
    pub insecure_skip_verify: Option<bool>,
}

// ---------------------------------------------------------------- BackendTLSPolicy

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendTlsPolicySpec {
    pub target_refs: Vec<PolicyTargetRef>,
    pub validation: BackendTlsValidation,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendTlsValidation {
    pub ca_certificate_refs: Vec<ObjectRef>,
    #[serde(rename = "wellKnownCACertificates")]
    pub well_known_ca_certificates: Option<String>,
    pub hostname: String,
    pub subject_alt_names: Vec<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendEndpoint {
    pub ip: Option<HostPort>,
    pub fqdn: Option<HostPort>,
    pub unix: Option<UnixSocket>,
    pub zone: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct HostPort {
    #[serde(alias = "hostname")]
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct UnixSocket {
    pub path: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvoyExtensionPolicySpec {
    pub target_ref: Option<PolicyTargetRef>,
    pub target_refs: Vec<PolicyTargetRef>,
    pub target_selectors: Vec<TargetSelector>,
    pub wasm: Vec<WasmSpec>,
    pub lua: Vec<LuaSpec>,
    pub dynamic_module: Vec<DynamicModuleSpec>,
}

/// `EnvoyExtensionPolicy.spec.dynamicModule[]`: a filter of a module registered in the
/// Gateway's EnvoyProxy `spec.dynamicModules`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct DynamicModuleSpec {
    pub name: String,
    pub filter_name: Option<String>,
    pub config: Option<Value>,
    pub terminal_filter: Option<bool>,
}

/// The part of an EnvoyProxy the translator reads: the dynamic-module registry. The fleet
/// fields (`provider`, `logging`) are read by the Kubernetes provider.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvoyProxySpec {
    pub dynamic_modules: Vec<DynamicModuleEntry>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct DynamicModuleEntry {
    pub name: String,
    pub source: DynamicModuleSource,
    pub do_not_close: Option<bool>,
    pub load_globally: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct DynamicModuleSource {
    /// `Local` (default) or `Remote`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub local: Option<LocalModuleSource>,
    pub remote: Option<RemoteModuleSource>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalModuleSource {
    pub path: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RemoteModuleSource {
    pub url: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyTargetRef {
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct TargetSelector {
    pub group: Option<String>,
    pub kind: String,
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct WasmSpec {
    pub name: Option<String>,
    #[serde(rename = "rootID")]
    pub root_id: Option<String>,
    pub code: WasmCode,
    pub config: Option<Value>,
    pub fail_open: Option<bool>,
    pub env: Option<WasmEnv>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct WasmCode {
    #[serde(rename = "type")]
    pub type_: String,
    pub http: Option<WasmHttpCode>,
    pub image: Option<WasmImageCode>,
    pub pull_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct WasmHttpCode {
    pub url: String,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct WasmImageCode {
    pub url: String,
    pub sha256: Option<String>,
    pub pull_secret_ref: Option<ObjectRef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct WasmEnv {
    pub host_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct LuaSpec {
    #[serde(rename = "type")]
    pub type_: String,
    pub inline: Option<String>,
    pub value_ref: Option<ObjectRef>,
}

// ---------------------------------------------------------------- SecurityPolicy

/// SecurityPolicy: targets and `oidc`. Other auth kinds (jwt, basicAuth, extAuth...) are not
/// modelled, so they land in `unsupported` and the policy is rejected (fail closed).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct SecurityPolicySpec {
    pub target_ref: Option<PolicyTargetRef>,
    pub target_refs: Vec<PolicyTargetRef>,
    pub target_selectors: Vec<TargetSelector>,
    /// Boxed: keeps [`Resource`] variants of similar size.
    pub oidc: Option<Box<OidcSpec>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct OidcSpec {
    pub provider: OidcProviderSpec,
    #[serde(rename = "clientID")]
    pub client_id: Option<String>,
    #[serde(rename = "clientIDRef")]
    pub client_id_ref: Option<ObjectRef>,
    pub client_secret: Option<ObjectRef>,
    #[serde(rename = "redirectURL")]
    pub redirect_url: Option<String>,
    pub logout_path: Option<String>,
    pub scopes: Vec<String>,
    pub cookie_domain: Option<String>,
    pub cookie_config: Option<OidcCookieConfig>,
    pub forward_access_token: Option<bool>,
    #[serde(rename = "forwardIDToken")]
    pub forward_id_token: Option<OidcForwardIdToken>,
    pub refresh_token: Option<bool>,
    #[serde(rename = "csrfTokenTTL")]
    pub csrf_token_ttl: Option<String>,
    #[serde(rename = "defaultTokenTTL")]
    pub default_token_ttl: Option<String>,
    // Accepted but not expressible by the filter: reported as ignored, never silently dropped.
    pub cookie_names: Option<Value>,
    #[serde(rename = "defaultRefreshTokenTTL")]
    pub default_refresh_token_ttl: Option<String>,
    pub deny_redirect: Option<Value>,
    pub disable_token_encryption: Option<bool>,
    pub resources: Vec<String>,
    pub pass_through_auth_header: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct OidcProviderSpec {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
    pub backend_ref: Option<Value>,
    pub backend_refs: Option<Value>,
    pub backend_settings: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct OidcCookieConfig {
    pub same_site: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct OidcForwardIdToken {
    pub header: Option<String>,
}

// ---------------------------------------------------------------- BackendTrafficPolicy

/// BackendTrafficPolicy: targets and `rateLimit`. Other traffic features are reported as
/// unsupported fields; unmodelled `rateLimit` fields reject the rate limit.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendTrafficPolicySpec {
    pub target_ref: Option<PolicyTargetRef>,
    pub target_refs: Vec<PolicyTargetRef>,
    pub target_selectors: Vec<TargetSelector>,
    pub rate_limit: Option<RateLimitSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub local: Option<RateLimitRules>,
    pub global: Option<RateLimitRules>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitRules {
    pub rules: Vec<RateLimitRule>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitRule {
    pub client_selectors: Vec<RateLimitSelector>,
    pub limit: RateLimitValue,
    pub shared: Option<bool>,
    pub shadow_mode: Option<bool>,
    pub x_rate_limit_headers: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitSelector {
    pub headers: Vec<RateLimitHeaderMatch>,
    pub methods: Vec<RateLimitMethodMatch>,
    #[serde(rename = "sourceCIDR")]
    pub source_cidr: Option<RateLimitCidr>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitHeaderMatch {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub value: Option<String>,
    pub invert: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitMethodMatch {
    pub value: String,
    pub invert: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitCidr {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub value: String,
    pub invert: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitValue {
    pub requests: u64,
    pub unit: String,
}

// ---------------------------------------------------------------- objects

/// One parsed object: metadata, typed body, and the `spec.*` fields we did not model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object<T> {
    pub meta: ObjectMeta,
    pub spec: T,
    /// Paths (e.g. `spec.rules.0.retry`) present in the manifest that this controller ignores.
    pub unsupported: Vec<String>,
    /// `file#index` it came from.
    pub source: String,
}

impl<T> Object<T> {
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or("default")
    }
    pub fn name(&self) -> &str {
        &self.meta.name
    }
    pub fn key(&self) -> NsName {
        (self.namespace().to_string(), self.meta.name.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    GatewayClass(Arc<Object<GatewayClassSpec>>),
    Gateway(Arc<Object<GatewaySpec>>),
    HttpRoute(Arc<Object<HttpRouteSpec>>),
    ReferenceGrant(Arc<Object<ReferenceGrantSpec>>),
    Service(Arc<Object<ServiceSpec>>),
    EndpointSlice(Arc<Object<EndpointSliceBody>>),
    Secret(Arc<Object<SecretBody>>),
    ConfigMap(Arc<Object<ConfigMapBody>>),
    Namespace(Arc<Object<()>>),
    Backend(Arc<Object<BackendSpec>>),
    EnvoyExtensionPolicy(Arc<Object<EnvoyExtensionPolicySpec>>),
    EnvoyProxy(Arc<Object<EnvoyProxySpec>>),
    SecurityPolicy(Arc<Object<SecurityPolicySpec>>),
    BackendTrafficPolicy(Arc<Object<BackendTrafficPolicySpec>>),
    BackendTlsPolicy(Arc<Object<BackendTlsPolicySpec>>),
    /// A kind this controller does not read; kept so callers can report it.
    Other {
        api_version: String,
        kind: String,
        meta: ObjectMeta,
        source: String,
    },
}

/// A document that could not be read. The other documents of the file still load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name} document {index}: {reason}")]
pub struct LoadError {
    pub source_name: String,
    pub index: usize,
    pub reason: String,
}

/// Splits a multi-document YAML stream at `---` lines, so a broken document cannot take down
/// the documents after it.
fn split_documents(yaml: &str) -> Vec<Cow<'_, str>> {
    // A document of plain `\n`-terminated lines is the very slice of `yaml` (no copy: the memo
    // compares it with what it holds); one with `\r\n`, `...` or `--- content` is rebuilt.
    struct Doc {
        start: usize,
        end: usize,
        owned: Option<String>,
    }
    impl Doc {
        fn at(start: usize) -> Self {
            Doc {
                start,
                end: start,
                owned: None,
            }
        }
        fn owned(&mut self, yaml: &str) -> &mut String {
            let (start, end) = (self.start, self.end);
            self.owned
                .get_or_insert_with(|| yaml[start..end].to_string())
        }
    }
    let mut docs = vec![Doc::at(0)];
    let mut offset = 0;
    for piece in yaml.split_inclusive('\n') {
        let next = offset + piece.len();
        let plain = piece.strip_suffix('\n').filter(|l| !l.ends_with('\r'));
        let line = piece
            .strip_suffix('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .unwrap_or(piece);
        let is_sep = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_sep {
            let mut d = Doc::at(next);
            // `--- {inline}` keeps the content after the marker.
            let rest = line[3..].trim();
            if !rest.is_empty() {
                let o = d.owned(yaml);
                o.push_str(rest);
                o.push('\n');
            }
            docs.push(d);
        } else if line == "..." {
            if let Some(d) = docs.last_mut() {
                d.owned(yaml);
            }
        } else if let Some(d) = docs.last_mut() {
            if d.owned.is_none() && plain.is_some() {
                d.end = next;
            } else {
                let o = d.owned(yaml);
                o.push_str(line);
                o.push('\n');
            }
        }
        offset = next;
    }
    docs.into_iter()
        .map(|d| match d.owned {
            Some(o) => Cow::Owned(o),
            None => Cow::Borrowed(&yaml[d.start..d.end]),
        })
        .collect()
}

/// Parses a multi-document YAML stream. Empty documents, and documents with neither
/// `apiVersion` nor `kind` (not Kubernetes objects), are skipped; a bad document yields a
/// [`LoadError`] and the rest still load. `kind: List` documents are flattened.
pub fn parse_documents(source_name: &str, yaml: &str) -> (Vec<Resource>, Vec<LoadError>) {
    // One loop for both: a memo that starts empty parses every document once.
    let (out, errors, _) = ParseCache::default().parse_keeping(source_name, yaml, false);
    (out, errors)
}

/// What one document with content yields.
#[derive(Debug, Clone)]
struct ParsedDocument {
    resources: Vec<Resource>,
    errors: Vec<LoadError>,
}

/// One document of a stream, the `index`-th with content; `None` when it has none.
fn parse_document(source_name: &str, index: usize, doc: &str) -> Option<ParsedDocument> {
    let mut parsed = ParsedDocument {
        resources: Vec::new(),
        errors: Vec::new(),
    };
    match serde_yaml::from_str::<Option<Value>>(doc) {
        Ok(None) | Ok(Some(Value::Null)) => return None,
        Ok(Some(value)) => parse_value(
            source_name,
            index,
            value,
            &mut parsed.resources,
            &mut parsed.errors,
        ),
        Err(e) => parsed.errors.push(LoadError {
            source_name: source_name.to_string(),
            index,
            reason: format!("invalid YAML: {e}"),
        }),
    }
    Some(parsed)
}

/// [`parse_documents`] with a memo per document, for a caller that parses the same files again
/// and again (`portcullis run` after every save). What a document yields depends only on the
/// file's name, the document's position and its text, so a document with all three unchanged
/// is taken from the memo: an edit to one route in a file of thousands parses one document.
#[derive(Debug, Default)]
pub struct ParseCache {
    files: std::collections::HashMap<String, Vec<CachedDocument>>,
}

#[derive(Debug)]
struct CachedDocument {
    text: String,
    /// Its index among the documents with content, and what it yielded (`None`: empty).
    index: usize,
    parsed: Option<ParsedDocument>,
}

/// How much of one [`ParseCache::parse`] came from the memo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseCacheStats {
    pub reused: usize,
    pub parsed: usize,
}

impl std::ops::AddAssign for ParseCacheStats {
    fn add_assign(&mut self, other: Self) {
        self.reused += other.reused;
        self.parsed += other.parsed;
    }
}

impl ParseCache {
    /// The same result as [`parse_documents`]`(source_name, yaml)`; the memo of `source_name`
    /// is replaced by this version's documents.
    pub fn parse(
        &mut self,
        source_name: &str,
        yaml: &str,
    ) -> (Vec<Resource>, Vec<LoadError>, ParseCacheStats) {
        self.parse_keeping(source_name, yaml, true)
    }

    /// [`ParseCache::parse`]; with `keep: false` nothing is remembered for `source_name` (a
    /// one-shot parse does not hold every document's text).
    fn parse_keeping(
        &mut self,
        source_name: &str,
        yaml: &str,
        keep: bool,
    ) -> (Vec<Resource>, Vec<LoadError>, ParseCacheStats) {
        let mut old = self
            .files
            .remove(source_name)
            .unwrap_or_default()
            .into_iter();
        let mut memo = Vec::new();
        let (mut out, mut errors, mut stats) = (Vec::new(), Vec::new(), ParseCacheStats::default());
        // `index` counts documents with content (0-based): a leading `---` or a comment-only
        // preamble is not a document.
        let mut index = 0usize;
        for text in split_documents(yaml) {
            let entry = match old.next() {
                Some(c) if c.index == index && c.text == text => {
                    stats.reused += 1;
                    c
                }
                _ => {
                    stats.parsed += 1;
                    CachedDocument {
                        parsed: parse_document(source_name, index, &text),
                        text: text.into_owned(),
                        index,
                    }
                }
            };
            if entry.parsed.is_none() {
                if keep {
                    memo.push(entry);
                }
                continue;
            }
            index += 1;
            if keep {
                if let Some(p) = &entry.parsed {
                    out.extend(p.resources.iter().cloned());
                    errors.extend(p.errors.iter().cloned());
                }
                memo.push(entry);
            } else if let Some(p) = entry.parsed {
                out.extend(p.resources);
                errors.extend(p.errors);
            }
        }
        if keep {
            self.files.insert(source_name.to_string(), memo);
        }
        (out, errors, stats)
    }

    /// Forget every file not in `names` (deleted since).
    pub fn retain_files<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::HashSet<&str> = names.into_iter().collect();
        self.files.retain(|name, _| keep.contains(name.as_str()));
    }
}

/// Objects already decoded (e.g. from the Kubernetes API, as JSON): the same checks as
/// [`parse_documents`] without a YAML round trip. `index` in errors is the value's position.
pub fn parse_values(
    source_name: &str,
    values: impl IntoIterator<Item = Value>,
) -> (Vec<Resource>, Vec<LoadError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        parse_value(source_name, index, value, &mut out, &mut errors);
    }
    (out, errors)
}

/// One document: a Kubernetes object or a `List` of them; anything else is skipped.
fn parse_value(
    source_name: &str,
    index: usize,
    value: Value,
    out: &mut Vec<Resource>,
    errors: &mut Vec<LoadError>,
) {
    // Not a Kubernetes object at all (an Envoy or compose config next to the manifests).
    if value.get("apiVersion").is_none() && value.get("kind").is_none() {
        return;
    }
    let items = match value {
        Value::Object(mut o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
            match o.remove("items") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            }
        }
        v => vec![v],
    };
    for item in items {
        match parse_object(&format!("{source_name}#{index}"), item) {
            Ok(r) => out.push(r),
            Err(reason) => errors.push(LoadError {
                source_name: source_name.to_string(),
                index,
                reason,
            }),
        }
    }
}

fn typed<T: DeserializeOwned>(
    source: &str,
    v: Value,
    report_unknown: bool,
) -> Result<Object<T>, String> {
    #[derive(Deserialize)]
    struct Meta {
        metadata: ObjectMeta,
    }
    let meta: Meta =
        serde_json::from_value(v.clone()).map_err(|e| format!("invalid metadata: {e}"))?;
    if meta.metadata.name.is_empty() {
        return Err("metadata.name is required".into());
    }
    // The body is `spec` for custom resources and the whole object for core kinds.
    let (body, prefix) = match v.get("spec") {
        Some(spec) if report_unknown => (spec.clone(), "spec"),
        _ => (v, ""),
    };
    let mut unsupported = Vec::new();
    let spec: T = serde_ignored::deserialize(body, |path| {
        // serde_ignored writes `?` for every Option level: drop those segments.
        let p = path.to_string().replace(".?", "");
        if report_unknown {
            unsupported.push(if prefix.is_empty() {
                p
            } else {
                format!("{prefix}.{p}")
            });
        }
    })
    .map_err(|e| {
        format!(
            "invalid {}: {e}",
            if prefix.is_empty() { "object" } else { prefix }
        )
    })?;
    unsupported.sort();
    Ok(Object {
        meta: meta.metadata,
        spec,
        unsupported,
        source: source.to_string(),
    })
}

fn parse_object(source: &str, v: Value) -> Result<Resource, String> {
    let api_version = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if api_version.is_empty() || kind.is_empty() {
        return Err("apiVersion and kind are required".into());
    }
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let spec_of = |v: Value| -> Value {
        // Custom resources without a spec still parse (all fields default).
        let mut v = v;
        if let Some(o) = v.as_object_mut() {
            o.entry("spec")
                .or_insert_with(|| Value::Object(Default::default()));
        }
        v
    };
    Ok(match (group, kind.as_str()) {
        (GATEWAY_GROUP, "GatewayClass") => {
            Resource::GatewayClass(typed(source, spec_of(v), true)?.into())
        }
        (GATEWAY_GROUP, "Gateway") => Resource::Gateway(typed(source, spec_of(v), true)?.into()),
        (GATEWAY_GROUP, "HTTPRoute") => {
            Resource::HttpRoute(typed(source, spec_of(v), true)?.into())
        }
        (GATEWAY_GROUP, "ReferenceGrant") => {
            Resource::ReferenceGrant(typed(source, spec_of(v), true)?.into())
        }
        (GATEWAY_GROUP, "BackendTLSPolicy") => {
            Resource::BackendTlsPolicy(typed(source, spec_of(v), true)?.into())
        }
        (EG_GROUP, "Backend") => Resource::Backend(typed(source, spec_of(v), true)?.into()),
        (EG_GROUP, "EnvoyExtensionPolicy") => {
            Resource::EnvoyExtensionPolicy(typed(source, spec_of(v), true)?.into())
        }
        // Only the registry is read here; other fields are the fleet's (not reported twice).
        (EG_GROUP, "EnvoyProxy") => {
            let mut o: Object<EnvoyProxySpec> = typed(source, spec_of(v), true)?;
            o.unsupported.clear();
            Resource::EnvoyProxy(o.into())
        }
        (EG_GROUP, "SecurityPolicy") => {
            Resource::SecurityPolicy(typed(source, spec_of(v), true)?.into())
        }
        (EG_GROUP, "BackendTrafficPolicy") => {
            Resource::BackendTrafficPolicy(typed(source, spec_of(v), true)?.into())
        }
        ("", "Service") => {
            let spec = v
                .get("spec")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            let mut o: Object<ServiceSpec> = typed(source, v, false)?;
            o.spec = serde_json::from_value(spec).map_err(|e| format!("invalid spec: {e}"))?;
            Resource::Service(o.into())
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            Resource::EndpointSlice(typed(source, v, false)?.into())
        }
        ("", "Secret") => Resource::Secret(typed(source, v, false)?.into()),
        ("", "ConfigMap") => Resource::ConfigMap(typed(source, v, false)?.into()),
        ("", "Namespace") => {
            let o: Object<Value> = typed(source, v, false)?;
            Resource::Namespace(Arc::new(Object {
                meta: o.meta,
                spec: (),
                unsupported: vec![],
                source: o.source,
            }))
        }
        _ => {
            let meta = v
                .get("metadata")
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| format!("invalid metadata: {e}"))?
                .unwrap_or_default();
            Resource::Other {
                api_version,
                kind,
                meta,
                source: source.to_string(),
            }
        }
    })
}

/// The resource snapshot the translator reads. Keys are `(namespace, name)`; cluster-scoped
/// kinds use an empty namespace. A later duplicate replaces an earlier one.
///
/// Every object is `Eq`, so two `Arc`s of one object compare equal by pointer without looking
/// inside: [`crate::Translator`]'s "unchanged" checks rely on it (asserted below).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub gateway_classes: BTreeMap<String, Arc<Object<GatewayClassSpec>>>,
    pub gateways: BTreeMap<NsName, Arc<Object<GatewaySpec>>>,
    pub http_routes: BTreeMap<NsName, Arc<Object<HttpRouteSpec>>>,
    pub reference_grants: BTreeMap<NsName, Arc<Object<ReferenceGrantSpec>>>,
    pub services: BTreeMap<NsName, Arc<Object<ServiceSpec>>>,
    pub endpoint_slices: BTreeMap<NsName, Arc<Object<EndpointSliceBody>>>,
    pub secrets: BTreeMap<NsName, Arc<Object<SecretBody>>>,
    pub config_maps: BTreeMap<NsName, Arc<Object<ConfigMapBody>>>,
    pub namespaces: BTreeMap<String, Arc<Object<()>>>,
    pub backends: BTreeMap<NsName, Arc<Object<BackendSpec>>>,
    pub extension_policies: BTreeMap<NsName, Arc<Object<EnvoyExtensionPolicySpec>>>,
    pub envoy_proxies: BTreeMap<NsName, Arc<Object<EnvoyProxySpec>>>,
    pub security_policies: BTreeMap<NsName, Arc<Object<SecurityPolicySpec>>>,
    pub backend_traffic_policies: BTreeMap<NsName, Arc<Object<BackendTrafficPolicySpec>>>,
    pub backend_tls_policies: BTreeMap<NsName, Arc<Object<BackendTlsPolicySpec>>>,
    /// `(apiVersion, kind, namespace/name, source)` of objects of kinds we do not read.
    pub others: Vec<(String, String, String, String)>,
}

// A field whose objects lost `Eq` would still compare correctly, only deeply: keep it `Eq`.
const _: fn() = || {
    fn eq<T: Eq>() {}
    eq::<Resources>();
};

impl Resources {
    pub fn from_parsed(parsed: Vec<Resource>) -> Self {
        let mut r = Resources::default();
        for res in parsed {
            match res {
                Resource::GatewayClass(o) => {
                    r.gateway_classes.insert(o.meta.name.clone(), o);
                }
                Resource::Gateway(o) => {
                    r.gateways.insert(o.key(), o);
                }
                Resource::HttpRoute(o) => {
                    r.http_routes.insert(o.key(), o);
                }
                Resource::ReferenceGrant(o) => {
                    r.reference_grants.insert(o.key(), o);
                }
                Resource::Service(o) => {
                    r.services.insert(o.key(), o);
                }
                Resource::EndpointSlice(o) => {
                    r.endpoint_slices.insert(o.key(), o);
                }
                Resource::Secret(o) => {
                    r.secrets.insert(o.key(), o);
                }
                Resource::ConfigMap(o) => {
                    r.config_maps.insert(o.key(), o);
                }
                Resource::Namespace(o) => {
                    r.namespaces.insert(o.meta.name.clone(), o);
                }
                Resource::Backend(o) => {
                    r.backends.insert(o.key(), o);
                }
                Resource::EnvoyExtensionPolicy(o) => {
                    r.extension_policies.insert(o.key(), o);
                }
                Resource::EnvoyProxy(o) => {
                    r.envoy_proxies.insert(o.key(), o);
                }
                Resource::SecurityPolicy(o) => {
                    r.security_policies.insert(o.key(), o);
                }
                Resource::BackendTrafficPolicy(o) => {
                    r.backend_traffic_policies.insert(o.key(), o);
                }
                Resource::BackendTlsPolicy(o) => {
                    r.backend_tls_policies.insert(o.key(), o);
                }
                Resource::Other {
                    api_version,
                    kind,
                    meta,
                    source,
                } => {
                    let ns = meta.namespace.unwrap_or_default();
                    r.others
                        .push((api_version, kind, format!("{ns}/{}", meta.name), source));
                }
            }
        }
        r.others.sort();
        r
    }

    /// Labels of a namespace; a namespace without a manifest has only the well-known name label.
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .get(ns)
            .map(|n| n.meta.labels.clone())
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), ns.to_string());
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `split_documents` returned when it copied every line: the oracle for the slices.
    fn split_by_copying(yaml: &str) -> Vec<String> {
        let mut docs = vec![String::new()];
        for line in yaml.lines() {
            if line == "---" || line.starts_with("--- ") || line.starts_with("---\t") {
                docs.push(String::new());
                let rest = line[3..].trim();
                if !rest.is_empty() {
                    if let Some(d) = docs.last_mut() {
                        d.push_str(rest);
                        d.push('\n');
                    }
                }
            } else if line == "..." {
                continue;
            } else if let Some(d) = docs.last_mut() {
                d.push_str(line);
                d.push('\n');
            }
        }
        docs
    }

    #[test]
    fn split_documents_borrows_plain_documents_and_matches_the_line_copy() {
        let cases = [
            "",
            "a: 1\n",
            "a: 1",
            "---\na: 1\n---\nb: 2\n",
            "# preamble\n---\na: 1\n...\n---\nb: 2",
            "--- {a: 1}\nb: 2\n---\tc\n",
            "a: 1\r\nb: 2\r\n---\r\nc: 3\r",
            "a: 1\n\n\n---\n\n---\n",
            "----\n--- \n-- -\nx: \"---\"\n",
        ];
        for yaml in cases {
            let got: Vec<String> = split_documents(yaml)
                .into_iter()
                .map(Cow::into_owned)
                .collect();
            assert_eq!(got, split_by_copying(yaml), "{yaml:?}");
        }
        let plain = "a: 1\n---\nb: 2\n";
        assert!(split_documents(plain)
            .iter()
            .all(|d| matches!(d, Cow::Borrowed(_))));
    }

    fn config_map(name: &str, value: &str) -> String {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{x: {value}}}\n"
        )
    }

    #[test]
    fn parse_cache_returns_what_parse_documents_returns_and_reparses_only_changes() {
        let mut cache = ParseCache::default();
        let docs = |parts: &[String]| format!("# preamble\n---\n{}", parts.join("---\n"));
        let mut parts: Vec<String> = (0..4).map(|i| config_map(&format!("c{i}"), "a")).collect();
        let check = |cache: &mut ParseCache, name: &str, yaml: &str| {
            let (res, errs, stats) = cache.parse(name, yaml);
            assert_eq!((res, errs), parse_documents(name, yaml), "{yaml}");
            stats
        };
        // First read: everything parsed (the preamble is a document without content).
        let all = ParseCacheStats {
            reused: 0,
            parsed: 5,
        };
        assert_eq!(check(&mut cache, "f.yaml", &docs(&parts)), all);
        // Unchanged: nothing parsed again.
        let none = ParseCacheStats {
            reused: 5,
            parsed: 0,
        };
        assert_eq!(check(&mut cache, "f.yaml", &docs(&parts)), none);
        // One document edited: only it.
        parts[2] = config_map("c2", "b");
        let one = ParseCacheStats {
            reused: 4,
            parsed: 1,
        };
        assert_eq!(check(&mut cache, "f.yaml", &docs(&parts)), one);
        // A broken document: its error comes back with its index, the others are reused.
        parts[1] = "kind: [unclosed\n".into();
        assert_eq!(check(&mut cache, "f.yaml", &docs(&parts)), one);
        // A document inserted in front: the ones after it moved (their `source` names the
        // index), so they are parsed again.
        parts.insert(0, config_map("new", "a"));
        let (res, _, stats) = cache.parse("f.yaml", &docs(&parts));
        assert_eq!(
            stats,
            ParseCacheStats {
                reused: 1,
                parsed: 5
            }
        );
        let Resource::ConfigMap(last) = &res[res.len() - 1] else {
            panic!("{res:?}");
        };
        assert_eq!(last.source, "f.yaml#4");
        // Same text under another file name: parsed for that name.
        let (other, _, stats) = cache.parse("g.yaml", &docs(&parts));
        assert_eq!(stats.reused, 0);
        assert!(other
            .iter()
            .all(|r| !matches!(r, Resource::ConfigMap(o) if o.source.starts_with("f.yaml"))));
        // A deleted file is forgotten.
        cache.retain_files(["g.yaml"]);
        assert_eq!(cache.parse("f.yaml", &docs(&parts)).2.reused, 0);
    }

    #[test]
    fn bad_document_does_not_stop_others() {
        let yaml = "# preamble\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {x: y}\n---\nkind: [unclosed\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n";
        let (res, errs) = parse_documents("f.yaml", yaml);
        assert_eq!(res.len(), 2);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].index, 1);
        assert!(
            errs[0]
                .to_string()
                .starts_with("f.yaml document 1: invalid YAML"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn missing_name_and_kind_are_errors() {
        let (res, errs) = parse_documents("f", "apiVersion: v1\nkind: Secret\nmetadata: {}\n---\nkind: Secret\nmetadata: {name: s}\n---\nstatic_resources: {}\n");
        assert!(res.is_empty());
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].reason.contains("metadata.name"));
        assert!(errs[1].reason.contains("apiVersion and kind"));
    }

    #[test]
    fn unknown_spec_fields_are_recorded() {
        let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: n}\nspec:\n  rules:\n  - retry: {attempts: 2}\n    backendRefs: [{name: s, port: 80}]\n";
        let (res, errs) = parse_documents("f", yaml);
        assert!(errs.is_empty(), "{errs:?}");
        let Resource::HttpRoute(r) = &res[0] else {
            panic!("not a route: {res:?}")
        };
        assert_eq!(r.unsupported, vec!["spec.rules.0.retry".to_string()]);
        assert_eq!(r.spec.rules[0].backend_refs[0].port, Some(80));
    }

    #[test]
    fn list_kind_is_flattened() {
        let yaml = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a, labels: {x: y}}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n";
        let (res, errs) = parse_documents("f", yaml);
        assert!(errs.is_empty());
        let r = Resources::from_parsed(res);
        assert_eq!(r.namespaces.len(), 2);
        assert_eq!(
            r.namespace_labels("a").get("x").map(String::as_str),
            Some("y")
        );
        assert_eq!(
            r.namespace_labels("zz")
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("zz")
        );
    }

    #[test]
    fn label_selector_operators() {
        let mut labels = BTreeMap::new();
        labels.insert("env".to_string(), "prod".to_string());
        let sel = |op: &str, vals: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: op.into(),
                values: vals.iter().map(|s| s.to_string()).collect(),
            }],
        };
        assert!(sel("In", &["prod", "dev"]).matches(&labels));
        assert!(!sel("NotIn", &["prod"]).matches(&labels));
        assert!(sel("Exists", &[]).matches(&labels));
        assert!(!sel("DoesNotExist", &[]).matches(&labels));
    }
}
