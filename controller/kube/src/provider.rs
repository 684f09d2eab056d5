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
    /// Namespaces the namespaced kinds are watched in (one watch per kind and namespace, each an
    /// `Api::namespaced`), and the only Namespace objects read (by name). Empty: every kind is
    /// watched cluster-wide. GatewayClass is cluster-scoped and always watched cluster-wide.
    pub namespaces: Vec<String>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            controller_name: crate::DEFAULT_CONTROLLER_NAME.into(),
            debounce: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            namespaces: Vec::new(),
        }
    }
}

/// Health of the watches, for `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct WatchHealth {
    synced: Arc<Mutex<BTreeMap<String, bool>>>,
    absent: Arc<Mutex<BTreeSet<String>>>,
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

    /// Per watch (the kind, or `Kind/namespace` when scoped to namespaces): has it completed
    /// its initial list.
    pub fn kinds(&self) -> BTreeMap<String, bool> {
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
    pub fn absent(&self) -> BTreeSet<String> {
        self.absent.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Record an event; returns whether it changes what a snapshot would contain.
    fn on_event<K>(&self, label: &str, ev: &Result<Event<K>, watcher::Error>) -> bool {
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
                    .map(|mut a| a.insert(label.to_string()))
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

    fn set(&self, kind: &str, synced: bool) {
        if let Ok(mut m) = self.synced.lock() {
            m.insert(kind.to_string(), synced);
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
    wc: watcher::Config,
    dyntype: K::DynamicType,
    label: String,
    health: WatchHealth,
    changes: mpsc::UnboundedSender<()>,
) -> Box<dyn KindStore>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let api_version = K::api_version(&dyntype).to_string();
    let kind = K::kind(&dyntype).to_string();
    let writer = reflector::store::Writer::new(dyntype);
    let store = writer.as_reader();
    health.set(&label, false);
    let stream = watcher::watcher(api, wc).default_backoff().reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if health.on_event(&label, &ev) {
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

/// Where one watch of a kind looks: the whole cluster, or one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Cluster,
    Namespace(String),
}

impl Scope {
    /// The health label of `kind`'s watch in this scope: `Kind`, or `Kind/namespace`.
    fn label(&self, kind: &str) -> String {
        match self {
            Scope::Cluster => kind.to_string(),
            Scope::Namespace(ns) => format!("{kind}/{ns}"),
        }
    }

    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::Cluster => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }

    fn dynamic_api(&self, client: &Client, ar: &ApiResource) -> Api<DynamicObject> {
        match self {
            Scope::Cluster => Api::all_with(client.clone(), ar),
            Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, ar),
        }
    }
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
pub const WATCHED_KINDS: [&str; 15] = [
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "ReferenceGrant",
    "BackendTLSPolicy",
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
        let scopes: Vec<Scope> = if self.cfg.namespaces.is_empty() {
            vec![Scope::Cluster]
        } else {
            let unique: BTreeSet<&String> = self.cfg.namespaces.iter().collect();
            unique
                .into_iter()
                .map(|ns| Scope::Namespace(ns.clone()))
                .collect()
        };
        let mut stores: Vec<Box<dyn KindStore>> = Vec::new();
        // GatewayClass is cluster-scoped: one cluster-wide watch in every mode.
        let class = ApiResource::erase::<gateway_api::gatewayclasses::GatewayClass>(&());
        stores.push(spawn_watch(
            Api::<DynamicObject>::all_with(c.clone(), &class),
            watcher::Config::default(),
            class,
            "GatewayClass".to_string(),
            health.clone(),
            tx.clone(),
        ));
        let dynamic_kinds = [
            (
                ApiResource::erase::<gateway_api::gateways::Gateway>(&()),
                "Gateway",
            ),
            (
                ApiResource::erase::<gateway_api::httproutes::HttpRoute>(&()),
                "HTTPRoute",
            ),
            (
                ApiResource::erase::<gateway_api::referencegrants::ReferenceGrant>(&()),
                "ReferenceGrant",
            ),
            (
                ApiResource::erase::<gateway_api::backendtlspolicies::BackendTlsPolicy>(&()),
                "BackendTLSPolicy",
            ),
        ];
        for (ar, kind) in dynamic_kinds {
            for scope in &scopes {
                stores.push(spawn_watch(
                    scope.dynamic_api(c, &ar),
                    watcher::Config::default(),
                    ar.clone(),
                    scope.label(kind),
                    health.clone(),
                    tx.clone(),
                ));
            }
        }
        for scope in &scopes {
            let typed = |kind: &str| (scope.label(kind), health.clone(), tx.clone());
            let w = watcher::Config::default;
            let (l, h, t) = typed("Service");
            stores.push(spawn_watch(scope.api::<Service>(c), w(), (), l, h, t));
            let (l, h, t) = typed("EndpointSlice");
            stores.push(spawn_watch(scope.api::<EndpointSlice>(c), w(), (), l, h, t));
            let (l, h, t) = typed("Secret");
            stores.push(spawn_watch(scope.api::<Secret>(c), w(), (), l, h, t));
            let (l, h, t) = typed("ConfigMap");
            stores.push(spawn_watch(scope.api::<ConfigMap>(c), w(), (), l, h, t));
            // Namespace is cluster-scoped. Scoped to namespaces, only the watched ones are read,
            // each by name (a `metadata.name` field selector, which RBAC `resourceNames` can
            // authorize for list and watch): their labels are all that `allowedRoutes` selectors
            // and policy target selectors can match, since nothing else is watched.
            let (l, h, t) = typed("Namespace");
            let (ns_api, ns_cfg) = match scope {
                Scope::Cluster => (Api::<Namespace>::all(c.clone()), w()),
                Scope::Namespace(ns) => (
                    Api::<Namespace>::all(c.clone()),
                    w().fields(&format!("metadata.name={ns}")),
                ),
            };
            stores.push(spawn_watch(ns_api, ns_cfg, (), l, h, t));
            let (l, h, t) = typed("EnvoyExtensionPolicy");
            stores.push(spawn_watch(
                scope.api::<EnvoyExtensionPolicy>(c),
                w(),
                (),
                l,
                h,
                t,
            ));
            let (l, h, t) = typed("SecurityPolicy");
            stores.push(spawn_watch(
                scope.api::<SecurityPolicy>(c),
                w(),
                (),
                l,
                h,
                t,
            ));
            let (l, h, t) = typed("BackendTrafficPolicy");
            stores.push(spawn_watch(
                scope.api::<BackendTrafficPolicy>(c),
                w(),
                (),
                l,
                h,
                t,
            ));
            let (l, h, t) = typed("Backend");
            stores.push(spawn_watch(scope.api::<Backend>(c), w(), (), l, h, t));
            let (l, h, t) = typed("EnvoyProxy");
            stores.push(spawn_watch(scope.api::<EnvoyProxy>(c), w(), (), l, h, t));
        }
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
