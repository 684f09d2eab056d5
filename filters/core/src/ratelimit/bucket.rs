//! Token bucket in exact integer math.
//!
//! The level is kept in fixed point: one token is `unit_ms` units and every elapsed
//! millisecond adds `requests` units. So a bucket refills exactly `requests` tokens per unit,
//! with no floating point and no drift across workers.

use super::config::Unit;

/// The shape of a bucket: capacity (burst) and refill rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Tokens added per `unit`.
    pub requests: u64,
    pub unit: Unit,
    /// Capacity in tokens.
    pub burst: u64,
}

/// A bucket's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Fixed-point level (tokens × unit_ms).
    pub level: u64,
    /// Last update, milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

/// The outcome of taking one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    pub allowed: bool,
    /// Whole tokens left after this request.
    pub remaining: u64,
    /// Milliseconds until the bucket is full again.
    pub reset_ms: u64,
    /// Milliseconds until one token is available (0 when one is).
    pub retry_after_ms: u64,
}

impl Shape {
    fn one(&self) -> u128 {
        u128::from(self.unit.millis())
    }

    fn capacity(&self) -> u128 {
        u128::from(self.burst) * self.one()
    }

    /// A full bucket at `now_ms`.
    pub fn full(&self, now_ms: u64) -> Bucket {
        Bucket {
            level: clamp64(self.capacity()),
            updated_ms: now_ms,
        }
    }

    /// The bucket refilled up to `now_ms`. A clock behind the stored time adds nothing (workers
    /// read the clock at slightly different moments).
    pub fn refill(&self, b: Bucket, now_ms: u64) -> Bucket {
        let elapsed = u128::from(now_ms.saturating_sub(b.updated_ms));
        let level =
            (u128::from(b.level) + elapsed * u128::from(self.requests)).min(self.capacity());
        Bucket {
            level: clamp64(level),
            updated_ms: b.updated_ms.max(now_ms),
        }
    }

    /// Refills, then takes one token if there is one.
    pub fn take(&self, b: Bucket, now_ms: u64) -> (Bucket, Take) {
        let mut b = self.refill(b, now_ms);
        let one = self.one();
        let allowed = u128::from(b.level) >= one;
        if allowed {
            b.level = clamp64(u128::from(b.level) - one);
        }
        let level = u128::from(b.level);
        let rate = u128::from(self.requests.max(1));
        let remaining = clamp64(level / one);
        let reset_ms = clamp64((self.capacity().saturating_sub(level)).div_ceil(rate));
        let retry_after_ms = clamp64(one.saturating_sub(level).div_ceil(rate));
        (
            b,
            Take {
                allowed,
                remaining,
                reset_ms,
                retry_after_ms,
            },
        )
    }

    /// True when the bucket is full at `now_ms`: it then says nothing a fresh bucket would not,
    /// so it can be dropped.
    pub fn is_idle(&self, b: Bucket, now_ms: u64) -> bool {
        u128::from(self.refill(b, now_ms).level) >= self.capacity()
    }

    /// Whole tokens at `now_ms` (for choosing which bucket to evict).
    pub fn level_at(&self, b: Bucket, now_ms: u64) -> u64 {
        self.refill(b, now_ms).level
    }
}

fn clamp64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn shape(requests: u64, unit: Unit, burst: u64) -> Shape {
        Shape {
            requests,
            unit,
            burst,
        }
    }

    #[test]
    fn full_bucket_allows_exactly_burst_then_denies() {
        let s = shape(100, Unit::Minute, 20);
        let mut b = s.full(T0);
        for i in 0..20 {
            let (nb, t) = s.take(b, T0);
            assert!(t.allowed, "request {i}");
            assert_eq!(t.remaining, 19 - i);
            b = nb;
        }
        let (_, t) = s.take(b, T0);
        assert!(!t.allowed);
        assert_eq!(t.remaining, 0);
        // 100 per minute: one token every 600 ms.
        assert_eq!(t.retry_after_ms, 600);
        assert_eq!(t.reset_ms, 20 * 600);
    }

    #[test]
    fn refills_exactly_requests_per_unit() {
        let s = shape(3, Unit::Second, 3);
        let mut b = s.full(T0);
        for _ in 0..3 {
            b = s.take(b, T0).0;
        }
        // 333 ms is not yet a token (3 per second = one per 333.3 ms) ...
        assert!(!s.take(b, T0 + 333).1.allowed);
        // ... 334 ms is.
        assert!(s.take(b, T0 + 334).1.allowed);
        // A whole second refills all three and never more than burst.
        let b2 = s.refill(b, T0 + 60_000);
        assert_eq!(b2.level, 3 * 1000);
        assert!(s.is_idle(b, T0 + 1000));
        assert!(!s.is_idle(b, T0 + 999));
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let s = shape(10, Unit::Second, 10);
        let b = s.take(s.full(T0), T0).0;
        let back = s.refill(b, T0 - 5000);
        assert_eq!(back.level, b.level);
        assert_eq!(back.updated_ms, T0);
    }

    #[test]
    fn extremes_do_not_overflow() {
        let s = shape(1_000_000_000, Unit::Day, 1_000_000_000);
        let (b, t) = s.take(s.full(0), u64::MAX);
        assert!(t.allowed);
        assert_eq!(t.remaining, 999_999_999);
        assert!(s.take(b, u64::MAX).1.allowed);
        let s1 = shape(1, Unit::Day, 1);
        let (b, _) = s1.take(s1.full(T0), T0);
        let (_, t) = s1.take(b, T0);
        assert!(!t.allowed);
        assert_eq!(t.retry_after_ms, 86_400_000);
    }
}
