//! Vehicle onboarding with Tesla: from a VIN to a streaming car without hand-work.
//!
//! - [`jws`]: Tesla.SS256 (Schnorr/P-256) signing and verification, the partner key;
//! - [`config`]: the `fleetgate.tesla` section;
//! - [`telemetry_config`]: the claims of a vehicle's telemetry config, the `ca` chain check;
//! - [`seal`]: tokens sealed at rest (AES-256-GCM under the token key);
//! - [`state`]: accounts, desired vehicles and their status — records of the one admin log;
//! - [`fleet_api`]: Tesla's Fleet API (tokens, key status, configs, errors; 429 pauses);
//! - [`tokens`]: access tokens, refreshed by one instance per account, durable before use;
//! - [`reconcile`]: desired vs actual per vehicle, on the instance where its rules run;
//! - [`doctor`]: the pre-flight checks of what cars check;
//! - [`commands`]: `keygen` and `sign-config`.
//!
//! Must not touch sockets of vehicles or the frame path: onboarding reads the rules' vehicle
//! table (first and last frame) and announces its state changes through the rules' door.
pub mod commands;
pub mod config;
pub mod doctor;

pub mod fleet_api;
pub mod jws;
pub mod reconcile;
pub mod seal;
pub mod state;
pub mod telemetry_config;
pub mod tokens;
