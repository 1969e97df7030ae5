//! The admin API (axum, its own listener): health and readiness, the OpenAPI document, and
//! bearer-token-protected `/v1` routes, one module per resource — [`sites`], [`watches`],
//! [`vins`], [`vehicles`] (and connections), [`cluster`], [`tesla`] (onboarding) — beside
//! [`health`]. The Smartcar
//! webhook is mounted here from `sources` (it is signed by Smartcar, not by the token).
//!
//! Writes go through the one admin log (`control`): made durable first — the SQLite store in
//! embedded mode, a Kafka transaction on the shared compacted topics in cluster mode — and
//! applied to the live fleet before a 2xx is returned, so an acknowledged write survives
//! `kill -9` and is visible to the next read on this instance. Inputs of the rules (a manual
//! arrival) go through the rules' placement, which applies them where the vehicle's rules run.
//! Reads answer the same on every instance: vehicle state and watch progress come from the
//! cluster-wide view in cluster mode. Every error is `{error, detail}` JSON.

pub mod cluster;
pub mod health;
pub mod openapi;
pub mod sites;
pub mod starting;
pub mod tesla;
pub mod vehicles;
pub mod vins;
pub mod watches;

pub use sites::site_from_json;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;

use crate::api::{ApiError, ApiResult};
use crate::control::{AdminLog, Change, WriteError};
use crate::ingest::registry::{ConnectionEntry, Registry};
use crate::rules::arrival::Watch;
use crate::rules::Fleet;
use crate::runner::Placement;
use crate::sinks::SinkRouter;

/// Largest body of ordinary requests.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest GeoJSON import.
pub const MAX_IMPORT_BYTES: usize = 32 * 1024 * 1024;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The fleet: sites, watches (every instance holds all of them), this process's vehicles.
    pub fleet: Fleet,
    /// Where admin writes are made durable (the store, or the cluster's shared topics).
    pub log: Arc<dyn AdminLog>,
    /// Where the rules' inputs go (this process, or the owner of the vehicle's partition).
    pub rules: Arc<dyn Placement>,
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
    /// The Smartcar webhook source's state (its route answers 404 when not configured).
    pub smartcar: crate::sources::smartcar::http::SmartcarState,
    /// Tesla onboarding (None: `/v1/tesla` answers 404 `tesla_not_configured`).
    pub tesla: Option<tesla::TeslaAdmin>,
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::DiskFull(detail) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", detail)
            }
            WriteError::Unavailable {
                backend: "cluster",
                detail,
            } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                detail,
            ),
            WriteError::Unavailable { detail, .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", detail)
            }
            WriteError::Invalid(detail) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail)
            }
        }
    }
}

impl AdminState {
    /// Whether `known()` holds for something a request refers to (a site, an account). In
    /// cluster mode it may have been created through another instance a moment ago and not
    /// have reached this one yet (admin writes reach every instance within milliseconds,
    /// docs/cluster.md): a client behind a load balancer that creates a site and then a watch
    /// for it must not get "unknown site", so the answer waits for it up to 2 s.
    async fn eventually_known(&self, known: impl Fn() -> bool) -> bool {
        if known() || self.cluster.is_none() {
            return known();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if known() {
                return true;
            }
        }
        false
    }

    /// The table vehicle reads answer from: the cluster-wide view in cluster mode (a vehicle's
    /// rules may run on another instance), else this process's table.
    fn vehicle_table(&self) -> &crate::state::VehicleTable {
        match &self.cluster {
            Some(c) => &c.view.vehicles,
            None => &self.fleet.vehicles,
        }
    }

    /// A watch with its progress as the vehicle's rules last committed it: this process's in
    /// embedded mode; the cluster-wide view's in cluster mode (the same on every instance,
    /// whichever owns the vehicle).
    fn watch(&self, id: &str) -> Option<Watch> {
        let mut watch = self.fleet.watches.get(id)?;
        if let Some(c) = &self.cluster {
            watch.progress = c
                .view
                .watch_progress(&watch.spec.vin, id)
                .unwrap_or_default();
        }
        Some(watch)
    }

    /// Every watch (optionally filtered), with progress as [`AdminState::watch`] gives it.
    fn watches(&self, vin: Option<&str>, site_id: Option<&str>) -> Vec<Watch> {
        let mut list = self.fleet.watches.list(vin, site_id);
        if let Some(c) = &self.cluster {
            for w in &mut list {
                w.progress = c
                    .view
                    .watch_progress(&w.spec.vin, &w.spec.watch_id)
                    .unwrap_or_default();
            }
        }
        list
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
        Ok(self.log.write(changes).await?)
    }
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
        .merge(sites::routes())
        .merge(watches::routes())
        .merge(vehicles::routes())
        .merge(cluster::routes())
        .merge(vins::routes())
        .merge(tesla::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    OpenApiRouter::with_openapi(openapi::base())
        // signed by Smartcar, not by our bearer token
        .merge(crate::sources::smartcar::http::routes(
            state.smartcar.clone(),
        ))
        .merge(health::routes())
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
