//! fleetgate: a self-hosted Tesla Fleet Telemetry ingest server.
//!
//! # Layout
//! - [`wire`]: flatbuffers envelope, protobuf payloads, transforms, proto3 JSON.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod commands;
pub mod wire;
