//! Counting in Redis: one Lua script per descriptor, so check-and-increment is atomic and every
//! replica of the server sees one count. Windows come from Redis's own clock (`TIME`), so
//! replicas with skewed clocks still agree on window boundaries.
//!
//! Keys: `{<prefix>:<domain>:<entries>}:<window start ms>`; the braces are a Redis Cluster hash
//! tag, so a descriptor's windows live in one slot. Every key expires shortly after its window.

use redis::aio::ConnectionManager;
use redis::Script;

/// Fixed window: allowed when the window's count plus the hits stays within the limit; only
/// allowed hits are counted. Returns {allowed, remaining, ms until the window ends}.
const FIXED: &str = r#"
local hits = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = now - (now % window)
local key = KEYS[1] .. ':' .. start
local count = tonumber(redis.call('GET', key) or '0')
local allowed = 0
if count + hits <= limit then
  count = redis.call('INCRBY', key, hits)
  redis.call('PEXPIREAT', key, start + window + 1000)
  allowed = 1
end
local remaining = limit - count
if remaining < 0 then remaining = 0 end
return {allowed, remaining, start + window - now}
"#;

/// Sliding window (two fixed windows, the previous one weighted by how much of it still
/// overlaps the sliding window). Returns {allowed, remaining, ms until the current window ends}.
const SLIDING: &str = r#"
local hits = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = now - (now % window)
local cur_key = KEYS[1] .. ':' .. start
local prev_key = KEYS[1] .. ':' .. (start - window)
local cur = tonumber(redis.call('GET', cur_key) or '0')
local prev = tonumber(redis.call('GET', prev_key) or '0')
local weight = (window - (now - start)) / window
local estimate = prev * weight + cur
local allowed = 0
if estimate + hits <= limit then
  cur = redis.call('INCRBY', cur_key, hits)
  redis.call('PEXPIREAT', cur_key, start + 2 * window + 1000)
  estimate = estimate + hits
  allowed = 1
end
local remaining = math.floor(limit - estimate)
if remaining < 0 then remaining = 0 end
return {allowed, remaining, start + window - now}
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
}

#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    script: Script,
    prefix: String,
}

impl Store {
    pub async fn connect(
        url: &str,
        algorithm: Algorithm,
        prefix: &str,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        let script = Script::new(match algorithm {
            Algorithm::Fixed => FIXED,
            Algorithm::Sliding => SLIDING,
        });
        Ok(Self {
            conn,
            script,
            prefix: prefix.to_string(),
        })
    }

    /// The Redis key base of a descriptor: length-prefixed parts, so no two descriptors collide.
    pub fn key(&self, domain: &str, entries: &[(String, String)], window_s: u64) -> String {
        let mut k = format!("{{{}:{}:{}", self.prefix, escape(domain), window_s);
        for (name, value) in entries {
            k.push_str(&format!(
                ":{}:{}={}",
                name.len(),
                escape(name),
                escape(value)
            ));
        }
        k.push('}');
        k
    }

    /// Adds `hits` to the descriptor's window if that stays within `limit`.
    pub async fn hit(
        &self,
        key: &str,
        hits: u32,
        limit: u32,
        window_s: u64,
    ) -> Result<Count, redis::RedisError> {
        let mut conn = self.conn.clone();
        let (allowed, remaining, reset_ms): (i64, i64, i64) = self
            .script
            .key(key)
            .arg(hits)
            .arg(limit)
            .arg(window_s.saturating_mul(1000))
            .invoke_async(&mut conn)
            .await?;
        Ok(Count {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset_ms: u64::try_from(reset_ms.max(0)).unwrap_or(0),
        })
    }
}

/// Keeps keys printable and the `{}` hash tag intact: braces, colons, `%` and controls escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '{' | '}' | ':' | '%' | '=' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_control() => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escaping_keeps_parts_apart() {
        assert_eq!(escape("a:b{c}"), "a%3Ab%7Bc%7D");
        assert_ne!(escape("a=b"), "a=b");
        assert_eq!(escape("plain/path"), "plain/path");
    }
}
