//! `fleetgate.webhook`: the receivers, what each gets, and the outbox; checked once into
//! [`WebhookSettings`] with every problem reported together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::event::EventType;
use crate::wire::Topic;

/// `fleetgate.webhook`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The receivers.
    pub endpoints: Vec<EndpointConfig>,
    /// Folder of the durable outbox (default `{data_dir}/webhook-outbox`; one of the two is
    /// required).
    #[serde(default)]
    pub outbox_dir: Option<String>,
    /// Where messages older than `dead_letter_after_s` go, one JSON line each (default
    /// `{outbox_dir}/dead-letter.jsonl`).
    #[serde(default)]
    pub dead_letter_file: Option<String>,
    /// Age after which an undeliverable message is moved to the dead-letter file (s).
    #[serde(default = "WebhookConfig::default_dead_letter_after_s")]
    pub dead_letter_after_s: u64,
    /// Timeout of one POST, connecting included (ms).
    #[serde(default = "WebhookConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// First retry delay (ms); doubles per failed attempt, with jitter.
    #[serde(default = "WebhookConfig::default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay (ms).
    #[serde(default = "WebhookConfig::default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Requests in flight per receiver (each to a different vehicle: one vehicle's messages go
    /// one at a time, in order).
    #[serde(default = "WebhookConfig::default_max_in_flight")]
    pub max_in_flight: usize,
    /// Messages the outbox may hold before new ones are refused (their frames are not acked).
    #[serde(default = "WebhookConfig::default_max_outbox_messages")]
    pub max_outbox_messages: usize,
    /// PEM CA bundle receivers' certificates must chain to (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<String>,
}

impl WebhookConfig {
    // Standard Webhooks' operational recommendations: retries spanning multiple days with
    // exponential backoff and jitter, and a request timeout of 15 to 30 s
    fn default_dead_letter_after_s() -> u64 {
        3 * 86_400
    }
    fn default_timeout_ms() -> u64 {
        15_000
    }
    fn default_retry_initial_ms() -> u64 {
        1_000
    }
    fn default_retry_max_ms() -> u64 {
        300_000
    }
    fn default_max_in_flight() -> usize {
        32
    }
    fn default_max_outbox_messages() -> usize {
        1_000_000
    }
}

/// One receiver of `fleetgate.webhook.endpoints`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Short name (metrics label, outbox key): letters, digits, `-`, `_`.
    pub name: String,
    /// Where to POST (`https://…`; `http://` is allowed, with a warning off loopback).
    pub url: String,
    /// Event types it gets: exact types, `prefix.*` or `*` (default: every event).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Record topics it gets (`V`, `alerts`, `errors`, `connectivity`; default: every topic
    /// `records` routes to `webhook`).
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// CloudEvents HTTP content mode: `structured` (default) or `binary`.
    #[serde(default)]
    pub content_mode: Option<String>,
    /// Signing secret, Standard Webhooks form `whsec_<base64>`.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (a mounted secret; a trailing newline is dropped).
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Extra request headers (e.g. an API key the receiver wants).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// How a CloudEvent is put in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    /// The whole event as JSON, `Content-Type: application/cloudevents+json`.
    Structured,
    /// `data` as the body, the attributes as `ce-*` headers.
    Binary,
}

/// Which events an endpoint gets.
#[derive(Debug, Clone)]
pub enum EventFilter {
    /// Every event.
    All,
    /// These types (exact) and prefixes (from `prefix.*`).
    Some {
        /// Exact types.
        exact: Vec<String>,
        /// Prefixes, ending in `.`.
        prefixes: Vec<String>,
    },
}

impl EventFilter {
    /// True when `event_type` passes.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventFilter::All => true,
            EventFilter::Some { exact, prefixes } => {
                exact.iter().any(|e| e == event_type)
                    || prefixes.iter().any(|p| event_type.starts_with(p.as_str()))
            }
        }
    }
}

/// One receiver, checked.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: reqwest::Url,
    /// Events it gets.
    pub events: EventFilter,
    /// Topics it gets (`None`: every topic routed to the sink).
    pub topics: Option<Vec<Topic>>,
    /// Content mode.
    pub mode: ContentMode,
    /// The decoded signing key, when it signs.
    pub key: Option<Vec<u8>>,
    /// Extra headers.
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
}

impl Endpoint {
    /// True when records of `topic` go to this endpoint.
    pub fn takes(&self, topic: Topic) -> bool {
        self.topics.as_ref().is_none_or(|t| t.contains(&topic))
    }
}

/// `fleetgate.webhook`, checked.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The receivers.
    pub endpoints: Vec<Endpoint>,
    /// The outbox's folder.
    pub outbox_dir: PathBuf,
    /// The dead-letter file.
    pub dead_letter_file: PathBuf,
    /// Dead-letter age.
    pub dead_letter_after: Duration,
    /// One POST's timeout.
    pub timeout: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Requests in flight per receiver.
    pub max_in_flight: usize,
    /// Outbox capacity.
    pub max_outbox_messages: usize,
    /// CA bundle.
    pub ca_file: Option<PathBuf>,
}

/// The environment variable that holds the secret of endpoint `name` (upper case, `-` → `_`);
/// it wins over `secret` and `secret_file`.
pub fn secret_env(name: &str) -> String {
    format!(
        "FLEETGATE_WEBHOOK_SECRET_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// Decodes a `whsec_<base64>` secret into its key.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.trim().strip_prefix("whsec_").ok_or(
        "must be a Standard Webhooks secret `whsec_<base64>`: make one with `echo whsec_$(openssl rand -base64 32)`",
    )?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the part after `whsec_` is not base64: {e}"))?;
    // the Standard Webhooks specification: secrets of 24 to 64 bytes
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "decodes to {} bytes; Standard Webhooks secrets are 24 to 64 bytes (32 recommended)",
            key.len()
        ));
    }
    Ok(key)
}

impl WebhookSettings {
    /// Checks the section; `data_dir` is `fleetgate.data_dir` (resolved), `base` the config's
    /// folder. With `read_secrets` off, secret files are not read (config checks elsewhere).
    /// Every problem as (key, problem).
    pub fn from_config(
        c: &WebhookConfig,
        data_dir: Option<&Path>,
        base: &Path,
        read_secrets: bool,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut issue = |k: String, p: String| problems.push((k, p));
        if c.endpoints.is_empty() {
            issue(
                "fleetgate.webhook.endpoints".into(),
                "lists no receiver: add {\"name\": \"orders\", \"url\": \"https://…\"}".into(),
            );
        }
        let mut endpoints = Vec::new();
        for (i, e) in c.endpoints.iter().enumerate() {
            let key = |k: &str| format!("fleetgate.webhook.endpoints[{i}].{k}");
            if e.name.is_empty()
                || e.name.len() > 64
                || !e
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                issue(
                    key("name"),
                    format!("`{}`: use 1 to 64 letters, digits, `-` or `_`", e.name),
                );
            }
            if c.endpoints[..i].iter().any(|o| o.name == e.name) {
                issue(key("name"), format!("duplicate `{}`", e.name));
            }
            let url = match reqwest::Url::parse(&e.url) {
                Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {
                    if u.host_str().is_none() {
                        issue(key("url"), format!("`{}` names no host", e.url));
                    }
                    Some(u)
                }
                Ok(u) => {
                    issue(
                        key("url"),
                        format!("scheme `{}` is not supported: use https://", u.scheme()),
                    );
                    None
                }
                Err(err) => {
                    issue(key("url"), format!("`{}` is not a URL: {err}", e.url));
                    None
                }
            };
            let events = match &e.events {
                None => EventFilter::All,
                Some(list) if list.iter().any(|p| p == "*") => EventFilter::All,
                Some(list) => {
                    let mut exact = Vec::new();
                    let mut prefixes = Vec::new();
                    for p in list {
                        if let Some(prefix) = p.strip_suffix('*') {
                            if prefix.ends_with('.')
                                && EventType::ALL
                                    .iter()
                                    .any(|t| t.as_str().starts_with(prefix))
                            {
                                prefixes.push(prefix.to_owned());
                                continue;
                            }
                        } else if EventType::ALL.iter().any(|t| t.as_str() == p) {
                            exact.push(p.clone());
                            continue;
                        }
                        issue(key("events"), format!("`{p}` matches no event type: use a type (e.g. `fleetgate.arrival.arrived`), a prefix like `fleetgate.arrival.*`, or `*`"));
                    }
                    EventFilter::Some { exact, prefixes }
                }
            };
            let topics = e.topics.as_ref().map(|list| {
                list.iter()
                    .filter_map(|t| {
                        let topic = Topic::from_wire(t.as_bytes());
                        if topic.is_none() {
                            issue(
                                key("topics"),
                                format!("`{t}` is not a record topic: use V, alerts, errors or connectivity"),
                            );
                        }
                        topic
                    })
                    .collect::<Vec<_>>()
            });
            let mode = match e.content_mode.as_deref().unwrap_or("structured") {
                "structured" => ContentMode::Structured,
                "binary" => ContentMode::Binary,
                other => {
                    issue(
                        key("content_mode"),
                        format!("`{other}`: use \"structured\" or \"binary\""),
                    );
                    ContentMode::Structured
                }
            };
            let mut secret = std::env::var(secret_env(&e.name))
                .ok()
                .filter(|s| !s.is_empty());
            if secret.is_none() && read_secrets {
                if let Some(file) = &e.secret_file {
                    let path = base.join(file);
                    match std::fs::read_to_string(&path) {
                        Ok(s) => secret = Some(s.trim_end_matches(['\n', '\r']).to_owned()),
                        Err(err) => issue(
                            key("secret_file"),
                            format!("cannot read {}: {err}", path.display()),
                        ),
                    }
                }
            }
            if secret.is_none() {
                secret = e.secret.clone();
            }
            let key_bytes = match secret.as_deref().map(decode_secret) {
                Some(Ok(k)) => Some(k),
                Some(Err(p)) => {
                    issue(key("secret"), p);
                    None
                }
                None => None,
            };
            let mut headers = Vec::new();
            for (name, value) in &e.headers {
                match (
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                    reqwest::header::HeaderValue::from_str(value),
                ) {
                    (Ok(n), Ok(v)) => {
                        let lower = n.as_str();
                        if lower.starts_with("ce-")
                            || lower.starts_with("webhook-")
                            || lower == "content-type"
                            || lower == "content-length"
                        {
                            issue(
                                key(&format!("headers.{name}")),
                                "is set by fleetgate itself".into(),
                            );
                        } else {
                            headers.push((n, v));
                        }
                    }
                    _ => issue(
                        key(&format!("headers.{name}")),
                        "is not a valid HTTP header name and value".into(),
                    ),
                }
            }
            if let Some(url) = url {
                endpoints.push(Endpoint {
                    name: e.name.clone(),
                    url,
                    events,
                    topics,
                    mode,
                    key: key_bytes,
                    headers,
                });
            }
        }
        let outbox_dir = match (&c.outbox_dir, data_dir) {
            (Some(d), _) => Some(base.join(d)),
            (None, Some(d)) => Some(d.join("webhook-outbox")),
            (None, None) => {
                issue(
                    "fleetgate.webhook.outbox_dir".into(),
                    "the webhook sink keeps undelivered messages on disk: set fleetgate.data_dir or fleetgate.webhook.outbox_dir".into(),
                );
                None
            }
        };
        for (k, v) in [
            ("timeout_ms", c.timeout_ms),
            ("retry_initial_ms", c.retry_initial_ms),
            ("retry_max_ms", c.retry_max_ms),
            ("dead_letter_after_s", c.dead_letter_after_s),
            ("max_in_flight", c.max_in_flight as u64),
            ("max_outbox_messages", c.max_outbox_messages as u64),
        ] {
            if v == 0 {
                issue(
                    format!("fleetgate.webhook.{k}"),
                    "must be at least 1".into(),
                );
            }
        }
        if c.retry_max_ms < c.retry_initial_ms {
            issue(
                "fleetgate.webhook.retry_max_ms".into(),
                "must be at least retry_initial_ms".into(),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let outbox_dir = outbox_dir.expect("checked above");
        Ok(Self {
            endpoints,
            dead_letter_file: c
                .dead_letter_file
                .as_ref()
                .map(|f| base.join(f))
                .unwrap_or_else(|| outbox_dir.join("dead-letter.jsonl")),
            outbox_dir,
            dead_letter_after: Duration::from_secs(c.dead_letter_after_s),
            timeout: Duration::from_millis(c.timeout_ms),
            retry_initial: Duration::from_millis(c.retry_initial_ms),
            retry_max: Duration::from_millis(c.retry_max_ms),
            max_in_flight: c.max_in_flight,
            max_outbox_messages: c.max_outbox_messages,
            ca_file: c.ca_file.as_ref().map(|f| base.join(f)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_24_to_64_bytes_as_standard_webhooks_says() {
        use base64::Engine as _;
        let of = |n: usize| {
            format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(vec![7u8; n])
            )
        };
        assert!(decode_secret(&of(23)).unwrap_err().contains("24 to 64"));
        assert_eq!(decode_secret(&of(24)).unwrap().len(), 24);
        assert_eq!(decode_secret(&of(64)).unwrap().len(), 64);
        assert!(decode_secret(&of(65)).is_err());
    }

    fn parse(v: serde_json::Value) -> Result<WebhookSettings, Vec<(String, String)>> {
        let c: WebhookConfig = serde_json::from_value(v).unwrap();
        WebhookSettings::from_config(&c, Some(Path::new("/data")), Path::new("/etc"), true)
    }

    #[test]
    fn a_full_endpoint_is_read() {
        let s = parse(
            serde_json::json!({"endpoints": [{"name": "orders", "url": "https://h.example/x",
            "events": ["fleetgate.arrival.*", "fleetgate.charging.started"], "topics": ["V"],
            "content_mode": "binary", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "headers": {"x-api-key": "k"}}]}),
        )
        .unwrap();
        let e = &s.endpoints[0];
        assert_eq!(e.mode, ContentMode::Binary);
        assert!(e.events.matches("fleetgate.arrival.arrived"));
        assert!(e.events.matches("fleetgate.charging.started"));
        assert!(!e.events.matches("fleetgate.charging.stopped"));
        assert!(e.takes(Topic::Vehicle) && !e.takes(Topic::Alerts));
        assert_eq!(e.key.as_ref().unwrap().len(), 24);
        assert_eq!(s.outbox_dir, Path::new("/data/webhook-outbox"));
        assert_eq!(
            s.dead_letter_file,
            Path::new("/data/webhook-outbox/dead-letter.jsonl")
        );
    }

    #[test]
    fn every_problem_is_named_together() {
        let c: WebhookConfig = serde_json::from_value(serde_json::json!({"endpoints": [
            {"name": "a b", "url": "ftp://x", "events": ["fleetgate.nope"], "topics": ["Q"],
             "content_mode": "xml", "secret": "plain", "headers": {"ce-id": "1"}},
            {"name": "a b", "url": "not a url"}], "retry_initial_ms": 5000, "retry_max_ms": 10}))
        .unwrap();
        let problems = WebhookSettings::from_config(&c, None, Path::new("/"), true).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "fleetgate.webhook.endpoints[0].name",
            "fleetgate.webhook.endpoints[0].url",
            "fleetgate.webhook.endpoints[0].events",
            "fleetgate.webhook.endpoints[0].topics",
            "fleetgate.webhook.endpoints[0].content_mode",
            "fleetgate.webhook.endpoints[0].secret",
            "fleetgate.webhook.endpoints[0].headers.ce-id",
            "fleetgate.webhook.endpoints[1].name",
            "fleetgate.webhook.endpoints[1].url",
            "fleetgate.webhook.outbox_dir",
            "fleetgate.webhook.retry_max_ms",
        ] {
            assert!(keys.contains(&k), "{k} missing from {problems:?}");
        }
    }
}
