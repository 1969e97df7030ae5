//! The admin VIN allow / block lists.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AdminState;
use crate::api::{ApiError, ApiResult, ErrorBody};
use crate::control::{Change, VinList};
use crate::ingest::vins::VinLists;

/// The VIN list routes.
pub(super) fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(get_vins))
        .routes(routes!(put_vin, delete_vin))
}

/// `GET /v1/vins`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VinListsView {
    /// The lists the admin API manages (stored).
    pub admin: VinLists,
    /// What is enforced: config ∪ data connector file ∪ admin.
    pub effective: VinLists,
}

/// `PUT /v1/vins/{list}/{vin}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VinChange {
    /// `allow` or `block`.
    pub list: &'static str,
    /// The VIN.
    pub vin: String,
    /// Connections the new lists refused and closed.
    pub connections_closed: usize,
}

/// The VIN allow / block lists (the admin API's and the effective ones).
#[utoipa::path(get, path = "/v1/vins", tag = "vins", security(("bearer" = [])), responses(
    (status = 200, description = "The lists", body = VinListsView),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
async fn get_vins(State(state): State<AdminState>) -> Json<VinListsView> {
    Json(VinListsView {
        admin: (*state.vins.admin_lists()).clone(),
        effective: (*state.vins.effective()).clone(),
    })
}

fn vin_list(list: &str, vin: &str) -> ApiResult<VinList> {
    let Some(list) = VinList::parse(list) else {
        return Err(ApiError::not_found("list", list));
    };
    if vin.trim().is_empty() || vin.len() > 64 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_vin",
            "vin must be 1 to 64 characters",
        ));
    }
    Ok(list)
}

/// True when `vin` is on the admin API's `list`.
fn on_admin_list(state: &AdminState, list: VinList, vin: &str) -> bool {
    let lists = state.vins.admin_lists();
    match list {
        VinList::Allow => lists.allow.contains(vin),
        VinList::Block => lists.block.contains(vin),
    }
}

/// Add a VIN to the allow or block list; connections the lists now refuse are closed.
#[utoipa::path(put, path = "/v1/vins/{list}/{vin}", tag = "vins", security(("bearer" = [])),
    params(("list" = String, Path, description = "`allow` or `block`"),
           ("vin" = String, Path, description = "The VIN (1 to 64 characters)")), responses(
    (status = 200, description = "Already listed", body = VinChange),
    (status = 201, description = "Added", body = VinChange),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No such list", body = ErrorBody),
    (status = 422, description = "Invalid VIN", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody),
    (status = 507, description = "Data disk full; nothing was written", body = ErrorBody)))]
async fn put_vin(
    State(state): State<AdminState>,
    Path((list, vin)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<VinChange>)> {
    let list = vin_list(&list, &vin)?;
    let added = !on_admin_list(&state, list, &vin);
    let closed = state.write(vec![Change::PutVin(list, vin.clone())]).await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(VinChange {
            list: list.as_str(),
            vin,
            connections_closed: closed,
        }),
    ))
}

/// Remove a VIN from a list.
#[utoipa::path(delete, path = "/v1/vins/{list}/{vin}", tag = "vins", security(("bearer" = [])),
    params(("list" = String, Path, description = "`allow` or `block`"),
           ("vin" = String, Path, description = "The VIN")), responses(
    (status = 204, description = "Removed"),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No such list, or the VIN is not on it", body = ErrorBody),
    (status = 422, description = "Invalid VIN", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody),
    (status = 507, description = "Data disk full; nothing was written", body = ErrorBody)))]
async fn delete_vin(
    State(state): State<AdminState>,
    Path((list, vin)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let list = vin_list(&list, &vin)?;
    if !on_admin_list(&state, list, &vin) {
        return Err(ApiError::not_found("vin", &vin));
    }
    state.write(vec![Change::DeleteVin(list, vin)]).await?;
    Ok(StatusCode::NO_CONTENT)
}
