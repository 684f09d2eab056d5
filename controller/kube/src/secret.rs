//! Secrets every replica shares and the first one creates (xDS CA, OIDC session key).

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::Client;

use crate::error::{Error, Result};

/// Secret `namespace/name` as stored, or `make()` created if there is none; `true` when this
/// call created it. Safe from every replica at once: a lost create race (409) re-reads the
/// winner's Secret, so all replicas end up with the same content.
pub(crate) async fn get_or_create(
    client: Client,
    namespace: &str,
    name: &str,
    make: impl FnOnce() -> Result<Secret>,
) -> Result<(Secret, bool)> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    if let Some(s) = api.get_opt(name).await? {
        return Ok((s, false));
    }
    let secret = make()?;
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok((secret, true)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok((api.get(name).await?, false)),
        Err(e) => Err(Error::Kube(e)),
    }
}
