//! The session a sealed cookie holds, and the per-worker cache of opened sessions.

use std::num::NonZeroUsize;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::jwt::Claims;

/// What the sealed session cookie holds. The ID token is kept (not its claims) because it is
/// needed for `id_token_hint` at logout anyway; its payload is read without a signature
/// check on each request since the filter verified it when the session was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "i")]
    pub id_token: String,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Unix seconds when the access token (and so the session, unless refreshed) expires.
    #[serde(rename = "e")]
    pub expires_at: u64,
    /// Unix seconds of the login; refreshes keep it, so `cookie.max_age` bounds the session.
    #[serde(rename = "t")]
    pub login_at: u64,
}

/// A session cookie opened once: the session and its ID token's claims.
#[derive(Debug)]
pub struct OpenedSession {
    pub session: Session,
    /// `None`: the stored ID token is unreadable (the request is refused).
    pub claims: Option<Claims>,
}

/// Opened sessions by the exact sealed cookie value, so a tampered or different cookie is a
/// miss by construction and goes through the full open (AES-GCM, JSON). An entry is used only
/// while its session has not expired, never past it; least recently used entries go first.
/// Per worker (per VM in proxy-wasm): no locking on the request path.
pub struct SessionCache(lru::LruCache<Box<str>, Arc<OpenedSession>>);

/// Entries per worker. Each holds the sealed value and the session (a few KiB with tokens).
pub const SESSION_CACHE_ENTRIES: usize = 256;

impl Default for SessionCache {
    fn default() -> Self {
        Self(lru::LruCache::new(
            NonZeroUsize::new(SESSION_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN),
        ))
    }
}

impl SessionCache {
    /// The session sealed as `sealed`, if opened before and not expired at `now`.
    pub fn get(&mut self, sealed: &str, now: u64) -> Option<Arc<OpenedSession>> {
        match self.0.get(sealed) {
            Some(o) if o.session.expires_at > now => Some(o.clone()),
            Some(_) => {
                self.0.pop(sealed);
                None
            }
            None => None,
        }
    }

    /// Remember a session that opened and has not expired at `now`.
    pub fn put(&mut self, sealed: &str, opened: Arc<OpenedSession>, now: u64) {
        if opened.session.expires_at > now && opened.claims.is_some() {
            self.0.put(sealed.into(), opened);
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
