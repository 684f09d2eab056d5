//! Policy attachment, one engine for every policy kind: target resolution (`targetRef`,
//! `targetRefs`, `targetSelectors` to a Gateway, one of its listeners, an HTTPRoute or one of
//! its rules), precedence (the most specific target wins; among policies of one kind on one
//! target the oldest wins: creationTimestamp, then namespace/name, as Envoy Gateway does), and
//! the policies' `status.ancestors[]` (Accepted, Conflicted, Overridden, TargetNotFound).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::backends::SliceIndex;
use super::clusters::{conflict_condition, Claims};
use super::routes::RouteOutput;
use super::{age_key, gateway_ref_json, AgeKey, GatewayMap};
use crate::ir::{ClusterIr, FilterIr};
use crate::resources::{
    BackendTrafficPolicySpec, EnvoyExtensionPolicySpec, NsName, Object, ObjectMeta,
    PolicyTargetRef, Resources, SecurityPolicySpec, TargetSelector, EG_GROUP, GATEWAY_GROUP,
};
use crate::status::{conditions_json, Condition, ObjectRef, ResourceStatus};
use crate::wasm::source::{WasmResolver, WasmSource};
use crate::TranslateOptions;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetKey {
    Gateway(NsName, Option<String>),
    Route(NsName, Option<String>),
}

/// Where a policy kind's filters stand in the HTTP filter chain. The declaration order is the
/// chain order, as Envoy Gateway's: authentication (SecurityPolicy), then extensions
/// (EnvoyExtensionPolicy), then rate limits (BackendTrafficPolicy). Policies of one age claim
/// cluster names in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Layer {
    Security,
    Extension,
    RateLimit,
}

/// What every policy kind resolves its policies with.
pub(crate) struct ResolveCtx<'a> {
    pub res: &'a Resources,
    pub opts: &'a TranslateOptions,
    pub wasm: &'a dyn WasmResolver,
    pub gateways: &'a GatewayMap,
    pub slices: &'a SliceIndex<'a>,
}

/// The spec of a policy kind: where its objects are, and its `targetRef`, `targetRefs` and
/// `targetSelectors`.
pub(crate) trait PolicySpec: Eq + Clone + Sized {
    fn objects(res: &Resources) -> &BTreeMap<NsName, std::sync::Arc<Object<Self>>>;
    fn target_ref(&self) -> Option<&PolicyTargetRef>;
    fn target_refs(&self) -> &[PolicyTargetRef];
    fn target_selectors(&self) -> &[TargetSelector];
}

macro_rules! policy_spec {
    ($($spec:ty => $field:ident),* $(,)?) => {$(
        impl PolicySpec for $spec {
            fn objects(res: &Resources) -> &BTreeMap<NsName, std::sync::Arc<Object<Self>>> {
                &res.$field
            }
            fn target_ref(&self) -> Option<&PolicyTargetRef> {
                self.target_ref.as_ref()
            }
            fn target_refs(&self) -> &[PolicyTargetRef] {
                &self.target_refs
            }
            fn target_selectors(&self) -> &[TargetSelector] {
                &self.target_selectors
            }
        }
    )*};
}

policy_spec!(
    SecurityPolicySpec => security_policies,
    EnvoyExtensionPolicySpec => extension_policies,
    BackendTrafficPolicySpec => backend_traffic_policies,
);

/// One rule of a route on one listener of a Gateway: what a policy can be in effect on.
pub(crate) struct RuleOn<'a> {
    pub route: &'a NsName,
    pub rule_name: Option<&'a str>,
    pub gateway: &'a NsName,
    pub listener: &'a str,
}

/// What policy statuses are written from.
pub(crate) struct StatusCtx<'a> {
    pub res: &'a Resources,
    pub opts: &'a TranslateOptions,
    pub gateways: &'a GatewayMap,
    pub routes: &'a RouteOutput,
}

/// One policy kind: what it resolves per policy, what it adds to a route (its filters), where it
/// stands in the chain, and its Accepted condition. Targets, precedence, winners, cluster claims
/// and ancestor statuses are the engine's ([`PolicySet`]).
pub(crate) trait PolicyKind: Sized {
    /// `SecurityPolicy`, `EnvoyExtensionPolicy`, `BackendTrafficPolicy`.
    const KIND: &'static str;
    const LAYER: Layer;
    type Spec: PolicySpec;
    /// What the kind resolved for one policy (compared to reuse a Gateway's IR).
    type State: PartialEq;

    /// Resolves one policy whose targets the engine resolved.
    fn resolve(
        ctx: &ResolveCtx<'_>,
        p: &Object<Self::Spec>,
        targets: &[TargetKey],
        wasm_needed: &mut BTreeSet<WasmSource>,
    ) -> Self::State;
    /// Targeted routes answer 500 rather than run without the policy (cluster conflicts aside).
    fn blocks(st: &Self::State) -> bool;
    /// The clusters the policy defines, claimed against every route and other policy.
    fn clusters(st: &Self::State) -> Vec<&ClusterIr>;
    /// The Accepted condition of a policy whose clusters do not conflict.
    fn accepted(st: &Self::State) -> Condition;
    /// Conditions added to every ancestor (warnings).
    fn warnings(_st: &Self::State) -> Vec<Condition> {
        vec![]
    }
    /// What the policy adds to IR route `route` on Gateway `gw` (the policy does not block).
    fn render<'a>(p: &'a Policy<Self>, gw: &NsName, route: &str) -> Rendered<'a>;
}

/// One policy of kind `K`: the engine's part (object, targets, cluster conflicts) and the kind's.
pub(crate) struct Policy<K: PolicyKind> {
    pub obj: std::sync::Arc<Object<K::Spec>>,
    pub targets: Vec<TargetKey>,
    pub not_found: Vec<(PolicyTargetRef, String)>,
    /// Clusters another route or policy already defines differently ([`Claims`]): the policy is
    /// not applied and targeted routes answer 500.
    pub cluster_conflicts: Vec<String>,
    pub state: K::State,
}

impl<K: PolicyKind> PartialEq for Policy<K> {
    fn eq(&self, o: &Self) -> bool {
        self.obj == o.obj
            && self.targets == o.targets
            && self.not_found == o.not_found
            && self.cluster_conflicts == o.cluster_conflicts
            && self.state == o.state
    }
}

impl<K: PolicyKind> Policy<K> {
    pub fn blocks(&self) -> bool {
        !self.cluster_conflicts.is_empty() || K::blocks(&self.state)
    }
}

/// What one policy adds to one IR route.
#[derive(Default)]
pub(crate) struct Rendered<'a> {
    /// Filters, each with its order among the policy's filters in the chain.
    pub filters: Vec<(String, FilterIr)>,
    pub clusters: Vec<&'a ClusterIr>,
    /// The listener must take the client address from the connection (`use_remote_address`).
    pub remote_address: bool,
    /// The route answers 500 instead.
    pub blocked: bool,
}

impl Rendered<'_> {
    pub fn blocked() -> Self {
        Rendered {
            blocked: true,
            ..Default::default()
        }
    }
}

/// Every policy of one kind, and the winner of each target.
pub(crate) struct PolicySet<K: PolicyKind> {
    pub policies: BTreeMap<NsName, Policy<K>>,
    /// The policy that wins each exact target (oldest first).
    pub winners: BTreeMap<TargetKey, NsName>,
    pub wasm_needed: BTreeSet<WasmSource>,
}

impl<K: PolicyKind> PartialEq for PolicySet<K> {
    fn eq(&self, o: &Self) -> bool {
        self.policies == o.policies
            && self.winners == o.winners
            && self.wasm_needed == o.wasm_needed
    }
}

impl<K: PolicyKind> PolicySet<K> {
    pub fn resolve(ctx: &ResolveCtx<'_>) -> Self {
        let mut policies = BTreeMap::new();
        let mut wasm_needed = BTreeSet::new();
        for (key, p) in K::Spec::objects(ctx.res) {
            let (targets, not_found) = resolve_targets(
                ctx.res,
                &key.0,
                p.spec.target_ref(),
                p.spec.target_refs(),
                p.spec.target_selectors(),
                ctx.gateways,
            );
            let state = K::resolve(ctx, p, &targets, &mut wasm_needed);
            policies.insert(
                key.clone(),
                Policy {
                    obj: p.clone(),
                    targets,
                    not_found,
                    cluster_conflicts: vec![],
                    state,
                },
            );
        }
        let winners = pick_winners(
            policies
                .iter()
                .map(|(k, p)| (k, &p.obj.meta, p.targets.as_slice())),
        );
        PolicySet {
            policies,
            winners,
            wasm_needed,
        }
    }

    /// The policy in effect for one rule of a route on one listener: the most specific target
    /// wins, and any route-level policy overrides gateway-level ones.
    pub fn effective(&self, on: &RuleOn<'_>) -> Option<(&NsName, &Policy<K>)> {
        effective_in(&self.winners, on).and_then(|k| self.policies.get_key_value(k))
    }
}

/// A [`PolicySet`] of any kind, as the filter chain and the cluster claims see it.
pub(crate) trait PolicyLayer {
    fn layer(&self) -> Layer;
    /// The policy in effect on `on`, and what it adds to IR route `route_ir` there.
    fn render(&self, on: &RuleOn<'_>, route_ir: &str) -> Option<(&NsName, Rendered<'_>)>;
    /// Every policy with its age, for the order of cluster claims.
    fn claim_order(&self) -> Vec<(AgeKey, NsName)>;
    /// Claims the clusters of policy `key` (when it is applied); on conflict the policy is refused.
    fn claim(&mut self, key: &NsName, claims: &mut Claims);
    fn statuses(&self, ctx: &StatusCtx<'_>) -> Vec<ResourceStatus>;
    fn wasm_needed(&self) -> &BTreeSet<WasmSource>;
}

impl<K: PolicyKind> PolicyLayer for PolicySet<K> {
    fn layer(&self) -> Layer {
        K::LAYER
    }

    fn render(&self, on: &RuleOn<'_>, route_ir: &str) -> Option<(&NsName, Rendered<'_>)> {
        let (key, p) = self.effective(on)?;
        let out = if p.blocks() {
            Rendered::blocked()
        } else {
            K::render(p, on.gateway, route_ir)
        };
        Some((key, out))
    }

    fn claim_order(&self) -> Vec<(AgeKey, NsName)> {
        self.policies
            .iter()
            .map(|(k, p)| (age_key(&p.obj.meta, &k.0), k.clone()))
            .collect()
    }

    fn claim(&mut self, key: &NsName, claims: &mut Claims) {
        // A policy that is not applied defines nothing.
        let Some(p) = self.policies.get_mut(key).filter(|p| !p.blocks()) else {
            return;
        };
        let owner = format!("{} {}/{}", K::KIND, key.0, key.1);
        if let Err(e) = claims.claim(&owner, K::clusters(&p.state)) {
            p.cluster_conflicts = e;
        }
    }

    fn statuses(&self, ctx: &StatusCtx<'_>) -> Vec<ResourceStatus> {
        self.policies
            .iter()
            .map(|(key, p)| {
                let base = conflict_condition(&p.cluster_conflicts)
                    .unwrap_or_else(|| K::accepted(&p.state));
                policy_status(
                    &PolicyStatusInput {
                        ctx,
                        kind: K::KIND,
                        key,
                        generation: p.obj.meta.generation,
                        targets: &p.targets,
                        not_found: &p.not_found,
                        winners: &self.winners,
                    },
                    base,
                    &K::warnings(&p.state),
                )
            })
            .collect()
    }

    fn wasm_needed(&self) -> &BTreeSet<WasmSource> {
        &self.wasm_needed
    }
}

/// Resolves a policy's `targetRef`, `targetRefs` and `targetSelectors` (any policy kind).
fn resolve_targets(
    res: &Resources,
    ns: &str,
    target_ref: Option<&PolicyTargetRef>,
    target_refs: &[PolicyTargetRef],
    target_selectors: &[TargetSelector],
    gateways: &GatewayMap,
) -> (Vec<TargetKey>, Vec<(PolicyTargetRef, String)>) {
    let ns = ns.to_string();
    let mut targets = Vec::new();
    let mut not_found = Vec::new();
    let mut refs: Vec<PolicyTargetRef> = target_ref.into_iter().cloned().collect();
    refs.extend(target_refs.iter().cloned());
    for sel in target_selectors {
        let group = sel.group.clone().unwrap_or_else(|| GATEWAY_GROUP.into());
        let selector = crate::resources::LabelSelector {
            match_labels: sel.match_labels.clone(),
            match_expressions: sel.match_expressions.clone(),
        };
        let labelled: Vec<(&NsName, &ObjectMeta)> = match (group.as_str(), sel.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway") => res.gateways.iter().map(|(k, o)| (k, &o.meta)).collect(),
            (GATEWAY_GROUP, "HTTPRoute") => {
                res.http_routes.iter().map(|(k, o)| (k, &o.meta)).collect()
            }
            (g, k) => {
                not_found.push((
                    PolicyTargetRef {
                        group: g.to_string(),
                        kind: k.to_string(),
                        name: String::new(),
                        section_name: None,
                    },
                    format!("targetSelectors kind {g}/{k} is not supported"),
                ));
                continue;
            }
        };
        // The policy's own namespace only, as targetRefs.
        refs.extend(
            labelled
                .into_iter()
                .filter(|((ons, _), meta)| *ons == ns && selector.matches(&meta.labels))
                .map(|((_, name), _)| PolicyTargetRef {
                    group: group.clone(),
                    kind: sel.kind.clone(),
                    name: name.clone(),
                    section_name: None,
                }),
        );
    }
    for r in refs {
        let key = (ns.clone(), r.name.clone());
        match (r.group.as_str(), r.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway") => match gateways.get(&key) {
                None => not_found.push((r.clone(), format!("Gateway {ns}/{} not found", r.name))),
                Some(gw) => {
                    if let Some(s) = &r.section_name {
                        if !gw.listeners.iter().any(|l| &l.name == s) {
                            not_found.push((
                                r.clone(),
                                format!("Gateway {ns}/{} has no listener {s}", r.name),
                            ));
                            continue;
                        }
                    }
                    targets.push(TargetKey::Gateway(key, r.section_name.clone()));
                }
            },
            (GATEWAY_GROUP, "HTTPRoute") => match res.http_routes.get(&key) {
                None => not_found.push((r.clone(), format!("HTTPRoute {ns}/{} not found", r.name))),
                Some(route) => {
                    if let Some(s) = &r.section_name {
                        if !route
                            .spec
                            .rules
                            .iter()
                            .any(|rule| rule.name.as_deref() == Some(s))
                        {
                            not_found.push((
                                r.clone(),
                                format!("HTTPRoute {ns}/{} has no rule named {s}", r.name),
                            ));
                            continue;
                        }
                    }
                    targets.push(TargetKey::Route(key, r.section_name.clone()));
                }
            },
            (g, k) => not_found.push((
                r.clone(),
                format!("target kind {g}/{k} is not supported; use Gateway or HTTPRoute"),
            )),
        }
    }
    targets.sort();
    targets.dedup();
    (targets, not_found)
}

/// Oldest policy wins each exact target.
fn pick_winners<'a>(
    policies: impl Iterator<Item = (&'a NsName, &'a ObjectMeta, &'a [TargetKey])>,
) -> BTreeMap<TargetKey, NsName> {
    let mut by_target: BTreeMap<TargetKey, Vec<(AgeKey, NsName)>> = BTreeMap::new();
    for (key, meta, targets) in policies {
        for t in targets {
            by_target
                .entry(t.clone())
                .or_default()
                .push((age_key(meta, &key.0), key.clone()));
        }
    }
    by_target
        .into_iter()
        .filter_map(|(t, mut v)| {
            v.sort();
            v.into_iter().next().map(|(_, k)| (t, k))
        })
        .collect()
}

/// The winning policy for one rule of a route on one listener: the most specific target wins,
/// and any route-level policy overrides gateway-level ones.
fn effective_in<'a>(
    winners: &'a BTreeMap<TargetKey, NsName>,
    on: &RuleOn<'_>,
) -> Option<&'a NsName> {
    let RuleOn {
        route,
        rule_name,
        gateway: gw,
        listener,
    } = *on;
    // Asked for every rule on every listener: a kind without policies allocates no keys.
    if winners.is_empty() {
        return None;
    }
    let mut keys = Vec::new();
    if let Some(r) = rule_name {
        keys.push(TargetKey::Route(route.clone(), Some(r.to_string())));
    }
    keys.push(TargetKey::Route(route.clone(), None));
    keys.push(TargetKey::Gateway(gw.clone(), Some(listener.to_string())));
    keys.push(TargetKey::Gateway(gw.clone(), None));
    keys.iter().find_map(|k| winners.get(k))
}

/// `namespace/name` of the routes on Gateway `gw` (listener `section`, or all) whose own
/// route-level policy replaces the gateway-level one.
fn overridden_routes(
    winners: &BTreeMap<TargetKey, NsName>,
    routes: &RouteOutput,
    gateways: &GatewayMap,
    gw: &NsName,
    section: Option<&str>,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for a in routes.attachments.iter().filter(|a| &a.gateway == gw) {
        let listener = gateways
            .get(gw)
            .and_then(|g| g.listeners.get(a.listener))
            .map(|l| l.name.as_str());
        if section.is_some() && section != listener {
            continue;
        }
        let route_level = winners
            .keys()
            .any(|k| matches!(k, TargetKey::Route(r, _) if r == &a.route));
        if route_level {
            out.insert(format!("{}/{}", a.route.0, a.route.1));
        }
    }
    out.into_iter().collect()
}

struct PolicyStatusInput<'a> {
    pub ctx: &'a StatusCtx<'a>,
    /// `EnvoyExtensionPolicy`, `SecurityPolicy`, `BackendTrafficPolicy`.
    pub kind: &'a str,
    pub key: &'a NsName,
    pub generation: Option<i64>,
    pub targets: &'a [TargetKey],
    pub not_found: &'a [(PolicyTargetRef, String)],
    pub winners: &'a BTreeMap<TargetKey, NsName>,
}

/// A policy's `status.ancestors[]`: one entry per Gateway ancestor, with `base` (Accepted) unless
/// an older policy of the same kind wins the target (Conflicted), Overridden where route-level
/// policies replace a gateway-level one, and `extra` conditions (warnings) on accepted ones.
fn policy_status(
    input: &PolicyStatusInput<'_>,
    base: Condition,
    extra: &[Condition],
) -> ResourceStatus {
    let PolicyStatusInput {
        ctx,
        kind,
        key,
        generation,
        targets,
        not_found,
        winners,
    } = input;
    let StatusCtx {
        res,
        opts,
        gateways,
        routes,
    } = **ctx;
    let (ns, name) = key;
    let generation = *generation;
    let mut ancestors: BTreeMap<String, Value> = BTreeMap::new();
    let mut add = |ancestor: Value, conds: Vec<Condition>| {
        let k = ancestor.to_string();
        ancestors.entry(k).or_insert_with(|| {
            json!({
                "ancestorRef": ancestor,
                "controllerName": opts.controller_name,
                "conditions": conditions_json(&conds, generation),
            })
        });
    };
    for t in targets.iter() {
        let cond = match winners.get(t) {
            Some(w) if w != *key => Condition::new(
                "Accepted",
                false,
                "Conflicted",
                format!(
                    "{kind} {}/{} is older and targets the same resource",
                    w.0, w.1
                ),
            ),
            _ => base.clone(),
        };
        let with_extra = |c: &Condition| {
            let mut v = vec![c.clone()];
            v.extend(extra.iter().cloned());
            v
        };
        match t {
            TargetKey::Gateway(gkey, section) => {
                let mut conds = with_extra(&cond);
                let overridden =
                    overridden_routes(winners, routes, gateways, gkey, section.as_deref());
                if cond.status && !overridden.is_empty() {
                    conds.push(Condition::new(
                        "Overridden",
                        true,
                        "Overridden",
                        format!(
                            "route-level {}ies override this policy on: {}",
                            kind.trim_end_matches('y'),
                            overridden.join(", ")
                        ),
                    ));
                }
                add(
                    gateway_ref_json(&gkey.0, &gkey.1, section.as_deref()),
                    conds,
                )
            }
            TargetKey::Route(rkey, _) => {
                let mut any = false;
                if let Some(route) = res.http_routes.get(rkey) {
                    for pr in &route.spec.parent_refs {
                        let pns = pr.namespace.clone().unwrap_or_else(|| rkey.0.clone());
                        if pr.kind.as_deref().unwrap_or("Gateway") == "Gateway"
                            && gateways.contains_key(&(pns.clone(), pr.name.clone()))
                        {
                            any = true;
                            add(
                                gateway_ref_json(&pns, &pr.name, pr.section_name.as_deref()),
                                with_extra(&cond),
                            );
                        }
                    }
                }
                if !any {
                    add(
                        json!({"group": GATEWAY_GROUP, "kind": "HTTPRoute", "namespace": rkey.0, "name": rkey.1}),
                        with_extra(&cond),
                    );
                }
            }
        }
    }
    for (r, msg) in not_found.iter() {
        let mut a = json!({"group": r.group, "kind": r.kind, "namespace": ns, "name": r.name});
        if let (Some(s), Some(o)) = (&r.section_name, a.as_object_mut()) {
            o.insert("sectionName".into(), json!(s));
        }
        add(
            a,
            vec![Condition::new(
                "Accepted",
                false,
                "TargetNotFound",
                msg.clone(),
            )],
        );
    }
    ResourceStatus {
        api_version: format!("{EG_GROUP}/v1alpha1"),
        kind: kind.to_string(),
        metadata: ObjectRef {
            namespace: Some(ns.clone()),
            name: name.clone(),
        },
        status: json!({ "ancestors": ancestors.into_values().collect::<Vec<_>>() }).into(),
    }
}
