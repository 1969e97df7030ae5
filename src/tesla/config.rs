//! `fleetgate.tesla`: the partner key, what a vehicle's telemetry config says (hostname, port,
//! CA chain, fields), and the Fleet API the reconciler talks to (region, OAuth client, token
//! key). Each key is checked here ([`TeslaConfig::problems`]); what spans sections (the CA
//! chain against the served certificate) is checked by `config::validate`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::paths::resolve;

/// The client secret's environment variable (wins over `client_secret_file`).
pub const CLIENT_SECRET_ENV: &str = "FLEETGATE_TESLA_CLIENT_SECRET";
/// The token key's environment variable (wins over `token_key_file`).
pub const TOKEN_KEY_ENV: &str = "FLEETGATE_TESLA_TOKEN_KEY";

/// `fleetgate.tesla`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeslaConfig {
    /// The partner key (P-256 PEM, `fleetgate tesla keygen`): signs telemetry configs; its
    /// public half is served at `/.well-known/appspecific/com.tesla.3p.public-key.pem` on the
    /// status port.
    #[serde(default)]
    pub private_key_file: Option<String>,
    /// The host name vehicles connect to (the config's `hostname`).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The port vehicles connect to (an integer; default the vehicle listener's `port`).
    #[serde(default)]
    pub port: Option<u16>,
    /// The PEM chain vehicles trust to verify fleetgate's server certificate (the config's
    /// `ca`): the issuing CA up to its root.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Field name → interval (the config's `fields`); unset = the `preset`.
    #[serde(default)]
    pub fields: Option<BTreeMap<String, FieldConfig>>,
    /// A named field set: `arrival` (default: the signals the rules use) or `full`.
    #[serde(default)]
    pub preset: Option<Preset>,
    /// Alert types vehicles stream (the config's `alert_types`, e.g. `["service"]`).
    #[serde(default)]
    pub alert_types: Vec<String>,
    /// `latest` (default: the vehicle resends what was not acked, which reliable acks need)
    /// or `drop`.
    #[serde(default = "default_delivery_policy")]
    pub delivery_policy: String,
    /// Typed values instead of strings (default true).
    #[serde(default = "default_true")]
    pub prefer_typed: bool,
    /// Days a signed config is valid (its `exp`); the reconciler signs a new one when less
    /// than a third of this is left (default 90).
    #[serde(default = "default_ttl_days")]
    pub config_ttl_days: u32,
    /// Fleet API region: `na`, `eu` or `cn` (default `na`); `fleet_api_url` wins.
    #[serde(default)]
    pub region: Option<String>,
    /// The Fleet API's base URL (overrides `region`; `http://` only on loopback).
    #[serde(default)]
    pub fleet_api_url: Option<String>,
    /// The auth server's base (token endpoint `{auth_url}/oauth2/v3/token`).
    #[serde(default)]
    pub auth_url: Option<String>,
    /// The application's OAuth client id (turns the reconciler on).
    #[serde(default)]
    pub client_id: Option<String>,
    /// A file holding the client secret (`FLEETGATE_TESLA_CLIENT_SECRET` wins).
    #[serde(default)]
    pub client_secret_file: Option<String>,
    /// The domain registered with Tesla (where the public key is hosted; the pairing link
    /// is `https://tesla.com/_ak/{partner_domain}`).
    #[serde(default)]
    pub partner_domain: Option<String>,
    /// Seconds between checks of a vehicle that is streaming or in error (default 300).
    #[serde(default = "default_reconcile_interval_s")]
    pub reconcile_interval_s: u64,
    /// Seconds between checks of a vehicle being configured (waiting for `synced`), and the
    /// first step of a failing vehicle's backoff (default 30).
    #[serde(default = "default_poll_interval_s")]
    pub poll_interval_s: u64,
    /// A file holding the 32-byte token key as 64 hex characters (`FLEETGATE_TESLA_TOKEN_KEY`
    /// wins): access and refresh tokens are sealed with it at rest.
    #[serde(default)]
    pub token_key_file: Option<String>,
}

fn default_delivery_policy() -> String {
    "latest".into()
}
fn default_true() -> bool {
    true
}
fn default_ttl_days() -> u32 {
    90
}
fn default_reconcile_interval_s() -> u64 {
    300
}
fn default_poll_interval_s() -> u64 {
    30
}

/// How often a vehicle sends one field (Tesla's field config).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Seconds between sends of a changed value (at least 1).
    pub interval_seconds: u32,
    /// Send only when the value moved by at least this much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_delta: Option<f64>,
    /// Resend an unchanged value this often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_interval_seconds: Option<u32>,
}

impl FieldConfig {
    fn every(interval_seconds: u32) -> FieldConfig {
        FieldConfig {
            interval_seconds,
            minimum_delta: None,
            resend_interval_seconds: None,
        }
    }
}

/// A named set of fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The signals fleetgate's rules use, tuned for arrival: location every 5 s while it
    /// changes (resent every 5 min when parked), navigation and charging every 10–30 s.
    Arrival,
    /// Every field of Tesla's `vehicle_data.proto` (except deprecated and experimental ones),
    /// location every 5 s, the rest every 60 s.
    Full,
}

impl Preset {
    /// The field map of this preset.
    pub fn fields(self) -> BTreeMap<String, FieldConfig> {
        let mut fields = BTreeMap::new();
        match self {
            Preset::Arrival => {
                fields.insert(
                    "Location".into(),
                    FieldConfig {
                        interval_seconds: 5,
                        minimum_delta: None,
                        resend_interval_seconds: Some(300),
                    },
                );
                for (name, every) in [
                    ("GpsHeading", 30),
                    ("VehicleSpeed", 10),
                    ("DestinationLocation", 30),
                    ("MinutesToArrival", 30),
                    ("MilesToArrival", 30),
                    ("DetailedChargeState", 10),
                    ("ChargeLimitSoc", 60),
                    ("DCChargingEnergyIn", 60),
                    ("ACChargingEnergyIn", 60),
                    ("Odometer", 300),
                ] {
                    fields.insert(name.into(), FieldConfig::every(every));
                }
                for name in ["Soc", "BatteryLevel"] {
                    fields.insert(
                        name.into(),
                        FieldConfig {
                            interval_seconds: 60,
                            minimum_delta: Some(1.0),
                            resend_interval_seconds: None,
                        },
                    );
                }
            }
            Preset::Full => {
                for name in field_names() {
                    if name.starts_with("Deprecated") || name.starts_with("Experimental") {
                        continue;
                    }
                    let every = if name == "Location" { 5 } else { 60 };
                    fields.insert(name.to_owned(), FieldConfig::every(every));
                }
            }
        }
        fields
    }
}

/// Every field name of Tesla's `vehicle_data.proto` `Field` enum (not `Unknown`).
pub fn field_names() -> Vec<&'static str> {
    use crate::wire::proto::vehicle_data::Field;
    (1..2048)
        .filter_map(|n| Field::try_from(n).ok())
        .map(|f| f.as_str_name())
        .collect()
}

/// Problems (key, problem) of a field map at `key`.
pub fn field_problems(fields: &BTreeMap<String, FieldConfig>, key: &str) -> Vec<(String, String)> {
    let known = field_names();
    let mut problems = Vec::new();
    if fields.is_empty() {
        problems.push((
            key.to_owned(),
            "lists no field: name at least one (e.g. `Location`), or use a preset".to_owned(),
        ));
    }
    for (name, field) in fields {
        if !known.contains(&name.as_str()) {
            let hint = known
                .iter()
                .max_by(|a, b| {
                    strsim::jaro_winkler(a, name).total_cmp(&strsim::jaro_winkler(b, name))
                })
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            problems.push((
                format!("{key}.{name}"),
                format!("not a field of Tesla's vehicle_data.proto{hint}"),
            ));
        }
        if field.interval_seconds == 0 {
            problems.push((
                format!("{key}.{name}.interval_seconds"),
                "must be at least 1".into(),
            ));
        }
        if field
            .minimum_delta
            .is_some_and(|d| !d.is_finite() || d < 0.0)
        {
            problems.push((
                format!("{key}.{name}.minimum_delta"),
                "must be a number ≥ 0".into(),
            ));
        }
    }
    problems
}

/// A Fleet API region's base URL.
pub fn region_url(region: &str) -> Option<&'static str> {
    match region {
        "na" => Some("https://fleet-api.prd.na.vn.cloud.tesla.com"),
        "eu" => Some("https://fleet-api.prd.eu.vn.cloud.tesla.com"),
        "cn" => Some("https://fleet-api.prd.cn.vn.cloud.tesla.cn"),
        _ => None,
    }
}

/// True for `localhost` and loopback IP literals.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses a base URL: `https://`, or `http://` on a loopback host only.
pub fn base_url(text: &str, key: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim_end_matches('/'))
        .map_err(|e| format!("{key}: `{text}` is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if url.host_str().is_some_and(is_loopback_host) => Ok(url),
        "http" => Err(format!(
            "{key}: plain http:// is allowed only on a loopback host (tokens would travel unencrypted): use https://"
        )),
        other => Err(format!("{key}: scheme `{other}` is not https")),
    }
}

impl TeslaConfig {
    /// The fields of the config vehicles get when a vehicle names none.
    pub fn default_fields(&self) -> BTreeMap<String, FieldConfig> {
        self.fields
            .clone()
            .unwrap_or_else(|| self.preset.unwrap_or(Preset::Arrival).fields())
    }

    /// True when the Fleet API part is configured (the reconciler and `/v1/tesla`).
    pub fn reconciler_enabled(&self) -> bool {
        self.client_id.is_some()
    }

    /// The Fleet API base URL.
    pub fn fleet_api(&self) -> Result<reqwest::Url, String> {
        match (&self.fleet_api_url, self.region.as_deref().unwrap_or("na")) {
            (Some(url), _) => base_url(url, "fleetgate.tesla.fleet_api_url"),
            (None, region) => region_url(region)
                .map(|u| reqwest::Url::parse(u).expect("constant"))
                .ok_or_else(|| format!("fleetgate.tesla.region: `{region}` is not na, eu or cn")),
        }
    }

    /// The auth server's base URL (default: Tesla's for the region).
    pub fn auth(&self) -> Result<reqwest::Url, String> {
        match (&self.auth_url, self.region.as_deref()) {
            (Some(url), _) => base_url(url, "fleetgate.tesla.auth_url"),
            (None, Some("cn")) => {
                Ok(reqwest::Url::parse("https://auth.tesla.cn").expect("constant"))
            }
            (None, _) => Ok(
                reqwest::Url::parse("https://fleet-auth.prd.vn.cloud.tesla.com").expect("constant"),
            ),
        }
    }

    /// The client secret from the environment or the file (None when neither is set).
    pub fn client_secret(&self, base: &Path) -> Result<Option<String>, String> {
        if let Ok(secret) = std::env::var(CLIENT_SECRET_ENV) {
            if !secret.is_empty() {
                return Ok(Some(secret));
            }
        }
        match &self.client_secret_file {
            Some(file) => read_secret(base, file, "fleetgate.tesla.client_secret_file").map(Some),
            None => Ok(None),
        }
    }

    /// The token key's 32 bytes from the environment or `token_key_file`.
    pub fn token_key(&self, base: &Path) -> Result<[u8; 32], String> {
        let (text, from) = match std::env::var(TOKEN_KEY_ENV) {
            Ok(text) if !text.is_empty() => (text, TOKEN_KEY_ENV.to_owned()),
            _ => match &self.token_key_file {
                Some(file) => (
                    read_secret(base, file, "fleetgate.tesla.token_key_file")?,
                    "fleetgate.tesla.token_key_file".to_owned(),
                ),
                None => {
                    return Err(format!(
                        "fleetgate.tesla: no token key (tokens are sealed with it at rest): set {TOKEN_KEY_ENV} or token_key_file to 64 hex characters, e.g. `openssl rand -hex 32`"
                    ))
                }
            },
        };
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).map_err(|_| {
            format!("{from}: the token key must be 64 hex characters (32 bytes), e.g. `openssl rand -hex 32`")
        })?;
        Ok(key)
    }

    /// The partner key from `private_key_file`.
    pub fn partner_key(&self, base: &Path) -> Result<super::jws::PartnerKey, String> {
        let file = self.private_key_file.as_deref().ok_or_else(|| {
            "fleetgate.tesla.private_key_file is not set: make a key with `fleetgate tesla keygen --out DIR`".to_owned()
        })?;
        let path = resolve(base, file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "fleetgate.tesla.private_key_file: cannot read {}: {e}",
                path.display()
            )
        })?;
        super::jws::PartnerKey::from_pem(&text)
            .map_err(|e| format!("fleetgate.tesla.private_key_file {}: {e}", path.display()))
    }

    /// The pairing link of the partner domain.
    pub fn pairing_link(&self) -> Option<String> {
        self.partner_domain
            .as_ref()
            .map(|d| format!("https://tesla.com/_ak/{d}"))
    }

    /// Problems (key, problem) and warnings of this section; with `check_files` false the
    /// files and secrets are not read (a config rendered for another machine).
    pub fn problems(&self, base: &Path, check_files: bool) -> (Vec<(String, String)>, Vec<String>) {
        let mut issues: Vec<(String, String)> = Vec::new();
        let mut warnings = Vec::new();
        let mut issue = |key: &str, problem: String| issues.push((key.to_owned(), problem));
        if self.fields.is_some() && self.preset.is_some() {
            issue(
                "fleetgate.tesla.preset",
                "set `fields` or `preset`, not both".into(),
            );
        }
        if let Some(fields) = &self.fields {
            for (key, problem) in field_problems(fields, "fleetgate.tesla.fields") {
                issue(&key, problem);
            }
        }
        if !matches!(self.delivery_policy.as_str(), "latest" | "drop") {
            issue(
                "fleetgate.tesla.delivery_policy",
                format!("`{}` is not `latest` or `drop`", self.delivery_policy),
            );
        }
        if self.config_ttl_days == 0 || self.config_ttl_days > 3650 {
            issue(
                "fleetgate.tesla.config_ttl_days",
                "must be 1 to 3650 days".into(),
            );
        }
        if self.port == Some(0) {
            issue(
                "fleetgate.tesla.port",
                "must be the port vehicles connect to (1-65535)".into(),
            );
        }
        if let Some(host) = &self.hostname {
            if host.is_empty() || host.contains(['/', ':', ' ']) {
                issue(
                    "fleetgate.tesla.hostname",
                    format!("`{host}` is not a host name (no scheme, port or path)"),
                );
            }
        }
        if let (Some(host), Some(domain)) = (&self.hostname, &self.partner_domain) {
            let under = host == domain || host.ends_with(&format!(".{domain}"));
            if !under {
                warnings.push(format!("fleetgate.tesla.hostname `{host}` is not under partner_domain `{domain}`: Tesla expects the telemetry host under the registered domain"));
            }
        }
        if self.region.is_some() || self.fleet_api_url.is_some() {
            if let Err(e) = self.fleet_api() {
                issue("fleetgate.tesla.fleet_api_url", e);
            }
        }
        if let Err(e) = self.auth() {
            issue("fleetgate.tesla.auth_url", e);
        }
        if check_files {
            if self.private_key_file.is_some() {
                if let Err(e) = self.partner_key(base) {
                    issue("fleetgate.tesla.private_key_file", e);
                }
            }
            if let Some(file) = &self.ca_file {
                let path = resolve(base, file);
                if !path.is_file() {
                    issue(
                        "fleetgate.tesla.ca_file",
                        format!("file {} does not exist", path.display()),
                    );
                }
            }
        }
        if self.reconciler_enabled() {
            for (key, set, what) in [
                (
                    "fleetgate.tesla.partner_domain",
                    self.partner_domain.is_some(),
                    "the domain registered with Tesla (pairing links, public key)",
                ),
                (
                    "fleetgate.tesla.private_key_file",
                    self.private_key_file.is_some(),
                    "the partner key that signs configs (`fleetgate tesla keygen`)",
                ),
                (
                    "fleetgate.tesla.hostname",
                    self.hostname.is_some(),
                    "the host name vehicles connect to",
                ),
                (
                    "fleetgate.tesla.ca_file",
                    self.ca_file.is_some(),
                    "the CA chain vehicles trust for fleetgate's certificate",
                ),
            ] {
                if !set {
                    issue(
                        key,
                        format!("the reconciler (client_id is set) needs {what}: set it"),
                    );
                }
            }
            if self.reconcile_interval_s == 0 || self.poll_interval_s == 0 {
                issue(
                    "fleetgate.tesla.reconcile_interval_s",
                    "reconcile_interval_s and poll_interval_s must be at least 1".into(),
                );
            } else if self.reconcile_interval_s < 60 || self.poll_interval_s < 10 {
                warnings.push("fleetgate.tesla: reconcile_interval_s under 60 or poll_interval_s under 10 spends Tesla's rate limits (per application, not per car) quickly".into());
            }
            if check_files {
                if let Err(e) = self.token_key(base) {
                    issue("fleetgate.tesla.token_key_file", e);
                }
                if let Err(e) = self.client_secret(base) {
                    issue("fleetgate.tesla.client_secret_file", e);
                }
            } else if std::env::var(TOKEN_KEY_ENV).is_ok_and(|k| !k.is_empty()) {
                // set here as where it runs (a chart passes it from a Secret): check its form
                if let Err(e) = self.token_key(base) {
                    issue("fleetgate.tesla.token_key_file", e);
                }
            } else if self.token_key_file.is_none() {
                warnings.push(format!("fleetgate.tesla: no token_key_file in the config; {TOKEN_KEY_ENV} must be set where it runs"));
            }
        }
        (issues, warnings)
    }
}

fn read_secret(base: &Path, file: &str, key: &str) -> Result<String, String> {
    let path = resolve(base, file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let text = text.trim_end_matches(['\n', '\r']).to_owned();
    if text.is_empty() {
        return Err(format!("{key}: {} is empty", path.display()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_name_only_real_fields() {
        for preset in [Preset::Arrival, Preset::Full] {
            let fields = preset.fields();
            assert!(field_problems(&fields, "x").is_empty(), "{preset:?}");
        }
        assert!(Preset::Full.fields().len() > 150);
    }

    #[test]
    fn a_misspelt_field_is_named_with_a_suggestion() {
        let mut fields = BTreeMap::new();
        fields.insert("Locaton".to_owned(), FieldConfig::every(0));
        let problems = field_problems(&fields, "f");
        assert!(problems
            .iter()
            .any(|(k, p)| k == "f.Locaton" && p.contains("`Location`")));
        assert!(problems
            .iter()
            .any(|(k, _)| k == "f.Locaton.interval_seconds"));
    }

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(base_url("http://127.0.0.1:9/", "k").is_ok());
        assert!(base_url("http://localhost:9", "k").is_ok());
        assert!(base_url("http://example.com", "k").is_err());
        assert!(base_url("https://example.com", "k").is_ok());
    }
}
