//! Token buckets per API key and per client IP.
//!
//! A bucket holds up to one minute's worth of requests of its tier and
//! refills continuously. The table is bounded (`RATE_BUCKETS_MAX`): when it
//! is full, buckets that have refilled completely are dropped (a fresh bucket
//! is the same), and if none has, new callers share one overflow bucket.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::limits::RATE_BUCKETS_MAX;

/// What a caller's bucket says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go ahead.
    pub allowed: bool,
    /// The bucket's size (requests per minute).
    pub limit: u32,
    /// Requests left now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_s: u64,
    /// Seconds until one request is allowed (0 if allowed).
    pub retry_after_s: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    per_minute: u32,
}

/// The buckets of one gateway.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

const OVERFLOW_KEY: &str = "\u{0}overflow";

impl RateLimiter {
    /// Takes one token from the bucket of `key` (size `per_minute`).
    pub fn check(&self, key: &str, per_minute: u32, now: Instant) -> Decision {
        let per_minute = per_minute.max(1);
        let capacity = f64::from(per_minute);
        let rate_per_s = capacity / 60.0;
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut key = key;
        if !buckets.contains_key(key) && buckets.len() >= RATE_BUCKETS_MAX {
            buckets.retain(|_, b| refill(b, now) < f64::from(b.per_minute));
            if buckets.len() >= RATE_BUCKETS_MAX {
                key = OVERFLOW_KEY;
            }
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
            per_minute,
        });
        if b.per_minute != per_minute {
            b.per_minute = per_minute;
            b.tokens = b.tokens.min(capacity);
        }
        b.tokens = refill(b, now);
        b.at = now;
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
        }
        let missing = capacity - b.tokens;
        Decision {
            allowed,
            limit: per_minute,
            remaining: b.tokens.floor().max(0.0) as u32,
            reset_s: (missing / rate_per_s).ceil() as u64,
            retry_after_s: if allowed {
                0
            } else {
                ((1.0 - b.tokens) / rate_per_s).ceil().max(1.0) as u64
            },
        }
    }
}

fn refill(b: &Bucket, now: Instant) -> f64 {
    let capacity = f64::from(b.per_minute);
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * capacity / 60.0).min(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_empties_and_refills() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..60 {
            let d = r.check("k", 60, t0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 59 - i);
        }
        let d = r.check("k", 60, t0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_s, 1);
        assert!(r.check("k", 60, t0 + Duration::from_secs(1)).allowed);
        assert!(r.check("other", 60, t0).allowed, "buckets are per key");
    }
}
