//! The `webhook` sink: events (and, where asked, records) POSTed as CloudEvents to HTTPS
//! receivers, signed the Standard Webhooks way, through a durable outbox.
//!
//! - [`config`]: `fleetgate.webhook` (receivers, filters, content mode, secrets, retry policy);
//! - [`message`]: the CloudEvents HTTP binding (structured or binary) and the signature;
//! - [`outbox`]: SQLite on disk; a frame's ticket completes once its messages are committed
//!   there, so `reliable_ack_sources: {"V": "webhook"}` acks frames that no outage (of the
//!   receiver, or of fleetgate) can lose;
//! - [`delivery`]: per-vehicle ordered lanes, retries with backoff and jitter, dead letters.
//!
//! The sink does not know the rules or the sockets; it only delivers what it is handed.

pub mod config;
pub mod delivery;
pub mod message;
pub mod outbox;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{DeliveryTicket, PublishError, Readiness, Sink, SinkRecord};
use crate::event::Event;
pub use config::{WebhookConfig, WebhookSettings};

/// Wall-clock milliseconds since the epoch (outbox entry times, dead-letter age, signatures).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The `webhook` sink.
pub struct WebhookSink {
    settings: Arc<WebhookSettings>,
    outbox: outbox::Outbox,
    health: Arc<Mutex<delivery::Health>>,
    stop: CancellationToken,
}

impl WebhookSink {
    /// Opens the outbox, resumes its backlog and starts delivery. Needs a tokio runtime.
    pub fn start(settings: WebhookSettings) -> anyhow::Result<Self> {
        let tls =
            super::tls::client_config(settings.ca_file.as_deref(), "fleetgate.webhook.ca_file")?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fleetgate/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| anyhow::anyhow!("fleetgate.webhook: cannot build the HTTP client: {e}"))?;
        for e in &settings.endpoints {
            let loopback = e.url.host_str().is_some_and(|h| {
                h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
                    || h == "[::1]"
            });
            if e.url.scheme() == "http" && !loopback {
                tracing::warn!(endpoint = %e.name, url = %e.url, "webhook: plain http to a non-loopback receiver: events travel unencrypted; use https://");
            }
            if e.key.is_none() {
                tracing::warn!(endpoint = %e.name, "webhook: no secret: requests are not signed, so the receiver cannot tell them from forgeries");
            }
        }
        let (deliver_tx, deliver_rx) = tokio::sync::mpsc::unbounded_channel();
        let (outbox, backlog) =
            outbox::Outbox::start(&settings.outbox_dir, &settings.dead_letter_file, deliver_tx)?;
        let settings = Arc::new(settings);
        let health = Arc::new(Mutex::new(delivery::Health::default()));
        let stop = CancellationToken::new();
        tokio::spawn(delivery::run(
            settings.clone(),
            client,
            outbox.clone(),
            backlog,
            deliver_rx,
            health.clone(),
            stop.clone(),
        ));
        Ok(Self {
            settings,
            outbox,
            health,
            stop,
        })
    }

    fn store(
        &self,
        messages: Vec<message::Message>,
        ticket: DeliveryTicket,
    ) -> Result<(), PublishError> {
        if messages.is_empty() {
            ticket.complete(true);
            return Ok(());
        }
        let n = messages.len();
        if !self.outbox.reserve(n, self.settings.max_outbox_messages) {
            return Err(PublishError::Rejected(format!(
                "the webhook outbox holds fleetgate.webhook.max_outbox_messages ({}) messages: the receivers are down or too slow",
                self.settings.max_outbox_messages
            )));
        }
        if !self.outbox.send(outbox::Op::Put(messages, ticket)) {
            self.outbox.unreserve(n);
            return Err(PublishError::Rejected(
                "the webhook outbox's writer stopped (see the error logged before)".into(),
            ));
        }
        Ok(())
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn publish(&self, record: &SinkRecord<'_>, ticket: DeliveryTicket) -> Result<(), PublishError> {
        let mut messages = Vec::new();
        for e in self
            .settings
            .endpoints
            .iter()
            .filter(|e| e.takes(record.topic))
        {
            messages.push(
                message::record_message(&e.name, e.mode, record).map_err(PublishError::Encode)?,
            );
        }
        self.store(messages, ticket)
    }

    fn publish_event(
        &self,
        event: &Event,
        json: &[u8],
        ticket: DeliveryTicket,
    ) -> Result<(), PublishError> {
        let messages = self
            .settings
            .endpoints
            .iter()
            .filter(|e| e.events.matches(event.kind.as_str()))
            .map(|e| message::event_message(&e.name, e.mode, event, json))
            .collect();
        self.store(messages, ticket)
    }

    /// Waits for the outbox to commit what it was handed (delivery itself resumes after a
    /// restart: the outbox is durable).
    fn flush(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.outbox.pending() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.outbox.pending()
    }

    fn readiness(&self) -> Readiness {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if health.failing.is_empty() {
            return Readiness::Ready;
        }
        let mut list: Vec<String> = health
            .failing
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect();
        list.sort();
        Readiness::NotReady(format!(
            "webhook receivers failing (messages wait in the outbox): {}",
            list.join("; ")
        ))
    }
}
