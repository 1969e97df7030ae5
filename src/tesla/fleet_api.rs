//! Tesla's Fleet API, the calls onboarding makes: the token refresh, `fleet_status`,
//! `fleet_telemetry_config_jws`, `fleet_telemetry_config` (read, delete) and
//! `fleet_telemetry_errors`.
//!
//! Tesla's rate limits are per application, not per car: a 429 pauses the whole endpoint
//! (every vehicle) until its `Retry-After` ([`FleetApi::paused`]). Answers are read into
//! typed shapes; anything else is a clear [`ApiError`], never a panic. No token is ever
//! logged or put in an error.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

use crate::metrics as m;

/// The endpoints, for rate-limit pauses and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `{auth_url}/oauth2/v3/token`.
    Token,
    /// `POST /api/1/vehicles/fleet_status`.
    FleetStatus,
    /// `POST /api/1/vehicles/fleet_telemetry_config_jws`.
    PushConfig,
    /// `GET /api/1/vehicles/{vin}/fleet_telemetry_config`.
    ReadConfig,
    /// `DELETE /api/1/vehicles/{vin}/fleet_telemetry_config`.
    DeleteConfig,
    /// `GET /api/1/vehicles/{vin}/fleet_telemetry_errors`.
    Errors,
}

impl Endpoint {
    /// Every endpoint (metrics are registered at zero for each).
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Token,
        Endpoint::FleetStatus,
        Endpoint::PushConfig,
        Endpoint::ReadConfig,
        Endpoint::DeleteConfig,
        Endpoint::Errors,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::FleetStatus => "fleet_status",
            Endpoint::PushConfig => "fleet_telemetry_config_jws",
            Endpoint::ReadConfig => "fleet_telemetry_config",
            Endpoint::DeleteConfig => "fleet_telemetry_config_delete",
            Endpoint::Errors => "fleet_telemetry_errors",
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 429: the endpoint is paused for every vehicle until the wait is over.
    #[error("Tesla rate-limited {} (retry in {}s)", endpoint.as_str(), retry_after.as_secs())]
    RateLimited {
        /// The endpoint.
        endpoint: Endpoint,
        /// How long.
        retry_after: Duration,
    },
    /// 401 on a Fleet API call: the access token is expired or revoked.
    #[error("Tesla refused the access token (401): {0}")]
    Unauthorized(String),
    /// The token endpoint refused the refresh token: a new grant is needed.
    #[error("Tesla refused the refresh token ({0}): the driver must authorize again and the new refresh token be PUT to /v1/tesla/accounts/{{id}}")]
    RefreshRefused(String),
    /// Another error status, with Tesla's message.
    #[error("Tesla answered {status} to {}: {detail}", endpoint.as_str())]
    Status {
        /// The endpoint.
        endpoint: Endpoint,
        /// HTTP status.
        status: u16,
        /// Tesla's `error` / `error_description`, or the body's start.
        detail: String,
    },
    /// The request did not complete (connection, timeout).
    #[error("cannot reach Tesla's {}: {detail}", endpoint.as_str())]
    Network {
        /// The endpoint.
        endpoint: Endpoint,
        /// What failed.
        detail: String,
    },
    /// The answer is not the documented shape.
    #[error("Tesla's answer to {} is not what its documentation says: {detail}", endpoint.as_str())]
    Malformed {
        /// The endpoint.
        endpoint: Endpoint,
        /// What is wrong.
        detail: String,
    },
}

/// A refreshed grant.
pub struct Grant {
    /// The new access token.
    pub access_token: String,
    /// The new refresh token (the old one is spent).
    pub refresh_token: String,
    /// Seconds the access token lives.
    pub expires_in: u64,
}

/// `fleet_status` for one vehicle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStatus {
    /// The virtual key is paired (listed in `key_paired_vins`).
    pub key_paired: bool,
    /// `vehicle_info.firmware_version`.
    pub firmware: Option<String>,
    /// `vehicle_info.vehicle_command_protocol_required`.
    pub protocol_required: Option<bool>,
}

/// `fleet_telemetry_config_jws`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PushResult {
    /// How many vehicles took the config.
    #[serde(default)]
    pub updated_vehicles: u64,
    /// Why the others did not: reason → VINs (`missing_key`, `unsupported_hardware`,
    /// `unsupported_firmware`, `max_configs`).
    #[serde(default)]
    pub skipped_vehicles: HashMap<String, Vec<String>>,
}

impl PushResult {
    /// The reason `vin` was skipped, if it was.
    pub fn skipped(&self, vin: &str) -> Option<&str> {
        self.skipped_vehicles
            .iter()
            .find(|(_, vins)| vins.iter().any(|v| v == vin))
            .map(|(reason, _)| reason.as_str())
    }
}

/// `fleet_telemetry_config`'s answer for one vehicle.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ConfigState {
    /// The car has the config.
    #[serde(default)]
    pub synced: bool,
    /// The config (None when the car has none).
    #[serde(default)]
    pub config: Option<serde_json::Map<String, Value>>,
    /// The car has as many configs as it takes.
    #[serde(default)]
    pub limit_reached: bool,
    /// The key that signed the config is paired (when Tesla says).
    #[serde(default)]
    pub key_paired: Option<bool>,
}

/// The Fleet API client.
pub struct FleetApi {
    http: reqwest::Client,
    base: Url,
    token_url: Url,
    client_id: String,
    client_secret: Option<String>,
    paused: Mutex<HashMap<Endpoint, Instant>>,
}

impl std::fmt::Debug for FleetApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetApi")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// The longest answer read.
const MAX_BODY: usize = 1024 * 1024;
/// A `Retry-After` beyond this is capped (a broken header must not stop onboarding for days).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl FleetApi {
    /// A client for `base` (the Fleet API) and `auth` (the auth server's base).
    pub fn new(
        base: Url,
        auth: Url,
        client_id: String,
        client_secret: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<FleetApi> {
        let tls = crate::sinks::tls::client_config(None, "fleetgate.tesla").or_else(|e| {
            // loopback stand-ins (tests, local proxies) need no roots
            if base.scheme() == "http" && auth.scheme() == "http" {
                #[allow(deprecated)]
                let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
                Ok(rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth())
            } else {
                Err(e)
            }
        })?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fleetgate/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("fleetgate.tesla: cannot build the HTTP client: {e}"))?;
        let token_url = Url::parse(&format!(
            "{}/oauth2/v3/token",
            auth.as_str().trim_end_matches('/')
        ))?;
        Ok(FleetApi {
            http,
            base,
            token_url,
            client_id,
            client_secret,
            paused: Mutex::new(HashMap::new()),
        })
    }

    /// How long `endpoint` stays paused by an earlier 429 (None: callable now).
    pub fn paused(&self, endpoint: Endpoint) -> Option<Duration> {
        let paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        paused
            .get(&endpoint)
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    fn pause(&self, endpoint: Endpoint, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        let slot = paused.entry(endpoint).or_insert(until);
        if *slot < until {
            *slot = until;
        }
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}{path}", self.base.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// Refreshes a grant: the refresh token is spent, a new one comes back.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Grant, ApiError> {
        let endpoint = Endpoint::Token;
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.as_str()),
            ("refresh_token", refresh_token),
        ];
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", secret.as_str()));
        }
        let request = self.http.post(self.token_url.clone()).form(&form);
        let (status, body) = self.send(endpoint, request).await?;
        if status == StatusCode::BAD_REQUEST
            || status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
        {
            return Err(ApiError::RefreshRefused(error_detail(&body, status)));
        }
        if !status.is_success() {
            return Err(ApiError::Status {
                endpoint,
                status: status.as_u16(),
                detail: error_detail(&body, status),
            });
        }
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            refresh_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| ApiError::Malformed {
            endpoint,
            detail: format!("no access_token / refresh_token: {}", strip_values(&e)),
        })?;
        if answer.access_token.is_empty() || answer.refresh_token.is_empty() {
            return Err(ApiError::Malformed {
                endpoint,
                detail: "an empty access_token or refresh_token".into(),
            });
        }
        Ok(Grant {
            access_token: answer.access_token,
            refresh_token: answer.refresh_token,
            expires_in: answer.expires_in.unwrap_or(8 * 3600),
        })
    }

    /// `fleet_status` of one vehicle.
    pub async fn fleet_status(&self, access: &str, vin: &str) -> Result<KeyStatus, ApiError> {
        let endpoint = Endpoint::FleetStatus;
        let request = self
            .http
            .post(self.url("/api/1/vehicles/fleet_status"))
            .bearer_auth(access)
            .json(&serde_json::json!({"vins": [vin]}));
        let response = self.call(endpoint, request).await?;
        #[derive(Deserialize, Default)]
        struct Info {
            #[serde(default)]
            firmware_version: Option<String>,
            #[serde(default)]
            vehicle_command_protocol_required: Option<bool>,
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            key_paired_vins: Vec<String>,
            #[serde(default)]
            unpaired_vins: Vec<String>,
            #[serde(default)]
            vehicle_info: HashMap<String, Info>,
        }
        let mut answer: Answer = read(endpoint, response)?;
        let key_paired = answer.key_paired_vins.iter().any(|v| v == vin);
        if !key_paired && !answer.unpaired_vins.iter().any(|v| v == vin) {
            return Err(ApiError::Malformed {
                endpoint,
                detail: format!("{vin} is in neither key_paired_vins nor unpaired_vins (is it on this account?)"),
            });
        }
        let info = answer.vehicle_info.remove(vin).unwrap_or_default();
        Ok(KeyStatus {
            key_paired,
            firmware: info.firmware_version,
            protocol_required: info.vehicle_command_protocol_required,
        })
    }

    /// Pushes a signed config to vehicles.
    pub async fn push_config(
        &self,
        access: &str,
        vins: &[&str],
        token: &str,
    ) -> Result<PushResult, ApiError> {
        let endpoint = Endpoint::PushConfig;
        let request = self
            .http
            .post(self.url("/api/1/vehicles/fleet_telemetry_config_jws"))
            .bearer_auth(access)
            .json(&serde_json::json!({"vins": vins, "token": token}));
        let response = self.call(endpoint, request).await?;
        read(endpoint, response)
    }

    /// The config a vehicle has.
    pub async fn read_config(&self, access: &str, vin: &str) -> Result<ConfigState, ApiError> {
        let endpoint = Endpoint::ReadConfig;
        let request = self
            .http
            .get(self.url(&format!("/api/1/vehicles/{vin}/fleet_telemetry_config")))
            .bearer_auth(access);
        let response = self.call(endpoint, request).await?;
        read(endpoint, response)
    }

    /// Deletes a vehicle's config.
    pub async fn delete_config(&self, access: &str, vin: &str) -> Result<(), ApiError> {
        let endpoint = Endpoint::DeleteConfig;
        let request = self
            .http
            .request(
                Method::DELETE,
                self.url(&format!("/api/1/vehicles/{vin}/fleet_telemetry_config")),
            )
            .bearer_auth(access);
        self.call(endpoint, request).await.map(|_| ())
    }

    /// What the vehicle reported failing (`fleet_telemetry_errors`).
    pub async fn errors(
        &self,
        access: &str,
        vin: &str,
    ) -> Result<Vec<super::state::TelemetryError>, ApiError> {
        let endpoint = Endpoint::Errors;
        let request = self
            .http
            .get(self.url(&format!("/api/1/vehicles/{vin}/fleet_telemetry_errors")))
            .bearer_auth(access);
        let response = self.call(endpoint, request).await?;
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            fleet_telemetry_errors: Vec<super::state::TelemetryError>,
        }
        let answer: Answer = read(endpoint, response)?;
        Ok(answer.fleet_telemetry_errors)
    }

    /// A Fleet API call: 2xx gives the `response` member; 401 is [`ApiError::Unauthorized`].
    async fn call(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, ApiError> {
        let (status, body) = self.send(endpoint, request).await?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(ApiError::Unauthorized(error_detail(&body, status)));
        }
        if !status.is_success() {
            return Err(ApiError::Status {
                endpoint,
                status: status.as_u16(),
                detail: error_detail(&body, status),
            });
        }
        let mut value: Value = serde_json::from_slice(&body).map_err(|e| ApiError::Malformed {
            endpoint,
            detail: format!("not JSON: {}", strip_values(&e)),
        })?;
        match value.get_mut("response") {
            Some(response) => Ok(response.take()),
            None => Err(ApiError::Malformed {
                endpoint,
                detail: "no `response` member".into(),
            }),
        }
    }

    /// Sends (unless the endpoint is paused), reads the body (bounded), and turns a 429 into
    /// a pause of the endpoint.
    async fn send(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), ApiError> {
        if let Some(wait) = self.paused(endpoint) {
            return Err(ApiError::RateLimited {
                endpoint,
                retry_after: wait,
            });
        }
        let outcome = |o: &'static str| {
            metrics::counter!(m::TESLA_API_REQUESTS_TOTAL, "endpoint" => endpoint.as_str(), "outcome" => o)
                .increment(1)
        };
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                outcome("network");
                return Err(ApiError::Network {
                    endpoint,
                    detail: without_url(&e),
                });
            }
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            outcome("rate_limited");
            let wait = retry_after(response.headers()).unwrap_or(Duration::from_secs(60));
            self.pause(endpoint, wait);
            tracing::warn!(
                endpoint = endpoint.as_str(),
                retry_after_s = wait.as_secs(),
                "Tesla rate-limited the endpoint: paused for every vehicle"
            );
            return Err(ApiError::RateLimited {
                endpoint,
                retry_after: wait,
            });
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        outcome("malformed");
                        return Err(ApiError::Malformed {
                            endpoint,
                            detail: format!("the answer is larger than {MAX_BODY} bytes"),
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    outcome("network");
                    return Err(ApiError::Network {
                        endpoint,
                        detail: without_url(&e),
                    });
                }
            }
        }
        outcome(if status.is_success() {
            "ok"
        } else if status.is_client_error() {
            "client_error"
        } else {
            "server_error"
        });
        Ok((status, body))
    }
}

fn read<T: serde::de::DeserializeOwned>(endpoint: Endpoint, value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::Malformed {
        endpoint,
        detail: strip_values(&e),
    })
}

/// `Retry-After` as seconds (an HTTP date counts from now), capped.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match text.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => {
            let at = httpdate_parse(text)?;
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        }
    };
    Some(wait.clamp(Duration::from_secs(1), MAX_RETRY_AFTER))
}

fn httpdate_parse(text: &str) -> Option<std::time::SystemTime> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let t = time::PrimitiveDateTime::parse(text, &format).ok()?;
    let secs = t.assume_utc().unix_timestamp();
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Tesla's `error` / `error_description` (or the body's start), never more than 300 bytes.
fn error_detail(body: &[u8], status: StatusCode) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let text = parsed
        .as_ref()
        .and_then(|v| {
            let error = v.get("error").and_then(Value::as_str);
            let description = v
                .get("error_description")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty());
            match (error, description) {
                (Some(e), Some(d)) => Some(format!("{e}: {d}")),
                (Some(e), None) => Some(e.to_owned()),
                (None, Some(d)) => Some(d.to_owned()),
                (None, None) => None,
            }
        })
        .unwrap_or_else(|| {
            let s = String::from_utf8_lossy(body);
            if s.trim().is_empty() {
                status.to_string()
            } else {
                s.trim().to_owned()
            }
        });
    let mut text = text;
    if text.len() > 300 {
        let mut cut = 300;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// A serde error's message without the values it quotes (an answer may hold a token).
fn strip_values(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find('"') {
        Some(at) => format!(
            "{}… (line {}, column {})",
            &text[..at],
            e.line(),
            e.column()
        ),
        None => text,
    }
}

/// A reqwest error without its URL (which holds a VIN at most, but keep errors short).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_caps_them() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(reqwest::header::RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(1)));
    }

    #[test]
    fn error_details_name_teslas_error() {
        assert_eq!(
            error_detail(
                br#"{"error":"invalid_grant","error_description":"expired"}"#,
                StatusCode::BAD_REQUEST
            ),
            "invalid_grant: expired"
        );
        assert_eq!(
            error_detail(b"", StatusCode::BAD_GATEWAY),
            "502 Bad Gateway"
        );
    }

    #[test]
    fn a_skipped_vehicle_names_its_reason() {
        let result: PushResult = serde_json::from_str(
            r#"{"updated_vehicles":0,"skipped_vehicles":{"missing_key":["A"],"unsupported_firmware":[],"max_configs":["B"]}}"#,
        )
        .unwrap();
        assert_eq!(result.skipped("A"), Some("missing_key"));
        assert_eq!(result.skipped("B"), Some("max_configs"));
        assert_eq!(result.skipped("C"), None);
    }
}
