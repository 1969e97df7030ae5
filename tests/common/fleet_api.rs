//! A stand-in for Tesla's Fleet API and its auth server, written as test code from Tesla's
//! developer documentation (Tesla's service cannot run here). It behaves as the documented
//! service does where onboarding gets bitten in practice:
//!
//! - `POST /oauth2/v3/token` (`grant_type=refresh_token`): every refresh token is single-use
//!   (the answer carries a new one; a spent or unknown one answers 401 `login_required`);
//!   access tokens expire (the stand-in revokes them after [`StandIn::set_access_lifetime`],
//!   sooner than the `expires_in` it announces, as a revoked token does) and then answer 401;
//! - `POST /api/1/vehicles/fleet_status`: `key_paired_vins` / `unpaired_vins` and
//!   `vehicle_info` (firmware, `vehicle_command_protocol_required`);
//! - `POST /api/1/vehicles/fleet_telemetry_config_jws`: every token is verified
//!   (`Tesla.SS256` with fleetgate's verifier, proven on Tesla's vectors; `iss` must be the
//!   registered partner key, `aud` the telemetry client); `skipped_vehicles` names
//!   `missing_key`, `unsupported_firmware` and `max_configs` as Tesla does;
//! - `GET …/{vin}/fleet_telemetry_config`: `synced: false` until the car has been polled
//!   [`Car::sync_after_reads`] times (a car takes the config when it next comes online);
//! - `DELETE …/{vin}/fleet_telemetry_config`, `GET …/{vin}/fleet_telemetry_errors`;
//! - 429 with `Retry-After` on demand ([`StandIn::rate_limit`]), counting every call that
//!   came before the wait was over ([`StandIn::early_calls`]: Tesla's limits are per
//!   application, so one early call for any car is a violation).
//!
//! Answers are wrapped in `{"response": …}` as the Fleet API's are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Map, Value};

/// The audience of telemetry configs.
pub const AUDIENCE: &str = "com.tesla.fleet.TelemetryClient";
/// The OAuth client the stand-in knows.
pub const CLIENT_ID: &str = "fleetgate-test-client";

/// One car as Tesla knows it.
#[derive(Debug, Clone)]
pub struct Car {
    /// The account it belongs to.
    pub account: String,
    /// The virtual key is paired.
    pub key_paired: bool,
    /// `vehicle_info.firmware_version`.
    pub firmware: String,
    /// The car already streams to as many applications as it takes.
    pub max_configs: bool,
    /// Reads of `fleet_telemetry_config` after a push before it answers `synced: true`.
    pub sync_after_reads: u32,
    /// The config the car holds (the verified claims, without `aud` / `iss`).
    pub config: Option<Map<String, Value>>,
    /// Reads since the last push.
    pub reads_since_push: u32,
    /// What `fleet_telemetry_errors` lists.
    pub errors: Vec<Value>,
    /// The next this many reads of the car's config answer 503 (Tesla's outages).
    pub failing_reads: u32,
}

impl Car {
    /// A car on `account` with a current firmware and no key paired.
    pub fn new(account: &str) -> Car {
        Car {
            account: account.to_owned(),
            key_paired: false,
            firmware: "2025.20.6 1b2c3d4e5f".to_owned(),
            max_configs: false,
            sync_after_reads: 2,
            config: None,
            reads_since_push: 0,
            errors: Vec::new(),
            failing_reads: 0,
        }
    }

    fn synced(&self) -> bool {
        self.config.is_some() && self.reads_since_push >= self.sync_after_reads
    }
}

/// A 429 armed for an endpoint.
#[derive(Debug, Clone, Default)]
struct Limit {
    /// Calls still answered 429.
    remaining: u32,
    /// The `Retry-After` sent.
    retry_after: Duration,
    /// Until when calls are early.
    until: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    partner_issuer: String,
    /// refresh token → account, for tokens not spent yet.
    refresh: HashMap<String, String>,
    /// Spent refresh tokens (their reuse is answered 401 and counted).
    spent: HashSet<String>,
    /// access token → (account, revoked after).
    access: HashMap<String, (String, Instant)>,
    access_lifetime: Duration,
    /// Every token ever issued (no file or log of fleetgate may hold one).
    issued: Vec<String>,
    cars: BTreeMap<String, Car>,
    limits: HashMap<&'static str, Limit>,
    early_calls: Vec<String>,
    refreshes: u32,
    refused_refreshes: u32,
    reused_refresh_tokens: u32,
    expired_access_calls: u32,
    /// Verified pushes: (VINs, claims).
    pushes: Vec<(Vec<String>, Map<String, Value>)>,
    /// Tokens whose verification failed.
    refused_tokens: Vec<String>,
    deletes: Vec<String>,
    calls: Vec<String>,
    counter: u64,
}

/// The running stand-in (its own runtime on a thread; stops on drop).
pub struct StandIn {
    /// `http://127.0.0.1:PORT`: both the Fleet API and the auth server.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Shared = Arc<Mutex<Inner>>;

impl StandIn {
    /// Starts one that accepts configs signed by the key whose `iss` is `partner_issuer`.
    pub fn start(partner_issuer: &str) -> StandIn {
        let inner = Arc::new(Mutex::new(Inner {
            partner_issuer: partner_issuer.to_owned(),
            access_lifetime: Duration::from_secs(3600),
            ..Inner::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/oauth2/v3/token", post(token))
            .route("/api/1/vehicles/fleet_status", post(fleet_status))
            .route(
                "/api/1/vehicles/fleet_telemetry_config_jws",
                post(push_config),
            )
            .route(
                "/api/1/vehicles/{vin}/fleet_telemetry_config",
                get(read_config).delete(delete_config),
            )
            .route("/api/1/vehicles/{vin}/fleet_telemetry_errors", get(errors))
            .with_state(inner.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        StandIn {
            url,
            inner,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }

    /// A new grant for `account` (what the order service holds after the driver's OAuth):
    /// its refresh token.
    pub fn grant(&self, account: &str) -> String {
        self.with(|i| {
            let token = i.mint("rt-secret", account);
            i.refresh.insert(token.clone(), account.to_owned());
            token
        })
    }

    /// Adds or replaces a car.
    pub fn add_car(&self, vin: &str, car: Car) {
        self.with(|i| i.cars.insert(vin.to_owned(), car));
    }

    /// Changes a car.
    pub fn edit_car(&self, vin: &str, f: impl FnOnce(&mut Car)) {
        self.with(|i| f(i.cars.get_mut(vin).expect("a car of the stand-in")));
    }

    /// The car as Tesla knows it now.
    pub fn car(&self, vin: &str) -> Car {
        self.with(|i| i.cars[vin].clone())
    }

    /// Access tokens are revoked this long after they are issued (their `expires_in` still
    /// says 8 hours, as a revoked token's would).
    pub fn set_access_lifetime(&self, lifetime: Duration) {
        self.with(|i| i.access_lifetime = lifetime);
    }

    /// The next `calls` calls of `endpoint` (`token`, `fleet_status`,
    /// `fleet_telemetry_config_jws`, `fleet_telemetry_config`) answer 429 with
    /// `Retry-After: retry_after`.
    pub fn rate_limit(&self, endpoint: &'static str, calls: u32, retry_after: Duration) {
        self.with(|i| {
            i.limits.insert(
                endpoint,
                Limit {
                    remaining: calls,
                    retry_after,
                    until: None,
                },
            )
        });
    }

    /// Calls that came while their endpoint's `Retry-After` was not over.
    pub fn early_calls(&self) -> Vec<String> {
        self.with(|i| i.early_calls.clone())
    }

    /// Calls so far (`METHOD endpoint`), in order.
    pub fn calls(&self) -> Vec<String> {
        self.with(|i| i.calls.clone())
    }

    /// (successful refreshes, refused refreshes, reuses of a spent refresh token).
    pub fn refreshes(&self) -> (u32, u32, u32) {
        self.with(|i| (i.refreshes, i.refused_refreshes, i.reused_refresh_tokens))
    }

    /// Calls made with an access token after it was revoked (each answered 401).
    pub fn expired_access_calls(&self) -> u32 {
        self.with(|i| i.expired_access_calls)
    }

    /// Every verified push: (VINs, claims).
    pub fn pushes(&self) -> Vec<(Vec<String>, Map<String, Value>)> {
        self.with(|i| i.pushes.clone())
    }

    /// Pushed tokens that did not verify (the error).
    pub fn refused_tokens(&self) -> Vec<String> {
        self.with(|i| i.refused_tokens.clone())
    }

    /// VINs whose config was deleted.
    pub fn deletes(&self) -> Vec<String> {
        self.with(|i| i.deletes.clone())
    }

    /// Every access and refresh token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.with(|i| i.issued.clone())
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Inner {
    fn mint(&mut self, prefix: &str, account: &str) -> String {
        self.counter += 1;
        let token = format!(
            "{prefix}-{account}-{}-{}",
            self.counter,
            uuid::Uuid::new_v4().simple()
        );
        self.issued.push(token.clone());
        token
    }

    /// Some(429) when `endpoint` is rate-limited now; counts early calls.
    fn limited(&mut self, endpoint: &'static str) -> Option<Response> {
        self.calls.push(endpoint.to_owned());
        let limit = self.limits.get_mut(endpoint)?;
        if let Some(until) = limit.until {
            if Instant::now() < until {
                self.early_calls.push(format!(
                    "{endpoint} {:?} before the Retry-After was over",
                    until - Instant::now()
                ));
            }
        }
        if limit.remaining == 0 {
            return None;
        }
        limit.remaining -= 1;
        // the client may round the wait down to whole seconds: allow 50 ms of clock skew
        limit.until = Some(Instant::now() + limit.retry_after - Duration::from_millis(50));
        let mut headers = HeaderMap::new();
        headers.insert(
            "retry-after",
            limit.retry_after.as_secs().to_string().parse().unwrap(),
        );
        Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                headers,
                Json(json!({"response": null, "error": "Too Many Requests", "error_description": ""})),
            )
                .into_response(),
        )
    }

    /// The account of a valid bearer token, or the 401 Tesla answers.
    fn account_of(&mut self, headers: &HeaderMap) -> Result<String, Refusal> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        match self.access.get(token) {
            Some((account, until)) if Instant::now() < *until => Ok(account.clone()),
            Some(_) => {
                self.expired_access_calls += 1;
                Err(Refusal(
                    StatusCode::UNAUTHORIZED,
                    "token expired (401)".into(),
                ))
            }
            None => Err(Refusal(
                StatusCode::UNAUTHORIZED,
                "invalid bearer token".into(),
            )),
        }
    }

    /// The car `vin` of `account`, or Tesla's 404.
    fn car_of(&mut self, account: &str, vin: &str) -> Result<&mut Car, Refusal> {
        match self.cars.get_mut(vin) {
            Some(car) if car.account == account => Ok(car),
            _ => Err(Refusal(
                StatusCode::NOT_FOUND,
                format!("vehicle {vin} not found"),
            )),
        }
    }
}

/// An error answer of the Fleet API: status and `error`.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"response": null, "error": self.1, "error_description": ""})),
        )
            .into_response()
    }
}

/// The car a per-vehicle call is about, with the call's rate limit, bearer token and the
/// car's account checked (else the answer to give).
fn car_call<'a>(
    i: &'a mut Inner,
    endpoint: &'static str,
    headers: &HeaderMap,
    vin: &str,
) -> Result<&'a mut Car, Box<Response>> {
    if let Some(r) = i.limited(endpoint) {
        return Err(Box::new(r));
    }
    let account = i
        .account_of(headers)
        .map_err(|r| Box::new(r.into_response()))?;
    i.car_of(&account, vin)
        .map_err(|r| Box::new(r.into_response()))
}

fn ok(response: Value) -> Response {
    Json(json!({ "response": response })).into_response()
}

async fn token(State(s): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let mut i = s.lock().unwrap();
    if let Some(r) = i.limited("token") {
        return r;
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client", "error_description": "unknown client_id"})),
        )
            .into_response();
    }
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let Some(account) = i.refresh.remove(&presented) else {
        i.refused_refreshes += 1;
        if i.spent.contains(&presented) {
            i.reused_refresh_tokens += 1;
        }
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "login_required", "error_description": "The refresh_token is invalid"})),
        )
            .into_response();
    };
    i.spent.insert(presented);
    i.refreshes += 1;
    let refresh = i.mint("rt-secret", &account);
    let access = i.mint("at-secret", &account);
    i.refresh.insert(refresh.clone(), account.clone());
    let until = Instant::now() + i.access_lifetime;
    i.access.insert(access.clone(), (account, until));
    Json(json!({
        "access_token": access,
        "refresh_token": refresh,
        "id_token": "not-used",
        "expires_in": 28800,
        "state": "",
        "token_type": "Bearer",
    }))
    .into_response()
}

async fn fleet_status(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut i = s.lock().unwrap();
    if let Some(r) = i.limited("fleet_status") {
        return r;
    }
    let account = match i.account_of(&headers) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let mut paired = Vec::new();
    let mut unpaired = Vec::new();
    let mut info = Map::new();
    for vin in body["vins"].as_array().into_iter().flatten() {
        let vin = vin.as_str().unwrap_or_default();
        let Some(car) = i.cars.get(vin).filter(|c| c.account == account) else {
            continue;
        };
        if car.key_paired {
            paired.push(vin.to_owned());
        } else {
            unpaired.push(vin.to_owned());
        }
        info.insert(
            vin.to_owned(),
            json!({
                "firmware_version": car.firmware,
                "vehicle_command_protocol_required": true,
                "discounted_device_data": false,
                "fleet_telemetry_version": "1.0.0",
                "total_number_of_keys": if car.key_paired { 3 } else { 2 },
            }),
        );
    }
    ok(json!({"key_paired_vins": paired, "unpaired_vins": unpaired, "vehicle_info": info}))
}

/// Tesla's `fleet_telemetry_config_jws`: the token verified, each VIN taken or skipped.
async fn push_config(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut i = s.lock().unwrap();
    if let Some(r) = i.limited("fleet_telemetry_config_jws") {
        return r;
    }
    let account = match i.account_of(&headers) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let token = body["token"].as_str().unwrap_or_default();
    let claims = match verify(token, &i.partner_issuer) {
        Ok(claims) => claims,
        Err(why) => {
            i.refused_tokens.push(why.clone());
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"response": null, "error": format!("invalid token: {why}"), "error_description": ""})),
            )
                .into_response();
        }
    };
    let mut config = claims.clone();
    config.remove("aud");
    config.remove("iss");
    let mut skipped: BTreeMap<&str, Vec<String>> = [
        ("missing_key", vec![]),
        ("unsupported_hardware", vec![]),
        ("unsupported_firmware", vec![]),
        ("max_configs", vec![]),
    ]
    .into_iter()
    .collect();
    let mut updated = 0;
    let mut vins = Vec::new();
    for vin in body["vins"].as_array().into_iter().flatten() {
        let vin = vin.as_str().unwrap_or_default().to_owned();
        let car = match i.car_of(&account, &vin) {
            Ok(car) => car,
            Err(r) => return r.into_response(),
        };
        let reason = if !car.key_paired {
            Some("missing_key")
        } else if firmware_before(&car.firmware, (2024, 26)) {
            Some("unsupported_firmware")
        } else if car.max_configs {
            Some("max_configs")
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.get_mut(reason).unwrap().push(vin.clone()),
            None => {
                car.config = Some(config.clone());
                car.reads_since_push = 0;
                updated += 1;
            }
        }
        vins.push(vin);
    }
    i.pushes.push((vins, claims));
    ok(json!({"updated_vehicles": updated, "skipped_vehicles": skipped}))
}

/// The claims of a token Tesla would accept from this application, or why not.
fn verify(token: &str, partner_issuer: &str) -> Result<Map<String, Value>, String> {
    let verified = fleetgate::tesla::jws::verify_token(token).map_err(|e| e.to_string())?;
    let claims = verified.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(partner_issuer) {
        return Err("signed by a key that is not the application's registered public key".into());
    }
    if claims.get("aud").and_then(Value::as_str) != Some(AUDIENCE) {
        return Err(format!("aud is not {AUDIENCE}"));
    }
    if !claims.get("port").is_some_and(Value::is_u64) {
        return Err("port is not an integer".into());
    }
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if exp <= now {
        return Err("expired".into());
    }
    Ok(claims)
}

async fn read_config(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(vin): Path<String>,
) -> Response {
    let mut i = s.lock().unwrap();
    let car = match car_call(&mut i, "fleet_telemetry_config", &headers, &vin) {
        Ok(car) => car,
        Err(r) => return *r,
    };
    if car.failing_reads > 0 {
        car.failing_reads -= 1;
        return Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream internal error".into(),
        )
        .into_response();
    }
    if car.config.is_some() {
        car.reads_since_push += 1;
    }
    ok(json!({
        "synced": car.synced(),
        "config": car.config,
        "limit_reached": car.max_configs,
        "key_paired": car.key_paired,
    }))
}

async fn delete_config(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(vin): Path<String>,
) -> Response {
    let mut i = s.lock().unwrap();
    let car = match car_call(&mut i, "fleet_telemetry_config_delete", &headers, &vin) {
        Ok(car) => car,
        Err(r) => return *r,
    };
    car.config = None;
    i.deletes.push(vin);
    ok(json!({"updated_vehicles": 1}))
}

async fn errors(State(s): State<Shared>, headers: HeaderMap, Path(vin): Path<String>) -> Response {
    let mut i = s.lock().unwrap();
    let car = match car_call(&mut i, "fleet_telemetry_errors", &headers, &vin) {
        Ok(car) => car,
        Err(r) => return *r,
    };
    ok(json!({"fleet_telemetry_errors": car.errors}))
}

/// True when `firmware` (`2024.20.1 abc`) is older than (year, week).
fn firmware_before(firmware: &str, min: (u32, u32)) -> bool {
    let mut parts = firmware
        .split(['.', ' '])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let year = parts.next().unwrap_or(0);
    let week = parts.next().unwrap_or(0);
    (year, week) < min
}
