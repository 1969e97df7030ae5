//! Tesla onboarding: accounts (the driver's OAuth grant, sealed at rest, never returned) and
//! vehicles (the desired state, and what the reconciler found: one answer per car to "is
//! arrival tracking on?"). Writes go through the one admin log; the reconciler on the
//! instance where a vehicle's rules run acts on them. Reads answer the same on every
//! instance (the statuses are admin-log records; the last frame comes from the cluster view).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AdminState;
use crate::api::{query_error, ApiError, ApiResult, ErrorBody, JsonBody};
use crate::control::Change;
use crate::runner::now_ms;
use crate::tesla::config::{field_problems, FieldConfig, Preset, TeslaConfig};
use crate::tesla::state::{
    account_key, refresh_key, AccountRecord, Onboarding, OnboardingState, TelemetryError,
    TeslaRecord, VehicleRecord, VehicleStatus,
};
use crate::tesla::tokens::TokenBroker;

/// What the Tesla routes need (None in [`AdminState`] when `fleetgate.tesla.client_id` is
/// not set: the routes answer 404 then).
#[derive(Clone)]
pub struct TeslaAdmin {
    /// Accounts, desired vehicles, statuses.
    pub onboarding: Arc<Onboarding>,
    /// Seals new grants.
    pub broker: Arc<TokenBroker>,
    /// `fleetgate.tesla`.
    pub config: Arc<TeslaConfig>,
}

/// The Tesla routes.
pub(super) fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list_accounts))
        .routes(routes!(get_account, put_account, delete_account))
        .routes(routes!(list_vehicles))
        .routes(routes!(get_vehicle, put_vehicle, delete_vehicle))
        .routes(routes!(resync_vehicle))
}

fn tesla(state: &AdminState) -> ApiResult<&TeslaAdmin> {
    state.tesla.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "tesla_not_configured",
            "Tesla onboarding is off: set fleetgate.tesla (client_id, partner_domain, private_key_file, hostname, ca_file) and a token key",
        )
    })
}

/// `PUT /v1/tesla/accounts/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountBody {
    /// The driver's refresh token (from the order service's OAuth grant). Sealed at rest,
    /// never returned or logged.
    pub refresh_token: String,
}

/// An account as the API shows it (never its tokens).
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    /// The account id.
    pub id: String,
    /// `ok`, or `refresh_refused` (Tesla refused the refresh token: PUT a new one).
    pub state: &'static str,
    /// Why the refresh token was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// An access token is held (it is refreshed on demand).
    pub has_access_token: bool,
    /// When the access token expires (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_expires_ms: Option<i64>,
    /// Token changes so far (grants and refreshes).
    pub generation: u64,
    /// Vehicles onboarded with this account.
    pub vehicles: usize,
    /// Last change (ms).
    pub updated_ms: i64,
}

fn account_view(onboarding: &Onboarding, a: &AccountRecord) -> AccountView {
    AccountView {
        id: a.id.clone(),
        state: if a.refresh_error.is_some() {
            "refresh_refused"
        } else {
            "ok"
        },
        error: a.refresh_error.clone(),
        has_access_token: a.access_expires_ms > 0,
        access_expires_ms: (a.access_expires_ms > 0).then_some(a.access_expires_ms),
        generation: a.generation,
        vehicles: onboarding.vehicles_of(&a.id),
        updated_ms: a.updated_ms,
    }
}

fn check_account_id(id: &str) -> ApiResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_account_id",
            "an account id is 1 to 128 characters of A-Z, a-z, 0-9, `.`, `_`, `-`",
        ))
    }
}

/// Every Tesla account.
#[utoipa::path(get, path = "/v1/tesla/accounts", tag = "tesla", security(("bearer" = [])), responses(
    (status = 200, description = "The accounts", body = Vec<AccountView>),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "Tesla onboarding is not configured", body = ErrorBody)))]
async fn list_accounts(State(state): State<AdminState>) -> ApiResult<Json<Vec<AccountView>>> {
    let t = tesla(&state)?;
    Ok(Json(
        t.onboarding
            .accounts()
            .iter()
            .map(|a| account_view(&t.onboarding, a))
            .collect(),
    ))
}

/// One Tesla account.
#[utoipa::path(get, path = "/v1/tesla/accounts/{id}", tag = "tesla", security(("bearer" = [])),
    params(("id" = String, Path, description = "The account id")), responses(
    (status = 200, description = "The account", body = AccountView),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No such account, or Tesla onboarding is not configured", body = ErrorBody)))]
async fn get_account(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<Json<AccountView>> {
    let t = tesla(&state)?;
    let a = t
        .onboarding
        .account(&id)
        .ok_or_else(|| ApiError::not_found("account", &id))?;
    Ok(Json(account_view(&t.onboarding, &a)))
}

/// Create an account, or replace its grant: fleetgate refreshes the access token itself.
#[utoipa::path(put, path = "/v1/tesla/accounts/{id}", tag = "tesla", security(("bearer" = [])),
    params(("id" = String, Path, description = "The account id (1 to 128 of A-Z a-z 0-9 . _ -)")),
    request_body = AccountBody, responses(
    (status = 200, description = "The grant was replaced", body = AccountView),
    (status = 201, description = "Created", body = AccountView),
    (status = 400, description = "Malformed JSON", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "Tesla onboarding is not configured", body = ErrorBody),
    (status = 415, description = "Body is not application/json", body = ErrorBody),
    (status = 422, description = "Invalid id or body", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody),
    (status = 507, description = "Data disk full; nothing was written", body = ErrorBody)))]
async fn put_account(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AccountBody>,
) -> ApiResult<(StatusCode, Json<AccountView>)> {
    let t = tesla(&state)?;
    check_account_id(&id)?;
    let token = body.refresh_token.trim();
    if token.is_empty() || token.len() > 16 * 1024 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "refresh_token must be the grant's refresh token (1 to 16384 characters)",
        ));
    }
    let existed = t.onboarding.account(&id).is_some();
    let record = t.broker.grant_record(&id, token);
    let mut changes = vec![Change::PutTesla(TeslaRecord::Account(record.clone()))];
    if t.onboarding.refresh_request(&id).is_some() {
        changes.push(Change::DeleteTesla(refresh_key(&id)));
    }
    state.write(changes).await?;
    tracing::info!(account = %id, generation = record.generation, "Tesla account grant stored (sealed)");
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(account_view(&t.onboarding, &record))))
}

/// Delete an account (refused while vehicles are onboarded with it).
#[utoipa::path(delete, path = "/v1/tesla/accounts/{id}", tag = "tesla", security(("bearer" = [])),
    params(("id" = String, Path, description = "The account id")), responses(
    (status = 204, description = "Deleted"),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No such account, or Tesla onboarding is not configured", body = ErrorBody),
    (status = 409, description = "Vehicles are onboarded with it: DELETE them first", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody)))]
async fn delete_account(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let t = tesla(&state)?;
    if t.onboarding.account(&id).is_none() {
        return Err(ApiError::not_found("account", &id));
    }
    let vehicles = t.onboarding.vehicles_of(&id);
    if vehicles > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "account_in_use",
            format!("{vehicles} vehicle(s) are onboarded with account `{id}`: DELETE /v1/tesla/vehicles/{{vin}} for each first (their configs are removed at Tesla with this account)"),
        ));
    }
    state
        .write(vec![
            Change::DeleteTesla(account_key(&id)),
            Change::DeleteTesla(refresh_key(&id)),
        ])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/tesla/vehicles/{vin}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VehicleBody {
    /// The account whose grant covers the vehicle.
    pub account_id: String,
    /// A named field set (`arrival` or `full`).
    #[serde(default)]
    pub preset: Option<Preset>,
    /// Field name → interval; wins over `preset`. Neither: the config's default fields.
    #[serde(default)]
    pub fields: Option<BTreeMap<String, FieldConfig>>,
}

/// A vehicle's onboarding, as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct VehicleView {
    /// The VIN.
    pub vin: String,
    /// The account.
    pub account_id: String,
    /// `pending_key`, `configuring`, `synced`, `streaming`, `error` or `removing`.
    pub state: OnboardingState,
    /// Why it is in this state, and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The link the driver opens to pair the virtual key (while `pending_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairing_link: Option<String>,
    /// The virtual key is on the car (Tesla's `fleet_status`).
    pub key_paired: Option<bool>,
    /// The car's firmware.
    pub firmware: Option<String>,
    /// The car needs signed commands.
    pub protocol_required: Option<bool>,
    /// The car has the config (Tesla's `fleet_telemetry_config`).
    pub synced: Option<bool>,
    /// The car has as many configs as it takes.
    pub limit_reached: Option<bool>,
    /// The last error (Tesla's API, or what the car reported).
    pub last_error: Option<String>,
    /// What Tesla's `fleet_telemetry_errors` lists for the car.
    pub tesla_errors: Vec<TelemetryError>,
    /// The first frame fleetgate saw of the car since it was onboarded (ms).
    pub first_frame_ms: Option<i64>,
    /// The newest frame fleetgate saw of the car (ms).
    pub last_frame_ms: Option<i64>,
    /// `exp` of the config pushed (unix seconds).
    pub config_exp: Option<i64>,
    /// When the config was last pushed (ms).
    pub config_pushed_ms: Option<i64>,
    /// Since when it is in this state (ms).
    pub state_since_ms: i64,
    /// The fields its config carries.
    pub fields: BTreeMap<String, FieldConfig>,
}

impl AdminState {
    /// The newest frame of `vin` this instance knows: the cluster view's in cluster mode.
    fn last_frame_ms(&self, vin: &str) -> Option<i64> {
        self.vehicle_table()
            .update(vin, |s| s.last_seen_ms)
            .filter(|&ms| ms > 0)
    }
}

fn vehicle_view(state: &AdminState, t: &TeslaAdmin, v: &VehicleRecord) -> VehicleView {
    let status = t
        .onboarding
        .status(&v.vin)
        .unwrap_or_else(|| VehicleStatus::new(&v.vin, v.updated_ms));
    let state_now = if v.removing {
        OnboardingState::Removing
    } else {
        status.state
    };
    VehicleView {
        vin: v.vin.clone(),
        account_id: v.account_id.clone(),
        state: state_now,
        reason: status.reason.clone(),
        pairing_link: (state_now == OnboardingState::PendingKey)
            .then(|| t.config.pairing_link())
            .flatten(),
        key_paired: status.key_paired,
        firmware: status.firmware.clone(),
        protocol_required: status.protocol_required,
        synced: status.synced,
        limit_reached: status.limit_reached,
        last_error: status.last_error.clone(),
        tesla_errors: status.tesla_errors.clone(),
        first_frame_ms: status.first_frame_ms,
        last_frame_ms: state.last_frame_ms(&v.vin),
        config_exp: status.config_exp,
        config_pushed_ms: status.pushed_ms,
        state_since_ms: status.since_ms,
        fields: v.fields_or(&t.config.default_fields()),
    }
}

/// `GET /v1/tesla/vehicles` filters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct VehicleQuery {
    /// Only vehicles in this state.
    pub state: Option<OnboardingState>,
    /// Only vehicles of this account.
    pub account_id: Option<String>,
}

/// Every onboarded vehicle with its state.
#[utoipa::path(get, path = "/v1/tesla/vehicles", tag = "tesla", security(("bearer" = [])),
    params(VehicleQuery), responses(
    (status = 200, description = "The vehicles", body = Vec<VehicleView>),
    (status = 400, description = "Bad query", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "Tesla onboarding is not configured", body = ErrorBody)))]
async fn list_vehicles(
    State(state): State<AdminState>,
    query: Result<Query<VehicleQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<VehicleView>>> {
    let Query(query) = query.map_err(query_error)?;
    let t = tesla(&state)?;
    Ok(Json(
        t.onboarding
            .vehicles()
            .iter()
            .filter(|v| query.account_id.as_ref().is_none_or(|a| &v.account_id == a))
            .map(|v| vehicle_view(&state, t, v))
            .filter(|v| query.state.is_none_or(|s| v.state == s))
            .collect(),
    ))
}

/// One vehicle's onboarding state: is arrival tracking on?
#[utoipa::path(get, path = "/v1/tesla/vehicles/{vin}", tag = "tesla", security(("bearer" = [])),
    params(("vin" = String, Path, description = "The VIN")), responses(
    (status = 200, description = "The vehicle", body = VehicleView),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "Not onboarded, or Tesla onboarding is not configured", body = ErrorBody)))]
async fn get_vehicle(
    State(state): State<AdminState>,
    Path(vin): Path<String>,
) -> ApiResult<Json<VehicleView>> {
    let t = tesla(&state)?;
    let v = t
        .onboarding
        .vehicle(&vin)
        .ok_or_else(|| ApiError::not_found("vehicle", &vin))?;
    Ok(Json(vehicle_view(&state, t, &v)))
}

fn check_vin(vin: &str) -> ApiResult<()> {
    if vin.len() == 17 && vin.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_vin",
            "a VIN is 17 characters of A-Z and 0-9",
        ))
    }
}

/// Onboard a vehicle (or change its fields): the reconciler pairs, configures and watches it.
#[utoipa::path(put, path = "/v1/tesla/vehicles/{vin}", tag = "tesla", security(("bearer" = [])),
    params(("vin" = String, Path, description = "The VIN (17 characters)")),
    request_body = VehicleBody, responses(
    (status = 200, description = "Updated", body = VehicleView),
    (status = 201, description = "Onboarding started", body = VehicleView),
    (status = 400, description = "Malformed JSON", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "Tesla onboarding is not configured", body = ErrorBody),
    (status = 415, description = "Body is not application/json", body = ErrorBody),
    (status = 422, description = "Invalid VIN, unknown account, or invalid fields", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody),
    (status = 507, description = "Data disk full; nothing was written", body = ErrorBody)))]
async fn put_vehicle(
    State(state): State<AdminState>,
    Path(vin): Path<String>,
    JsonBody(body): JsonBody<VehicleBody>,
) -> ApiResult<(StatusCode, Json<VehicleView>)> {
    let t = tesla(&state)?;
    check_vin(&vin)?;
    let account_known = state
        .eventually_known(|| t.onboarding.account(&body.account_id).is_some())
        .await;
    if !account_known {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_account",
            format!(
                "account `{}` does not exist: PUT /v1/tesla/accounts/{} with the driver's refresh token first",
                body.account_id, body.account_id
            ),
        ));
    }
    if let Some(fields) = &body.fields {
        let problems = field_problems(fields, "fields");
        if !problems.is_empty() {
            let detail = problems
                .iter()
                .map(|(k, p)| format!("{k}: {p}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_fields",
                detail,
            ));
        }
    }
    let now = now_ms();
    let existing = t.onboarding.vehicle(&vin);
    let record = VehicleRecord {
        vin: vin.clone(),
        account_id: body.account_id,
        fields: body.fields,
        preset: body.preset,
        resync: existing.as_ref().map_or(0, |v| v.resync),
        removing: false,
        created_ms: existing.as_ref().map_or(now, |v| v.created_ms),
        updated_ms: now,
    };
    state
        .write(vec![Change::PutTesla(TeslaRecord::Vehicle(record.clone()))])
        .await?;
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(vehicle_view(&state, t, &record))))
}

/// Change a vehicle's desired record with `edit` and write it.
async fn edit_vehicle(
    state: &AdminState,
    vin: &str,
    edit: impl FnOnce(&mut VehicleRecord),
) -> ApiResult<(StatusCode, Json<VehicleView>)> {
    let t = tesla(state)?;
    let mut record = t
        .onboarding
        .vehicle(vin)
        .ok_or_else(|| ApiError::not_found("vehicle", vin))?;
    edit(&mut record);
    record.updated_ms = now_ms();
    state
        .write(vec![Change::PutTesla(TeslaRecord::Vehicle(record.clone()))])
        .await?;
    Ok((StatusCode::ACCEPTED, Json(vehicle_view(state, t, &record))))
}

/// Stop onboarding a vehicle: its config is deleted at Tesla, then it is forgotten (a GET
/// answers `removing` until then, 404 after).
#[utoipa::path(delete, path = "/v1/tesla/vehicles/{vin}", tag = "tesla", security(("bearer" = [])),
    params(("vin" = String, Path, description = "The VIN")), responses(
    (status = 202, description = "Being removed", body = VehicleView),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "Not onboarded, or Tesla onboarding is not configured", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody)))]
async fn delete_vehicle(
    State(state): State<AdminState>,
    Path(vin): Path<String>,
) -> ApiResult<(StatusCode, Json<VehicleView>)> {
    edit_vehicle(&state, &vin, |v| v.removing = true).await
}

/// Push the vehicle's config again (forces the car to send a full snapshot).
#[utoipa::path(post, path = "/v1/tesla/vehicles/{vin}/resync", tag = "tesla", security(("bearer" = [])),
    params(("vin" = String, Path, description = "The VIN")), responses(
    (status = 202, description = "The config will be pushed again", body = VehicleView),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "Not onboarded, or Tesla onboarding is not configured", body = ErrorBody),
    (status = 409, description = "The vehicle is being removed", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody)))]
async fn resync_vehicle(
    State(state): State<AdminState>,
    Path(vin): Path<String>,
) -> ApiResult<(StatusCode, Json<VehicleView>)> {
    let t = tesla(&state)?;
    if t.onboarding.vehicle(&vin).is_some_and(|v| v.removing) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "vehicle_removing",
            "the vehicle is being removed: PUT it again to onboard it anew",
        ));
    }
    edit_vehicle(&state, &vin, |v| v.resync += 1).await
}
