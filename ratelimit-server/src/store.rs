//! Counting in Redis: one Lua script per descriptor, so check-and-increment is atomic and every
//! replica of the server sees one count. Windows come from Redis's own clock (`TIME`), so
//! replicas with skewed clocks still agree on window boundaries.
//!
//! Keys never contain request bytes: a descriptor is stored under SHA-256 hashes, so a key's
//! length is bounded whatever the caller sends.
//!
//! - Counter: `{<prefix>:<rule hash>}:<descriptor hash>:<window start ms>`.
//! - Distinct keys of the rule in the window (a HyperLogLog, 12 KiB at most):
//!   `{<prefix>:<rule hash>}:keys:<window start ms>`.
//!
//! The rule hash covers the domain, the window and the entries' keys (not their values); the
//! descriptor hash covers all of that and the values. The braces are a Redis Cluster hash tag,
//! so a rule's counters and its key count live in one slot and one script may touch both. Every
//! key expires shortly after its window.

use redis::aio::ConnectionManager;
use redis::Script;
use sha2::{Digest, Sha256};

use crate::redact::Secrets;

/// Shared head of both scripts. KEYS[1]: the descriptor's counter base, KEYS[2]: the rule's
/// key-count base. ARGV: hits, limit, window ms, cap (0: none), descriptor hash (the HyperLogLog
/// member). `new_key(exists)`: when the descriptor has no counter in this window and the rule
/// already counts `cap` distinct keys, the script answers {0, 0, reset, 1} (capped) without
/// creating anything; `remember()` adds the descriptor once its counter is created.
const HEAD: &str = r#"
local hits = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local member = ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = now - (now % window)
local keys_key = KEYS[2] .. ':keys:' .. start
local function capped(exists)
  return cap > 0 and not exists and redis.call('PFCOUNT', keys_key) >= cap
end
local function remember(exists)
  if cap > 0 and not exists then
    redis.call('PFADD', keys_key, member)
    redis.call('PEXPIREAT', keys_key, start + window + 1000)
  end
end
"#;

/// Fixed window: allowed when the window's count plus the hits stays within the limit; only
/// allowed hits are counted. Returns {allowed, remaining, ms until the window ends, capped}.
const FIXED: &str = r#"
local key = KEYS[1] .. ':' .. start
local raw = redis.call('GET', key)
if capped(raw) then return {0, 0, start + window - now, 1} end
local count = tonumber(raw or '0')
local allowed = 0
if count + hits <= limit then
  count = redis.call('INCRBY', key, hits)
  redis.call('PEXPIREAT', key, start + window + 1000)
  remember(raw)
  allowed = 1
end
local remaining = limit - count
if remaining < 0 then remaining = 0 end
return {allowed, remaining, start + window - now, 0}
"#;

/// Sliding window (two fixed windows, the previous one weighted by how much of it still
/// overlaps the sliding window). Returns {allowed, remaining, ms until the current window ends,
/// capped}. A descriptor is new to the rule's key count when it has no current-window counter.
const SLIDING: &str = r#"
local cur_key = KEYS[1] .. ':' .. start
local prev_key = KEYS[1] .. ':' .. (start - window)
local cur_raw = redis.call('GET', cur_key)
if capped(cur_raw) then return {0, 0, start + window - now, 1} end
local cur = tonumber(cur_raw or '0')
local prev = tonumber(redis.call('GET', prev_key) or '0')
local weight = (window - (now - start)) / window
local estimate = prev * weight + cur
local allowed = 0
if estimate + hits <= limit then
  cur = redis.call('INCRBY', cur_key, hits)
  redis.call('PEXPIREAT', cur_key, start + 2 * window + 1000)
  remember(cur_raw)
  estimate = estimate + hits
  allowed = 1
end
local remaining = math.floor(limit - estimate)
if remaining < 0 then remaining = 0 end
return {allowed, remaining, start + window - now, 0}
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    Fixed,
    Sliding,
}

/// One descriptor's count after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub allowed: bool,
    pub remaining: u32,
    pub reset_ms: u64,
    /// Not counted: the descriptor is new in this window and its rule already has the most
    /// distinct keys allowed (`--max-keys-per-rule`); nothing was written.
    pub capped: bool,
}

/// A Redis failure, its message already scrubbed of the URL's credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("--key-prefix {0:?}: {1}")]
    Prefix(String, &'static str),
}

/// Longest the startup connection to Redis (and each reconnection) may take.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest `--key-prefix`, in bytes.
pub const MAX_PREFIX_LEN: usize = 64;

/// Where one descriptor is counted: its counter base and its rule's key-count base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub counter: String,
    pub rule: String,
    /// Hex SHA-256 of the descriptor (the key-count member).
    pub member: String,
}

#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    script: Script,
    prefix: String,
    secrets: Secrets,
}

impl Store {
    pub async fn connect(
        url: &str,
        algorithm: Algorithm,
        prefix: &str,
    ) -> Result<Self, StoreError> {
        check_prefix(prefix)?;
        let secrets = Secrets::from_url(url);
        let err = |e: redis::RedisError| StoreError::Redis(secrets.scrub(&e.to_string()));
        let client = redis::Client::open(url).map_err(err)?;
        // One quick try first: a wrong URL, password or an unreachable Redis fails startup now,
        // not after the connection manager's retries (minutes of backoff).
        let probe = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(STARTUP_TIMEOUT)
            .set_response_timeout(STARTUP_TIMEOUT);
        let mut first = client
            .get_multiplexed_async_connection_with_config(&probe)
            .await
            .map_err(err)?;
        redis::cmd("PING")
            .query_async::<()>(&mut first)
            .await
            .map_err(err)?;
        drop(first);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(STARTUP_TIMEOUT)
            .set_max_delay(2000);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(err)?;
        let script = Script::new(&format!(
            "{HEAD}{}",
            match algorithm {
                Algorithm::Fixed => FIXED,
                Algorithm::Sliding => SLIDING,
            }
        ));
        Ok(Self {
            conn,
            script,
            prefix: prefix.to_string(),
            secrets,
        })
    }

    /// Where a descriptor is counted (see the module docs for the layout).
    pub fn keys(&self, domain: &str, entries: &[(String, String)], window_s: u64) -> Keys {
        keys(&self.prefix, domain, entries, window_s)
    }

    /// Adds `hits` to the descriptor's window if that stays within `limit`; `cap` (0: none) bounds
    /// the rule's distinct keys per window.
    pub async fn hit(
        &self,
        keys: &Keys,
        hits: u32,
        limit: u32,
        window_s: u64,
        cap: u64,
    ) -> Result<Count, StoreError> {
        let mut conn = self.conn.clone();
        let (allowed, remaining, reset_ms, capped): (i64, i64, i64, i64) = self
            .script
            .key(&keys.counter)
            .key(&keys.rule)
            .arg(hits)
            .arg(limit)
            .arg(window_s.saturating_mul(1000))
            .arg(cap)
            .arg(&keys.member)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::Redis(self.secrets.scrub(&e.to_string())))?;
        Ok(Count {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset_ms: u64::try_from(reset_ms.max(0)).unwrap_or(0),
            capped: capped == 1,
        })
    }
}

/// A prefix keeps the hash tag intact and the keys printable.
fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    let bad = |why| Err(StoreError::Prefix(prefix.to_string(), why));
    if prefix.is_empty() {
        return bad("must not be empty");
    }
    if prefix.len() > MAX_PREFIX_LEN {
        return bad("longer than 64 bytes");
    }
    if prefix
        .chars()
        .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
    {
        return bad("must not contain braces, whitespace or control characters");
    }
    Ok(())
}

/// Length-prefixed, so no two different inputs hash the same bytes.
fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn rule_hasher(domain: &str, entries: &[(String, String)], window_s: u64) -> Sha256 {
    let mut h = Sha256::new();
    put(&mut h, b"portcullis-rl/v2");
    put(&mut h, domain.as_bytes());
    h.update(window_s.to_be_bytes());
    h.update((entries.len() as u64).to_be_bytes());
    for (k, _) in entries {
        put(&mut h, k.as_bytes());
    }
    h
}

/// See [`Store::keys`].
pub fn keys(prefix: &str, domain: &str, entries: &[(String, String)], window_s: u64) -> Keys {
    let rule_h = rule_hasher(domain, entries, window_s);
    let mut desc_h = rule_h.clone();
    let rule = hex::encode(rule_h.finalize());
    for (_, v) in entries {
        put(&mut desc_h, v.as_bytes());
    }
    let member = hex::encode(desc_h.finalize());
    let base = format!("{{{prefix}:{rule}}}");
    Keys {
        counter: format!("{base}:{member}"),
        rule: base,
        member,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_are_hashes_of_bounded_length() {
        let long = "v".repeat(100_000);
        let k = keys(
            "portcullis-rl",
            "d",
            &e(&[("rule", "r"), ("path", &long)]),
            60,
        );
        // prefix + 2 x 64 hex + punctuation; the window start adds at most 14 digits.
        assert_eq!(k.counter.len(), "{portcullis-rl:}:".len() + 128);
        assert!(!k.counter.contains('v'));
        assert!(k.counter.starts_with(&k.rule));
        assert!(k.rule.starts_with("{portcullis-rl:") && k.rule.ends_with('}'));
    }

    #[test]
    fn keys_keep_parts_apart() {
        let a = keys("p", "d", &e(&[("a", "b:c")]), 60);
        let b = keys("p", "d", &e(&[("a:b", "c")]), 60);
        assert_ne!(a.member, b.member);
        assert_ne!(a.rule, b.rule);
        // Same rule (domain, window, entry keys), different values: one rule, two members.
        let c = keys("p", "d", &e(&[("a", "x")]), 60);
        assert_eq!(a.rule, c.rule);
        assert_ne!(a.member, c.member);
        // The window and the domain are part of the rule.
        assert_ne!(a.rule, keys("p", "d", &e(&[("a", "b:c")]), 3600).rule);
        assert_ne!(a.rule, keys("p", "e", &e(&[("a", "b:c")]), 60).rule);
        // Moving a value across entries changes the descriptor.
        assert_ne!(
            keys("p", "d", &e(&[("a", "xy"), ("b", "")]), 60).member,
            keys("p", "d", &e(&[("a", "x"), ("b", "y")]), 60).member
        );
    }

    #[test]
    fn prefixes_that_break_the_hash_tag_are_refused() {
        assert!(check_prefix("portcullis-rl").is_ok());
        for bad in ["", "a{b", "a}b", "a b", "a\nb", &"p".repeat(65)] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
