//! Local buckets in host shared data, updated with compare-and-swap.
//!
//! Layout: every local rule owns a fixed number of slots (`local.slots`), one shared-data key
//! each. A bucket key is hashed to a 64-bit tag; the tag picks the slot, and the slot's value
//! holds up to `local.slot_entries` buckets `(tag, level, updated_ms)`. So memory is bounded by
//! rules × slots × entries, whatever the number of distinct clients.
//!
//! Slots are created once, at configure time, because a proxy-wasm write to a key that does not
//! exist yet cannot be conditional: two workers creating the same bucket would overwrite each
//! other. After that every write is a compare-and-swap against the version just read.
//!
//! Full (refilled) buckets carry no information, so the tick drops them, and a full slot makes
//! room by dropping an idle bucket first, else the one with the most tokens.

use super::bucket::{Bucket, Shape, Take};
use crate::host::{Host, SharedDataError};

/// Format byte at the start of every slot value (an empty slot is just this byte).
const VERSION: u8 = 1;
const ENTRY: usize = 24;

/// One decoded bucket in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub tag: u64,
    pub bucket: Bucket,
}

/// Decode a slot value; anything malformed reads as an empty slot (it is then rewritten).
pub fn decode(data: &[u8]) -> Vec<Entry> {
    match data.split_first() {
        Some((&VERSION, rest)) if rest.len() % ENTRY == 0 => rest
            .chunks_exact(ENTRY)
            .map(|c| Entry {
                tag: u64_at(c, 0),
                bucket: Bucket {
                    level: u64_at(c, 8),
                    updated_ms: u64_at(c, 16),
                },
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn u64_at(c: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&c[at..at + 8]);
    u64::from_le_bytes(b)
}

pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * ENTRY);
    out.push(VERSION);
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.bucket.level.to_le_bytes());
        out.extend_from_slice(&e.bucket.updated_ms.to_le_bytes());
    }
    out
}

/// Where one rule's buckets live.
#[derive(Debug, Clone)]
pub struct RuleStore {
    /// Shared-data key prefix, unique per namespace and rule definition.
    pub prefix: String,
    pub slots: u32,
    pub slot_entries: usize,
    pub shape: Shape,
}

/// What an update did, besides the bucket decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The compare-and-swap went through after `retries` lost races.
    Done {
        take: Take,
        retries: u32,
        evicted: bool,
    },
    /// Every attempt lost the race; the caller applies the contention fallback.
    Contended,
    /// The host refused shared data for another reason.
    Unavailable,
}

impl RuleStore {
    pub fn slot_key(&self, slot: u32) -> String {
        format!("{}{slot:x}", self.prefix)
    }

    pub fn slot_of(&self, tag: u64) -> u32 {
        // The low bits pick the slot; the whole tag tells buckets in a slot apart.
        u32::try_from(tag % u64::from(self.slots)).unwrap_or(0)
    }

    /// Creates every slot that does not exist yet (configure time, before traffic).
    pub fn init<H: Host + ?Sized>(&self, host: &mut H) -> Result<(), SharedDataError> {
        let empty = encode(&[]);
        for slot in 0..self.slots {
            let key = self.slot_key(slot);
            if host.shared_get(&key).is_none() {
                host.shared_set(&key, &empty, None)?;
            }
        }
        Ok(())
    }

    /// Takes one token from the bucket `tag`, retrying lost races up to `max_retries` times.
    pub fn take<H: Host + ?Sized>(
        &self,
        host: &mut H,
        tag: u64,
        now_ms: u64,
        max_retries: u32,
    ) -> Update {
        let key = self.slot_key(self.slot_of(tag));
        let mut retries = 0;
        loop {
            let (mut entries, cas) = match host.shared_get(&key) {
                Some(v) => (decode(&v.data), Some(v.cas)),
                // Slots exist from configure time; recreate one that vanished (e.g. host reset).
                None => (Vec::new(), None),
            };
            let mut evicted = false;
            let idx = match entries.iter().position(|e| e.tag == tag) {
                Some(i) => i,
                None => {
                    if entries.len() >= self.slot_entries {
                        evicted = self.make_room(&mut entries, now_ms);
                    }
                    entries.push(Entry {
                        tag,
                        bucket: self.shape.full(now_ms),
                    });
                    entries.len() - 1
                }
            };
            let (bucket, take) = self.shape.take(entries[idx].bucket, now_ms);
            entries[idx].bucket = bucket;
            match host.shared_set(&key, &encode(&entries), cas) {
                Ok(()) => {
                    return Update::Done {
                        take,
                        retries,
                        evicted,
                    }
                }
                Err(SharedDataError::CasMismatch) => {
                    retries += 1;
                    if retries >= max_retries {
                        return Update::Contended;
                    }
                }
                Err(SharedDataError::Unavailable(_)) => return Update::Unavailable,
            }
        }
    }

    /// Drops idle buckets, or else the one with the most tokens. True if an active bucket went.
    fn make_room(&self, entries: &mut Vec<Entry>, now_ms: u64) -> bool {
        entries.retain(|e| !self.shape.is_idle(e.bucket, now_ms));
        let mut evicted = false;
        while entries.len() >= self.slot_entries && !entries.is_empty() {
            let fullest = entries
                .iter()
                .enumerate()
                .max_by_key(|(_, e)| self.shape.level_at(e.bucket, now_ms))
                .map(|(i, _)| i)
                .unwrap_or(0);
            entries.swap_remove(fullest);
            evicted = true;
        }
        evicted
    }

    /// Drops idle buckets from slots `from..from+count` (wrapping). Returns (slots rewritten,
    /// buckets dropped). A slot that changed under us is skipped; the next sweep gets it.
    pub fn sweep<H: Host + ?Sized>(
        &self,
        host: &mut H,
        from: u32,
        count: u32,
        now_ms: u64,
    ) -> (u32, u32) {
        let mut rewritten = 0;
        let mut dropped = 0;
        for i in 0..count.min(self.slots) {
            let slot = (from.wrapping_add(i)) % self.slots;
            let key = self.slot_key(slot);
            let Some(v) = host.shared_get(&key) else {
                continue;
            };
            let entries = decode(&v.data);
            let kept: Vec<Entry> = entries
                .iter()
                .copied()
                .filter(|e| !self.shape.is_idle(e.bucket, now_ms))
                .collect();
            if kept.len() == entries.len() && !v.data.is_empty() {
                continue;
            }
            if host.shared_set(&key, &encode(&kept), Some(v.cas)).is_ok() {
                rewritten += 1;
                dropped += u32::try_from(entries.len() - kept.len()).unwrap_or(u32::MAX);
            }
        }
        (rewritten, dropped)
    }

    /// Buckets currently stored for this rule (tests and diagnostics).
    pub fn count<H: Host + ?Sized>(&self, host: &H) -> usize {
        (0..self.slots)
            .filter_map(|s| host.shared_get(&self.slot_key(s)))
            .map(|v| decode(&v.data).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::SharedValue;
    use crate::ratelimit::config::Unit;
    use crate::testing::MemoryHost;

    const T0: u64 = 1_700_000_000_000;

    fn store(slots: u32, entries: usize, requests: u64) -> RuleStore {
        RuleStore {
            prefix: "t/".into(),
            slots,
            slot_entries: entries,
            shape: Shape {
                requests,
                unit: Unit::Hour,
                burst: requests,
            },
        }
    }

    #[test]
    fn encode_decode_round_trip_and_garbage() {
        let e = vec![
            Entry {
                tag: 1,
                bucket: Bucket {
                    level: 2,
                    updated_ms: 3,
                },
            },
            Entry {
                tag: u64::MAX,
                bucket: Bucket {
                    level: 0,
                    updated_ms: T0,
                },
            },
        ];
        assert_eq!(decode(&encode(&e)), e);
        assert!(decode(&[]).is_empty());
        assert!(decode(&[9, 1, 2]).is_empty());
        assert!(decode(&[VERSION, 1, 2]).is_empty());
    }

    #[test]
    fn exact_count_then_deny() {
        let s = store(4, 4, 5);
        let mut h = MemoryHost::new();
        s.init(&mut h).unwrap();
        let allowed = (0..9)
            .filter(
                |_| matches!(s.take(&mut h, 42, T0, 8), Update::Done { take, .. } if take.allowed),
            )
            .count();
        assert_eq!(allowed, 5);
        // Another key has its own bucket.
        assert!(matches!(s.take(&mut h, 43, T0, 8), Update::Done { take, .. } if take.allowed));
    }

    #[test]
    fn memory_is_bounded_by_slots_times_entries() {
        let s = store(8, 2, 1);
        let mut h = MemoryHost::new();
        s.init(&mut h).unwrap();
        let mut evictions = 0;
        for tag in 0..10_000u64 {
            if let Update::Done { evicted: true, .. } =
                s.take(&mut h, tag.wrapping_mul(0x9E37_79B9_7F4A_7C15), T0, 8)
            {
                evictions += 1;
            }
        }
        assert_eq!(s.count(&h), 16);
        assert_eq!(h.shared.len(), 8);
        assert!(evictions > 0);
    }

    #[test]
    fn sweep_drops_only_idle_buckets() {
        let s = store(2, 8, 10);
        let mut h = MemoryHost::new();
        s.init(&mut h).unwrap();
        for tag in 0..6u64 {
            s.take(&mut h, tag, T0, 8);
        }
        assert_eq!(s.count(&h), 6);
        // 10 per hour: one token back after 6 minutes; each bucket lost one, so all are full.
        let (_, dropped) = s.sweep(&mut h, 0, 2, T0 + 60_000);
        assert_eq!(dropped, 0);
        let (_, dropped) = s.sweep(&mut h, 0, 2, T0 + 360_000);
        assert_eq!(dropped, 6);
        assert_eq!(s.count(&h), 0);
    }

    /// A host whose shared data loses the compare-and-swap `lose` times per key before it wins,
    /// as if other workers wrote in between.
    struct Contended {
        inner: MemoryHost,
        lose: u32,
        lost: u32,
    }

    impl Host for Contended {
        fn header(&self, d: crate::Direction, n: &str) -> Option<String> {
            self.inner.header(d, n)
        }
        fn headers(&self, d: crate::Direction) -> Vec<(String, String)> {
            self.inner.headers(d)
        }
        fn set_header(&mut self, d: crate::Direction, n: &str, v: &str) {
            self.inner.set_header(d, n, v)
        }
        fn add_header(&mut self, d: crate::Direction, n: &str, v: &str) {
            self.inner.add_header(d, n, v)
        }
        fn remove_header(&mut self, d: crate::Direction, n: &str) {
            self.inner.remove_header(d, n)
        }
        fn send_local_response(&mut self, s: u16, h: &[(&str, &str)], b: &[u8]) {
            self.inner.send_local_response(s, h, b)
        }
        fn now(&self) -> std::time::SystemTime {
            self.inner.now()
        }
        fn shared_get(&self, k: &str) -> Option<SharedValue> {
            self.inner.shared_get(k)
        }
        fn shared_set(
            &mut self,
            k: &str,
            d: &[u8],
            cas: Option<u32>,
        ) -> Result<(), SharedDataError> {
            if cas.is_some() && self.lost < self.lose {
                self.lost += 1;
                // Someone else took a token meanwhile: bump the version with the same value.
                let v = self.inner.shared_get(k).map(|v| v.data).unwrap_or_default();
                self.inner.shared_set(k, &v, None)?;
                return Err(SharedDataError::CasMismatch);
            }
            self.inner.shared_set(k, d, cas)
        }
        fn counter_add(&mut self, n: &str, by: u64) {
            self.inner.counter_add(n, by)
        }
        fn log(&self, l: crate::LogLevel, m: &str) {
            self.inner.log(l, m)
        }
    }

    #[test]
    fn lost_races_are_retried_then_bounded() {
        let s = store(1, 4, 5);
        let mut h = Contended {
            inner: MemoryHost::new(),
            lose: 3,
            lost: 0,
        };
        s.init(&mut h).unwrap();
        match s.take(&mut h, 1, T0, 8) {
            Update::Done { take, retries, .. } => {
                assert!(take.allowed);
                assert_eq!(retries, 3);
            }
            other => panic!("{other:?}"),
        }
        let mut h = Contended {
            inner: MemoryHost::new(),
            lose: 100,
            lost: 0,
        };
        s.init(&mut h).unwrap();
        assert_eq!(s.take(&mut h, 1, T0, 8), Update::Contended);
        assert_eq!(h.lost, 8);
    }
}
