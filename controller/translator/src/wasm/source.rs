//! The seam between the translator (pure) and the wasm cache (I/O).
//!
//! The translator lists the modules it needs as [`WasmSource`]s and asks a [`WasmResolver`] what
//! state each is in. The runtime's cache fetches them and re-drives translation when one changes.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum WasmCodeType {
    Http,
    Image,
    /// A native shared library (an Envoy dynamic module) fetched over HTTP, pinned by sha256.
    DynamicModule,
}

/// Where a module comes from, exactly as an EnvoyExtensionPolicy `wasm[].code` states it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmSource {
    pub code_type: WasmCodeType,
    pub url: String,
    /// Expected sha256 (hex, no prefix). For Image: the manifest digest pin if given.
    pub sha256: Option<String>,
    /// `namespace/name` of a `kubernetes.io/dockerconfigjson` Secret, Image only.
    pub pull_secret: Option<(String, String)>,
    /// `IfNotPresent` or `Always` (Image only).
    pub pull_policy: Option<String>,
}

/// What the cache knows of a module right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WasmResolution {
    /// Fetched and verified. Envoy loads it from `serve_url` pinned by `sha256` (of the .wasm bytes).
    Ready { sha256: String, serve_url: String },
    /// Not fetched yet (first attempt in flight).
    Pending,
    /// Fetch failed; `reason` names the URL and what went wrong (e.g. HTTP status).
    Failed { reason: String },
}

pub trait WasmResolver {
    fn resolve(&self, source: &WasmSource) -> WasmResolution;

    /// Where a module of `kind` with `sha256` will be served once it is fetched, if this
    /// resolver serves modules itself. Remote dynamic modules point Envoy there even before (or
    /// when) the fetch fails: Envoy then rejects the update and keeps its last good configuration.
    fn serve_url_for(&self, _kind: &WasmCodeType, _sha256: &str) -> Option<String> {
        None
    }
}

/// Resolver for offline `portcullis translate`: Envoy would fetch the module itself, pinned by the
/// policy's own sha256. Deterministic and I/O-free.
pub struct OfflineResolver;

impl WasmResolver for OfflineResolver {
    fn resolve(&self, source: &WasmSource) -> WasmResolution {
        match &source.sha256 {
            Some(sha) => WasmResolution::Ready {
                sha256: sha.clone(),
                serve_url: source.url.clone(),
            },
            None => WasmResolution::Failed {
                reason: format!("offline translate cannot pin {} without sha256", source.url),
            },
        }
    }
}
