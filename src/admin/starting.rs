//! The admin listener while `serve` starts. It is bound before anything that waits on another
//! service (Kafka in cluster mode), so a prober sees a live process that says what it waits
//! for: `/healthz` answers 200 `{"status": "starting", "detail": …}`, `/readyz` and every other
//! path 503 with the same detail. Once start-up is done the admin API takes the same listener
//! over ([`StartingAdmin::ready`]); a start-up that fails ends the process, and the listener
//! with it.

use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::health::Health;
use crate::api::ApiError;

/// The admin listener, answering for a server that is still starting until
/// [`StartingAdmin::ready`] hands it the admin API.
#[derive(Clone)]
pub struct StartingAdmin {
    app: Arc<OnceLock<Router>>,
    phase: Arc<Mutex<String>>,
}

impl StartingAdmin {
    /// Serves `listener` until `shutdown`; until [`StartingAdmin::ready`], as a starting server.
    pub fn serve(
        listener: TcpListener,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> StartingAdmin {
        let starting = StartingAdmin {
            app: Arc::new(OnceLock::new()),
            phase: Arc::new(Mutex::new("starting".into())),
        };
        let handler = starting.clone();
        let dispatch = Router::new().fallback(move |req: Request| {
            let handler = handler.clone();
            async move { handler.answer(req).await }
        });
        tasks.spawn(async move {
            let _ = axum::serve(listener, dispatch)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
        });
        starting
    }

    /// What start-up is doing now (shown by `/healthz` and in every 503).
    pub fn phase(&self, what: impl Into<String>) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = what.into();
    }

    /// Start-up is done: the admin API answers from now on.
    pub fn ready(&self, app: Router) {
        let _ = self.app.set(app);
    }

    async fn answer(&self, req: Request) -> Response {
        if let Some(app) = self.app.get() {
            return match app.clone().oneshot(req).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
        }
        let detail = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if req.uri().path() == "/healthz" {
            return Json(Health {
                status: "starting",
                detail: Some(detail),
            })
            .into_response();
        }
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            format!("the server is starting ({detail}): retry shortly"),
        )
        .into_response();
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
        response
    }
}
