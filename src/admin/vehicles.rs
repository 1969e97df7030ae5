//! Vehicles (one, or those near a point) and open connections: the whole cluster's in
//! cluster mode.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AdminState;
use crate::api::{query_error, ApiError, ApiResult, ErrorBody};
use crate::ingest::registry::ConnectionEntry;
use crate::state::VehicleState;

/// The vehicle and connection routes.
pub(super) fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(vehicles_near))
        .routes(routes!(get_vehicle))
        .routes(routes!(list_connections))
}

/// `GET /v1/vehicles/{vin}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VehicleView {
    /// The vehicle.
    pub vin: String,
    /// Its latest state.
    pub state: VehicleState,
    /// Sites it is inside now.
    pub sites_inside: Vec<String>,
    /// A charging session is open.
    pub charging_session_open: bool,
    /// Its open sockets.
    pub connections: Vec<ConnectionEntry>,
}

/// One vehicle of `GET /v1/vehicles?near=`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NearVehicle {
    /// The vehicle.
    pub vin: String,
    /// Distance from the point (m).
    pub distance_m: f64,
    /// Its latest state.
    pub state: VehicleState,
}

/// `GET /v1/vehicles?near=`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NearList {
    /// Number found.
    pub count: usize,
    /// Nearest first.
    pub vehicles: Vec<NearVehicle>,
}

/// `GET /v1/connections`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionPage {
    /// Open connections in all (not only this page).
    pub count: usize,
    /// This page.
    pub connections: Vec<ConnectionEntry>,
}

/// Latest state of a vehicle, connected or not.
#[utoipa::path(get, path = "/v1/vehicles/{vin}", tag = "vehicles", security(("bearer" = [])),
    params(("vin" = String, Path, description = "The VIN")), responses(
    (status = 200, description = "The vehicle", body = VehicleView),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "Never seen", body = ErrorBody)))]
async fn get_vehicle(
    State(state): State<AdminState>,
    Path(vin): Path<String>,
) -> ApiResult<Json<VehicleView>> {
    let s = state
        .vehicle_table()
        .get(&vin)
        .ok_or_else(|| ApiError::not_found("vehicle", &vin))?;
    Ok(Json(VehicleView {
        sites_inside: s
            .tracking
            .inside
            .iter()
            .map(|(id, _)| id.to_string())
            .collect(),
        charging_session_open: s.tracking.session.is_some(),
        connections: state.connections(Some(&vin)),
        state: s,
        vin,
    }))
}

/// Query of `GET /v1/vehicles`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct NearQuery {
    /// `LAT,LON` in degrees.
    near: String,
    /// Radius in metres, (0, 100000] (default 1000).
    radius_m: Option<f64>,
    /// Most vehicles to return, [1, 1000] (default 100).
    limit: Option<usize>,
}

/// Vehicles near a point, nearest first.
#[utoipa::path(get, path = "/v1/vehicles", tag = "vehicles", security(("bearer" = [])),
    params(NearQuery), responses(
    (status = 200, description = "Vehicles within the radius", body = NearList),
    (status = 400, description = "Missing or invalid near, radius_m or limit", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
async fn vehicles_near(
    State(state): State<AdminState>,
    q: Result<Query<NearQuery>, QueryRejection>,
) -> ApiResult<Json<NearList>> {
    let Query(q) = q.map_err(query_error)?;
    let bad = |d: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", d);
    let (lat, lon) = q
        .near
        .split_once(',')
        .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)))
        .ok_or_else(|| bad("near must be LAT,LON"))?;
    if !lat.is_finite()
        || !(-90.0..=90.0).contains(&lat)
        || !lon.is_finite()
        || !(-180.0..=180.0).contains(&lon)
    {
        return Err(bad(
            "near: latitude must be within [-90, 90] and longitude within [-180, 180]",
        ));
    }
    let radius = q.radius_m.unwrap_or(1000.0);
    if !radius.is_finite() || radius <= 0.0 || radius > 100_000.0 {
        return Err(bad("radius_m must be > 0 and <= 100000"));
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(bad("limit must be within [1, 1000]"));
    }
    let found: Vec<NearVehicle> = state
        .vehicle_table()
        .near(lat, lon, radius, limit)
        .into_iter()
        .map(|(vin, d, s)| NearVehicle {
            vin: vin.to_string(),
            distance_m: crate::event::round(d),
            state: s,
        })
        .collect();
    Ok(Json(NearList {
        count: found.len(),
        vehicles: found,
    }))
}

/// Paging of `GET /v1/connections`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Page size, [1, 10000] (default 100).
    limit: Option<usize>,
    /// Connections to skip (default 0).
    offset: Option<usize>,
}

/// Open vehicle connections (paged, oldest first).
#[utoipa::path(get, path = "/v1/connections", tag = "vehicles", security(("bearer" = [])),
    params(Page), responses(
    (status = 200, description = "A page of open connections", body = ConnectionPage),
    (status = 400, description = "Invalid limit or offset", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
async fn list_connections(
    State(state): State<AdminState>,
    p: Result<Query<Page>, QueryRejection>,
) -> ApiResult<Json<ConnectionPage>> {
    let Query(p) = p.map_err(query_error)?;
    let limit = p.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "limit must be within [1, 10000]",
        ));
    }
    let all = state.connections(None);
    let page: Vec<_> = all
        .iter()
        .skip(p.offset.unwrap_or(0))
        .take(limit)
        .cloned()
        .collect();
    Ok(Json(ConnectionPage {
        count: all.len(),
        connections: page,
    }))
}
