//! Dynamic modules: the registry (`EnvoyProxy.spec.dynamicModules`) a Gateway uses, and the
//! filters an EnvoyExtensionPolicy's `dynamicModule[]` makes from it.
//!
//! Semantics follow Envoy Gateway v1.9: a policy naming a module that the Gateway's registry
//! lacks is rejected and its routes answer 500; `Local` modules load from a path on the Envoy;
//! `Remote` ones must pin a sha256. Unlike Envoy Gateway, the controller fetches and verifies
//! `Remote` modules and serves them to Envoy, which loads them with `nack_on_cache_miss`.

use std::collections::BTreeSet;

use serde_json::Value;

use super::attach::TargetKey;
use super::clusters::fetch_cluster;
use super::GatewayMap;
use crate::ir::{ClusterIr, DynamicFilterIr, DynamicModuleIr, FilterIr, ModuleSourceIr};
use crate::resources::{
    DynamicModuleEntry, DynamicModuleSpec, EnvoyProxySpec, NsName, Object, Resources, EG_GROUP,
};
use crate::wasm::source::{
    redact_userinfo, WasmCodeType, WasmResolution, WasmResolver, WasmSource,
};
use crate::TranslateOptions;

/// The EnvoyProxy that parameterizes Gateway `gw`: the Gateway's own
/// `spec.infrastructure.parametersRef` (same namespace), else its GatewayClass's
/// `spec.parametersRef`. `Ok(None)`: neither names one. `Err`: the named one does not exist.
pub(crate) fn envoy_proxy_for<'a>(
    res: &'a Resources,
    gw: &NsName,
) -> Result<Option<&'a Object<EnvoyProxySpec>>, String> {
    let Some(g) = res.gateways.get(gw) else {
        return Ok(None);
    };
    let lookup = |key: NsName, by: String| {
        res.envoy_proxies
            .get(&key)
            .map(|o| Some(&**o))
            .ok_or_else(|| format!("EnvoyProxy {}/{} ({by}) not found", key.0, key.1))
    };
    if let Some(r) = g
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
        .filter(|r| r.group == EG_GROUP && r.kind == "EnvoyProxy")
    {
        return lookup(
            (gw.0.clone(), r.name.clone()),
            format!("parametersRef of Gateway {}/{}", gw.0, gw.1),
        );
    }
    let class = &g.spec.gateway_class_name;
    let pref = res
        .gateway_classes
        .get(class)
        .and_then(|c| c.spec.parameters_ref.as_ref());
    match pref.map(class_parameters) {
        Some(Ok(Some(key))) => lookup(key, format!("parametersRef of GatewayClass {class}")),
        Some(Err(why)) => Err(format!("GatewayClass {class}: {why}")),
        Some(Ok(None)) | None => Ok(None),
    }
}

/// What a GatewayClass `spec.parametersRef` names: `Ok(Some)` an EnvoyProxy (which must name
/// its namespace: the class is cluster-scoped), `Ok(None)` another kind, `Err` an EnvoyProxy
/// reference without a namespace.
pub(crate) fn class_parameters(r: &Value) -> Result<Option<NsName>, String> {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
    if s("group") != EG_GROUP || s("kind") != "EnvoyProxy" {
        return Ok(None);
    }
    if s("namespace").is_empty() {
        return Err(format!(
            "spec.parametersRef to EnvoyProxy {:?} must set a namespace",
            s("name")
        ));
    }
    Ok(Some((s("namespace").to_string(), s("name").to_string())))
}

/// Gateways a policy's targets reach: targeted Gateways, and the parent Gateways of targeted
/// routes.
pub(crate) fn reached_gateways(
    res: &Resources,
    targets: &[TargetKey],
    gateways: &GatewayMap,
) -> BTreeSet<NsName> {
    let mut out = BTreeSet::new();
    for t in targets {
        match t {
            TargetKey::Gateway(g, _) => {
                out.insert(g.clone());
            }
            TargetKey::Route(r, _) => {
                let Some(route) = res.http_routes.get(r) else {
                    continue;
                };
                for pr in &route.spec.parent_refs {
                    let key = (
                        pr.namespace.clone().unwrap_or_else(|| r.0.clone()),
                        pr.name.clone(),
                    );
                    if pr.kind.as_deref().unwrap_or("Gateway") == "Gateway"
                        && gateways.contains_key(&key)
                    {
                        out.insert(key);
                    }
                }
            }
        }
    }
    out
}

/// A module of one Gateway's registry, ready to be referenced by filters.
pub(crate) struct ResolvedModule {
    pub module: DynamicModuleIr,
    /// The cluster Envoy fetches a `Remote` module through.
    pub cluster: Option<ClusterIr>,
    /// Why Envoy will not load it yet (fetch pending or failed). The filter is still
    /// programmed: Envoy rejects the update and keeps its last good configuration.
    pub not_ready: Option<String>,
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Resolves a registry entry: validates it as Envoy Gateway does and, for `Remote`, asks the
/// resolver (the controller's module cache) for it.
pub(crate) fn resolve_entry(
    entry: &DynamicModuleEntry,
    opts: &TranslateOptions,
    resolver: &dyn WasmResolver,
    needed: &mut BTreeSet<WasmSource>,
) -> Result<ResolvedModule, String> {
    let name = &entry.name;
    let module = |source| DynamicModuleIr {
        source,
        // Always: a dlclose while module threads or statics are live is unsafe (see
        // docs/dynamic-module.md), and Envoy Gateway's own guide sets it.
        do_not_close: true,
        load_globally: entry.load_globally.unwrap_or(false),
    };
    match entry.source.type_.as_deref().unwrap_or("Local") {
        "Local" => {
            let local =
                entry.source.local.as_ref().ok_or_else(|| {
                    format!("dynamic module {name:?} has no local source configured")
                })?;
            if !local.path.starts_with('/') {
                return Err(format!(
                    "dynamic module {name:?}: local path {:?} is not absolute",
                    local.path
                ));
            }
            Ok(ResolvedModule {
                module: module(ModuleSourceIr::Local {
                    path: local.path.clone(),
                }),
                cluster: None,
                not_ready: None,
            })
        }
        "Remote" => {
            let remote = entry.source.remote.as_ref().ok_or_else(|| {
                format!("dynamic module {name:?} has no remote source configured")
            })?;
            if !is_sha256(&remote.sha256) {
                return Err(format!(
                    "dynamic module {name:?}: remote sha256 must be 64 lowercase hex characters"
                ));
            }
            let u = url::Url::parse(&remote.url).map_err(|e| {
                format!(
                    "dynamic module {name:?} has invalid remote source URL {:?}: {e}",
                    redact_userinfo(&remote.url)
                )
            })?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                return Err(format!(
                    "dynamic module {name:?} has invalid remote source URL {:?}: it must be http(s) with a host",
                    redact_userinfo(&remote.url)
                ));
            }
            let src = WasmSource {
                code_type: WasmCodeType::DynamicModule,
                url: remote.url.clone(),
                sha256: Some(remote.sha256.clone()),
                pull_secret: None,
                pull_policy: None,
            };
            needed.insert(src.clone());
            let (serve_url, not_ready) = match resolver.resolve(&src) {
                WasmResolution::Ready { serve_url, .. } => (serve_url, None),
                other => {
                    let why = match other {
                        WasmResolution::Failed { reason } => reason,
                        _ => format!("{} is not fetched yet", redact_userinfo(&remote.url)),
                    };
                    let url = resolver
                        .serve_url_for(&WasmCodeType::DynamicModule, &remote.sha256)
                        .ok_or_else(|| format!("dynamic module {name:?}: {why}"))?;
                    (url, Some(format!("dynamic module {name:?}: {why}")))
                }
            };
            let cluster = fetch_cluster(opts, &serve_url)
                .map_err(|e| format!("dynamic module {name:?}: {e}"))?;
            Ok(ResolvedModule {
                module: module(ModuleSourceIr::Remote {
                    url: serve_url,
                    fetch_cluster: cluster.name.clone(),
                    sha256: remote.sha256.clone(),
                }),
                cluster: Some(cluster),
                not_ready,
            })
        }
        t => Err(format!(
            "dynamic module {name:?} has unsupported source type {t:?}"
        )),
    }
}

/// The filters of `dynamicModule[]` for one Gateway, with the clusters they need and the
/// reasons Envoy may not load them yet. `Err`: the policy cannot apply on this Gateway.
#[derive(PartialEq)]
pub(crate) struct GatewayFilters {
    pub filters: Vec<FilterIr>,
    pub clusters: Vec<ClusterIr>,
    pub not_ready: Vec<String>,
}

/// Builds `dynamicModule[]` of policy `ns/name` for Gateway `gw`. `configs[i]` is entry `i`'s
/// config after the controller-only fields were taken out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn filters_for_gateway(
    res: &Resources,
    gw: &NsName,
    (ns, name): &NsName,
    specs: &[DynamicModuleSpec],
    configs: &[String],
    opts: &TranslateOptions,
    resolver: &dyn WasmResolver,
    needed: &mut BTreeSet<WasmSource>,
) -> Result<GatewayFilters, String> {
    let proxy = envoy_proxy_for(res, gw)?;
    let registry = proxy
        .map(|p| p.spec.dynamic_modules.as_slice())
        .unwrap_or(&[]);
    let mut out = GatewayFilters {
        filters: vec![],
        clusters: vec![],
        not_ready: vec![],
    };
    let mut errs = Vec::new();
    for (i, (dm, config)) in specs.iter().zip(configs).enumerate() {
        let Some(entry) = registry.iter().find(|e| e.name == dm.name) else {
            errs.push(format!(
                "dynamic module {:?} is not registered in the EnvoyProxy dynamicModules allowlist",
                dm.name
            ));
            continue;
        };
        match resolve_entry(entry, opts, resolver, needed) {
            Ok(m) => {
                out.filters.push(FilterIr::Dynamic(DynamicFilterIr {
                    name: format!(
                        "envoy.filters.http.dynamic_modules/envoyextensionpolicy/{ns}/{name}/dynamic-module/{i}"
                    ),
                    module: m.module,
                    filter_name: dm.filter_name.clone().unwrap_or_default(),
                    config: config.clone(),
                }));
                if let Some(c) = m.cluster {
                    if !out.clusters.contains(&c) {
                        out.clusters.push(c);
                    }
                }
                out.not_ready.extend(m.not_ready);
            }
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        let on = if proxy.is_none() {
            format!(" (Gateway {}/{} has no EnvoyProxy)", gw.0, gw.1)
        } else {
            String::new()
        };
        Err(format!("{}{on}", errs.join("; ")))
    }
}
