//! The work of one frame in instructions, for the regression gate (`scripts/instructions.sh`
//! runs this under valgrind's callgrind, which counts the instructions executed inside the
//! `measured_*` functions only — a number that repeats run to run, unlike time on a shared
//! machine). Six scenarios, `FRAMES` frames each after a warm-up:
//! - `pipeline-quiet`: a `V` frame (location, speed, SoC) through `Pipeline::on_frame` —
//!   verify, decode, transform, the vehicle table, the rules over 10,001 sites, the record to
//!   a sink that drops it, the ack decision — where no site is near (no event);
//! - `pipeline-eventful`: the same, each frame entering or leaving a site (one event each);
//! - `cluster-quiet` / `cluster-eventful`: cluster mode's rules on a `V` record — the
//!   protobuf decode, `cluster::rules::apply_frame`, and each event encoded as it is produced
//!   (CloudEvent JSON, Kafka binary mode);
//! - `pipeline-steady`: a frame of the load bench's steady scenario through `Pipeline::on_frame`
//!   — a vehicle driving through its 100,000 sites (radii 150–350 m, ~10 per km²) and the
//!   logger sink rendering every record and event as `serve` does — so the dense-site
//!   geofence and the logged line, most of what the wall-clock bench spends beyond the bare
//!   server, are under the gate too;
//! - `socket-quiet`: the quiet frame through the connection loop (`ingest::connection::run`)
//!   as a vehicle sends it: the websocket read, the pipeline, the ack written and flushed —
//!   over an in-memory pipe, so TLS and the kernel (the same for any server) are not in it;
//!   only the server's task is counted, not the vehicle's.
//!
//! Run natively it prints the events each scenario raised (a check that eventful frames raise
//! one event each): `cargo bench --bench instructions -- pipeline-eventful`.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use fleetgate::event::Event;
use fleetgate::ingest::connection::{self, ConnectionInfo, ConnectionSettings};
use fleetgate::ingest::identity::Identity;
use fleetgate::ingest::stop::StopSignal;
use fleetgate::kafka::cloudevents::{event_message, EventContentMode};
use fleetgate::pipeline::{Answer, FrameState, Pipeline};
use fleetgate::rules::geojson::sites_from_geojson;
use fleetgate::rules::sites::{Shape, Site};
use fleetgate::rules::{Fleet, RulesConfig};
use fleetgate::sinks::logger::LoggerSink;
use fleetgate::sinks::{DeliveryTicket, PublishError, Sink, SinkRecord};
use fleetgate::tools::bench::drive::{self, dense_sites, Area, Discard, VIN};
use fleetgate::wire::proto::vehicle_data::Payload;
use prost::Message as _;

/// The allocator `fleetgate serve` runs with (its instructions per allocation are part of the
/// work counted; glibc's `malloc` also takes different paths depending on the heap's history,
/// which moved a count by ~3 % for a change in code the scenario did not run).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Frames measured per scenario.
const FRAMES: u64 = 200;
/// Frames before them (the vehicle's state, the caches and the allocator settle).
const WARM_UP: u64 = 300;

/// The site eventful frames enter and leave.
const SITE: (f64, f64) = (30.25, -97.75);
/// 2.2 km north of it: outside.
const AWAY: (f64, f64) = (30.27, -97.75);
/// Where quiet frames drive: no site within kilometres.
const QUIET: (f64, f64) = (30.0, -97.0);

fn sites() -> Vec<Site> {
    let mut sites = dense_sites(
        10_000,
        Area {
            lat: 31.0,
            lon: -99.0,
            span: 1.0,
        },
    );
    sites.push(Site {
        id: "store".into(),
        name: "Store".into(),
        kind: "merchant".into(),
        tags: Default::default(),
        shape: Shape::Circle {
            lat: SITE.0,
            lon: SITE.1,
            radius_m: 250.0,
        },
    });
    sites
}

/// Where frame `i` of a scenario is: driving slowly where nothing is, or in and out of the
/// site every frame.
fn position(eventful: bool, i: u64) -> (f64, f64) {
    if !eventful {
        let step = (i % 1000) as f64 * 0.00005;
        return (QUIET.0 + step, QUIET.1 + step);
    }
    if i.is_multiple_of(2) {
        SITE
    } else {
        AWAY
    }
}

/// The time of frame `i` (s after the first): a second apart when quiet; two minutes apart
/// in and out of the site (2.2 km in 2 minutes is a drive, not a jump the rules hold as GPS
/// jitter).
fn seconds(eventful: bool, i: u64) -> u64 {
    if eventful {
        i * 120
    } else {
        i
    }
}

/// The measured frames (callgrind counts inside `measured_*` only: not the warm-up).
#[inline(never)]
fn measured_pipeline(pipeline: &Pipeline, state: &mut FrameState, frames: &[Vec<u8>]) {
    pipeline_frames(pipeline, state, frames)
}

#[inline(never)]
fn pipeline_frames(pipeline: &Pipeline, state: &mut FrameState, frames: &[Vec<u8>]) {
    for bytes in frames {
        let answer = drive::apply(pipeline, state, bytes);
        assert!(matches!(answer, Answer::Ack { .. }), "{answer:?}");
        black_box(answer);
    }
}

/// The measured records (see [`measured_pipeline`]).
#[inline(never)]
fn measured_cluster(fleet: &Fleet, records: &[(Vec<u8>, u32)]) -> usize {
    cluster_records(fleet, records)
}

#[inline(never)]
fn cluster_records(fleet: &Fleet, records: &[(Vec<u8>, u32)]) -> usize {
    let mut events = 0;
    for (value, created_at_s) in records {
        let payload = Payload::decode(value.as_slice()).expect("a Payload");
        let outcome = fleetgate::cluster::rules::apply_frame(fleet, VIN, &payload, *created_at_s);
        for event in &outcome.events {
            let json = serde_json::to_vec(&event.to_cloudevent()).expect("JSON");
            black_box(event_message(event, &json, EventContentMode::Binary).expect("encoded"));
            events += 1;
        }
    }
    events
}

fn run_pipeline(eventful: bool) -> u64 {
    let sink = Arc::new(Discard::default());
    let pipeline = drive::pipeline(sites(), sink.clone());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut state = FrameState::new(&pipeline, tx);
    let frame = |i: u64| {
        let (lat, lon) = position(eventful, i);
        drive::frame_at(seconds(eventful, i), lat, lon)
    };
    let warm: Vec<Vec<u8>> = (0..WARM_UP).map(frame).collect();
    let measured: Vec<Vec<u8>> = (WARM_UP..WARM_UP + FRAMES).map(frame).collect();
    pipeline_frames(&pipeline, &mut state, &warm);
    let before = sink.events();
    measured_pipeline(&pipeline, &mut state, &measured);
    sink.events() - before
}

fn run_cluster(eventful: bool) -> u64 {
    let fleet = Fleet::new(RulesConfig::default(), sites());
    let record = |i: u64| {
        let (lat, lon) = position(eventful, i);
        let t = seconds(eventful, i);
        (drive::payload_at(t, lat, lon), 1_764_000_000 + t as u32)
    };
    let warm: Vec<_> = (0..WARM_UP).map(record).collect();
    let measured: Vec<_> = (WARM_UP..WARM_UP + FRAMES).map(record).collect();
    cluster_records(&fleet, &warm);
    measured_cluster(&fleet, &measured) as u64
}

/// Counts the events of the sink it wraps (the logger counts nothing).
struct CountEvents<S> {
    inner: S,
    events: std::sync::atomic::AtomicU64,
}

impl<S: Sink> Sink for CountEvents<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn publish(&self, record: &SinkRecord<'_>, ticket: DeliveryTicket) -> Result<(), PublishError> {
        self.inner.publish(record, ticket)
    }
    fn publish_event(
        &self,
        event: &Event,
        json: &[u8],
        ticket: DeliveryTicket,
    ) -> Result<(), PublishError> {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.inner.publish_event(event, json, ticket)
    }
    fn flush(&self, timeout: Duration) -> usize {
        self.inner.flush(timeout)
    }
}

/// `pipeline-steady`: the steady scenario's sites, drive and sink (the logger writing to
/// `/dev/null` through its 64 KiB buffer, as `fleetgate bench scenario steady` runs `serve`).
fn run_steady() -> u64 {
    let geojson = fleetgate::tools::bench::scenario::steady_sites_geojson(100_000).to_string();
    let sites = sites_from_geojson(&geojson, RulesConfig::default().default_radius_m)
        .expect("the bench's sites");
    let null = std::fs::File::create("/dev/null").expect("/dev/null");
    let sink = Arc::new(CountEvents {
        inner: LoggerSink::buffered_file(null),
        events: Default::default(),
    });
    let pipeline = drive::pipeline_with(sites, sink.clone());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut state = FrameState::new(&pipeline, tx);
    let mut frames = drive::steady_drive(WARM_UP + FRAMES);
    let measured = frames.split_off(WARM_UP as usize);
    pipeline_frames(&pipeline, &mut state, &frames);
    let before = sink.events.load(Ordering::Relaxed);
    measured_pipeline(&pipeline, &mut state, &measured);
    sink.events.load(Ordering::Relaxed) - before
}

/// The server's task of `socket-quiet`: polled through [`measured_socket_poll`] (counted) once
/// `measuring` is set, directly (not counted) before.
struct CountedTask<F> {
    task: Pin<Box<F>>,
    measuring: Arc<AtomicBool>,
}

impl<F: Future> Future for CountedTask<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.measuring.load(Ordering::Relaxed) {
            measured_socket_poll(self.task.as_mut(), cx)
        } else {
            self.task.as_mut().poll(cx)
        }
    }
}

/// One poll of the server's connection task (see [`measured_pipeline`]).
#[inline(never)]
fn measured_socket_poll<F: Future>(task: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
    task.poll(cx)
}

/// The quiet drive through `ingest::connection::run`: the vehicle sends a frame and waits
/// for its ack, as a vehicle streaming at 1 Hz does; the server's task is counted for the
/// measured frames. Returns the events (none).
fn run_socket() -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let sink = Arc::new(Discard::default());
        let settings = ConnectionSettings {
            pipeline: drive::pipeline(sites(), sink.clone()),
            idle_timeout: Duration::from_secs(300),
            ping_interval: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            max_pending_acks: 64,
        };
        let info = Arc::new(ConnectionInfo {
            identity: Arc::new(Identity {
                device_id: VIN.into(),
                client_type: "vehicle_device",
                sender_id: drive::SOURCE.sender_id.into(),
            }),
            connection_id: "bench".into(),
            client_txid: String::new(),
            client_version: drive::SOURCE.client_version.into(),
            network_interface: "wifi".into(),
        });
        let (server_io, vehicle_io) = tokio::io::duplex(64 * 1024);
        // the server's websocket as `serve` configures it by default
        let limits = fleetgate::config::LimitsConfig::default();
        let config =
            connection::websocket_config(limits.ws_read_buffer_bytes, limits.max_message_bytes);
        let server_ws =
            WebSocketStream::from_raw_socket(server_io, Role::Server, Some(config)).await;
        let mut vehicle = WebSocketStream::from_raw_socket(vehicle_io, Role::Client, None).await;
        let measuring = Arc::new(AtomicBool::new(false));
        let server = tokio::spawn(CountedTask {
            task: Box::pin(connection::run(
                server_ws,
                info,
                settings,
                StopSignal::new(),
                Duration::ZERO,
            )),
            measuring: measuring.clone(),
        });
        for i in 0..WARM_UP + FRAMES {
            if i == WARM_UP {
                measuring.store(true, Ordering::Relaxed);
            }
            let (lat, lon) = position(false, i);
            let frame = drive::frame_at(seconds(false, i), lat, lon);
            vehicle
                .send(Message::Binary(frame.into()))
                .await
                .expect("sent");
            loop {
                match vehicle.next().await {
                    Some(Ok(Message::Binary(_))) => break,
                    Some(Ok(_)) => continue,
                    other => panic!("no ack for frame {i}: {other:?}"),
                }
            }
        }
        measuring.store(false, Ordering::Relaxed);
        drop(vehicle);
        server.await.expect("the connection task ends");
        sink.events()
    })
}

fn main() {
    // `cargo bench` passes `--bench`: the scenario is the first other argument
    let scenario = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "all".into());
    let scenarios: Vec<&str> = match scenario.as_str() {
        "all" => vec![
            "pipeline-quiet",
            "pipeline-eventful",
            "cluster-quiet",
            "cluster-eventful",
            "socket-quiet",
            "pipeline-steady",
        ],
        s => vec![s],
    };
    for s in scenarios {
        let events = match s {
            "pipeline-quiet" => run_pipeline(false),
            "pipeline-eventful" => run_pipeline(true),
            "cluster-quiet" => run_cluster(false),
            "cluster-eventful" => run_cluster(true),
            "socket-quiet" => run_socket(),
            "pipeline-steady" => run_steady(),
            other => {
                eprintln!("unknown scenario `{other}`: pipeline-quiet, pipeline-eventful, cluster-quiet, cluster-eventful, socket-quiet, pipeline-steady or all");
                std::process::exit(2);
            }
        };
        println!("{s}: {FRAMES} frames measured, {events} events");
    }
}
