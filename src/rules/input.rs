//! The one door into the rules: every input is a [`RuleInput`] for one VIN — a frame's typed
//! signals, a Smartcar state, a manual arrival, a clock tick — and [`crate::rules::FleetData::run`]
//! applies it and returns an [`Outcome`]. Where an input came from (a socket, a webhook, the
//! admin API, a timer, a replayed Kafka record) is decided before the door; where the runner
//! runs (in this process, or on the instance owning the VIN's partition) is the placement's
//! business, never the rules'.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::state::VehicleUpdate;

/// One input of the rules, for one vehicle (the VIN travels beside it: the record key in
/// cluster mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleInput {
    /// The vehicle's typed signals: a Fleet Telemetry `V` frame, or a Smartcar state
    /// (`source` in the update says which).
    Signals(VehicleUpdate),
    /// A person says the vehicle of `watch_id` has arrived (the driver's "I'm here").
    ManualArrival {
        /// The watch (must be this vehicle's).
        watch_id: String,
        /// Why, for the record (carried in the event).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// When the person said so (ms): the arrival's time and event id.
        at_ms: i64,
    },
    /// The clock: closes a stale charging session and expires the vehicle's watches whose
    /// time passed, as of `now_ms`.
    Tick {
        /// Wall-clock time of the tick (ms).
        now_ms: i64,
    },
    /// The vehicle's Tesla onboarding state changed: announced as a
    /// `fleetgate.vehicle.onboarding` event, in order with the vehicle's other events.
    Onboarding {
        /// The state entered.
        state: String,
        /// The state left (None for the first).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_state: Option<String>,
        /// Why (what to do), when there is something to say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The change's number for the vehicle (with the VIN, the event's id).
        seq: u64,
        /// When the reconciler saw the change (ms).
        at_ms: i64,
    },
}

/// What a manual arrival did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ArrivalReply {
    /// The watch arrived now; `event_id` is the `arrival.arrived` it emitted.
    Arrived {
        /// The event's id.
        event_id: String,
    },
    /// The watch had arrived already (by `source`); the report is recorded on the watch and
    /// nothing is emitted.
    AlreadyArrived {
        /// The source that saw the arrival first.
        source: String,
    },
    /// No watch of this vehicle has that id (deleted or expired meanwhile).
    UnknownWatch,
}

/// What applying one input did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Events, in order.
    pub events: Vec<Event>,
    /// The vehicle's rule state changed: it must be written before the input counts as
    /// consumed (acked, or its offset committed).
    pub changed: bool,
    /// The answer to a [`RuleInput::ManualArrival`].
    pub arrival: Option<ArrivalReply>,
    /// Watches that ended with this input (their time passed — with an `arrival.expired`, or
    /// silently when their charge had completed): deleted durably with the state, or they
    /// would come back with fresh progress after a restart.
    pub ended: Vec<String>,
}

impl Outcome {
    /// The watches that ended with this input.
    pub fn ended_watches(&self) -> impl Iterator<Item = &str> {
        self.ended.iter().map(String::as_str)
    }
}

/// What an input did, as the instance that applied it records it for whoever submitted it
/// (cluster mode: kept with the vehicle's state in the changelog, so any instance can answer
/// the request that produced the input once its transaction committed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The submitter's id of the input.
    pub input_id: String,
    /// When it was applied (ms, wall clock).
    pub at_ms: i64,
    /// The events it emitted: (type, id).
    #[serde(default)]
    pub events: Vec<(String, String)>,
    /// A manual arrival's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival: Option<ArrivalReply>,
}

impl Receipt {
    /// The receipt of `outcome` for the input `input_id`.
    pub fn of(input_id: &str, at_ms: i64, outcome: &Outcome) -> Receipt {
        Receipt {
            input_id: input_id.to_owned(),
            at_ms,
            events: outcome
                .events
                .iter()
                .map(|e| (e.kind.as_str().to_owned(), e.id.clone()))
                .collect(),
            arrival: outcome.arrival.clone(),
        }
    }

    /// The event types it emitted.
    pub fn event_types(&self) -> Vec<String> {
        self.events.iter().map(|(t, _)| t.clone()).collect()
    }
}

/// At most this many receipts are kept per vehicle (the newest).
pub const RECEIPTS_KEPT: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_survive_their_record_form() {
        let inputs = [
            RuleInput::Signals(VehicleUpdate {
                at_ms: 1_764_000_000_000,
                location: Some((30.2, -97.7)),
                soc: Some(55.5),
                source: crate::state::Source::Smartcar,
                ..Default::default()
            }),
            RuleInput::ManualArrival {
                watch_id: "order-1".into(),
                reason: Some("driver_tapped_im_here".into()),
                at_ms: 1_764_000_000_123,
            },
            RuleInput::Tick { now_ms: 42 },
            RuleInput::Onboarding {
                state: "synced".into(),
                previous_state: Some("configuring".into()),
                reason: None,
                seq: 3,
                at_ms: 7,
            },
        ];
        for input in inputs {
            let json = serde_json::to_string(&input).unwrap();
            let back: RuleInput = serde_json::from_str(&json).unwrap();
            assert_eq!(back, input, "{json}");
        }
    }
}
