//! Liveness, readiness and sink health.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AdminState;
use crate::api::{ApiError, ErrorBody};
use crate::sinks::Readiness;

/// The health routes (no token).
pub(super) fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(sinks_health))
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` once the server runs; `starting` (with `detail`) while `serve` is still starting,
    /// e.g. waiting for Kafka — `/readyz` and the API answer 503 `starting` meanwhile.
    pub status: &'static str,
    /// What start-up is waiting for (only while `starting`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
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
    Json(Health {
        status: "ok",
        detail: None,
    })
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
