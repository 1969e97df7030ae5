//! `fleetgate.cluster`: cluster mode's settings, beside the code they configure.

use serde::{Deserialize, Serialize};

/// `fleetgate.cluster`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name: instances with the same name (and namespace) are one fleet.
    pub name: String,
    /// This instance's id, unique in the cluster (default: the host name). It names the
    /// instance's transactional producer, so two live instances must never share it.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Names of the compacted topics (defaults `{namespace}_fleetgate_sites`, `…_watches`,
    /// `…_vins`).
    #[serde(default)]
    pub topics: ClusterTopicsConfig,
    /// How long an admin write may wait for Kafka (commit and read-back) before 503 (s).
    #[serde(default = "ClusterConfig::default_write_timeout_s")]
    pub write_timeout_s: u64,
    /// The rules' consumer group session timeout: how long a crashed instance keeps its
    /// vehicles' rules before another instance takes them over (s).
    #[serde(default = "ClusterConfig::default_session_timeout_s")]
    pub session_timeout_s: u64,
    /// Kafka transaction timeout of the rules: how long a crashed owner's open transaction
    /// holds back readers of events before the broker aborts it (s).
    #[serde(default = "ClusterConfig::default_transaction_timeout_s")]
    pub transaction_timeout_s: u64,
    /// Where a new rules group starts reading `V`: `latest` (default) or `earliest` (the whole
    /// retained history, once). The relay of events to the other sinks starts the same way.
    #[serde(default = "ClusterConfig::default_rules_offset_reset")]
    pub rules_offset_reset: String,
    /// How long one rules transaction collects records before it commits (ms): events,
    /// changed vehicles' state and offsets commit together, so this is the latency of an
    /// event for `read_committed` readers against the cost of a commit (see
    /// docs/benchmarks.md).
    #[serde(default = "ClusterConfig::default_commit_interval_ms")]
    pub commit_interval_ms: u64,
}

impl ClusterConfig {
    fn default_write_timeout_s() -> u64 {
        10
    }
    fn default_session_timeout_s() -> u64 {
        10
    }
    fn default_transaction_timeout_s() -> u64 {
        10
    }
    fn default_rules_offset_reset() -> String {
        "latest".into()
    }
    fn default_commit_interval_ms() -> u64 {
        100
    }
}

/// `fleetgate.cluster.topics`: topic names (unset = the default for the namespace).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterTopicsConfig {
    /// Sites (key: site id, value: GeoJSON Feature).
    #[serde(default)]
    pub sites: Option<String>,
    /// Watches (key: watch id, value: the watch spec).
    #[serde(default)]
    pub watches: Option<String>,
    /// VIN lists (key: `allow:VIN` / `block:VIN`).
    #[serde(default)]
    pub vins: Option<String>,
    /// The rules' state changelog and the cluster's vehicle view (key: VIN; default
    /// `{namespace}_fleetgate_state`; as many partitions as the `V` topic).
    #[serde(default)]
    pub state: Option<String>,
    /// Which instance holds which socket (default `{namespace}_fleetgate_presence`).
    #[serde(default)]
    pub presence: Option<String>,
    /// Import marks of `sites_file` and config `watches` (default
    /// `{namespace}_fleetgate_imports`, compacted, one partition).
    #[serde(default)]
    pub imports: Option<String>,
    /// The rules' inputs other than frames — manual arrivals, Smartcar states — keyed by VIN
    /// (default `{namespace}_fleetgate_inputs`, as many partitions as the `V` topic).
    #[serde(default)]
    pub inputs: Option<String>,
}
