//! Gateway API + EnvoyExtensionPolicy -> IR, and every status. Pure.
//!
//! Order: GatewayClasses, then Gateways and their listeners, then backends (clusters), then
//! policies (they only need to know targets), then HTTPRoutes attach to listeners and pick up
//! the policy that applies to each rule.

mod attach;
mod backend_tls;
pub mod backend_traffic_policy;
mod backends;
mod builtin;
mod clusters;
pub mod duration;
mod dynamic;
mod extension_policy;
mod gateway_ir;
pub mod hostname;
mod listeners;
mod routes;
pub mod security_policy;
mod validate;

// The names these modules had before they were named after their kinds.
pub use backend_traffic_policy as ratelimit;
pub use security_policy as security;

use std::collections::BTreeMap;
use std::sync::Arc;

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

pub use routes::{RuleMemo, RuleMemoStats};

/// What [`translate_with`] keeps from one translation for the next ([`crate::Translator`]).
#[derive(Default)]
pub struct Memo {
    /// Each HTTPRoute's translated rules.
    pub rules: RuleMemo,
    /// Everything each Gateway's IR was built from, and the IRs.
    last: Option<LastTranslation>,
    /// Gateway IRs built and reused by the last translation.
    pub irs_built: usize,
    pub irs_reused: usize,
}

/// The inputs of [`gateway_ir::build_gateway_ir`] from the last translation, and its outputs.
struct LastTranslation {
    gateways: GatewayMap,
    routes: routes::RouteOutput,
    policies: gateway_ir::PolicyLayers,
    irs: BTreeMap<NsName, Arc<GatewayIr>>,
}

impl LastTranslation {
    /// Gateway `key`'s IR when nothing it is built from changed: its listeners, every policy,
    /// and the routes attached to it (rules shared with the rule memo compare by pointer).
    fn reusable(
        &self,
        key: &NsName,
        gw: &listeners::GatewayState,
        routes: &routes::RouteOutput,
    ) -> Option<Arc<GatewayIr>> {
        if self.gateways.get(key) != Some(gw) {
            return None;
        }
        (attached(&self.routes, key) == attached(routes, key))
            .then(|| self.irs.get(key).cloned())
            .flatten()
    }
}

/// The routes attached to Gateway `key`, in attachment order, with their translations.
fn attached<'a>(out: &'a routes::RouteOutput, key: &NsName) -> Vec<routes::AttachedRoute<'a>> {
    out.attached().filter(|(a, _)| &a.gateway == key).collect()
}

/// Translates `res` from scratch.
pub fn translate(res: &Resources, opts: &TranslateOptions, wasm: &dyn WasmResolver) -> Translation {
    translate_with(res, opts, wasm, &mut Memo::default())
}

/// [`translate`], reusing what `memo` holds from the previous translation (with the same
/// options and resolver) where its inputs are unchanged; the result is the same.
pub fn translate_with(
    res: &Resources,
    opts: &TranslateOptions,
    wasm: &dyn WasmResolver,
    memo: &mut Memo,
) -> Translation {
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
            metadata: crate::status::ObjectRef {
                namespace: None,
                name: name.clone(),
            },
            status:
                json!({ "conditions": crate::status::conditions_json(&conds, gc.meta.generation) })
                    .into(),
        });
    }

    // Gateways and listeners.
    let mut gateways = listeners::build(res, &our_classes);

    // Policies of every kind: targets, filters, fetch states.
    let slices = backends::slice_index(res);
    let ctx = attach::ResolveCtx {
        res,
        opts,
        wasm,
        gateways: &gateways,
        slices: &slices,
    };
    let mut policies = gateway_ir::PolicyLayers::resolve(&ctx);

    // Routes: attachment, rules, clusters.
    let mut routes = routes::translate_routes(
        res,
        opts,
        &mut gateways,
        &mut memo.rules,
        memo.last.as_ref().map(|l| &l.routes),
    );

    claim_clusters(&routes, &mut policies);

    // IR per Gateway; a Gateway whose inputs are all unchanged keeps its previous IR.
    let last = memo.last.take().filter(|l| l.policies == policies);
    let (mut built, mut reused) = (0, 0);
    let mut irs = BTreeMap::new();
    let mut ir = Ir::default();
    for (key, gw) in &gateways {
        let gir = match last.as_ref().and_then(|l| l.reusable(key, gw, &routes)) {
            Some(gir) => {
                reused += 1;
                gir
            }
            None => {
                built += 1;
                Arc::new(gateway_ir::build_gateway_ir(key, gw, &routes, &policies))
            }
        };
        irs.insert(key.clone(), gir.clone());
        ir.gateways
            .insert(crate::xds::snapshot::node_id(&key.0, &key.1), gir);
    }
    drop(last);
    (memo.irs_built, memo.irs_reused) = (built, reused);

    statuses.extend(listeners::statuses(res, &gateways));
    statuses.append(&mut routes.statuses);
    // Policy statuses in the order they have always been written (not the chain order).
    let status_ctx = attach::StatusCtx {
        res,
        opts,
        gateways: &gateways,
        routes: &routes,
    };
    for layer in [
        &policies.extension as &dyn attach::PolicyLayer,
        &policies.security,
        &policies.traffic,
    ] {
        statuses.extend(layer.statuses(&status_ctx));
    }

    let wasm_needed: std::collections::BTreeSet<WasmSource> = policies
        .chain()
        .iter()
        .flat_map(|l| l.wasm_needed())
        .cloned()
        .collect();
    memo.last = Some(LastTranslation {
        gateways,
        routes,
        policies,
        irs,
    });
    Translation {
        ir,
        statuses,
        wasm_needed: wasm_needed.into_iter().collect(),
    }
}

/// Every cluster name has one definition: routes claim theirs first, then policies of every kind,
/// oldest first (policies of one age in chain order). A policy whose cluster is already defined
/// differently is refused (its `cluster_conflicts`), so the earlier owner keeps working.
fn claim_clusters(routes: &routes::RouteOutput, policies: &mut gateway_ir::PolicyLayers) {
    let mut claims = clusters::Claims::default();
    for (key, r) in &routes.routes {
        // Backend clusters are derived from the referenced object alone, so two routes that
        // name one backend define it identically; should they not, the first keeps it.
        let _ = claims.claim(&format!("HTTPRoute {}/{}", key.0, key.1), r.clusters.iter());
    }
    let layers = policies.chain_mut();
    let mut order: Vec<(AgeKey, attach::Layer, usize, NsName)> = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        for (age, key) in layer.claim_order() {
            order.push((age, layer.layer(), i, key));
        }
    }
    order.sort();
    for (_, _, i, key) in order {
        layers[i].claim(&key, &mut claims);
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
