//! The JSON error shape of fleetgate's HTTP APIs (the admin API and the webhook sources):
//! `{error, detail}` with the right status, and request-body extraction that tells malformed
//! JSON (400) from JSON that does not fit (422). A leaf: every HTTP surface uses it, it uses
//! none of them.

use axum::extract::rejection::QueryRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

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

    /// Adds fields to the body (e.g. the per-feature problems of an import).
    pub fn with_extra(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }

    /// `404 not_found` for a resource.
    pub fn not_found(what: &str, id: &str) -> Self {
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
pub fn body_rejection(status: StatusCode, text: String) -> ApiError {
    let error = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "body_too_large"
    } else {
        "bad_request"
    };
    ApiError::new(status, error, text)
}

/// `400 bad_json` unless `bytes` is well-formed JSON (whatever its shape).
pub fn json_syntax(bytes: &[u8]) -> Result<(), ApiError> {
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

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;

/// A query string that does not fit: `400 bad_query`.
pub fn query_error(r: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", r.body_text())
}
