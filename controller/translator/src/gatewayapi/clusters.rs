//! Cluster constructors for what policies and built-in modules call (module fetch, issuer,
//! gRPC services), cluster names, and the one rule for sharing them.
//!
//! A cluster a policy causes is named inside that policy (`eep/<ns>/<policy>/<name>`,
//! `sp/<ns>/<policy>/oidc`), so no tenant can write a name that lands on another tenant's
//! cluster. Names the controller derives from its own inputs (backends, fetch clusters, the
//! operator's rate-limit service) may be reached from several routes and policies; they are
//! shared only when the whole definition is identical. [`Claims`] enforces that: the first
//! claimant keeps the name, and a later one with a different definition is refused.

use std::collections::BTreeMap;

use crate::egress::EgressPolicy;
use crate::ir::{ClusterIr, ClusterKind, EndpointIr, TrustedCa};
use crate::TranslateOptions;

/// Name of a cluster that EnvoyExtensionPolicy `ns/policy` asked for as `local` in its config.
/// Namespace and policy names cannot contain `/`, so the prefix is unambiguous.
pub(crate) fn extension_policy_cluster(ns: &str, policy: &str, local: &str) -> String {
    format!("eep/{ns}/{policy}/{local}")
}

/// Name of the cluster that reaches SecurityPolicy `ns/policy`'s OIDC issuer.
pub(crate) fn security_policy_issuer_cluster(ns: &str, policy: &str) -> String {
    format!("sp/{ns}/{policy}/oidc")
}

/// Adds `clusters` to a Gateway's cluster map. A name already present keeps its first
/// definition: [`Claims`] has already refused any policy that would define it differently.
pub(crate) fn add_all<'a>(
    into: &mut BTreeMap<String, ClusterIr>,
    clusters: impl IntoIterator<Item = &'a ClusterIr>,
) {
    for c in clusters {
        into.entry(c.name.clone()).or_insert_with(|| c.clone());
    }
}

/// Who defined each cluster name first, across every route and policy of a translation.
#[derive(Default)]
pub(crate) struct Claims {
    by_name: BTreeMap<String, (ClusterIr, String)>,
}

impl Claims {
    /// Records the clusters of `owner` (e.g. `HTTPRoute ns/name`) when none of them conflicts
    /// with an earlier claim or with each other. All or nothing: on conflict nothing is
    /// recorded and each conflict is described.
    pub(crate) fn claim<'a>(
        &mut self,
        owner: &str,
        clusters: impl IntoIterator<Item = &'a ClusterIr>,
    ) -> Result<(), Vec<String>> {
        let mut mine: BTreeMap<&str, &ClusterIr> = BTreeMap::new();
        let mut conflicts = Vec::new();
        for c in clusters {
            if let Some(earlier) = mine.get(c.name.as_str()) {
                if *earlier != c {
                    conflicts.push(format!(
                        "cluster {:?} is defined twice in this policy with different endpoints or settings",
                        c.name
                    ));
                }
                continue;
            }
            if let Some((theirs, by)) = self.by_name.get(&c.name) {
                if theirs != c && by != owner {
                    conflicts.push(format!(
                        "cluster {:?} is already defined differently by {by}; a cluster name is shared only when its whole definition is identical",
                        c.name
                    ));
                }
            }
            mine.insert(&c.name, c);
        }
        conflicts.sort();
        conflicts.dedup();
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        for (name, c) in mine {
            self.by_name
                .entry(name.to_string())
                .or_insert_with(|| (c.clone(), owner.to_string()));
        }
        Ok(())
    }
}

/// The `Accepted=False` condition of a policy refused for cluster conflicts.
pub(crate) fn conflict_condition(conflicts: &[String]) -> Option<crate::status::Condition> {
    (!conflicts.is_empty()).then(|| {
        crate::status::Condition::new(
            "Accepted",
            false,
            "Conflicted",
            format!(
                "{} (the policy is not applied; targeted routes answer 500)",
                conflicts.join("; ")
            ),
        )
    })
}

/// Cluster through which Envoy fetches a module from `serve_url`: for https, TLS with the host
/// as SNI, and mutual TLS when [`TranslateOptions::wasm_fetch_tls`] is set.
pub fn fetch_cluster(opts: &TranslateOptions, serve_url: &str) -> Result<ClusterIr, String> {
    let (host, port, https) = url_parts(serve_url).map_err(|e| format!("wasm module: {e}"))?;
    let tls = https.then(|| host.clone());
    Ok(ClusterIr {
        name: format!("{}/{host}:{port}", opts.wasm_serve_cluster),
        kind: ClusterKind::StrictDns(vec![EndpointIr::Socket {
            address: host,
            port,
        }]),
        tls_client: tls.is_some().then(|| opts.wasm_fetch_tls.clone()).flatten(),
        tls_verify: None,
        tls_sni: tls,
        http2: false,
    })
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

    fn cluster(name: &str, host: &str) -> ClusterIr {
        ClusterIr {
            name: name.into(),
            kind: ClusterKind::StrictDns(vec![EndpointIr::Socket {
                address: host.into(),
                port: 443,
            }]),
            tls_sni: Some(host.into()),
            tls_client: None,
            tls_verify: None,
            http2: false,
        }
    }

    #[test]
    fn identical_definitions_share_a_name_and_different_ones_are_refused() {
        let mut claims = Claims::default();
        let fetch = cluster("portcullis-wasm/ctl:19102", "ctl");
        assert!(claims
            .claim("SecurityPolicy a/login", [&fetch, &cluster("x", "idp.a")])
            .is_ok());
        // The same fetch cluster again: shared.
        assert!(claims.claim("EnvoyExtensionPolicy b/ext", [&fetch]).is_ok());
        // A different definition of "x": refused, naming the first owner; nothing recorded.
        let evil = cluster("x", "evil.b");
        let own = cluster("eep/b/p/own", "idp.b");
        let err = claims
            .claim("EnvoyExtensionPolicy b/p", [&own, &evil])
            .unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].contains("\"x\"") && err[0].contains("SecurityPolicy a/login"));
        assert!(!claims.by_name.contains_key("eep/b/p/own"));
        assert_eq!(claims.by_name["x"].0, cluster("x", "idp.a"));
    }

    #[test]
    fn one_owner_cannot_define_a_name_twice() {
        let mut claims = Claims::default();
        let err = claims
            .claim(
                "EnvoyExtensionPolicy b/p",
                [
                    &cluster("eep/b/p/idp", "one"),
                    &cluster("eep/b/p/idp", "two"),
                ],
            )
            .unwrap_err();
        assert!(err[0].contains("defined twice"));
        // Repeating an identical definition is fine.
        let c = cluster("eep/b/p/idp", "one");
        assert!(claims.claim("EnvoyExtensionPolicy b/p", [&c, &c]).is_ok());
    }

    #[test]
    fn scoped_names_cannot_be_forged_across_namespaces() {
        // `local` may contain '/', but ns and policy cannot: the first two segments decide.
        assert_eq!(extension_policy_cluster("a", "p", "x"), "eep/a/p/x");
        assert_ne!(
            extension_policy_cluster("b", "q", "a/p/x"),
            extension_policy_cluster("a", "p", "x")
        );
        assert_eq!(
            security_policy_issuer_cluster("a", "login"),
            "sp/a/login/oidc"
        );
    }

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

#[cfg(test)]
mod fetch_tests {
    use super::*;
    use crate::ir::ClientTlsFiles;
    use crate::xds::builder::build_cluster;
    use crate::xds::render::resource_json;
    use crate::xds::snapshot::CLUSTER_TYPE;
    use prost::Message;
    use serde_json::json;

    fn mtls_opts() -> TranslateOptions {
        TranslateOptions {
            wasm_fetch_tls: Some(ClientTlsFiles {
                cert_chain: "/etc/envoy/certs/tls.crt".into(),
                private_key: "/etc/envoy/certs/tls.key".into(),
                trusted_ca: "/etc/envoy/certs/ca.crt".into(),
            }),
            ..Default::default()
        }
    }

    fn rendered(c: &ClusterIr) -> serde_json::Value {
        let (cl, _) = build_cluster(c);
        let any = prost_types::Any {
            type_url: CLUSTER_TYPE.into(),
            value: cl.encode_to_vec(),
        };
        resource_json(CLUSTER_TYPE, &c.name, &any).expect("cluster renders")
    }

    #[test]
    fn https_fetch_cluster_uses_mutual_tls() {
        let c = fetch_cluster(
            &mtls_opts(),
            "https://portcullis.portcullis-system.svc:19102/wasm/x.wasm",
        )
        .unwrap();
        assert_eq!(
            c.name,
            "portcullis-wasm/portcullis.portcullis-system.svc:19102"
        );
        assert_eq!(
            rendered(&c)["transport_socket"],
            json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "portcullis.portcullis-system.svc",
                    "common_tls_context": {
                        "tls_certificates": [{
                            "certificate_chain": {"filename": "/etc/envoy/certs/tls.crt"},
                            "private_key": {"filename": "/etc/envoy/certs/tls.key"},
                        }],
                        "validation_context": {
                            "trusted_ca": {"filename": "/etc/envoy/certs/ca.crt"},
                            "match_typed_subject_alt_names": [{
                                "san_type": "DNS",
                                "matcher": {"exact": "portcullis.portcullis-system.svc"},
                            }],
                        },
                    },
                },
            })
        );
        // An IP literal host is matched as an IP SAN.
        let c = fetch_cluster(&mtls_opts(), "https://10.0.0.7:19102/wasm/x.wasm").unwrap();
        let v = rendered(&c);
        let san = &v["transport_socket"]["typed_config"]["common_tls_context"]
            ["validation_context"]["match_typed_subject_alt_names"];
        assert_eq!(
            san,
            &json!([{"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.7"}}])
        );
    }

    #[test]
    fn fetch_tls_option_leaves_other_clusters_alone() {
        // http serve URL: no transport socket even with the option set.
        let c = fetch_cluster(&mtls_opts(), "http://127.0.0.1:19102/wasm/x.wasm").unwrap();
        assert_eq!(c.tls_client, None);
        assert!(rendered(&c).get("transport_socket").is_none());
        // https without the option: SNI only, as before.
        let c = fetch_cluster(
            &TranslateOptions::default(),
            "https://portcullis.svc/wasm/x.wasm",
        )
        .unwrap();
        assert_eq!(
            rendered(&c)["transport_socket"]["typed_config"],
            json!({
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "portcullis.svc",
            })
        );
        // Issuer clusters never get the wasm client certificate.
        let c = tenant_issuer_cluster(
            &crate::egress::EgressPolicy::permissive(),
            "oidc/x",
            "https://iam.example.com/",
            None,
        )
        .unwrap();
        assert_eq!(c.tls_client, None);
    }
}
