//! Built-in filter modules (oidc, ratelimit) and the clusters they call.

use crate::egress::EgressPolicy;
use std::collections::BTreeSet;

use crate::ir::{
    ClusterIr, ClusterKind, DynamicFilterIr, DynamicModuleIr, EndpointIr, FilterIr, ModuleSourceIr,
    TrustedCa, WasmFilterIr,
};
use crate::wasm::source::{WasmResolution, WasmResolver, WasmSource};
use crate::{BuiltinRuntime, TranslateOptions};

/// A built-in filter's code, ready to load: a wasm module, or `libportcullis.so`.
#[derive(Debug, Clone)]
pub(crate) struct ReadyModule {
    pub runtime: BuiltinRuntime,
    pub sha256: String,
    pub serve_url: String,
    pub fetch_cluster: ClusterIr,
}

impl ReadyModule {
    /// The HCM filter running built-in filter `filter` (`oidc`, `ratelimit`) with `config`.
    /// `path` names it after its policy (`securitypolicy/<ns>/<name>/oidc`).
    pub fn filter(&self, path: &str, filter: &str, config: String) -> FilterIr {
        match self.runtime {
            BuiltinRuntime::Wasm => FilterIr::Wasm(WasmFilterIr {
                name: format!("envoy.filters.http.wasm/{path}"),
                plugin_name: path.split_once('/').map(|(_, p)| p).unwrap_or(path).into(),
                root_id: filter.into(),
                vm_id: self.sha256.clone(),
                url: self.serve_url.clone(),
                fetch_cluster: self.fetch_cluster.name.clone(),
                sha256: self.sha256.clone(),
                configuration: config,
                fail_open: false,
                host_env_keys: vec![],
            }),
            BuiltinRuntime::Dynamic => FilterIr::Dynamic(DynamicFilterIr {
                name: format!("envoy.filters.http.dynamic_modules/{path}"),
                module: DynamicModuleIr {
                    source: ModuleSourceIr::Remote {
                        url: self.serve_url.clone(),
                        fetch_cluster: self.fetch_cluster.name.clone(),
                        sha256: self.sha256.clone(),
                    },
                    // Local rate-limit buckets and the OIDC poller live as long as the process.
                    do_not_close: true,
                    load_globally: false,
                },
                filter_name: filter.into(),
                config,
            }),
        }
    }
}

/// Resolves built-in filter `name` through the same resolver as EEP modules: the wasm module
/// `name`, or the dynamic module when [`TranslateOptions::builtin_runtime`] says so. `Err` says
/// why it is not available (not configured, pending, failed).
pub(crate) fn builtin_module(
    opts: &TranslateOptions,
    wasm: &dyn WasmResolver,
    name: &str,
    needed: &mut BTreeSet<WasmSource>,
) -> Result<ReadyModule, String> {
    let (src, what) = match opts.builtin_runtime {
        BuiltinRuntime::Wasm => (
            opts.builtin_modules.get(name).ok_or_else(|| {
                format!("the built-in {name} filter module is not configured in this controller")
            })?,
            format!("the built-in {name} module"),
        ),
        BuiltinRuntime::Dynamic => (
            opts.builtin_dynamic_module.as_ref().ok_or_else(|| {
                format!("the built-in dynamic module (libportcullis.so, for {name}) is not configured in this controller")
            })?,
            format!("the built-in dynamic module (for {name})"),
        ),
    };
    needed.insert(src.clone());
    match wasm.resolve(src) {
        WasmResolution::Ready { sha256, serve_url } => {
            let fetch_cluster = super::policies::fetch_cluster(opts, &serve_url)?;
            Ok(ReadyModule {
                runtime: opts.builtin_runtime,
                sha256,
                serve_url,
                fetch_cluster,
            })
        }
        WasmResolution::Pending => Err(format!("{what} {} is not fetched yet", src.url)),
        WasmResolution::Failed { reason } => Err(format!("{what}: {reason}")),
    }
}

fn endpoint_cluster(name: String, host: &str, port: u16, tls: bool, http2: bool) -> ClusterIr {
    let ep = EndpointIr::Socket {
        address: host.to_string(),
        port,
    };
    // IP literals need no DNS.
    let kind = if host.parse::<std::net::IpAddr>().is_ok() {
        ClusterKind::Static(vec![ep])
    } else {
        ClusterKind::StrictDns(vec![ep])
    };
    ClusterIr {
        name,
        kind,
        tls_sni: tls.then(|| host.to_string()),
        tls_client: None,
        tls_verify: None,
        http2,
    }
}

/// `host` and port of an http(s) URL, and whether it is https.
pub(crate) fn url_parts(u: &str) -> Result<(String, u16, bool), String> {
    let p = url::Url::parse(u).map_err(|e| format!("invalid URL {u}: {e}"))?;
    let tls = match p.scheme() {
        "http" => false,
        "https" => true,
        s => return Err(format!("URL {u}: scheme {s} is not http or https")),
    };
    let host = p
        .host_str()
        .ok_or_else(|| format!("URL {u} has no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = p
        .port_or_known_default()
        .ok_or_else(|| format!("URL {u} has no port"))?;
    Ok((host, port, tls))
}

/// The cluster named `name` reaching the issuer's host and port. Issuers are tenant-written: the
/// host must pass `egress`. For https: TLS with SNI, and the certificate must chain to `ca`
/// (default: the operator's `--issuer-ca-bundle`) with a SAN naming the host. Without that,
/// anyone on the path could serve discovery and JWKS and read the client secret.
pub(crate) fn tenant_issuer_cluster(
    egress: &EgressPolicy,
    name: &str,
    issuer: &str,
    ca: Option<&TrustedCa>,
) -> Result<ClusterIr, String> {
    let (host, port, tls) = url_parts(issuer)?;
    egress.check_host(&host).map_err(|e| e.to_string())?;
    let mut c = endpoint_cluster(name.to_string(), &host, port, tls, false);
    if tls {
        c.tls_verify = Some(ca.cloned().unwrap_or_else(|| egress.system_trust()));
    }
    Ok(c)
}

/// [`grpc_cluster`] for a service address a tenant wrote: its host must pass `egress`.
pub(crate) fn tenant_grpc_cluster(
    egress: &EgressPolicy,
    name: &str,
    address: &str,
) -> Result<ClusterIr, String> {
    let (host, _) = host_port(address)?;
    egress.check_host(&host).map_err(|e| e.to_string())?;
    grpc_cluster(name, address)
}

/// Parses `host:port` (IPv6 as `[addr]:port`).
pub(crate) fn host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    let host = host.trim_matches(['[', ']']);
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: invalid port {port:?}"))?;
    if host.is_empty() || port == 0 {
        return Err(format!("{s:?} is not host:port"));
    }
    Ok((host.to_string(), port))
}

/// An HTTP/2 (gRPC) cluster named `name` for the service at `host:port`.
pub(crate) fn grpc_cluster(name: &str, address: &str) -> Result<ClusterIr, String> {
    let (host, port) = host_port(address)?;
    Ok(endpoint_cluster(name.to_string(), &host, port, false, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_from_urls_and_addresses() {
        let any = EgressPolicy::permissive();
        let c = tenant_issuer_cluster(
            &any,
            "oidc/iam:443",
            "https://iam.example.com/realms/x",
            None,
        )
        .unwrap();
        assert_eq!(c.tls_sni.as_deref(), Some("iam.example.com"));
        assert_eq!(
            c.tls_verify,
            Some(TrustedCa::File(crate::egress::DEFAULT_CA_BUNDLE.into())),
            "an https issuer is verified against the platform bundle by default"
        );
        assert!(matches!(c.kind, ClusterKind::StrictDns(_)));
        let c = tenant_issuer_cluster(&any, "x", "http://127.0.0.1:8080/", None).unwrap();
        assert!(matches!(c.kind, ClusterKind::Static(_)) && c.tls_sni.is_none());
        assert!(c.tls_verify.is_none());
        let g = grpc_cluster("rl", "[::1]:8081").unwrap();
        assert!(g.http2 && matches!(g.kind, ClusterKind::Static(_)));
        assert!(host_port("nope").is_err());
        assert!(host_port("h:0").is_err());
        assert!(tenant_issuer_cluster(&any, "x", "ftp://h/", None).is_err());
        assert!(
            tenant_issuer_cluster(&EgressPolicy::default(), "x", "http://127.0.0.1/", None)
                .is_err()
        );
    }
}
