//! Gateways and their listeners: the rules of `validate/` applied per listener and Gateway,
//! and the Gateway statuses.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::validate::addresses::{self, AddressError};
use super::validate::certificates as certs;
use super::validate::listeners as vl;
use super::{unsupported_condition, GatewayMap};
use crate::ir::{CertificateIr, Protocol};
use crate::resources::{AllowedRoutes, GatewaySpec, Listener, Object, Resources, GATEWAY_GROUP};
use crate::status::{conditions_json, Condition, ObjectRef, ResourceStatus};

#[derive(PartialEq)]
pub struct ListenerState {
    pub name: String,
    pub port: u16,
    pub protocol: Option<Protocol>,
    pub hostname: Option<String>,
    pub allowed: AllowedRoutes,
    /// HTTPRoute is among the allowed kinds.
    pub allows_http_route: bool,
    pub supported_kinds: Vec<(String, String)>,
    pub certificates: Vec<CertificateIr>,
    /// DNS names of the certificates (the overlapping-TLS check).
    pub cert_names: Vec<String>,
    /// `OverlappingTLSConfig=True`: ALPN offers http/1.1 only, against connection coalescing.
    pub http1_only: bool,
    /// `[Accepted, Programmed, ResolvedRefs, UnsupportedFields?, Conflicted, OverlappingTLSConfig?]`.
    pub conditions: Vec<Condition>,
    /// Accepted and programmable: routes may attach and it is put in xDS.
    pub ready: bool,
    pub attached_routes: u32,
}

#[derive(PartialEq)]
pub struct GatewayState {
    pub obj: std::sync::Arc<Object<GatewaySpec>>,
    pub listeners: Vec<ListenerState>,
    /// `spec.addresses` entries this controller refuses.
    pub address_errors: Vec<AddressError>,
}

impl GatewayState {
    /// False when an address makes the whole Gateway not accepted (nothing is programmed).
    pub fn accepted(&self) -> bool {
        !self
            .address_errors
            .iter()
            .any(|e| e.condition().0 == "Accepted")
    }
}

/// A failed condition: `(reason, message)`.
type Failure = (String, String);

fn listener(
    res: &Resources,
    gw_ns: &str,
    l: &Listener,
    conflict: Option<vl::Conflict>,
    gateway_accepted: bool,
) -> ListenerState {
    let protocol = match l.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        _ => None,
    };
    let allowed = l.allowed_routes.clone().unwrap_or_default();
    // A protocol this controller does not serve supports no route kind (spec
    // ListenerStatus.supportedKinds); its Accepted=False/UnsupportedProtocol says why.
    let kinds = match protocol {
        Some(_) => vl::route_kinds(&allowed),
        None => vl::RouteKinds::default(),
    };
    // Accepted: the first failure of protocol, conflict, tls block, namespaces.
    let mut accepted: Option<Failure> = None;
    let mut programmed_reason = "Invalid";
    let fail = |slot: &mut Option<Failure>, reason: &str, msg: String| {
        if slot.is_none() {
            *slot = Some((reason.to_string(), msg));
        }
    };
    if protocol.is_none() {
        fail(
            &mut accepted,
            "UnsupportedProtocol",
            format!(
                "protocol {} is not supported; use HTTP or HTTPS",
                l.protocol
            ),
        );
    }
    if let Some(c) = &conflict {
        fail(&mut accepted, c.reason(), c.to_string());
    }
    let mut resolved: Option<Failure> = None;
    let mut unsupported = None;
    let mut certificates = Vec::new();
    let mut cert_names = Vec::new();
    match vl::tls(&l.protocol, l.tls.as_ref()) {
        Ok(vl::TlsPlan::Terminate(tls)) => {
            let mut errs = Vec::new();
            for r in &tls.certificate_refs {
                match certs::load(res, gw_ns, r) {
                    Ok(c) => {
                        certificates.push(c.ir);
                        cert_names.extend(c.dns_names);
                    }
                    Err(e) => errs.push(e),
                }
            }
            if let Some(first) = errs.first() {
                let msg: Vec<_> = errs.iter().map(ToString::to_string).collect();
                resolved = Some((first.reason().to_string(), msg.join("; ")));
            }
            if !tls.options.is_empty() {
                unsupported = Some(Condition::new(
                    "UnsupportedFields",
                    true,
                    "UnsupportedField",
                    "ignored by this controller: tls.options",
                ));
            }
        }
        Ok(_) => {}
        Err(e) => {
            if accepted.is_none() {
                programmed_reason = e.programmed_reason();
            }
            fail(&mut accepted, e.accepted_reason(), e.to_string());
        }
    }
    if let Err(e) = vl::namespaces(&allowed) {
        fail(&mut accepted, "Invalid", e.to_string());
    }
    // Certificate errors are reported over route kind errors (Envoy Gateway sets them last).
    let bad_kinds = !kinds.errors.is_empty();
    if bad_kinds && resolved.is_none() {
        let msg: Vec<_> = kinds.errors.iter().map(ToString::to_string).collect();
        resolved = Some(("InvalidRouteKinds".into(), msg.join("; ")));
    }
    let has_certs = protocol != Some(Protocol::Https) || !certificates.is_empty();
    let ready = gateway_accepted && accepted.is_none() && !bad_kinds && has_certs;
    let programmed = if ready {
        Condition::new("Programmed", true, "Programmed", "Listener is programmed.")
    } else if !gateway_accepted {
        Condition::new(
            "Programmed",
            false,
            "Invalid",
            "The Gateway is not accepted (spec.addresses).",
        )
    } else if accepted.is_some() {
        Condition::new(
            "Programmed",
            false,
            programmed_reason,
            "Listener is not accepted.",
        )
    } else if bad_kinds {
        Condition::new(
            "Programmed",
            false,
            "Invalid",
            "Listener has route kinds this controller does not support; see ResolvedRefs.",
        )
    } else {
        Condition::new(
            "Programmed",
            false,
            "Invalid",
            "Listener has no valid certificate.",
        )
    };
    let mut conditions = vec![
        match accepted {
            None => Condition::new("Accepted", true, "Accepted", "Listener is accepted."),
            Some((reason, msg)) => Condition::new("Accepted", false, &reason, msg),
        },
        programmed,
        match resolved {
            None => Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "All references are resolved.",
            ),
            Some((reason, msg)) => Condition::new("ResolvedRefs", false, &reason, msg),
        },
    ];
    conditions.extend(unsupported);
    conditions.push(match &conflict {
        Some(c) => Condition::new("Conflicted", true, c.reason(), c.to_string()),
        None => Condition::new("Conflicted", false, "NoConflicts", "No conflicts."),
    });
    ListenerState {
        name: l.name.clone(),
        port: l.port,
        protocol,
        hostname: l.hostname.clone(),
        allowed,
        allows_http_route: !kinds.supported.is_empty(),
        supported_kinds: kinds.supported,
        certificates,
        cert_names,
        http1_only: false,
        conditions,
        ready,
        attached_routes: 0,
    }
}

pub fn build(res: &Resources, our_classes: &BTreeSet<String>) -> GatewayMap {
    let mut out = BTreeMap::new();
    for (key, gw) in &res.gateways {
        if !our_classes.contains(&gw.spec.gateway_class_name) {
            continue;
        }
        let ns = gw.namespace().to_string();
        let address_errors = addresses::check(&gw.spec.addresses);
        let gateway_accepted = !address_errors.iter().any(|e| e.condition().0 == "Accepted");
        let views: Vec<vl::PortListener<'_>> = gw
            .spec
            .listeners
            .iter()
            .map(|l| vl::PortListener {
                name: &l.name,
                port: l.port,
                protocol: &l.protocol,
                hostname: l.hostname.as_deref(),
            })
            .collect();
        let mut listeners: Vec<ListenerState> = gw
            .spec
            .listeners
            .iter()
            .zip(vl::conflicts(&views))
            .map(|(l, c)| listener(res, &ns, l, c, gateway_accepted))
            .collect();

        // Overlapping TLS configuration between programmed HTTPS listeners of a port.
        let tls_idx: Vec<usize> = (0..listeners.len())
            .filter(|&i| listeners[i].ready && listeners[i].protocol == Some(Protocol::Https))
            .collect();
        let tls_views: Vec<vl::TlsListener<'_>> = tls_idx
            .iter()
            .map(|&i| vl::TlsListener {
                name: &listeners[i].name,
                port: listeners[i].port,
                hostname: listeners[i].hostname.as_deref(),
                cert_names: listeners[i].cert_names.iter().map(String::as_str).collect(),
            })
            .collect();
        let overlaps = vl::overlapping_tls(&tls_views);
        for (&i, o) in tls_idx.iter().zip(overlaps) {
            if let Some(o) = o {
                let l = &mut listeners[i];
                l.conditions.push(Condition::new(
                    "OverlappingTLSConfig",
                    true,
                    o.reason(),
                    o.to_string(),
                ));
                l.http1_only = true;
            }
        }
        out.insert(
            key.clone(),
            GatewayState {
                obj: gw.clone(),
                listeners,
                address_errors,
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
        // A listener that is accepted but cannot be programmed (refused route kinds, no valid
        // certificate) is as invalid for the Gateway as one that is not accepted.
        let all_valid = gw
            .listeners
            .iter()
            .all(|l| l.conditions[0].status && l.ready);
        let any_ready = gw.listeners.iter().any(|l| l.ready);
        let address_msgs = |kind: &str, reason: &str| -> Option<String> {
            let m: Vec<String> = gw
                .address_errors
                .iter()
                .filter(|e| e.condition() == (kind, reason))
                .map(ToString::to_string)
                .collect();
            (!m.is_empty()).then(|| m.join("; "))
        };
        // Spec (Listener, "Handling indistinct Listeners"): with no distinct listener left the
        // Gateway "must be rejected from processing as a whole".
        let all_conflicted = !gw.listeners.is_empty()
            && gw.listeners.iter().all(|l| {
                l.conditions
                    .iter()
                    .any(|c| c.type_ == "Conflicted" && c.status)
            });
        let accepted = if let Some(m) = address_msgs("Accepted", "UnsupportedAddress") {
            Condition::new("Accepted", false, "UnsupportedAddress", m)
        } else if all_conflicted {
            Condition::new(
                "Accepted",
                false,
                "ListenersNotValid",
                "Every listener is conflicted; no distinct listener is left to accept.",
            )
        } else if all_valid || !gw.accepted() {
            Condition::new("Accepted", true, "Accepted", "Gateway is accepted.")
        } else {
            Condition::new(
                "Accepted",
                true,
                "ListenersNotValid",
                "Some listeners are invalid; see listener conditions.",
            )
        };
        let programmed = if !gw.accepted() {
            Condition::new(
                "Programmed",
                false,
                "Invalid",
                "The Gateway is not accepted; nothing is programmed.",
            )
        } else if let Some(m) = address_msgs("Programmed", "AddressNotUsable") {
            Condition::new("Programmed", false, "AddressNotUsable", m)
        } else if let Some(m) = address_msgs("Programmed", "AddressNotAssigned") {
            Condition::new("Programmed", false, "AddressNotAssigned", m)
        } else if any_ready {
            Condition::new("Programmed", true, "Programmed", "Gateway is programmed.")
        } else {
            Condition::new(
                "Programmed",
                false,
                "Invalid",
                "No listener of this Gateway could be programmed.",
            )
        };
        let mut conds = vec![accepted, programmed];
        // Valid IPAddress requests are read, never assigned.
        let mut unsupported = gw.obj.unsupported.clone();
        if gw.obj.spec.addresses.len() > gw.address_errors.len() {
            unsupported.push("spec.addresses".into());
            unsupported.sort();
        }
        conds.extend(unsupported_condition(&unsupported));
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
            metadata: ObjectRef {
                namespace: Some(ns.clone()),
                name: name.clone(),
            },
            status:
                json!({ "conditions": conditions_json(&conds, generation), "listeners": listeners })
                    .into(),
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
