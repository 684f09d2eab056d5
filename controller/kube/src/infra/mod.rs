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
//!
//! Layout: [`params`] merges the fleet parameters, [`objects`] builds the typed Kubernetes objects
//! (pure), [`gateway_status`] adds what only the fleet knows to the Gateway and GatewayClass
//! statuses, and [`reconciler`] applies fleets with server-side apply.

use std::time::Duration;

use serde_json::Value;

pub mod gateway_status;
pub mod objects;
pub mod params;
pub mod reconciler;

pub use gateway_status::{add_gateway_addresses, add_param_conditions};
pub use objects::{bootstrap, fleet_name, fleet_objects, Fleet, FleetObject};
pub use params::{fleet_params, FleetParams, UnsupportedParams};
pub use reconciler::{InfraReconciler, InfraReport};

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

/// A string at JSON pointer `ptr` of a Gateway object.
fn gw_str<'a>(gw: &'a Value, ptr: &str) -> Option<&'a str> {
    gw.pointer(ptr).and_then(Value::as_str)
}
