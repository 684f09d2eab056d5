//! File mode: the manifests under `-f` are the provider; one Envoy per Gateway runs on this host.
//!
//! [`FileSource`] re-reads every manifest after a change (debounced), keeping each file's last
//! good version when a save does not load; [`HostOutputs`] starts and stops the Envoys. The loop
//! is [`super::pipeline::run`], shared with Kubernetes mode.

use super::pipeline::{self, Outputs, Pipeline, Provider, ProviderSnapshot, TranslationSink};
use super::servers::{log_server_end, spawn_http, stopped, write_bound_addresses, Listeners};
use crate::admin::{self, AdminState, Board, LoadErrorView};
use crate::infra::host::{find_envoy, HostConfig, HostInfra, XdsMode};
use crate::metrics::Metrics;
use crate::provider::file::FileProvider;
use crate::wasm::cache::{CacheConfig, WasmCache};
use crate::xds::server::XdsServer;
use anyhow::Context;
use portcullis_translator::wasm::source::WasmSource;
use portcullis_translator::{
    BuiltinRuntime, ParseCache, ParseCacheStats, Resource, Resources, TranslateOptions,
    TranslateOutput,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub paths: Vec<PathBuf>,
    pub controller_name: String,
    pub xds_addr: SocketAddr,
    pub wasm_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// None: do not run Envoys (serve xDS only).
    pub envoy: Option<EnvoyConfig>,
    pub xds_mode: XdsMode,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    pub wasm_retry_initial: Duration,
    pub wasm_retry_max: Duration,
    pub work_dir: PathBuf,
    pub listener_address: String,
    /// Gateway listeners on port 0 (`--ephemeral-listener-ports`).
    pub ephemeral_listener_ports: bool,
    pub debounce: Duration,
    /// Directory holding the built-in `oidc.wasm` / `ratelimit.wasm` (None: none configured).
    pub builtin_wasm_dir: Option<PathBuf>,
    /// Built-in modules fetched from a URL instead; they override the directory's.
    pub builtin_wasm_urls: BTreeMap<String, WasmSource>,
    /// Directory holding `libportcullis.so` (None: none found).
    pub dynamic_module_dir: Option<PathBuf>,
    /// `--builtin-runtime`; None: the dynamic module when the library is there.
    pub builtin_runtime: Option<BuiltinRuntime>,
    /// Key the OIDC cookie secrets derive from (never logged). Not optional: file mode always
    /// serves with the persisted key, never the public placeholder of offline `translate`.
    pub session_secret: [u8; 32],
    /// `host:port` of the rate-limit gRPC service for global limits.
    pub ratelimit_service: Option<String>,
    /// Which upstreams tenant config may reach (`--enable-backend`, `--allow-backend-cidr`).
    pub egress: portcullis_translator::egress::EgressPolicy,
    /// `--bound-addresses-file`: where to write the addresses actually bound.
    pub bound_addresses_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    pub bin: Option<PathBuf>,
    pub concurrency: Option<u32>,
    pub log_level: String,
    pub drain_timeout: Duration,
}

/// File mode serves xDS without TLS: fine on loopback (the Envoys it spawns), but anyone who
/// reaches another address reads every tenant's configuration, cookie keys and client secrets.
fn plaintext_xds_warning(addr: SocketAddr) -> Option<&'static str> {
    (!addr.ip().is_loopback()).then_some(
        "the xDS server has no TLS in file mode and listens beyond loopback: anyone who reaches it reads every Gateway's configuration and secrets; bind --xds-addr to 127.0.0.1 or restrict access to it",
    )
}

/// Run until `shutdown` resolves, then drain Envoys and return.
pub async fn run(
    cfg: RuntimeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let provider = FileProvider::new(cfg.paths.clone()).context("reading manifests")?;

    let listeners = Listeners::bind(cfg.xds_addr, cfg.wasm_addr, cfg.admin_addr).await?;
    let bound = listeners.addresses()?;
    let (xds_addr, wasm_addr, admin_addr) = (bound.xds, bound.wasm, bound.admin);
    if let Some(why) = plaintext_xds_warning(xds_addr) {
        tracing::warn!(%xds_addr, "{why}");
    }
    if let Some(path) = &cfg.bound_addresses_file {
        write_bound_addresses(path, &bound)?;
    }
    let Listeners {
        xds: xds_listener,
        wasm: wasm_listener,
        admin: admin_listener,
    } = listeners;

    // The wasm cache signals here when a module becomes ready or fails; the file watcher has
    // its own channel (see `FileSource`).
    let (wasm_tx, wasm_rx) = mpsc::channel::<()>(1);
    let cache = WasmCache::new(
        CacheConfig {
            dir: cfg.cache_dir.clone(),
            max_bytes: cfg.cache_max_bytes,
            serve_base: format!("http://{wasm_addr}"),
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
    let infra = match &cfg.envoy {
        Some(e) => {
            let bin = find_envoy(e.bin.as_deref()).context(
                "Envoy not found: pass --envoy-bin or put `envoy` on PATH (or use --no-envoy)",
            )?;
            Some(Arc::new(HostInfra::new(
                HostConfig {
                    envoy_bin: bin,
                    xds_addr,
                    xds_mode: cfg.xds_mode,
                    work_dir: cfg.work_dir.clone(),
                    concurrency: e.concurrency,
                    log_level: e.log_level.clone(),
                    drain_timeout: e.drain_timeout,
                    restart_backoff_max: Duration::from_secs(30),
                },
                metrics.clone(),
            )?))
        }
        None => None,
    };
    let board = Arc::new(RwLock::new(Board {
        controller_name: cfg.controller_name.clone(),
        ..Board::default()
    }));

    let (stop_tx, stop_rx) = watch::channel(false);
    let xds_task = {
        let xds = xds.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { xds.serve(xds_listener, stop).await })
    };
    let wasm_task = spawn_http(
        wasm_listener,
        crate::wasm::serve::router(cfg.cache_dir.clone()),
        stop_rx.clone(),
    );
    let admin_task = {
        let state = AdminState {
            metrics: metrics.clone(),
            xds: xds.clone(),
            infra: infra.clone(),
            cache: cache.clone(),
            board: board.clone(),
            readiness: None,
            liveness: None,
        };
        spawn_http(admin_listener, admin::router(state), stop_rx.clone())
    };
    tracing::info!(%xds_addr, %wasm_addr, %admin_addr, mode = ?cfg.xds_mode, paths = ?cfg.paths, "portcullis controller listening");

    let source = FileSource::start(provider, cfg.debounce).context("watching manifests")?;
    let builtin_modules = crate::builtin::builtin_modules(
        cfg.builtin_wasm_dir.as_deref(),
        &cfg.builtin_wasm_urls,
        &cache,
    )?;
    tracing::info!(
        modules = ?builtin_modules.keys().collect::<Vec<_>>(),
        ratelimit_service = ?cfg.ratelimit_service,
        "built-in filter modules"
    );
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
        // Always a loaded key: only offline `translate` uses the public placeholder.
        session_secret: Some(cfg.session_secret),
        ratelimit_service: cfg.ratelimit_service.clone(),
        builtin_runtime,
        builtin_dynamic_module,
        egress: cfg.egress.clone(),
        ..TranslateOptions::default()
    };
    let pipeline = Pipeline {
        opts,
        translator: Default::default(),
        cache,
        sink: TranslationSink {
            xds: xds.clone(),
            modules: Default::default(),
            board,
            metrics,
        },
    };
    let outputs = HostOutputs {
        infra: infra.clone(),
    };
    pipeline::run(source, pipeline, outputs, wasm_rx, shutdown).await;

    tracing::info!("shutting down: draining Envoys");
    if let Some(infra) = &infra {
        infra.shutdown().await;
    }
    let _ = stop_tx.send(true);
    log_server_end("xDS", Some(xds_task.await));
    log_server_end("wasm", Some(wasm_task.await));
    log_server_end("admin", Some(admin_task.await));
    tracing::info!("stopped");
    Ok(())
}

/// The manifest files as a [`Provider`]: the first snapshot at once, then one per burst of
/// changes (after `debounce`, so editors finish writing).
pub struct FileSource {
    files: FileProvider,
    changes: mpsc::Receiver<()>,
    _watcher: notify::RecommendedWatcher,
    debounce: Duration,
    /// A change was seen and not read yet (kept across a cancelled `next`).
    pending: bool,
    /// What each file yielded when it last loaded without errors, and the parse memo.
    memory: Arc<Mutex<FileMemory>>,
}

/// What [`FileSource`] keeps between reads.
#[derive(Default)]
struct FileMemory {
    /// What each file yielded when it last loaded without errors (shared objects: a pointer
    /// copy per object).
    last_good: HashMap<String, Vec<Resource>>,
    /// Each document's parse, reused while its text is unchanged.
    parsed: ParseCache,
}

impl FileSource {
    pub fn start(
        files: FileProvider,
        debounce: Duration,
    ) -> Result<Self, crate::provider::file::ProviderError> {
        let (tx, changes) = mpsc::channel(1);
        let watcher = files.watch(tx)?;
        Ok(Self {
            files,
            changes,
            _watcher: watcher,
            debounce,
            pending: true,
            memory: Arc::default(),
        })
    }
}

impl Provider for FileSource {
    type Source = ();

    async fn next(&mut self) -> Option<ProviderSnapshot<()>> {
        if !self.pending {
            self.changes.recv().await?;
            self.pending = true;
            // Editors write in bursts: let them finish, then take every queued change at once.
            tokio::time::sleep(self.debounce).await;
        }
        while self.changes.try_recv().is_ok() {}
        let (files, memory) = (self.files.clone(), self.memory.clone());
        // Reading and parsing are blocking work; keep them off the async workers.
        let read = tokio::task::spawn_blocking(move || read_manifests(&files, &memory)).await;
        self.pending = false;
        match read {
            Ok(snapshot) => Some(snapshot),
            Err(e) => {
                tracing::error!(error = %e, "reading the manifests failed; keeping the last snapshot");
                None
            }
        }
    }
}

/// Every manifest, parsed. Like `kubectl apply` rejecting an invalid object, a file that does
/// not load keeps its last good version: a half-written save cannot take a Gateway down.
fn read_manifests(files: &FileProvider, memory: &Mutex<FileMemory>) -> ProviderSnapshot<()> {
    let started = std::time::Instant::now();
    let mut parsed = Vec::new();
    let mut load_errors = Vec::new();
    let mut memory = memory.lock().unwrap_or_else(|p| p.into_inner());
    let FileMemory {
        last_good,
        parsed: cache,
    } = &mut *memory;
    let files = files.read_all();
    last_good.retain(|name, _| files.iter().any(|f| &f.name == name));
    cache.retain_files(files.iter().map(|f| f.name.as_str()));
    let mut stats = ParseCacheStats::default();
    for f in files {
        let (docs, errs) = match &f.content {
            Ok(text) => {
                let (res, errs, s) = cache.parse(&f.name, text);
                stats += s;
                let errs: Vec<LoadErrorView> = errs.into_iter().map(LoadErrorView::from).collect();
                if errs.is_empty() {
                    last_good.insert(f.name.clone(), res.clone());
                }
                (res, errs)
            }
            Err(reason) => (
                Vec::new(),
                vec![LoadErrorView {
                    source: f.name.clone(),
                    document: None,
                    reason: reason.clone(),
                }],
            ),
        };
        if errs.is_empty() {
            parsed.extend(docs);
            continue;
        }
        match last_good.get(&f.name) {
            Some(previous) => {
                // The version on disk stays in the parse memo and is reported on every read
                // until it is fixed.
                parsed.extend(previous.iter().cloned());
                load_errors.extend(errs.into_iter().map(|mut e| {
                    e.reason
                        .push_str(" (serving the last good version of this file)");
                    e
                }));
            }
            None => {
                parsed.extend(docs);
                load_errors.extend(errs);
            }
        }
    }
    let resources = Resources::from_parsed(parsed);
    tracing::debug!(
        documents_parsed = stats.parsed,
        documents_reused = stats.reused,
        read_ms = started.elapsed().as_millis() as u64,
        "read the manifests"
    );
    ProviderSnapshot {
        resources,
        load_errors,
        source: (),
    }
}

/// File mode's outputs: one Envoy per translated Gateway on this host.
struct HostOutputs {
    infra: Option<Arc<HostInfra>>,
}

impl Outputs<()> for HostOutputs {
    fn translated(&self, _: &(), out: &TranslateOutput) {
        if let Some(infra) = &self.infra {
            let nodes: Vec<String> = out.gateways.iter().map(|g| g.node_id.clone()).collect();
            infra.reconcile(&nodes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plaintext_xds_warning;

    #[test]
    fn plaintext_xds_beyond_loopback_is_warned_about() {
        for quiet in ["127.0.0.1:18000", "[::1]:18000", "127.0.0.1:0"] {
            assert_eq!(plaintext_xds_warning(quiet.parse().expect("addr")), None);
        }
        for loud in ["0.0.0.0:18000", "[::]:18000", "10.0.0.5:18000"] {
            let w = plaintext_xds_warning(loud.parse().expect("addr")).expect(loud);
            assert!(w.contains("--xds-addr"));
        }
    }
}
