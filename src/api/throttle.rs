//! Failed logins slow the next ones down: a token bucket per key (a client address, a
//! user name) that each failure drains and time refills. An empty bucket refuses
//! every login for its key, right or wrong, until a token is back (answered 429 with
//! `Retry-After`), so a guesser gets a handful of tries and then a few a minute. The
//! table is bounded: when it is full, keys whose buckets are full again are forgotten
//! first, then the least drained.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at most.
pub const MAX_KEYS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Failures per key, refilled with time.
#[derive(Debug)]
pub struct Throttle<K> {
    /// Failures allowed in a row.
    burst: f64,
    /// Time for one token to come back.
    refill: Duration,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone> Throttle<K> {
    /// `burst` failures in a row, then one per `refill`.
    pub fn new(burst: u32, refill: Duration) -> Throttle<K> {
        Throttle {
            burst: f64::from(burst),
            refill,
            buckets: Mutex::default(),
        }
    }

    fn tokens(&self, b: &Bucket, now: Instant) -> f64 {
        let back = now.saturating_duration_since(b.at).as_secs_f64() / self.refill.as_secs_f64();
        (b.tokens + back).min(self.burst)
    }

    /// `Err(wait)` while `key` has no try left.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(b) = buckets.get(key) else {
            return Ok(());
        };
        let tokens = self.tokens(b, now);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(self.refill.mul_f64(1.0 - tokens))
        }
    }

    /// Counts a failure against `key`.
    pub fn failed(&self, key: &K) {
        self.failed_at(key, Instant::now())
    }

    fn failed_at(&self, key: &K, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= MAX_KEYS {
            buckets.retain(|_, b| self.tokens(b, now) < self.burst);
            if buckets.len() >= MAX_KEYS {
                let fullest = buckets
                    .iter()
                    .max_by(|a, b| self.tokens(a.1, now).total_cmp(&self.tokens(b.1, now)))
                    .map(|(k, _)| k.clone());
                if let Some(k) = fullest {
                    buckets.remove(&k);
                }
            }
        }
        let b = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        *b = Bucket {
            tokens: (self.tokens(b, now) - 1.0).max(0.0),
            at: now,
        };
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_then_one_per_refill() {
        let t = Throttle::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(t.check_at(&"a", t0).is_ok());
            t.failed_at(&"a", t0);
        }
        let wait = t.check_at(&"a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));
        // Another key is not slowed down.
        assert!(t.check_at(&"b", t0).is_ok());
        let later = t0 + Duration::from_secs(4);
        assert_eq!(t.check_at(&"a", later).unwrap_err(), Duration::from_secs(6));
        let refilled = t0 + Duration::from_secs(10);
        assert!(t.check_at(&"a", refilled).is_ok());
        t.failed_at(&"a", refilled);
        assert!(t.check_at(&"a", refilled).is_err());
        // Long after, the whole burst is back, and no more.
        let much_later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(t.check_at(&"a", much_later).is_ok());
            t.failed_at(&"a", much_later);
        }
        assert!(t.check_at(&"a", much_later).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_keeps_the_drained_keys() {
        let t = Throttle::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        // The guesser's key, drained.
        t.failed_at(&u64::MAX, t0);
        t.failed_at(&u64::MAX, t0);
        for k in 0..(MAX_KEYS as u64 * 2) {
            t.failed_at(&k, t0);
        }
        assert!(t.len() <= MAX_KEYS, "{} keys", t.len());
        assert!(
            t.check_at(&u64::MAX, t0).is_err(),
            "the drained key is kept"
        );
    }
}
