//! Watches: create, read (with progress), list, delete, and the manual arrival.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
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
use crate::rules::arrival::{Watch, WatchSpec};
use crate::rules::input::{ArrivalReply, RuleInput};
use crate::runner::SubmitError;

/// The watch routes.
pub(super) fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list_watches, create_watch))
        .routes(routes!(get_watch, delete_watch))
        .routes(routes!(arrive_watch))
}

/// `GET /v1/watches`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WatchList {
    /// Number of watches.
    pub count: usize,
    /// The watches with their progress.
    pub watches: Vec<Watch>,
}

/// `POST /v1/watches/{id}/arrive` body: the driver's "I'm here".
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArriveBody {
    /// Why, for the record (e.g. `driver_tapped_im_here`); carried in the event's data.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub reason: Option<String>,
}

/// What a manual arrival did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArriveResult {
    /// True when this call emitted `arrival.arrived`; false when another source (or an earlier
    /// call) saw the arrival first — then it is only recorded on the watch.
    pub emitted: bool,
    /// The source that saw the arrival first.
    pub arrival_source: String,
    /// The emitted event's id (only when `emitted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// True when the event is safe: confirmed by every event sink (embedded mode) or
    /// committed to the events topic (cluster mode); false (202) when that is still pending
    /// after the wait.
    pub delivered: bool,
    /// True (202) when the arrival is queued for the vehicle's rules but was not applied
    /// within the wait (cluster mode: the vehicle's partition is moving); `emitted` is then
    /// not known yet — read the watch again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// The watch with its progress.
    pub watch: Watch,
}

/// Create a watch.
#[utoipa::path(post, path = "/v1/watches", tag = "watches", security(("bearer" = [])),
    request_body = WatchSpec, responses(
    (status = 201, description = "Created", body = Watch),
    (status = 400, description = "Malformed JSON", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 409, description = "A watch with this id exists", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 415, description = "Body is not application/json", body = ErrorBody),
    (status = 422, description = "Well-formed JSON with invalid values, or an unknown site", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody),
    (status = 507, description = "Data disk full; nothing was written", body = ErrorBody)))]
async fn create_watch(
    State(state): State<AdminState>,
    JsonBody(spec): JsonBody<WatchSpec>,
) -> ApiResult<(StatusCode, Json<Watch>)> {
    let watch = spec.clone().into_watch().map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_watch",
            e.to_string(),
        )
    })?;
    if watch.expires_at_ms <= crate::runner::now_ms() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_watch",
            format!(
                "expires_at: {} is in the past: a watch that has expired can never fire; give a time to come",
                spec.expires_at
            ),
        ));
    }
    let site_known = state
        .eventually_known(|| state.fleet.sites.load().get(&spec.site_id).is_some())
        .await;
    if !site_known {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_site",
            format!(
                "site_id: site `{}` does not exist; create it first",
                spec.site_id
            ),
        ));
    }
    if state.fleet.watches.get(&spec.watch_id).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("watch `{}` exists; delete it first", spec.watch_id),
        ));
    }
    state.write(vec![Change::PutWatch(spec)]).await?;
    Ok((StatusCode::CREATED, Json(watch)))
}

/// Get a watch with its progress.
#[utoipa::path(get, path = "/v1/watches/{id}", tag = "watches", security(("bearer" = [])),
    params(("id" = String, Path, description = "Watch id")), responses(
    (status = 200, description = "The watch", body = Watch),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No such watch", body = ErrorBody)))]
async fn get_watch(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Watch>> {
    state
        .watch(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("watch", &id))
}

/// Filters of `GET /v1/watches`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct WatchFilter {
    /// Only this vehicle's watches.
    vin: Option<String>,
    /// Only watches of this site.
    site_id: Option<String>,
}

/// List watches.
#[utoipa::path(get, path = "/v1/watches", tag = "watches", security(("bearer" = [])),
    params(WatchFilter), responses(
    (status = 200, description = "The watches", body = WatchList),
    (status = 400, description = "Bad query", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
async fn list_watches(
    State(state): State<AdminState>,
    f: Result<Query<WatchFilter>, QueryRejection>,
) -> ApiResult<Json<WatchList>> {
    let Query(f) = f.map_err(query_error)?;
    let watches = state.watches(f.vin.as_deref(), f.site_id.as_deref());
    Ok(Json(WatchList {
        count: watches.len(),
        watches,
    }))
}

/// The driver says the vehicle has arrived ("I'm here"): emits `arrival.arrived` with
/// `source: "manual"` unless the watch has arrived already (by any source), in which case the
/// report is recorded on the watch (`later_sources`) and nothing is emitted — at most one
/// arrival per watch, whichever source comes first. The report is an input of the vehicle's
/// rules, applied where they run (any instance may take it in cluster mode). Answers once the
/// event is safe (up to 10 s).
#[utoipa::path(post, path = "/v1/watches/{id}/arrive", tag = "watches", security(("bearer" = [])),
    params(("id" = String, Path, description = "Watch id")), request_body = ArriveBody, responses(
    (status = 200, description = "Arrived (emitted and confirmed), or had arrived already (not emitted)", body = ArriveResult),
    (status = 202, description = "Emitted and not confirmed yet, or queued and not applied yet (`pending`)", body = ArriveResult),
    (status = 400, description = "Malformed JSON", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No such watch", body = ErrorBody),
    (status = 415, description = "Body is not application/json", body = ErrorBody),
    (status = 422, description = "Invalid values", body = ErrorBody),
    (status = 503, description = "A sink refused the event, or Kafka did not take the report; nothing changed, retry", body = ErrorBody)))]
async fn arrive_watch(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ArriveBody>,
) -> ApiResult<(StatusCode, Json<ArriveResult>)> {
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > 200)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "reason: at most 200 characters",
        ));
    }
    let vin = state
        .fleet
        .watches
        .get(&id)
        .ok_or_else(|| ApiError::not_found("watch", &id))?
        .spec
        .vin;
    let input = RuleInput::ManualArrival {
        watch_id: id.clone(),
        reason: body.reason,
        at_ms: crate::runner::now_ms(),
    };
    let submitted = match state.rules.submit(&vin, input, ARRIVE_WAIT).await {
        Ok(s) => s,
        Err(SubmitError::Unavailable(detail)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sink_unavailable",
                detail,
            ))
        }
        Err(SubmitError::Pending { .. }) => {
            let watch = state
                .watch(&id)
                .ok_or_else(|| ApiError::not_found("watch", &id))?;
            return Ok((
                StatusCode::ACCEPTED,
                Json(ArriveResult {
                    emitted: false,
                    arrival_source: watch.progress.arrival_source.clone().unwrap_or_default(),
                    event_id: None,
                    delivered: false,
                    pending: true,
                    watch,
                }),
            ));
        }
    };
    let watch = state
        .watch(&id)
        .ok_or_else(|| ApiError::not_found("watch", &id))?;
    match submitted.receipt.arrival {
        Some(ArrivalReply::Arrived { event_id }) => Ok((
            if submitted.delivered {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            },
            Json(ArriveResult {
                emitted: true,
                arrival_source: crate::state::Source::Manual.as_str().to_owned(),
                event_id: Some(event_id),
                delivered: submitted.delivered,
                pending: false,
                watch,
            }),
        )),
        Some(ArrivalReply::AlreadyArrived { source }) => Ok((
            StatusCode::OK,
            Json(ArriveResult {
                emitted: false,
                arrival_source: source,
                event_id: None,
                delivered: true,
                pending: false,
                watch,
            }),
        )),
        Some(ArrivalReply::UnknownWatch) | None => Err(ApiError::not_found("watch", &id)),
    }
}

/// How long a manual arrival waits for its event to be safe.
const ARRIVE_WAIT: Duration = Duration::from_secs(10);

/// Delete a watch.
#[utoipa::path(delete, path = "/v1/watches/{id}", tag = "watches", security(("bearer" = [])),
    params(("id" = String, Path, description = "Watch id")), responses(
    (status = 204, description = "Deleted"),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No such watch", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody),
    (status = 507, description = "Data disk full; nothing was written", body = ErrorBody)))]
async fn delete_watch(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let existed = state.fleet.watches.get(&id).is_some();
    // written even when not live: an expired watch may still be stored
    state.write(vec![Change::DeleteWatch(id.clone())]).await?;
    if !existed {
        return Err(ApiError::not_found("watch", &id));
    }
    Ok(StatusCode::NO_CONTENT)
}
