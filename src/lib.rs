//! fleetgate: a self-hosted Tesla Fleet Telemetry ingest server.
//!
//! # Layout
//! - [`wire`]: flatbuffers envelope, protobuf payloads, transforms, proto3 JSON.
//! - [`ingest`]: TLS + identity, HTTP upgrade, the per-vehicle frame loop.
//! - [`sinks`]: where records go (logger, Kafka) and delivery tickets for reliable acks.
//! - [`config`]: Tesla's config keys plus the `fleetgate` section, validated.
//! - [`metrics`]: every exported metric, in one place.
//! - [`app`]: `serve` wiring and ordered shutdown; [`certs`]: dev PKI; [`client`]: vehicle side.
//! - [`commands`]: subcommands that are more than one call; [`bench`]: the load bench.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod bench;
pub mod certs;
pub mod client;
pub mod commands;
pub mod config;
pub mod event;
pub mod geometry;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod rules;
pub mod sim;
pub mod sinks;
pub mod state;
pub mod store;
pub mod wire;
