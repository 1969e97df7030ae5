//! The admin API (axum, its own listener): health and readiness, the OpenAPI document, and
//! bearer-token-protected `/v1` routes for sites, watches, vehicles and connections.
//!
//! Writes go to the durable store first; only after the commit is the engine updated and a 2xx
//! returned, so an acknowledged write survives `kill -9`. Every error is `{error, detail}` JSON.

pub mod openapi;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::ingest::registry::Registry;
use crate::rules::arrival::{Watch, WatchSpec};
use crate::rules::sites::{
    site_from_feature, site_to_feature, sites_from_geojson, Site, MAX_RADIUS_M,
};
use crate::rules::Engine;
use crate::sinks::{Readiness, SinkRouter};
use crate::store::{Store, StoreError};

/// Largest body of ordinary requests.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest GeoJSON import.
pub const MAX_IMPORT_BYTES: usize = 32 * 1024 * 1024;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Rules, table, sites, watches.
    pub engine: Arc<Engine>,
    /// Durable store.
    pub store: Arc<Store>,
    /// Open connections.
    pub registry: Arc<Registry>,
    /// Sinks (for readiness).
    pub sinks: SinkRouter,
    /// Set once the vehicle listener is bound.
    pub listener_up: Arc<AtomicBool>,
    /// VIN allow / block lists.
    pub vins: Arc<crate::ingest::vins::VinPolicy>,
    /// The bearer token (empty only in `--insecure-admin` mode).
    pub token: Arc<String>,
}

/// An API error: status plus `{error, detail}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
    extra: Option<Value>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            error,
            detail: detail.into(),
            extra: None,
        }
    }

    fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} `{id}` does not exist"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.error, "detail": self.detail});
        if let Some(extra) = self.extra {
            if let (Some(obj), Value::Object(more)) = (body.as_object_mut(), extra) {
                obj.extend(more);
            }
        }
        (self.status, Json(body)).into_response()
    }
}

/// A JSON request body: malformed JSON is `400 bad_json`; well-formed JSON that does not fit
/// the type is `422 invalid_body` (axum's own `Json` reports whichever error it meets first,
/// so `{"unknown_key":` would be a 422).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !json_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                let status = r.status();
                let error = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "body_too_large"
                } else {
                    "bad_request"
                };
                ApiError::new(status, error, r.body_text())
            })?;
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the body is not valid JSON: {e}"),
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de)
            .map(JsonBody)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("the body does not fit: {e}"),
                )
            })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "admin store write failed");
        if e.is_disk_full() {
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                "the data_dir disk is full; nothing was written",
            )
        } else {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("{e}; nothing was written"),
            )
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn query_error(r: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", r.body_text())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

/// Bearer-token check for `/v1`, compared in constant time.
async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if state.token.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(state.token.as_bytes())) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send `Authorization: Bearer <token>` with the admin token (fleetgate.admin.token or FLEETGATE_ADMIN_TOKEN)",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let v1 = Router::new()
        .route("/v1/sites", get(list_sites))
        .route("/v1/sites/export", get(export_sites))
        .route(
            "/v1/sites/import",
            post(import_sites).layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .route(
            "/v1/sites/{id}",
            get(get_site).put(put_site).delete(delete_site),
        )
        .route("/v1/watches", get(list_watches).post(create_watch))
        .route("/v1/watches/{id}", get(get_watch).delete(delete_watch))
        .route("/v1/vehicles", get(vehicles_near))
        .route("/v1/vehicles/{vin}", get(get_vehicle))
        .route("/v1/connections", get(list_connections))
        .route("/v1/vins", get(get_vins))
        .route(
            "/v1/vins/{list}/{vin}",
            axum::routing::put(put_vin).delete(delete_vin),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/healthz/sinks", get(sinks_health))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .merge(v1)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see /openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Each sink's readiness as JSON, and whether all of them can deliver now.
fn sink_health(state: &AdminState) -> (bool, Value) {
    let mut all_ready = true;
    let sinks: Vec<Value> = state
        .sinks
        .all()
        .iter()
        .map(|sink| match sink.readiness() {
            Readiness::Ready => json!({"sink": sink.name(), "ready": true}),
            Readiness::NotReady(why) => {
                all_ready = false;
                json!({"sink": sink.name(), "ready": false, "detail": why})
            }
        })
        .collect();
    (all_ready, Value::Array(sinks))
}

/// Ready = able to accept vehicles (the listener is bound and not draining). Sinks do not
/// gate it: with Kafka down, vehicles must still connect and be back-pressured (reliable acks
/// wait), not be turned away by every pod leaving the Service. Their state is reported here for
/// information and gates `/healthz/sinks`.
async fn readyz(State(state): State<AdminState>) -> Response {
    let (_, sinks) = sink_health(&state);
    if state.listener_up.load(Ordering::Relaxed) {
        Json(json!({"ready": true, "sinks": sinks})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the vehicle listener is not bound or the server is shutting down",
        )
        .into_response()
    }
}

/// Sink (broker) health: 200 when every sink can deliver now, 503 with each sink's reason.
async fn sinks_health(State(state): State<AdminState>) -> Response {
    let (all_ready, sinks) = sink_health(&state);
    let status = if all_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": all_ready, "sinks": sinks}))).into_response()
}

// ---------- sites ----------

/// A site in API form: GeoJSON geometry plus its properties, flat.
#[derive(Debug, Serialize, Deserialize)]
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
    pub radius_m: Option<f64>,
    /// GeoJSON geometry: Point, Polygon or MultiPolygon.
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

async fn list_sites(State(state): State<AdminState>) -> Json<Value> {
    let index = state.engine.sites.load();
    let sites: Vec<SiteBody> = index.all().iter().map(|s| site_body(s)).collect();
    Json(json!({"count": sites.len(), "sites": sites}))
}

async fn get_site(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SiteBody>> {
    let index = state.engine.sites.load();
    let site = index
        .get(&id)
        .ok_or_else(|| ApiError::not_found("site", &id))?;
    Ok(Json(site_body(site)))
}

async fn put_site(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SiteBody>,
) -> ApiResult<Response> {
    let site = site_from_body(&id, body, state.engine.config.default_radius_m)?;
    let existed = state.engine.sites.load().get(&id).is_some();
    let store = state.store.clone();
    let to_store = site.clone();
    blocking(move || store.put_sites(&[to_store])).await?;
    state.engine.sites.upsert(site.clone());
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(site_body(&site))).into_response())
}

async fn delete_site(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let store = state.store.clone();
    let key = id.clone();
    let existed = blocking(move || store.delete_site(&key)).await?;
    if !state.engine.sites.remove(&id) && !existed {
        return Err(ApiError::not_found("site", &id));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn import_sites(
    State(state): State<AdminState>,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> ApiResult<Json<Value>> {
    let text = body.map_err(|r| {
        let status = r.status();
        let error = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(status, error, r.body_text())
    })?;
    // malformed JSON is a bad request (400); well-formed but invalid GeoJSON is 422 below
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not valid JSON: {e}"),
        ));
    }
    let sites =
        sites_from_geojson(&text, state.engine.config.default_radius_m).map_err(|errors| {
            let list: Vec<Value> = errors
                .iter()
                .map(|(i, e)| json!({"index": i, "error": e.to_string()}))
                .collect();
            let mut err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_features",
                format!(
                    "{} feature(s) are invalid; nothing was imported",
                    errors.len()
                ),
            );
            err.extra = Some(json!({"features": list}));
            err
        })?;
    let n = sites.len();
    let store = state.store.clone();
    let to_store = sites.clone();
    blocking(move || store.put_sites(&to_store)).await?;
    let mut all: BTreeMap<String, Site> = state
        .engine
        .sites
        .load()
        .all()
        .iter()
        .map(|s| (s.id.clone(), (**s).clone()))
        .collect();
    for s in sites {
        all.insert(s.id.clone(), s);
    }
    state.engine.sites.replace(all.into_values().collect());
    Ok(Json(json!({"imported": n})))
}

async fn export_sites(State(state): State<AdminState>) -> Response {
    let index = state.engine.sites.load();
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

// ---------- watches ----------

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
    if state.engine.sites.load().get(&spec.site_id).is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_site",
            format!(
                "site_id: site `{}` does not exist; create it first",
                spec.site_id
            ),
        ));
    }
    if state.engine.watches.get(&spec.watch_id).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("watch `{}` exists; delete it first", spec.watch_id),
        ));
    }
    let store = state.store.clone();
    let to_store = spec.clone();
    blocking(move || store.put_watch(&to_store)).await?;
    state.engine.add_watch(watch.clone());
    Ok((StatusCode::CREATED, Json(watch)))
}

async fn get_watch(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Watch>> {
    state
        .engine
        .watches
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("watch", &id))
}

#[derive(Deserialize)]
struct WatchFilter {
    vin: Option<String>,
    site_id: Option<String>,
}

async fn list_watches(
    State(state): State<AdminState>,
    f: Result<Query<WatchFilter>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(f) = f.map_err(query_error)?;
    let watches = state
        .engine
        .watches
        .list(f.vin.as_deref(), f.site_id.as_deref());
    Ok(Json(json!({"count": watches.len(), "watches": watches})))
}

async fn delete_watch(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let store = state.store.clone();
    let key = id.clone();
    let existed = blocking(move || store.delete_watch(&key)).await?;
    if state.engine.watches.remove(&id).is_none() && !existed {
        return Err(ApiError::not_found("watch", &id));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------- VIN lists ----------

async fn get_vins(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({"admin": *state.vins.admin_lists(), "effective": *state.vins.effective()}))
}

fn vin_list(list: &str, vin: &str) -> ApiResult<&'static str> {
    let list = match list {
        "allow" => "allow",
        "block" => "block",
        _ => return Err(ApiError::not_found("list", list)),
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

/// Re-reads the stored lists into the policy and closes connections they now refuse.
async fn apply_vin_lists(state: &AdminState) -> ApiResult<usize> {
    let store = state.store.clone();
    let lists = blocking(move || store.vin_lists()).await?;
    state.vins.set_admin(lists);
    let vins = state.vins.clone();
    Ok(state.registry.kick(|vin| vins.refusal(vin).is_some()))
}

async fn put_vin(
    State(state): State<AdminState>,
    Path((list, vin)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let list = vin_list(&list, &vin)?;
    let store = state.store.clone();
    let key = vin.clone();
    let added = blocking(move || store.put_vin(list, &key)).await?;
    let closed = apply_vin_lists(&state).await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"list": list, "vin": vin, "connections_closed": closed})),
    ))
}

async fn delete_vin(
    State(state): State<AdminState>,
    Path((list, vin)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let list = vin_list(&list, &vin)?;
    let store = state.store.clone();
    let key = vin.clone();
    if !blocking(move || store.delete_vin(list, &key)).await? {
        return Err(ApiError::not_found("vin", &vin));
    }
    apply_vin_lists(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- vehicles and connections ----------

async fn get_vehicle(
    State(state): State<AdminState>,
    Path(vin): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = state
        .engine
        .vehicles
        .get(&vin)
        .ok_or_else(|| ApiError::not_found("vehicle", &vin))?;
    let inside: Vec<&str> = s.tracking.inside.iter().map(|(id, _)| &**id).collect();
    Ok(Json(json!({
        "vin": vin,
        "state": s,
        "sites_inside": inside,
        "charging_session_open": s.tracking.session.is_some(),
        "connections": state.registry.of_vin(&vin),
    })))
}

#[derive(Deserialize)]
struct NearQuery {
    near: Option<String>,
    radius_m: Option<f64>,
    limit: Option<usize>,
}

async fn vehicles_near(
    State(state): State<AdminState>,
    q: Result<Query<NearQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q.map_err(query_error)?;
    let bad = |d: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", d);
    let near = q.near.ok_or_else(|| bad("near=LAT,LON is required"))?;
    let (lat, lon) = near
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
    let found: Vec<Value> = state
        .engine
        .vehicles
        .near(lat, lon, radius, limit)
        .into_iter()
        .map(|(vin, d, s)| json!({"vin": vin, "distance_m": crate::rules::event::round(d), "state": s}))
        .collect();
    Ok(Json(json!({"count": found.len(), "vehicles": found})))
}

#[derive(Deserialize)]
struct Page {
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn list_connections(
    State(state): State<AdminState>,
    p: Result<Query<Page>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(p) = p.map_err(query_error)?;
    let limit = p.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "limit must be within [1, 10000]",
        ));
    }
    let all = state.registry.list();
    let page: Vec<_> = all
        .iter()
        .skip(p.offset.unwrap_or(0))
        .take(limit)
        .cloned()
        .collect();
    Ok(Json(json!({"count": all.len(), "connections": page})))
}
