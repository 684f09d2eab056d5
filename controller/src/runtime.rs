//! The controller's main loop: files -> translate -> publish xDS, fetch wasm, run Envoys.
//!
//! One trigger channel carries "something changed" from the file watcher and the wasm cache;
//! each trigger re-reads every manifest and re-translates (translation is pure and cheap to
//! repeat; identical output publishes nothing).

use crate::admin::{self, AdminState, Board, LoadErrorView};
use crate::infra::host::{find_envoy, HostConfig, HostInfra, XdsMode};
use crate::metrics::{Metrics, ResultLabel};
use crate::provider::file::FileProvider;
use crate::wasm::cache::{CacheConfig, PullSecrets, WasmCache};
use crate::xds::server::XdsServer;
use anyhow::Context;
use portcullis_translator::wasm::source::{WasmCodeType, WasmSource};
use portcullis_translator::{
    parse_documents, translate, BuiltinRuntime, Resources, TranslateOptions, TranslateOutput,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
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

pub(crate) async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the {what} on {addr}"))
}

/// The addresses the controller actually bound (port 0 resolved), as written to
/// `--bound-addresses-file`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct BoundAddresses {
    pub admin: SocketAddr,
    pub xds: SocketAddr,
    pub wasm: SocketAddr,
}

/// Writes `addrs` to `path` as JSON, atomically (beside, then renamed), so a reader that sees
/// the file sees all of it.
pub(crate) fn write_bound_addresses(path: &Path, addrs: &BoundAddresses) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp~");
    let tmp = PathBuf::from(tmp);
    let text = serde_json::to_string(addrs)?;
    std::fs::write(&tmp, text + "\n").with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Resolves once the stop flag is set.
pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serve `app` on `listener` (plain TCP or mutual TLS) until `stop` is set.
/// [`spawn_http`] for a router that reads the verified peer ([`crate::wasm::serve::PeerNode`]).
pub(crate) fn spawn_https_with_peers(
    listener: crate::tls::TlsListener,
    app: axum::Router,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<crate::wasm::serve::PeerNode>(),
        )
        .with_graceful_shutdown(stopped(stop))
        .await
    })
}

pub(crate) fn spawn_http<L>(
    listener: L,
    app: axum::Router,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped(stop))
            .await
    })
}

/// How long the servers may take to finish after shutdown before they are dropped.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Await `task` for at most `grace`; abort it and return `None` when it takes longer.
pub(crate) async fn join_within<T>(
    task: tokio::task::JoinHandle<T>,
    grace: Duration,
) -> Option<Result<T, tokio::task::JoinError>> {
    let abort = task.abort_handle();
    match tokio::time::timeout(grace, task).await {
        Ok(r) => Some(r),
        Err(_) => {
            abort.abort();
            None
        }
    }
}

/// Log how a server task ended (`None`: given up on after [`SHUTDOWN_GRACE`]).
pub(crate) fn log_server_end<E: std::fmt::Display>(
    name: &str,
    end: Option<Result<Result<(), E>, tokio::task::JoinError>>,
) {
    match end {
        None => tracing::info!(
            server = name,
            grace = ?SHUTDOWN_GRACE,
            "connections still open after the grace period; not waiting for them"
        ),
        Some(Ok(Err(e))) => tracing::warn!(server = name, error = %e, "server ended with an error"),
        Some(Err(e)) => tracing::warn!(server = name, error = %e, "server task failed"),
        Some(Ok(Ok(()))) => {}
    }
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

    let xds_listener = bind(cfg.xds_addr, "xDS server").await?;
    let wasm_listener = bind(cfg.wasm_addr, "wasm endpoint").await?;
    let admin_listener = bind(cfg.admin_addr, "admin endpoint").await?;
    let xds_addr = xds_listener.local_addr()?;
    let wasm_addr = wasm_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    if let Some(why) = plaintext_xds_warning(xds_addr) {
        tracing::warn!(%xds_addr, "{why}");
    }
    if let Some(path) = &cfg.bound_addresses_file {
        let addrs = BoundAddresses {
            admin: admin_addr,
            xds: xds_addr,
            wasm: wasm_addr,
        };
        write_bound_addresses(path, &addrs)?;
    }

    let (trigger_tx, mut trigger_rx) = mpsc::channel::<()>(1);
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
        trigger_tx.clone(),
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

    let _watcher = provider
        .watch(trigger_tx.clone())
        .context("watching manifests")?;
    let builtin_modules = builtin_modules(
        cfg.builtin_wasm_dir.as_deref(),
        &cfg.builtin_wasm_urls,
        &cache,
    )?;
    tracing::info!(
        modules = ?builtin_modules.keys().collect::<Vec<_>>(),
        ratelimit_service = ?cfg.ratelimit_service,
        "built-in filter modules"
    );
    let (builtin_runtime, builtin_dynamic_module) = builtin_dynamic_module(
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
    let ctx = Reconciler {
        provider,
        opts,
        cache,
        infra: infra.clone(),
        sink: TranslationSink {
            xds: xds.clone(),
            modules: Default::default(),
            board,
            metrics,
        },
        last_good: Default::default(),
    };

    tokio::pin!(shutdown);
    ctx.reconcile().await;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            got = trigger_rx.recv() => {
                if got.is_none() { break; }
                // Editors write in bursts: let them finish, then take every queued trigger at once.
                tokio::time::sleep(cfg.debounce).await;
                while trigger_rx.try_recv().is_ok() {}
                ctx.reconcile().await;
            }
        }
    }

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

/// The built-in modules: files of the builtin directory registered in the cache (served from
/// it by sha256), then `--builtin-wasm-url` sources, which win.
pub(crate) fn builtin_modules(
    dir: Option<&std::path::Path>,
    urls: &BTreeMap<String, WasmSource>,
    cache: &WasmCache,
) -> anyhow::Result<BTreeMap<String, WasmSource>> {
    let mut out = BTreeMap::new();
    if let Some(dir) = dir {
        for m in crate::builtin::read_builtin_dir(dir)? {
            let src = cache.add_local(&m.path, &m.bytes).with_context(|| {
                format!(
                    "storing built-in module {} in the wasm cache",
                    m.path.display()
                )
            })?;
            tracing::info!(module = %m.name, path = %m.path.display(), sha256 = %m.sha256, "built-in wasm module");
            out.insert(m.name, src);
        }
    }
    out.extend(urls.clone());
    Ok(out)
}

/// The runtime of the built-in filters and, when the controller has `libportcullis.so`, the
/// library registered in the cache (served to Envoy from it by sha256, like the wasm modules).
pub(crate) fn builtin_dynamic_module(
    dir: Option<&std::path::Path>,
    asked: Option<BuiltinRuntime>,
    cache: &WasmCache,
) -> anyhow::Result<(BuiltinRuntime, Option<WasmSource>)> {
    let module = match dir {
        Some(d) => crate::builtin::read_dynamic_module(d)?,
        None => None,
    };
    let runtime = crate::builtin::choose_runtime(asked, module.is_some())?;
    let source = match module {
        Some(m) => {
            let src = cache
                .add_local_as(WasmCodeType::DynamicModule, &m.path, &m.bytes)
                .with_context(|| format!("storing {} in the module cache", m.path.display()))?;
            tracing::info!(path = %m.path.display(), sha256 = %m.sha256, "built-in dynamic module");
            Some(src)
        }
        None => None,
    };
    tracing::info!(runtime = ?runtime, "built-in filters (SecurityPolicy oidc, BackendTrafficPolicy rateLimit) run on this runtime");
    Ok((runtime, source))
}

struct Reconciler {
    provider: FileProvider,
    opts: TranslateOptions,
    cache: WasmCache,
    infra: Option<Arc<HostInfra>>,
    sink: TranslationSink,
    /// Content of each file when it last loaded without errors.
    last_good: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

impl Reconciler {
    async fn reconcile(&self) {
        let started = Instant::now();
        let provider = self.provider.clone();
        let opts = self.opts.clone();
        let cache = self.cache.clone();
        let last_good = self.last_good.clone();
        // Reading and translating are blocking work; keep them off the async workers.
        let done = tokio::task::spawn_blocking(move || {
            let mut parsed = Vec::new();
            let mut load_errors = Vec::new();
            let mut last_good = last_good.lock().unwrap_or_else(|p| p.into_inner());
            let files = provider.read_all();
            last_good.retain(|name, _| files.iter().any(|f| &f.name == name));
            for f in files {
                // Like `kubectl apply` rejecting an invalid object: a file that does not load
                // keeps its last good version (a half-written save cannot take a Gateway down).
                let (docs, errs) = match &f.content {
                    Ok(text) => {
                        let (res, errs) = parse_documents(&f.name, text);
                        let errs: Vec<LoadErrorView> = errs
                            .into_iter()
                            .map(|e| LoadErrorView {
                                source: e.source_name,
                                document: Some(e.index),
                                reason: e.reason,
                            })
                            .collect();
                        if errs.is_empty() {
                            last_good.insert(f.name.clone(), text.clone());
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
                        parsed.extend(parse_documents(&f.name, previous).0);
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
            drop(last_good);
            let out = translate_resolving(&Resources::from_parsed(parsed), &opts, &cache);
            (out, load_errors, started.elapsed())
        })
        .await;
        let Some((out, load_errors, translate_time)) = self.sink.joined(done) else {
            return;
        };
        for e in &load_errors {
            tracing::warn!(source = %e.source, document = ?e.document, reason = %e.reason, "manifest not loaded");
        }
        let nodes: Vec<String> = out.gateways.iter().map(|g| g.node_id.clone()).collect();
        if let Some(infra) = &self.infra {
            infra.reconcile(&nodes);
        }
        let generation = self.sink.publish(out, load_errors, translate_time);
        tracing::info!(
            generation,
            gateways = nodes.len(),
            translate_ms = translate_time.as_millis() as u64,
            took_ms = started.elapsed().as_millis() as u64,
            "translated"
        );
    }
}

/// Translate, hand the cache the pull secrets of the modules needed, and translate once more
/// when modules turned out to be ready in the disk cache. Blocking work.
pub(crate) fn translate_resolving(
    resources: &Resources,
    opts: &TranslateOptions,
    cache: &WasmCache,
) -> TranslateOutput {
    let mut out = translate(resources, opts, cache);
    cache.set_pull_secrets(pull_secrets(resources, &out.wasm_needed));
    if cache.ensure(&out.wasm_needed) {
        out = translate(resources, opts, cache);
    }
    out
}

/// Where a translation goes, whatever the provider: xDS to the Envoys, the admin board, metrics.
#[derive(Clone)]
pub(crate) struct TranslationSink {
    pub xds: XdsServer,
    /// Updated before every publish: which modules each fleet may fetch.
    pub modules: crate::wasm::access::ModuleAccess,
    pub board: Arc<RwLock<Board>>,
    pub metrics: Metrics,
}

impl TranslationSink {
    /// The result of the blocking translation task; a panic is counted and logged, and the last
    /// good snapshot keeps serving (`None`).
    pub fn joined<T>(&self, done: Result<T, tokio::task::JoinError>) -> Option<T> {
        match done {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "translation failed; keeping the last good snapshot");
                self.count("panic");
                None
            }
        }
    }

    /// Publish `out` to every node, forget nodes no longer wanted, and record it on the board.
    /// Returns the snapshot generation.
    pub fn publish(
        &self,
        out: TranslateOutput,
        load_errors: Vec<LoadErrorView>,
        took: Duration,
    ) -> u64 {
        self.metrics.load_errors.set(load_errors.len() as i64);
        self.modules.update(&out.ir);
        let generation = self.xds.publish(&out.xds);
        let nodes: Vec<String> = out.gateways.iter().map(|g| g.node_id.clone()).collect();
        self.xds.retain_nodes(&nodes);
        {
            let mut b = self.board.write().unwrap_or_else(|p| p.into_inner());
            b.resources = out.statuses;
            b.load_errors = load_errors;
            b.gateways = out.gateways;
            b.translations += 1;
            b.last_translate_ms = took.as_millis() as u64;
        }
        self.count("ok");
        generation
    }

    fn count(&self, result: &str) {
        self.metrics
            .translations
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}

/// `.dockerconfigjson` of every Secret a needed image references (data is base64, as in
/// Kubernetes; stringData is plain).
pub(crate) fn pull_secrets(
    resources: &Resources,
    needed: &[portcullis_translator::wasm::source::WasmSource],
) -> PullSecrets {
    use base64::Engine;
    let mut out = PullSecrets::new();
    for key in needed.iter().filter_map(|s| s.pull_secret.as_ref()) {
        let Some(secret) = resources.secrets.get(key) else {
            continue;
        };
        let body = &secret.spec;
        let json = match (
            body.string_data.get(".dockerconfigjson"),
            body.data.get(".dockerconfigjson"),
        ) {
            (Some(plain), _) => Some(plain.as_bytes().to_vec()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok(),
            (None, None) => None,
        };
        if let Some(j) = json {
            out.insert(key.clone(), j);
        }
    }
    out
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
