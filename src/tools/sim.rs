//! Simulated vehicles: realistic `V` frames (position, speed, heading, SoC, charge state,
//! energy counters, destination and ETA) and the client loop that streams them over a real
//! mTLS websocket and matches acks by txid. Used by `demo`, `sim` and the tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::geometry::haversine_m;
use crate::tools::client::VehicleSocket;
use crate::wire::proto::vehicle_data::{
    value::Value as V, Datum, DetailedChargeStateValue as Dcs, Field, LocationValue, Payload,
    ShiftState, Value,
};
use crate::wire::{read_envelope, EnvelopeWriter, StreamView};

/// One simulated vehicle's signals and clock.
#[derive(Debug, Clone)]
pub struct SimVehicle {
    /// VIN (certificate CN).
    pub vin: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Heading (degrees).
    pub heading: f64,
    /// Speed (km/h).
    pub speed_kmh: f64,
    /// SoC (%).
    pub soc: f64,
    /// Charge limit (%).
    pub charge_limit: i32,
    /// Detailed charge state.
    pub charge_state: Dcs,
    /// DC energy counter (kWh).
    pub dc_energy_kwh: f64,
    /// Navigation destination.
    pub destination: Option<(f64, f64)>,
    /// Simulated clock (unix seconds).
    pub clock_s: i64,
    seq: u64,
}

impl SimVehicle {
    /// A parked vehicle at a point.
    pub fn new(vin: &str, lat: f64, lon: f64, soc: f64, clock_s: i64) -> Self {
        Self {
            vin: vin.to_owned(),
            lat,
            lon,
            heading: 0.0,
            speed_kmh: 0.0,
            soc,
            charge_limit: 90,
            charge_state: Dcs::DetailedChargeStateDisconnected,
            dc_energy_kwh: 1000.0,
            destination: None,
            clock_s,
            seq: 0,
        }
    }

    /// Minutes to the destination at the current speed (None without one).
    pub fn minutes_to_arrival(&self) -> Option<f64> {
        let (lat, lon) = self.destination?;
        let d_km = haversine_m(self.lat, self.lon, lat, lon) / 1000.0;
        Some(d_km / self.speed_kmh.max(20.0) * 60.0)
    }

    /// Moves `dt_s` seconds toward `target` at `speed_kmh` (stops on arrival); returns true
    /// when the target is reached.
    pub fn drive_toward(&mut self, target: (f64, f64), speed_kmh: f64, dt_s: i64) -> bool {
        self.clock_s += dt_s;
        let dist = haversine_m(self.lat, self.lon, target.0, target.1);
        let step = speed_kmh / 3.6 * dt_s as f64;
        self.speed_kmh = speed_kmh;
        self.heading = (target.1 - self.lon)
            .atan2(target.0 - self.lat)
            .to_degrees()
            .rem_euclid(360.0);
        self.soc = (self.soc - step / 1000.0 * 0.02).max(1.0);
        if step >= dist {
            self.lat = target.0;
            self.lon = target.1;
            self.speed_kmh = 0.0;
            return true;
        }
        let f = step / dist;
        self.lat += (target.0 - self.lat) * f;
        self.lon += (target.1 - self.lon) * f;
        false
    }

    /// Charges `dt_s` seconds at `power_kw` (SoC of a 75 kWh pack).
    pub fn charge(&mut self, power_kw: f64, dt_s: i64) {
        self.clock_s += dt_s;
        self.speed_kmh = 0.0;
        self.charge_state = Dcs::DetailedChargeStateCharging;
        let kwh = power_kw * dt_s as f64 / 3600.0;
        self.dc_energy_kwh += kwh;
        self.soc = (self.soc + kwh / 75.0 * 100.0).min(100.0);
    }

    /// The payload of the vehicle's current signals.
    pub fn payload(&self) -> Payload {
        let d = |key: Field, v: V| Datum {
            key: key as i32,
            value: Some(Value { value: Some(v) }),
        };
        let mut data = vec![
            d(
                Field::Location,
                V::LocationValue(LocationValue {
                    latitude: self.lat,
                    longitude: self.lon,
                }),
            ),
            d(
                Field::VehicleSpeed,
                V::DoubleValue((self.speed_kmh * 0.621371 * 10.0).round() / 10.0),
            ),
            d(Field::GpsHeading, V::DoubleValue(self.heading.round())),
            d(
                Field::Gear,
                V::ShiftStateValue(if self.speed_kmh > 0.0 {
                    ShiftState::D
                } else {
                    ShiftState::P
                } as i32),
            ),
            d(
                Field::Soc,
                V::DoubleValue((self.soc * 100.0).round() / 100.0),
            ),
            d(Field::ChargeLimitSoc, V::IntValue(self.charge_limit)),
            d(
                Field::DetailedChargeState,
                V::DetailedChargeStateValue(self.charge_state as i32),
            ),
            d(
                Field::DcChargingEnergyIn,
                V::DoubleValue((self.dc_energy_kwh * 1000.0).round() / 1000.0),
            ),
        ];
        if let (Some((lat, lon)), Some(m)) = (self.destination, self.minutes_to_arrival()) {
            data.push(d(
                Field::DestinationLocation,
                V::LocationValue(LocationValue {
                    latitude: lat,
                    longitude: lon,
                }),
            ));
            data.push(d(
                Field::MinutesToArrival,
                V::DoubleValue((m * 10.0).round() / 10.0),
            ));
            data.push(d(
                Field::MilesToArrival,
                V::DoubleValue(
                    (haversine_m(self.lat, self.lon, lat, lon) / 1609.344 * 10.0).round() / 10.0,
                ),
            ));
        }
        Payload {
            data,
            created_at: Some(crate::wire::Timestamp {
                seconds: self.clock_s,
                nanos: 0,
            }),
            vin: String::new(),
            is_resend: false,
        }
    }

    /// The next frame (txid, bytes) as the vehicle sends it.
    pub fn frame(&mut self, writer: &mut EnvelopeWriter) -> (String, Vec<u8>) {
        self.seq += 1;
        let txid = format!(
            "{}-{:08}",
            &self.vin[self.vin.len().saturating_sub(6)..],
            self.seq
        );
        let payload = self.payload().encode_to_vec();
        let bytes = writer
            .stream(
                txid.as_bytes(),
                b"V",
                b"",
                &StreamView {
                    created_at: self.clock_s as u32,
                    sender_id: format!("vehicle_device.{}", self.vin).as_bytes(),
                    payload: &payload,
                    device_type: b"vehicle_device",
                    device_id: self.vin.as_bytes(),
                    delivered_at_epoch_ms: 0,
                },
            )
            .to_vec();
        (txid, bytes)
    }
}

/// Counters of one streaming client.
#[derive(Debug, Default, Clone)]
pub struct StreamStats {
    /// Frames sent.
    pub sent: u64,
    /// Acks received for frames we sent.
    pub acked: u64,
    /// Error replies received.
    pub errors: u64,
    /// Ack latencies (µs).
    pub latencies_us: Vec<u64>,
}

/// Sends `frame` and waits up to `timeout` for its ack; returns the latency.
pub async fn send_and_wait_ack(
    ws: &mut VehicleSocket,
    txid: &str,
    frame: Vec<u8>,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    ws.send(Message::Binary(frame.into()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("no ack for {txid} within {timeout:?}"))?;
        match msg {
            Some(Ok(Message::Binary(b))) => {
                let env = read_envelope(&b).map_err(|e| e.to_string())?;
                if env.txid == txid.as_bytes() {
                    return if env.message_type == crate::wire::envelope::MESSAGE_TYPE_STREAM_ACK {
                        Ok(started.elapsed())
                    } else {
                        Err(format!("error reply for {txid}"))
                    };
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("websocket: {e}")),
            None => return Err("connection closed".into()),
        }
    }
}

/// Streams frames from `next` at `interval` with acks matched by txid concurrently; stops
/// when `next` returns None or `until` passes, then waits up to `drain` for missing acks.
pub async fn stream_pipelined(
    ws: VehicleSocket,
    interval: Duration,
    until: Instant,
    drain: Duration,
    mut next: impl FnMut() -> Option<(String, Vec<u8>)> + Send,
) -> StreamStats {
    let (mut tx, mut rx) = ws.split();
    let inflight: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let stats = Arc::new(Mutex::new(StreamStats::default()));
    let reader = {
        let inflight = inflight.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.next().await {
                let Message::Binary(b) = msg else { continue };
                let Ok(env) = read_envelope(&b) else { continue };
                let txid = String::from_utf8_lossy(env.txid).into_owned();
                if let Some(sent) = inflight.lock().await.remove(&txid) {
                    let mut s = stats.lock().await;
                    if env.message_type == crate::wire::envelope::MESSAGE_TYPE_STREAM_ACK {
                        s.acked += 1;
                        s.latencies_us.push(sent.elapsed().as_micros() as u64);
                    } else {
                        s.errors += 1;
                    }
                }
            }
        })
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        let Some((txid, frame)) = next() else { break };
        inflight.lock().await.insert(txid, Instant::now());
        if tx.send(Message::Binary(frame.into())).await.is_err() {
            break;
        }
        stats.lock().await.sent += 1;
    }
    let deadline = Instant::now() + drain;
    while Instant::now() < deadline && !inflight.lock().await.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tx.close().await;
    reader.abort();
    let s = stats.lock().await.clone();
    s
}
