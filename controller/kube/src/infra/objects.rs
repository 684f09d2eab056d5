//! The objects of one Gateway's fleet, as typed Kubernetes objects (pure: no API calls).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServiceAccount,
    ServicePort, ServiceSpec, Sysctl, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    gw_str, FleetParams, InfraConfig, ADMIN_SOCKET, BOOTSTRAP_DIR, BOOTSTRAP_FILE,
    BOOTSTRAP_HASH_ANNOTATION, CERT_DIR, CERT_HASH_ANNOTATION, FLEET_LABEL, READY_PORT,
};
use crate::certs::{IssuedCert, NOT_AFTER_ANNOTATION};
use crate::error::{Error, Result};
use portcullis_translator::ir::Protocol;

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

/// The objects of one fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub name: String,
    pub namespace: String,
    pub service_account: ServiceAccount,
    pub secret: Secret,
    pub config_map: ConfigMap,
    /// Present when [`InfraConfig::network_policy`] is set.
    pub network_policy: Option<NetworkPolicy>,
    pub service: Option<Service>,
    pub deployment: Deployment,
}

/// One fleet object, borrowed, with its kind.
#[derive(Debug, Clone, Copy)]
pub enum FleetObject<'a> {
    ServiceAccount(&'a ServiceAccount),
    Secret(&'a Secret),
    ConfigMap(&'a ConfigMap),
    NetworkPolicy(&'a NetworkPolicy),
    Service(&'a Service),
    Deployment(&'a Deployment),
}

impl FleetObject<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServiceAccount(_) => "ServiceAccount",
            Self::Secret(_) => "Secret",
            Self::ConfigMap(_) => "ConfigMap",
            Self::NetworkPolicy(_) => "NetworkPolicy",
            Self::Service(_) => "Service",
            Self::Deployment(_) => "Deployment",
        }
    }

    /// The object as the API server receives it (`apiVersion` and `kind` included).
    pub fn to_json(&self) -> Result<Value> {
        Ok(match self {
            Self::ServiceAccount(o) => serde_json::to_value(o)?,
            Self::Secret(o) => serde_json::to_value(o)?,
            Self::ConfigMap(o) => serde_json::to_value(o)?,
            Self::NetworkPolicy(o) => serde_json::to_value(o)?,
            Self::Service(o) => serde_json::to_value(o)?,
            Self::Deployment(o) => serde_json::to_value(o)?,
        })
    }
}

impl Fleet {
    /// The objects in apply order.
    pub fn objects(&self) -> Vec<FleetObject<'_>> {
        let mut v = vec![
            FleetObject::ServiceAccount(&self.service_account),
            FleetObject::Secret(&self.secret),
            FleetObject::ConfigMap(&self.config_map),
        ];
        // Before the Deployment, so the pods are isolated from their first start.
        if let Some(np) = &self.network_policy {
            v.push(FleetObject::NetworkPolicy(np));
        }
        if let Some(s) = &self.service {
            v.push(FleetObject::Service(s));
        }
        v.push(FleetObject::Deployment(&self.deployment));
        v
    }

    /// The bootstrap the ConfigMap carries.
    pub fn bootstrap(&self) -> Option<&str> {
        self.config_map
            .data
            .as_ref()
            .and_then(|d| d.get(BOOTSTRAP_FILE))
            .map(String::as_str)
    }

    /// Hash of every object as applied: equal digests, nothing to apply.
    pub(super) fn digest(&self) -> Result<String> {
        let mut h = Sha256::new();
        for o in self.objects() {
            h.update(serde_json::to_vec(&o.to_json()?)?);
        }
        Ok(hex::encode(h.finalize()))
    }
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn tcp_port(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Build a Gateway's fleet (pure). `listeners` are the Gateway's programmed listeners, as the
/// translator reports them: the Service, container and NetworkPolicy ports.
pub fn fleet_objects(
    gateway: &Value,
    listeners: &[(u16, Protocol)],
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
    let err = |reason: String| Error::Gateway {
        namespace: ns.clone(),
        name: gw_name.clone(),
        reason,
    };
    if gw_name.is_empty() {
        return Err(err("no name".into()));
    }
    let uid = gw_str(gateway, "/metadata/uid").ok_or_else(|| err("no uid yet".into()))?;
    let name = fleet_name(&gw_name);
    let node_id = format!("{ns}/{gw_name}");

    let mut labels = params.labels.clone();
    labels.insert("app.kubernetes.io/name".into(), "envoy".into());
    labels.insert("app.kubernetes.io/component".into(), "proxy".into());
    labels.insert("app.kubernetes.io/managed-by".into(), "portcullis".into());
    labels.insert(FLEET_LABEL.into(), name.clone());
    let selector: BTreeMap<String, String> = [
        ("app.kubernetes.io/name".to_string(), "envoy".to_string()),
        (FLEET_LABEL.to_string(), name.clone()),
    ]
    .into();
    let owner = OwnerReference {
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "Gateway".into(),
        name: gw_name.clone(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    let meta = |object_name: &str, extra: BTreeMap<String, String>| {
        let mut a = params.annotations.clone();
        a.extend(extra);
        ObjectMeta {
            name: Some(object_name.to_string()),
            namespace: Some(ns.clone()),
            labels: Some(labels.clone()),
            annotations: (!a.is_empty()).then_some(a),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        }
    };

    let service_account = ServiceAccount {
        metadata: meta(&name, BTreeMap::new()),
        // Envoy never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        ..Default::default()
    };

    let secret_name = format!("{name}-xds");
    let secret = Secret {
        metadata: meta(
            &secret_name,
            [(
                NOT_AFTER_ANNOTATION.to_string(),
                client_cert.not_after.unix_timestamp().to_string(),
            )]
            .into(),
        ),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt", &client_cert.cert_pem),
                ("tls.key", &client_cert.key_pem),
                ("ca.crt", &ca_pem.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
        ),
        ..Default::default()
    };

    let boot = serde_json::to_string_pretty(&bootstrap(&node_id, cfg, CERT_DIR)?)?;
    let config_map = ConfigMap {
        metadata: meta(&name, BTreeMap::new()),
        data: Some([(BOOTSTRAP_FILE.to_string(), boot.clone())].into()),
        ..Default::default()
    };

    // One Service/container port per programmed listener port. Envoy binds the listener port
    // itself (the xDS listeners use it as is), so the pod allows unprivileged binds below 1024
    // with the namespaced, "safe" sysctl instead of running as root or adding NET_BIND_SERVICE.
    let ports: BTreeMap<i32, String> = listeners
        .iter()
        .map(|(port, proto)| (i32::from(*port), proto.as_str().to_ascii_lowercase()))
        .collect();
    let service = (!ports.is_empty()).then(|| Service {
        metadata: meta(&name, params.service_annotations.clone()),
        spec: Some(ServiceSpec {
            type_: Some(params.service_type.clone()),
            selector: Some(selector.clone()),
            ports: Some(
                ports
                    .iter()
                    .map(|(port, proto)| ServicePort {
                        name: Some(format!("{proto}-{port}")),
                        port: *port,
                        target_port: Some(IntOrString::Int(*port)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    });

    let network_policy = cfg.network_policy.as_ref().map(|np| {
        let mut ingress = Vec::new();
        if !ports.is_empty() {
            // The Gateway's listeners: from anywhere (`from` omitted).
            ingress.push(NetworkPolicyIngressRule {
                ports: Some(ports.keys().map(|p| tcp_port(*p)).collect()),
                ..Default::default()
            });
        }
        if !np.metrics_namespaces.is_empty() {
            ingress.push(NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_expressions: Some(vec![LabelSelectorRequirement {
                            key: "kubernetes.io/metadata.name".into(),
                            operator: "In".into(),
                            values: Some(np.metrics_namespaces.clone()),
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![tcp_port(i32::from(READY_PORT))]),
            });
        }
        NetworkPolicy {
            metadata: meta(&name, BTreeMap::new()),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(selector.clone()),
                    ..Default::default()
                }),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(ingress),
                ..Default::default()
            }),
        }
    });

    let resources: Option<ResourceRequirements> = params
        .resources
        .as_ref()
        .map(|r| serde_json::from_value(r.clone()))
        .transpose()
        .map_err(|e| err(format!("EnvoyProxy container resources: {e}")))?;
    let mut container_ports: Vec<ContainerPort> = ports
        .keys()
        .map(|p| ContainerPort {
            container_port: *p,
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    container_ports.push(ContainerPort {
        name: Some("ready".into()),
        container_port: i32::from(READY_PORT),
        protocol: Some("TCP".into()),
        ..Default::default()
    });
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    };
    let container = Container {
        name: "envoy".into(),
        image: Some(params.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec![
            "--config-path".into(),
            format!("{BOOTSTRAP_DIR}/{BOOTSTRAP_FILE}"),
            "--log-level".into(),
            params.log_level.clone(),
            "--drain-time-s".into(),
            "15".into(),
        ]),
        ports: Some(container_ports),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::Int(i32::from(READY_PORT)),
                ..Default::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(1),
            ..Default::default()
        }),
        resources,
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("bootstrap", BOOTSTRAP_DIR, true),
            mount("certs", CERT_DIR, true),
            // The admin socket (ADMIN_SOCKET) lives here.
            mount("tmp", "/tmp", false),
        ]),
        ..Default::default()
    };
    let pod_annotations: BTreeMap<String, String> = [
        (CERT_HASH_ANNOTATION.to_string(), client_cert.fingerprint()),
        (BOOTSTRAP_HASH_ANNOTATION.to_string(), sha(&boot)),
    ]
    .into();
    let deployment = Deployment {
        metadata: meta(&name, BTreeMap::new()),
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(params.replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        fs_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        sysctls: Some(vec![Sysctl {
                            name: "net.ipv4.ip_unprivileged_port_start".into(),
                            value: "0".into(),
                        }]),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "bootstrap".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: name.clone(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "certs".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(secret_name),
                                default_mode: Some(0o440),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "tmp".into(),
                            empty_dir: Some(EmptyDirVolumeSource {
                                size_limit: Some(Quantity("64Mi".into())),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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
