//! Checking a whole config: every problem at once, with its key and the fix. Each component
//! checks its own section (`ClusterConfig::problems`, `SmartcarConfig::problems`,
//! `ChangesOnlyConfig::problems`, `RulesConfig::problems`, `arrival::spec_problems`, the Kafka,
//! MQTT and webhook settings); what spans sections — routing, what cluster mode needs of the
//! rest, Tesla's keys fleetgate ignores — is checked here, one function per concern.

use std::path::Path;

use super::{Checks, Config, ConfigIssue, REFERENCE_ONLY_SINKS, SINK_NAMES};
use crate::wire::Topic;

/// Problems and warnings as they are found.
#[derive(Default)]
struct Findings {
    issues: Vec<ConfigIssue>,
    warnings: Vec<String>,
}

impl Findings {
    fn issue(&mut self, key: &str, problem: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.to_owned(),
            problem: problem.into(),
        });
    }

    fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// A component's (key, problem) list.
    fn extend(&mut self, problems: Vec<(String, String)>) {
        for (key, problem) in problems {
            self.issue(&key, problem);
        }
    }

    /// A component's (problems, warnings).
    fn extend_both(&mut self, (problems, warnings): (Vec<(String, String)>, Vec<String>)) {
        self.extend(problems);
        self.warnings.extend(warnings);
    }
}

impl Config {
    /// Checks every value, the files it names too; returns (fatal issues, warnings).
    pub fn validate(&self, base: &Path) -> (Vec<ConfigIssue>, Vec<String>) {
        self.validate_with(base, Checks::default())
    }

    /// Checks every value; with `checks.files` false, files the config names (certificates,
    /// sites, VIN lists, secrets) are not opened — for a config rendered for another machine
    /// (`fleetgate check-config --no-file-checks`, the Helm chart's check).
    pub fn validate_with(&self, base: &Path, checks: Checks) -> (Vec<ConfigIssue>, Vec<String>) {
        let check_files = checks.files;
        let mut f = Findings::default();
        if let Some(problem) = self
            .fleetgate
            .admin
            .as_ref()
            .and_then(|a| a.token_problem(checks.insecure_admin))
        {
            f.issue("fleetgate.admin.token", problem);
        }
        self.reference_keys(&mut f);
        self.data_connectors(&mut f, base, check_files);
        if let Some(cluster) = &self.fleetgate.cluster {
            f.extend(cluster.problems());
            self.cluster_needs(&mut f);
        }
        self.tls(&mut f, base, check_files);
        if let Some(kafka) = &self.kafka {
            f.extend(crate::kafka::check_properties(
                kafka,
                &self.fleetgate.kafka,
                base,
                check_files,
            ));
        }
        if let Some(smartcar) = &self.fleetgate.sources.smartcar {
            if self.fleetgate.admin.is_none() {
                f.issue("fleetgate.sources.smartcar", "Smartcar posts to the admin listener (`POST /v1/sources/smartcar`): configure fleetgate.admin");
            }
            f.extend_both(smartcar.problems(base, check_files));
        }
        self.mqtt(&mut f, base, check_files);
        self.tesla(&mut f, base, check_files);
        self.webhook(&mut f, base, check_files);
        self.routing(&mut f);
        self.process(&mut f);
        // addresses and networks: parsed once, by `settings`, which reports its own problems
        if let Err(problems) = self.settings() {
            f.issues.extend(problems);
        }
        f.extend_both(self.fleetgate.changes_only.problems());
        f.extend(
            self.fleetgate
                .rules
                .problems()
                .into_iter()
                .map(|(k, p)| (k.to_owned(), p))
                .collect(),
        );
        if let Some(file) = self.fleetgate.sites_file.as_ref().filter(|_| check_files) {
            let path = Config::resolve(base, file);
            if !path.is_file() {
                f.issue(
                    "fleetgate.sites_file",
                    format!(
                        "file {} does not exist: fix the path (relative to the config file)",
                        path.display()
                    ),
                );
            }
        }
        f.extend(crate::rules::arrival::spec_problems(
            &self.fleetgate.watches,
            "fleetgate.watches",
        ));
        f.extend(self.fleetgate.limits.problems());
        if check_files {
            f.extend_both(super::preflight::problems(self, base));
        }
        (f.issues, f.warnings)
    }

    /// `fleetgate.tesla`: its own keys, what the reconciler needs of the rest (the admin API,
    /// a durable store), and the `ca` chain against the certificate fleetgate serves.
    fn tesla(&self, f: &mut Findings, base: &Path, check_files: bool) {
        let Some(tesla) = &self.fleetgate.tesla else {
            return;
        };
        f.extend_both(tesla.problems(base, check_files));
        if tesla.reconciler_enabled() {
            if self.fleetgate.admin.is_none() {
                f.issue("fleetgate.tesla.client_id", "accounts and vehicles are managed through the admin API (`/v1/tesla`): configure fleetgate.admin");
            }
            if self.fleetgate.cluster.is_none() && self.fleetgate.data_dir.is_none() {
                f.warn("fleetgate.tesla: fleetgate.data_dir is not set, so Tesla accounts and onboarded vehicles are lost on restart");
            }
        }
        if check_files {
            match crate::tesla::telemetry_config::check_config_chain(self, tesla, base) {
                Ok(check) => {
                    for w in check.warnings {
                        f.warn(format!("fleetgate.tesla.ca_file: {w}"));
                    }
                }
                Err(e) => f.issue("fleetgate.tesla.ca_file", e),
            }
        }
    }

    /// Keys of Tesla's server that fleetgate reads and ignores, and unknown keys.
    fn reference_keys(&self, f: &mut Findings) {
        for key in &self.unknown_keys {
            f.warn(super::unknown_key_warning(key));
        }
        for (key, set, what) in [
            ("kinesis", self.kinesis.is_some(), "the Kinesis sink"),
            ("pubsub", self.pubsub.is_some(), "the Google Pub/Sub sink"),
            ("zmq", self.zmq.is_some(), "the ZeroMQ sink"),
            ("nats", self.nats.is_some(), "the NATS sink"),
            (
                "airbrake",
                self.airbrake.is_some(),
                "Airbrake error reporting",
            ),
        ] {
            if set {
                f.warn(format!(
                    "config key `{key}` configures {what} of Tesla's server, which fleetgate does not implement: the section is ignored"
                ));
            }
        }
        if self.reliable_ack.is_some() {
            f.warn("config key `reliable_ack` is Tesla's older switch and is ignored: list topics in `reliable_ack_sources` (e.g. {\"V\": \"kafka\"})");
        }
        if self.reliable_ack_workers.is_some() {
            f.warn("config key `reliable_ack_workers` is ignored: fleetgate acks from each connection's own task");
        }
        if let Some(m) = &self.monitoring {
            if m.statsd.is_some() {
                f.warn("config key `monitoring.statsd` is not used by fleetgate (metrics are Prometheus only)");
            }
            if m.profiling_path.is_some() {
                f.warn("config key `monitoring.profiling_path` is not used by fleetgate");
            }
            if m.profiler_port.is_some() {
                f.warn("config key `monitoring.profiler_port` is not served by fleetgate");
            }
        }
    }

    /// `data_connectors`: only the file connector's `vin_allowed` is implemented.
    fn data_connectors(&self, f: &mut Findings, base: &Path, check_files: bool) {
        let Some(dc) = &self.data_connectors else {
            return;
        };
        for (key, set) in [
            ("redis", dc.redis.is_some()),
            ("http", dc.http.is_some()),
            ("grpc", dc.grpc.is_some()),
        ] {
            if set {
                f.warn(format!("config key `data_connectors.{key}` is not implemented by fleetgate and is ignored: use `data_connectors.file`, `fleetgate.vins` or the admin API's /v1/vins"));
            }
        }
        let Some(file) = &dc.file else { return };
        for cap in &file.capabilities {
            if cap != "vin_allowed" {
                f.warn(format!("data_connectors.file.capabilities: `{cap}` is not a capability fleetgate knows (vin_allowed is)"));
            }
        }
        match file.vin_allowed_path() {
            Some(_) if !check_files => {}
            Some(p) => {
                let path = Config::resolve(base, p);
                if let Err(e) = crate::ingest::vins::read_allowed_file(&path) {
                    f.issue("data_connectors.file.path", e);
                }
            }
            None if file.capabilities.iter().any(|c| c == "vin_allowed") => f.issue(
                "data_connectors.file.path",
                "missing: set it to a JSON file {\"vins_allowed\": [\"VIN\", ...]}",
            ),
            None => {}
        }
    }

    /// What cluster mode needs of the rest of the config.
    fn cluster_needs(&self, f: &mut Findings) {
        if self.kafka.is_none() {
            f.issue(
                "fleetgate.cluster",
                "cluster mode shares state through Kafka: add the top-level `kafka` section ({\"bootstrap.servers\": \"host:9092\"})",
            );
        }
        // the rules read the V records from Kafka: they must be there, whole, as protobuf
        if !self.sinks_for("V").iter().any(|s| s == "kafka") {
            f.issue("records.V", "cluster mode runs the rules from the V records in Kafka: route V to `kafka` (e.g. \"V\": [\"kafka\"])");
        }
        if self.transmit_decoded_records {
            f.issue(
                "transmit_decoded_records",
                "cluster mode reads the V records back as protobuf: set it to false",
            );
        }
        if self.fleetgate.changes_only.enabled_for_v() {
            f.issue(
                "fleetgate.changes_only.topics",
                "cluster mode's rules need every V datum in Kafka: remove V from changes_only",
            );
        }
        if !self.event_sinks().iter().any(|s| s == "kafka") {
            f.issue(
                "fleetgate.events.sinks",
                "cluster mode commits events to Kafka with the rule state: include `kafka`",
            );
        }
    }

    /// `tls`: fleetgate is mTLS only.
    fn tls(&self, f: &mut Findings, base: &Path, check_files: bool) {
        let Some(tls) = &self.tls else {
            f.issue(
                "tls",
                "missing: fleetgate is mTLS only; set tls.server_cert, tls.server_key and tls.ca_file (`fleetgate certs dev --out DIR` makes a dev set)",
            );
            return;
        };
        for (key, value, what) in [
            (
                "tls.server_cert",
                &tls.server_cert,
                "the server certificate (PEM)",
            ),
            (
                "tls.server_key",
                &tls.server_key,
                "the server private key (PEM)",
            ),
        ] {
            if value.is_empty() {
                f.issue(key, format!("missing: set it to {what}"));
            } else if check_files {
                let path = Config::resolve(base, value);
                if !path.is_file() {
                    f.issue(key, format!("file {} does not exist or is not a file: fix the path (relative paths are relative to the config file)", path.display()));
                }
            }
        }
        if check_files && !tls.ca_file.is_empty() {
            let path = Config::resolve(base, &tls.ca_file);
            if !path.is_file() {
                f.issue("tls.ca_file", format!("file {} does not exist or is not a file: fix the path (relative paths are relative to the config file), or remove the key to trust Tesla's embedded vehicle CAs", path.display()));
            }
        }
    }

    /// The MQTT sink: its settings, and what reliable acks need of it.
    fn mqtt(&self, f: &mut Findings, base: &Path, check_files: bool) {
        let Some(mqtt) = &self.mqtt else { return };
        let routed = self.records.values().any(|s| s.iter().any(|s| s == "mqtt"))
            || self.event_sinks().iter().any(|s| s == "mqtt");
        if !routed {
            f.warn("config key `mqtt` is set but nothing routes to it: add \"mqtt\" to a topic of `records` (e.g. {\"V\": [\"mqtt\"]}) or to fleetgate.events.sinks");
        }
        match crate::sinks::mqtt::MqttSettings::from_config(mqtt, &self.fleetgate.mqtt, base) {
            Err(problems) => f.extend(problems),
            Ok(settings) => {
                if check_files {
                    if let Some(ca) = settings.ca_file.as_ref().filter(|ca| !ca.is_file()) {
                        f.issue(
                            "fleetgate.mqtt.ca_file",
                            format!("{} is not a readable file", ca.display()),
                        );
                    }
                }
                for (topic, sink) in &self.reliable_ack_sources {
                    if sink == "mqtt" && mqtt.qos == 0 {
                        f.issue(&format!("reliable_ack_sources.{topic}"), "acks after `mqtt` need the broker's confirmation: set mqtt.qos to 1 (or 2)");
                    }
                }
            }
        }
    }

    /// The webhook sink: its settings, and whether its receivers' topics are routed to it.
    fn webhook(&self, f: &mut Findings, base: &Path, check_files: bool) {
        let routed = self
            .records
            .values()
            .any(|s| s.iter().any(|s| s == "webhook"))
            || self.event_sinks().iter().any(|s| s == "webhook");
        let Some(webhook) = &self.fleetgate.webhook else {
            if routed {
                f.issue("fleetgate.webhook", "`webhook` is routed to but has no section: add {\"endpoints\": [{\"name\": \"orders\", \"url\": \"https://…\", \"secret\": \"whsec_…\"}]}");
            }
            return;
        };
        if !routed {
            f.warn("fleetgate.webhook is set but nothing routes to it: add \"webhook\" to fleetgate.events.sinks (or to a topic of `records`)");
        }
        // Standard Webhooks' recommendations, which receivers built for the standard expect
        if !(15_000..=30_000).contains(&webhook.timeout_ms) {
            f.warn(format!("fleetgate.webhook.timeout_ms: {} ms is outside the 15–30 s Standard Webhooks recommends; a receiver that takes longer is retried although it may have processed the message", webhook.timeout_ms));
        }
        if webhook.dead_letter_after_s < 86_400 {
            f.warn(format!("fleetgate.webhook.dead_letter_after_s: {} s gives a receiver less than a day to come back before its messages are dead-lettered (Standard Webhooks recommends retries spanning multiple days)", webhook.dead_letter_after_s));
        }
        let data_dir = self
            .fleetgate
            .data_dir
            .as_ref()
            .map(|d| Config::resolve(base, d));
        match crate::sinks::webhook::WebhookSettings::from_config(
            webhook,
            data_dir.as_deref(),
            base,
            check_files,
        ) {
            Err(problems) => f.extend(problems),
            Ok(settings) => {
                for (i, e) in settings.endpoints.iter().enumerate() {
                    for topic in e.topics.iter().flatten() {
                        if !self
                            .sinks_for(topic.as_str())
                            .iter()
                            .any(|s| s == "webhook")
                        {
                            f.warn(format!("fleetgate.webhook.endpoints[{i}].topics: `{}` is not routed to `webhook` in `records`, so none of its records reach `{}`", topic.as_str(), e.name));
                        }
                    }
                }
                if check_files {
                    if let Some(ca) = settings.ca_file.as_ref().filter(|ca| !ca.is_file()) {
                        f.issue(
                            "fleetgate.webhook.ca_file",
                            format!("{} is not a readable file", ca.display()),
                        );
                    }
                }
            }
        }
    }

    /// `records`, `reliable_ack_sources` and `fleetgate.events.sinks`: every route names a sink
    /// fleetgate has, with its section.
    fn routing(&self, f: &mut Findings) {
        if self.records.is_empty() {
            f.warn("`records` is empty: frames are acked but sent nowhere");
        }
        for (topic, sinks) in &self.records {
            if Topic::from_wire(topic.as_bytes()).is_none() {
                f.warn(format!("records.{topic}: topic has no known schema; its frames are acked and counted, never dispatched"));
            }
            for sink in sinks {
                if SINK_NAMES.contains(&sink.as_str()) {
                    continue;
                }
                let why = if REFERENCE_ONLY_SINKS.contains(&sink.as_str()) {
                    format!("sink `{sink}` of Tesla's server is not implemented by fleetgate")
                } else {
                    format!("unknown sink `{sink}`")
                };
                f.issue(
                    &format!("records.{topic}"),
                    format!("{why}: use one of {SINK_NAMES:?}"),
                );
            }
            if sinks.iter().any(|s| s == "mqtt") && self.mqtt.is_none() {
                f.issue(&format!("records.{topic}"), "routes to `mqtt` but there is no `mqtt` section: add {\"broker\": \"host:1883\", \"topic_base\": \"telemetry\", \"qos\": 1}");
            }
            if sinks.iter().any(|s| s == "kafka") && self.kafka.is_none() {
                f.issue(&format!("records.{topic}"), "routes to `kafka` but there is no `kafka` section: add {\"bootstrap.servers\": \"host:9092\"}");
            }
        }
        for (topic, sink) in &self.reliable_ack_sources {
            if !self.records.get(topic).is_some_and(|s| s.contains(sink)) {
                f.issue(
                    &format!("reliable_ack_sources.{topic}"),
                    format!("sink `{sink}` is not among records.{topic}: add it there or remove this entry"),
                );
            }
            // Tesla's server refuses both; fleetgate accepts them (a logger-confirmed ack is
            // how its own tests and some users pace vehicles) and says what they mean
            if sink == "logger" {
                f.warn(format!(
                    "reliable_ack_sources.{topic}: the logger sink confirms at once, so this acks as without the entry (Tesla's server refuses logger here); reliable acks matter for kafka and mqtt"
                ));
            }
            if topic == "connectivity" {
                f.warn("reliable_ack_sources.connectivity: connectivity records are made by the server, not sent by the vehicle, so nothing is acked after them (Tesla's server refuses this entry): remove it");
            }
        }
        for sink in self.fleetgate.events.sinks.iter().flatten() {
            if !SINK_NAMES.contains(&sink.as_str()) {
                f.issue(
                    "fleetgate.events.sinks",
                    format!("unknown sink `{sink}`: use one of {SINK_NAMES:?}"),
                );
            }
            if sink == "kafka" && self.kafka.is_none() {
                f.issue("fleetgate.events.sinks", "`kafka` needs a `kafka` section");
            }
            if sink == "mqtt" && self.mqtt.is_none() {
                f.issue("fleetgate.events.sinks", "`mqtt` needs an `mqtt` section");
            }
        }
    }

    /// Process-wide settings: the rate limit, the log level, per-VIN metric tracking.
    fn process(&self, f: &mut Findings) {
        if let Some(rl) = &self.rate_limit {
            if rl.message_limit == 0 {
                f.issue("rate_limit.message_limit", "must be at least 1");
            }
            if rl.message_interval_time == 0 {
                f.issue(
                    "rate_limit.message_interval_time",
                    "must be at least 1 second",
                );
            }
        }
        if let Some(level) = &self.log_level {
            if !["error", "warn", "warning", "info", "debug", "trace"]
                .contains(&level.to_ascii_lowercase().as_str())
            {
                f.issue(
                    "log_level",
                    format!("`{level}` is not a level: use error, warn, info, debug or trace"),
                );
            }
        }
        if self.vins_signal_tracking_enabled.len() > 20 {
            f.issue(
                "vins_signal_tracking_enabled",
                format!(
                    "{} VINs listed; at most 20 keep metric cardinality bounded",
                    self.vins_signal_tracking_enabled.len()
                ),
            );
        }
    }
}
