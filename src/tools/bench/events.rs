//! `fleetgate bench events`: how fast events follow frames, measured from Kafka as a consumer
//! sees them. Reads `{ns}_V` (each record's producer timestamp is when ingest handed the
//! frame to Kafka) and `{ns}_events` with `read_committed` (what a downstream order service
//! sees) from their current ends for a window; for each rule event (not `vehicle.*`) the
//! latency is the moment it became readable minus the timestamp of the `V` record of the same
//! vehicle and creation second (the triggering frame). Embedded and cluster mode are measured
//! the same way, so their numbers compare.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// What `bench events` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EventsReport {
    /// Seconds measured.
    pub window_s: f64,
    /// `V` records seen (frames that reached Kafka).
    pub frames: u64,
    /// Rule events seen (committed).
    pub events: u64,
    /// Events matched to their triggering frame.
    pub matched: u64,
    /// Frames per second.
    pub frames_per_s: f64,
    /// Events per second.
    pub events_per_s: f64,
    /// Frame (in Kafka) → event readable, milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile.
    pub latency_p99_ms: f64,
    /// Largest.
    pub latency_max_ms: f64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn consumer_at_end(bootstrap: &str, topic: &str) -> Result<BaseConsumer, String> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("fleetgate-bench-events-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .create()
        .map_err(|e| format!("kafka consumer: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("{topic}: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::End)
                .map_err(|e| e.to_string())?;
        }
    }
    if tpl.count() == 0 {
        return Err(format!(
            "{topic} has no partitions: start the server and its load first"
        ));
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    Ok(consumer)
}

/// Measures for `duration`; blocking (run it beside a `bench load`).
pub fn run(bootstrap: &str, namespace: &str, duration: Duration) -> Result<EventsReport, String> {
    let frames_topic = crate::kafka::topic_name(namespace, "V");
    let events_topic = crate::kafka::topic_name(namespace, "events");
    let frames = consumer_at_end(bootstrap, &frames_topic)?;
    let events = consumer_at_end(bootstrap, &events_topic)?;
    // (vin, creation second) → when the V record was produced, kept for 60 s
    let mut produced: HashMap<(String, i64), i64> = HashMap::new();
    let mut order: VecDeque<(i64, (String, i64))> = VecDeque::new();
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 600_000, 3).map_err(|e| e.to_string())?;
    let (mut n_frames, mut n_events, mut matched) = (0u64, 0u64, 0u64);
    let mut unmatched: Vec<(String, i64, i64)> = Vec::new();
    let started = Instant::now();
    eprintln!("bench events: reading {frames_topic} and {events_topic} for {duration:?}");
    let mut last_progress = Instant::now();
    while started.elapsed() < duration {
        for _ in 0..1000 {
            let Some(Ok(m)) = frames.poll(Duration::ZERO) else {
                break;
            };
            let (Some(key), Some(ts)) = (m.key(), m.timestamp().to_millis()) else {
                continue;
            };
            let created_s = m
                .headers()
                .and_then(|h| {
                    use rdkafka::message::Headers;
                    h.iter()
                        .find(|h| h.key == "timestamp")
                        .and_then(|h| h.value)
                })
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                .map(|ms| ms / 1000)
                .unwrap_or(ts / 1000);
            let k = (String::from_utf8_lossy(key).into_owned(), created_s);
            produced.insert(k.clone(), ts);
            order.push_back((ts, k));
            n_frames += 1;
        }
        while let Some(Ok(m)) = events.poll(Duration::from_millis(1)) {
            let seen = now_ms();
            let Ok(event) =
                serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default())
            else {
                continue;
            };
            let kind = event["type"].as_str().unwrap_or("");
            if kind.starts_with("fleetgate.vehicle.") {
                continue;
            }
            n_events += 1;
            let vin = event["subject"].as_str().unwrap_or("").to_owned();
            let time_s = event["time"]
                .as_str()
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(|t| t.unix_timestamp())
                .unwrap_or(0);
            unmatched.push((vin, time_s, seen));
        }
        // match events whose frame has been read (the frame may be read after its event)
        unmatched.retain(
            |(vin, time_s, seen)| match produced.get(&(vin.clone(), *time_s)) {
                Some(ts) => {
                    let _ = histogram.record((seen - ts).max(1) as u64);
                    matched += 1;
                    false
                }
                None => seen + 5_000 > now_ms(),
            },
        );
        let horizon = now_ms() - 60_000;
        while order.front().is_some_and(|(ts, _)| *ts < horizon) {
            if let Some((_, k)) = order.pop_front() {
                produced.remove(&k);
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "bench events: {:.0} s, {n_frames} frames, {n_events} events, p50 {} ms, p99 {} ms",
                started.elapsed().as_secs_f64(),
                histogram.value_at_quantile(0.5),
                histogram.value_at_quantile(0.99)
            );
            last_progress = Instant::now();
        }
    }
    let window = started.elapsed().as_secs_f64();
    Ok(EventsReport {
        window_s: window,
        frames: n_frames,
        events: n_events,
        matched,
        frames_per_s: n_frames as f64 / window,
        events_per_s: n_events as f64 / window,
        latency_p50_ms: histogram.value_at_quantile(0.5) as f64,
        latency_p99_ms: histogram.value_at_quantile(0.99) as f64,
        latency_max_ms: histogram.max() as f64,
    })
}
