//! The managed Envoy fleet: for each of our Gateways, in the Gateway's namespace (Envoy Gateway's
//! "GatewayNamespace" mode), a ServiceAccount, a `kubernetes.io/tls` Secret with the fleet's xDS
//! client certificate, a ConfigMap with the Envoy bootstrap, a Service and a Deployment. Every
//! object has a controller owner reference to the Gateway, so deleting the Gateway deletes its
//! fleet (Kubernetes garbage collection; `blockOwnerDeletion` is left unset, so no extra RBAC on
//! `gateways/finalizers` is needed). Objects are written with server-side apply.
//!
//! With [`InfraConfig::network_policy`] set (`--fleet-network-policy`), each fleet also gets a
//! NetworkPolicy selecting its pods: ingress only on the Gateway's listener ports (from anywhere:
//! it is the Gateway) and, from the namespaces configured for scraping, on the readiness/metrics
//! port [`READY_PORT`]. Envoy admin is a unix socket ([`ADMIN_SOCKET`]), never a port, so no rule
//! concerns it. Egress is not restricted: upstreams are whatever the routes name.
//!
//! Fleet parameters come from an EnvoyProxy referenced by the Gateway
//! (`spec.infrastructure.parametersRef`) or else by its GatewayClass (`spec.parametersRef`).
//! Supported: replicas, container image and resources, Service type and annotations, log level.
//! Any other EnvoyProxy field is reported ([`UnsupportedParams`]) and turned into a condition on
//! the GatewayClass by [`add_param_conditions`], never silently ignored.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::backoff::Backoff;
use crate::certs::{needs_renewal, CertAuthority, IssuedCert, LEAF_VALIDITY, NOT_AFTER_ANNOTATION};
use crate::error::{Error, Result};
use crate::leader::LeaderState;
use crate::snapshot::{ObjectKey, Snapshot};
use crate::status::{RecordMeta, StatusRecord};

/// Where the fleet's certificates are mounted in the Envoy container.
pub const CERT_DIR: &str = "/etc/envoy/certs";
/// Where the bootstrap ConfigMap is mounted.
pub const BOOTSTRAP_DIR: &str = "/etc/envoy/bootstrap";
/// Bootstrap file name inside [`BOOTSTRAP_DIR`].
pub const BOOTSTRAP_FILE: &str = "bootstrap.json";
/// Envoy's xDS cluster (static, in the bootstrap).
pub const XDS_CLUSTER: &str = portcullis_translator::xds::bootstrap::XDS_CLUSTER;
/// Envoy admin: a unix socket in the pod's private `/tmp` (mode 0600), never a TCP port, so no
/// upstream a tenant configures (a loopback `Backend`, an issuer) can reach `/config_dump`.
pub const ADMIN_SOCKET: &str = "/tmp/envoy-admin.sock";
/// Envoy readiness (`/ready`) and metrics (`/stats/prometheus`) port.
pub const READY_PORT: u16 = 19001;
/// Label on every fleet object: the fleet name.
pub const FLEET_LABEL: &str = "portcullis.dev/fleet";
/// Pod template annotation: hash of the client certificate (a renewal rolls the fleet).
pub const CERT_HASH_ANNOTATION: &str = "portcullis.dev/client-cert-sha256";
/// Pod template annotation: hash of the bootstrap (a change rolls the fleet).
pub const BOOTSTRAP_HASH_ANNOTATION: &str = "portcullis.dev/bootstrap-sha256";
/// GatewayClass condition type for EnvoyProxy fields we do not implement.
pub const UNSUPPORTED_CONDITION: &str = "portcullis.dev/UnsupportedParameters";

/// Envoy image of a fleet unless the controller or an EnvoyProxy says otherwise.
pub const DEFAULT_ENVOY_IMAGE: &str = "docker.io/envoyproxy/envoy:distroless-v1.40.0";

/// Settings of the fleet that come from the controller, not from the user.
#[derive(Debug, Clone)]
pub struct InfraConfig {
    /// DNS name of the controller's Service, e.g. `portcullis.portcullis-system.svc`; also the
    /// name Envoy expects in the controller's server certificate.
    pub xds_host: String,
    pub xds_port: u16,
    /// Use delta xDS instead of state-of-the-world.
    pub xds_delta: bool,
    /// Default Envoy image.
    pub envoy_image: String,
    /// Field manager for server-side apply.
    pub field_manager: String,
    /// Re-apply a fleet at least this often even when nothing changed, repairing drift
    /// (e.g. a Deployment deleted by hand).
    pub resync: Duration,
    /// Write a NetworkPolicy per fleet (None: none, and none is deleted).
    pub network_policy: Option<FleetNetworkPolicy>,
}

/// Settings of the per-fleet NetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetNetworkPolicy {
    /// Namespaces whose pods may reach the fleet's readiness/metrics port ([`READY_PORT`]),
    /// e.g. Prometheus's. Empty: none (the kubelet's probes come from the node, which
    /// NetworkPolicy always allows).
    pub metrics_namespaces: Vec<String>,
}

impl Default for InfraConfig {
    fn default() -> Self {
        Self {
            xds_host: "portcullis.portcullis-system.svc".into(),
            xds_port: 18000,
            xds_delta: false,
            envoy_image: DEFAULT_ENVOY_IMAGE.into(),
            field_manager: crate::status::FIELD_MANAGER.into(),
            resync: Duration::from_secs(600),
            network_policy: None,
        }
    }
}

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

/// Name of a Gateway's fleet objects: `portcullis-<gateway>`, a valid DNS label (Service names
/// must be), with a hash suffix when the Gateway name had to be shortened or changed.
pub fn fleet_name(gateway: &str) -> String {
    let clean: String = gateway
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let plain = format!("portcullis-{clean}");
    if clean == gateway && plain.len() <= 63 {
        return plain;
    }
    let hash = hex::encode(&Sha256::digest(gateway.as_bytes())[..4]);
    let head: String = clean.chars().take(63 - "portcullis-".len() - 9).collect();
    format!("portcullis-{}-{hash}", head.trim_end_matches('-'))
}

/// Envoy bootstrap for one Gateway's fleet: ADS over mutual TLS to the controller's Service,
/// admin on a unix socket ([`ADMIN_SOCKET`]), and a `/ready` + `/stats/prometheus` listener
/// (proxied to the admin socket) for probes and scraping. Built by the translator's typed
/// builder, which the host infrastructure uses too.
/// `cert_dir` holds `tls.crt`, `tls.key` and `ca.crt` ([`CERT_DIR`] in the pod).
pub fn bootstrap(node_id: &str, cfg: &InfraConfig, cert_dir: &str) -> Result<Value> {
    use portcullis_translator::ir::ClientTlsFiles;
    use portcullis_translator::xds::bootstrap::{self, AdminAddress, BootstrapSpec, XdsUpstream};
    let dir = cert_dir.trim_end_matches('/');
    let spec = BootstrapSpec {
        node_id: node_id.to_string(),
        xds: XdsUpstream::Dns {
            host: cfg.xds_host.clone(),
            port: cfg.xds_port,
            client_tls: ClientTlsFiles {
                cert_chain: format!("{dir}/tls.crt"),
                private_key: format!("{dir}/tls.key"),
                trusted_ca: format!("{dir}/ca.crt"),
            },
        },
        delta: cfg.xds_delta,
        admin: AdminAddress::Pipe(ADMIN_SOCKET.into()),
        ready_port: Some(READY_PORT),
    };
    bootstrap::json(&spec).map_err(|e| Error::Bootstrap(e.to_string()))
}

/// The objects of one fleet, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub name: String,
    pub namespace: String,
    pub service_account: Value,
    pub secret: Value,
    pub config_map: Value,
    /// Present when [`InfraConfig::network_policy`] is set.
    pub network_policy: Option<Value>,
    pub service: Option<Value>,
    pub deployment: Value,
}

impl Fleet {
    /// `(kind, object)` in apply order.
    pub fn objects(&self) -> Vec<(&'static str, &Value)> {
        let mut v = vec![
            ("ServiceAccount", &self.service_account),
            ("Secret", &self.secret),
            ("ConfigMap", &self.config_map),
        ];
        // Before the Deployment, so the pods are isolated from their first start.
        if let Some(np) = &self.network_policy {
            v.push(("NetworkPolicy", np));
        }
        if let Some(s) = &self.service {
            v.push(("Service", s));
        }
        v.push(("Deployment", &self.deployment));
        v
    }

    fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (_, o) in self.objects() {
            h.update(o.to_string().as_bytes());
        }
        hex::encode(h.finalize())
    }
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn gw_str<'a>(gw: &'a Value, ptr: &str) -> Option<&'a str> {
    gw.pointer(ptr).and_then(Value::as_str)
}

/// Build a Gateway's fleet (pure).
pub fn fleet_objects(
    gateway: &Value,
    params: &FleetParams,
    cfg: &InfraConfig,
    client_cert: &IssuedCert,
    ca_pem: &str,
) -> Result<Fleet> {
    let ns = gw_str(gateway, "/metadata/namespace")
        .unwrap_or("default")
        .to_string();
    let gw_name = gw_str(gateway, "/metadata/name")
        .unwrap_or_default()
        .to_string();
    let err = |reason: &str| Error::Gateway {
        namespace: ns.clone(),
        name: gw_name.clone(),
        reason: reason.into(),
    };
    if gw_name.is_empty() {
        return Err(err("no name"));
    }
    let uid = gw_str(gateway, "/metadata/uid").ok_or_else(|| err("no uid yet"))?;
    let name = fleet_name(&gw_name);
    let node_id = format!("{ns}/{gw_name}");

    let mut labels: Map<String, Value> = params
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    labels.insert("app.kubernetes.io/name".into(), json!("envoy"));
    labels.insert("app.kubernetes.io/component".into(), json!("proxy"));
    labels.insert("app.kubernetes.io/managed-by".into(), json!("portcullis"));
    labels.insert(FLEET_LABEL.into(), json!(name));
    let selector = json!({"app.kubernetes.io/name": "envoy", FLEET_LABEL: name});
    let annotations: Map<String, Value> = params
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": gw_name,
        "uid": uid,
        "controller": true
    }]);
    let meta = |extra_annotations: Map<String, Value>| {
        let mut a = annotations.clone();
        a.extend(extra_annotations);
        let mut m =
            json!({"name": name, "namespace": ns, "labels": labels, "ownerReferences": owner});
        if !a.is_empty() {
            m["annotations"] = Value::Object(a);
        }
        m
    };

    let service_account = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": meta(Map::new()),
        // Envoy never talks to the Kubernetes API.
        "automountServiceAccountToken": false
    });

    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut cert_ann = Map::new();
    cert_ann.insert(
        NOT_AFTER_ANNOTATION.into(),
        json!(client_cert.not_after.unix_timestamp().to_string()),
    );
    let mut secret_meta = meta(cert_ann);
    secret_meta["name"] = json!(format!("{name}-xds"));
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": secret_meta,
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(&client_cert.cert_pem), "tls.key": b64(&client_cert.key_pem), "ca.crt": b64(ca_pem)}
    });

    let boot = serde_json::to_string_pretty(&bootstrap(&node_id, cfg, CERT_DIR)?)?;
    let config_map = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": meta(Map::new()),
        "data": {BOOTSTRAP_FILE: boot}
    });

    // One Service/container port per distinct listener port. Envoy binds the listener port itself
    // (the xDS listeners use it as is), so the pod allows unprivileged binds below 1024 with the
    // namespaced, "safe" sysctl instead of running as root or adding NET_BIND_SERVICE.
    let mut ports: BTreeMap<i64, String> = BTreeMap::new();
    for l in gateway
        .pointer("/spec/listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(port) = l.get("port").and_then(Value::as_i64) {
            let proto = l
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("HTTP")
                .to_ascii_lowercase();
            ports.entry(port).or_insert(proto);
        }
    }
    let service = (!ports.is_empty()).then(|| {
        let mut svc_ann = Map::new();
        for (k, v) in &params.service_annotations {
            svc_ann.insert(k.clone(), json!(v));
        }
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(svc_ann),
            "spec": {
                "type": params.service_type,
                "selector": selector,
                "ports": ports.iter().map(|(port, proto)| json!({
                    "name": format!("{proto}-{port}"),
                    "port": port, "targetPort": port, "protocol": "TCP"
                })).collect::<Vec<_>>()
            }
        })
    });

    let network_policy = cfg.network_policy.as_ref().map(|np| {
        let mut ingress = Vec::new();
        if !ports.is_empty() {
            // The Gateway's listeners: from anywhere (`from` omitted).
            ingress.push(json!({"ports": ports.keys()
                .map(|p| json!({"port": p, "protocol": "TCP"}))
                .collect::<Vec<_>>()}));
        }
        if !np.metrics_namespaces.is_empty() {
            ingress.push(json!({
                "from": [{"namespaceSelector": {"matchExpressions": [{
                    "key": "kubernetes.io/metadata.name",
                    "operator": "In",
                    "values": np.metrics_namespaces
                }]}}],
                "ports": [{"port": READY_PORT, "protocol": "TCP"}]
            }));
        }
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta(Map::new()),
            "spec": {
                "podSelector": {"matchLabels": selector},
                "policyTypes": ["Ingress"],
                "ingress": ingress
            }
        })
    });

    let mut container_ports: Vec<Value> = ports
        .keys()
        .map(|p| json!({"containerPort": p, "protocol": "TCP"}))
        .collect();
    container_ports.push(json!({"name": "ready", "containerPort": READY_PORT, "protocol": "TCP"}));
    let mut container = json!({
        "name": "envoy",
        "image": params.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "--config-path", format!("{BOOTSTRAP_DIR}/{BOOTSTRAP_FILE}"),
            "--log-level", params.log_level,
            "--drain-time-s", "15"
        ],
        "ports": container_ports,
        "readinessProbe": {"httpGet": {"path": "/ready", "port": READY_PORT}, "periodSeconds": 5, "failureThreshold": 1},
        "securityContext": {
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]}
        },
        "volumeMounts": [
            {"name": "bootstrap", "mountPath": BOOTSTRAP_DIR, "readOnly": true},
            {"name": "certs", "mountPath": CERT_DIR, "readOnly": true},
            {"name": "tmp", "mountPath": "/tmp"}
        ]
    });
    if let Some(r) = &params.resources {
        container["resources"] = r.clone();
    }
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(Map::new()),
        "spec": {
            "replicas": params.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        CERT_HASH_ANNOTATION: client_cert.fingerprint(),
                        BOOTSTRAP_HASH_ANNOTATION: sha(&boot)
                    }
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                        "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "bootstrap", "configMap": {"name": name}},
                        {"name": "certs", "secret": {"secretName": format!("{name}-xds"), "defaultMode": 0o440}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}
                    ]
                }
            }
        }
    });
    Ok(Fleet {
        name,
        namespace: ns,
        service_account,
        secret,
        config_map,
        network_policy,
        service,
        deployment,
    })
}

/// Add a condition for unsupported EnvoyProxy fields to the GatewayClass records (creating the
/// record if the translator produced none). The same field manager owns GatewayClass
/// `status.conditions`, so this must go into the same record: a separate apply would drop the
/// translator's conditions.
pub fn add_param_conditions(records: &mut Vec<StatusRecord>, unsupported: &[UnsupportedParams]) {
    let mut by_class: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for u in unsupported {
        let e = by_class.entry(u.gateway_class.as_str()).or_default();
        for f in &u.fields {
            let item = format!("{}: {f}", u.envoy_proxy);
            if !e.contains(&item) {
                e.push(item);
            }
        }
    }
    for (class, fields) in by_class {
        let cond = json!({
            "type": UNSUPPORTED_CONDITION,
            "status": "True",
            "reason": "UnsupportedField",
            "message": format!("EnvoyProxy fields not supported by portcullis (ignored): {}", fields.join(", "))
        });
        let existing = records
            .iter_mut()
            .find(|r| r.kind == "GatewayClass" && r.metadata.name == class);
        match existing {
            Some(r) => {
                if !r.status.is_object() {
                    r.status = json!({});
                }
                match r.status.get_mut("conditions").and_then(Value::as_array_mut) {
                    Some(c) => {
                        c.retain(|x| {
                            x.get("type").and_then(Value::as_str) != Some(UNSUPPORTED_CONDITION)
                        });
                        c.push(cond);
                    }
                    None => r.status["conditions"] = json!([cond]),
                }
            }
            None => records.push(StatusRecord {
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: "GatewayClass".into(),
                metadata: RecordMeta {
                    namespace: None,
                    name: class.to_string(),
                },
                status: json!({"conditions": [cond]}),
            }),
        }
    }
}

/// Set each Gateway record's `status.addresses` from its fleet Service as the watch shows it:
/// LoadBalancer ingress IPs/hostnames, else the cluster IP of a ClusterIP Service. While there is
/// none (Service not created yet, LoadBalancer pending), a `Programmed=True` Gateway condition
/// becomes `False` with reason `AddressNotAssigned`, as Gateway API specifies, so
/// `kubectl wait --for=condition=Programmed` waits for a reachable Gateway.
pub fn add_gateway_addresses(records: &mut [StatusRecord], snapshot: &Snapshot) {
    for r in records.iter_mut().filter(|r| r.kind == "Gateway") {
        let Some(ns) = r.metadata.namespace.as_deref() else {
            continue;
        };
        let fleet = fleet_name(&r.metadata.name);
        let key = ObjectKey::new("", "Service", Some(ns), &fleet);
        let addrs = snapshot
            .get(&key)
            .map(service_addresses)
            .unwrap_or_default();
        if addrs.is_empty() {
            let why = match snapshot.get(&key) {
                None => format!("Waiting for the fleet Service {ns}/{fleet} to be created."),
                Some(_) => format!(
                    "The fleet Service {ns}/{fleet} has no address yet (LoadBalancer pending)."
                ),
            };
            address_not_assigned(&mut r.status, &why);
            continue;
        }
        if !r.status.is_object() {
            r.status = json!({});
        }
        r.status["addresses"] = Value::Array(addrs);
    }
}

/// Turn a `Programmed=True` Gateway condition into `False`/`AddressNotAssigned`.
fn address_not_assigned(status: &mut Value, message: &str) {
    let Some(conds) = status.get_mut("conditions").and_then(Value::as_array_mut) else {
        return;
    };
    for c in conds.iter_mut() {
        if c.get("type").and_then(Value::as_str) == Some("Programmed")
            && c.get("status").and_then(Value::as_str) == Some("True")
        {
            c["status"] = json!("False");
            c["reason"] = json!("AddressNotAssigned");
            c["message"] = json!(message);
        }
    }
}

fn service_addresses(svc: &Value) -> Vec<Value> {
    let mut addrs = Vec::new();
    for ing in svc
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(ip) = ing.get("ip").and_then(Value::as_str) {
            addrs.push(json!({"type": "IPAddress", "value": ip}));
        } else if let Some(h) = ing.get("hostname").and_then(Value::as_str) {
            addrs.push(json!({"type": "Hostname", "value": h}));
        }
    }
    if addrs.is_empty() && svc.pointer("/spec/type").and_then(Value::as_str) == Some("ClusterIP") {
        if let Some(ip) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .filter(|ip| *ip != "None")
        {
            addrs.push(json!({"type": "IPAddress", "value": ip}));
        }
    }
    addrs
}

/// What one [`InfraReconciler::reconcile`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct InfraReport {
    /// Fleets applied (namespace, gateway).
    pub applied: Vec<(String, String)>,
    pub unchanged: usize,
    /// Fleets waiting for their backoff to pass after a failure.
    pub deferred: usize,
    pub failed: Vec<((String, String), String)>,
    /// Fleets of Gateways that are no longer ours, deleted.
    pub removed: Vec<(String, String)>,
    pub not_leader: bool,
    pub unsupported: Vec<UnsupportedParams>,
}

struct Applied {
    digest: String,
    at: Timestamp,
    fleet_name: String,
}

/// Reconciles fleets against snapshots; see the module docs.
pub struct InfraReconciler {
    client: Client,
    cfg: InfraConfig,
    leader: LeaderState,
    ca: Arc<CertAuthority>,
    applied: HashMap<(String, String), Applied>,
    retry: HashMap<(String, String), (Timestamp, Backoff)>,
    certs: HashMap<(String, String), IssuedCert>,
}

fn decode_b64(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    String::from_utf8(bytes).ok()
}

fn to_offset(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

impl InfraReconciler {
    pub fn new(
        client: Client,
        cfg: InfraConfig,
        leader: LeaderState,
        ca: Arc<CertAuthority>,
    ) -> Self {
        Self {
            client,
            cfg,
            leader,
            ca,
            applied: HashMap::new(),
            retry: HashMap::new(),
            certs: HashMap::new(),
        }
    }

    /// The client certificate for a fleet: cached, else the one in its Secret if still good and
    /// from our CA, else a new one.
    fn client_cert(
        &mut self,
        snapshot: &Snapshot,
        ns: &str,
        gw: &str,
        now: Timestamp,
    ) -> Result<IssuedCert> {
        let key = (ns.to_string(), gw.to_string());
        let now_o = to_offset(now);
        if let Some(c) = self.certs.get(&key) {
            if !needs_renewal(c.not_after, now_o, LEAF_VALIDITY) {
                return Ok(c.clone());
            }
        }
        let secret_key = ObjectKey::new("", "Secret", Some(ns), &format!("{}-xds", fleet_name(gw)));
        let stored = snapshot.get(&secret_key).and_then(|s| {
            let not_after = s
                .pointer(&format!(
                    "/metadata/annotations/{}",
                    NOT_AFTER_ANNOTATION.replace('/', "~1")
                ))
                .and_then(Value::as_str)?
                .parse::<i64>()
                .ok()?;
            let ca = decode_b64(s.pointer("/data/ca.crt"))?;
            (ca == self.ca.cert_pem()).then_some(())?;
            Some(IssuedCert {
                cert_pem: decode_b64(s.pointer("/data/tls.crt"))?,
                key_pem: decode_b64(s.pointer("/data/tls.key"))?,
                not_after: time::OffsetDateTime::from_unix_timestamp(not_after).ok()?,
            })
        });
        let cert = match stored {
            Some(c) if !needs_renewal(c.not_after, now_o, LEAF_VALIDITY) => c,
            _ => self.ca.issue_client(ns, gw, now_o, LEAF_VALIDITY)?,
        };
        self.certs.insert(key, cert.clone());
        Ok(cert)
    }

    fn envoy_proxy<'a>(
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
        let class = gw_str(gateway, "/spec/gatewayClassName").unwrap_or_default();
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

    async fn apply(&self, kind: &str, ns: &str, obj: &Value) -> Result<()> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let pp = PatchParams::apply(&self.cfg.field_manager).force();
        let patch = Patch::Apply(obj);
        let c = self.client.clone();
        match kind {
            "ServiceAccount" => drop(
                Api::<ServiceAccount>::namespaced(c, ns)
                    .patch(name, &pp, &patch)
                    .await?,
            ),
            "Secret" => drop(
                Api::<Secret>::namespaced(c, ns)
                    .patch(name, &pp, &patch)
                    .await?,
            ),
            "ConfigMap" => drop(
                Api::<ConfigMap>::namespaced(c, ns)
                    .patch(name, &pp, &patch)
                    .await?,
            ),
            "Service" => drop(
                Api::<Service>::namespaced(c, ns)
                    .patch(name, &pp, &patch)
                    .await?,
            ),
            "NetworkPolicy" => drop(
                Api::<NetworkPolicy>::namespaced(c, ns)
                    .patch(name, &pp, &patch)
                    .await?,
            ),
            _ => drop(
                Api::<Deployment>::namespaced(c, ns)
                    .patch(name, &pp, &patch)
                    .await?,
            ),
        }
        Ok(())
    }

    async fn remove(&self, ns: &str, name: &str) -> Result<()> {
        let dp = DeleteParams::background();
        let c = self.client.clone();
        let ignore_404 = |r: std::result::Result<(), kube::Error>| match r {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            other => other,
        };
        ignore_404(
            Api::<Deployment>::namespaced(c.clone(), ns)
                .delete(name, &dp)
                .await
                .map(drop),
        )?;
        ignore_404(
            Api::<Service>::namespaced(c.clone(), ns)
                .delete(name, &dp)
                .await
                .map(drop),
        )?;
        ignore_404(
            Api::<ServiceAccount>::namespaced(c.clone(), ns)
                .delete(name, &dp)
                .await
                .map(drop),
        )?;
        // Only when configured: without it, the chart grants no verb on NetworkPolicies.
        if self.cfg.network_policy.is_some() {
            ignore_404(
                Api::<NetworkPolicy>::namespaced(c, ns)
                    .delete(name, &dp)
                    .await
                    .map(drop),
            )?;
        }
        Ok(())
    }

    /// Bring every Gateway's fleet in `snapshot` (already filtered to our classes) up to date.
    /// Only the leader writes. Failures back off per Gateway and are retried by later calls.
    pub async fn reconcile(&mut self, snapshot: &Snapshot, now: Timestamp) -> InfraReport {
        let mut report = InfraReport::default();
        let gateways: Vec<&Value> = snapshot.of_kind("Gateway").collect();
        for gw in &gateways {
            let ns = gw_str(gw, "/metadata/namespace").unwrap_or_default();
            let (ep, ep_name) = Self::envoy_proxy(snapshot, gw, ns);
            let (_, unsupported) = fleet_params(&self.cfg, gw, ep);
            if !unsupported.is_empty() {
                report.unsupported.push(UnsupportedParams {
                    gateway_class: gw_str(gw, "/spec/gatewayClassName")
                        .unwrap_or_default()
                        .to_string(),
                    envoy_proxy: ep_name,
                    fields: unsupported,
                });
            }
        }
        if !self.leader.is_leader() {
            report.not_leader = true;
            // A new leader starts from what the cluster has, not from stale memory.
            self.applied.clear();
            self.retry.clear();
            return report;
        }
        let mut seen = Vec::new();
        for gw in gateways {
            let ns = gw_str(gw, "/metadata/namespace")
                .unwrap_or_default()
                .to_string();
            let name = gw_str(gw, "/metadata/name").unwrap_or_default().to_string();
            let key = (ns.clone(), name.clone());
            seen.push(key.clone());
            if let Some((at, _)) = self.retry.get(&key) {
                if now < *at {
                    report.deferred += 1;
                    continue;
                }
            }
            match self.reconcile_one(snapshot, gw, &ns, &name, now).await {
                Ok(true) => {
                    self.retry.remove(&key);
                    report.applied.push(key);
                }
                Ok(false) => report.unchanged += 1,
                Err(e) => {
                    let (_, backoff) = self
                        .retry
                        .entry(key.clone())
                        .or_insert_with(|| (now, Backoff::default()));
                    let delay = backoff.next_delay();
                    let at = now
                        .checked_add(
                            SignedDuration::try_from(delay)
                                .unwrap_or(SignedDuration::from_secs(60)),
                        )
                        .unwrap_or(now);
                    tracing::warn!(gateway = %format!("{ns}/{name}"), error = %e, retry_in = ?delay, "fleet reconcile failed");
                    if let Some(r) = self.retry.get_mut(&key) {
                        r.0 = at;
                    }
                    self.applied.remove(&key);
                    report.failed.push((key, e.to_string()));
                }
            }
        }
        let gone: Vec<(String, String)> = self
            .applied
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for key in gone {
            let Some(a) = self.applied.remove(&key) else {
                continue;
            };
            self.certs.remove(&key);
            self.retry.remove(&key);
            // Gateway deleted: garbage collection already removes the fleet (404s are fine).
            // Gateway moved to another class: the fleet must go now.
            match self.remove(&key.0, &a.fleet_name).await {
                Ok(()) => report.removed.push(key),
                Err(e) => {
                    tracing::warn!(gateway = %format!("{}/{}", key.0, key.1), error = %e, "fleet removal failed");
                    report.failed.push((key, e.to_string()));
                }
            }
        }
        report
    }

    async fn reconcile_one(
        &mut self,
        snapshot: &Snapshot,
        gw: &Value,
        ns: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let key = (ns.to_string(), name.to_string());
        let (ep, _) = Self::envoy_proxy(snapshot, gw, ns);
        let (params, _) = fleet_params(&self.cfg, gw, ep);
        let cert = self.client_cert(snapshot, ns, name, now)?;
        let fleet = fleet_objects(gw, &params, &self.cfg, &cert, self.ca.cert_pem())?;
        let digest = fleet.digest();
        let resync =
            SignedDuration::try_from(self.cfg.resync).unwrap_or(SignedDuration::from_secs(600));
        if let Some(a) = self.applied.get(&key) {
            let fresh = a.at.checked_add(resync).map(|t| now < t).unwrap_or(true);
            if a.digest == digest && fresh {
                return Ok(false);
            }
        }
        for (kind, obj) in fleet.objects() {
            self.apply(kind, ns, obj).await?;
        }
        tracing::info!(gateway = %format!("{ns}/{name}"), fleet = %fleet.name, "fleet applied");
        self.applied.insert(
            key,
            Applied {
                digest,
                at: now,
                fleet_name: fleet.name,
            },
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw_record() -> StatusRecord {
        StatusRecord {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "Gateway".into(),
            metadata: RecordMeta {
                namespace: Some("infra".into()),
                name: "web".into(),
            },
            status: json!({"conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok"},
                {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "Gateway is programmed."}
            ]}),
        }
    }

    fn programmed(r: &StatusRecord) -> (String, String) {
        let c = r.status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Programmed"))
            .expect("Programmed condition");
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["reason"].as_str().unwrap_or_default().to_string(),
        )
    }

    fn svc(spec_type: &str, status: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "portcullis-web", "namespace": "infra"},
               "spec": {"type": spec_type, "clusterIP": "10.96.0.7"}, "status": status})
    }

    #[test]
    fn addresses_come_from_the_fleet_service() {
        let mut recs = vec![gw_record()];
        let pending = Snapshot::from_objects([svc("LoadBalancer", json!({"loadBalancer": {}}))]);
        add_gateway_addresses(&mut recs, &pending);
        assert!(
            recs[0].status.get("addresses").is_none(),
            "pending LoadBalancer: no address"
        );
        assert_eq!(
            programmed(&recs[0]),
            ("False".into(), "AddressNotAssigned".into())
        );
        let mut none_yet = vec![gw_record()];
        add_gateway_addresses(&mut none_yet, &Snapshot::from_objects([]));
        assert_eq!(
            programmed(&none_yet[0]),
            ("False".into(), "AddressNotAssigned".into())
        );

        let mut recs = vec![gw_record()];
        let ready = Snapshot::from_objects([svc(
            "LoadBalancer",
            json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"hostname": "lb.example.com"}]}}),
        )]);
        add_gateway_addresses(&mut recs, &ready);
        assert_eq!(
            recs[0].status["addresses"],
            json!([{"type": "IPAddress", "value": "192.0.2.10"}, {"type": "Hostname", "value": "lb.example.com"}])
        );
        assert_eq!(programmed(&recs[0]), ("True".into(), "Programmed".into()));

        let mut recs = vec![gw_record()];
        add_gateway_addresses(
            &mut recs,
            &Snapshot::from_objects([svc("ClusterIP", json!({}))]),
        );
        assert_eq!(
            recs[0].status["addresses"],
            json!([{"type": "IPAddress", "value": "10.96.0.7"}])
        );
    }

    #[test]
    fn fleet_names_are_dns_labels() {
        assert_eq!(fleet_name("web"), "portcullis-web");
        let dotted = fleet_name("web.example");
        assert!(
            dotted.starts_with("portcullis-web-example-") && dotted.len() <= 63,
            "{dotted}"
        );
        let long = fleet_name(&"a".repeat(200));
        assert!(
            long.len() <= 63 && long.starts_with("portcullis-aaa"),
            "{long}"
        );
        assert_ne!(fleet_name(&"a".repeat(200)), fleet_name(&"a".repeat(201)));
        assert!(fleet_name("Web")
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }
}
