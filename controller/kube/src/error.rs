//! Errors of the Kubernetes edges. Every reconcile error is retried with backoff by its loop; none
//! ends the process.

/// Errors from the Kubernetes provider, status writer, infrastructure and leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be (de)serialized.
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    /// The fleet's Envoy bootstrap could not be rendered (the compiled-in Envoy descriptors).
    #[error("rendering the Envoy bootstrap: {0}")]
    Bootstrap(String),
    /// A status record lacks what is needed to address its object.
    #[error("invalid status record for {kind} {name}: {reason}")]
    InvalidStatus {
        kind: String,
        name: String,
        reason: String,
    },
    /// A Secret the controller owns (OIDC session key) exists but holds nothing usable.
    #[error("Secret {namespace}/{name}: {reason}")]
    InvalidSecret {
        namespace: String,
        name: String,
        reason: String,
    },
    /// Certificate generation or loading failed.
    #[error("certificates: {0}")]
    Certs(String),
    /// A Gateway cannot be given infrastructure (e.g. it has no uid yet).
    #[error("gateway {namespace}/{name}: {reason}")]
    Gateway {
        namespace: String,
        name: String,
        reason: String,
    },
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error::Certs(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
