//! fleetgate: a self-hosted Tesla Fleet Telemetry ingest server.
//!
//! # Layout
//! The path of one frame, left to right, then what sits beside it:
//!
//! - [`wire`]: the Tesla wire — flatbuffers envelope (verified reads, reference acks), protobuf
//!   payloads, transforms, proto3 JSON. Knows no sockets, sinks or rules.
//! - [`ingest`]: sockets, TLS and identity (Tesla's CAs embedded), the HTTP upgrade, the
//!   per-connection loop (timeouts, pending acks), the registry of sockets, VIN lists, the
//!   proxy-mTLS listener. Hands every frame to the pipeline; decides nothing about it.
//! - [`pipeline`]: one frame's policy, synchronous and socket-free — limits, sender check,
//!   routing, changes-only, the rules call, the ack decision; connectivity records and
//!   vehicle events.
//! - [`state`]: the vehicle table (data only; the rules read and update it).
//! - [`rules`]: sites (index, GeoJSON), watches and charging sessions; one door —
//!   `RuleInput` (signals, a manual arrival, a tick) → `Fleet::run` → events and changes.
//! - [`runner`]: where the rules run — the local placement (embedded: the write cache
//!   committed to the rule journal) and the `Placement` interface inputs are submitted through.
//! - [`event`]: the event model and its CloudEvents form, shared by rules and sinks.
//! - [`sinks`]: delivery only (logger, Kafka, MQTT, webhook), with tickets for reliable acks;
//!   the one fan-out of events.
//! - [`sources`]: vehicle state from elsewhere (Smartcar webhooks) as the rules' inputs.
//! - [`tesla`]: vehicle onboarding with Tesla — signed telemetry configs (`Tesla.SS256`),
//!   the Fleet API reconciler (accounts, desired vehicles, one status per car in the admin
//!   log), `tesla doctor`; it announces state changes through the rules' door.
//! - [`geometry`]: distances on the Earth, for the table and the rules.
//! - [`admin`]: the admin API, one module per resource; [`api`]: the JSON error shape.
//! - [`control`]: the one admin log (its changes, replay → apply, config imports).
//! - [`store`]: embedded mode's SQLite store — the admin log's and the rule journal's backend.
//! - [`kafka`]: Kafka client code shared by the sink and cluster mode.
//! - [`cluster`]: cluster mode — shared admin state in compacted Kafka topics, rules
//!   partitioned by VIN (inputs topic, changelog, transactions), the relay of events to the
//!   other sinks, the cluster-wide view, presence and identity checks.
//! - [`config`]: Tesla's keys and the `fleetgate` section, validated; [`metrics`]: every metric
//!   family; [`logging`]: the log line shapes (Tesla's logrus JSON too); [`paths`]:
//!   config-relative paths; [`app`]: `serve` wiring and the ordered
//!   shutdown.
//! - [`tools`]: apart from the product — dev PKI, vehicle client, simulator, load bench,
//!   `decode` / `demo` / `sim`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod app;
pub mod cluster;
pub mod config;
pub mod control;
pub mod event;
pub mod geometry;
pub mod ingest;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod paths;
pub mod pipeline;
pub mod rules;
pub mod runner;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod store;
pub mod tesla;
pub mod tools;
pub mod wire;
