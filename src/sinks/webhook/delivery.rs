//! Delivery: one lane per (receiver, vehicle), each sending its head message and nothing else
//! until the receiver answered 2xx — so a vehicle's messages arrive in order, while different
//! vehicles go in parallel (up to `max_in_flight` per receiver). A failed attempt waits
//! `retry_initial × 2^(n-1)` (at most `retry_max`, 50–100 % of it at random, or the receiver's
//! `Retry-After`), and a message older than `dead_letter_after` goes to the dead-letter file.
//! When a receiver answers again after failing, every lane of it waiting out a backoff is woken.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::{Endpoint, WebhookSettings};
use super::now_ms;
use super::outbox::{Op, Outbox, Stored};
use crate::metrics::{
    WEBHOOK_DEAD_LETTERED_TOTAL, WEBHOOK_DELIVERED_TOTAL, WEBHOOK_OUTBOX_DEPTH,
    WEBHOOK_RETRIED_TOTAL,
};

/// What a receiver's health looks like from here (for `/healthz/sinks`).
#[derive(Debug, Default, Clone)]
pub struct Health {
    /// Per endpoint: the last failure, while it is failing.
    pub failing: HashMap<String, String>,
}

/// The outcome of one POST.
enum Outcome {
    Delivered,
    /// Failed; retry no sooner than the hint (Retry-After), if any.
    Failed(String, Option<Duration>),
    /// 410 Gone: the receiver says it will never take messages again (Standard Webhooks:
    /// disable the endpoint).
    Gone,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Stored>,
    busy: bool,
    attempts: u32,
    /// When the head may be sent (the heap entry that counts).
    due: Option<Instant>,
}

struct Receiver {
    endpoint: Endpoint,
    in_flight: usize,
    depth: usize,
    failing: bool,
    /// Lanes that are waiting out a backoff.
    backing_off: HashSet<String>,
    /// Disabled by a 410 Gone until fleetgate restarts: its messages go to the dead-letter
    /// file at once.
    gone: bool,
    heap: BinaryHeap<Reverse<(Instant, String)>>,
}

/// Runs delivery until `stop`; `backlog` is what the outbox held at start.
pub async fn run(
    settings: Arc<WebhookSettings>,
    client: reqwest::Client,
    outbox: Outbox,
    backlog: Vec<Stored>,
    mut incoming: UnboundedReceiver<Stored>,
    health: Arc<Mutex<Health>>,
    stop: CancellationToken,
) {
    let mut receivers: Vec<Receiver> = settings
        .endpoints
        .iter()
        .map(|e| Receiver {
            endpoint: e.clone(),
            in_flight: 0,
            depth: 0,
            failing: false,
            backing_off: HashSet::new(),
            heap: BinaryHeap::new(),
            gone: false,
        })
        .collect();
    let mut lanes: Vec<HashMap<String, Lane>> =
        settings.endpoints.iter().map(|_| HashMap::new()).collect();
    let mut requests: JoinSet<(usize, String, Outcome)> = JoinSet::new();
    let now = Instant::now();
    for s in backlog {
        match receivers
            .iter()
            .position(|r| r.endpoint.name == s.message.endpoint)
        {
            Some(r) => enqueue(&mut receivers[r], &mut lanes[r], s, now),
            None => {
                // its receiver left the config: kept, never silently dropped
                tracing::warn!(endpoint = %s.message.endpoint, id = %s.message.id,
                    "webhook: the outbox holds a message for a receiver no longer configured; moving it to the dead-letter file");
                metrics::counter!(WEBHOOK_DEAD_LETTERED_TOTAL, "endpoint" => s.message.endpoint.clone())
                    .increment(1);
                let why = format!(
                    "receiver `{}` is no longer in fleetgate.webhook.endpoints",
                    s.message.endpoint
                );
                outbox.send(Op::DeadLetter(Box::new(s), why));
            }
        }
    }
    for r in &receivers {
        set_depth(r);
        if r.depth > 0 {
            tracing::info!(endpoint = %r.endpoint.name, messages = r.depth,
                "webhook: resuming delivery of the outbox's backlog");
        }
    }
    loop {
        let now = Instant::now();
        for (i, r) in receivers.iter_mut().enumerate() {
            while r.in_flight < settings.max_in_flight {
                let Some(Reverse((due, _))) = r.heap.peek() else {
                    break;
                };
                if *due > now {
                    break;
                }
                let Reverse((due, vin)) = r.heap.pop().expect("peeked");
                let Some(lane) = lanes[i].get_mut(&vin) else {
                    continue;
                };
                if lane.busy || lane.due != Some(due) {
                    continue; // a stale entry: the lane was rescheduled
                }
                let Some(head) = lane.queue.front() else {
                    continue;
                };
                lane.busy = true;
                lane.due = None;
                r.in_flight += 1;
                let request = build(&client, &r.endpoint, head, settings.timeout);
                requests.spawn(async move { (i, vin, send(request).await) });
            }
        }
        let next_due = receivers
            .iter()
            .filter(|r| r.in_flight < settings.max_in_flight)
            .filter_map(|r| r.heap.peek().map(|Reverse((d, _))| *d))
            .min();
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(s) = incoming.recv() => {
                if let Some(r) = receivers.iter().position(|r| r.endpoint.name == s.message.endpoint) {
                    if receivers[r].gone {
                        dead_letter_gone(&outbox, s);
                    } else {
                        enqueue(&mut receivers[r], &mut lanes[r], s, Instant::now());
                        set_depth(&receivers[r]);
                    }
                }
            }
            Some(done) = requests.join_next(), if !requests.is_empty() => {
                let Ok((i, vin, outcome)) = done else { continue };
                finish(&settings, &outbox, &health, &mut receivers[i], &mut lanes[i], vin, outcome);
            }
            _ = sleep_until(next_due) => {}
        }
    }
    requests.abort_all();
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Why a message of a receiver that answered 410 Gone is dead-lettered.
const GONE: &str = "the receiver answered 410 Gone: disabled until fleetgate restarts (fix its url or remove it from fleetgate.webhook.endpoints)";

fn dead_letter_gone(outbox: &Outbox, s: Stored) {
    metrics::counter!(WEBHOOK_DEAD_LETTERED_TOTAL, "endpoint" => s.message.endpoint.clone())
        .increment(1);
    outbox.send(Op::DeadLetter(Box::new(s), GONE.to_owned()));
}

fn set_depth(r: &Receiver) {
    metrics::gauge!(WEBHOOK_OUTBOX_DEPTH, "endpoint" => r.endpoint.name.clone())
        .set(r.depth as f64);
}

fn enqueue(r: &mut Receiver, lanes: &mut HashMap<String, Lane>, s: Stored, now: Instant) {
    r.depth += 1;
    let lane = lanes.entry(s.message.vin.clone()).or_default();
    let idle = lane.queue.is_empty();
    let vin = s.message.vin.clone();
    lane.queue.push_back(s);
    if idle && !lane.busy {
        lane.due = Some(now);
        r.heap.push(Reverse((now, vin)));
    }
}

fn backoff(settings: &WebhookSettings, attempts: u32, hint: Option<Duration>) -> Duration {
    let exp = settings
        .retry_initial
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(settings.retry_max);
    // full backoff at the cap would synchronise lanes: spread them over 50–100 %
    let jitter = 0.5 + fastrand::f64() * 0.5;
    let wait = exp.mul_f64(jitter);
    match hint {
        Some(h) => h.min(settings.retry_max).max(wait),
        None => wait,
    }
}

fn finish(
    settings: &WebhookSettings,
    outbox: &Outbox,
    health: &Mutex<Health>,
    r: &mut Receiver,
    lanes: &mut HashMap<String, Lane>,
    vin: String,
    outcome: Outcome,
) {
    r.in_flight -= 1;
    let now = Instant::now();
    let name = r.endpoint.name.clone();
    let Some(lane) = lanes.get_mut(&vin) else {
        return;
    };
    lane.busy = false;
    let mut recovered = false;
    match outcome {
        Outcome::Gone => {
            // every message it holds goes to the dead-letter file, and so does every later one
            tracing::error!(endpoint = %name, url = %r.endpoint.url, "webhook: {GONE}");
            r.gone = true;
            for (_, mut lane) in lanes.drain() {
                for s in lane.queue.drain(..) {
                    dead_letter_gone(outbox, s);
                }
            }
            r.depth = 0;
            r.heap.clear();
            r.backing_off.clear();
            health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .failing
                .insert(name, GONE.to_owned());
            set_depth(r);
            return;
        }
        Outcome::Delivered => {
            let head = lane.queue.pop_front().expect("a busy lane has a head");
            outbox.send(Op::Delivered(head.seq));
            metrics::counter!(WEBHOOK_DELIVERED_TOTAL, "endpoint" => name.clone()).increment(1);
            lane.attempts = 0;
            r.depth -= 1;
            r.backing_off.remove(&vin);
            recovered = std::mem::replace(&mut r.failing, false);
        }
        Outcome::Failed(why, hint) => {
            lane.attempts += 1;
            let head = lane.queue.front().expect("a busy lane has a head");
            let age_ms = now_ms() - head.created_ms;
            if !r.failing {
                r.failing = true;
                tracing::warn!(endpoint = %name, url = %r.endpoint.url, error = %why,
                    "webhook: delivery failed; messages stay in the outbox and are retried with backoff");
            }
            health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .failing
                .insert(name.clone(), why.clone());
            if age_ms >= settings.dead_letter_after.as_millis() as i64 {
                let head = lane.queue.pop_front().expect("a busy lane has a head");
                tracing::error!(endpoint = %name, id = %head.message.id, vin = %vin, attempts = lane.attempts,
                    "webhook: giving up on a message after fleetgate.webhook.dead_letter_after_s; it is in the dead-letter file");
                metrics::counter!(WEBHOOK_DEAD_LETTERED_TOTAL, "endpoint" => name.clone())
                    .increment(1);
                let reason = format!("undelivered after {} attempts: {why}", lane.attempts);
                outbox.send(Op::DeadLetter(Box::new(head), reason));
                lane.attempts = 0;
                r.depth -= 1;
            } else {
                metrics::counter!(WEBHOOK_RETRIED_TOTAL, "endpoint" => name.clone()).increment(1);
                let due = now + backoff(settings, lane.attempts, hint);
                lane.due = Some(due);
                r.heap.push(Reverse((due, vin.clone())));
                r.backing_off.insert(vin);
                set_depth(r);
                return;
            }
        }
    }
    if lane.queue.is_empty() {
        lanes.remove(&vin);
    } else {
        lane.due = Some(now);
        r.heap.push(Reverse((now, vin)));
    }
    if recovered {
        health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failing
            .remove(&name);
        tracing::info!(endpoint = %name, waiting = r.backing_off.len(),
            "webhook: the receiver answers again; retrying every waiting vehicle now");
        for other in std::mem::take(&mut r.backing_off) {
            if let Some(l) = lanes.get_mut(&other) {
                if !l.busy && !l.queue.is_empty() {
                    l.due = Some(now);
                    r.heap.push(Reverse((now, other)));
                }
            }
        }
    }
    set_depth(r);
}

fn build(
    client: &reqwest::Client,
    e: &Endpoint,
    s: &Stored,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    let m = &s.message;
    let mut req = client
        .post(e.url.clone())
        .timeout(timeout)
        .header("webhook-id", &m.id);
    for (k, v) in &m.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    for (k, v) in &e.headers {
        req = req.header(k, v);
    }
    let ts = now_ms() / 1000;
    req = req.header("webhook-timestamp", ts.to_string());
    if let Some(key) = &e.key {
        req = req.header(
            "webhook-signature",
            super::message::sign(key, &m.id, ts, &m.body),
        );
    }
    req.body(m.body.clone())
}

async fn send(request: reqwest::RequestBuilder) -> Outcome {
    match request.send().await {
        Ok(resp) if resp.status().is_success() => Outcome::Delivered,
        Ok(resp) if resp.status() == reqwest::StatusCode::GONE => Outcome::Gone,
        Ok(resp) => {
            let status = resp.status();
            let hint = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Outcome::Failed(format!("the receiver answered {status}"), hint)
        }
        Err(e) => {
            let what = if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                format!("cannot connect: {}", root_cause(&e))
            } else {
                root_cause(&e)
            };
            Outcome::Failed(what, None)
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
