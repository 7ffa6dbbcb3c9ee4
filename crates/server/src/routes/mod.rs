//! The routes: the seed system's (`/v1/classifier`, `/v1/explainer/lime|gradcam/:id`,
//! `/v1/training/queue`) and the rest (every explainer, the list of explainers, health,
//! readiness, the web page), one file per resource, and the layers around them (`security`).
//! Handlers only move bytes: the work runs on the model pool (see [`AppState::compute`]) or,
//! for queue files, on tokio's blocking threads.

mod classify;
mod explain;
mod page;
mod queue;
mod security;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::routing::{get, post};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::{self, ApiError};
use crate::limits;
use crate::state::AppState;

type Shared = Arc<AppState>;
type ApiResult<T> = Result<T, ApiError>;

/// The whole API with its layers: body limit, body budget and pace, timeout, JSON errors, the
/// same-origin guard, security headers, request tracing.
pub fn router(state: Shared) -> Router {
    // A backstop over the handlers' own timeout (which answers 503 in JSON).
    let backstop = state.request_timeout + Duration::from_secs(30);
    Router::new()
        .route("/", get(page::page))
        .route("/page.js", get(page::script))
        .route("/healthz", get(page::healthz))
        .route("/readyz", get(page::readyz))
        .route("/v1/classifier", post(classify::upload))
        .route("/v1/classifier/{id}", get(classify::stored))
        .route("/v1/image/{id}", get(classify::radiograph))
        .route("/v1/explainers", get(explain::list))
        .route("/v1/explainer/{method}/{id}", get(explain::explain))
        .route("/v1/training/queue", get(queue::list).post(queue::label))
        .route("/v1/training/queue/{id}/undo", post(queue::undo))
        .fallback(|| async { ApiError::not_found(error::describe(StatusCode::NOT_FOUND, 0)) })
        .layer(DefaultBodyLimit::disable())
        // Under the size limit: a body over it is refused before it takes any budget.
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            limits::bodies,
        ))
        .layer(RequestBodyLimitLayer::new(state.max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            backstop,
        ))
        .layer(middleware::map_response_with_state(
            Arc::clone(&state),
            security::json_errors,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            security::guard,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Runs file work on tokio's blocking threads.
async fn blocking<T, F>(work: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> ApiResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("internal error: {e}")))?
}
