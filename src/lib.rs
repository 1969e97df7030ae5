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
//! - [`rules`]: sites (index, GeoJSON), watches and charging sessions → events.
//! - [`event`]: the event model and its CloudEvents form, shared by rules and sinks.
//! - [`sinks`]: delivery only (logger, Kafka, MQTT), with tickets for reliable acks.
//! - [`sources`]: vehicle state from elsewhere (Smartcar webhooks) as the rules' typed updates.
//! - [`geometry`]: distances on the Earth, for the table and the rules.
//! - [`admin`]: the admin API; [`control`]: its changes, made durable and applied to the fleet.
//! - [`store`]: embedded mode's SQLite store and the rule journal (rule state across restarts).
//! - [`cluster`]: cluster mode — shared admin state in compacted Kafka topics, rules
//!   partitioned by VIN (changelog, transactions), the cluster-wide vehicle view.
//! - [`config`]: Tesla's keys and the `fleetgate` section, validated; [`metrics`]: every metric
//!   family; [`app`]: `serve` wiring and the ordered shutdown.
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
pub mod metrics;
pub mod paths;
pub mod pipeline;
pub mod rules;
pub mod runner;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod store;
pub mod tools;
pub mod wire;
