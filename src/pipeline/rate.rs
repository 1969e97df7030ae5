//! Rate limiting on the frame path: a token bucket (the reference server's per-connection
//! frame limit; ingest's per-IP handshake limit uses it too) and a log-line limiter, so noisy
//! peers never flood the log.

use std::time::{Duration, Instant};

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

    /// When a token was last asked for.
    pub fn last_take(&self) -> Instant {
        self.last
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
}
