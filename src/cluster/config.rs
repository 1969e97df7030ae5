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
    /// How long `serve` waits for the brokers to answer at start-up before it exits with an
    /// error (s); the admin listener answers `/healthz` (`starting`) meanwhile.
    #[serde(default = "ClusterConfig::default_startup_wait_s")]
    pub startup_wait_s: u64,
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
    fn default_startup_wait_s() -> u64 {
        120
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
    /// Tesla onboarding's records — accounts (sealed tokens), desired vehicles, their status
    /// (default `{namespace}_fleetgate_tesla`, compacted).
    #[serde(default)]
    pub tesla: Option<String>,
}

impl ClusterConfig {
    /// Problems with this section's own values, as (key, problem). What cluster mode needs of
    /// the rest of the config (records, events) is checked where the config is assembled.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut issue = |key: &str, problem: String| out.push((key.to_owned(), problem));
        let id_chars = |s: &str| {
            !s.trim().is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if !id_chars(&self.name) {
            issue(
                "fleetgate.cluster.name",
                format!(
                    "`{}`: use letters, digits, `.`, `_` or `-` (it becomes part of Kafka ids)",
                    self.name
                ),
            );
        }
        if let Some(id) = &self.instance_id {
            if id.trim().is_empty() {
                issue(
                    "fleetgate.cluster.instance_id",
                    "must not be empty (leave it out for the default: host name and vehicle port)"
                        .into(),
                );
            } else if !id_chars(id) {
                issue(
                    "fleetgate.cluster.instance_id",
                    format!("`{id}`: use letters, digits, `.`, `_` or `-` (it becomes part of Kafka ids)"),
                );
            }
        }
        if !(1..=3600).contains(&self.startup_wait_s) {
            issue(
                "fleetgate.cluster.startup_wait_s",
                "must be within [1, 3600] (keep it below the startup probe's window: the chart's is 180 s)".into(),
            );
        }
        if self.write_timeout_s == 0 {
            issue(
                "fleetgate.cluster.write_timeout_s",
                "must be at least 1".into(),
            );
        }
        if !(6..=300).contains(&self.session_timeout_s) {
            issue(
                "fleetgate.cluster.session_timeout_s",
                "must be within [6, 300] (the broker's group session limits)".into(),
            );
        }
        if !(1..=900).contains(&self.transaction_timeout_s) {
            issue(
                "fleetgate.cluster.transaction_timeout_s",
                "must be within [1, 900]".into(),
            );
        }
        if !(10..=10_000).contains(&self.commit_interval_ms)
            || self.commit_interval_ms >= self.transaction_timeout_s * 1000
        {
            issue(
                "fleetgate.cluster.commit_interval_ms",
                "must be within [10, 10000] ms and shorter than transaction_timeout_s".into(),
            );
        }
        if !["latest", "earliest"].contains(&self.rules_offset_reset.as_str()) {
            issue(
                "fleetgate.cluster.rules_offset_reset",
                format!("`{}`: use `latest` or `earliest`", self.rules_offset_reset),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_value_is_named_by_its_key() {
        let c: ClusterConfig = serde_json::from_str(
            r#"{"name": "blue green", "instance_id": "pod/1", "write_timeout_s": 0,
                "session_timeout_s": 3, "transaction_timeout_s": 1, "commit_interval_ms": 5000,
                "rules_offset_reset": "newest"}"#,
        )
        .unwrap();
        let keys: Vec<String> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "fleetgate.cluster.name",
                "fleetgate.cluster.instance_id",
                "fleetgate.cluster.write_timeout_s",
                "fleetgate.cluster.session_timeout_s",
                "fleetgate.cluster.commit_interval_ms",
                "fleetgate.cluster.rules_offset_reset",
            ]
        );
        let fine: ClusterConfig = serde_json::from_str(r#"{"name": "prod-eu.1"}"#).unwrap();
        assert!(fine.problems().is_empty(), "{:?}", fine.problems());
        assert_eq!(fine.commit_interval_ms, 100);
    }
}
