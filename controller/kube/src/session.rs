//! The OIDC session key shared by every replica: 32 random bytes in a Secret of the controller's
//! namespace. Replicas must derive the same cookie keys, or a failover logs every user out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::Client;

use crate::error::{Error, Result};

/// Data key of the session key in its Secret.
pub const SESSION_KEY: &str = "session-key";

/// What to do about a Secret that holds no usable key (in every such error message).
const FIX: &str = "put 32 random bytes in data.session-key, or delete the Secret to have a new \
                   random key created (every OIDC session then ends); OIDC is not served until then";

/// The key in Secret `namespace/name`; never a default: a Secret without a usable key is an
/// error naming it, so no replica ever serves with a placeholder or a guessed key.
pub fn key_of(s: &Secret, namespace: &str, name: &str) -> Result<[u8; 32]> {
    let invalid = |reason: String| Error::InvalidSecret {
        namespace: namespace.to_string(),
        name: name.to_string(),
        reason: format!("{reason}; {FIX}"),
    };
    let bytes = s
        .data
        .as_ref()
        .and_then(|d| d.get(SESSION_KEY))
        .ok_or_else(|| invalid(format!("no data.{SESSION_KEY}")))?;
    <[u8; 32]>::try_from(bytes.0.as_slice()).map_err(|_| {
        invalid(format!(
            "data.{SESSION_KEY} must be exactly 32 bytes, not {}",
            bytes.0.len()
        ))
    })
}

/// The Secret holding `key`.
pub fn to_secret(namespace: &str, name: &str, key: &[u8; 32]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "portcullis".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            SESSION_KEY.to_string(),
            ByteString(key.to_vec()),
        )])),
        ..Secret::default()
    }
}

/// Load the key from Secret `namespace/name`, creating it (random) if missing. Every replica may
/// call this at once: a lost create race re-reads the winner's key.
pub async fn load_or_create(client: Client, namespace: &str, name: &str) -> Result<[u8; 32]> {
    let created = crate::secret::get_or_create(client, namespace, name, || {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key)
            .map_err(|e| Error::Certs(format!("no randomness for the session key: {e}")))?;
        Ok(to_secret(namespace, name, &key))
    })
    .await?;
    if created.1 {
        tracing::info!(namespace, name, "created the OIDC session key Secret");
    }
    key_of(&created.0, namespace, name)
}
