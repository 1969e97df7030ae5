//! Where the rules run: one runner ([`crate::rules::FleetData::run`]), two placements.
//!
//! - **local** ([`local::LocalRules`], embedded mode): every input — a frame from the
//!   pipeline, a Smartcar state or a manual arrival from the admin listener, a tick of the
//!   sweeper — is applied in this process; the vehicles whose rule state changed are written
//!   to the store's journal by a group commit every [`local::COMMIT_EVERY`] (the write cache,
//!   [`state::WriteCache`]), and a reliably acked frame is acked only after its commit;
//! - **partitioned** (`cluster::rules`, cluster mode): every input is a record keyed by VIN
//!   (frames in `{ns}_V`, the others in `{ns}_fleetgate_inputs`) applied by the instance that
//!   owns the VIN's partition, which writes the changed vehicles' state to the changelog in the
//!   same transaction as the events and the consumed offsets — through the same write cache.
//!
//! Callers that are not the frame path (the admin API, webhook sources) see one interface,
//! [`Placement`]: submit an input, learn what it did. Must not know sinks' internals, sockets
//! or Kafka.

pub mod local;
pub mod state;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::rules::input::{Receipt, RuleInput};

/// A boxed future (the trait is used as an object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a submitted input did, once it was applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// What it did: its events, a manual arrival's answer.
    pub receipt: Receipt,
    /// True when its events are safe: confirmed by every event sink (embedded mode) or
    /// committed to the events topic (cluster mode, from where every sink gets them).
    pub delivered: bool,
}

/// Why a submitted input has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Nothing was applied (a sink refused the event, Kafka did not take the input): retry.
    #[error("{0}")]
    Unavailable(String),
    /// The input is durable and will be applied, but its answer did not come within the wait
    /// (cluster mode: the vehicle's partition is moving between instances).
    #[error("input {input_id} is queued for the vehicle's rules; its result is not known yet")]
    Pending {
        /// The input's id (in the receipts of the vehicle's state once applied).
        input_id: String,
    },
}

/// The rules as callers outside the frame path see them: submit an input of a vehicle and
/// wait (up to `wait`) for what it did. The local placement applies it in this process; the
/// partitioned one hands it to the owner of the vehicle's partition.
pub trait Placement: Send + Sync {
    /// Applies `input` of `vin` where the vehicle's rules run.
    fn submit<'a>(
        &'a self,
        vin: &'a str,
        input: RuleInput,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Submitted, SubmitError>>;

    /// True when the rules of `key` (a VIN, or another key placed like one) run in this
    /// process now: work that must happen once per vehicle (Tesla onboarding's reconciler)
    /// runs where this is true.
    fn runs_here(&self, key: &str) -> bool;
}

/// A fresh id for a submitted input.
pub fn input_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Wall-clock now (ms).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
