//! `--enable-backend`, `--allow-backend-cidr`, `--allow-backend-unix`: which upstreams tenant
//! configuration may reach (shared by `run` and `translate`).

use portcullis_translator::egress::EgressPolicy;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct EgressArgs {
    /// Honour Envoy Gateway `Backend` references (`--enable-backend=false` to refuse them).
    /// Default: on with `--provider file` and in `translate`, off with `--provider kubernetes`
    /// (as Envoy Gateway's `extensionApis.enableBackend`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enable_backend: Option<bool>,
    /// Allow targets in this range that are refused by default. Repeatable, e.g. `127.0.0.0/8`
    /// for a local upstream or module server.
    ///
    /// Envoy's upstreams (`Backend` endpoints, EndpointSlice addresses, OIDC issuers,
    /// rate-limit `service_address`): loopback, link-local and the metadata service, and
    /// unspecified addresses are refused by default.
    ///
    /// The controller's own HTTP(S) fetches of wasm and dynamic modules (EnvoyExtensionPolicy
    /// `code.type: HTTP`, EnvoyProxy remote modules, --builtin-wasm-url) follow the same list,
    /// and also refuse private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7) and CGNAT
    /// (100.64.0.0/10) ranges by default. Every address a host name resolves to must pass; http
    /// and https are both accepted under this rule; redirects are never followed.
    #[arg(long, value_name = "CIDR")]
    pub allow_backend_cidr: Vec<ipnet::IpNet>,
    /// Allow `Backend` unix-socket endpoints (refused by default).
    #[arg(long)]
    pub allow_backend_unix: bool,
    /// PEM CA bundle, on Envoy's host, that an https OIDC issuer's certificate must chain to
    /// (its SAN must also name the issuer's host). A policy's own CA (EEP `provider_ca`)
    /// overrides it.
    #[arg(long, value_name = "PATH", default_value = portcullis_translator::egress::DEFAULT_CA_BUNDLE)]
    pub issuer_ca_bundle: String,
}

impl EgressArgs {
    /// The policy, with `enable_backend` defaulting to `backend_by_default`.
    pub fn policy(&self, backend_by_default: bool) -> EgressPolicy {
        EgressPolicy {
            enable_backend: self.enable_backend.unwrap_or(backend_by_default),
            allowed_cidrs: self.allow_backend_cidr.clone(),
            allow_unix: self.allow_backend_unix,
            issuer_ca_bundle: Some(self.issuer_ca_bundle.clone()),
        }
    }
}
