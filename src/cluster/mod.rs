//! Cluster mode (`fleetgate.cluster`): N instances, one fleet, with Kafka as the shared
//! engine — no home-made consensus, no second database.
//!
//! - [`shared_log`]: sites, watches and VIN lists in compacted topics every instance applies
//!   (admin writes are transactions, read back before they are answered).
//! - [`rules`]: the rules partitioned by VIN — a consumer group over the `V` records, each
//!   partition's rule state restored from a compacted changelog on assignment, and events,
//!   changelog and consumed offsets committed in one Kafka transaction (exactly once).
//! - [`view`]: the cluster-wide read view of every vehicle, built from the changelog, for the
//!   admin API's vehicle reads on any instance.
//! - [`presence`]: which instance holds which vehicle socket, for `/v1/connections` anywhere.
//!
//! Must not touch sockets or the frame path: ingest stays stateless per instance and hands
//! `V` records to Kafka like any sink.

pub mod config;
pub mod inputs;
pub mod presence;
pub mod relay;
pub mod rules;
pub mod shared_log;
pub mod view;

use std::sync::Arc;

/// The running parts of cluster mode.
#[derive(Clone)]
pub struct Cluster {
    /// `fleetgate.cluster.name`.
    pub name: String,
    /// This instance's id.
    pub instance_id: String,
    /// Shared sites, watches and VIN lists.
    pub log: Arc<shared_log::SharedLog>,
    /// The partitioned rules.
    pub rules: Arc<rules::RulesProcessor>,
    /// Every vehicle of the cluster, for reads.
    pub view: Arc<view::ClusterView>,
    /// Every instance's sockets.
    pub presence: Arc<presence::Presence>,
    /// Events to the sinks other than Kafka (None when there are none).
    pub relay: Option<Arc<relay::Relay>>,
    /// The door for inputs other than frames.
    pub inputs: Arc<inputs::InputClient>,
}

impl Cluster {
    /// Stops the rules (after their current transaction), the relay, then the readers.
    /// Blocking.
    pub fn stop(&self) {
        self.rules.stop();
        if let Some(relay) = &self.relay {
            relay.stop();
        }
        self.presence.stop();
        self.view.stop();
        self.log.stop();
    }
}
