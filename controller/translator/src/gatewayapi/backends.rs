//! backendRefs -> clusters: Service + EndpointSlices, and Envoy Gateway `Backend`.

use std::collections::{BTreeMap, BTreeSet};

use super::reference_granted;
use super::validate::backend_refs as br;
use crate::egress::EgressPolicy;
use crate::ir::{ClusterIr, ClusterKind, EndpointIr};
use crate::resources::{EndpointSliceBody, NsName, Object, ObjectRef, Resources, GATEWAY_GROUP};

pub use super::validate::backend_refs::RefError;

/// EndpointSlices by `(namespace, kubernetes.io/service-name)`, built once per translation.
pub type SliceIndex<'a> = BTreeMap<NsName, Vec<&'a Object<EndpointSliceBody>>>;

pub fn slice_index(res: &Resources) -> SliceIndex<'_> {
    let mut idx: SliceIndex<'_> = BTreeMap::new();
    for slice in res.endpoint_slices.values() {
        if let Some(svc) = slice.meta.labels.get("kubernetes.io/service-name") {
            idx.entry((slice.namespace().to_string(), svc.clone()))
                .or_default()
                .push(slice);
        }
    }
    idx
}

/// The backend `r` names, referenced from an HTTPRoute in `route_ns`.
pub fn resolve(
    res: &Resources,
    egress: &EgressPolicy,
    slices: &SliceIndex<'_>,
    route_ns: &str,
    r: &ObjectRef,
) -> Result<ClusterIr, RefError> {
    resolve_from(
        res,
        egress,
        slices,
        (GATEWAY_GROUP, "HTTPRoute", route_ns),
        r,
    )
}

/// The backend `r` names, referenced from `from` (`(group, kind, namespace)`, the subject of a
/// ReferenceGrant), with the upstream TLS a BackendTLSPolicy or the Backend's `tls` asks for.
pub fn resolve_from(
    res: &Resources,
    egress: &EgressPolicy,
    slices: &SliceIndex<'_>,
    from: (&str, &str, &str),
    r: &ObjectRef,
) -> Result<ClusterIr, RefError> {
    let mut c = endpoints(res, egress, slices, from, r)?;
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    let ns = r.namespace.as_deref().unwrap_or(from.2);
    let port_name = (group.is_empty() && kind == "Service")
        .then(|| {
            res.services
                .get(&(ns.to_string(), r.name.clone()))
                .and_then(|s| s.spec.ports.iter().find(|p| Some(p.port) == r.port))
                .and_then(|p| p.name.as_deref())
        })
        .flatten();
    let target = super::backend_tls::Target {
        group,
        kind,
        namespace: ns,
        name: &r.name,
        port_name,
    };
    if let Some(tls) = super::backend_tls::for_backend(res, egress, &target)? {
        c.tls_sni = Some(tls.sni);
        c.tls_verify = Some(tls.ca);
    }
    Ok(c)
}

fn endpoints(
    res: &Resources,
    egress: &EgressPolicy,
    slices: &SliceIndex<'_>,
    from: (&str, &str, &str),
    r: &ObjectRef,
) -> Result<ClusterIr, RefError> {
    let route_ns = from.2;
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    let ns = r.namespace.as_deref().unwrap_or(route_ns);
    let key = (ns.to_string(), r.name.clone());
    // Envoy Gateway's order: group and kind, namespace, port, then the referent.
    let kind_ = br::kind(r, route_ns)?;
    let is_service = kind_ == br::BackendKind::Service;
    if !reference_granted(res, from, (group, kind, ns, &r.name)) {
        return Err(br::BackendRefError::RefNotPermitted {
            kind: kind.into(),
            ns: ns.into(),
            name: r.name.clone(),
        }
        .into());
    }
    if !is_service && !egress.enable_backend {
        return Err(br::BackendRefError::BackendDisabled {
            ns: ns.into(),
            name: r.name.clone(),
        }
        .into());
    }
    if is_service {
        if r.port.is_none() {
            return Err(br::BackendRefError::PortNotSpecified {
                ns: ns.into(),
                name: r.name.clone(),
            }
            .into());
        }
        let svc = res
            .services
            .get(&key)
            .ok_or_else(|| br::BackendRefError::ServiceNotFound {
                ns: ns.into(),
                name: r.name.clone(),
            })?;
        let sp = br::service_port(&svc.spec, ns, &r.name, r.port)?;
        let port = sp.port;
        let mut endpoints = BTreeSet::new();
        let mut any_slice = false;
        for slice in slices.get(&key).into_iter().flatten() {
            any_slice = true;
            let Some(target) = slice
                .spec
                .ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or(""))
                .and_then(|p| p.port)
            else {
                continue;
            };
            for ep in &slice.spec.endpoints {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &ep.addresses {
                    // A tenant can write EndpointSlices in its namespace: same rule as Backend.
                    egress.check_host(a).map_err(|e| {
                        (
                            "RefNotPermitted",
                            format!(
                                "Service {ns}/{} EndpointSlice {} address {e}",
                                r.name,
                                slice.name()
                            ),
                        )
                    })?;
                    endpoints.insert((a.clone(), target));
                }
            }
        }
        // Without EndpointSlices, fall back to a cluster IP if the manifest names one.
        if !any_slice {
            if let Some(ip) = svc
                .spec
                .cluster_ip
                .as_deref()
                .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            {
                egress.check_host(ip).map_err(|e| {
                    (
                        "RefNotPermitted",
                        format!("Service {ns}/{} clusterIP {e}", r.name),
                    )
                })?;
                endpoints.insert((ip.to_string(), port));
            }
        }
        return Ok(ClusterIr {
            name: format!("service/{ns}/{}/{port}", r.name),
            kind: ClusterKind::Eds(
                endpoints
                    .into_iter()
                    .map(|(address, port)| EndpointIr::Socket { address, port })
                    .collect(),
            ),
            tls_sni: None,
            tls_client: None,
            tls_verify: None,
            http2: false,
        });
    }
    let be = res.backends.get(&key).ok_or_else(|| {
        (
            "BackendNotFound",
            format!("Backend {ns}/{} not found", r.name),
        )
    })?;
    if be.spec.type_.as_deref().unwrap_or("Endpoints") != "Endpoints" {
        return Err((
            "BackendNotFound",
            format!(
                "Backend {ns}/{} type {:?} is not supported",
                r.name, be.spec.type_
            ),
        ));
    }
    let refused = |e: crate::egress::Refused| {
        (
            "RefNotPermitted",
            format!("Backend {ns}/{} endpoint {e}", r.name),
        )
    };
    let mut eps = Vec::new();
    let mut dns = false;
    for e in &be.spec.endpoints {
        if let Some(ip) = &e.ip {
            egress.check_host(&ip.address).map_err(refused)?;
            eps.push(EndpointIr::Socket {
                address: ip.address.clone(),
                port: ip.port,
            });
        } else if let Some(f) = &e.fqdn {
            egress.check_host(&f.address).map_err(refused)?;
            dns = true;
            eps.push(EndpointIr::Socket {
                address: f.address.clone(),
                port: f.port,
            });
        } else if let Some(u) = &e.unix {
            egress.check_unix(&u.path).map_err(refused)?;
            eps.push(EndpointIr::Pipe {
                path: u.path.clone(),
            });
        }
    }
    if eps.is_empty() {
        return Err((
            "BackendNotFound",
            format!("Backend {ns}/{} has no endpoints", r.name),
        ));
    }
    if dns && eps.iter().any(|e| matches!(e, EndpointIr::Pipe { .. })) {
        return Err((
            "BackendNotFound",
            format!("Backend {ns}/{} mixes fqdn and unix endpoints", r.name),
        ));
    }
    Ok(ClusterIr {
        name: format!("backend/{ns}/{}", r.name),
        kind: if dns {
            ClusterKind::StrictDns(eps)
        } else {
            ClusterKind::Eds(eps)
        },
        tls_sni: None,
        tls_client: None,
        tls_verify: None,
        http2: false,
    })
}
