//! The MQTT sink's settings as they appear in the config: Tesla's `mqtt` section and
//! fleetgate's `fleetgate.mqtt` extras.

use serde::{Deserialize, Serialize};

/// `mqtt` (Tesla key): the MQTT sink, with the keys and defaults of Tesla's MQTT dispatcher.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct MqttConfig {
    /// `host:port` of the broker (`ssl://host:port` for TLS).
    #[serde(default)]
    pub broker: String,
    /// MQTT client id (default `fleetgate-<pid>`); unique per instance.
    #[serde(default)]
    pub client_id: String,
    /// Username, when the broker wants one.
    #[serde(default)]
    pub username: String,
    /// Password, when the broker wants one.
    #[serde(default)]
    pub password: String,
    /// Prefix of every topic: `{topic_base}/{VIN}/v/{Field}`.
    #[serde(default)]
    pub topic_base: String,
    /// QoS of every message: 0 (default), 1 or 2; reliable acks need 1 or 2.
    #[serde(default)]
    pub qos: u8,
    /// Publish every message retained.
    #[serde(default)]
    pub retained: bool,
    /// Connection timeout (ms, default 30000).
    #[serde(default)]
    pub connect_timeout_ms: u64,
    /// How long a message may wait for the broker's confirmation (ms, default 2500).
    #[serde(default)]
    pub publish_timeout_ms: u64,
    /// How long shutdown waits for in-flight messages (ms, default 250).
    #[serde(default)]
    pub disconnect_timeout_ms: u64,
    /// Pause between connection attempts (ms, default 10000).
    #[serde(default)]
    pub connect_retry_interval_ms: u64,
    /// MQTT keep-alive (s, default 30).
    #[serde(default)]
    pub keep_alive_seconds: u64,
}

/// `fleetgate.mqtt`: what Tesla's `mqtt` section has no key for.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MqttExtrasConfig {
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub protocol_version: Option<String>,
    /// PEM CA bundle for a TLS broker (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<String>,
}
