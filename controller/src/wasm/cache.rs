//! Wasm module cache: fetches modules (HTTP, OCI images), verifies sha256, keeps them on disk
//! under a size bound, and tells the translator their state through [`WasmResolver`].
//!
//! Each needed source gets one task that retries with exponential backoff until it succeeds.
//! Every state change sends on the `changed` channel so the runtime re-drives translation.

use super::fetch::{error_chain, HttpFetcher};
use crate::metrics::{Metrics, ResultLabel};
use portcullis_translator::egress::EgressPolicy;
use portcullis_translator::wasm::source::{WasmCodeType, WasmResolution, WasmResolver, WasmSource};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create wasm cache directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// Base URL Envoy fetches modules from, e.g. `http://127.0.0.1:18002`.
    pub serve_base: String,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub fetch_timeout: Duration,
    /// Which hosts HTTP fetches may reach (`--allow-backend-cidr`), see [`super::fetch`].
    pub egress: EgressPolicy,
    /// Largest module an HTTP fetch accepts: [`portcullis_oci::MAX_WASM_SIZE`], as OCI pulls.
    pub max_module_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum EntryState {
    Pending,
    Ready { sha256: String, bytes: u64 },
    Failed { reason: String },
}

#[derive(Debug)]
struct Entry {
    state: EntryState,
    attempts: u32,
    task: Option<AbortHandle>,
}

/// One module's state, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    pub source: WasmSource,
    #[serde(flatten)]
    pub state: EntryState,
    pub attempts: u32,
}

/// `.dockerconfigjson` contents of pull secrets, by `(namespace, name)`.
pub type PullSecrets = BTreeMap<(String, String), Vec<u8>>;

struct Inner {
    cfg: CacheConfig,
    http: HttpFetcher,
    entries: Mutex<BTreeMap<WasmSource, Entry>>,
    pull_secrets: Mutex<PullSecrets>,
    /// `file://` URLs of modules registered with [`WasmCache::add_local`] -> their files. Only
    /// these are read from local disk; manifests cannot name local files.
    local: Mutex<BTreeMap<String, PathBuf>>,
    changed: mpsc::Sender<()>,
    metrics: Metrics,
}

#[derive(Clone)]
pub struct WasmCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WasmCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmCache")
            .field("dir", &self.inner.cfg.dir)
            .finish_non_exhaustive()
    }
}

/// Default cache location: `$XDG_CACHE_HOME/portcullis/wasm` or `~/.cache/portcullis/wasm`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("portcullis/wasm");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache/portcullis/wasm"),
        None => std::env::temp_dir().join("portcullis-wasm-cache"),
    }
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Pinned digests may carry a `sha256:` prefix and upper case; compare in canonical form.
fn canonical_sha(s: &str) -> String {
    s.trim().trim_start_matches("sha256:").to_ascii_lowercase()
}

impl WasmCache {
    pub fn new(
        cfg: CacheConfig,
        changed: mpsc::Sender<()>,
        metrics: Metrics,
    ) -> Result<Self, CacheError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| CacheError::Dir {
            path: cfg.dir.clone(),
            source,
        })?;
        let http = HttpFetcher {
            egress: cfg.egress.clone(),
            max_bytes: cfg.max_module_bytes,
            timeout: cfg.fetch_timeout,
        };
        let cache = WasmCache {
            inner: Arc::new(Inner {
                cfg,
                http,
                entries: Mutex::new(BTreeMap::new()),
                pull_secrets: Mutex::new(BTreeMap::new()),
                local: Mutex::new(BTreeMap::new()),
                changed,
                metrics,
            }),
        };
        cache.update_size_metric();
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.cfg.dir
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<WasmSource, Entry>> {
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.inner.cfg.dir.join(format!("{sha256}.wasm"))
    }

    /// Image manifest digest -> sha256 of the module it holds (lets a pinned image start offline).
    fn index_path(&self, manifest_digest: &str) -> PathBuf {
        self.inner
            .cfg
            .dir
            .join("index")
            .join(canonical_sha(manifest_digest))
    }

    /// Pull secrets the next fetch attempts use (re-read on every attempt).
    pub fn set_pull_secrets(&self, secrets: PullSecrets) {
        *self
            .inner
            .pull_secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = secrets;
    }

    /// Registers a module the controller ships (a built-in module file): stores it in the cache
    /// now and returns its source, `file://<path>` pinned by sha256. The source resolves Ready
    /// without network; if the cached copy is evicted, a later fetch re-reads `path`.
    pub fn add_local(&self, path: &Path, bytes: &[u8]) -> std::io::Result<WasmSource> {
        self.add_local_as(WasmCodeType::Http, path, bytes)
    }

    /// [`Self::add_local`] for a module of `kind` (a wasm module or a dynamic module). Refuses
    /// bytes that are not of that kind.
    pub fn add_local_as(
        &self,
        kind: WasmCodeType,
        path: &Path,
        bytes: &[u8],
    ) -> std::io::Result<WasmSource> {
        check_magic(&kind, &path.display().to_string(), bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let sha = hex::encode(Sha256::digest(bytes));
        let cached = self.path_for(&sha);
        if cached.is_file() {
            touch(&cached);
        } else {
            let tmp = self
                .inner
                .cfg
                .dir
                .join(format!(".{sha}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &cached)?;
        }
        let url = format!("file://{}", path.display());
        self.inner
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.clone(), path.to_path_buf());
        self.update_size_metric();
        Ok(WasmSource {
            code_type: kind,
            url,
            sha256: Some(sha),
            pull_secret: None,
            pull_policy: None,
        })
    }

    /// The module file a pinned source is known to resolve to, if it is on disk.
    fn cached_for_pin(&self, src: &WasmSource, pin: &str) -> Option<String> {
        if !is_sha256_hex(pin) {
            return None;
        }
        let sha = match src.code_type {
            WasmCodeType::Http | WasmCodeType::DynamicModule => pin.to_string(),
            WasmCodeType::Image => std::fs::read_to_string(self.index_path(pin))
                .ok()?
                .trim()
                .to_string(),
        };
        (is_sha256_hex(&sha) && self.path_for(&sha).is_file()).then_some(sha)
    }

    /// Make sure every needed source is known and being fetched; stop work on sources no longer
    /// needed. Returns true when some source changed state synchronously (disk hit), so the
    /// caller should translate again right away.
    pub fn ensure(&self, needed: &[WasmSource]) -> bool {
        let needed_set: BTreeSet<&WasmSource> = needed.iter().collect();
        let mut changed = false;
        let mut entries = self.entries();
        entries.retain(|src, e| {
            let keep = needed_set.contains(src);
            if !keep {
                if let Some(t) = &e.task {
                    t.abort();
                }
            }
            keep
        });
        for src in needed {
            if entries.contains_key(src) {
                continue;
            }
            // A pinned module already on disk needs no network (pullPolicy Always excepted).
            let always = src.pull_policy.as_deref() == Some("Always");
            if let Some(sha) = src
                .sha256
                .as_deref()
                .map(canonical_sha)
                .filter(|_| !always)
                .and_then(|pin| self.cached_for_pin(src, &pin))
            {
                let path = self.path_for(&sha);
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                tracing::info!(url = %src.shown_url(), sha256 = %sha, "wasm module found in disk cache");
                touch(&path);
                entries.insert(
                    src.clone(),
                    Entry {
                        state: EntryState::Ready { sha256: sha, bytes },
                        attempts: 0,
                        task: None,
                    },
                );
                changed = true;
                continue;
            }
            let this = self.clone();
            let s = src.clone();
            let task = tokio::spawn(async move { this.fetch_loop(s).await });
            entries.insert(
                src.clone(),
                Entry {
                    state: EntryState::Pending,
                    attempts: 0,
                    task: Some(task.abort_handle()),
                },
            );
        }
        changed
    }

    pub fn modules(&self) -> Vec<ModuleStatus> {
        self.entries()
            .iter()
            .map(|(s, e)| ModuleStatus {
                source: WasmSource {
                    url: s.shown_url(),
                    ..s.clone()
                },
                state: e.state.clone(),
                attempts: e.attempts,
            })
            .collect()
    }

    async fn fetch_loop(self, src: WasmSource) {
        let mut delay = self.inner.cfg.retry_initial;
        loop {
            let result = self.fetch_once(&src).await;
            let state = match &result {
                Ok((sha256, bytes)) => EntryState::Ready {
                    sha256: sha256.clone(),
                    bytes: *bytes,
                },
                Err(reason) => EntryState::Failed {
                    reason: reason.clone(),
                },
            };
            let label = ResultLabel {
                result: if result.is_ok() { "ok" } else { "error" }.into(),
            };
            self.inner.metrics.wasm_fetches.get_or_create(&label).inc();
            let state_changed = {
                let mut entries = self.entries();
                let Some(e) = entries.get_mut(&src) else {
                    return;
                };
                e.attempts += 1;
                let changed = e.state != state;
                e.state = state;
                if result.is_ok() {
                    e.task = None;
                }
                changed
            };
            match &result {
                Ok((sha, _)) => {
                    tracing::info!(url = %src.shown_url(), sha256 = %sha, "wasm module fetched")
                }
                Err(reason) => {
                    tracing::warn!(url = %src.shown_url(), retry_in = ?delay, %reason, "wasm fetch failed")
                }
            }
            if state_changed {
                // Full channel: a re-translation is already queued and will see this state.
                let _ = self.inner.changed.try_send(());
            }
            if result.is_ok() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.inner.cfg.retry_max);
        }
    }

    async fn fetch_once(&self, src: &WasmSource) -> Result<(String, u64), String> {
        let (bytes, manifest_digest) = match src.code_type {
            WasmCodeType::Http | WasmCodeType::DynamicModule => {
                let local = self
                    .inner
                    .local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&src.url)
                    .cloned();
                let bytes = match local {
                    Some(path) => tokio::fs::read(&path)
                        .await
                        .map_err(|e| format!("reading {}: {e}", path.display()))?,
                    None => self.inner.http.fetch(&src.url).await?,
                };
                (bytes, None)
            }
            WasmCodeType::Image => {
                let (bytes, digest) = self.pull_image(src).await?;
                (bytes, Some(digest))
            }
        };
        check_magic(&src.code_type, &src.shown_url(), &bytes)?;
        let sha = hex::encode(Sha256::digest(&bytes));
        // For HTTP the pin is the module's digest; for images the oci crate checked the
        // manifest digest against it.
        if let (WasmCodeType::Http | WasmCodeType::DynamicModule, Some(pin)) =
            (&src.code_type, src.sha256.as_deref().map(canonical_sha))
        {
            if pin != sha {
                return Err(format!(
                    "sha256 mismatch for {}: expected {pin}, got {sha}",
                    src.shown_url()
                ));
            }
        }
        if let Some(d) = manifest_digest {
            let idx = self.index_path(&d);
            if let Some(dir) = idx.parent() {
                let _ = tokio::fs::create_dir_all(dir).await;
            }
            let _ = tokio::fs::write(&idx, &sha).await;
        }
        self.store(&sha, &bytes)
            .await
            .map_err(|e| format!("cannot write {} to the wasm cache: {e}", src.shown_url()))?;
        Ok((sha, bytes.len() as u64))
    }

    async fn store(&self, sha: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path_for(sha);
        if tokio::fs::metadata(&path).await.is_err() {
            let tmp = self
                .inner
                .cfg
                .dir
                .join(format!(".{sha}.{}.tmp", std::process::id()));
            tokio::fs::write(&tmp, bytes).await?;
            tokio::fs::rename(&tmp, &path).await?;
        } else {
            touch(&path);
        }
        self.evict(sha);
        Ok(())
    }

    /// Keep the cache under its size bound: drop least recently used modules not in use.
    fn evict(&self, just_stored: &str) {
        let mut in_use: BTreeSet<String> = self
            .entries()
            .values()
            .filter_map(|e| match &e.state {
                EntryState::Ready { sha256, .. } => Some(sha256.clone()),
                _ => None,
            })
            .collect();
        in_use.insert(just_stored.to_string());
        let mut files = cached_files(&self.inner.cfg.dir);
        let mut total: u64 = files.iter().map(|f| f.2).sum();
        files.sort_by_key(|f| f.1);
        for (path, _, size) in files {
            if total <= self.inner.cfg.max_bytes {
                break;
            }
            let sha = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if in_use.contains(sha) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), size, "evicted wasm module from cache");
                    total = total.saturating_sub(size);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot evict wasm module")
                }
            }
        }
        self.inner.metrics.wasm_cache_bytes.set(total as i64);
    }

    fn update_size_metric(&self) {
        let total: u64 = cached_files(&self.inner.cfg.dir).iter().map(|f| f.2).sum();
        self.inner.metrics.wasm_cache_bytes.set(total as i64);
    }
}

/// Checks that `bytes` are what `kind` names: a wasm module (`\0asm`) or an ELF shared library.
fn check_magic(kind: &WasmCodeType, url: &str, bytes: &[u8]) -> Result<(), String> {
    let (magic, what): (&[u8], &str) = match kind {
        WasmCodeType::Http | WasmCodeType::Image => (b"\0asm", "a wasm module"),
        WasmCodeType::DynamicModule => (b"\x7fELF", "a shared library (ELF)"),
    };
    if bytes.len() < 8 || &bytes[..4] != magic {
        return Err(format!("{url} is not {what} (bad magic number)"));
    }
    Ok(())
}

impl WasmResolver for WasmCache {
    fn resolve(&self, source: &WasmSource) -> WasmResolution {
        match self.entries().get(source).map(|e| &e.state) {
            Some(EntryState::Ready { sha256, .. }) => WasmResolution::Ready {
                sha256: sha256.clone(),
                serve_url: self
                    .serve_url_for(&source.code_type, sha256)
                    .unwrap_or_default(),
            },
            Some(EntryState::Failed { reason }) => WasmResolution::Failed {
                reason: reason.clone(),
            },
            Some(EntryState::Pending) | None => WasmResolution::Pending,
        }
    }

    fn serve_url_for(&self, kind: &WasmCodeType, sha256: &str) -> Option<String> {
        let base = self.inner.cfg.serve_base.trim_end_matches('/');
        Some(match kind {
            WasmCodeType::DynamicModule => format!("{base}/dynamic/{sha256}.so"),
            WasmCodeType::Http | WasmCodeType::Image => format!("{base}/wasm/{sha256}.wasm"),
        })
    }
}

impl WasmCache {
    /// OCI image pull through the `oci` crate; returns the module and the manifest digest.
    async fn pull_image(&self, src: &WasmSource) -> Result<(Vec<u8>, String), String> {
        let reference = src.url.trim_start_matches("oci://");
        let host = reference.split('/').next().unwrap_or_default();
        let auth = match &src.pull_secret {
            None => portcullis_oci::RegistryAuth::Anonymous,
            Some((ns, name)) => {
                let secret = self
                    .inner
                    .pull_secrets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&(ns.clone(), name.clone()))
                    .cloned();
                let Some(json) = secret else {
                    return Err(format!("pulling {}: pull secret {ns}/{name} not found (or has no .dockerconfigjson)", src.shown_url()));
                };
                portcullis_oci::RegistryAuth::from_docker_config_json(&json, host).map_err(|e| {
                    format!("pulling {}: pull secret {ns}/{name}: {e}", src.shown_url())
                })?
            }
        };
        let opts = portcullis_oci::PullOptions {
            expected_digest: src.sha256.clone(),
            auth,
            timeout: self.inner.cfg.fetch_timeout,
            ..portcullis_oci::PullOptions::default()
        };
        let pulled = portcullis_oci::pull_wasm(reference, &opts)
            .await
            .map_err(|e| format!("pulling {}: {}", src.shown_url(), error_chain(&e)))?;
        Ok((pulled.wasm, pulled.manifest_digest))
    }
}

/// `(path, mtime, size)` of every cached module.
fn cached_files(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime, u64)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_name()?.to_str()?;
            let stem = name.strip_suffix(".wasm")?;
            if !is_sha256_hex(stem) {
                return None;
            }
            let m = e.metadata().ok()?;
            Some((p.clone(), m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Mark a module recently used (LRU eviction orders by mtime).
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WASM: &[u8] = b"\0asm\x01\0\0\0";

    /// The test servers are on loopback: allowed as `--allow-backend-cidr 127.0.0.0/8` does.
    fn cache(dir: &Path, max_bytes: u64) -> (WasmCache, mpsc::Receiver<()>) {
        cache_with(dir, max_bytes, local_ok(), portcullis_oci::MAX_WASM_SIZE)
    }

    fn local_ok() -> EgressPolicy {
        EgressPolicy::allowing(["127.0.0.0/8".parse().expect("cidr")])
    }

    fn cache_with(
        dir: &Path,
        max_bytes: u64,
        egress: EgressPolicy,
        max_module_bytes: u64,
    ) -> (WasmCache, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel(1);
        let cfg = CacheConfig {
            dir: dir.to_path_buf(),
            max_bytes,
            serve_base: "http://127.0.0.1:1".into(),
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
            fetch_timeout: Duration::from_secs(5),
            egress,
            max_module_bytes,
        };
        (WasmCache::new(cfg, tx, Metrics::new()).expect("cache"), rx)
    }

    /// Serves `app` on `127.0.0.1:0`; returns `http://ADDR`.
    async fn serve(app: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let h = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}"), h)
    }

    /// The first resolution of `src` other than Pending.
    async fn settle(c: &WasmCache, src: &WasmSource) -> WasmResolution {
        c.ensure(std::slice::from_ref(src));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match c.resolve(src) {
                WasmResolution::Pending => {}
                done => return done,
            }
            assert!(tokio::time::Instant::now() < deadline, "still pending");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn failed(c: &WasmCache, src: &WasmSource) -> String {
        match settle(c, src).await {
            WasmResolution::Failed { reason } => reason,
            other => panic!("{}: expected Failed, got {other:?}", src.url),
        }
    }

    fn http(url: &str, sha: Option<&str>) -> WasmSource {
        WasmSource {
            code_type: WasmCodeType::Http,
            url: url.into(),
            sha256: sha.map(String::from),
            pull_secret: None,
            pull_policy: None,
        }
    }

    async fn serve_once(status: u16, body: &'static [u8]) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/m.wasm",
            axum::routing::get(move || async move {
                (
                    axum::http::StatusCode::from_u16(status).expect("status"),
                    body,
                )
            }),
        );
        let h = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}/m.wasm"), h)
    }

    #[tokio::test]
    async fn pinned_module_on_disk_is_ready_without_network() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sha = hex::encode(Sha256::digest(WASM));
        std::fs::write(dir.path().join(format!("{sha}.wasm")), WASM).expect("write");
        let (c, _rx) = cache(dir.path(), 1 << 20);
        let src = http(
            "http://127.0.0.1:1/unreachable.wasm",
            Some(&format!("sha256:{}", sha.to_uppercase())),
        );
        assert!(c.ensure(std::slice::from_ref(&src)));
        match c.resolve(&src) {
            WasmResolution::Ready { sha256, serve_url } => {
                assert_eq!(sha256, sha);
                assert_eq!(serve_url, format!("http://127.0.0.1:1/wasm/{sha}.wasm"));
            }
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn fetch_verifies_sha_and_reports_http_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, mut rx) = cache(dir.path(), 1 << 20);
        let (ok_url, _h1) = serve_once(200, WASM).await;
        let (missing_url, _h2) = serve_once(404, b"nope").await;
        let good = http(&ok_url, None);
        let wrong_pin = http(&ok_url, Some(&"0".repeat(64)));
        let missing = http(&missing_url, None);
        c.ensure(&[good.clone(), wrong_pin.clone(), missing.clone()]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let states = (c.resolve(&good), c.resolve(&wrong_pin), c.resolve(&missing));
            if matches!(
                states,
                (
                    WasmResolution::Ready { .. },
                    WasmResolution::Failed { .. },
                    WasmResolution::Failed { .. }
                )
            ) {
                let WasmResolution::Failed { reason } = states.1 else {
                    unreachable!()
                };
                assert!(reason.contains("sha256 mismatch"), "{reason}");
                let WasmResolution::Failed { reason } = states.2 else {
                    unreachable!()
                };
                assert!(
                    reason.contains(&missing_url) && reason.contains("404"),
                    "{reason}"
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no convergence: {states:?}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
        }
        let sha = hex::encode(Sha256::digest(WASM));
        assert_eq!(std::fs::read(c.path_for(&sha)).expect("cached file"), WASM);
    }

    #[tokio::test]
    async fn local_modules_resolve_and_survive_eviction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("oidc.wasm");
        std::fs::write(&file, WASM).expect("write");
        let (c, _rx) = cache(&dir.path().join("cache"), 1 << 20);
        let src = c.add_local(&file, WASM).expect("add");
        let sha = hex::encode(Sha256::digest(WASM));
        assert_eq!(src.sha256.as_deref(), Some(sha.as_str()));
        assert!(
            c.ensure(std::slice::from_ref(&src)),
            "ready from disk at once"
        );
        assert!(matches!(c.resolve(&src), WasmResolution::Ready { .. }));
        // Evicted while unused: the next ensure re-reads the registered file.
        c.ensure(&[]);
        std::fs::remove_file(c.path_for(&sha)).expect("evict");
        c.ensure(std::slice::from_ref(&src));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !matches!(c.resolve(&src), WasmResolution::Ready { .. }) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                c.resolve(&src)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(c.path_for(&sha).is_file());
        // A file:// URL that was not registered is never read.
        let unregistered = dir.path().join("other.wasm");
        std::fs::write(&unregistered, WASM).expect("write");
        let other = http(&format!("file://{}", unregistered.display()), None);
        c.ensure(std::slice::from_ref(&other));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !matches!(c.resolve(&other), WasmResolution::Failed { .. }) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                c.resolve(&other)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn eviction_keeps_modules_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join(format!("{}.wasm", "a".repeat(64)));
        std::fs::write(&old, vec![0u8; 100]).expect("write");
        let (c, _rx) = cache(dir.path(), 50);
        let (url, _h) = serve_once(200, WASM).await;
        let src = http(&url, None);
        c.ensure(std::slice::from_ref(&src));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !matches!(c.resolve(&src), WasmResolution::Ready { .. }) {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!old.exists(), "the unused module over the bound is evicted");
        assert!(c.path_for(&hex::encode(Sha256::digest(WASM))).exists());
    }

    /// A 3xx is not followed, even to a module the same server would serve: the reason names
    /// the host it pointed to, and neither the redirect's userinfo nor its path or query.
    #[tokio::test]
    async fn redirects_are_refused_and_name_only_the_host() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, _rx) = cache(dir.path(), 1 << 20);
        let hits = Arc::new(AtomicUsize::new(0));
        let target = Arc::new(Mutex::new(String::new()));
        let (h, t) = (hits.clone(), target.clone());
        let app = axum::Router::new()
            .route(
                "/moved.wasm",
                axum::routing::get(move || {
                    let to = t.lock().expect("lock").clone();
                    async move {
                        (
                            axum::http::StatusCode::FOUND,
                            [(axum::http::header::LOCATION, to)],
                            "see elsewhere",
                        )
                    }
                }),
            )
            .route(
                "/m.wasm",
                axum::routing::get(move || {
                    h.fetch_add(1, Ordering::SeqCst);
                    async { WASM }
                }),
            );
        let (base, _h) = serve(app).await;
        let host = base.trim_start_matches("http://").to_string();
        *target.lock().expect("lock") =
            format!("http://ruser:rpass@{host}/m.wasm?token=querysecret");
        let reason = failed(&c, &http(&format!("{base}/moved.wasm"), None)).await;
        let ip = host.split(':').next().expect("ip");
        assert!(
            reason.contains("HTTP 302 Found")
                && reason.contains(&format!("refused a redirect to host {ip} ")),
            "{reason}"
        );
        for leak in ["rpass", "ruser", "querysecret", "/m.wasm", "see elsewhere"] {
            assert!(!reason.contains(leak), "{leak} in {reason}");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");
    }

    /// A body over the limit is refused at the limit, whether a `Content-Length` announces it
    /// (refused before the body is read) or it streams chunked. Neither body ever ends, so only
    /// a fetch that stops at the cap can name the limit (an unbounded read would time out).
    #[tokio::test]
    async fn oversized_bodies_are_refused_without_reading_them_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const LIMIT: u64 = 1024;
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, _rx) = cache_with(dir.path(), 1 << 20, local_ok(), LIMIT);

        // Content-Length over the limit; the body stalls after the magic number.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _raw = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut req = [0u8; 4096];
                    let _ = sock.read(&mut req).await;
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
                        .await;
                    let _ = sock.write_all(WASM).await;
                    tokio::time::sleep(Duration::from_secs(120)).await;
                });
            }
        });
        let announced = http(&format!("http://{addr}/big.wasm"), None);
        let reason = failed(&c, &announced).await;
        assert!(
            reason
                .contains("Content-Length 100000000 bytes is over the 1024-byte module size limit"),
            "{reason}"
        );

        // Chunked (no Content-Length): 4 KiB, then the stream never ends.
        let app = axum::Router::new().route(
            "/chunked.wasm",
            axum::routing::get(|| async {
                let mut first = WASM.to_vec();
                first.resize(1024, 0);
                let chunks = (0..4).map(move |i| {
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(if i == 0 {
                        first.clone()
                    } else {
                        vec![0u8; 1024]
                    }))
                });
                let endless = futures_util::StreamExt::chain(
                    futures_util::stream::iter(chunks),
                    futures_util::stream::pending(),
                );
                axum::body::Body::from_stream(endless)
            }),
        );
        let (base, _h) = serve(app).await;
        let chunked = http(&format!("{base}/chunked.wasm"), None);
        let reason = failed(&c, &chunked).await;
        assert!(
            reason.contains("the body is over the 1024-byte module size limit (stopped reading at"),
            "{reason}"
        );

        // At the limit exactly: fetched.
        let mut exact = WASM.to_vec();
        exact.resize(LIMIT as usize, 0);
        let app = axum::Router::new().route(
            "/exact.wasm",
            axum::routing::get(move || {
                let body = exact.clone();
                async move { body }
            }),
        );
        let (base, _h) = serve(app).await;
        let ok = http(&format!("{base}/exact.wasm"), None);
        assert!(
            matches!(settle(&c, &ok).await, WasmResolution::Ready { .. }),
            "{:?}",
            c.resolve(&ok)
        );
    }

    /// Loopback (by IP and as `localhost`), private and metadata targets are refused without
    /// a connection attempt unless `--allow-backend-cidr` names them; with 127.0.0.0/8 allowed
    /// the same loopback modules are fetched.
    #[tokio::test]
    async fn local_targets_need_the_allow_list() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app = axum::Router::new().route(
            "/m.wasm",
            axum::routing::get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { WASM }
            }),
        );
        let (base, _h) = serve(app).await;
        let port = base.rsplit(':').next().expect("port").to_string();
        let by_ip = http(&format!("{base}/m.wasm"), None);
        let by_name = http(&format!("http://localhost:{port}/m.wasm"), None);

        let dir = tempfile::tempdir().expect("tempdir");
        let (strict, _rx) = cache_with(
            dir.path(),
            1 << 20,
            EgressPolicy::default(),
            portcullis_oci::MAX_WASM_SIZE,
        );
        for (src, what) in [
            (by_ip.clone(), "127.0.0.1: a loopback address is refused"),
            (by_name.clone(), "localhost: localhost is refused"),
            (
                http("http://[::ffff:127.0.0.1]:1/m.wasm", None),
                "a loopback address is refused",
            ),
            (
                http("http://2130706433:1/m.wasm", None),
                "127.0.0.1: a loopback address is refused",
            ),
            (
                http("http://10.255.255.1:9/m.wasm", None),
                "10.255.255.1: a private address is refused",
            ),
            (
                http("http://169.254.169.254/latest/meta-data", None),
                "a link-local address (cloud metadata) is refused",
            ),
            (
                http("https://100.64.0.1/m.wasm", None),
                "a shared (CGNAT) address is refused",
            ),
        ] {
            let reason = failed(&strict, &src).await;
            assert!(
                reason.contains(what) && reason.contains("--allow-backend-cidr"),
                "{}: {reason}",
                src.url
            );
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "a refused target was reached"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let (allowed, _rx) = cache(dir.path(), 1 << 20);
        for src in [&by_ip, &by_name] {
            assert!(
                matches!(settle(&allowed, src).await, WasmResolution::Ready { .. }),
                "{}: {:?}",
                src.url,
                allowed.resolve(src)
            );
        }
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // Allowing loopback does not allow the private ranges.
        let reason = failed(&allowed, &http("http://192.168.0.1:9/m.wasm", None)).await;
        assert!(reason.contains("a private address is refused"), "{reason}");
        let reason = failed(&allowed, &http("file:///etc/passwd", None)).await;
        assert!(
            reason.contains("is not supported (http or https)"),
            "{reason}"
        );
    }

    /// An error response's body (and a non-module body) never reaches the reason a status
    /// message shows: only the status code and its canonical reason.
    #[tokio::test]
    async fn response_bodies_never_reach_the_reason() {
        const BODY: &str = "stack trace: db password hunter2 at /srv/app";
        let app = axum::Router::new()
            .route(
                "/error.wasm",
                axum::routing::get(|| async {
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, BODY)
                }),
            )
            .route("/page.wasm", axum::routing::get(|| async { BODY }));
        let (base, _h) = serve(app).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, _rx) = cache(dir.path(), 1 << 20);
        let reason = failed(&c, &http(&format!("{base}/error.wasm"), None)).await;
        assert_eq!(
            reason,
            format!("fetching {base}/error.wasm: HTTP 500 Internal Server Error")
        );
        let reason = failed(&c, &http(&format!("{base}/page.wasm"), None)).await;
        assert!(reason.contains("bad magic number"), "{reason}");
        for reason in c.modules().iter().filter_map(|m| match &m.state {
            EntryState::Failed { reason } => Some(reason.clone()),
            _ => None,
        }) {
            assert!(
                !reason.contains("hunter2") && !reason.contains("stack"),
                "{reason}"
            );
        }
    }

    /// A URL's userinfo is sent (as basic auth) but never shown: not in an HTTP error, not in
    /// a connection error, not in `/status`.
    #[tokio::test]
    async fn userinfo_is_redacted_from_reasons_and_status() {
        let seen_auth = Arc::new(Mutex::new(None::<String>));
        let seen = seen_auth.clone();
        let app = axum::Router::new().route(
            "/m.wasm",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                *seen.lock().expect("lock") = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                async { (axum::http::StatusCode::NOT_FOUND, "nope") }
            }),
        );
        let (base, _h) = serve(app).await;
        let host = base.trim_start_matches("http://");
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, _rx) = cache(dir.path(), 1 << 20);
        let src = http(&format!("http://alice:pa55word@{host}/m.wasm"), None);
        let reason = failed(&c, &src).await;
        assert_eq!(
            reason,
            format!("fetching http://***@{host}/m.wasm: HTTP 404 Not Found")
        );
        assert!(seen_auth.lock().expect("lock").is_some(), "basic auth sent");

        // Connection refused: a port that was bound on 127.0.0.1:0 and closed again.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let closed_addr = closed.local_addr().expect("addr");
        drop(closed);
        let down = http(&format!("http://alice:pa55word@{closed_addr}/m.wasm"), None);
        let reason = failed(&c, &down).await;
        assert!(
            reason.starts_with(&format!("fetching http://***@{closed_addr}/m.wasm: ")),
            "{reason}"
        );
        let status = serde_json::to_string(&c.modules()).expect("json");
        for text in [reason.as_str(), status.as_str()] {
            assert!(
                !text.contains("pa55word") && !text.contains("alice"),
                "{text}"
            );
        }
        assert!(
            status.contains(&format!("\"url\":\"http://***@{closed_addr}/m.wasm\"")),
            "{status}"
        );
    }
}
