//! Local buckets in process memory, for hosts whose workers share one address space (Envoy
//! dynamic modules).
//!
//! Each rule's buckets are split over a few shards, each behind its own lock, so one take is
//! exact without compare-and-swap retries. Memory is bounded: a rule holds at most `cap`
//! buckets and the least recently used one is evicted first (the caller counts evictions).
//!
//! Rules are registered by their store prefix, which names the namespace and the rule's whole
//! definition. A reloaded config with the same rule finds its buckets again, which matters
//! because Envoy rebuilds filter configs on every listener update.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use lru::LruCache;

use super::bucket::{Bucket, Shape, Take};

/// Shards per rule: enough to keep workers off each other's lock, few enough to keep the LRU
/// order close to global.
const SHARDS: usize = 16;

/// The buckets of one local rule.
pub struct RuleBuckets {
    shards: Box<[Mutex<LruCache<u64, Bucket>>]>,
    cap: usize,
}

impl RuleBuckets {
    fn new(cap: usize) -> Self {
        let per_shard = NonZeroUsize::new(cap.div_ceil(SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(LruCache::new(per_shard)))
            .collect();
        Self { shards, cap }
    }

    fn shard(&self, tag: u64) -> MutexGuard<'_, LruCache<u64, Bucket>> {
        // High bits: the low bits of a tag already pick wasm shared-data slots; either is uniform.
        let i = usize::try_from(tag >> 48).unwrap_or(0) % SHARDS;
        // A panic while holding the lock cannot leave a bucket half-written (entries are Copy).
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one token from bucket `tag`. Returns the outcome and whether another bucket was
    /// evicted to make room.
    pub fn take(&self, shape: &Shape, tag: u64, now_ms: u64) -> (Take, bool) {
        let mut shard = self.shard(tag);
        let bucket = shard
            .get(&tag)
            .copied()
            .unwrap_or_else(|| shape.full(now_ms));
        let (bucket, take) = shape.take(bucket, now_ms);
        let evicted = shard.push(tag, bucket).is_some_and(|(old, _)| old != tag);
        (take, evicted)
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most buckets this rule keeps.
    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).cap().get())
            .sum::<usize>()
            .max(self.cap)
    }
}

/// Every rule's buckets in this process. Entries are weak: a rule no config uses any more is
/// freed with its last config.
#[derive(Default)]
pub struct ProcessBuckets {
    rules: Mutex<BTreeMap<String, Weak<RuleBuckets>>>,
}

impl ProcessBuckets {
    pub const fn new() -> Self {
        Self {
            rules: Mutex::new(BTreeMap::new()),
        }
    }

    /// The buckets of the rule stored under `prefix`, created with room for `cap` buckets if no
    /// live config has them.
    pub fn rule(&self, prefix: &str, cap: usize) -> Arc<RuleBuckets> {
        let mut rules = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(live) = rules.get(prefix).and_then(Weak::upgrade) {
            return live;
        }
        rules.retain(|_, w| w.strong_count() > 0);
        let fresh = Arc::new(RuleBuckets::new(cap));
        rules.insert(prefix.to_string(), Arc::downgrade(&fresh));
        fresh
    }

    /// Rules with live buckets (diagnostics, tests).
    pub fn rules(&self) -> usize {
        self.rules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::config::Unit;

    const T0: u64 = 1_700_000_000_000;

    fn shape(requests: u64) -> Shape {
        Shape {
            requests,
            unit: Unit::Hour,
            burst: requests,
        }
    }

    #[test]
    fn exact_count_across_threads() {
        let pb = ProcessBuckets::new();
        let rule = pb.rule("p/", 1024);
        let s = shape(1000);
        let allowed: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let rule = rule.clone();
                    scope.spawn(move || (0..500).filter(|_| rule.take(&s, 7, T0).0.allowed).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(allowed, 1000);
    }

    #[test]
    fn bounded_with_lru_eviction() {
        let pb = ProcessBuckets::new();
        let rule = pb.rule("p/", 64);
        let s = shape(1);
        let mut evictions = 0;
        for tag in 0..10_000u64 {
            let (take, evicted) = rule.take(&s, tag.wrapping_mul(0x9E37_79B9_7F4A_7C15), T0);
            assert!(take.allowed, "a fresh key always has its token");
            evictions += usize::from(evicted);
        }
        assert!(rule.len() <= 64, "{} buckets kept", rule.len());
        assert_eq!(evictions, 10_000 - rule.len());
        // The most recently used key survives a flood of others; its bucket is still empty.
        let hot = 42u64 << 48;
        assert!(rule.take(&s, hot, T0).0.allowed);
        for tag in 0..3u64 {
            rule.take(&s, (tag << 48) | 1, T0);
        }
        assert!(!rule.take(&s, hot, T0).0.allowed, "hot key was evicted");
    }

    #[test]
    fn same_prefix_shares_buckets_until_every_config_is_gone() {
        let pb = ProcessBuckets::new();
        let a = pb.rule("p/", 16);
        let b = pb.rule("p/", 16);
        assert!(Arc::ptr_eq(&a, &b));
        let s = shape(1);
        assert!(a.take(&s, 1, T0).0.allowed);
        assert!(!b.take(&s, 1, T0).0.allowed);
        assert!(!Arc::ptr_eq(&a, &pb.rule("q/", 16)));
        drop((a, b));
        let c = pb.rule("p/", 16);
        assert!(c.take(&s, 1, T0).0.allowed, "a fresh rule starts full");
        assert_eq!(pb.rules(), 1);
    }
}
