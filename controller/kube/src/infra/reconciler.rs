//! Applies each Gateway's fleet with server-side apply, only when it changed (or at the resync
//! interval, repairing drift), backing off per Gateway after failures; removes the fleets of
//! Gateways that are no longer ours. Only the leader writes.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Client;
use serde_json::Value;

use super::objects::{fleet_name, fleet_objects, FleetObject};
use super::params::{envoy_proxy, fleet_params, UnsupportedParams};
use super::{gw_str, InfraConfig};
use crate::backoff::Backoff;
use crate::certs::{needs_renewal, CertAuthority, IssuedCert, LEAF_VALIDITY, NOT_AFTER_ANNOTATION};
use crate::error::Result;
use crate::leader::LeaderState;
use crate::snapshot::{ObjectKey, Snapshot};
use portcullis_translator::ir::Protocol;
use portcullis_translator::GatewayInfra;

/// Server-side apply of one typed object, named by its own metadata.
async fn apply_one<K>(api: Api<K>, pp: &PatchParams, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, pp, &Patch::Apply(obj)).await?;
    Ok(())
}

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

    async fn apply(&self, ns: &str, obj: FleetObject<'_>) -> Result<()> {
        let pp = PatchParams::apply(&self.cfg.field_manager).force();
        let c = self.client.clone();
        match obj {
            FleetObject::ServiceAccount(o) => apply_one(Api::namespaced(c, ns), &pp, o).await,
            FleetObject::Secret(o) => apply_one(Api::namespaced(c, ns), &pp, o).await,
            FleetObject::ConfigMap(o) => apply_one(Api::namespaced(c, ns), &pp, o).await,
            FleetObject::NetworkPolicy(o) => apply_one(Api::namespaced(c, ns), &pp, o).await,
            FleetObject::Service(o) => apply_one(Api::namespaced(c, ns), &pp, o).await,
            FleetObject::Deployment(o) => apply_one(Api::namespaced(c, ns), &pp, o).await,
        }
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
    /// `programmed` is the translator's view: each Gateway's programmed listeners, which its
    /// Service and NetworkPolicy expose (none for a Gateway it does not list).
    pub async fn reconcile(
        &mut self,
        snapshot: &Snapshot,
        programmed: &[GatewayInfra],
        now: Timestamp,
    ) -> InfraReport {
        let mut report = InfraReport::default();
        let gateways: Vec<&Value> = snapshot.of_kind("Gateway").collect();
        for gw in &gateways {
            let ns = gw_str(gw, "/metadata/namespace").unwrap_or_default();
            let (ep, ep_name) = envoy_proxy(snapshot, gw, ns);
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
            let listeners = programmed
                .iter()
                .find(|g| g.namespace == ns && g.name == name)
                .map_or(&[][..], |g| &g.listeners[..]);
            match self
                .reconcile_one(snapshot, gw, listeners, &ns, &name, now)
                .await
            {
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
        listeners: &[(u16, Protocol)],
        ns: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let key = (ns.to_string(), name.to_string());
        let (ep, _) = envoy_proxy(snapshot, gw, ns);
        let (params, _) = fleet_params(&self.cfg, gw, ep);
        let cert = self.client_cert(snapshot, ns, name, now)?;
        let fleet = fleet_objects(gw, listeners, &params, &self.cfg, &cert, self.ca.cert_pem())?;
        let digest = fleet.digest()?;
        let resync =
            SignedDuration::try_from(self.cfg.resync).unwrap_or(SignedDuration::from_secs(600));
        if let Some(a) = self.applied.get(&key) {
            let fresh = a.at.checked_add(resync).map(|t| now < t).unwrap_or(true);
            if a.digest == digest && fresh {
                return Ok(false);
            }
        }
        for obj in fleet.objects() {
            self.apply(ns, obj).await?;
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
