//! The web page, its script, and the health and readiness probes.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::{ApiResult, Shared};

const PAGE: &str = include_str!("../page.html");
const SCRIPT: &str = include_str!("../page.js");

pub(super) async fn page() -> Response {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' \
             blob: data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'",
        )],
        Html(PAGE),
    )
        .into_response()
}

pub(super) async fn script() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        SCRIPT,
    )
        .into_response()
}

pub(super) async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

pub(super) async fn readyz(State(state): State<Shared>) -> ApiResult<Response> {
    let models = state.models()?;
    Ok(axum::Json(json!({
        "status": "ready",
        "workers": models.pool.workers(),
        "classes": models.classes,
        "models": models.fingerprint.get(..12).unwrap_or(&models.fingerprint),
    }))
    .into_response())
}
