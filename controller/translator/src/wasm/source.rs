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

/// `url` with its userinfo (`user:password@`) replaced by `***@`: how module URLs appear in
/// status messages, `/status` and logs. Everything else is kept as written.
pub fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => url.to_string(),
    }
}

impl WasmSource {
    /// [`redact_userinfo`] of the URL.
    pub fn shown_url(&self) -> String {
        redact_userinfo(&self.url)
    }
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

#[cfg(test)]
mod tests {
    use super::redact_userinfo;

    #[test]
    fn userinfo_is_redacted_and_nothing_else() {
        for (url, shown) in [
            (
                "https://user:s3cret@wasm.example.com/m.wasm?x=1",
                "https://***@wasm.example.com/m.wasm?x=1",
            ),
            (
                "http://token@127.0.0.1:8080/m.wasm",
                "http://***@127.0.0.1:8080/m.wasm",
            ),
            ("http://a:b@c@host", "http://***@host"),
            (
                "https://wasm.example.com/a@b.wasm",
                "https://wasm.example.com/a@b.wasm",
            ),
            ("https://h/m.wasm?u=a@b", "https://h/m.wasm?u=a@b"),
            ("oci://ghcr.io/o/i@sha256:00", "oci://ghcr.io/o/i@sha256:00"),
            ("ghcr.io/o/i:v1", "ghcr.io/o/i:v1"),
        ] {
            assert_eq!(redact_userinfo(url), shown, "{url}");
        }
    }
}
