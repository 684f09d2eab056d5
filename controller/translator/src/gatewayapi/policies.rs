//! EnvoyExtensionPolicy: targets, conflicts, wasm/lua filters and their fetch state, statuses.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{age_key, gateway_ref_json, AgeKey, GatewayMap};
use crate::ir::{ClusterIr, ClusterKind, EndpointIr, FilterIr, LuaFilterIr, WasmFilterIr};
use crate::resources::{
    EnvoyExtensionPolicySpec, NsName, Object, PolicyTargetRef, Resources, EG_GROUP, GATEWAY_GROUP,
};
use crate::status::{conditions_json, Condition, ObjectRef, ResourceStatus};
use crate::wasm::source::{WasmCodeType, WasmResolution, WasmResolver, WasmSource};
use crate::TranslateOptions;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetKey {
    Gateway(NsName, Option<String>),
    Route(NsName, Option<String>),
}

pub struct PolicyState {
    pub obj: Object<EnvoyExtensionPolicySpec>,
    pub targets: Vec<TargetKey>,
    pub not_found: Vec<(PolicyTargetRef, String)>,
    /// Filters whose code is ready, in chain order.
    pub filters: Vec<FilterIr>,
    /// Clusters Envoy fetches this policy's modules through.
    pub clusters: Vec<ClusterIr>,
    /// Invalid configuration: the policy is not applied and its routes answer 500.
    pub problems: Vec<String>,
    /// Modules not available (pending or failed fetch), with their failOpen.
    pub unavailable: Vec<(String, bool)>,
    /// `dynamicModule[]` filters (after `filters` in the chain) and their fetch clusters, per
    /// Gateway: each Gateway has its own module registry.
    pub dynamic: BTreeMap<NsName, super::dynamic::GatewayFilters>,
    /// Remote dynamic modules Envoy cannot load yet (pending or failed fetch). Not blocking:
    /// Envoy rejects the update and keeps its last good configuration.
    pub not_ready: Vec<String>,
    /// Clusters another route or policy already defines differently ([`super::clusters::Claims`]):
    /// the policy is not applied.
    pub cluster_conflicts: Vec<String>,
}

impl PolicyState {
    /// Targeted routes answer an error rather than run without a fail-closed filter.
    pub fn blocks(&self) -> bool {
        !self.problems.is_empty()
            || !self.cluster_conflicts.is_empty()
            || self.unavailable.iter().any(|(_, fail_open)| !fail_open)
    }
}

pub struct Policies {
    pub states: BTreeMap<NsName, PolicyState>,
    /// The policy that wins each target (oldest first).
    pub winners: BTreeMap<TargetKey, NsName>,
    pub wasm_needed: BTreeSet<WasmSource>,
}

impl Policies {
    /// The policy in effect for one rule of a route on one listener: the most specific target
    /// wins, and any route-level policy overrides gateway-level ones.
    pub fn effective(
        &self,
        route: &NsName,
        rule_name: Option<&str>,
        gw: &NsName,
        listener: &str,
    ) -> Option<&PolicyState> {
        effective_in(&self.winners, route, rule_name, gw, listener).and_then(|p| self.states.get(p))
    }
}

/// Cluster through which Envoy fetches a module from `serve_url`: for https, TLS with the host
/// as SNI, and mutual TLS when [`TranslateOptions::wasm_fetch_tls`] is set.
pub fn fetch_cluster(opts: &TranslateOptions, serve_url: &str) -> Result<ClusterIr, String> {
    let u = url::Url::parse(serve_url).map_err(|e| format!("invalid wasm URL {serve_url}: {e}"))?;
    let host = u
        .host_str()
        .ok_or_else(|| format!("wasm URL {serve_url} has no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = u
        .port_or_known_default()
        .ok_or_else(|| format!("wasm URL {serve_url} has no port"))?;
    let tls = match u.scheme() {
        "http" => None,
        "https" => Some(host.clone()),
        s => return Err(format!("wasm URL {serve_url}: scheme {s} is not supported")),
    };
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

/// Clusters that the built-in modules call, derived from their config so users write none:
/// - oidc (`issuer` + `provider_cluster`): a cluster reaching the issuer's host and port, TLS
///   with SNI for https;
/// - ratelimit (`global.cluster` + controller-only `global.service_address: "host:port"`): an
///   HTTP/2 cluster. `service_address` is removed from the config before it reaches the filter,
///   which rejects unknown fields.
///
/// The names a tenant writes are local to the policy: `provider_cluster` and `global.cluster`
/// are rewritten to `eep/<ns>/<policy>/<name>` in the config the filter gets, so a policy can
/// neither reach nor redefine a cluster it did not cause (another tenant's issuer, a backend, the
/// operator's rate-limit service). A name without the field that defines its cluster is refused
/// for the same reason.
fn module_clusters(
    egress: &crate::egress::EgressPolicy,
    (ns, policy): (&str, &str),
    config: Option<&mut Value>,
) -> Result<Vec<ClusterIr>, String> {
    let Some(Value::Object(cfg)) = config else {
        return Ok(vec![]);
    };
    let scoped = |field: &str, v: &Value| -> Result<String, String> {
        match v.as_str() {
            Some(local) if !local.is_empty() => {
                Ok(super::clusters::extension_policy_cluster(ns, policy, local))
            }
            _ => Err(format!("{field} must be a non-empty string")),
        }
    };
    let mut out = Vec::new();
    // Controller-only, like `service_address`: the filter rejects unknown fields.
    let provider_ca = match cfg.remove("provider_ca") {
        None => None,
        Some(v) => Some(provider_ca(&v)?),
    };
    if let Some(local) = cfg.get("provider_cluster") {
        let name = scoped("provider_cluster", local)?;
        let Some(Value::String(issuer)) = cfg.get("issuer") else {
            return Err(
                "provider_cluster needs issuer: the controller creates the cluster, and a policy cannot name one it did not cause".into(),
            );
        };
        out.push(
            super::builtin::tenant_issuer_cluster(egress, &name, issuer, provider_ca.as_ref())
                .map_err(|e| format!("issuer: {e}"))?,
        );
        cfg.insert("provider_cluster".into(), Value::String(name));
    } else if provider_ca.is_some() {
        return Err("provider_ca needs provider_cluster and issuer".into());
    }
    if let Some(Value::Object(g)) = cfg.get_mut("global") {
        if let Some(local) = g.get("cluster") {
            let name = scoped("global.cluster", local)?;
            let addr = g.remove("service_address").ok_or(
                "global.cluster needs global.service_address: the controller creates the cluster, and a policy cannot name one it did not cause",
            )?;
            let addr = addr
                .as_str()
                .ok_or("global.service_address must be a \"host:port\" string")?;
            out.push(
                super::builtin::tenant_grpc_cluster(egress, &name, addr)
                    .map_err(|e| format!("global.service_address: {e}"))?,
            );
            g.insert("cluster".into(), Value::String(name));
        } else if g.contains_key("service_address") {
            return Err("global.service_address needs global.cluster".into());
        }
    }
    Ok(out)
}

/// A dynamic module's rate limiter keeps its buckets process-wide, shared by every filter that
/// writes the same `namespace`: a tenant could name the victim's (`btp/<ns>/<policy>`) and drain
/// it. The controller prefixes the tenant's value with `eep/<ns>/<policy>/`, which no policy of
/// another namespace can produce (the wasm build scopes by the controller-set plugin name).
fn scope_ratelimit_namespace((ns, policy): (&str, &str), entry: usize, config: Option<&mut Value>) {
    let Some(Value::Object(cfg)) = config else {
        return;
    };
    let local = match cfg.get("namespace") {
        Some(Value::String(n)) => n.clone(),
        _ => format!("#{entry}"),
    };
    let mut scoped = format!("eep/{ns}/{policy}/{local}");
    if scoped.len() > 256 {
        // The filter's limit; a digest keeps it unique and still unforgeable.
        use sha2::Digest;
        let d = sha2::Sha256::digest(scoped.as_bytes());
        scoped = format!(
            "eep/{}",
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
    }
    cfg.insert("namespace".into(), Value::String(scoped));
}

/// `provider_ca`: PEM certificates, or the absolute path of a PEM bundle on Envoy's host.
fn provider_ca(v: &Value) -> Result<crate::ir::TrustedCa, String> {
    match v.as_str().map(str::trim) {
        Some(pem) if pem.starts_with("-----BEGIN CERTIFICATE-----") => {
            Ok(crate::ir::TrustedCa::Pem(pem.to_string()))
        }
        Some(path) if path.starts_with('/') && !path.contains('\n') => {
            Ok(crate::ir::TrustedCa::File(path.to_string()))
        }
        _ => Err(
            "provider_ca must be PEM certificates (-----BEGIN CERTIFICATE-----) or an absolute file path"
                .into(),
        ),
    }
}

fn wasm_source(
    res: &Resources,
    p: &Object<EnvoyExtensionPolicySpec>,
    w: &crate::resources::WasmSpec,
) -> Result<WasmSource, String> {
    let pull_policy = w.code.pull_policy.clone();
    match w.code.type_.as_str() {
        "HTTP" => {
            let h = w
                .code
                .http
                .as_ref()
                .ok_or("code.type HTTP needs code.http")?;
            Ok(WasmSource {
                code_type: WasmCodeType::Http,
                url: h.url.clone(),
                sha256: h.sha256.clone(),
                pull_secret: None,
                pull_policy,
            })
        }
        "Image" => {
            let i = w
                .code
                .image
                .as_ref()
                .ok_or("code.type Image needs code.image")?;
            let pull_secret = i.pull_secret_ref.as_ref().map(|s| {
                (
                    s.namespace
                        .clone()
                        .unwrap_or_else(|| p.namespace().to_string()),
                    s.name.clone(),
                )
            });
            // Registry credentials are a Secret like any other: another namespace's needs its
            // owner's ReferenceGrant, as Envoy Gateway requires.
            if let Some((sns, sname)) = &pull_secret {
                if !super::reference_granted(
                    res,
                    (EG_GROUP, "EnvoyExtensionPolicy", p.namespace()),
                    ("", "Secret", sns, sname),
                ) {
                    return Err(format!(
                        "code.image.pullSecretRef: secret {sns}/{sname} is in another namespace and no ReferenceGrant allows it"
                    ));
                }
            }
            Ok(WasmSource {
                code_type: WasmCodeType::Image,
                url: i.url.clone(),
                sha256: i.sha256.clone(),
                pull_secret,
                pull_policy,
            })
        }
        t => Err(format!("code.type {t:?} is not supported")),
    }
}

fn resolve_targets(
    res: &Resources,
    p: &Object<EnvoyExtensionPolicySpec>,
    gateways: &GatewayMap,
) -> (Vec<TargetKey>, Vec<(PolicyTargetRef, String)>) {
    resolve_targets_for(
        res,
        p.namespace(),
        p.spec.target_ref.as_ref(),
        &p.spec.target_refs,
        &p.spec.target_selectors,
        gateways,
    )
}

/// Resolves a policy's `targetRef`, `targetRefs` and `targetSelectors` (any policy kind).
pub(crate) fn resolve_targets_for(
    res: &Resources,
    ns: &str,
    target_ref: Option<&PolicyTargetRef>,
    target_refs: &[PolicyTargetRef],
    target_selectors: &[crate::resources::TargetSelector],
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
        match (group.as_str(), sel.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway") => {
                for ((gns, name), gw) in &res.gateways {
                    if *gns == ns && selector.matches(&gw.meta.labels) {
                        refs.push(PolicyTargetRef {
                            group: group.clone(),
                            kind: "Gateway".into(),
                            name: name.clone(),
                            section_name: None,
                        });
                    }
                }
            }
            (GATEWAY_GROUP, "HTTPRoute") => {
                for ((rns, name), r) in &res.http_routes {
                    if *rns == ns && selector.matches(&r.meta.labels) {
                        refs.push(PolicyTargetRef {
                            group: group.clone(),
                            kind: "HTTPRoute".into(),
                            name: name.clone(),
                            section_name: None,
                        });
                    }
                }
            }
            (g, k) => not_found.push((
                PolicyTargetRef {
                    group: g.to_string(),
                    kind: k.to_string(),
                    name: String::new(),
                    section_name: None,
                },
                format!("targetSelectors kind {g}/{k} is not supported"),
            )),
        }
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

pub fn resolve(
    res: &Resources,
    opts: &TranslateOptions,
    wasm: &dyn WasmResolver,
    gateways: &GatewayMap,
) -> Policies {
    let mut states = BTreeMap::new();
    let mut wasm_needed = BTreeSet::new();
    for (key, p) in &res.extension_policies {
        let (ns, name) = key;
        let (targets, not_found) = resolve_targets(res, p, gateways);
        let mut st = PolicyState {
            obj: p.clone(),
            targets,
            not_found,
            filters: vec![],
            clusters: vec![],
            problems: vec![],
            unavailable: vec![],
            dynamic: BTreeMap::new(),
            not_ready: vec![],
            cluster_conflicts: vec![],
        };
        if !p.unsupported.is_empty() {
            st.problems
                .push(format!("unsupported fields: {}", p.unsupported.join(", ")));
        }
        for (i, w) in p.spec.wasm.iter().enumerate() {
            let label = w.name.clone().unwrap_or_else(|| i.to_string());
            let src = match wasm_source(res, p, w) {
                Ok(s) => s,
                Err(e) => {
                    st.problems.push(format!("wasm[{i}] {label}: {e}"));
                    continue;
                }
            };
            wasm_needed.insert(src.clone());
            let fail_open = w.fail_open.unwrap_or(false);
            match wasm.resolve(&src) {
                WasmResolution::Ready { sha256, serve_url } => {
                    let cluster = match fetch_cluster(opts, &serve_url) {
                        Ok(c) => c,
                        Err(e) => {
                            st.problems.push(format!("wasm[{i}] {label}: {e}"));
                            continue;
                        }
                    };
                    let mut config = w.config.clone();
                    match module_clusters(&opts.egress, (ns, name), config.as_mut()) {
                        Ok(cs) => {
                            for c in cs {
                                if !st.clusters.contains(&c) {
                                    st.clusters.push(c);
                                }
                            }
                        }
                        Err(e) => {
                            st.problems.push(format!("wasm[{i}] {label}: {e}"));
                            continue;
                        }
                    }
                    let configuration = match &config {
                        None | Some(Value::Null) => String::new(),
                        Some(v) => v.to_string(),
                    };
                    st.filters.push(FilterIr::Wasm(WasmFilterIr {
                        name: format!(
                            "envoy.filters.http.wasm/envoyextensionpolicy/{ns}/{name}/wasm/{i}"
                        ),
                        plugin_name: format!("{ns}/{name}/{label}"),
                        root_id: w.root_id.clone().unwrap_or_default(),
                        vm_id: sha256.clone(),
                        url: serve_url,
                        fetch_cluster: cluster.name.clone(),
                        sha256,
                        configuration,
                        fail_open,
                        host_env_keys: w
                            .env
                            .as_ref()
                            .map(|e| e.host_keys.clone())
                            .unwrap_or_default(),
                    }));
                    if !st.clusters.contains(&cluster) {
                        st.clusters.push(cluster);
                    }
                }
                WasmResolution::Pending => st.unavailable.push((
                    format!(
                        "wasm[{i}] {label}: module {} is not fetched yet",
                        src.shown_url()
                    ),
                    fail_open,
                )),
                WasmResolution::Failed { reason } => st
                    .unavailable
                    .push((format!("wasm[{i}] {label}: {reason}"), fail_open)),
            }
        }
        for (i, l) in p.spec.lua.iter().enumerate() {
            let code = match l.type_.as_str() {
                "Inline" => l
                    .inline
                    .clone()
                    .ok_or_else(|| "type Inline needs inline".to_string()),
                "ValueRef" => match &l.value_ref {
                    None => Err("type ValueRef needs valueRef".to_string()),
                    Some(r)
                        if r.kind.as_deref() != Some("ConfigMap")
                            || !r.group.as_deref().unwrap_or("").is_empty() =>
                    {
                        Err(format!("valueRef kind {:?} is not a ConfigMap", r.kind))
                    }
                    Some(r) => match res.config_maps.get(&(ns.clone(), r.name.clone())) {
                        None => Err(format!("ConfigMap {ns}/{} not found", r.name)),
                        Some(cm) => match (cm.spec.data.get("lua"), cm.spec.data.len()) {
                            (Some(v), _) => Ok(v.clone()),
                            (None, 1) => {
                                Ok(cm.spec.data.values().next().cloned().unwrap_or_default())
                            }
                            _ => Err(format!("ConfigMap {ns}/{} needs a `lua` key", r.name)),
                        },
                    },
                },
                t => Err(format!("type {t:?} is not supported")),
            };
            match code {
                Ok(code) => st.filters.push(FilterIr::Lua(LuaFilterIr {
                    name: format!(
                        "envoy.filters.http.lua/envoyextensionpolicy/{ns}/{name}/lua/{i}"
                    ),
                    code,
                })),
                Err(e) => st.problems.push(format!("lua[{i}]: {e}")),
            }
        }
        resolve_dynamic(res, opts, wasm, gateways, &mut st, &mut wasm_needed);
        states.insert(key.clone(), st);
    }

    let winners = pick_winners(
        states
            .iter()
            .map(|(k, st)| (k, &st.obj.meta, st.targets.as_slice())),
    );
    Policies {
        states,
        winners,
        wasm_needed,
    }
}

/// `dynamicModule[]`: configs (with their derived clusters) once, filters per reached Gateway.
fn resolve_dynamic(
    res: &Resources,
    opts: &TranslateOptions,
    resolver: &dyn WasmResolver,
    gateways: &GatewayMap,
    st: &mut PolicyState,
    needed: &mut BTreeSet<WasmSource>,
) {
    let specs = &st.obj.spec.dynamic_module;
    if specs.is_empty() {
        return;
    }
    let key = st.obj.key();
    let mut configs = Vec::new();
    for (i, dm) in specs.iter().enumerate() {
        if dm.terminal_filter == Some(true) {
            st.problems.push(format!(
                "dynamicModule[{i}] {}: terminalFilter is not supported",
                dm.name
            ));
        }
        let mut config = dm.config.clone();
        match module_clusters(&opts.egress, (&key.0, &key.1), config.as_mut()) {
            Ok(cs) => {
                for c in cs {
                    if !st.clusters.contains(&c) {
                        st.clusters.push(c);
                    }
                }
            }
            Err(e) => st
                .problems
                .push(format!("dynamicModule[{i}] {}: {e}", dm.name)),
        }
        if dm.filter_name.as_deref() == Some("ratelimit") {
            scope_ratelimit_namespace((&key.0, &key.1), i, config.as_mut());
        }
        configs.push(match &config {
            None | Some(Value::Null) => String::new(),
            Some(v) => v.to_string(),
        });
    }
    let reached = super::dynamic::reached_gateways(res, &st.targets, gateways);
    for gw in reached {
        match super::dynamic::filters_for_gateway(
            res, &gw, &key, specs, &configs, opts, resolver, needed,
        ) {
            Ok(f) => {
                for m in &f.not_ready {
                    if !st.not_ready.contains(m) {
                        st.not_ready.push(m.clone());
                    }
                }
                st.dynamic.insert(gw, f);
            }
            Err(e) => {
                if !st.problems.contains(&e) {
                    st.problems.push(e);
                }
            }
        }
    }
}

/// Oldest policy wins each exact target.
pub(crate) fn pick_winners<'a>(
    policies: impl Iterator<
        Item = (
            &'a NsName,
            &'a crate::resources::ObjectMeta,
            &'a [TargetKey],
        ),
    >,
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
pub(crate) fn effective_in<'a>(
    winners: &'a BTreeMap<TargetKey, NsName>,
    route: &NsName,
    rule_name: Option<&str>,
    gw: &NsName,
    listener: &str,
) -> Option<&'a NsName> {
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
    routes: &super::routes::RouteOutput,
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

pub fn statuses(
    res: &Resources,
    opts: &TranslateOptions,
    pols: &Policies,
    gateways: &GatewayMap,
    routes: &super::routes::RouteOutput,
) -> Vec<ResourceStatus> {
    let mut out = Vec::new();
    for (key, st) in &pols.states {
        let base = if let Some(c) = super::clusters::conflict_condition(&st.cluster_conflicts) {
            c
        } else if !st.problems.is_empty() {
            Condition::new("Accepted", false, "Invalid", st.problems.join("; "))
        } else if !st.unavailable.is_empty() {
            let msgs: Vec<String> = st
                .unavailable
                .iter()
                .map(|(m, open)| format!("{m} (failOpen: {open})"))
                .collect();
            Condition::new("Accepted", false, "Invalid", msgs.join("; "))
        } else if !st.not_ready.is_empty() {
            Condition::new(
                "Accepted",
                false,
                "Invalid",
                format!(
                    "{}; Envoy keeps its last good configuration until the module can be loaded",
                    st.not_ready.join("; ")
                ),
            )
        } else {
            Condition::new("Accepted", true, "Accepted", "Policy has been accepted.")
        };
        out.push(policy_status(
            &PolicyStatusInput {
                res,
                opts,
                gateways,
                routes,
                kind: "EnvoyExtensionPolicy",
                key,
                generation: st.obj.meta.generation,
                targets: &st.targets,
                not_found: &st.not_found,
                winners: &pols.winners,
            },
            base,
            &[],
        ));
    }
    out
}

pub(crate) struct PolicyStatusInput<'a> {
    pub res: &'a Resources,
    pub opts: &'a TranslateOptions,
    pub gateways: &'a GatewayMap,
    pub routes: &'a super::routes::RouteOutput,
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
pub(crate) fn policy_status(
    input: &PolicyStatusInput<'_>,
    base: Condition,
    extra: &[Condition],
) -> ResourceStatus {
    let PolicyStatusInput {
        res,
        opts,
        gateways,
        routes,
        kind,
        key,
        generation,
        targets,
        not_found,
        winners,
    } = input;
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
        status: json!({ "ancestors": ancestors.into_values().collect::<Vec<_>>() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ClientTlsFiles;
    use crate::xds::builder::build_cluster;
    use crate::xds::render::resource_json;
    use crate::xds::snapshot::CLUSTER_TYPE;
    use prost::Message;

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
        let c = super::super::builtin::tenant_issuer_cluster(
            &crate::egress::EgressPolicy::permissive(),
            "oidc/x",
            "https://iam.example.com/",
            None,
        )
        .unwrap();
        assert_eq!(c.tls_client, None);
    }
}
