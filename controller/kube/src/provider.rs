//! The Kubernetes provider: one kube-rs `watcher` + `reflector` per kind, and a debouncer that
//! turns bursts of watch events into a few [`Snapshot`]s.
//!
//! Kinds and types:
//! - GatewayClass, Gateway, HTTPRoute, ReferenceGrant: the `gateway-api` crate gives their API
//!   coordinates; objects are kept as `DynamicObject` (raw JSON) rather than decoded into the
//!   crate's structs, so a field or enum value newer than the 0.22 bindings is carried to the
//!   translator instead of being dropped or failing the whole watch;
//! - Service, EndpointSlice, Secret, ConfigMap, Namespace: `k8s-openapi` types;
//! - EnvoyExtensionPolicy, SecurityPolicy, BackendTrafficPolicy, Backend, EnvoyProxy:
//!   [`crate::types`] (typed targets, everything else carried verbatim).
//!
//! A snapshot is emitted once every watch has listed (so a half-synced cache never deletes
//! fleets or rewrites statuses), then after each quiet period of `debounce` following a change,
//! at the latest `max_delay` after the first change of a batch. Snapshots equal to the previous
//! one (e.g. only irrelevant objects changed) are not emitted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::snapshot::{relevant, Snapshot};
use crate::types::{
    Backend, BackendTrafficPolicy, EnvoyExtensionPolicy, EnvoyProxy, SecurityPolicy,
};

/// Provider settings.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Our GatewayClass `spec.controllerName`.
    pub controller_name: String,
    /// Quiet period that ends a batch.
    pub debounce: Duration,
    /// Longest a batch may be held back under a constant stream of changes.
    pub max_delay: Duration,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            controller_name: crate::DEFAULT_CONTROLLER_NAME.into(),
            debounce: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
        }
    }
}

/// Health of the watches, for `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct WatchHealth {
    synced: Arc<Mutex<BTreeMap<&'static str, bool>>>,
    absent: Arc<Mutex<BTreeSet<&'static str>>>,
    snapshots: Arc<AtomicU64>,
    events: Arc<AtomicU64>,
}

impl WatchHealth {
    /// Whether every watch has completed its initial list.
    pub fn all_synced(&self) -> bool {
        self.synced
            .lock()
            .map(|m| !m.is_empty() && m.values().all(|s| *s))
            .unwrap_or(false)
    }

    /// Per kind: has it completed its initial list.
    pub fn kinds(&self) -> BTreeMap<&'static str, bool> {
        self.synced.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Snapshots emitted so far.
    pub fn snapshots_emitted(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// Watch events received so far.
    pub fn events_seen(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Kinds the API server does not serve (CRD not installed): treated as empty, and picked up
    /// by the watch's retries once the CRD appears.
    pub fn absent(&self) -> BTreeSet<&'static str> {
        self.absent.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Record an event; returns whether it changes what a snapshot would contain.
    fn on_event<K>(&self, label: &'static str, ev: &Result<Event<K>, watcher::Error>) -> bool {
        match ev {
            Ok(Event::InitDone) => {
                if let Ok(mut a) = self.absent.lock() {
                    a.remove(label);
                }
                self.set(label, true);
                true
            }
            Ok(Event::Apply(_)) | Ok(Event::Delete(_)) => {
                self.events.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(Event::Init) | Ok(Event::InitApply(_)) => false,
            Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) if s.code == 404 => {
                let newly = self
                    .absent
                    .lock()
                    .map(|mut a| a.insert(label))
                    .unwrap_or(false);
                if newly {
                    tracing::warn!(
                        kind = label,
                        "not served by the API server (CRD missing?); treating as empty"
                    );
                    self.set(label, true);
                }
                newly
            }
            Err(e) => {
                // The backoff retries; the store keeps the last good state meanwhile.
                tracing::warn!(kind = label, error = %e, "watch error; retrying");
                false
            }
        }
    }

    fn set(&self, kind: &'static str, synced: bool) {
        if let Ok(mut m) = self.synced.lock() {
            m.insert(kind, synced);
        }
    }
}

/// A kind's reflector store, read as JSON objects.
trait KindStore: Send + Sync {
    fn objects(&self) -> Vec<Value>;
}

struct TypedStore<K: Resource + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: Store<K>,
    api_version: String,
    kind: String,
}

impl<K> KindStore for TypedStore<K>
where
    K: Resource + Clone + Serialize + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    fn objects(&self) -> Vec<Value> {
        self.store
            .state()
            .iter()
            .filter_map(|o| match serde_json::to_value(o.as_ref()) {
                Ok(Value::Object(mut m)) => {
                    m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
                    m.insert("kind".into(), Value::String(self.kind.clone()));
                    // Field-manager bookkeeping is large and meaningless to translation.
                    if let Some(Value::Object(meta)) = m.get_mut("metadata") {
                        meta.remove("managedFields");
                    }
                    Some(Value::Object(m))
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(kind = %self.kind, error = %e, "cannot serialize a watched object");
                    None
                }
            })
            .collect()
    }
}

fn spawn_watch<K>(
    api: Api<K>,
    dyntype: K::DynamicType,
    label: &'static str,
    health: WatchHealth,
    changes: mpsc::UnboundedSender<()>,
) -> Box<dyn KindStore>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default + Send + Sync,
{
    let api_version = K::api_version(&dyntype).to_string();
    let kind = K::kind(&dyntype).to_string();
    let writer = reflector::store::Writer::new(dyntype);
    let store = writer.as_reader();
    health.set(label, false);
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if health.on_event(label, &ev) {
                let _ = changes.send(());
            }
        }
    });
    Box::new(TypedStore {
        store,
        api_version,
        kind,
    })
}

/// Dynamic kinds use an [`ApiResource`] as their dynamic type, which has no `Default`.
fn spawn_dynamic_watch(
    client: &Client,
    ar: ApiResource,
    label: &'static str,
    health: WatchHealth,
    changes: mpsc::UnboundedSender<()>,
) -> Box<dyn KindStore> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let api_version = ar.api_version.clone();
    let kind = ar.kind.clone();
    let writer = reflector::store::Writer::new(ar);
    let store = writer.as_reader();
    health.set(label, false);
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if health.on_event(label, &ev) {
                let _ = changes.send(());
            }
        }
    });
    Box::new(TypedStore::<DynamicObject> {
        store,
        api_version,
        kind,
    })
}

/// Wait for the next batch of change notifications: returns once `debounce` passed without a
/// new one, or `max_delay` after the first, whichever is sooner. `None` when the channel closed.
pub async fn next_batch(
    rx: &mut mpsc::UnboundedReceiver<()>,
    debounce: Duration,
    max_delay: Duration,
) -> Option<usize> {
    rx.recv().await?;
    let mut n = 1;
    let deadline = tokio::time::Instant::now() + max_delay;
    loop {
        let quiet = tokio::time::Instant::now() + debounce;
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(()) => n += 1,
                None => return Some(n),
            },
            _ = tokio::time::sleep_until(quiet.min(deadline)) => return Some(n),
        }
        if tokio::time::Instant::now() >= deadline {
            return Some(n);
        }
    }
}

/// A running provider: the latest relevant snapshot and the watches' health.
pub struct ProviderHandle {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub health: WatchHealth,
}

/// The Kubernetes provider.
pub struct Provider {
    client: Client,
    cfg: ProviderConfig,
}

/// Labels of the watched kinds, in the order the watches start.
pub const WATCHED_KINDS: [&str; 14] = [
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "ReferenceGrant",
    "Service",
    "EndpointSlice",
    "Secret",
    "ConfigMap",
    "Namespace",
    "EnvoyExtensionPolicy",
    "SecurityPolicy",
    "BackendTrafficPolicy",
    "Backend",
    "EnvoyProxy",
];

impl Provider {
    pub fn new(client: Client, cfg: ProviderConfig) -> Self {
        Self { client, cfg }
    }

    /// Start every watch and the debouncer (tokio tasks, running until the runtime stops).
    pub fn start(self) -> ProviderHandle {
        let health = WatchHealth::default();
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let c = &self.client;
        let gw =
            |ar: ApiResource, label| spawn_dynamic_watch(c, ar, label, health.clone(), tx.clone());
        let stores: Vec<Box<dyn KindStore>> = vec![
            gw(
                ApiResource::erase::<gateway_api::gatewayclasses::GatewayClass>(&()),
                "GatewayClass",
            ),
            gw(
                ApiResource::erase::<gateway_api::gateways::Gateway>(&()),
                "Gateway",
            ),
            gw(
                ApiResource::erase::<gateway_api::httproutes::HttpRoute>(&()),
                "HTTPRoute",
            ),
            gw(
                ApiResource::erase::<gateway_api::referencegrants::ReferenceGrant>(&()),
                "ReferenceGrant",
            ),
            spawn_watch(
                Api::<Service>::all(c.clone()),
                (),
                "Service",
                health.clone(),
                tx.clone(),
            ),
            spawn_watch(
                Api::<EndpointSlice>::all(c.clone()),
                (),
                "EndpointSlice",
                health.clone(),
                tx.clone(),
            ),
            spawn_watch(
                Api::<Secret>::all(c.clone()),
                (),
                "Secret",
                health.clone(),
                tx.clone(),
            ),
            spawn_watch(
                Api::<ConfigMap>::all(c.clone()),
                (),
                "ConfigMap",
                health.clone(),
                tx.clone(),
            ),
            spawn_watch(
                Api::<Namespace>::all(c.clone()),
                (),
                "Namespace",
                health.clone(),
                tx.clone(),
            ),
            spawn_watch(
                Api::<EnvoyExtensionPolicy>::all(c.clone()),
                (),
                "EnvoyExtensionPolicy",
                health.clone(),
                tx.clone(),
            ),
            spawn_watch(
                Api::<SecurityPolicy>::all(c.clone()),
                (),
                "SecurityPolicy",
                health.clone(),
                tx.clone(),
            ),
            spawn_watch(
                Api::<BackendTrafficPolicy>::all(c.clone()),
                (),
                "BackendTrafficPolicy",
                health.clone(),
                tx.clone(),
            ),
            spawn_watch(
                Api::<Backend>::all(c.clone()),
                (),
                "Backend",
                health.clone(),
                tx.clone(),
            ),
            spawn_watch(
                Api::<EnvoyProxy>::all(c.clone()),
                (),
                "EnvoyProxy",
                health.clone(),
                tx.clone(),
            ),
        ];
        drop(tx);
        let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
        let cfg = self.cfg;
        let h = health.clone();
        tokio::spawn(async move {
            let mut last: Option<Arc<Snapshot>> = None;
            while let Some(n) = next_batch(&mut rx, cfg.debounce, cfg.max_delay).await {
                if !h.all_synced() {
                    continue;
                }
                let all = Snapshot::from_objects(stores.iter().flat_map(|s| s.objects()));
                let snap = Arc::new(relevant(&all, &cfg.controller_name));
                if last.as_deref() == Some(snap.as_ref()) {
                    tracing::debug!(events = n, "batch changed nothing relevant");
                    continue;
                }
                tracing::debug!(events = n, objects = snap.len(), "snapshot");
                last = Some(snap.clone());
                h.snapshots.fetch_add(1, Ordering::Relaxed);
                if snap_tx.send(snap).is_err() {
                    break;
                }
            }
        });
        ProviderHandle {
            snapshots: snap_rx,
            health,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_1000_changes_is_one_batch() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..1000 {
            tx.send(()).expect("send");
        }
        let n = next_batch(&mut rx, Duration::from_millis(100), Duration::from_secs(2)).await;
        assert_eq!(n, Some(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_is_cut_by_max_delay() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // One change every 10ms for 1s: never quiet for 100ms, so only max_delay ends batches.
        tokio::spawn(async move {
            for _ in 0..100 {
                if tx.send(()).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut batches = Vec::new();
        while let Some(n) = next_batch(
            &mut rx,
            Duration::from_millis(100),
            Duration::from_millis(300),
        )
        .await
        {
            batches.push(n);
        }
        assert_eq!(batches.iter().sum::<usize>(), 100);
        assert!((3..=5).contains(&batches.len()), "{batches:?}");
    }
}
