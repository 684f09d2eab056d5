//! Gateways and their listeners: validation, conflicts, certificates, listener statuses.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::{reference_granted, unsupported_condition, GatewayMap};
use crate::ir::{CertificateIr, Protocol};
use crate::resources::{AllowedRoutes, GatewaySpec, Object, Resources, GATEWAY_GROUP};
use crate::status::{conditions_json, Condition, ObjectRef, ResourceStatus};

pub struct ListenerState {
    pub name: String,
    pub port: u16,
    pub protocol: Option<Protocol>,
    pub raw_protocol: String,
    pub hostname: Option<String>,
    pub allowed: AllowedRoutes,
    /// HTTPRoute is among the allowed kinds.
    pub allows_http_route: bool,
    pub supported_kinds: Vec<(String, String)>,
    pub certificates: Vec<CertificateIr>,
    pub conditions: Vec<Condition>,
    /// Accepted and programmable: routes may attach and it is put in xDS.
    pub ready: bool,
    pub attached_routes: u32,
}

pub struct GatewayState {
    pub obj: Object<GatewaySpec>,
    pub listeners: Vec<ListenerState>,
}

fn secret_field(s: &crate::resources::SecretBody, key: &str) -> Result<String, String> {
    use crate::resources::SecretKeyError;
    s.text(key).map_err(|e| match e {
        SecretKeyError::Missing => format!("has no {key}"),
        SecretKeyError::NotBase64(e) => format!("{key} is not valid base64: {e}"),
        SecretKeyError::NotText => format!("{key} is not PEM text"),
    })
}

fn load_certificate(
    res: &Resources,
    gw_ns: &str,
    r: &crate::resources::ObjectRef,
) -> Result<CertificateIr, (String, String)> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Secret");
    if !group.is_empty() || kind != "Secret" {
        return Err((
            "InvalidCertificateRef".into(),
            format!(
                "certificateRef {group}/{kind} {} is not a core Secret",
                r.name
            ),
        ));
    }
    let ns = r.namespace.as_deref().unwrap_or(gw_ns);
    if !reference_granted(
        res,
        (GATEWAY_GROUP, "Gateway", gw_ns),
        ("", "Secret", ns, &r.name),
    ) {
        return Err((
            "RefNotPermitted".into(),
            format!(
                "Secret {ns}/{} is in another namespace and no ReferenceGrant allows it",
                r.name
            ),
        ));
    }
    let secret = res
        .secrets
        .get(&(ns.to_string(), r.name.clone()))
        .ok_or_else(|| {
            (
                "InvalidCertificateRef".to_string(),
                format!("Secret {ns}/{} not found", r.name),
            )
        })?;
    let invalid = |m: String| {
        (
            "InvalidCertificateRef".to_string(),
            format!("Secret {ns}/{} {m}", r.name),
        )
    };
    if let Some(t) = &secret.spec.type_ {
        if t != "kubernetes.io/tls" {
            return Err(invalid(format!("has type {t}, want kubernetes.io/tls")));
        }
    }
    let cert = secret_field(&secret.spec, "tls.crt").map_err(invalid)?;
    let key = secret_field(&secret.spec, "tls.key").map_err(invalid)?;
    if !cert.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid("tls.crt holds no PEM certificate".into()));
    }
    if !key.contains("PRIVATE KEY-----") {
        return Err(invalid("tls.key holds no PEM private key".into()));
    }
    Ok(CertificateIr {
        name: format!("{ns}/{}", r.name),
        cert_pem: cert,
        key_pem: key,
    })
}

pub fn build(res: &Resources, our_classes: &BTreeSet<String>) -> GatewayMap {
    let mut out = BTreeMap::new();
    for (key, gw) in &res.gateways {
        if !our_classes.contains(&gw.spec.gateway_class_name) {
            continue;
        }
        let ns = gw.namespace().to_string();
        let mut listeners: Vec<ListenerState> = Vec::new();
        for l in &gw.spec.listeners {
            let protocol = match l.protocol.as_str() {
                "HTTP" => Some(Protocol::Http),
                "HTTPS" => Some(Protocol::Https),
                _ => None,
            };
            let allowed = l.allowed_routes.clone().unwrap_or_default();
            let mut conds = Vec::new();
            let mut resolved = Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "All references are resolved.",
            );
            let mut supported_kinds = Vec::new();
            let mut bad_kinds = Vec::new();
            if allowed.kinds.is_empty() {
                supported_kinds.push((GATEWAY_GROUP.to_string(), "HTTPRoute".to_string()));
            }
            for k in &allowed.kinds {
                let g = k.group.clone().unwrap_or_else(|| GATEWAY_GROUP.into());
                if g == GATEWAY_GROUP && k.kind == "HTTPRoute" {
                    supported_kinds.push((g, k.kind.clone()));
                } else {
                    bad_kinds.push(format!("{g}/{}", k.kind));
                }
            }
            if !bad_kinds.is_empty() {
                resolved = Condition::new(
                    "ResolvedRefs",
                    false,
                    "InvalidRouteKinds",
                    format!("unsupported route kinds: {}", bad_kinds.join(", ")),
                );
            }
            let mut accepted =
                Condition::new("Accepted", true, "Accepted", "Listener is accepted.");
            let mut certificates = Vec::new();
            match protocol {
                None => {
                    accepted = Condition::new(
                        "Accepted",
                        false,
                        "UnsupportedProtocol",
                        format!(
                            "protocol {} is not supported; use HTTP or HTTPS",
                            l.protocol
                        ),
                    );
                }
                Some(Protocol::Https) => {
                    let tls = l.tls.clone().unwrap_or_default();
                    if tls.mode.as_deref().unwrap_or("Terminate") != "Terminate" {
                        accepted = Condition::new(
                            "Accepted",
                            false,
                            "UnsupportedValue",
                            "HTTPS listeners only support tls.mode Terminate",
                        );
                    } else if tls.certificate_refs.is_empty() {
                        resolved = Condition::new(
                            "ResolvedRefs",
                            false,
                            "InvalidCertificateRef",
                            "HTTPS listener has no tls.certificateRefs",
                        );
                    }
                    let mut errs = Vec::new();
                    for r in &tls.certificate_refs {
                        match load_certificate(res, &ns, r) {
                            Ok(c) => certificates.push(c),
                            Err(e) => errs.push(e),
                        }
                    }
                    if let Some((reason, _)) = errs.first() {
                        let msg: Vec<_> = errs.iter().map(|e| e.1.clone()).collect();
                        resolved = Condition::new("ResolvedRefs", false, reason, msg.join("; "));
                    }
                    if !tls.options.is_empty() {
                        conds.push(Condition::new(
                            "UnsupportedFields",
                            true,
                            "UnsupportedField",
                            "ignored by this controller: tls.options",
                        ));
                    }
                }
                Some(Protocol::Http) => {
                    if l.tls.is_some() {
                        accepted = Condition::new(
                            "Accepted",
                            false,
                            "UnsupportedValue",
                            "HTTP listeners must not set tls",
                        );
                    }
                }
            }
            conds.insert(0, accepted);
            conds.insert(1, resolved);
            listeners.push(ListenerState {
                name: l.name.clone(),
                port: l.port,
                protocol,
                raw_protocol: l.protocol.clone(),
                hostname: l.hostname.clone(),
                allowed,
                allows_http_route: !supported_kinds.is_empty(),
                supported_kinds,
                certificates,
                conditions: conds,
                ready: false,
                attached_routes: 0,
            });
        }

        // Conflicts: the first listener on a port fixes its protocol; later ones with another
        // protocol, or with a hostname already taken on that port, are conflicted.
        let mut port_protocol: BTreeMap<u16, String> = BTreeMap::new();
        let mut port_hosts: BTreeSet<(u16, Option<String>)> = BTreeSet::new();
        for l in listeners.iter_mut() {
            let first = port_protocol
                .entry(l.port)
                .or_insert_with(|| l.raw_protocol.clone())
                .clone();
            let conflict = if first != l.raw_protocol {
                Some((
                    "ProtocolConflict",
                    format!("port {} is already used with protocol {first}", l.port),
                ))
            } else if !port_hosts.insert((l.port, l.hostname.clone())) {
                Some((
                    "HostnameConflict",
                    format!("another listener on port {} has the same hostname", l.port),
                ))
            } else {
                None
            };
            match conflict {
                Some((reason, msg)) => {
                    l.conditions
                        .push(Condition::new("Conflicted", true, reason, msg.clone()));
                    l.conditions[0] = Condition::new("Accepted", false, reason, msg);
                }
                None => l.conditions.push(Condition::new(
                    "Conflicted",
                    false,
                    "NoConflicts",
                    "No conflicts.",
                )),
            }
            let accepted = l.conditions[0].status;
            let has_certs = l.protocol != Some(Protocol::Https) || !l.certificates.is_empty();
            l.ready = accepted && has_certs;
            let programmed = if l.ready {
                Condition::new("Programmed", true, "Programmed", "Listener is programmed.")
            } else if !accepted {
                Condition::new("Programmed", false, "Invalid", "Listener is not accepted.")
            } else {
                Condition::new(
                    "Programmed",
                    false,
                    "Invalid",
                    "Listener has no valid certificate.",
                )
            };
            l.conditions.insert(1, programmed);
        }
        out.insert(
            key.clone(),
            GatewayState {
                obj: gw.clone(),
                listeners,
            },
        );
    }
    out
}

pub fn statuses(res: &Resources, gateways: &GatewayMap) -> Vec<ResourceStatus> {
    let _ = res;
    let mut out = Vec::new();
    for ((ns, name), gw) in gateways {
        let generation = gw.obj.meta.generation;
        let all_accepted = gw.listeners.iter().all(|l| l.conditions[0].status);
        let any_ready = gw.listeners.iter().any(|l| l.ready);
        let mut conds = vec![
            if all_accepted {
                Condition::new("Accepted", true, "Accepted", "Gateway is accepted.")
            } else {
                Condition::new(
                    "Accepted",
                    true,
                    "ListenersNotValid",
                    "Some listeners are invalid; see listener conditions.",
                )
            },
            if any_ready {
                Condition::new("Programmed", true, "Programmed", "Gateway is programmed.")
            } else {
                Condition::new(
                    "Programmed",
                    false,
                    "Invalid",
                    "No listener of this Gateway could be programmed.",
                )
            },
        ];
        conds.extend(unsupported_condition(&gw.obj.unsupported));
        let listeners: Vec<_> = gw
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "name": l.name,
                    "supportedKinds": l.supported_kinds.iter().map(|(g, k)| json!({"group": g, "kind": k})).collect::<Vec<_>>(),
                    "attachedRoutes": l.attached_routes,
                    "conditions": conditions_json(&l.conditions, generation),
                })
            })
            .collect();
        out.push(ResourceStatus {
            api_version: format!("{GATEWAY_GROUP}/v1"),
            kind: "Gateway".into(),
            metadata: ObjectRef { namespace: Some(ns.clone()), name: name.clone() },
            status: json!({ "conditions": conditions_json(&conds, generation), "listeners": listeners }),
        });
    }
    out
}

/// Which namespace selection lets `route_ns` attach to a listener of a Gateway in `gw_ns`.
pub fn namespace_allowed(res: &Resources, l: &ListenerState, gw_ns: &str, route_ns: &str) -> bool {
    let ns = l.allowed.namespaces.clone().unwrap_or_default();
    match ns.from.as_deref().unwrap_or("Same") {
        "All" => true,
        "Selector" => ns
            .selector
            .as_ref()
            .is_some_and(|s| s.matches(&res.namespace_labels(route_ns))),
        _ => gw_ns == route_ns,
    }
}
