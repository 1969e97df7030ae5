//! Shared Kafka client code, used by the Kafka sink and by cluster mode alike: how a client is
//! configured from the user's `kafka` section (safe producer defaults, connection-only
//! properties for consumers and admin clients, secrets from the environment or a file, a
//! dry-run check of every property), topic names, topic creation and checks ([`topics`]),
//! transactional producers and group metadata ([`txn`]), the start-up wait for the brokers
//! ([`startup`]), consumer groups' start offsets and
//! assignments ([`group`]), plain readers of whole topics ([`reader`]) and the CloudEvents
//! Kafka binding of events ([`cloudevents`]).
//!
//! Knows librdkafka and the event model; never the rules, the sinks' routing or sockets.

pub mod cloudevents;
pub mod group;
pub mod reader;
pub mod startup;
pub mod topics;
pub mod txn;

use std::time::Duration;

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Producer settings fleetgate adds when the user's `kafka` object does not set them.
pub const SAFE_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // librdkafka's own default, written out: 1 ms bought no ack latency once the frame path got
    // cheaper, and in cluster mode every V batch is also a fetch of the rules' consumer, so 1 ms
    // cost ~40 µs of CPU per frame (docs/benchmarks.md, "linger.ms 1 → 5")
    ("linger.ms", "5"),
    ("compression.type", "lz4"),
    ("statistics.interval.ms", "1000"),
    ("queue.buffering.max.kbytes", "131072"),
];

/// librdkafka properties whose values are secrets: never logged, never shown in errors.
pub const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
];

/// Environment variable that supplies `sasl.password` (wins over the file and the config).
pub const SASL_PASSWORD_ENV: &str = "FLEETGATE_KAFKA_SASL_PASSWORD";

/// `fleetgate.kafka`: what the `kafka` section (librdkafka's own keys) has no key for.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KafkaExtrasConfig {
    /// File holding `sasl.password` (a mounted secret; a trailing newline is dropped).
    /// `FLEETGATE_KAFKA_SASL_PASSWORD` wins over it; both win over `kafka.sasl.password`.
    #[serde(default)]
    pub sasl_password_file: Option<String>,
}

/// Why a Kafka operation of fleetgate's own (topics, transactions, readers) failed. Every
/// message names what was being done and what to check.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A Kafka call failed.
    #[error("kafka: {what}: {error} — check that the brokers in `kafka` are reachable and that this principal may write and read the fleetgate topics (docs/cluster.md)")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// What Kafka said.
        error: String,
    },
    /// A topic exists with settings fleetgate cannot use, or could not be created.
    #[error("kafka: topic `{topic}` {problem}")]
    Topic {
        /// The topic.
        topic: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Kafka did not answer in time.
    #[error("kafka: {what} did not finish within {after:?}; nothing was applied — retry when Kafka answers (see /healthz/sinks)")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The client could not be configured (the message of a [`SetupError`]).
    #[error("{0}")]
    Setup(String),
}

impl From<SetupError> for Error {
    fn from(e: SetupError) -> Self {
        Error::Setup(e.to_string())
    }
}

/// Maps an rdkafka error to [`Error::Kafka`] saying what was being done.
pub fn err(what: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> Error {
    move |e| Error::Kafka {
        what,
        error: e.to_string(),
    }
}

/// Why the Kafka producer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// librdkafka refused a property.
    #[error("kafka: librdkafka refused the configuration: {0} (check the `kafka` section's keys against librdkafka's CONFIGURATION.md)")]
    Config(#[from] rdkafka::error::KafkaError),
    /// A property value is not a string, number or boolean.
    #[error("kafka.{0}: value must be a string, number or boolean")]
    Value(String),
    /// The SASL password file could not be read.
    #[error("fleetgate.kafka.sasl_password_file: cannot read {path}: {detail}")]
    PasswordFile {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
}

fn property_value(key: &str, value: &Value) -> Result<String, SetupError> {
    Ok(match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            (_, _, Some(f)) => f.to_string(),
            _ => return Err(SetupError::Value(key.to_owned())),
        },
        _ => return Err(SetupError::Value(key.to_owned())),
    })
}

/// The producer configuration: the user's properties unchanged, plus [`SAFE_DEFAULTS`] for
/// the keys they did not set.
pub fn client_config(
    properties: &serde_json::Map<String, Value>,
) -> Result<ClientConfig, SetupError> {
    let mut config = ClientConfig::new();
    for (key, value) in properties {
        config.set(key, property_value(key, value)?);
    }
    for (key, value) in SAFE_DEFAULTS {
        if !properties.contains_key(*key) {
            config.set(*key, *value);
        }
    }
    with_ca_probe(&mut config, properties);
    Ok(config)
}

/// Prefixes of the librdkafka properties that say how to reach and authenticate to the
/// cluster (not how to produce): what consumers and admin clients take from `kafka`.
const CONNECTION_PREFIXES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "security.protocol",
    "sasl.",
    "ssl.",
    "ssl_",
    "enable.ssl",
    "client.id",
    "client.dns.lookup",
    "socket.",
    "broker.",
    "api.version",
    "reconnect.",
    "allow.auto.create.topics",
    "https.",
    "enable.sasl",
];

/// A client configuration with only the connection and security properties of `kafka`
/// (for consumers and admin clients, which refuse or warn about producer properties).
pub fn connection_config(
    properties: &serde_json::Map<String, Value>,
) -> Result<ClientConfig, SetupError> {
    let mut config = ClientConfig::new();
    for (key, value) in properties {
        if CONNECTION_PREFIXES.iter().any(|p| key.starts_with(p)) {
            config.set(key, property_value(key, value)?);
        }
    }
    with_ca_probe(&mut config, properties);
    Ok(config)
}

/// OpenSSL is built in, so its compiled-in CA path is not the system's: find the system
/// bundle unless the user names one.
fn with_ca_probe(config: &mut ClientConfig, properties: &serde_json::Map<String, Value>) {
    let tls = properties
        .get("security.protocol")
        .and_then(Value::as_str)
        .is_some_and(|p| p.eq_ignore_ascii_case("ssl") || p.eq_ignore_ascii_case("sasl_ssl"));
    if tls && !properties.contains_key("ssl.ca.location") && !properties.contains_key("ssl.ca.pem")
    {
        config.set("ssl.ca.location", "probe");
    }
}

/// The user's properties with the SASL password filled in from the environment
/// ([`SASL_PASSWORD_ENV`]) or `fleetgate.kafka.sasl_password_file`, in that order.
pub fn with_secrets(
    properties: &serde_json::Map<String, Value>,
    extras: &KafkaExtrasConfig,
    base: &std::path::Path,
) -> Result<serde_json::Map<String, Value>, SetupError> {
    let mut properties = properties.clone();
    if let Some(password) = std::env::var(SASL_PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty())
    {
        properties.insert("sasl.password".into(), password.into());
    } else if let Some(file) = &extras.sasl_password_file {
        let path = crate::paths::resolve(base, file);
        let text = std::fs::read_to_string(&path).map_err(|e| SetupError::PasswordFile {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(SetupError::PasswordFile {
                path: path.display().to_string(),
                detail: "the file is empty".into(),
            });
        }
        properties.insert("sasl.password".into(), password.into());
    }
    Ok(properties)
}

/// Checks the `kafka` section as librdkafka would, without connecting: every property is set on
/// a native configuration (unknown keys, values this build does not support, such as a
/// compression codec), and a SASL mechanism that needs a password has one. Returns
/// `(key, problem)` pairs; secrets are never part of a message.
pub fn check_properties(
    properties: &serde_json::Map<String, Value>,
    extras: &KafkaExtrasConfig,
    base: &std::path::Path,
    check_files: bool,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let properties = if !check_files && extras.sasl_password_file.is_some() {
        // the file is read on the machine the config is for
        let mut p = properties.clone();
        p.insert(
            "sasl.password".into(),
            "(from fleetgate.kafka.sasl_password_file)".into(),
        );
        p
    } else {
        match with_secrets(properties, extras, base) {
            Ok(p) => p,
            Err(e) => {
                problems.push(("fleetgate.kafka.sasl_password_file".into(), e.to_string()));
                return problems;
            }
        }
    };
    for (key, value) in &properties {
        let value = match property_value(key, value) {
            Ok(v) => v,
            Err(e) => {
                problems.push((format!("kafka.{key}"), e.to_string()));
                continue;
            }
        };
        let mut one = ClientConfig::new();
        one.set(key, &value);
        if let Err(e) = one.create_native_config() {
            let shown = if SECRET_PROPERTIES.contains(&key.as_str()) {
                "(secret)".to_owned()
            } else {
                format!("`{value}`")
            };
            let detail = e.to_string().replace(&value, "…");
            problems.push((
                format!("kafka.{key}"),
                format!("librdkafka refuses {shown}: {detail}"),
            ));
        }
    }
    let mechanism = properties
        .get("sasl.mechanisms")
        .or_else(|| properties.get("sasl.mechanism"))
        .and_then(Value::as_str)
        .unwrap_or("GSSAPI")
        .to_ascii_uppercase();
    let sasl = properties
        .get("security.protocol")
        .and_then(Value::as_str)
        .is_some_and(|p| p.to_ascii_uppercase().starts_with("SASL"));
    if sasl && (mechanism == "PLAIN" || mechanism.starts_with("SCRAM")) {
        if !properties.contains_key("sasl.username") {
            problems.push((
                "kafka.sasl.username".into(),
                format!("missing: SASL {mechanism} needs a user name"),
            ));
        }
        if !properties.contains_key("sasl.password") {
            problems.push((
                "kafka.sasl.password".into(),
                format!("missing: SASL {mechanism} needs a password: set {SASL_PASSWORD_ENV}, fleetgate.kafka.sasl_password_file, or kafka.sasl.password"),
            ));
        }
    }
    problems
}

/// A poll timeout rounded up to whole milliseconds. rust-rdkafka hands librdkafka whole
/// milliseconds rounded down and then polls again without blocking until the exact timeout
/// has passed, so a timeout with a fraction of a millisecond ends in a busy loop of up to 1 ms
/// (an idle rules loop spent ~1 % of a core that way); rounded up, it is one blocking call.
pub fn whole_ms(timeout: Duration) -> Duration {
    Duration::from_millis(timeout.as_micros().div_ceil(1000) as u64)
}

/// `{namespace}_{topic}`, or the bare topic when there is no namespace.
pub fn topic_name(namespace: &str, topic: &str) -> String {
    if namespace.is_empty() {
        topic.to_owned()
    } else {
        format!("{namespace}_{topic}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(whole_ms(Duration::ZERO), Duration::ZERO);
        assert_eq!(whole_ms(Duration::from_micros(1)), Duration::from_millis(1));
        assert_eq!(
            whole_ms(Duration::from_micros(99_001)),
            Duration::from_millis(100)
        );
        assert_eq!(
            whole_ms(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn user_properties_win_and_safe_defaults_fill_the_rest() {
        let props: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"bootstrap.servers": "k:9092", "acks": "1", "queue.buffering.max.messages": 1000000, "enable.ssl.certificate.verification": false}"#,
        )
        .unwrap();
        let c = client_config(&props).unwrap();
        assert_eq!(c.get("acks"), Some("1"));
        assert_eq!(c.get("queue.buffering.max.messages"), Some("1000000"));
        assert_eq!(c.get("enable.ssl.certificate.verification"), Some("false"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("bootstrap.servers"), Some("k:9092"));
    }

    #[test]
    fn topic_names_follow_the_namespace() {
        assert_eq!(topic_name("tesla_telemetry", "V"), "tesla_telemetry_V");
        assert_eq!(topic_name("", "alerts"), "alerts");
    }
}
