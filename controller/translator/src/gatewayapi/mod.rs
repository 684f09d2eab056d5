//! Gateway API + EnvoyExtensionPolicy -> IR, and every status. Pure.
//!
//! Order: GatewayClasses, then Gateways and their listeners, then backends (clusters), then
//! policies (they only need to know targets), then HTTPRoutes attach to listeners and pick up
//! the policy that applies to each rule.

mod backend_tls;
mod backends;
mod builtin;
mod clusters;
pub mod duration;
mod dynamic;
pub mod hostname;
mod listeners;
mod policies;
pub mod ratelimit;
mod routes;
pub mod security;
mod validate;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::ir::{GatewayIr, Ir};
use crate::resources::{NsName, Resources, GATEWAY_GROUP};
use crate::status::{Condition, ResourceStatus};
use crate::wasm::source::{WasmResolver, WasmSource};
use crate::TranslateOptions;

pub struct Translation {
    pub ir: Ir,
    pub statuses: Vec<ResourceStatus>,
    pub wasm_needed: Vec<WasmSource>,
}

/// Age order used for every "oldest wins" tie-break: creationTimestamp (RFC 3339 sorts
/// lexically; missing sorts last), then namespace/name.
/// `(creationTimestamp, namespace, name)`.
pub(crate) type AgeKey = (String, String, String);

pub(crate) fn age_key(meta: &crate::resources::ObjectMeta, ns: &str) -> AgeKey {
    (
        meta.creation_timestamp
            .clone()
            .unwrap_or_else(|| "~".into()),
        ns.to_string(),
        meta.name.clone(),
    )
}

/// Is `from` (group, kind, namespace) allowed to reference `to` (group, kind, namespace, name)
/// by a ReferenceGrant in the target namespace?
pub(crate) fn reference_granted(
    res: &Resources,
    from: (&str, &str, &str),
    to: (&str, &str, &str, &str),
) -> bool {
    let (fg, fk, fns) = from;
    let (tg, tk, tns, tname) = to;
    if fns == tns {
        return true;
    }
    res.reference_grants
        .values()
        .filter(|g| g.namespace() == tns)
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == fg && f.kind == fk && f.namespace == fns)
                && g.spec.to.iter().any(|t| {
                    t.group == tg && t.kind == tk && t.name.as_deref().is_none_or(|n| n == tname)
                })
        })
}

pub(crate) fn unsupported_condition(paths: &[String]) -> Option<Condition> {
    (!paths.is_empty()).then(|| {
        Condition::new(
            "UnsupportedFields",
            true,
            "UnsupportedField",
            format!(
                "not implemented by this controller, ignored unless noted: {}",
                paths.join(", ")
            ),
        )
    })
}

pub fn translate(res: &Resources, opts: &TranslateOptions, wasm: &dyn WasmResolver) -> Translation {
    let mut statuses = Vec::new();

    // GatewayClasses.
    let mut our_classes = std::collections::BTreeSet::new();
    for (name, gc) in &res.gateway_classes {
        if gc.spec.controller_name != opts.controller_name {
            continue;
        }
        our_classes.insert(name.clone());
        let mut conds = vec![Condition::new(
            "Accepted",
            true,
            "Accepted",
            "GatewayClass is accepted by this controller.",
        )];
        match gc
            .spec
            .parameters_ref
            .as_ref()
            .map(dynamic::class_parameters)
        {
            None => {}
            // Envoy Gateway: a class whose EnvoyProxy does not resolve is not accepted.
            Some(Ok(Some(key))) if !res.envoy_proxies.contains_key(&key) => {
                conds[0] = Condition::new(
                    "Accepted",
                    false,
                    "InvalidParameters",
                    format!(
                        "EnvoyProxy {}/{} (spec.parametersRef) not found",
                        key.0, key.1
                    ),
                );
            }
            Some(Ok(Some(_))) => {}
            Some(Err(why)) => {
                conds[0] = Condition::new("Accepted", false, "InvalidParameters", why)
            }
            Some(Ok(None)) => conds.push(Condition::new(
                "UnsupportedFields",
                true,
                "UnsupportedField",
                "ignored by this controller: spec.parametersRef (only an EnvoyProxy is read)",
            )),
        }
        conds.extend(unsupported_condition(&gc.unsupported));
        statuses.push(ResourceStatus {
            api_version: format!("{GATEWAY_GROUP}/v1"),
            kind: "GatewayClass".into(),
            metadata: crate::status::ObjectRef { namespace: None, name: name.clone() },
            status: json!({ "conditions": crate::status::conditions_json(&conds, gc.meta.generation) }),
        });
    }

    // Gateways and listeners.
    let mut gateways = listeners::build(res, &our_classes);

    // Policies: targets, filters, fetch states.
    let mut pols = policies::resolve(res, opts, wasm, &gateways);

    let mut sec = security::resolve(res, opts, wasm, &gateways);
    let mut rl = ratelimit::resolve(res, opts, wasm, &gateways);

    // Routes: attachment, rules, clusters.
    let routes = routes::translate_routes(res, opts, &mut gateways);

    claim_clusters(&routes, &mut pols, &mut sec, &mut rl);

    // IR per Gateway.
    let mut ir = Ir::default();
    for (key, gw) in &gateways {
        let gir: GatewayIr = routes::build_gateway_ir(key, gw, &routes, &pols, &sec, &rl);
        ir.gateways
            .insert(crate::xds::snapshot::node_id(&key.0, &key.1), gir);
    }

    statuses.extend(listeners::statuses(res, &gateways));
    statuses.extend(routes.statuses.clone());
    statuses.extend(policies::statuses(res, opts, &pols, &gateways, &routes));
    statuses.extend(security::statuses(res, opts, &sec, &gateways, &routes));
    statuses.extend(ratelimit::statuses(res, opts, &rl, &gateways, &routes));

    Translation {
        ir,
        statuses,
        wasm_needed: pols
            .wasm_needed
            .iter()
            .chain(&sec.wasm_needed)
            .chain(&rl.wasm_needed)
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
    }
}

/// Every cluster name has one definition: routes claim theirs first, then policies of every kind,
/// oldest first. A policy whose cluster is already defined differently is refused (its
/// `cluster_conflicts`), so the earlier owner keeps working.
fn claim_clusters(
    routes: &routes::RouteOutput,
    pols: &mut policies::Policies,
    sec: &mut security::SecurityPolicies,
    rl: &mut ratelimit::RateLimitPolicies,
) {
    let mut claims = clusters::Claims::default();
    for (key, r) in &routes.routes {
        // Backend clusters are derived from the referenced object alone, so two routes that
        // name one backend define it identically; should they not, the first keeps it.
        let _ = claims.claim(&format!("HTTPRoute {}/{}", key.0, key.1), &r.clusters);
    }
    enum Kind {
        Security,
        Extension,
        RateLimit,
    }
    let mut order: Vec<(AgeKey, u8, Kind, NsName)> = Vec::new();
    for (k, st) in &sec.states {
        order.push((age_key(&st.obj.meta, &k.0), 0, Kind::Security, k.clone()));
    }
    for (k, st) in &pols.states {
        order.push((age_key(&st.obj.meta, &k.0), 1, Kind::Extension, k.clone()));
    }
    for (k, st) in &rl.states {
        order.push((age_key(&st.obj.meta, &k.0), 2, Kind::RateLimit, k.clone()));
    }
    order.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for (_, _, kind, key) in order {
        let owner = |k: &str| format!("{k} {}/{}", key.0, key.1);
        // A policy that is not applied defines nothing.
        match kind {
            Kind::Security => {
                if let Some(st) = sec.states.get_mut(&key).filter(|st| !st.blocks()) {
                    if let Err(e) = claims.claim(&owner("SecurityPolicy"), &st.clusters) {
                        st.cluster_conflicts = e;
                    }
                }
            }
            Kind::Extension => {
                if let Some(st) = pols.states.get_mut(&key).filter(|st| !st.blocks()) {
                    let all = st
                        .clusters
                        .iter()
                        .chain(st.dynamic.values().flat_map(|d| &d.clusters));
                    if let Err(e) = claims.claim(&owner("EnvoyExtensionPolicy"), all) {
                        st.cluster_conflicts = e;
                    }
                }
            }
            Kind::RateLimit => {
                if let Some(st) = rl.states.get_mut(&key).filter(|st| !st.blocks()) {
                    if let Err(e) = claims.claim(&owner("BackendTrafficPolicy"), &st.clusters) {
                        st.cluster_conflicts = e;
                    }
                }
            }
        }
    }
}

pub(crate) fn gateway_ref_json(ns: &str, name: &str, section: Option<&str>) -> Value {
    let mut v = json!({ "group": GATEWAY_GROUP, "kind": "Gateway", "namespace": ns, "name": name });
    if let (Some(s), Some(o)) = (section, v.as_object_mut()) {
        o.insert("sectionName".into(), json!(s));
    }
    v
}

pub(crate) type GatewayMap = BTreeMap<NsName, listeners::GatewayState>;
