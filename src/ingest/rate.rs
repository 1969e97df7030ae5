//! The per-IP handshake limit (token buckets of the pipeline's kind, one per source address).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::pipeline::rate::TokenBucket;

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
            self.buckets.retain(|_, b| {
                now.saturating_duration_since(b.last_take()) < Duration::from_secs(2)
            });
        }
        let mut b = self
            .buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::full(self.per_second, now));
        b.take(self.per_second, Duration::from_secs(1), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
