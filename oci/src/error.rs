//! Errors from packaging, pushing and pulling wasm images.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in this crate. Registry errors name the registry, and the
/// HTTP status where the registry answered.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("invalid sha256 digest {0:?}: expected 64 hex characters, optionally prefixed with `sha256:`")]
    InvalidDigest(String),

    #[error(
        "registry {registry} refused access to {reference} (HTTP {status}): check the credentials"
    )]
    Unauthorized {
        registry: String,
        reference: String,
        status: u16,
    },

    #[error("{what} not found in registry {registry} (HTTP 404)")]
    NotFound { registry: String, what: String },

    #[error("registry {registry} answered HTTP {status} for {url}: {message}")]
    Http {
        registry: String,
        status: u16,
        url: String,
        message: String,
    },

    #[error("registry {registry} is unreachable: {detail}")]
    Unreachable { registry: String, detail: String },

    #[error("TLS with registry {registry} failed: {detail} (for a private CA, pass its PEM with --ca-file / `ca_file`)")]
    Tls { registry: String, detail: String },

    #[error("timed out after {after:?} talking to registry {registry}")]
    Timeout { registry: String, after: Duration },

    #[error("digest mismatch for {reference} from registry {registry}: expected sha256:{expected}, got sha256:{actual}")]
    DigestMismatch {
        registry: String,
        reference: String,
        expected: String,
        actual: String,
    },

    #[error("wasm module {what} is {size} bytes, over the limit of {limit} bytes (256 MiB)")]
    TooLarge { what: String, size: u64, limit: u64 },

    #[error("{what} is not a wasm module: it does not start with the `\\0asm` magic")]
    NotWasm { what: String },

    #[error("{reference} is not a wasm image in any format Envoy Gateway reads: {reason}")]
    UnsupportedImage { reference: String, reason: String },

    #[error("cannot use Docker credentials: {0}")]
    DockerConfig(String),

    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },

    #[error("{0}")]
    Invalid(String),
}

impl OciError {
    /// The HTTP status behind this error, when the registry answered with one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            OciError::Unauthorized { status, .. } | OciError::Http { status, .. } => Some(*status),
            OciError::NotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// Whether trying again may help: server errors, throttling, connection failures, timeouts.
    pub fn is_transient(&self) -> bool {
        match self {
            OciError::Http { status, .. } => *status >= 500 || *status == 429,
            OciError::Unreachable { .. } | OciError::Timeout { .. } => true,
            _ => false,
        }
    }
}
