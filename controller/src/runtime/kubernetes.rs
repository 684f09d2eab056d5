//! The controller's Kubernetes mode: provider snapshots -> translate -> publish xDS (every
//! replica), and statuses + Envoy fleets written back (the leader only).
//!
//! The pipeline is the file mode's, with a different source and sink:
//! - source: `portcullis_kube::provider` (watchers + reflectors, debounced into snapshots of the
//!   objects that belong to our GatewayClasses), rendered to the YAML stream the translator reads;
//! - sink: the same `XdsServer` and `WasmCache`, behind mutual TLS with a server certificate the
//!   controller issues from the xDS CA Secret and renews itself; and `portcullis_kube`'s
//!   `WriteLoop` (status + infrastructure, retried with backoff, leader-only).
//!
//! Nothing here ends the process on a Kubernetes error: start-up waits for the API with backoff
//! (probes answer meanwhile), later errors are retried by their loops.

use super::pipeline::{
    self, Outputs, Pipeline, Provider as SnapshotProvider, ProviderSnapshot, TranslationSink,
};
pub use super::servers::Listeners;
use super::servers::{
    join_within, log_server_end, spawn_http, spawn_https_with_peers, stopped,
    write_bound_addresses, SHUTDOWN_GRACE,
};
use crate::admin::{self, AdminState, Board, LoadErrorView, Probe};
use crate::infra::host::XdsMode;
use crate::metrics::Metrics;
use crate::tls::{self, ServerIdentity};
use crate::wasm::cache::{CacheConfig, WasmCache};
use crate::xds::server::XdsServer;
use anyhow::Context;
use portcullis_kube::backoff::Backoff;
use portcullis_kube::certs::{needs_renewal, CertAuthority, IssuedCert, LEAF_VALIDITY};
use portcullis_kube::infra::{FleetNetworkPolicy, InfraConfig, InfraReconciler};
use portcullis_kube::provider::{Provider, ProviderConfig, WatchHealth};
use portcullis_kube::reconcile::{Translated, WriteLoop};
use portcullis_kube::{LeaderElector, LeaderState, LeaseConfig, Snapshot, StatusRecord};
use portcullis_translator::wasm::source::WasmSource;
use portcullis_translator::{parse_values, ClientTlsFiles, Resources, TranslateOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Everything `portcullis run --provider kubernetes` needs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KubeRuntimeConfig {
    pub controller_name: String,
    pub xds_addr: SocketAddr,
    pub wasm_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub xds_mode: XdsMode,
    /// DNS name of the controller's Service (bootstrap address, certificate SAN).
    pub xds_service: String,
    pub xds_service_port: u16,
    pub wasm_service_port: u16,
    /// The controller's namespace: Lease, CA and session Secrets.
    pub namespace: String,
    /// Lease holder identity.
    pub identity: String,
    pub envoy_image: String,
    pub manage_infra: bool,
    pub leader_election: bool,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub lease_renew: Duration,
    pub ca_secret: String,
    pub session_secret_name: String,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    pub wasm_retry_initial: Duration,
    pub wasm_retry_max: Duration,
    pub debounce: Duration,
    pub max_batch_delay: Duration,
    pub listener_address: String,
    /// Gateway listeners on port 0 (`--ephemeral-listener-ports`).
    pub ephemeral_listener_ports: bool,
    pub builtin_wasm_dir: Option<PathBuf>,
    pub builtin_wasm_urls: BTreeMap<String, WasmSource>,
    /// Directory holding `libportcullis.so`, served to the fleets over the same mTLS endpoint
    /// as the wasm modules (None: none found).
    pub dynamic_module_dir: Option<PathBuf>,
    /// `--builtin-runtime`; None: the dynamic module when the library is there.
    pub builtin_runtime: Option<portcullis_translator::BuiltinRuntime>,
    pub ratelimit_service: Option<String>,
    /// Which upstreams tenant config may reach (Backend off unless `--enable-backend`).
    pub egress: portcullis_translator::egress::EgressPolicy,
    /// Where the fleet's Envoys find their client certificate (`tls.crt`, `tls.key`, `ca.crt`)
    /// for wasm fetches: the mount point of the fleet's Secret,
    /// [`CERT_DIR`](portcullis_kube::infra::CERT_DIR). Tests running Envoy outside a pod point it
    /// elsewhere.
    pub fleet_cert_dir: String,
    /// `--bound-addresses-file`: where to write the addresses actually bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_addresses_file: Option<std::path::PathBuf>,
    /// `--watch-namespace`: the namespaces every namespaced kind is watched in (empty: the
    /// whole cluster).
    pub watch_namespaces: Vec<String>,
    /// `--fleet-network-policy`: a NetworkPolicy per fleet.
    pub fleet_network_policy: bool,
    /// `--fleet-metrics-namespace`: who may scrape the fleets (with the NetworkPolicy).
    pub fleet_metrics_namespaces: Vec<String>,
}

/// Names the controller's server certificate carries: the configured Service name and its
/// usual spellings (`name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local`).
pub fn server_names(xds_service: &str) -> Vec<String> {
    let mut names = vec![xds_service.to_string()];
    let parts: Vec<&str> = xds_service.split('.').collect();
    if parts.len() >= 2 {
        let (svc, ns) = (parts[0], parts[1]);
        for n in [
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ] {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// Client certificate files of the fleet's Envoys (the Secret mounted at `dir`,
/// [`CERT_DIR`](portcullis_kube::infra::CERT_DIR) in the pod): used to fetch wasm modules from the
/// controller over mutual TLS.
pub fn fleet_client_tls(dir: &str) -> ClientTlsFiles {
    let dir = dir.trim_end_matches('/');
    ClientTlsFiles {
        cert_chain: format!("{dir}/tls.crt"),
        private_key: format!("{dir}/tls.key"),
        trusted_ca: format!("{dir}/ca.crt"),
    }
}

/// What the probes read; set once the provider has started.
struct Probes {
    health: WatchHealth,
    leader: LeaderState,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

/// Retry `op` with backoff until it succeeds or `stop` flips; `None` on stop. The latest failure
/// is kept in `last_error` (what `/readyz` reports while starting), cleared on success.
async fn until_ok<T, F, Fut>(
    what: &str,
    stop: &watch::Receiver<bool>,
    last_error: &Mutex<Option<String>>,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = portcullis_kube::Result<T>>,
{
    let mut backoff = Backoff::default();
    let mut stop = stop.clone();
    loop {
        match op().await {
            Ok(v) => {
                *last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Some(v);
            }
            Err(e) => {
                let d = backoff.next_delay();
                *last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("{what}: {e}"));
                tracing::warn!(error = %e, retry_in = ?d, "{what} failed; retrying");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return None,
                    _ = tokio::time::sleep(d) => {}
                }
            }
        }
    }
}

/// Run until `shutdown` resolves.
pub async fn run(
    cfg: KubeRuntimeConfig,
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listeners = Listeners::bind(cfg.xds_addr, cfg.wasm_addr, cfg.admin_addr).await?;
    run_on(cfg, listeners, client, shutdown).await
}

/// [`run`] on listeners the caller bound; `cfg`'s addresses are then ignored. A service port
/// of 0 (`--xds-addr` port 0 without `--xds-service-port`) becomes the bound port.
pub async fn run_on(
    mut cfg: KubeRuntimeConfig,
    listeners: Listeners,
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let bound = listeners.addresses()?;
    let (xds_addr, wasm_addr, admin_addr) = (bound.xds, bound.wasm, bound.admin);
    let Listeners {
        xds: xds_listener,
        wasm: wasm_listener,
        admin: admin_listener,
    } = listeners;
    if cfg.xds_service_port == 0 {
        cfg.xds_service_port = xds_addr.port();
    }
    if cfg.wasm_service_port == 0 {
        cfg.wasm_service_port = wasm_addr.port();
    }
    if let Some(path) = &cfg.bound_addresses_file {
        write_bound_addresses(path, &bound)?;
    }

    // The wasm cache signals here when a module becomes ready or fails.
    let (wasm_tx, wasm_rx) = mpsc::channel::<()>(1);
    let cache = WasmCache::new(
        CacheConfig {
            dir: cfg.cache_dir.clone(),
            max_bytes: cfg.cache_max_bytes,
            serve_base: format!("https://{}:{}", cfg.xds_service, cfg.wasm_service_port),
            retry_initial: cfg.wasm_retry_initial,
            retry_max: cfg.wasm_retry_max,
            fetch_timeout: Duration::from_secs(60),
            egress: cfg.egress.clone(),
            max_module_bytes: portcullis_oci::MAX_WASM_SIZE,
        },
        wasm_tx,
        metrics.clone(),
    )?;
    let xds = XdsServer::new(metrics.clone());
    let board = Arc::new(RwLock::new(Board {
        controller_name: cfg.controller_name.clone(),
        ..Board::default()
    }));

    let (stop_tx, stop_rx) = watch::channel(false);

    // Probes answer from the start, so the kubelet sees "alive, not ready" while the API is
    // unreachable or RBAC is missing.
    let probes: Arc<OnceLock<Probes>> = Arc::new(OnceLock::new());
    // Why start-up has not finished (an unreachable API, missing RBAC, a malformed Secret).
    let start_error: Arc<Mutex<Option<String>>> = Arc::default();
    let readiness: Probe = {
        let probes = probes.clone();
        let start_error = start_error.clone();
        Arc::new(move || match probes.get() {
            None => (
                false,
                serde_json::json!({"ready": false,
                    "reason": "starting: loading the xDS CA and session key from the Kubernetes API",
                    "error": start_error.lock().unwrap_or_else(|p| p.into_inner()).clone()}),
            ),
            Some(p) => portcullis_kube::readiness(&p.health, &p.leader),
        })
    };
    let liveness: Probe = {
        let probes = probes.clone();
        Arc::new(move || match probes.get() {
            None => (true, serde_json::json!({"stage": "starting"})),
            Some(p) => {
                // The provider's batching task holds the sender: gone means no more updates.
                let alive = p.snapshots.has_changed().is_ok();
                (
                    alive,
                    serde_json::json!({"watches": p.health.kinds(), "leader": p.leader.is_leader(),
                                       "provider": if alive { "running" } else { "stopped" }}),
                )
            }
        })
    };
    let admin_task = {
        let state = AdminState {
            metrics: metrics.clone(),
            xds: xds.clone(),
            infra: None,
            cache: cache.clone(),
            board: board.clone(),
            readiness: Some(readiness),
            liveness: Some(liveness),
        };
        spawn_http(admin_listener, admin::router(state), stop_rx.clone())
    };
    tracing::info!(%xds_addr, %wasm_addr, %admin_addr, namespace = %cfg.namespace, identity = %cfg.identity, "portcullis controller (kubernetes) starting");

    tokio::pin!(shutdown);
    // Nothing is served or translated before both are loaded: no xDS, no wasm, no watch. In
    // particular the session key is never a placeholder: a Secret without a valid key is retried
    // (and reported by /readyz) until it is fixed, never replaced by a default.
    let started = async {
        let ca = until_ok("loading the xDS CA Secret", &stop_rx, &start_error, || {
            CertAuthority::load_or_create(client.clone(), &cfg.namespace, &cfg.ca_secret)
        })
        .await?;
        let key = until_ok(
            "loading the session key Secret",
            &stop_rx,
            &start_error,
            || {
                portcullis_kube::session::load_or_create(
                    client.clone(),
                    &cfg.namespace,
                    &cfg.session_secret_name,
                )
            },
        )
        .await?;
        Some((ca, key))
    };
    let (ca, session_key) = tokio::select! {
        _ = &mut shutdown => {
            let _ = stop_tx.send(true);
            let _ = admin_task.await;
            return Ok(());
        }
        got = started => match got {
            Some(v) => v,
            None => return Ok(()),
        },
    };
    let ca = Arc::new(ca);

    let names = server_names(&cfg.xds_service);
    let server_cert = ca
        .issue_server(&names, time::OffsetDateTime::now_utc(), LEAF_VALIDITY)
        .context("issuing the controller's server certificate")?;
    let identity = ServerIdentity::new(ca.cert_pem(), &server_cert.cert_pem, &server_cert.key_pem)
        .context("loading the controller's server certificate")?;
    let renew_task = tokio::spawn(renew_server_cert(
        ca.clone(),
        names,
        identity.clone(),
        server_cert,
        stop_rx.clone(),
    ));
    let xds_task = {
        let xds = xds.clone();
        let acceptor = identity.acceptor(&[b"h2"])?;
        let conns = tls::incoming(xds_listener, acceptor, "xds");
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { xds.serve_tls(conns, stop).await })
    };
    // Fleets present their certificates: each gets only its own Gateway's modules.
    let modules = crate::wasm::access::ModuleAccess::default();
    let wasm_task = spawn_https_with_peers(
        tls::TlsListener::new(wasm_listener, identity.acceptor(&[b"http/1.1"])?, "wasm")?,
        crate::wasm::serve::authorized_router(cfg.cache_dir.clone(), modules.clone()),
        stop_rx.clone(),
    );

    let (leader, elector_task) = if cfg.leader_election {
        let elector = LeaderElector::new(
            client.clone(),
            LeaseConfig {
                namespace: cfg.namespace.clone(),
                name: cfg.lease_name.clone(),
                identity: cfg.identity.clone(),
                lease_duration: cfg.lease_duration,
                renew_interval: cfg.lease_renew,
            },
        );
        let state = elector.state();
        let stop = stopped(stop_rx.clone());
        (state, Some(tokio::spawn(elector.run(stop))))
    } else {
        (LeaderState::always(), None)
    };

    let provider = Provider::new(
        client.clone(),
        ProviderConfig {
            controller_name: cfg.controller_name.clone(),
            debounce: cfg.debounce,
            max_delay: cfg.max_batch_delay,
            namespaces: cfg.watch_namespaces.clone(),
        },
    )
    .start();
    let snapshots = provider.snapshots.clone();
    let _ = probes.set(Probes {
        health: provider.health.clone(),
        leader: leader.clone(),
        snapshots: provider.snapshots.clone(),
    });

    // Status and fleets: leader-only, driven by each translation's snapshot.
    let translated: Arc<Mutex<Translated>> = Arc::default();
    let (write_tx, write_rx) = watch::channel(Arc::new(Snapshot::default()));
    let write_task = {
        let status = portcullis_kube::StatusWriter::new(
            client.clone(),
            &cfg.controller_name,
            leader.clone(),
        );
        let infra = cfg.manage_infra.then(|| {
            InfraReconciler::new(
                client.clone(),
                InfraConfig {
                    xds_host: cfg.xds_service.clone(),
                    xds_port: cfg.xds_service_port,
                    xds_delta: cfg.xds_mode == XdsMode::Delta,
                    envoy_image: cfg.envoy_image.clone(),
                    network_policy: cfg.fleet_network_policy.then(|| FleetNetworkPolicy {
                        metrics_namespaces: cfg.fleet_metrics_namespaces.clone(),
                    }),
                    ..InfraConfig::default()
                },
                leader.clone(),
                ca.clone(),
            )
        });
        let translated = translated.clone();
        let wl = WriteLoop::new(
            move |_: &Snapshot| translated.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            status,
            infra,
            leader.clone(),
        );
        let stop = stopped(stop_rx.clone());
        let mut write_rx = write_rx;
        tokio::spawn(async move {
            tokio::pin!(stop);
            // Nothing is written before the first translation of a synced cluster.
            tokio::select! {
                _ = &mut stop => return,
                changed = write_rx.changed() => if changed.is_err() { return },
            }
            wl.run(write_rx, stop).await;
        })
    };

    let builtin_modules = crate::builtin::builtin_modules(
        cfg.builtin_wasm_dir.as_deref(),
        &cfg.builtin_wasm_urls,
        &cache,
    )?;
    let (builtin_runtime, builtin_dynamic_module) = crate::builtin::builtin_dynamic_module(
        cfg.dynamic_module_dir.as_deref(),
        cfg.builtin_runtime,
        &cache,
    )?;
    let opts = TranslateOptions {
        controller_name: cfg.controller_name.clone(),
        listener_address: cfg.listener_address.clone(),
        ephemeral_listener_ports: cfg.ephemeral_listener_ports,
        builtin_modules,
        builtin_runtime,
        builtin_dynamic_module,
        // The loaded key, always (a `[u8; 32]` from the Secret): the translator's placeholder
        // (`None`, offline `translate` only) is unreachable from here.
        session_secret: Some(session_key),
        ratelimit_service: cfg.ratelimit_service.clone(),
        wasm_fetch_tls: Some(fleet_client_tls(&cfg.fleet_cert_dir)),
        egress: cfg.egress.clone(),
        ..TranslateOptions::default()
    };
    let pipeline = Pipeline {
        opts,
        translator: Default::default(),
        cache: cache.clone(),
        sink: TranslationSink {
            xds: xds.clone(),
            modules,
            board: board.clone(),
            metrics: metrics.clone(),
        },
    };
    let outputs = KubeOutputs {
        translated,
        write_tx,
    };
    pipeline::run(
        KubeSource { snapshots },
        pipeline,
        outputs,
        wasm_rx,
        &mut shutdown,
    )
    .await;

    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    // The write loop releases nothing; the elector gives the Lease up on stop. It is awaited
    // (bounded, alongside the servers): the process exits once `run` returns, ending any task
    // still running, and an unreleased Lease passes to another replica only when it expires.
    let elector_end = async {
        if let Some(t) = elector_task {
            if join_within(t, SHUTDOWN_GRACE).await.is_none() {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "the Lease was not released in time");
            }
        }
    };
    let _ = write_task.await;
    let _ = renew_task.await;
    // A graceful stop waits for open connections to finish, and a managed Envoy never ends its
    // ADS stream: bound the wait, then drop the servers (the fleet reconnects to another replica).
    let (xds_end, wasm_end, admin_end, ()) = tokio::join!(
        join_within(xds_task, SHUTDOWN_GRACE),
        join_within(wasm_task, SHUTDOWN_GRACE),
        join_within(admin_task, SHUTDOWN_GRACE),
        elector_end,
    );
    log_server_end("xDS", xds_end);
    log_server_end("wasm", wasm_end);
    log_server_end("admin", admin_end);
    tracing::info!("stopped");
    Ok(())
}

/// Re-issue the server certificate when a third of its validity is left; hourly checks.
async fn renew_server_cert(
    ca: Arc<CertAuthority>,
    names: Vec<String>,
    identity: ServerIdentity,
    mut current: IssuedCert,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        let now = time::OffsetDateTime::now_utc();
        if !needs_renewal(current.not_after, now, LEAF_VALIDITY) {
            continue;
        }
        match ca
            .issue_server(&names, now, LEAF_VALIDITY)
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                identity.rotate(&c.cert_pem, &c.key_pem)?;
                Ok(c)
            }) {
            Ok(c) => {
                tracing::info!(not_after = %c.not_after, "renewed the controller's server certificate");
                current = c;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the server certificate failed; retrying in an hour")
            }
        }
    }
}

/// The Kubernetes provider's snapshots as a pipeline [`SnapshotProvider`]: the objects are
/// parsed from their JSON as the API served them (no YAML round trip).
struct KubeSource {
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl SnapshotProvider for KubeSource {
    type Source = Arc<Snapshot>;

    async fn next(&mut self) -> Option<ProviderSnapshot<Arc<Snapshot>>> {
        // `changed` is cancel-safe: a snapshot not yet seen stays "changed".
        self.snapshots.changed().await.ok()?;
        let snap = self.snapshots.borrow_and_update().clone();
        let input = snap.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            parse_values("kubernetes", input.iter().map(|(_, v)| v.clone()))
        })
        .await;
        // A panic while parsing: nothing to translate (the last translation keeps serving).
        let (resources, errors) = parsed.unwrap_or_default();
        // An object that does not load (a shape the CRDs allow but we cannot read) is skipped
        // and reported; the rest of the cluster still translates.
        let load_errors = errors.into_iter().map(LoadErrorView::from).collect();
        Some(ProviderSnapshot {
            resources: Resources::from_parsed(resources),
            load_errors,
            source: snap,
        })
    }
}

/// Kubernetes mode's outputs: the statuses and fleets the leader's write loop applies.
struct KubeOutputs {
    translated: Arc<Mutex<Translated>>,
    write_tx: watch::Sender<Arc<Snapshot>>,
}

impl Outputs<Arc<Snapshot>> for KubeOutputs {
    fn translated(&self, _: &Arc<Snapshot>, out: &portcullis_translator::TranslateOutput) {
        let records: Vec<StatusRecord> = out
            .statuses
            .iter()
            .filter_map(|s| match StatusRecord::from_serializable(s) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "status record not writable");
                    None
                }
            })
            .collect();
        *self.translated.lock().unwrap_or_else(|p| p.into_inner()) = Translated {
            records,
            gateways: out.gateways.clone(),
        };
    }

    fn published(&self, snap: &Arc<Snapshot>, _generation: u64) {
        // Every send is a change to the write loop, which then reads the statuses set above.
        let _ = self.write_tx.send(snap.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_cover_the_usual_spellings() {
        assert_eq!(
            server_names("portcullis.portcullis-system.svc"),
            vec![
                "portcullis.portcullis-system.svc",
                "portcullis.portcullis-system",
                "portcullis.portcullis-system.svc.cluster.local"
            ]
        );
        assert_eq!(server_names("localhost"), vec!["localhost"]);
    }
}
