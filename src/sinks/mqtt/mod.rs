//! The `mqtt` sink: records and events published to an MQTT broker (v3.1.1 or v5, plain or
//! TLS, username/password), configured by the `mqtt` section of Tesla's config and laid out as
//! Tesla's MQTT dispatcher does (see [`layout`]).
//!
//! Delivery: a frame becomes one message per datum; its ticket completes when the broker has
//! confirmed every one of them (PUBACK at QoS 1, PUBCOMP at QoS 2, written to the socket at QoS
//! 0), and fails when any is refused or `publish_timeout_ms` passes first — so a reliable ack
//! (`reliable_ack_sources: {"V": "mqtt"}`) means the broker has the whole frame, and the vehicle
//! resends a frame the broker never confirmed. While the broker is down the client reconnects
//! every `connect_retry_interval_ms` and `/readyz` names the broker and the error.
//!
//! The client (rumqttc) numbers each publish itself; the tracker pairs the numbers back with
//! the frames: publishes leave in the order they were queued, so the n-th "sent" report is the
//! n-th queued message, and a number already in flight is a resend after a reconnect.

pub mod config;
pub mod layout;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Outgoing, QoS, TlsConfiguration, Transport};
use tokio_util::sync::CancellationToken;

use super::{DeliveryTicket, PublishError, Readiness, Sink, SinkRecord};
use crate::event::{Event, STRUCTURED_CONTENT_TYPE};
use crate::metrics::{
    MQTT_CONNECTED, MQTT_ERRORS_TOTAL, MQTT_IN_FLIGHT, MQTT_PUBLISHED_BYTES_TOTAL,
    MQTT_PUBLISHED_TOTAL,
};
use config::{MqttConfig, MqttExtrasConfig};

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (Tesla's dispatcher speaks it; the default).
    V311,
    /// MQTT 5 (events carry the CloudEvents content type as a property).
    V5,
}

/// Settings of the sink, checked once from the config.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS to the broker (`ssl://`, `tls://`, `mqtts://` brokers).
    pub tls: bool,
    /// PEM CA bundle the broker's certificate must chain to (unset: the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// MQTT client id.
    pub client_id: String,
    /// Username and password, when the broker wants them.
    pub credentials: Option<(String, String)>,
    /// Prefix of every topic.
    pub topic_base: String,
    /// QoS of every message.
    pub qos: QoS,
    /// Retain every message (the broker keeps the last value per topic for new subscribers).
    pub retained: bool,
    /// Version of the protocol.
    pub version: ProtocolVersion,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long a message may wait for the broker's confirmation.
    pub publish_timeout: Duration,
    /// Pause between connection attempts.
    pub connect_retry_interval: Duration,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// How long shutdown waits for the broker to confirm what is in flight.
    pub disconnect_timeout: Duration,
}

fn or_default(ms: u64, default: u64) -> Duration {
    Duration::from_millis(if ms == 0 { default } else { ms })
}

impl MqttSettings {
    /// Checks the `mqtt` section (Tesla's keys) and `fleetgate.mqtt`; every problem as
    /// (key, problem).
    pub fn from_config(
        mqtt: &MqttConfig,
        extras: &MqttExtrasConfig,
        base: &Path,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let (host, port, tls) = match parse_broker(&mqtt.broker) {
            Ok(b) => b,
            Err(p) => {
                problems.push(("mqtt.broker".to_owned(), p));
                (String::new(), 0, false)
            }
        };
        let qos = match mqtt.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            n => {
                problems.push((
                    "mqtt.qos".to_owned(),
                    format!("{n} is not a QoS: use 0, 1 or 2 (1 for reliable acks)"),
                ));
                QoS::AtMostOnce
            }
        };
        let version = match extras.protocol_version.as_deref().unwrap_or("3.1.1") {
            "3.1.1" | "4" => ProtocolVersion::V311,
            "5" | "5.0" => ProtocolVersion::V5,
            other => {
                problems.push((
                    "fleetgate.mqtt.protocol_version".to_owned(),
                    format!("`{other}` is not supported: use \"3.1.1\" or \"5\""),
                ));
                ProtocolVersion::V311
            }
        };
        let ca_file = extras.ca_file.as_ref().map(|f| base.join(f));
        if ca_file.is_some() && !tls {
            problems.push((
                "fleetgate.mqtt.ca_file".to_owned(),
                "is set but `mqtt.broker` is not a TLS address: write it as ssl://host:8883"
                    .to_owned(),
            ));
        }
        if mqtt.keep_alive_seconds > 65_535 {
            problems.push((
                "mqtt.keep_alive_seconds".to_owned(),
                "must be at most 65535".to_owned(),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let client_id = if mqtt.client_id.is_empty() {
            format!("fleetgate-{}", std::process::id())
        } else {
            mqtt.client_id.clone()
        };
        let credentials = (!mqtt.username.is_empty() || !mqtt.password.is_empty())
            .then(|| (mqtt.username.clone(), mqtt.password.clone()));
        Ok(Self {
            host,
            port,
            tls,
            ca_file,
            client_id,
            credentials,
            topic_base: mqtt.topic_base.clone(),
            qos,
            retained: mqtt.retained,
            version,
            connect_timeout: or_default(mqtt.connect_timeout_ms, 30_000),
            publish_timeout: or_default(mqtt.publish_timeout_ms, 2_500),
            connect_retry_interval: or_default(mqtt.connect_retry_interval_ms, 10_000),
            keep_alive: Duration::from_secs(if mqtt.keep_alive_seconds == 0 {
                30
            } else {
                mqtt.keep_alive_seconds
            }),
            disconnect_timeout: or_default(mqtt.disconnect_timeout_ms, 250),
        })
    }
}

/// `host:port`, optionally with a scheme: `tcp://` and `mqtt://` (plain, default port 1883),
/// `ssl://`, `tls://` and `mqtts://` (TLS, default port 8883). Returns (host, port, tls).
pub fn parse_broker(broker: &str) -> Result<(String, u16, bool), String> {
    let broker = broker.trim();
    if broker.is_empty() {
        return Err("is empty: give the broker as host:port, e.g. \"localhost:1883\" (ssl://host:8883 for TLS)".into());
    }
    let (tls, rest) = match broker.split_once("://") {
        None => (false, broker),
        Some(("tcp" | "mqtt", rest)) => (false, rest),
        Some(("ssl" | "tls" | "mqtts", rest)) => (true, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "scheme `{scheme}://` is not supported: use tcp:// (or none) or ssl:// for TLS"
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{broker}`: an IPv6 address needs its closing `]`"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("`{broker}`: expected :port after the address")),
        };
        (host.to_owned(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{broker}` names no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{broker}`: `{p}` is not a port (1-65535)"))?,
    };
    Ok((host, port, tls))
}

/// The frame a message belongs to: its ticket completes when the last of its messages does.
struct FrameDelivery {
    left: AtomicUsize,
    failed: AtomicBool,
    ticket: Mutex<Option<DeliveryTicket>>,
}

/// One message's share of a frame's ticket. Dropped without [`Part::confirmed`]: the frame fails.
struct Part {
    frame: Arc<FrameDelivery>,
    confirmed: bool,
    record_type: &'static str,
    bytes: usize,
}

impl Part {
    fn confirmed(mut self) {
        self.confirmed = true;
        metrics::counter!(MQTT_PUBLISHED_TOTAL, "record_type" => self.record_type).increment(1);
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.confirmed {
            self.frame.failed.store(true, Ordering::Relaxed);
        }
        if self.frame.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ok = !self.frame.failed.load(Ordering::Relaxed);
            if let Some(ticket) = self
                .frame
                .ticket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                ticket.complete(ok);
            }
        }
    }
}

/// A message the broker has not confirmed yet.
struct InFlight {
    deadline: Instant,
    /// None once it timed out (the slot stays so later reports still pair up).
    part: Option<Part>,
}

/// Pairs the client's reports with the frames' parts.
#[derive(Default)]
struct Tracker {
    /// Queued to the client, not yet written: in queue order.
    queued: VecDeque<InFlight>,
    /// Written, waiting for PUBACK / PUBCOMP, by packet id.
    sent: HashMap<u16, InFlight>,
}

impl Tracker {
    fn in_flight(&self) -> usize {
        self.queued.len() + self.sent.len()
    }

    /// The client wrote a publish with packet id `pkid` (0 for QoS 0).
    fn sent(&mut self, pkid: u16) {
        if pkid != 0 && self.sent.contains_key(&pkid) {
            return; // a resend after a reconnect
        }
        let Some(slot) = self.queued.pop_front() else {
            return; // not ours (nothing is queued): ignore
        };
        if pkid == 0 {
            if let Some(part) = slot.part {
                part.confirmed();
            }
        } else {
            self.sent.insert(pkid, slot);
        }
    }

    /// The broker confirmed (or refused) packet `pkid`.
    fn confirmed(&mut self, pkid: u16, ok: bool) {
        if let Some(slot) = self.sent.remove(&pkid) {
            if let Some(part) = slot.part {
                if ok {
                    part.confirmed();
                } else {
                    metrics::counter!(MQTT_ERRORS_TOTAL, "reason" => "refused").increment(1);
                }
            }
        }
    }

    /// Fails every part past its deadline; returns how many.
    fn expire(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        for slot in self.queued.iter_mut().chain(self.sent.values_mut()) {
            if slot.deadline <= now && slot.part.take().is_some() {
                expired += 1;
            }
        }
        if expired > 0 {
            metrics::counter!(MQTT_ERRORS_TOTAL, "reason" => "timeout").increment(expired as u64);
        }
        // slots that timed out before they were even written are dropped when written; written
        // ones are dropped on their late confirmation — or here, once long overdue
        let long_ago = now.checked_sub(Duration::from_secs(300));
        if let Some(long_ago) = long_ago {
            self.sent
                .retain(|_, s| s.part.is_some() || s.deadline > long_ago);
        }
        expired
    }
}

/// The client of either protocol version.
#[derive(Clone)]
enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    fn try_publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        event: bool,
    ) -> bool {
        match self {
            Client::V311(c) => c.try_publish(topic, qos, retain, payload).is_ok(),
            Client::V5(c) => {
                let qos = match qos {
                    QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
                };
                let mut properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    content_type: Some(
                        if event {
                            STRUCTURED_CONTENT_TYPE
                        } else {
                            "application/json"
                        }
                        .to_owned(),
                    ),
                    ..Default::default()
                };
                properties.payload_format_indicator = Some(1); // UTF-8 text
                c.try_publish_with_properties(topic, qos, retain, payload, properties)
                    .is_ok()
            }
        }
    }
}

/// What the event loop reported, in either protocol version.
enum Report {
    Connected,
    Sent(u16),
    Confirmed(u16, bool),
    Other,
}

enum Driver {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

impl Driver {
    async fn next(&mut self) -> Result<Report, String> {
        match self {
            Driver::V311(l) => {
                use rumqttc::{Event, Packet};
                match l.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(_)) => Ok(Report::Connected),
                    Event::Outgoing(Outgoing::Publish(pkid)) => Ok(Report::Sent(pkid)),
                    Event::Incoming(Packet::PubAck(a)) => Ok(Report::Confirmed(a.pkid, true)),
                    Event::Incoming(Packet::PubComp(c)) => Ok(Report::Confirmed(c.pkid, true)),
                    _ => Ok(Report::Other),
                }
            }
            Driver::V5(l) => {
                use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubCompReason};
                use rumqttc::v5::Event;
                match l.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(_)) => Ok(Report::Connected),
                    Event::Outgoing(Outgoing::Publish(pkid)) => Ok(Report::Sent(pkid)),
                    Event::Incoming(Packet::PubAck(a)) => Ok(Report::Confirmed(
                        a.pkid,
                        matches!(
                            a.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        ),
                    )),
                    Event::Incoming(Packet::PubComp(c)) => Ok(Report::Confirmed(
                        c.pkid,
                        matches!(c.reason, PubCompReason::Success),
                    )),
                    _ => Ok(Report::Other),
                }
            }
        }
    }
}

/// State shared by the sink and its event-loop task.
struct Shared {
    tracker: Mutex<Tracker>,
    connected: AtomicBool,
    last_error: Mutex<String>,
}

/// The `mqtt` sink.
pub struct MqttSink {
    client: Client,
    settings: MqttSettings,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

fn tls_config(settings: &MqttSettings) -> anyhow::Result<rustls::ClientConfig> {
    super::tls::client_config(settings.ca_file.as_deref(), "fleetgate.mqtt.ca_file")
}

impl MqttSink {
    /// Starts the client and its event loop (connecting in the background; publishes queue
    /// until the broker answers). Needs a tokio runtime.
    pub fn start(settings: MqttSettings) -> anyhow::Result<Self> {
        let transport = if settings.tls {
            Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls_config(&settings)?)))
        } else {
            Transport::tcp()
        };
        // room for bursts while the broker is slow; past it publishes are refused (frame unacked)
        const QUEUE: usize = 65_536;
        const INFLIGHT: u16 = 1_000;
        let connect_timeout_s = settings.connect_timeout.as_secs().max(1);
        let (client, driver) = match settings.version {
            ProtocolVersion::V311 => {
                let mut o =
                    rumqttc::MqttOptions::new(&settings.client_id, &settings.host, settings.port);
                o.set_keep_alive(settings.keep_alive.max(Duration::from_secs(1)))
                    .set_transport(transport)
                    .set_inflight(INFLIGHT)
                    .set_request_channel_capacity(QUEUE)
                    .set_max_packet_size(1 << 20, 1 << 20);
                if let Some((u, p)) = &settings.credentials {
                    o.set_credentials(u, p);
                }
                let (c, mut l) = rumqttc::AsyncClient::new(o, QUEUE);
                l.network_options.set_connection_timeout(connect_timeout_s);
                (Client::V311(c), Driver::V311(Box::new(l)))
            }
            ProtocolVersion::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(
                    &settings.client_id,
                    &settings.host,
                    settings.port,
                );
                o.set_keep_alive(settings.keep_alive.max(Duration::from_secs(1)))
                    .set_transport(transport)
                    .set_outgoing_inflight_upper_limit(INFLIGHT)
                    .set_request_channel_capacity(QUEUE)
                    .set_connection_timeout(connect_timeout_s);
                if let Some((u, p)) = &settings.credentials {
                    o.set_credentials(u, p);
                }
                let (c, l) = rumqttc::v5::AsyncClient::new(o, QUEUE);
                (Client::V5(c), Driver::V5(Box::new(l)))
            }
        };
        let shared = Arc::new(Shared {
            tracker: Mutex::new(Tracker::default()),
            connected: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".into()),
        });
        let stop = CancellationToken::new();
        // before the driver starts: it may connect (and set 1) at once
        metrics::gauge!(MQTT_CONNECTED).set(0.0);
        tokio::spawn(drive(
            driver,
            shared.clone(),
            stop.clone(),
            format!("{}:{}", settings.host, settings.port),
            settings.connect_retry_interval,
        ));
        Ok(Self {
            client,
            settings,
            shared,
            stop,
        })
    }

    /// Queues `messages` for one frame under `ticket`.
    fn send(
        &self,
        record_type: &'static str,
        messages: Vec<layout::Message>,
        ticket: DeliveryTicket,
        event: bool,
    ) -> Result<(), PublishError> {
        if messages.is_empty() {
            ticket.complete(true);
            return Ok(());
        }
        let frame = Arc::new(FrameDelivery {
            left: AtomicUsize::new(messages.len()),
            failed: AtomicBool::new(false),
            ticket: Mutex::new(Some(ticket)),
        });
        let deadline = Instant::now() + self.settings.publish_timeout;
        let mut tracker = self
            .shared
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut refused = false;
        for m in messages {
            let bytes = m.payload.len();
            let part = Part {
                frame: frame.clone(),
                confirmed: false,
                record_type,
                bytes,
            };
            if refused {
                drop(part);
                continue;
            }
            // queue order == write order only while the tracker lock is held across both
            if self.client.try_publish(
                m.topic,
                self.settings.qos,
                self.settings.retained,
                m.payload,
                event,
            ) {
                metrics::counter!(MQTT_PUBLISHED_BYTES_TOTAL, "record_type" => record_type)
                    .increment(part.bytes as u64);
                tracker.queued.push_back(InFlight {
                    deadline,
                    part: Some(part),
                });
            } else {
                refused = true;
                metrics::counter!(MQTT_ERRORS_TOTAL, "reason" => "queue_full").increment(1);
                drop(part);
            }
        }
        metrics::gauge!(MQTT_IN_FLIGHT).set(tracker.in_flight() as f64);
        drop(tracker);
        if refused {
            return Err(PublishError::Rejected(
                "the MQTT client's queue is full (the broker is slow or unreachable)".into(),
            ));
        }
        Ok(())
    }
}

/// The event loop: reports paired with parts, reconnects after a pause, deadlines enforced.
async fn drive(
    mut driver: Driver,
    shared: Arc<Shared>,
    stop: CancellationToken,
    broker: String,
    retry: Duration,
) {
    let mut sweep = tokio::time::interval(Duration::from_millis(100));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u64;
    loop {
        let report = tokio::select! {
            _ = stop.cancelled() => break,
            _ = sweep.tick() => {
                let mut t = shared.tracker.lock().unwrap_or_else(|e| e.into_inner());
                t.expire(Instant::now());
                metrics::gauge!(MQTT_IN_FLIGHT).set(t.in_flight() as f64);
                continue;
            }
            r = driver.next() => r,
        };
        match report {
            Ok(Report::Connected) => {
                failures = 0;
                shared.connected.store(true, Ordering::Relaxed);
                metrics::gauge!(MQTT_CONNECTED).set(1.0);
                tracing::info!(broker = %broker, "mqtt: connected");
            }
            Ok(Report::Sent(pkid)) => {
                shared
                    .tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sent(pkid);
            }
            Ok(Report::Confirmed(pkid, ok)) => {
                shared
                    .tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .confirmed(pkid, ok);
            }
            Ok(Report::Other) => {}
            Err(e) => {
                let was = shared.connected.swap(false, Ordering::Relaxed);
                metrics::gauge!(MQTT_CONNECTED).set(0.0);
                failures += 1;
                if was || failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(broker = %broker, error = %e, attempts = failures,
                        "mqtt: broker unreachable; retrying every {:?} (frames routed to mqtt are not acked meanwhile)", retry);
                }
                *shared.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
            }
        }
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Sink for MqttSink {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn publish(&self, record: &SinkRecord<'_>, ticket: DeliveryTicket) -> Result<(), PublishError> {
        let messages = layout::record_messages(
            &self.settings.topic_base,
            record.vin,
            record.topic,
            record.payload,
        )
        .map_err(|e| PublishError::Encode(e.to_string()))?;
        self.send(record.topic.as_str(), messages, ticket, false)
    }

    fn publish_event(
        &self,
        event: &Event,
        json: &[u8],
        ticket: DeliveryTicket,
    ) -> Result<(), PublishError> {
        let message = layout::Message {
            topic: layout::event_topic(&self.settings.topic_base, &event.vin, event.kind.as_str()),
            payload: json.to_vec(),
        };
        self.send("event", vec![message], ticket, true)
    }

    fn flush(&self, timeout: Duration) -> usize {
        // what is in flight is confirmed or failed within publish_timeout; disconnect_timeout
        // is the extra the broker gets at shutdown (Tesla's key), all within `timeout`
        let wait = self.settings.publish_timeout + self.settings.disconnect_timeout;
        let deadline = Instant::now() + timeout.min(wait);
        loop {
            let left = self
                .shared
                .tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .in_flight();
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn readiness(&self) -> Readiness {
        if self.shared.connected.load(Ordering::Relaxed) {
            Readiness::Ready
        } else {
            Readiness::NotReady(format!(
                "mqtt broker {}:{} is not connected: {}",
                self.settings.host,
                self.settings.port,
                self.shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_are_read_as_tesla_and_paho_write_them() {
        assert_eq!(
            parse_broker("localhost:1883").unwrap(),
            ("localhost".into(), 1883, false)
        );
        assert_eq!(
            parse_broker("tcp://10.0.0.1:1884").unwrap(),
            ("10.0.0.1".into(), 1884, false)
        );
        assert_eq!(
            parse_broker("ssl://mq.example.com").unwrap(),
            ("mq.example.com".into(), 8883, true)
        );
        assert_eq!(
            parse_broker("mqtts://[::1]:9000").unwrap(),
            ("::1".into(), 9000, true)
        );
        assert_eq!(
            parse_broker("broker").unwrap(),
            ("broker".into(), 1883, false)
        );
        for bad in ["", "ws://x:80", "x:0", "x:port", ":1883", "[::1"] {
            assert!(parse_broker(bad).is_err(), "{bad} accepted");
        }
    }

    fn part(frame: &Arc<FrameDelivery>) -> Part {
        Part {
            frame: frame.clone(),
            confirmed: false,
            record_type: "V",
            bytes: 1,
        }
    }

    fn frame(
        n: usize,
    ) -> (
        Arc<FrameDelivery>,
        tokio::sync::mpsc::UnboundedReceiver<super::super::Completion>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let f = Arc::new(FrameDelivery {
            left: AtomicUsize::new(n),
            failed: AtomicBool::new(false),
            ticket: Mutex::new(Some(DeliveryTicket::tracked(tx, 7, None))),
        });
        (f, rx)
    }

    #[test]
    fn a_frame_completes_when_its_last_message_is_confirmed_and_fails_if_one_is_not() {
        let now = Instant::now();
        let slot = |p| InFlight {
            deadline: now + Duration::from_secs(5),
            part: Some(p),
        };
        let mut t = Tracker::default();
        let (a, mut a_rx) = frame(2);
        let (b, mut b_rx) = frame(1);
        t.queued.push_back(slot(part(&a)));
        t.queued.push_back(slot(part(&a)));
        t.queued.push_back(slot(part(&b)));
        t.sent(1);
        t.sent(2);
        t.sent(1); // a resend of 1 after a reconnect pairs with nothing new
        t.sent(3);
        t.confirmed(2, true);
        assert!(a_rx.try_recv().is_err(), "half a frame is not delivered");
        t.confirmed(1, true);
        assert!(a_rx.try_recv().unwrap().delivered);
        t.confirmed(3, false);
        assert!(
            !b_rx.try_recv().unwrap().delivered,
            "a refused message fails its frame"
        );
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_message_past_its_deadline_fails_its_frame_and_a_late_confirmation_is_ignored() {
        let now = Instant::now();
        let mut t = Tracker::default();
        let (a, mut a_rx) = frame(1);
        t.queued.push_back(InFlight {
            deadline: now,
            part: Some(part(&a)),
        });
        t.sent(9);
        assert_eq!(t.expire(now), 1);
        assert!(!a_rx.try_recv().unwrap().delivered);
        t.confirmed(9, true);
        assert_eq!(t.in_flight(), 0);
    }
}
