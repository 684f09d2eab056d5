//! OCI images for wasm filters (issue 4): package, push, pull, inspect, verify.
//!
//! - Images are published in the layout Envoy Gateway and Istio load: [`ImageFormat::Compat`]
//!   (an OCI image with one `tar+gzip` layer holding `plugin.wasm`, what `FROM scratch` +
//!   `COPY plugin.wasm ./` builds) by default, or [`ImageFormat::Artifact`] on request.
//! - [`pull_wasm`] reads every layout Envoy Gateway reads (Docker schema 2, OCI compat, OCI
//!   artifact), checks the pinned manifest digest, the size limit and the `\0asm` magic.
//! - Builds are reproducible: the same .wasm gives the same manifest digest.
//!
//! ```no_run
//! # async fn f() -> Result<(), portcullis_oci::OciError> {
//! use portcullis_oci::{pull_wasm, PullOptions};
//! let pulled = pull_wasm("127.0.0.1:5000/portcullis/headers:0.1.0", &PullOptions::default()).await?;
//! println!("{} bytes, manifest {}", pulled.wasm.len(), pulled.manifest_digest);
//! # Ok(()) }
//! ```

pub mod auth;
pub mod cli;
mod error;
pub mod image;
mod progress;
mod remote;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::RegistryAuth;
pub use error::OciError;
pub use image::Descriptor;
pub use remote::{inspect, pull_wasm, push_wasm, registry_host};

/// Largest wasm module we accept (the same limit as Envoy Gateway): 256 MiB.
pub const MAX_WASM_SIZE: u64 = 256 * 1024 * 1024;

/// The image layouts we read; the first two are also what we publish.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// OCI image manifest, last layer `application/vnd.oci.image.layer.v1.tar+gzip` with `plugin.wasm`.
    #[default]
    Compat,
    /// OCI manifest with exactly two layers: the runtime config and
    /// `application/vnd.module.wasm.content.layer.v1+wasm`.
    Artifact,
    /// Docker schema 2 manifest, last layer `application/vnd.docker.image.rootfs.diff.tar.gzip`
    /// with `plugin.wasm` (read only).
    Docker,
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageFormat::Compat => "compat",
            ImageFormat::Artifact => "artifact",
            ImageFormat::Docker => "docker",
        })
    }
}

/// Retries of transient failures (HTTP 5xx and 429, connection errors, timeouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries, the first included (1 = no retry).
    pub attempts: u32,
    /// Wait before the second try; doubles after each failure.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(3),
        }
    }
}

/// Default bound on a whole pull/push/inspect, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How to reach a registry and what to check when pulling.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The manifest digest the image must have: hex, with or without `sha256:` (as in
    /// EnvoyExtensionPolicy's `sha256`). For an image index, the index's or the chosen image's.
    pub expected_digest: Option<String>,
    pub auth: RegistryAuth,
    /// `Some(true)`: plain HTTP. `Some(false)`: always HTTPS. `None`: plain HTTP for
    /// 127.0.0.1 / localhost / ::1 unless `ca_file` is set, HTTPS elsewhere.
    pub insecure: Option<bool>,
    /// PEM file with extra CA certificates to trust for HTTPS.
    pub ca_file: Option<PathBuf>,
    /// Bound on the whole operation, retries included. The connect timeout is the smaller of
    /// this and 5 s.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Draw a progress bar on stderr (only shown when stderr is a terminal).
    pub progress: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            expected_digest: None,
            auth: RegistryAuth::Anonymous,
            insecure: None,
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
            progress: false,
        }
    }
}

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// `Compat` (default) or `Artifact`; `Docker` is read-only.
    pub format: ImageFormat,
    pub auth: RegistryAuth,
    /// See [`PullOptions::insecure`].
    pub insecure: Option<bool>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub progress: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            format: ImageFormat::Compat,
            auth: RegistryAuth::Anonymous,
            insecure: None,
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
            progress: false,
        }
    }
}

/// A module pulled and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledWasm {
    pub wasm: Vec<u8>,
    /// `sha256:<hex>` of the image manifest (the chosen image's, for an index).
    pub manifest_digest: String,
    /// Lowercase hex sha256 of `wasm` (no prefix).
    pub wasm_sha256: String,
    pub format: ImageFormat,
}

/// What a push published.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushedImage {
    /// The reference pushed (with its tag).
    pub reference: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// Lowercase hex sha256 of the module.
    pub wasm_sha256: String,
    pub format: ImageFormat,
}

/// What `inspect` found, without downloading the module.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageInfo {
    pub reference: String,
    pub registry: String,
    /// `sha256:<hex>` of the image manifest.
    pub manifest_digest: String,
    /// Set when the reference named an image index / manifest list.
    pub index_digest: Option<String>,
    pub manifest_media_type: String,
    /// The layout Envoy Gateway would read it as, if any.
    pub format: Option<ImageFormat>,
    /// Why it is not a wasm image, when `format` is `None`.
    pub format_error: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// The layer that holds the module.
    pub wasm_layer: Option<Descriptor>,
}

pub use image::{build_image, BuiltImage};
