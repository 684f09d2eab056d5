//! backendRefs, after Envoy Gateway's `validateBackendRef` (validate.go) and its order:
//! filters, group and kind, namespace (ReferenceGrant), port, then the referent (the Backend
//! kind being enabled, the Service and its port). A reference that resolves to a Service
//! without ready endpoints is not a ResolvedRefs failure: Envoy Gateway reports it as
//! `BackendsAvailable=False` / `EndpointsNotFound` and answers 503.

use crate::ir::{ClusterIr, ClusterKind};
use crate::resources::{HttpBackendRef, ObjectRef, ServicePort, ServiceSpec, EG_GROUP};

/// The multi-cluster services API group (`ServiceImport`).
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";

/// What a backendRef names, once its group and kind are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Service,
    Backend,
}

/// A backendRef that cannot be resolved. [`BackendRefError::reason`] is the route's
/// `ResolvedRefs=False` reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendRefError {
    #[error("backendRef filters are not supported by this controller (filter type {types}); the backend is not used")]
    Filters { types: String },
    #[error("backendRef kind {group}/{kind} is not supported; use Service or {EG_GROUP}/Backend")]
    Kind { group: String, kind: String },
    #[error("backendRef to {MCS_GROUP}/ServiceImport {ns}/{name}: multi-cluster services are not supported by this controller")]
    ServiceImport { ns: String, name: String },
    #[error("{kind} {ns}/{name} is in another namespace and no ReferenceGrant allows it")]
    RefNotPermitted {
        kind: String,
        ns: String,
        name: String,
    },
    #[error("Resource {ns}/{name} of type Backend cannot be used since the Backend kind is disabled (the controller runs without --enable-backend)")]
    BackendDisabled { ns: String, name: String },
    #[error("backendRef to Service {ns}/{name} needs a port")]
    PortNotSpecified { ns: String, name: String },
    #[error("Service {ns}/{name} not found")]
    ServiceNotFound { ns: String, name: String },
    #[error("TCP port {port} not found on Service {ns}/{name}")]
    PortNotFound { ns: String, name: String, port: u16 },
}

impl BackendRefError {
    /// The route `ResolvedRefs=False` reason: Gateway API's where it has one, Envoy Gateway's
    /// (`UnsupportedRefValue`, `PortNotSpecified`, `PortNotFound`, `UnsupportedValue`) else.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Filters { .. } => "UnsupportedRefValue",
            Self::Kind { .. } | Self::ServiceImport { .. } => "InvalidKind",
            Self::RefNotPermitted { .. } => "RefNotPermitted",
            Self::BackendDisabled { .. } => "UnsupportedValue",
            Self::PortNotSpecified { .. } => "PortNotSpecified",
            Self::ServiceNotFound { .. } => "BackendNotFound",
            Self::PortNotFound { .. } => "PortNotFound",
        }
    }
}

/// A failed reference: `(reason, message)` with the Gateway API's ResolvedRefs reasons.
pub type RefError = (&'static str, String);

impl From<BackendRefError> for RefError {
    fn from(e: BackendRefError) -> Self {
        (e.reason(), e.to_string())
    }
}

/// `backendRefs[].filters`: none is implemented here, so a backendRef with filters is not used
/// (its share of the traffic is answered 500, as for any invalid backendRef).
pub fn filters(b: &HttpBackendRef) -> Result<(), BackendRefError> {
    if b.filters.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = b.filters.iter().map(|f| f.type_.as_str()).collect();
    Err(BackendRefError::Filters {
        types: types.join(", "),
    })
}

/// Group and kind of `r`, referenced from namespace `from_ns`.
pub fn kind(r: &ObjectRef, from_ns: &str) -> Result<BackendKind, BackendRefError> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    match (group, kind) {
        ("", "Service") => Ok(BackendKind::Service),
        (EG_GROUP, "Backend") => Ok(BackendKind::Backend),
        (MCS_GROUP, "ServiceImport") => Err(BackendRefError::ServiceImport {
            ns: r.namespace.as_deref().unwrap_or(from_ns).into(),
            name: r.name.clone(),
        }),
        _ => Err(BackendRefError::Kind {
            group: group.into(),
            kind: kind.into(),
        }),
    }
}

/// The Service port `port` names (`validateBackendPort`, `validateBackendService`): it must be
/// given, and be a TCP port of the Service.
pub fn service_port<'a>(
    svc: &'a ServiceSpec,
    ns: &str,
    name: &str,
    port: Option<u16>,
) -> Result<&'a ServicePort, BackendRefError> {
    let port = port.ok_or_else(|| BackendRefError::PortNotSpecified {
        ns: ns.into(),
        name: name.into(),
    })?;
    svc.ports
        .iter()
        .find(|p| p.port == port && p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .ok_or_else(|| BackendRefError::PortNotFound {
            ns: ns.into(),
            name: name.into(),
            port,
        })
}

/// `Some(message)` when `c`, resolved from a Service reference, has no endpoint to send to.
pub fn no_ready_endpoints(r: &ObjectRef, from_ns: &str, c: &ClusterIr) -> Option<String> {
    let is_service = r.group.as_deref().unwrap_or("").is_empty()
        && r.kind.as_deref().unwrap_or("Service") == "Service";
    match &c.kind {
        ClusterKind::Eds(eps) if is_service && eps.is_empty() => Some(format!(
            "No ready endpoints for the related Service {}/{}.",
            r.namespace.as_deref().unwrap_or(from_ns),
            r.name
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::HttpRouteFilter;

    fn r(group: Option<&str>, kind: Option<&str>) -> ObjectRef {
        ObjectRef {
            group: group.map(str::to_string),
            kind: kind.map(str::to_string),
            name: "x".into(),
            namespace: None,
            port: Some(80),
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(&r(None, None), "ns"), Ok(BackendKind::Service));
        assert_eq!(
            kind(&r(Some(EG_GROUP), Some("Backend")), "ns"),
            Ok(BackendKind::Backend)
        );
        assert_eq!(
            kind(&r(Some(MCS_GROUP), Some("ServiceImport")), "ns").map_err(|e| e.reason()),
            Err("InvalidKind")
        );
        assert_eq!(
            kind(&r(Some("example.com"), Some("Bucket")), "ns").map_err(|e| e.reason()),
            Err("InvalidKind")
        );
    }

    #[test]
    fn ports() {
        let svc: ServiceSpec = serde_json::from_value(serde_json::json!({
            "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]
        }))
        .expect("service");
        assert!(service_port(&svc, "ns", "s", Some(80)).is_ok());
        let reason = |p| {
            service_port(&svc, "ns", "s", p)
                .map_err(|e| e.reason())
                .err()
        };
        assert_eq!(reason(None), Some("PortNotSpecified"));
        assert_eq!(reason(Some(81)), Some("PortNotFound"));
        assert_eq!(reason(Some(53)), Some("PortNotFound"));
    }

    #[test]
    fn filters_are_refused() {
        let mut b = HttpBackendRef::default();
        assert!(filters(&b).is_ok());
        b.filters.push(HttpRouteFilter {
            type_: "RequestHeaderModifier".into(),
            ..Default::default()
        });
        assert_eq!(
            filters(&b).map_err(|e| e.reason()),
            Err("UnsupportedRefValue")
        );
    }
}
