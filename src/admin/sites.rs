//! Sites: CRUD, GeoJSON import and export.

use std::collections::BTreeMap;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::{AdminState, MAX_IMPORT_BYTES};
use crate::api::{body_rejection, json_syntax, ApiError, ApiResult, ErrorBody, JsonBody};
use crate::control::Change;
use crate::rules::geojson::{site_from_feature, site_to_feature, sites_from_geojson};
use crate::rules::sites::{Site, MAX_RADIUS_M};

/// The site routes.
pub(super) fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list_sites))
        .routes(routes!(export_sites))
        .routes(routes!(import_sites).layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)))
        .routes(routes!(get_site, put_site, delete_site))
}

/// `GET /v1/sites`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SiteList {
    /// Number of sites.
    pub count: usize,
    /// The sites.
    pub sites: Vec<SiteBody>,
}

/// A GeoJSON FeatureCollection (import body, export answer).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeatureCollection {
    /// Always `FeatureCollection`.
    #[serde(rename = "type")]
    #[schema(pattern = "^FeatureCollection$")]
    pub kind: String,
    /// GeoJSON Features: `id` (or `properties.id`), a Point with `properties.radius_m`, or a
    /// Polygon / MultiPolygon; `properties.name`, `.kind`, `.tags`.
    #[schema(value_type = Vec<Object>)]
    pub features: Vec<Value>,
}

/// `POST /v1/sites/import`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Imported {
    /// Sites created or replaced.
    pub imported: usize,
}

/// A site in API form: GeoJSON geometry plus its properties, flat.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteBody {
    /// Id (taken from the path on PUT; must match when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `merchant`, `charger`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Radius of a Point site (m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 100000)]
    pub radius_m: Option<f64>,
    /// GeoJSON geometry: Point, Polygon or MultiPolygon.
    #[schema(value_type = Object)]
    pub geometry: Value,
}

fn site_body(site: &Site) -> SiteBody {
    let f = site_to_feature(site);
    let props = f.properties.unwrap_or_default();
    SiteBody {
        id: Some(site.id.clone()),
        name: Some(site.name.clone()),
        kind: Some(site.kind.clone()),
        tags: site.tags.clone(),
        radius_m: props.get("radius_m").and_then(Value::as_f64),
        geometry: serde_json::to_value(f.geometry).unwrap_or(Value::Null),
    }
}

fn site_from_body(id: &str, body: SiteBody, default_radius_m: f64) -> ApiResult<Site> {
    if body.id.as_deref().is_some_and(|b| b != id) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_site",
            "id: body id differs from the path",
        ));
    }
    if let Some(r) = body.radius_m {
        if !r.is_finite() || r <= 0.0 || r > MAX_RADIUS_M {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_site",
                format!("radius_m: must be > 0 and <= {MAX_RADIUS_M}"),
            ));
        }
    }
    let geometry: geojson::Geometry = serde_json::from_value(body.geometry).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_site",
            format!("geometry: {e}"),
        )
    })?;
    let mut props = serde_json::Map::new();
    if let Some(n) = body.name {
        props.insert("name".into(), n.into());
    }
    if let Some(k) = body.kind {
        props.insert("kind".into(), k.into());
    }
    if let Some(r) = body.radius_m {
        props.insert("radius_m".into(), r.into());
    }
    props.insert(
        "tags".into(),
        serde_json::to_value(body.tags).unwrap_or_default(),
    );
    let feature = geojson::Feature {
        bbox: None,
        geometry: Some(geometry),
        id: Some(geojson::feature::Id::String(id.to_owned())),
        properties: Some(props),
        foreign_members: None,
    };
    site_from_feature(&feature, default_radius_m).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_site",
            e.to_string(),
        )
    })
}

/// Parses and validates a site body (the `PUT /v1/sites/{id}` JSON) — also the fuzz entry.
pub fn site_from_json(id: &str, text: &str, default_radius_m: f64) -> Result<Site, ApiError> {
    let body: SiteBody = serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.to_string(),
        )
    })?;
    site_from_body(id, body, default_radius_m)
}

/// List sites.
#[utoipa::path(get, path = "/v1/sites", tag = "sites", security(("bearer" = [])), responses(
    (status = 200, description = "Every site", body = SiteList),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
async fn list_sites(State(state): State<AdminState>) -> Json<SiteList> {
    let index = state.fleet.sites.load();
    let sites: Vec<SiteBody> = index.all().iter().map(|s| site_body(s)).collect();
    Json(SiteList {
        count: sites.len(),
        sites,
    })
}

/// Get a site.
#[utoipa::path(get, path = "/v1/sites/{id}", tag = "sites", security(("bearer" = [])),
    params(("id" = String, Path, description = "Site id")), responses(
    (status = 200, description = "The site", body = SiteBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No such site", body = ErrorBody)))]
async fn get_site(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SiteBody>> {
    let index = state.fleet.sites.load();
    let site = index
        .get(&id)
        .ok_or_else(|| ApiError::not_found("site", &id))?;
    Ok(Json(site_body(site)))
}

/// Create or replace a site.
#[utoipa::path(put, path = "/v1/sites/{id}", tag = "sites", security(("bearer" = [])),
    params(("id" = String, Path, description = "Site id")), request_body = SiteBody, responses(
    (status = 200, description = "Replaced", body = SiteBody),
    (status = 201, description = "Created", body = SiteBody),
    (status = 400, description = "Malformed JSON", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 415, description = "Body is not application/json", body = ErrorBody),
    (status = 422, description = "Well-formed JSON with invalid values", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody),
    (status = 507, description = "Data disk full; nothing was written", body = ErrorBody)))]
async fn put_site(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SiteBody>,
) -> ApiResult<Response> {
    let site = site_from_body(&id, body, state.fleet.config.default_radius_m)?;
    let existed = state.fleet.sites.load().get(&id).is_some();
    state.write(vec![Change::PutSite(site.clone())]).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(site_body(&site))).into_response())
}

/// Delete a site.
#[utoipa::path(delete, path = "/v1/sites/{id}", tag = "sites", security(("bearer" = [])),
    params(("id" = String, Path, description = "Site id")), responses(
    (status = 204, description = "Deleted"),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No such site", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody),
    (status = 507, description = "Data disk full; nothing was written", body = ErrorBody)))]
async fn delete_site(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if state.fleet.sites.load().get(&id).is_none() {
        return Err(ApiError::not_found("site", &id));
    }
    state.write(vec![Change::DeleteSite(id)]).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Import a GeoJSON FeatureCollection (all or nothing).
#[utoipa::path(post, path = "/v1/sites/import", tag = "sites", security(("bearer" = [])),
    request_body(content = FeatureCollection, content_type = "application/json"), responses(
    (status = 200, description = "Every feature imported", body = Imported),
    (status = 400, description = "Malformed JSON", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 422, description = "Invalid features (each listed); nothing was imported", body = ErrorBody),
    (status = 503, description = "Store unavailable; nothing was written", body = ErrorBody),
    (status = 507, description = "Data disk full; nothing was written", body = ErrorBody)))]
async fn import_sites(
    State(state): State<AdminState>,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> ApiResult<Json<Imported>> {
    let text = body.map_err(|r| body_rejection(r.status(), r.body_text()))?;
    // malformed JSON is a bad request (400); well-formed but invalid GeoJSON is 422 below
    json_syntax(text.as_bytes())?;
    let sites =
        sites_from_geojson(&text, state.fleet.config.default_radius_m).map_err(|errors| {
            let list: Vec<Value> = errors
                .iter()
                .map(|(i, e)| json!({"index": i, "error": e.to_string()}))
                .collect();
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_features",
                format!(
                    "{} feature(s) are invalid; nothing was imported",
                    errors.len()
                ),
            )
            .with_extra(json!({"features": list}))
        })?;
    let n = sites.len();
    state
        .write(sites.into_iter().map(Change::PutSite).collect())
        .await?;
    Ok(Json(Imported { imported: n }))
}

/// Export every site as a GeoJSON FeatureCollection.
#[utoipa::path(get, path = "/v1/sites/export", tag = "sites", security(("bearer" = [])), responses(
    (status = 200, description = "Every site", body = FeatureCollection, content_type = "application/geo+json"),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
async fn export_sites(State(state): State<AdminState>) -> Response {
    let index = state.fleet.sites.load();
    let fc = geojson::FeatureCollection {
        bbox: None,
        features: index.all().iter().map(|s| site_to_feature(s)).collect(),
        foreign_members: None,
    };
    (
        [(header::CONTENT_TYPE, "application/geo+json")],
        serde_json::to_string(&fc).unwrap_or_default(),
    )
        .into_response()
}
