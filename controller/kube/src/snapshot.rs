//! The resource snapshot handed to the translator: every watched object that matters to our
//! GatewayClasses, as plain JSON with `apiVersion`/`kind`, sorted for deterministic translation.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Identity of an object: API group (without version), kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group: group.to_string(),
            kind: kind.to_string(),
            namespace: namespace.filter(|n| !n.is_empty()).map(str::to_string),
            name: name.to_string(),
        }
    }

    /// The key of a JSON object (`apiVersion`, `kind`, `metadata.namespace`, `metadata.name`).
    pub fn of(obj: &Value) -> Option<Self> {
        let api_version = obj.get("apiVersion")?.as_str()?;
        let kind = obj.get("kind")?.as_str()?;
        let meta = obj.get("metadata")?;
        let name = meta.get("name")?.as_str()?;
        let namespace = meta.get("namespace").and_then(Value::as_str);
        Some(Self::new(group_of(api_version), kind, namespace, name))
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// `gateway.networking.k8s.io/v1` -> `gateway.networking.k8s.io`; `v1` -> ``.
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

/// A consistent set of objects (one debounced batch of watch events).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    objects: BTreeMap<ObjectKey, Value>,
}

impl Snapshot {
    /// Build from objects; ones without apiVersion/kind/name are dropped (logged).
    pub fn from_objects(objects: impl IntoIterator<Item = Value>) -> Self {
        let mut map = BTreeMap::new();
        for obj in objects {
            match ObjectKey::of(&obj) {
                Some(k) => {
                    map.insert(k, obj);
                }
                None => tracing::warn!("dropping an object without apiVersion/kind/name"),
            }
        }
        Self { objects: map }
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(key)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Value)> {
        self.objects.iter()
    }

    /// Objects of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |(k, _)| k.kind == kind)
            .map(|(_, v)| v)
    }

    /// The objects as JSON values (sorted by group, kind, namespace, name).
    pub fn to_values(&self) -> Vec<Value> {
        self.objects.values().cloned().collect()
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn ns_of(v: &Value) -> Option<&str> {
    str_at(v, &["metadata", "namespace"])
}

fn name_of(v: &Value) -> Option<&str> {
    str_at(v, &["metadata", "name"])
}

/// Keep only what belongs to GatewayClasses with `controller_name`:
/// - GatewayClasses with our controllerName, Gateways of those classes;
/// - HTTPRoutes with a parentRef to one of those Gateways;
/// - policies targeting one of those Gateways or routes (or using targetSelectors, which the
///   translator resolves), EnvoyProxies referenced by our classes or Gateways;
/// - supporting objects (Services, EndpointSlices, Backends, ReferenceGrants, Namespaces,
///   ConfigMaps, Secrets) are kept as is: the translator resolves references and grants; which of
///   them matter depends on the routes, so filtering them here would duplicate its logic.
///
/// Everything else, in particular other controllers' classes, Gateways and routes, is dropped, so
/// nothing is computed or written for it.
pub fn relevant(all: &Snapshot, controller_name: &str) -> Snapshot {
    let classes: BTreeSet<&str> = all
        .of_kind("GatewayClass")
        .filter(|gc| str_at(gc, &["spec", "controllerName"]) == Some(controller_name))
        .filter_map(name_of)
        .collect();
    let gateways: BTreeSet<(String, String)> = all
        .of_kind("Gateway")
        .filter(|g| str_at(g, &["spec", "gatewayClassName"]).is_some_and(|c| classes.contains(c)))
        .filter_map(|g| Some((ns_of(g)?.to_string(), name_of(g)?.to_string())))
        .collect();
    let route_attached = |r: &Value| {
        let ns = ns_of(r).unwrap_or_default();
        r.pointer("/spec/parentRefs")
            .and_then(Value::as_array)
            .is_some_and(|refs| {
                refs.iter().any(|p| {
                    let kind = p.get("kind").and_then(Value::as_str).unwrap_or("Gateway");
                    let group = p
                        .get("group")
                        .and_then(Value::as_str)
                        .unwrap_or("gateway.networking.k8s.io");
                    let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                    let pns = p.get("namespace").and_then(Value::as_str).unwrap_or(ns);
                    kind == "Gateway"
                        && group == "gateway.networking.k8s.io"
                        && gateways.contains(&(pns.to_string(), name.to_string()))
                })
            })
    };
    let routes: BTreeSet<(String, String)> = all
        .of_kind("HTTPRoute")
        .filter(|r| route_attached(r))
        .filter_map(|r| Some((ns_of(r)?.to_string(), name_of(r)?.to_string())))
        .collect();
    let policy_relevant = |p: &Value| {
        let ns = ns_of(p).unwrap_or_default();
        if p.pointer("/spec/targetSelectors")
            .and_then(Value::as_array)
            .is_some_and(|s| !s.is_empty())
        {
            return true;
        }
        let single = p.pointer("/spec/targetRef").into_iter();
        let many = p
            .pointer("/spec/targetRefs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        single.chain(many).any(|t| {
            let kind = t.get("kind").and_then(Value::as_str).unwrap_or_default();
            let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
            let key = (ns.to_string(), name.to_string());
            match kind {
                "Gateway" => gateways.contains(&key),
                "HTTPRoute" => routes.contains(&key),
                _ => false,
            }
        })
    };
    let mut proxies: BTreeSet<(String, String)> = BTreeSet::new();
    for gc in all.of_kind("GatewayClass") {
        if name_of(gc).is_some_and(|n| classes.contains(n)) {
            if let Some(p) = gc.pointer("/spec/parametersRef") {
                if p.get("kind").and_then(Value::as_str) == Some("EnvoyProxy") {
                    let ns = p
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                    proxies.insert((ns.to_string(), name.to_string()));
                }
            }
        }
    }
    for g in all.of_kind("Gateway") {
        let (Some(ns), Some(name)) = (ns_of(g), name_of(g)) else {
            continue;
        };
        if !gateways.contains(&(ns.to_string(), name.to_string())) {
            continue;
        }
        if let Some(p) = g.pointer("/spec/infrastructure/parametersRef") {
            if p.get("kind").and_then(Value::as_str) == Some("EnvoyProxy") {
                let pname = p.get("name").and_then(Value::as_str).unwrap_or_default();
                proxies.insert((ns.to_string(), pname.to_string()));
            }
        }
    }

    let keep = |k: &ObjectKey, v: &Value| -> bool {
        let key = || (k.namespace.clone().unwrap_or_default(), k.name.clone());
        match k.kind.as_str() {
            "GatewayClass" => classes.contains(k.name.as_str()),
            "Gateway" => gateways.contains(&key()),
            "HTTPRoute" => routes.contains(&key()),
            "EnvoyExtensionPolicy" | "SecurityPolicy" | "BackendTrafficPolicy" => {
                policy_relevant(v)
            }
            "EnvoyProxy" => proxies.contains(&key()),
            _ => true,
        }
    };
    Snapshot {
        objects: all
            .objects
            .iter()
            .filter(|(k, v)| keep(k, v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gc(name: &str, ctrl: &str) -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": name}, "spec": {"controllerName": ctrl}})
    }
    fn gw(ns: &str, name: &str, class: &str) -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"gatewayClassName": class, "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})
    }
    fn route(ns: &str, name: &str, parent_ns: Option<&str>, parent: &str) -> Value {
        let mut p = json!({"name": parent});
        if let Some(pns) = parent_ns {
            p["namespace"] = json!(pns);
        }
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": name, "namespace": ns}, "spec": {"parentRefs": [p]}})
    }
    fn eep(ns: &str, name: &str, kind: &str, target: &str) -> Value {
        json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyExtensionPolicy",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": kind, "name": target}]}})
    }

    #[test]
    fn only_our_classes_gateways_routes_and_policies_are_kept() {
        let ours = "portcullis.dev/gatewayclass-controller";
        let all = Snapshot::from_objects([
            gc("pc", ours),
            gc("eg", "gateway.envoyproxy.io/gatewayclass-controller"),
            gw("infra", "web", "pc"),
            gw("infra", "other", "eg"),
            route("apps", "a", Some("infra"), "web"),
            route("apps", "b", Some("infra"), "other"),
            route("infra", "c", None, "web"),
            eep("apps", "p-route", "HTTPRoute", "a"),
            eep("apps", "p-other", "HTTPRoute", "b"),
            eep("infra", "p-gw", "Gateway", "web"),
            eep("infra", "p-gw-other", "Gateway", "other"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "apps"}}),
        ]);
        let rel = relevant(&all, ours);
        let names: Vec<String> = rel.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(
            names,
            [
                "Service apps/s",
                "EnvoyExtensionPolicy apps/p-route",
                "EnvoyExtensionPolicy infra/p-gw",
                "Gateway infra/web",
                "GatewayClass pc",
                "HTTPRoute apps/a",
                "HTTPRoute infra/c",
            ]
        );
        assert_eq!(rel.to_values().len(), 7);
    }
}
