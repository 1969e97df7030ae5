//! `POST /v1/sources/smartcar`: Smartcar's webhook deliveries, served on the admin listener
//! (signed by Smartcar, not by the admin token). A `VEHICLE_STATE` delivery becomes a
//! [`RuleInput::Signals`] of the mapped VIN, submitted to the rules' placement — applied in
//! this process in embedded mode, by the owner of the vehicle's partition in cluster mode.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiError, ApiResult, ErrorBody};
use crate::rules::input::RuleInput;
use crate::runner::{Placement, SubmitError};

/// How long a delivery waits for its events to be safe.
const WAIT: Duration = Duration::from_secs(10);

/// What `POST /v1/sources/smartcar` needs: the signing token and the vehicle-id → VIN map.
#[derive(Debug, Clone)]
pub struct SmartcarSource {
    /// The application management token.
    pub token: String,
    /// Smartcar vehicle id → VIN.
    pub vehicles: std::collections::BTreeMap<String, String>,
}

/// The route's state.
#[derive(Clone)]
pub struct SmartcarState {
    /// The configured source (None: the route answers 404).
    pub source: Option<Arc<SmartcarSource>>,
    /// Where the vehicle states go.
    pub rules: Arc<dyn Placement>,
}

/// The Smartcar route, for a router of any state.
pub fn routes<S: Clone + Send + Sync + 'static>(state: SmartcarState) -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(smartcar_webhook))
        .with_state(state)
}

/// What a Smartcar delivery did.
#[derive(Debug, Serialize, ToSchema)]
pub struct SmartcarResult {
    /// The VIN the delivery was applied to (absent when it was ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vin: Option<String>,
    /// Types of the events it caused.
    pub events: Vec<String>,
    /// True when the events are safe: confirmed by every event sink (embedded mode) or
    /// committed to the events topic (cluster mode); 202 otherwise (they are on their way).
    pub delivered: bool,
    /// True (202) when the state is queued for the vehicle's rules but was not applied within
    /// the wait (cluster mode: the vehicle's partition is moving); `events` is then not known.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// Why nothing was applied (an event type fleetgate does not use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

/// Smartcar webhooks (`fleetgate.sources.smartcar`): a `VEHICLE_STATE` delivery's location,
/// SoC and charging signals are an input of the vehicle's rules, applied where they run
/// (events say `source: "smartcar"`); a `VERIFY` delivery is answered with
/// `{"challenge": HMAC}`. Every delivery, VERIFY too, must carry a valid `SC-Signature`
/// (HMAC-SHA256 of the body, keyed with the application management token); no bearer token.
/// (An unsigned VERIFY would make this endpoint an HMAC oracle: whoever could post one
/// could get the signature of any body of their choosing.)
#[utoipa::path(post, path = "/v1/sources/smartcar", tag = "sources",
    request_body(content = Object, description = "A Smartcar webhook delivery"), responses(
    (status = 200, description = "Applied and confirmed (or the VERIFY answer, or ignored)", body = SmartcarResult),
    (status = 202, description = "Applied; a sink has not confirmed the events yet", body = SmartcarResult),
    (status = 400, description = "Not JSON", body = ErrorBody),
    (status = 401, description = "Missing or wrong SC-Signature", body = ErrorBody),
    (status = 404, description = "The Smartcar source is not configured", body = ErrorBody),
    (status = 422, description = "Not a Smartcar delivery, or a vehicle id without a VIN", body = ErrorBody),
    (status = 503, description = "Kafka did not take the state (cluster mode); nothing changed, retry", body = ErrorBody)))]
async fn smartcar_webhook(
    State(state): State<SmartcarState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let Some(source) = state.source.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the Smartcar source is not configured: set fleetgate.sources.smartcar",
        ));
    };
    let signature = headers.get("sc-signature").and_then(|v| v.to_str().ok());
    let signed = signature.is_some_and(|s| super::verify(&source.token, &body, s));
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
    let delivery = super::read_delivery(&json, &source.vehicles, now_ms).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_delivery",
            e.to_string(),
        )
    })?;
    // every delivery must be signed, VERIFY too: answering an unsigned challenge would sign
    // whatever text a caller chose
    if !signed {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "missing SC-Signature: Smartcar signs every delivery, VERIFY included",
        ));
    }
    if let super::Delivery::Verify(challenge) = &delivery {
        return Ok(Json(
            serde_json::json!({"challenge": super::sign(&source.token, challenge.as_bytes())}),
        )
        .into_response());
    }
    match delivery {
        super::Delivery::Verify(_) => unreachable!("answered above"),
        super::Delivery::Ignored(kind) => Ok(Json(SmartcarResult {
            vin: None,
            events: Vec::new(),
            delivered: true,
            pending: false,
            ignored: Some(kind),
        })
        .into_response()),
        super::Delivery::State { vin, update } => {
            let input = RuleInput::Signals(*update);
            let (status, result) = match state.rules.submit(&vin, input, WAIT).await {
                Ok(s) => (
                    // the rules moved already: a retry would not re-emit, so a slow sink is a
                    // 202 (the sinks keep trying), never an error that invites a retry
                    if s.delivered {
                        StatusCode::OK
                    } else {
                        StatusCode::ACCEPTED
                    },
                    SmartcarResult {
                        vin: Some(vin),
                        events: s.receipt.event_types(),
                        delivered: s.delivered,
                        pending: false,
                        ignored: None,
                    },
                ),
                Err(SubmitError::Pending { .. }) => (
                    StatusCode::ACCEPTED,
                    SmartcarResult {
                        vin: Some(vin),
                        events: Vec::new(),
                        delivered: false,
                        pending: true,
                        ignored: None,
                    },
                ),
                Err(SubmitError::Unavailable(detail)) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        detail,
                    ))
                }
            };
            Ok((status, Json(result)).into_response())
        }
    }
}
