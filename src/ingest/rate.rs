//! Token buckets: the per-connection frame rate limit and the per-IP handshake limit.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// A bucket of `capacity` tokens refilled at `capacity / interval`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(capacity: f64, now: Instant) -> Self {
        Self {
            tokens: capacity,
            last: now,
        }
    }

    /// Takes a token; false when empty.
    pub fn take(&mut self, capacity: f64, interval: Duration, now: Instant) -> bool {
        let rate = capacity / interval.as_secs_f64().max(1e-9);
        self.tokens = (self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate)
            .min(capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Handshakes per source IP per second (burst = one second's worth).
pub struct IpRateLimiter {
    per_second: f64,
    buckets: DashMap<IpAddr, TokenBucket>,
}

/// Entries kept before idle ones are swept (bounds memory under address-spraying floods).
const MAX_TRACKED_IPS: usize = 100_000;

impl IpRateLimiter {
    /// A limiter allowing `per_second` new connections per IP (0 disables it).
    pub fn new(per_second: f64) -> Self {
        Self {
            per_second,
            buckets: DashMap::new(),
        }
    }

    /// True when a new connection from `ip` may proceed.
    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        let now = Instant::now();
        if self.buckets.len() > MAX_TRACKED_IPS {
            // a bucket idle for 2 s is full again: forgetting it changes nothing
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(2));
        }
        let mut b = self
            .buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::full(self.per_second, now));
        b.take(self.per_second, Duration::from_secs(1), now)
    }
}

/// Lets a repeated log line through at most once per `every` (noisy peers never flood).
#[derive(Debug, Clone, Copy)]
pub struct LogEvery {
    every: Duration,
    last: Option<Instant>,
}

impl LogEvery {
    /// A limiter passing one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// True when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_over_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(2.0, t0);
        assert!(b.take(2.0, Duration::from_secs(1), t0));
        assert!(b.take(2.0, Duration::from_secs(1), t0));
        assert!(!b.take(2.0, Duration::from_secs(1), t0));
        assert!(b.take(2.0, Duration::from_secs(1), t0 + Duration::from_millis(600)));
    }

    #[test]
    fn log_every_passes_one_line_per_period() {
        let t0 = Instant::now();
        let mut l = LogEvery::new(Duration::from_secs(60));
        assert!(l.allow(t0));
        assert!(!l.allow(t0 + Duration::from_secs(59)));
        assert!(l.allow(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn per_ip_limits_are_independent() {
        let l = IpRateLimiter::new(3.0);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!((0..10).filter(|_| l.allow(a)).count(), 3);
        assert!(l.allow(b));
        assert!(IpRateLimiter::new(0.0).allow(a));
    }
}
