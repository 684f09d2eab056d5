//! The one pipeline both providers run: a [`Provider`] yields [`ProviderSnapshot`]s, each is
//! translated (off the async workers), published through the [`TranslationSink`] (xDS, the
//! admin board, metrics), and handed to the provider's [`Outputs`] (Envoy processes on this
//! host, or statuses and fleets written to Kubernetes). A wasm module becoming ready (or
//! failing) re-translates the current snapshot. See `docs/architecture.md`.

use crate::admin::{Board, LoadErrorView};
use crate::metrics::{Metrics, ResultLabel};
use crate::wasm::cache::{PullSecrets, WasmCache};
use crate::xds::server::XdsServer;
use portcullis_translator::{Resources, TranslateOptions, TranslateOutput, Translator};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One consistent input: the parsed resources, what could not be loaded, and whatever the
/// provider's [`Outputs`] need besides (`S`: e.g. the Kubernetes objects the write loop reads).
#[derive(Debug)]
pub struct ProviderSnapshot<S> {
    pub resources: Resources,
    pub load_errors: Vec<LoadErrorView>,
    pub source: S,
}

/// A source of snapshots: the manifest files, or the Kubernetes API.
pub trait Provider: Send {
    type Source: Send + Sync + 'static;
    /// The next snapshot, once there is one; `None` when the provider stopped for good (the
    /// last translation keeps serving). Must be cancel-safe: the loop drops it when a wasm
    /// trigger or shutdown comes first, and calls it again.
    fn next(&mut self) -> impl Future<Output = Option<ProviderSnapshot<Self::Source>>> + Send;
}

/// What a provider does with each translation besides xDS.
pub trait Outputs<S>: Send + Sync {
    /// Before the publish (e.g. start an Envoy for a new Gateway, keep the statuses to write).
    fn translated(&self, _source: &S, _out: &TranslateOutput) {}
    /// After the publish of `generation`.
    fn published(&self, _source: &S, _generation: u64) {}
}

/// Translates snapshots and publishes them.
pub struct Pipeline {
    pub opts: TranslateOptions,
    /// What the last translation computed, reused where a snapshot left its inputs unchanged.
    pub translator: Arc<Mutex<Translator>>,
    pub cache: WasmCache,
    pub sink: TranslationSink,
}

impl Pipeline {
    /// Translate `snap` off the async workers, publish it, tell `outputs`.
    pub async fn translate<S: Send + Sync + 'static>(
        &self,
        snap: &Arc<ProviderSnapshot<S>>,
        outputs: &impl Outputs<S>,
    ) {
        let started = Instant::now();
        let (opts, cache, input) = (self.opts.clone(), self.cache.clone(), snap.clone());
        let translator = self.translator.clone();
        let done = tokio::task::spawn_blocking(move || {
            // One translation at a time (the loop awaits each); a panic leaves the memo
            // half-updated, so it is dropped.
            let mut memo = translator.lock().unwrap_or_else(|p| {
                let mut memo = p.into_inner();
                *memo = Translator::default();
                memo
            });
            let out = translate_resolving(&mut memo, &input.resources, &opts, &cache);
            let stats = memo.stats();
            tracing::debug!(
                routes_translated = stats.routes_translated,
                routes_reused = stats.routes_reused,
                irs_built = stats.irs_built,
                irs_reused = stats.irs_reused,
                xds_built = stats.xds_built,
                xds_reused = stats.xds_reused,
                "translation memo"
            );
            out
        })
        .await;
        let Some(out) = self.sink.joined(done) else {
            return;
        };
        let took = started.elapsed();
        for e in &snap.load_errors {
            tracing::warn!(source = %e.source, document = ?e.document, reason = %e.reason, "not loaded");
        }
        outputs.translated(&snap.source, &out);
        let gateways = out.gateways.len();
        let publishing = Instant::now();
        let generation = self.sink.publish(out, snap.load_errors.clone(), took);
        let publish_ms = publishing.elapsed().as_millis() as u64;
        outputs.published(&snap.source, generation);
        // Off the ACK path: give back what the last translation freed.
        drop(tokio::task::spawn_blocking(trim_heap));
        tracing::info!(
            generation,
            gateways,
            translate_ms = took.as_millis() as u64,
            publish_ms,
            "translated"
        );
    }
}

/// Returns free heap pages to the OS. glibc keeps each thread's arena, and translations run on
/// blocking-pool threads in turn, so without this `run`'s RSS was 3-5x its heap.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The loop: translate each snapshot `provider` yields, and the current one again when the
/// wasm cache signals on `wasm_ready`; until `shutdown`.
pub async fn run<P: Provider>(
    mut provider: P,
    pipeline: Pipeline,
    outputs: impl Outputs<P::Source>,
    mut wasm_ready: mpsc::Receiver<()>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut current: Option<Arc<ProviderSnapshot<P::Source>>> = None;
    let mut provider_gone = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            snap = provider.next(), if !provider_gone => match snap {
                Some(snap) => {
                    let snap = Arc::new(snap);
                    pipeline.translate(&snap, &outputs).await;
                    current = Some(snap);
                }
                None => {
                    // Keep serving the last translation; /healthz says why.
                    tracing::error!("the provider stopped; serving the last translation");
                    provider_gone = true;
                }
            },
            got = wasm_ready.recv(), if current.is_some() => {
                if got.is_none() { break; }
                // A module became ready (or failed): translate the same snapshot again.
                while wasm_ready.try_recv().is_ok() {}
                if let Some(snap) = &current {
                    pipeline.translate(snap, &outputs).await;
                }
            }
        }
    }
}

/// Translate, hand the cache the pull secrets of the modules needed, and translate once more
/// when modules turned out to be ready in the disk cache. Blocking work.
pub fn translate_resolving(
    translator: &mut Translator,
    resources: &Resources,
    opts: &TranslateOptions,
    cache: &WasmCache,
) -> TranslateOutput {
    let mut out = translator.translate(resources, opts, cache);
    cache.set_pull_secrets(pull_secrets(resources, &out.wasm_needed));
    if cache.ensure(&out.wasm_needed) {
        out = translator.translate(resources, opts, cache);
    }
    out
}

/// Where a translation goes, whatever the provider: xDS to the Envoys, the admin board, metrics.
#[derive(Clone)]
pub struct TranslationSink {
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
        let previous = {
            let mut b = self.board.write().unwrap_or_else(|p| p.into_inner());
            b.translations += 1;
            b.last_translate_ms = took.as_millis() as u64;
            (
                std::mem::replace(&mut b.resources, out.statuses.into()),
                std::mem::replace(&mut b.load_errors, load_errors.into()),
                std::mem::replace(&mut b.gateways, out.gateways.into()),
            )
        };
        // Freeing the previous board (every resource's status) is neither under the lock nor on
        // the way to the next translation.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || drop(previous))),
            Err(_) => drop(previous),
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
pub fn pull_secrets(
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
