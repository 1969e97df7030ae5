//! Waiting for the brokers when `serve` starts in cluster mode: a metadata request every few
//! seconds until one answers or the configured wait is over, saying what it waits for every
//! 5 s, then a clear error. Without it a broker that is down showed as 60 s of librdkafka
//! noise and a timeout deep inside topic creation.

use std::time::{Duration, Instant};

use serde_json::Value;

/// How often the wait reports progress.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long one metadata request may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits until the brokers of `properties` answer a metadata request, at most `limit`;
/// `progress` is called every 5 s with a sentence (what it waits for, for how long, the
/// last error). Blocking: call it from `spawn_blocking`.
pub fn wait_for_brokers(
    properties: &serde_json::Map<String, Value>,
    limit: Duration,
    progress: impl Fn(&str),
) -> Result<Duration, String> {
    let servers = properties
        .get("bootstrap.servers")
        .and_then(Value::as_str)
        .unwrap_or("(no bootstrap.servers)")
        .to_owned();
    let admin = super::topics::admin_client(properties).map_err(|e| e.to_string())?;
    let started = Instant::now();
    // the first failed attempt is reported at once, then every 5 s
    let mut next_report = started;
    loop {
        let attempt = Instant::now();
        let error = match admin.inner().fetch_metadata(None, ATTEMPT_TIMEOUT) {
            Ok(metadata) if !metadata.brokers().is_empty() => return Ok(started.elapsed()),
            Ok(_) => "the metadata answer lists no broker".to_owned(),
            Err(e) => e.to_string(),
        };
        let waited = started.elapsed();
        if waited >= limit {
            return Err(format!(
                "Kafka at {servers} did not answer within {} s (fleetgate.cluster.startup_wait_s): {error} — check that the brokers are up and reachable from here, and the `kafka` section's address, TLS and SASL settings",
                limit.as_secs()
            ));
        }
        if Instant::now() >= next_report {
            progress(&format!(
                "waiting for Kafka at {servers}: no answer for {} s (giving up after {} s): {error}",
                waited.as_secs(),
                limit.as_secs()
            ));
            next_report += REPORT_EVERY;
        }
        // a refused connection fails at once: do not spin
        let pause = Duration::from_millis(500).saturating_sub(attempt.elapsed());
        std::thread::sleep(pause.min(limit.saturating_sub(waited)));
    }
}
