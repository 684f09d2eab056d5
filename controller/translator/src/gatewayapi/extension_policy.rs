//! EnvoyExtensionPolicy: wasm, lua and dynamic-module filters and their fetch state. Targets,
//! precedence and statuses are [`super::attach`]'s.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::attach::{Layer, Policy, PolicyKind, PolicySet, Rendered, ResolveCtx, TargetKey};
use super::{clusters, dynamic};
use crate::ir::{ClusterIr, FilterIr, LuaFilterIr, WasmFilterIr};
use crate::resources::{EnvoyExtensionPolicySpec, NsName, Object, Resources, EG_GROUP};
use crate::status::Condition;
use crate::wasm::source::{WasmCodeType, WasmResolution, WasmSource};

/// What an EnvoyExtensionPolicy resolved to.
#[derive(PartialEq)]
pub struct PolicyState {
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
    pub dynamic: BTreeMap<NsName, dynamic::GatewayFilters>,
    /// Remote dynamic modules Envoy cannot load yet (pending or failed fetch). Not blocking:
    /// Envoy rejects the update and keeps its last good configuration.
    pub not_ready: Vec<String>,
    /// Whether the policy has `dynamicModule[]` entries.
    pub has_dynamic: bool,
}

/// EnvoyExtensionPolicy as a [`PolicyKind`]: the middle layer of the chain.
pub(crate) struct ExtensionPolicyKind;

pub(crate) type Policies = PolicySet<ExtensionPolicyKind>;

impl PolicyKind for ExtensionPolicyKind {
    const KIND: &'static str = "EnvoyExtensionPolicy";
    const LAYER: Layer = Layer::Extension;
    type Spec = EnvoyExtensionPolicySpec;
    type State = PolicyState;

    fn resolve(
        ctx: &ResolveCtx<'_>,
        p: &Object<EnvoyExtensionPolicySpec>,
        targets: &[TargetKey],
        wasm_needed: &mut BTreeSet<WasmSource>,
    ) -> PolicyState {
        let ResolveCtx {
            res, opts, wasm, ..
        } = *ctx;
        let key = p.key();
        let (ns, name) = (&key.0, &key.1);
        let mut st = PolicyState {
            filters: vec![],
            clusters: vec![],
            problems: vec![],
            unavailable: vec![],
            dynamic: BTreeMap::new(),
            not_ready: vec![],
            has_dynamic: !p.spec.dynamic_module.is_empty(),
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
                    let cluster = match clusters::fetch_cluster(opts, &serve_url) {
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
        resolve_dynamic(ctx, p, targets, &mut st, wasm_needed);
        st
    }

    /// Targeted routes answer an error rather than run without a fail-closed filter.
    fn blocks(st: &PolicyState) -> bool {
        !st.problems.is_empty() || st.unavailable.iter().any(|(_, fail_open)| !fail_open)
    }

    fn clusters(st: &PolicyState) -> Vec<&ClusterIr> {
        st.clusters
            .iter()
            .chain(st.dynamic.values().flat_map(|d| &d.clusters))
            .collect()
    }

    fn accepted(st: &PolicyState) -> Condition {
        if !st.problems.is_empty() {
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
        }
    }

    /// The wasm and lua filters, then the Gateway's dynamic-module filters. A policy whose
    /// dynamic modules do not apply on `gw` blocks the route; its other filters stay in the
    /// chain (unused by the route), as they always have.
    fn render<'a>(p: &'a Policy<Self>, gw: &NsName, _route: &str) -> Rendered<'a> {
        let st = &p.state;
        let mut out = Rendered {
            filters: st
                .filters
                .iter()
                .enumerate()
                .map(|(fi, f)| (format!("{fi:06}"), f.clone()))
                .collect(),
            clusters: st.clusters.iter().collect(),
            ..Default::default()
        };
        if st.has_dynamic {
            match st.dynamic.get(gw) {
                Some(d) => {
                    out.filters.extend(
                        d.filters
                            .iter()
                            .enumerate()
                            .map(|(fi, f)| (format!("d{fi:06}"), f.clone())),
                    );
                    out.clusters.extend(&d.clusters);
                }
                None => out.blocked = true,
            }
        }
        out
    }
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
                Ok(clusters::extension_policy_cluster(ns, policy, local))
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
            clusters::tenant_issuer_cluster(egress, &name, issuer, provider_ca.as_ref())
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
                clusters::tenant_grpc_cluster(egress, &name, addr)
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

/// `dynamicModule[]`: configs (with their derived clusters) once, filters per reached Gateway.
fn resolve_dynamic(
    ctx: &ResolveCtx<'_>,
    p: &Object<EnvoyExtensionPolicySpec>,
    targets: &[TargetKey],
    st: &mut PolicyState,
    needed: &mut BTreeSet<WasmSource>,
) {
    let ResolveCtx {
        res,
        opts,
        wasm: resolver,
        gateways,
        ..
    } = *ctx;
    let specs = &p.spec.dynamic_module;
    if specs.is_empty() {
        return;
    }
    let key = p.key();
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
    let reached = dynamic::reached_gateways(res, targets, gateways);
    for gw in reached {
        match dynamic::filters_for_gateway(res, &gw, &key, specs, &configs, opts, resolver, needed)
        {
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
