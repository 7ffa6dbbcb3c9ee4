//! `/v1/training/queue`: the watch folder's queue, listed and labelled.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cxr_core::answer;
use cxr_core::input::Gate;
use cxr_core::queue::{Label, Order, Predicted, Queue, ReviewState};
use cxr_core::service::Image;
use serde::{Deserialize, Serialize};

use super::{ApiResult, Shared, blocking};
use crate::error::ApiError;
use crate::seed;
use crate::state::parse_id;

/// The queue as listed: its counts, and the entries asked for.
#[derive(Serialize)]
struct Listing<'a> {
    count: usize,
    reviewed: usize,
    pending: usize,
    entries: Vec<answer::QueueEntry<'a>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct QueueQuery {
    /// `uncertainty` (default: most uncertain first) or `time` (oldest first).
    order: Option<String>,
    /// Only entries waiting for review.
    pending: Option<bool>,
}

/// `GET /v1/training/queue`: the watch folder's queue, as `cxr queue list --json` sees it.
pub(super) async fn list(
    State(state): State<Shared>,
    Query(query): Query<QueueQuery>,
) -> ApiResult<Response> {
    let order = match query.order.as_deref() {
        None | Some("uncertainty") => Order::Uncertainty,
        Some("time") => Order::Time,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order {other:?}: expected uncertainty or time"
            )));
        }
    };
    let pending_only = query.pending.unwrap_or(false);
    let dir = state.watch_dir.clone();
    let items = blocking(move || {
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let (items, problems) = Queue::open(&dir)?.list_checked(order)?;
        for problem in problems {
            tracing::warn!("{problem}");
        }
        Ok(items)
    })
    .await?;
    let reviewed = items.iter().filter(|i| i.is_reviewed()).count();
    Ok(axum::Json(Listing {
        count: items.len(),
        reviewed,
        pending: items.len() - reviewed,
        entries: items
            .iter()
            .filter(|i| !pending_only || i.state.state == ReviewState::PendingReview)
            .map(answer::QueueEntry::from)
            .collect(),
    })
    .into_response())
}

/// A label request, as JSON, a urlencoded form or a multipart form.
#[derive(Debug, Default, Deserialize)]
struct LabelRequest {
    id: String,
    label: String,
    reviewer: Option<String>,
    /// The explanations the reviewer had on screen (explainer names), kept with the review.
    #[serde(default)]
    shown: Vec<String>,
}

/// Header naming the reviewer when the body does not.
const REVIEWER_HEADER: &str = "x-reviewer";

/// The `X-Reviewer` header's value, if any.
fn header_reviewer(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(REVIEWER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The reviewer: the first name given (trimmed, not empty), else `anonymous` (the server knows
/// no login), checked by the queue's one rule for names (length, one line, no spreadsheet
/// formula): 400 before anything is written.
fn reviewer(given: [Option<String>; 2]) -> ApiResult<String> {
    let name = given
        .into_iter()
        .flatten()
        .map(|r| r.trim().to_owned())
        .find(|r| !r.is_empty())
        .unwrap_or_else(|| "anonymous".into());
    Ok(cxr_core::queue::check_reviewer(&name)?)
}

/// The queue of `watch_dir` when it holds entry `id`; 404 with `missing` otherwise.
fn queue_with(watch_dir: &std::path::Path, id: &str, missing: &str) -> ApiResult<Queue> {
    let missing = || ApiError::not_found(missing);
    let queue = Queue::open(watch_dir).map_err(|_| missing())?;
    if !queue.entry_dir(id).is_dir() {
        return Err(missing());
    }
    Ok(queue)
}

/// `POST /v1/training/queue`: labels an uploaded image (it becomes a reviewed entry of the watch
/// folder's queue, as the viewer's labels do) or an entry already in the queue.
pub(super) async fn label(State(state): State<Shared>, request: Request) -> ApiResult<Response> {
    let header_reviewer = header_reviewer(request.headers());
    let body = label_request(request).await?;
    let id = parse_id(body.id.trim())?;
    let models = state.models()?;
    let label: Label = seed::label(&body.label)
        .parse()
        .map_err(|e: cxr_core::CoreError| ApiError::unprocessable(e.to_string()))?;
    label
        .check(&models.classes)
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let reviewer = reviewer([body.reviewer, header_reviewer])?;
    // Only registered explainers, by their names, are kept as shown.
    let shown = body
        .shown
        .iter()
        .map(|name| cxr_core::explain::registry::lookup(name).map(|e| e.name.to_owned()))
        .collect::<cxr_core::Result<Vec<_>>>()
        .map_err(|e| ApiError::bad_request(format!("shown: {e}")))?;
    let watch_dir = state.watch_dir.clone();
    let item = if let Some(path) = state.uploads.find(&id) {
        let positive = models.classes.first().cloned().unwrap_or_default();
        state
            .compute(move |service| {
                // What the classifier says is kept with the label (it sorts the queue).
                let bytes = Gate::UNTRUSTED.read(&path)?;
                let image = Image::from_bytes(bytes, &path, Gate::UNTRUSTED);
                let classified = service.classify(&image)?;
                let predicted = Predicted::new(&classified.report.prediction(), &positive);
                let queue = Queue::create(&watch_dir)?;
                let model = Some(service.fingerprint());
                let (file, predicted) = (&path, Some(predicted));
                Ok(queue.label_file_seen(file, label, &reviewer, predicted, model, &shown)?)
            })
            .await?
    } else {
        blocking(move || {
            let missing = format!("no image {id}: neither uploaded nor in the queue");
            let queue = queue_with(&watch_dir, &id, &missing)?;
            Ok(queue.label_seen(&id, label, &reviewer, &shown)?)
        })
        .await?
    };
    Ok(axum::Json(answer::QueueEntry::from(&item)).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct UndoQuery {
    reviewer: Option<String>,
}

/// `POST /v1/training/queue/{id}/undo`: takes back the entry's current review (kept in its
/// history, marked undone by the reviewer of `X-Reviewer` or `?reviewer=`); the review before
/// it is current again, or the entry is pending again. 409 when it has no review.
pub(super) async fn undo(
    State(state): State<Shared>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Query(query): Query<UndoQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let id = parse_id(id.trim())?;
    let reviewer = reviewer([header_reviewer(&headers), query.reviewer])?;
    let watch_dir = state.watch_dir.clone();
    let item = blocking(move || {
        let queue = queue_with(&watch_dir, &id, &format!("no queue entry {id}"))?;
        if queue.get(&id)?.state.review.is_none() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("queue entry {id} has no review to undo"),
            ));
        }
        Ok(queue.undo(&id, &reviewer)?)
    })
    .await?;
    Ok(axum::Json(answer::QueueEntry::from(&item)).into_response())
}

async fn label_request(request: Request) -> ApiResult<LabelRequest> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let refused = |e: String| ApiError::bad_request(e);
    if content_type.starts_with("application/json") {
        let bytes = Bytes::from_request(request, &())
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        serde_json::from_slice(&bytes).map_err(|e| refused(format!("body: {e}")))
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        let axum::Form(body) = axum::Form::<LabelRequest>::from_request(request, &())
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        Ok(body)
    } else if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        let mut body = LabelRequest::default();
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?
        {
            let name = field.name().unwrap_or_default().to_owned();
            let text = field
                .text()
                .await
                .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
            match name.as_str() {
                "id" => body.id = text,
                "label" => body.label = text,
                "reviewer" => body.reviewer = Some(text),
                "shown" => body.shown.push(text),
                _ => {}
            }
        }
        if body.id.is_empty() || body.label.is_empty() {
            return Err(refused("the form needs the fields id and label".into()));
        }
        Ok(body)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected application/json ({\"id\": ..., \"label\": ...}), a urlencoded or a \
             multipart form",
        ))
    }
}
