//! `/v1/explainers` and `/v1/explainer/{method}/{id}`: the registered explainers, and an
//! uploaded image's explanation as an overlay PNG or JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use cxr_core::answer;
use cxr_core::explain::MethodSpec;
use cxr_core::explain::registry::{self, ExplainerEntry};
use cxr_core::input::Gate;
use cxr_core::service::{Image, Settings, Target};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::classify::known_upload;
use super::{ApiResult, Shared};
use crate::error::ApiError;
use crate::seed;

/// The registered explainer a URL names (see [`registry::lookup`]); 404 when there is none.
fn find_explainer(name: &str) -> ApiResult<&'static ExplainerEntry> {
    registry::lookup(name).map_err(|e| match e {
        cxr_core::CoreError::UnknownExplainer { known, .. } => ApiError::not_found(format!(
            "no explainer {:?}; registered: {} (see /v1/explainers)",
            name.chars().take(60).collect::<String>(),
            known.join(", ")
        )),
        other => ApiError::from_core(&other),
    })
}

/// An explanation as JSON: the seed's probabilities, the upload's id, the service's typed
/// answer and where its overlay is.
#[derive(Serialize)]
struct ExplanationReply<'a> {
    #[serde(flatten)]
    seed: BTreeMap<String, f32>,
    id: &'a str,
    #[serde(flatten)]
    answer: answer::Explanation<'a>,
    overlay: String,
}

/// A registered explainer and the address of its overlays.
#[derive(Serialize)]
struct ListedExplainer {
    #[serde(flatten)]
    explainer: answer::Explainer,
    overlay: String,
}

pub(super) async fn list() -> ApiResult<Response> {
    let list: Vec<ListedExplainer> = registry::all()?
        .iter()
        .map(|e| ListedExplainer {
            explainer: answer::Explainer::from(*e),
            overlay: format!("/v1/explainer/{}/{{id}}", e.name),
        })
        .collect();
    Ok(axum::Json(json!({ "explainers": list })).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct ExplainQuery {
    /// `png` (the overlay) or `json` (the report).
    format: Option<String>,
    /// `predicted` (default) or a class name.
    target: Option<String>,
}

/// `GET /v1/explainer/{method}/{id}`: the overlay PNG, or the report as JSON with
/// `?format=json` or `Accept: application/json`.
pub(super) async fn explain(
    State(state): State<Shared>,
    UrlPath((method, id)): UrlPath<(String, String)>,
    Query(query): Query<ExplainQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let entry = find_explainer(&method)?;
    let id = known_upload(&state, &id)?;
    let as_json = match query.format.as_deref() {
        Some("json") => true,
        Some("png") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format {other:?}: expected png or json"
            )));
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| {
                accept.contains("application/json") && !accept.contains("image/")
            }),
    };
    let target = Target::parse(query.target.as_deref().unwrap_or("predicted"));
    let shared = Arc::clone(&state);
    let (rendered, classified) = state
        .compute(move |service| {
            let (_, bytes) = shared.uploads.read(&id)?;
            let image = Image::from_bytes(bytes, Path::new(&id), Gate::UNTRUSTED);
            let method = MethodSpec {
                name: entry.name.to_owned(),
                params: String::new(),
            }
            .build()?;
            let settings = Settings {
                target,
                ..Settings::default()
            };
            let rendered = service.explain(&image, &method, &settings)?;
            let classified = if as_json {
                Some((id, service.classify(&image)?))
            } else {
                None
            };
            Ok((rendered, classified))
        })
        .await?;
    let cached = HeaderValue::from_static(if rendered.cached { "true" } else { "false" });
    let Some((id, classified)) = classified else {
        return Ok((
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, no-cache"),
                ),
                (header::HeaderName::from_static("x-cxr-cached"), cached),
            ],
            rendered.overlay_png,
        )
            .into_response());
    };
    let reply = ExplanationReply {
        seed: seed::probabilities(&classified.report.probabilities),
        id: &id,
        answer: answer::Explanation::new(&classified, &rendered),
        overlay: format!("/v1/explainer/{}/{id}?format=png", rendered.report.method),
    };
    Ok(axum::Json(reply).into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn explainer_names_and_aliases() {
        cxr_explainers::link();
        assert_eq!(find_explainer("gradcam").unwrap().name, "grad-cam");
        assert_eq!(find_explainer("GRAD_CAM").unwrap().name, "grad-cam");
        assert_eq!(find_explainer("lime").unwrap().name, "lime");
        assert_eq!(
            find_explainer("nope").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }
}
