//! HTTPRoutes: rules -> IR routes, attachment to listeners, route statuses. The per-Gateway IR
//! (precedence, filter chain) is [`super::gateway_ir`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::json;

use super::listeners::{namespace_allowed, GatewayState};
use super::validate::route_filters::dedupe_header_modifier;
use super::validate::route_overlap::{self, ListenerKey};
use super::validate::route_rules::{self, RouteVerdict, RuleVerdict};
use super::{age_key, backends, duration, hostname, unsupported_condition, GatewayMap};
use crate::ir::{
    ActionIr, ClusterIr, HeaderOpsIr, MirrorIr, PathMatchIr, PathRewriteIr, RouteIr, ValueMatchIr,
    WeightedCluster,
};
use crate::resources::{
    HeaderModifier, HttpRouteRule, HttpRouteSpec, NsName, Object, PathModifier, Resources,
    GATEWAY_GROUP,
};
use crate::status::{conditions_json, Condition, ObjectRef, ResourceStatus};
use crate::TranslateOptions;

/// A cluster that never exists: Envoy answers 500 (`cluster_not_found_response_code`) for the
/// weight share of backendRefs that could not be resolved.
pub const INVALID_BACKEND_CLUSTER: &str = "portcullis/invalid-backend";

#[derive(Clone, PartialEq)]
pub struct Attachment {
    pub gateway: NsName,
    pub listener: usize,
    pub route: NsName,
    pub hostnames: Vec<String>,
}

/// One rule's name and its IR routes, one per match.
pub type RuleIrs = (Option<String>, Vec<Arc<RouteIr>>);

#[derive(Clone, PartialEq)]
pub struct TranslatedRoute {
    pub age: super::AgeKey,
    /// Per rule: its name and one IR route per match.
    /// Shared with the rule memo: an unchanged route costs two pointer copies.
    pub rules: Arc<[RuleIrs]>,
    pub clusters: Arc<[ClusterIr]>,
}

pub struct RouteOutput {
    pub statuses: Vec<ResourceStatus>,
    pub attachments: Vec<Attachment>,
    pub routes: BTreeMap<NsName, TranslatedRoute>,
    /// Per listener: each route there that overlaps others, and those others.
    overlaps: BTreeMap<ListenerKey, Overlaps>,
    /// Each route's status, with what it was built from.
    status_memo: std::collections::HashMap<NsName, StatusMemo>,
}

/// A route's status JSON and the conditions per parentRef it was built from.
struct StatusMemo {
    generation: Option<i64>,
    parents: Vec<(serde_json::Value, Vec<Condition>)>,
    status: Arc<serde_json::Value>,
}

type Overlaps = BTreeMap<NsName, BTreeSet<NsName>>;

/// An attachment and the translation of its route.
pub type AttachedRoute<'a> = (&'a Attachment, Option<&'a TranslatedRoute>);

impl RouteOutput {
    /// Every attachment, in order, with the translation of its route.
    pub fn attached(&self) -> impl Iterator<Item = AttachedRoute<'_>> {
        self.attachments
            .iter()
            .map(|a| (a, self.routes.get(&a.route)))
    }
}

fn header_ops(m: &HeaderModifier, ops: &mut HeaderOpsIr) {
    let m = &dedupe_header_modifier(m);
    ops.set
        .extend(m.set.iter().map(|h| (h.name.clone(), h.value.clone())));
    ops.add
        .extend(m.add.iter().map(|h| (h.name.clone(), h.value.clone())));
    ops.remove.extend(m.remove.iter().cloned());
}

fn path_rewrite(p: &PathModifier, path: &PathMatchIr) -> Option<PathRewriteIr> {
    match p.type_.as_str() {
        "ReplaceFullPath" => p.replace_full_path.clone().map(PathRewriteIr::Full),
        "ReplacePrefixMatch" => {
            let replacement = p.replace_prefix_match.clone().unwrap_or_else(|| "/".into());
            Some(match path {
                PathMatchIr::Prefix(prefix) => PathRewriteIr::Prefix {
                    prefix: prefix.clone(),
                    replacement,
                },
                // The CRD only allows ReplacePrefixMatch with PathPrefix; be lenient otherwise.
                _ => PathRewriteIr::Full(replacement),
            })
        }
        _ => None,
    }
}

/// A translated route's rules, its clusters, its ResolvedRefs condition and unsupported fields.
#[derive(Clone)]
struct RulesOutput {
    rules: Arc<[RuleIrs]>,
    clusters: Arc<[ClusterIr]>,
    resolved: Condition,
    /// `BackendsAvailable=False` (Envoy Gateway's `EndpointsNotFound`), only when some Service
    /// has no ready endpoint.
    available: Option<Condition>,
    unsupported: Vec<String>,
    /// Per rule: what validation found (`validate::route_rules`).
    verdicts: Vec<RuleVerdict>,
}

/// What every route's rules may read besides the route itself: the objects a backendRef,
/// mirror or BackendTLSPolicy resolves through, and the egress settings.
#[derive(Default)]
struct RuleInputs {
    services: BTreeMap<NsName, Arc<Object<crate::resources::ServiceSpec>>>,
    endpoint_slices: BTreeMap<NsName, Arc<Object<crate::resources::EndpointSliceBody>>>,
    backends: BTreeMap<NsName, Arc<Object<crate::resources::BackendSpec>>>,
    backend_tls_policies: BTreeMap<NsName, Arc<Object<crate::resources::BackendTlsPolicySpec>>>,
    secrets: BTreeMap<NsName, Arc<Object<crate::resources::SecretBody>>>,
    config_maps: BTreeMap<NsName, Arc<Object<crate::resources::ConfigMapBody>>>,
    reference_grants: BTreeMap<NsName, Arc<Object<crate::resources::ReferenceGrantSpec>>>,
    egress: crate::egress::EgressPolicy,
}

impl RuleInputs {
    fn of(res: &Resources, egress: &crate::egress::EgressPolicy) -> Self {
        RuleInputs {
            services: res.services.clone(),
            endpoint_slices: res.endpoint_slices.clone(),
            backends: res.backends.clone(),
            backend_tls_policies: res.backend_tls_policies.clone(),
            secrets: res.secrets.clone(),
            config_maps: res.config_maps.clone(),
            reference_grants: res.reference_grants.clone(),
            egress: egress.clone(),
        }
    }

    /// Objects are `Eq`, so comparing their `Arc`s checks the pointer first: an object the
    /// parse memo handed on unchanged costs a pointer check.
    fn unchanged(&self, res: &Resources, egress: &crate::egress::EgressPolicy) -> bool {
        self.services == res.services
            && self.endpoint_slices == res.endpoint_slices
            && self.backends == res.backends
            && self.backend_tls_policies == res.backend_tls_policies
            && self.secrets == res.secrets
            && self.config_maps == res.config_maps
            && self.reference_grants == res.reference_grants
            && &self.egress == egress
    }
}

/// Each HTTPRoute's translated rules from the last translation ([`crate::Translator`]): reused
/// while the route and its [`RuleInputs`] are unchanged, since the rules read nothing else.
#[derive(Default)]
pub struct RuleMemo {
    inputs: Option<RuleInputs>,
    routes: std::collections::HashMap<NsName, (Arc<Object<HttpRouteSpec>>, RulesOutput)>,
    /// Routes translated and reused by the last [`translate_routes`].
    pub stats: RuleMemoStats,
}

/// How much of one translation's route rules came from the memo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleMemoStats {
    pub translated: usize,
    pub reused: usize,
}

impl RuleMemo {
    /// Forget every route whose inputs changed; keep only routes that still exist.
    fn begin(&mut self, res: &Resources, egress: &crate::egress::EgressPolicy) {
        self.stats = RuleMemoStats::default();
        if !self
            .inputs
            .as_ref()
            .is_some_and(|i| i.unchanged(res, egress))
        {
            self.routes.clear();
            self.inputs = Some(RuleInputs::of(res, egress));
        }
        self.routes.retain(|k, _| res.http_routes.contains_key(k));
    }

    fn rules(
        &mut self,
        res: &Resources,
        egress: &crate::egress::EgressPolicy,
        slices: &backends::SliceIndex<'_>,
        key: &NsName,
        route: &Arc<Object<HttpRouteSpec>>,
    ) -> RulesOutput {
        if let Some((was, out)) = self.routes.get(key) {
            if was == route {
                self.stats.reused += 1;
                return out.clone();
            }
        }
        self.stats.translated += 1;
        let out = translate_rules(res, egress, slices, route);
        self.routes
            .insert(key.clone(), (route.clone(), out.clone()));
        out
    }
}

fn translate_rules(
    res: &Resources,
    egress: &crate::egress::EgressPolicy,
    slices: &backends::SliceIndex<'_>,
    route: &Object<HttpRouteSpec>,
) -> RulesOutput {
    let ns = route.namespace().to_string();
    let mut clusters: Vec<ClusterIr> = Vec::new();
    let mut ref_errors: Vec<(&'static str, String)> = Vec::new();
    let mut unsupported: Vec<String> = Vec::new();
    // Service references that resolved to no ready endpoint (Envoy answers 503).
    let mut unavailable: Vec<String> = Vec::new();
    let mut rules_out = Vec::new();
    let mut verdicts = Vec::new();
    let add_cluster = |c: ClusterIr, clusters: &mut Vec<ClusterIr>| {
        if !clusters.iter().any(|x| x.name == c.name) {
            clusters.push(c);
        }
    };
    for (ri, rule) in route.spec.rules.iter().enumerate() {
        let HttpRouteRule {
            name,
            matches,
            filters,
            backend_refs,
            timeouts,
        } = rule;
        let mut req = HeaderOpsIr::default();
        let mut resp = HeaderOpsIr::default();
        let mut redirect = None;
        let mut rewrite = None;
        let mut mirrors = Vec::new();
        // A rule that fails validation is dropped: its matches answer 500.
        let verdict = route_rules::check_rule(ri, rule);
        let mut broken = !verdict.is_valid();
        for (fi, f) in filters.iter().enumerate() {
            match f.type_.as_str() {
                "RequestHeaderModifier" => header_ops(
                    &f.request_header_modifier.clone().unwrap_or_default(),
                    &mut req,
                ),
                "ResponseHeaderModifier" => header_ops(
                    &f.response_header_modifier.clone().unwrap_or_default(),
                    &mut resp,
                ),
                "RequestRedirect" => redirect = f.request_redirect.clone(),
                "URLRewrite" => rewrite = f.url_rewrite.clone(),
                "RequestMirror" => {
                    let Some(m) = &f.request_mirror else { continue };
                    match backends::resolve(res, egress, slices, &ns, &m.backend_ref) {
                        Ok(c) => {
                            unavailable.extend(super::validate::backend_refs::no_ready_endpoints(
                                &m.backend_ref,
                                &ns,
                                &c,
                            ));
                            let per_million = match (&m.fraction, m.percent) {
                                (Some(fr), _) => {
                                    let d = u64::from(fr.denominator.unwrap_or(100).max(1));
                                    (u64::from(fr.numerator) * 1_000_000 / d).min(1_000_000) as u32
                                }
                                (None, Some(p)) => p.min(100) * 10_000,
                                (None, None) => 1_000_000,
                            };
                            mirrors.push(MirrorIr {
                                cluster: c.name.clone(),
                                per_million,
                            });
                            add_cluster(c, &mut clusters);
                        }
                        Err(e) => ref_errors.push(e),
                    }
                }
                other => {
                    // Requests this filter would have processed must not pass unfiltered.
                    unsupported.push(format!(
                        "spec.rules.{ri}.filters.{fi} (type {other}; the rule answers 500)"
                    ));
                    broken = true;
                }
            }
        }
        let mut weighted = Vec::new();
        let mut invalid_weight = 0u32;
        for b in backend_refs {
            let resolved = super::validate::backend_refs::filters(b)
                .map_err(Into::into)
                .and_then(|()| backends::resolve(res, egress, slices, &ns, &b.object_ref()));
            match resolved {
                Ok(c) => {
                    unavailable.extend(super::validate::backend_refs::no_ready_endpoints(
                        &b.object_ref(),
                        &ns,
                        &c,
                    ));
                    let weight = b.weight.unwrap_or(1);
                    if weight > 0 {
                        weighted.push(WeightedCluster {
                            cluster: c.name.clone(),
                            weight,
                        });
                    }
                    add_cluster(c, &mut clusters);
                }
                Err(e) => {
                    // The share of traffic meant for an invalid backend gets a 500 (spec).
                    let weight = b.weight.unwrap_or(1);
                    if weight > 0 {
                        invalid_weight += weight;
                    }
                    ref_errors.push(e);
                }
            }
        }
        if invalid_weight > 0 && !weighted.is_empty() {
            weighted.push(WeightedCluster {
                cluster: INVALID_BACKEND_CLUSTER.to_string(),
                weight: invalid_weight,
            });
        }
        let timeout_ms = timeouts
            .as_ref()
            .and_then(|t| t.request.as_deref())
            .and_then(duration::parse_ms);
        let backend_timeout_ms = timeouts
            .as_ref()
            .and_then(|t| t.backend_request.as_deref())
            .and_then(duration::parse_ms);

        let default_match = [crate::resources::HttpRouteMatch::default()];
        let ms = if matches.is_empty() {
            &default_match[..]
        } else {
            &matches[..]
        };
        if !verdict.is_valid() {
            // Never program what failed validation (Envoy could NACK the whole listener).
            req = HeaderOpsIr::default();
            resp = HeaderOpsIr::default();
        }
        let mut irs = Vec::new();
        for (mi, m) in ms.iter().enumerate() {
            if verdict.unprogrammable_matches.contains(&mi) {
                continue;
            }
            let pm = m.path.clone().unwrap_or_default();
            let value = pm.value.clone().unwrap_or_else(|| "/".into());
            let path = match pm.type_.as_deref().unwrap_or("PathPrefix") {
                "Exact" => PathMatchIr::Exact(value),
                "RegularExpression" => PathMatchIr::Regex(value),
                _ => PathMatchIr::Prefix(value),
            };
            let vm = |v: &crate::resources::ValueMatch| ValueMatchIr {
                name: v.name.clone(),
                value: v.value.clone(),
                regex: v.type_.as_deref() == Some("RegularExpression"),
            };
            let action = if broken {
                ActionIr::Direct {
                    status: 500,
                    body: String::new(),
                }
            } else if let Some(r) = &redirect {
                ActionIr::Redirect {
                    scheme: r.scheme.clone(),
                    host: r.hostname.clone(),
                    // Without a port Envoy drops a default port (:80 -> https) as the spec asks;
                    // setting 443 here would print ":443" in the Location header.
                    port: r.port,
                    path: r.path.as_ref().and_then(|p| path_rewrite(p, &path)),
                    status: r.status_code.unwrap_or(302),
                }
            } else if weighted.is_empty() {
                // No backendRefs, all invalid, or all weight 0: the spec asks for a 500.
                ActionIr::Direct {
                    status: 500,
                    body: String::new(),
                }
            } else {
                ActionIr::Forward {
                    backends: weighted.clone(),
                    host_rewrite: rewrite.as_ref().and_then(|r| r.hostname.clone()),
                    path_rewrite: rewrite
                        .as_ref()
                        .and_then(|r| r.path.as_ref())
                        .and_then(|p| path_rewrite(p, &path)),
                }
            };
            irs.push(Arc::new(RouteIr {
                name: format!("httproute/{ns}/{}/rule/{ri}/match/{mi}", route.name()),
                path,
                headers: m.headers.iter().map(vm).collect(),
                query_params: m.query_params.iter().map(vm).collect(),
                method: m.method.clone(),
                action,
                request_headers: req.clone(),
                response_headers: resp.clone(),
                mirrors: mirrors.clone(),
                timeout_ms,
                backend_timeout_ms,
                enabled_filters: vec![],
                route_namespace: ns.clone(),
                route_name: route.name().to_string(),
                rule_name: name.clone(),
            }));
        }
        rules_out.push((name.clone(), irs));
        verdicts.push(verdict);
    }
    let resolved = match ref_errors.first() {
        None => Condition::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "All references are resolved.",
        ),
        Some((reason, _)) => {
            let msgs: Vec<_> = ref_errors.iter().map(|e| e.1.clone()).collect();
            Condition::new("ResolvedRefs", false, reason, msgs.join("; "))
        }
    };
    unavailable.sort();
    unavailable.dedup();
    let available = (!unavailable.is_empty()).then(|| {
        Condition::new(
            "BackendsAvailable",
            false,
            "EndpointsNotFound",
            unavailable.join(" "),
        )
    });
    RulesOutput {
        rules: rules_out.into(),
        clusters: clusters.into(),
        resolved,
        available,
        unsupported,
        verdicts,
    }
}

/// One parentRef's status while the routes are translated; overlaps are known only at the end.
struct PendingParent {
    parent_ref: serde_json::Value,
    conditions: Vec<Condition>,
    /// The Gateway listeners through which this parentRef attached the route (ready ones).
    listeners: Vec<ListenerKey>,
}

struct PendingRoute {
    key: NsName,
    generation: Option<i64>,
    parents: Vec<PendingParent>,
    unsupported: Vec<String>,
}

pub fn translate_routes(
    res: &Resources,
    opts: &TranslateOptions,
    gateways: &mut GatewayMap,
    memo: &mut RuleMemo,
    previous: Option<&RouteOutput>,
) -> RouteOutput {
    let mut out = RouteOutput {
        statuses: vec![],
        attachments: vec![],
        routes: BTreeMap::new(),
        overlaps: BTreeMap::new(),
        status_memo: Default::default(),
    };
    let slices = backends::slice_index(res);
    memo.begin(res, &opts.egress);
    let mut pending = Vec::new();
    for (key, route) in &res.http_routes {
        let ns = &key.0;
        let RulesOutput {
            rules,
            clusters,
            resolved,
            available,
            mut unsupported,
            verdicts,
        } = memo.rules(res, &opts.egress, &slices, key, route);
        unsupported.extend(route.unsupported.iter().cloned());
        let verdict = route_rules::summarize(&verdicts);
        let mut parents = Vec::new();
        let mut seen_refs = BTreeSet::new();
        let mut attached_to: BTreeSet<(NsName, usize)> = BTreeSet::new();
        for pr in &route.spec.parent_refs {
            if pr.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP
                || pr.kind.as_deref().unwrap_or("Gateway") != "Gateway"
            {
                continue;
            }
            let pr_json = serde_json::to_value(pr).unwrap_or_default();
            if !seen_refs.insert(pr_json.to_string()) {
                continue;
            }
            let gkey = (
                pr.namespace.clone().unwrap_or_else(|| ns.clone()),
                pr.name.clone(),
            );
            let (accepted, listeners) = match gateways.get_mut(&gkey) {
                None if res.gateways.contains_key(&gkey) => continue, // another controller's Gateway
                None => (
                    Condition::new(
                        "Accepted",
                        false,
                        "NoMatchingParent",
                        format!("Gateway {}/{} not found", gkey.0, gkey.1),
                    ),
                    vec![],
                ),
                Some(gw) => attach(
                    res,
                    key,
                    route,
                    &gkey,
                    gw,
                    pr,
                    &mut out.attachments,
                    &mut attached_to,
                ),
            };
            let mut conds = vec![accepted];
            // Rule validation only speaks for a parent that accepted the route: a route that is
            // not accepted MUST NOT get PartiallyInvalid (Gateway API), and the attachment
            // failure is the more telling reason.
            if conds[0].status {
                match &verdict {
                    RouteVerdict::Valid => {}
                    RouteVerdict::Invalid { reason, message } => {
                        conds[0] = Condition::new("Accepted", false, reason, message.clone());
                    }
                    RouteVerdict::Partial { reason, message } => {
                        conds.push(Condition::new(
                            "PartiallyInvalid",
                            true,
                            reason,
                            message.clone(),
                        ));
                    }
                }
            }
            conds.insert(1, resolved.clone());
            if let Some(a) = &available {
                conds.insert(2, a.clone());
            }
            parents.push(PendingParent {
                parent_ref: pr_json,
                conditions: conds,
                listeners,
            });
        }
        if !parents.is_empty() {
            pending.push(PendingRoute {
                key: key.clone(),
                generation: route.meta.generation,
                parents,
                unsupported,
            });
        }
        out.routes.insert(
            key.clone(),
            TranslatedRoute {
                age: age_key(&route.meta, ns),
                rules,
                clusters,
            },
        );
    }

    out.overlaps = route_overlaps(&out, previous);
    for p in pending {
        let parents: Vec<_> = p
            .parents
            .into_iter()
            .map(|mut parent| {
                let others: BTreeSet<&NsName> = parent
                    .listeners
                    .iter()
                    .filter_map(|l| out.overlaps.get(l).and_then(|o| o.get(&p.key)))
                    .flatten()
                    .collect();
                if !others.is_empty() {
                    let names: Vec<String> = others
                        .iter()
                        .map(|(ns, n)| format!("HTTPRoute {ns}/{n}"))
                        .collect();
                    parent.conditions.push(Condition::new(
                        "RouteRulesOverlap",
                        true,
                        "RouteRulesOverlap",
                        format!(
                            "Overlapping match conditions with route(s): {}",
                            names.join(", ")
                        ),
                    ));
                }
                parent
                    .conditions
                    .extend(unsupported_condition(&p.unsupported));
                (parent.parent_ref, parent.conditions)
            })
            .collect();
        // The JSON is the costly part; the conditions it is built from are compared instead.
        let status = match previous.and_then(|prev| prev.status_memo.get(&p.key)) {
            Some(m) if m.generation == p.generation && m.parents == parents => m.status.clone(),
            _ => {
                let parents: Vec<_> = parents
                    .iter()
                    .map(|(parent_ref, conditions)| {
                        json!({
                            "parentRef": parent_ref,
                            "controllerName": opts.controller_name,
                            "conditions": conditions_json(conditions, p.generation),
                        })
                    })
                    .collect();
                Arc::new(json!({ "parents": parents }))
            }
        };
        out.statuses.push(ResourceStatus {
            api_version: format!("{GATEWAY_GROUP}/v1"),
            kind: "HTTPRoute".into(),
            metadata: ObjectRef {
                namespace: Some(p.key.0.clone()),
                name: p.key.1.clone(),
            },
            status: status.clone(),
        });
        out.status_memo.insert(
            p.key,
            StatusMemo {
                generation: p.generation,
                parents,
                status,
            },
        );
    }
    out
}

/// Routes attached through each listener (keyed by borrowed Gateway name and listener index),
/// in attachment order, with their translations.
fn by_listener(out: &RouteOutput) -> BTreeMap<(&NsName, usize), Vec<AttachedRoute<'_>>> {
    let mut m: BTreeMap<(&NsName, usize), Vec<_>> = BTreeMap::new();
    for (a, tr) in out.attached() {
        m.entry((&a.gateway, a.listener)).or_default().push((a, tr));
    }
    m
}

/// Overlapping routes per listener (`validate::route_overlap`), from what is attached. A
/// listener whose routes are those of the `previous` translation keeps its result.
fn route_overlaps(
    out: &RouteOutput,
    previous: Option<&RouteOutput>,
) -> BTreeMap<ListenerKey, Overlaps> {
    let before = previous.map(by_listener).unwrap_or_default();
    let mut result = BTreeMap::new();
    for ((gateway, index), attached) in by_listener(out) {
        let listener = (gateway.clone(), index);
        if before.get(&(gateway, index)) == Some(&attached) {
            if let Some(o) = previous.and_then(|p| p.overlaps.get(&listener)) {
                result.insert(listener, o.clone());
            }
            continue;
        }
        let programmed: Vec<route_overlap::Programmed<'_>> = attached
            .iter()
            .filter_map(|(a, tr)| {
                Some(route_overlap::Programmed {
                    listener: listener.clone(),
                    route: a.route.clone(),
                    hostnames: &a.hostnames,
                    routes: (*tr)?
                        .rules
                        .iter()
                        .flat_map(|(_, irs)| irs)
                        .map(|r| &**r)
                        .collect(),
                })
            })
            .collect();
        let found: Overlaps = route_overlap::overlaps(&programmed)
            .into_iter()
            .map(|((route, _), others)| (route, others))
            .collect();
        if !found.is_empty() {
            result.insert(listener, found);
        }
    }
    result
}

/// Attaches a route to the listeners of `gw` its parentRef selects, as Envoy Gateway's
/// `processAllowedListenersForParentRefs` and `processHTTPRouteParentRefListener` do:
/// no selected listener is `NoMatchingParent`; none that allows the route (kind, namespace) is
/// `NotAllowedByListeners`; none of those ready is `NoReadyListeners`; no hostname intersection
/// is `NoMatchingListenerHostname`. `attachedRoutes` counts every allowed listener whose hostname
/// intersects, ready or not (Gateway API: listener status does not affect attachment).
#[allow(clippy::too_many_arguments)]
fn attach(
    res: &Resources,
    key: &NsName,
    route: &Object<HttpRouteSpec>,
    gkey: &NsName,
    gw: &mut GatewayState,
    pr: &crate::resources::ParentRef,
    attachments: &mut Vec<Attachment>,
    attached_to: &mut BTreeSet<(NsName, usize)>,
) -> (Condition, Vec<ListenerKey>) {
    let selected: Vec<usize> = gw
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            pr.section_name.as_ref().is_none_or(|s| s == &l.name)
                && pr.port.is_none_or(|p| p == l.port)
        })
        .map(|(i, _)| i)
        .collect();
    if selected.is_empty() {
        return (
            Condition::new(
                "Accepted",
                false,
                "NoMatchingParent",
                "no listener matches the parentRef sectionName/port",
            ),
            vec![],
        );
    }
    let mut not_allowed = Vec::new();
    let mut allowed = Vec::new();
    for &i in &selected {
        let l = &gw.listeners[i];
        if !l.allows_http_route {
            not_allowed.push(format!(
                "listener {} does not allow the HTTPRoute kind",
                l.name
            ));
        } else if !namespace_allowed(res, l, &gkey.0, &key.0) {
            not_allowed.push(format!(
                "listener {} does not allow routes from namespace {}",
                l.name, key.0
            ));
        } else {
            allowed.push(i);
        }
    }
    if allowed.is_empty() {
        return (
            Condition::new(
                "Accepted",
                false,
                "NotAllowedByListeners",
                not_allowed.join("; "),
            ),
            vec![],
        );
    }
    let mut any_intersection = false;
    let mut listeners = Vec::new();
    for &i in &allowed {
        let l = &mut gw.listeners[i];
        let Some(hostnames) = hostname::intersect(l.hostname.as_deref(), &route.spec.hostnames)
        else {
            continue;
        };
        any_intersection = true;
        if l.ready {
            listeners.push((gkey.clone(), i));
        }
        // A route reached through two parentRefs of one listener counts and attaches once.
        if !attached_to.insert((gkey.clone(), i)) {
            continue;
        }
        l.attached_routes += 1;
        if l.ready {
            attachments.push(Attachment {
                gateway: gkey.clone(),
                listener: i,
                route: key.clone(),
                hostnames,
            });
        }
    }
    let accepted = if !allowed.iter().any(|&i| gw.listeners[i].ready) {
        // Envoy Gateway's own reason (not in the Gateway API list).
        let names: Vec<&str> = allowed
            .iter()
            .map(|&i| gw.listeners[i].name.as_str())
            .collect();
        Condition::new(
            "Accepted",
            false,
            "NoReadyListeners",
            format!(
                "There are no ready listeners for this parent ref (not ready: {})",
                names.join(", ")
            ),
        )
    } else if !any_intersection {
        let names: Vec<&str> = allowed
            .iter()
            .map(|&i| gw.listeners[i].name.as_str())
            .collect();
        Condition::new(
            "Accepted",
            false,
            "NoMatchingListenerHostname",
            format!(
                "no route hostname matches listener {} hostname",
                names.join(", ")
            ),
        )
    } else {
        Condition::new("Accepted", true, "Accepted", "Route is accepted.")
    };
    (accepted, listeners)
}
