//! Fleet parameters: defaults, the Gateway's `spec.infrastructure`, and the EnvoyProxy the
//! Gateway or its GatewayClass references.

use std::collections::BTreeMap;

use serde_json::Value;

use super::InfraConfig;
use crate::snapshot::{ObjectKey, Snapshot};

/// Fleet parameters after merging defaults, the Gateway's infrastructure and the EnvoyProxy.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetParams {
    pub replicas: i64,
    pub image: String,
    pub resources: Option<Value>,
    pub service_type: String,
    pub service_annotations: BTreeMap<String, String>,
    pub log_level: String,
    /// `spec.infrastructure.labels` / `.annotations` of the Gateway: put on every fleet object.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// EnvoyProxy fields the fleet does not implement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedParams {
    pub gateway_class: String,
    pub envoy_proxy: String,
    pub fields: Vec<String>,
}

const SUPPORTED_EXACT: [&str; 6] = [
    "spec.provider.type",
    "spec.provider.kubernetes.envoyDeployment.replicas",
    "spec.provider.kubernetes.envoyDeployment.container.image",
    "spec.provider.kubernetes.envoyService.type",
    "spec.logging.level.default",
    "spec.provider.kubernetes.envoyService.annotations",
];
const SUPPORTED_SUBTREES: [&str; 3] = [
    "spec.provider.kubernetes.envoyDeployment.container.resources",
    "spec.provider.kubernetes.envoyService.annotations",
    // Read by the translator (the dynamic-module registry), not by the fleet.
    "spec.dynamicModules",
];

fn leaf_paths(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                leaf_paths(v, format!("{path}.{k}"), out);
            }
        }
        _ => out.push(path),
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Merge defaults, the Gateway's `spec.infrastructure` and an EnvoyProxy into fleet parameters,
/// and list the EnvoyProxy fields (dotted paths) that are not supported.
pub fn fleet_params(
    cfg: &InfraConfig,
    gateway: &Value,
    envoy_proxy: Option<&Value>,
) -> (FleetParams, Vec<String>) {
    let infra = gateway.pointer("/spec/infrastructure");
    let mut p = FleetParams {
        replicas: 1,
        image: cfg.envoy_image.clone(),
        resources: None,
        service_type: "LoadBalancer".into(),
        service_annotations: BTreeMap::new(),
        log_level: "warn".into(),
        labels: string_map(infra.and_then(|i| i.get("labels"))),
        annotations: string_map(infra.and_then(|i| i.get("annotations"))),
    };
    let mut unsupported = Vec::new();
    if let Some(ep) = envoy_proxy {
        let k = |path: &str| ep.pointer(&format!("/spec/provider/kubernetes{path}"));
        if let Some(r) = k("/envoyDeployment/replicas").and_then(Value::as_i64) {
            p.replicas = r.max(0);
        }
        if let Some(i) = k("/envoyDeployment/container/image").and_then(Value::as_str) {
            p.image = i.to_string();
        }
        if let Some(r) = k("/envoyDeployment/container/resources") {
            p.resources = Some(r.clone());
        }
        if let Some(t) = k("/envoyService/type").and_then(Value::as_str) {
            p.service_type = t.to_string();
        }
        p.service_annotations = string_map(k("/envoyService/annotations"));
        if let Some(l) = ep
            .pointer("/spec/logging/level/default")
            .and_then(Value::as_str)
        {
            p.log_level = l.to_string();
        }
        if let Some(t) = ep.pointer("/spec/provider/type").and_then(Value::as_str) {
            if t != "Kubernetes" {
                unsupported.push(format!("spec.provider.type={t}"));
            }
        }
        let mut leaves = Vec::new();
        if let Some(spec) = ep.get("spec") {
            leaf_paths(spec, "spec".into(), &mut leaves);
        }
        for leaf in leaves {
            let ok = SUPPORTED_EXACT.contains(&leaf.as_str())
                || SUPPORTED_SUBTREES
                    .iter()
                    .any(|s| leaf.starts_with(&format!("{s}.")) || leaf == *s);
            if !ok {
                unsupported.push(leaf);
            }
        }
    }
    (p, unsupported)
}

/// The EnvoyProxy that parameterizes `gateway` (its own `spec.infrastructure.parametersRef`, else
/// its GatewayClass's `spec.parametersRef`) and its `namespace/name` for messages.
pub fn envoy_proxy<'a>(
    snapshot: &'a Snapshot,
    gateway: &Value,
    ns: &str,
) -> (Option<&'a Value>, String) {
    let lookup = |ns: &str, name: &str| {
        snapshot.get(&ObjectKey::new(
            crate::types::EG_GROUP,
            "EnvoyProxy",
            Some(ns),
            name,
        ))
    };
    if let Some(r) = gateway.pointer("/spec/infrastructure/parametersRef") {
        if r.get("kind").and_then(Value::as_str) == Some("EnvoyProxy") {
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            return (lookup(ns, name), format!("{ns}/{name}"));
        }
    }
    let class = gateway
        .pointer("/spec/gatewayClassName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let gc = snapshot.get(&ObjectKey::new(
        "gateway.networking.k8s.io",
        "GatewayClass",
        None,
        class,
    ));
    if let Some(r) = gc.and_then(|g| g.pointer("/spec/parametersRef")) {
        if r.get("kind").and_then(Value::as_str) == Some("EnvoyProxy") {
            let pns = r
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            return (lookup(pns, name), format!("{pns}/{name}"));
        }
    }
    (None, String::new())
}
