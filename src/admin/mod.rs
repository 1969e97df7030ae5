//! The admin API (axum, its own listener): health and readiness, the OpenAPI document, and
//! bearer-token-protected `/v1` routes for sites, watches, vehicles and connections.
//!
//! Writes go through the control plane (`control`): made durable first — the SQLite store in
//! embedded mode, a Kafka transaction on the shared compacted topics in cluster mode — and
//! applied to the live fleet before a 2xx is returned, so an acknowledged write survives
//! `kill -9` and is visible to the next read on this instance. Every error is
//! `{error, detail}` JSON.

pub mod openapi;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::control::{Change, ControlPlane, Live, VinList, WriteError};
use crate::ingest::registry::{ConnectionEntry, Registry};
use crate::ingest::vins::VinLists;
use crate::rules::arrival::{Watch, WatchSpec};
use crate::rules::geojson::{site_from_feature, site_to_feature, sites_from_geojson};
use crate::rules::sites::{Site, MAX_RADIUS_M};
use crate::rules::Fleet;
use crate::sinks::{Readiness, SinkRouter};
use crate::state::VehicleState;
use crate::store::StoreError;

/// Largest body of ordinary requests.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest GeoJSON import.
pub const MAX_IMPORT_BYTES: usize = 32 * 1024 * 1024;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The fleet: table, sites, watches.
    pub fleet: Fleet,
    /// Where writes are made durable (the store, or the cluster's shared topics).
    pub control: ControlPlane,
    /// Cluster mode's parts (None in embedded mode).
    pub cluster: Option<crate::cluster::Cluster>,
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
    /// The Smartcar webhook source (None unless `fleetgate.sources.smartcar` is set).
    pub smartcar: Option<Arc<SmartcarSource>>,
}

/// What `POST /v1/sources/smartcar` needs: the signing token and the vehicle-id → VIN map.
#[derive(Debug, Clone)]
pub struct SmartcarSource {
    /// The application management token.
    pub token: String,
    /// Smartcar vehicle id → VIN.
    pub vehicles: std::collections::BTreeMap<String, String>,
}

/// An API error: status plus `{error, detail}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
    extra: Option<Value>,
}

/// Every error body: a stable code and a sentence saying what to do.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable error code (`not_found`, `bad_json`, `invalid_body`, `unauthorized`, …).
    pub error: String,
    /// What went wrong and how to fix it.
    pub detail: String,
    /// Per-feature problems of a refused GeoJSON import.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<FeatureProblem>>,
}

/// One invalid feature of a GeoJSON import.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeatureProblem {
    /// Index in `features`.
    pub index: usize,
    /// What is wrong with it.
    pub error: String,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process runs.
    pub status: &'static str,
}

/// `GET /readyz` and `GET /healthz/sinks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyBody {
    /// Ready (for `/readyz`: able to accept vehicles; for `/healthz/sinks`: every sink can
    /// deliver now).
    pub ready: bool,
    /// Each sink's state.
    pub sinks: Vec<SinkHealth>,
}

/// One sink's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct SinkHealth {
    /// Sink name (`logger`, `kafka`).
    pub sink: &'static str,
    /// It can deliver now.
    pub ready: bool,
    /// Why not, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
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
    /// True when every event sink confirmed the event; false (202) when confirmation is still
    /// pending after the wait.
    pub delivered: bool,
    /// The watch with its progress.
    pub watch: Watch,
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

/// `GET /v1/cluster`: this instance's place in the cluster.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterInfo {
    /// `embedded` or `cluster`.
    pub mode: &'static str,
    /// The cluster's name (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// This instance's id (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The `V` partitions whose vehicles' rules this instance owns now.
    pub rules_partitions: Vec<i32>,
    /// The rules joined their group and restored their first assignment.
    pub rules_joined: bool,
    /// A restore of assigned partitions is running now.
    pub restoring: bool,
}

/// `GET /v1/connections`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionPage {
    /// Open connections in all (not only this page).
    pub count: usize,
    /// This page.
    pub connections: Vec<ConnectionEntry>,
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

/// A body that could not be read: too large (413) or otherwise unreadable (400).
fn body_rejection(status: StatusCode, text: String) -> ApiError {
    let error = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "body_too_large"
    } else {
        "bad_request"
    };
    ApiError::new(status, error, text)
}

/// `400 bad_json` unless `bytes` is well-formed JSON (whatever its shape).
fn json_syntax(bytes: &[u8]) -> Result<(), ApiError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map(|_| ())
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the body is not valid JSON: {e}"),
            )
        })
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
            .map_err(|r| body_rejection(r.status(), r.body_text()))?;
        json_syntax(&bytes)?;
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

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Store(e) => e.into(),
            WriteError::Cluster(e) => {
                tracing::error!(error = %e, "admin write to the cluster's shared state failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cluster_unavailable",
                    e.to_string(),
                )
            }
            WriteError::Task(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        }
    }
}

impl AdminState {
    /// The table vehicle reads answer from: the cluster-wide view in cluster mode (a vehicle's
    /// rules may run on another instance), else this process's table.
    fn vehicle_table(&self) -> &crate::state::VehicleTable {
        match &self.cluster {
            Some(c) => &c.view.vehicles,
            None => &self.fleet.vehicles,
        }
    }

    /// Open sockets (optionally one VIN's): the whole cluster's in cluster mode, each naming
    /// the instance that holds it; else this process's.
    fn connections(&self, vin: Option<&str>) -> Vec<ConnectionEntry> {
        match (&self.cluster, vin) {
            (Some(c), _) => c.presence.connections(vin),
            (None, Some(vin)) => self.registry.of_vin(vin),
            (None, None) => self.registry.list(),
        }
    }

    /// Makes `changes` durable and applies them; returns connections closed by VIN changes.
    async fn write(&self, changes: Vec<Change>) -> ApiResult<usize> {
        let live = Live {
            fleet: self.fleet.clone(),
            vins: self.vins.clone(),
            registry: self.registry.clone(),
        };
        Ok(self.control.write(&live, changes).await?)
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn query_error(r: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", r.body_text())
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

/// The admin routes and their OpenAPI document, built together from the handlers (a route
/// cannot be served without being documented, or documented without being served).
pub fn api(state: AdminState) -> (Router<AdminState>, utoipa::openapi::OpenApi) {
    let v1 = OpenApiRouter::new()
        .routes(routes!(list_sites))
        .routes(routes!(export_sites))
        .routes(routes!(import_sites).layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)))
        .routes(routes!(get_site, put_site, delete_site))
        .routes(routes!(list_watches, create_watch))
        .routes(routes!(get_watch, delete_watch))
        .routes(routes!(arrive_watch))
        .routes(routes!(vehicles_near))
        .routes(routes!(get_vehicle))
        .routes(routes!(list_connections))
        .routes(routes!(cluster_info))
        .routes(routes!(get_vins))
        .routes(routes!(put_vin, delete_vin))
        .route_layer(middleware::from_fn_with_state(state, require_token));
    OpenApiRouter::with_openapi(openapi::base())
        // signed by Smartcar, not by our bearer token
        .routes(routes!(smartcar_webhook))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(sinks_health))
        .merge(v1)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .split_for_parts()
}

/// The admin router: [`api`] plus `/openapi.json` and the JSON 404 fallback.
pub fn router(state: AdminState) -> Router {
    let (routes, doc) = api(state.clone());
    let doc = Arc::new(openapi::finish(doc));
    routes
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json((*doc).clone()) }
            }),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see /openapi.json",
            )
        })
        .with_state(state)
}

/// Each sink's state, and whether all of them can deliver now.
fn sink_health(state: &AdminState) -> (bool, Vec<SinkHealth>) {
    let sinks: Vec<SinkHealth> = state
        .sinks
        .all()
        .iter()
        .map(|sink| match sink.readiness() {
            Readiness::Ready => SinkHealth {
                sink: sink.name(),
                ready: true,
                detail: None,
            },
            Readiness::NotReady(why) => SinkHealth {
                sink: sink.name(),
                ready: false,
                detail: Some(why),
            },
        })
        .collect();
    (sinks.iter().all(|s| s.ready), sinks)
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Up", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready = able to accept vehicles (the listener is bound and not draining). Sinks do not
/// gate it: with Kafka down, vehicles must still connect and be back-pressured (reliable acks
/// wait), not be turned away by every pod leaving the Service. Their state is reported for
/// information; `/healthz/sinks` is gated by it.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Accepting vehicles; sink states for information", body = ReadyBody),
    (status = 503, description = "Listener not bound or shutting down", body = ErrorBody)))]
async fn readyz(State(state): State<AdminState>) -> Response {
    let (_, sinks) = sink_health(&state);
    let rules_joined = state
        .cluster
        .as_ref()
        .is_none_or(|c| c.rules.status().joined.load(Ordering::Relaxed));
    if !rules_joined {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "cluster mode: joining the rules group and restoring the assigned vehicles' state",
        )
        .into_response();
    }
    if state.listener_up.load(Ordering::Relaxed) {
        Json(ReadyBody { ready: true, sinks }).into_response()
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
#[utoipa::path(get, path = "/healthz/sinks", tag = "health", responses(
    (status = 200, description = "Every sink can deliver", body = ReadyBody),
    (status = 503, description = "A sink cannot deliver now (each one's reason inside)", body = ReadyBody)))]
async fn sinks_health(State(state): State<AdminState>) -> (StatusCode, Json<ReadyBody>) {
    let (ready, sinks) = sink_health(&state);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(ReadyBody { ready, sinks }))
}

// ---------- sites ----------

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

// ---------- watches ----------

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
    if state.fleet.sites.load().get(&spec.site_id).is_none() {
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
        .fleet
        .watches
        .get(&id)
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
    let watches = state
        .fleet
        .watches
        .list(f.vin.as_deref(), f.site_id.as_deref());
    Ok(Json(WatchList {
        count: watches.len(),
        watches,
    }))
}

/// The driver says the vehicle has arrived ("I'm here"): emits `arrival.arrived` with
/// `source: "manual"` unless the watch has arrived already (by any source), in which case the
/// report is recorded on the watch (`later_sources`) and nothing is emitted — at most one
/// arrival per watch, whichever source comes first. Answers once the event sinks confirmed the
/// event (up to 10 s).
#[utoipa::path(post, path = "/v1/watches/{id}/arrive", tag = "watches", security(("bearer" = [])),
    params(("id" = String, Path, description = "Watch id")), request_body = ArriveBody, responses(
    (status = 200, description = "Arrived (emitted and confirmed), or had arrived already (not emitted)", body = ArriveResult),
    (status = 202, description = "Emitted; a sink has not confirmed it yet", body = ArriveResult),
    (status = 400, description = "Malformed JSON", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No such watch", body = ErrorBody),
    (status = 415, description = "Body is not application/json", body = ErrorBody),
    (status = 422, description = "Invalid values", body = ErrorBody),
    (status = 501, description = "Cluster mode: manual arrivals are not available yet", body = ErrorBody),
    (status = 503, description = "A sink refused the event; nothing changed, retry", body = ErrorBody)))]
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
    if state.cluster.is_some() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "manual arrivals are not available in cluster mode yet (the watch's progress lives with the instance that owns the vehicle's rules); see docs/cluster.md",
        ));
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let outcome = state
        .fleet
        .arrive_manually(&id, body.reason.as_deref(), now_ms)
        .ok_or_else(|| ApiError::not_found("watch", &id))?;
    let watch = |state: &AdminState| state.fleet.watches.get(&id);
    match outcome {
        crate::rules::ManualArrival::AlreadyArrived { source } => Ok((
            StatusCode::OK,
            Json(ArriveResult {
                emitted: false,
                arrival_source: source,
                event_id: None,
                delivered: true,
                watch: watch(&state).ok_or_else(|| ApiError::not_found("watch", &id))?,
            }),
        )),
        crate::rules::ManualArrival::Arrived(event) => {
            let delivery = publish_confirmed(&state.sinks, std::slice::from_ref(&*event)).await;
            if delivery == Delivery::Failed {
                state.fleet.undo_manual_arrival(&id, now_ms);
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "sink_unavailable",
                    "an event sink refused or failed to deliver the arrival; nothing changed: retry (see /healthz/sinks)",
                ));
            }
            let delivered = delivery == Delivery::Confirmed;
            Ok((
                if delivered {
                    StatusCode::OK
                } else {
                    StatusCode::ACCEPTED
                },
                Json(ArriveResult {
                    emitted: true,
                    arrival_source: crate::state::Source::Manual.as_str().to_owned(),
                    event_id: Some(event.id.clone()),
                    delivered,
                    watch: watch(&state).ok_or_else(|| ApiError::not_found("watch", &id))?,
                }),
            ))
        }
    }
}

/// How the publication of an event made by the API went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Every event sink confirmed it.
    Confirmed,
    /// Some sink has not answered yet (it keeps trying).
    Pending,
    /// A sink refused it or reported a failure.
    Failed,
}

/// Publishes `events` (in order) to every event sink and waits up to 10 s for each one's
/// confirmation.
async fn publish_confirmed(sinks: &SinkRouter, events: &[crate::event::Event]) -> Delivery {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut waiting = 0usize;
    for event in events {
        let Ok(json) = serde_json::to_vec(&event.to_cloudevent()) else {
            return Delivery::Failed;
        };
        crate::metrics::count_event(event.kind.as_str());
        for sink in sinks.event_sinks() {
            let ticket = crate::sinks::DeliveryTicket::tracked(tx.clone(), waiting as u64, None);
            if let Err(e) = sink.publish_event(event, &json, ticket) {
                tracing::warn!(vin = %event.vin, sink = sink.name(), error = %e, "sink refused an event");
                return Delivery::Failed;
            }
            waiting += 1;
        }
    }
    drop(tx);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while waiting > 0 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(c)) if c.delivered => waiting -= 1,
            Ok(Some(_)) => return Delivery::Failed,
            Ok(None) => return Delivery::Failed,
            Err(_) => return Delivery::Pending,
        }
    }
    Delivery::Confirmed
}

/// What a Smartcar delivery did.
#[derive(Debug, Serialize, ToSchema)]
pub struct SmartcarResult {
    /// The VIN the delivery was applied to (absent when it was ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vin: Option<String>,
    /// Types of the events it caused.
    pub events: Vec<String>,
    /// True when every event sink confirmed them (202 otherwise: they are on their way).
    pub delivered: bool,
    /// Why nothing was applied (an event type fleetgate does not use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

/// Smartcar webhooks (`fleetgate.sources.smartcar`): a `VEHICLE_STATE` delivery's location,
/// SoC and charging signals run through the same rules as Tesla frames (events say `source:
/// "smartcar"`); a `VERIFY` delivery is answered with `{"challenge": HMAC}`. Every delivery but
/// VERIFY must carry a valid `SC-Signature` (HMAC-SHA256 of the body, keyed with the
/// application management token); no bearer token.
#[utoipa::path(post, path = "/v1/sources/smartcar", tag = "sources",
    request_body(content = Object, description = "A Smartcar webhook delivery"), responses(
    (status = 200, description = "Applied and confirmed (or the VERIFY answer, or ignored)", body = SmartcarResult),
    (status = 202, description = "Applied; a sink has not confirmed the events yet", body = SmartcarResult),
    (status = 400, description = "Not JSON", body = ErrorBody),
    (status = 401, description = "Missing or wrong SC-Signature", body = ErrorBody),
    (status = 404, description = "The Smartcar source is not configured", body = ErrorBody),
    (status = 422, description = "Not a Smartcar delivery, or a vehicle id without a VIN", body = ErrorBody),
    (status = 501, description = "Cluster mode: Smartcar state is not available yet", body = ErrorBody)))]
async fn smartcar_webhook(
    State(state): State<AdminState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    use crate::sources::smartcar;
    let Some(source) = state.smartcar.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the Smartcar source is not configured: set fleetgate.sources.smartcar",
        ));
    };
    let signature = headers.get("sc-signature").and_then(|v| v.to_str().ok());
    let signed = signature.is_some_and(|s| smartcar::verify(&source.token, &body, s));
    if signature.is_some() && !signed {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "SC-Signature does not match the body: check fleetgate.sources.smartcar's management token",
        ));
    }
    let json: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not JSON: {e}"),
        )
    })?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let delivery = smartcar::read_delivery(&json, &source.vehicles, now_ms).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_delivery",
            e.to_string(),
        )
    })?;
    // VERIFY proves itself (only the token holder can answer); everything else must be signed
    if let smartcar::Delivery::Verify(challenge) = &delivery {
        return Ok(Json(
            serde_json::json!({"challenge": smartcar::sign(&source.token, challenge.as_bytes())}),
        )
        .into_response());
    }
    if !signed {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "missing SC-Signature: Smartcar signs every delivery",
        ));
    }
    match delivery {
        smartcar::Delivery::Verify(_) => unreachable!("answered above"),
        smartcar::Delivery::Ignored(kind) => Ok(Json(SmartcarResult {
            vin: None,
            events: Vec::new(),
            delivered: true,
            ignored: Some(kind),
        })
        .into_response()),
        smartcar::Delivery::State { vin, update } => {
            if state.cluster.is_some() {
                return Err(ApiError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "not_implemented",
                    "Smartcar state is not available in cluster mode yet (the vehicle's rules run on the instance that owns it); see docs/cluster.md",
                ));
            }
            let events = state.fleet.apply(&vin, &update);
            // the rules moved already: a retry would not re-emit, so a slow sink is a 202
            // (the sinks keep trying), never an error that invites a pointless retry
            let delivery = if events.is_empty() {
                Delivery::Confirmed
            } else {
                publish_confirmed(&state.sinks, &events).await
            };
            let delivered = delivery == Delivery::Confirmed;
            let status = if delivered {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok((
                status,
                Json(SmartcarResult {
                    vin: Some(vin),
                    events: events.iter().map(|e| e.kind.as_str().to_owned()).collect(),
                    delivered,
                    ignored: None,
                }),
            )
                .into_response())
        }
    }
}

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

// ---------- VIN lists ----------

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

// ---------- cluster ----------

/// This instance's place in the cluster: mode, name, id, the partitions whose rules it owns.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", security(("bearer" = [])), responses(
    (status = 200, description = "Mode and ownership", body = ClusterInfo),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
async fn cluster_info(State(state): State<AdminState>) -> Json<ClusterInfo> {
    Json(match &state.cluster {
        None => ClusterInfo {
            mode: "embedded",
            name: None,
            instance: None,
            rules_partitions: Vec::new(),
            rules_joined: true,
            restoring: false,
        },
        Some(c) => {
            let status = c.rules.status();
            ClusterInfo {
                mode: "cluster",
                name: Some(c.name.clone()),
                instance: Some(c.instance_id.clone()),
                rules_partitions: status.owned(),
                rules_joined: status.joined.load(Ordering::Relaxed),
                restoring: status.restoring.load(Ordering::Relaxed),
            }
        }
    })
}

// ---------- vehicles and connections ----------

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
    /// `LAT,LON` in degrees (required).
    near: Option<String>,
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
