//! The routes: the seed system's (`/v1/classifier`, `/v1/explainer/lime|gradcam/:id`,
//! `/v1/training/queue`) and the rest (every explainer, the list of explainers, health,
//! readiness, the web page). Handlers only move bytes: the work runs on the model pool (see
//! [`AppState::compute`]) or, for queue files, on tokio's blocking threads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{
    DefaultBodyLimit, FromRequest, Multipart, Path as UrlPath, Query, Request, State,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use cxr_core::answer;
use cxr_core::explain::MethodSpec;
use cxr_core::explain::registry::{self, ExplainerEntry};
use cxr_core::input::Gate;
use cxr_core::queue::{EntryState, Label, Order, Predicted, Queue, QueueItem, ReviewState};
use cxr_core::service::{Classified, Image, Settings, Target};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::{self, ApiError};
use crate::state::{AppState, parse_id};
use crate::{compact, limits, seed};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");

type Shared = Arc<AppState>;
type ApiResult<T> = Result<T, ApiError>;

/// The whole API with its layers: body limit, body budget and pace, timeout, JSON errors, the
/// same-origin guard, security headers, request tracing.
pub fn router(state: Shared) -> Router {
    // A backstop over the handlers' own timeout (which answers 503 in JSON).
    let backstop = state.request_timeout + Duration::from_secs(30);
    Router::new()
        .route("/", get(page))
        .route("/page.js", get(script))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/classifier", axum::routing::post(classify_upload))
        .route("/v1/classifier/{id}", get(classify_stored))
        .route("/v1/explainers", get(explainers))
        .route("/v1/explainer/{method}/{id}", get(explain))
        .route("/v1/training/queue", get(queue_list).post(queue_label))
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
            json_errors,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Every error answer carries `{"error": ...}`, also those made by layers and by axum itself
/// (no route, method not allowed, body over the limit, malformed path or query).
async fn json_errors(State(state): State<Shared>, response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let detail = if status == StatusCode::PAYLOAD_TOO_LARGE
        || status == StatusCode::NOT_FOUND
        || status == StatusCode::SERVICE_UNAVAILABLE
    {
        None
    } else {
        // axum's rejections explain themselves in plain text (bad query, bad path).
        axum::body::to_bytes(response.into_body(), 4096)
            .await
            .ok()
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .filter(|t| !t.is_empty())
    };
    let message = match (status, detail) {
        (StatusCode::SERVICE_UNAVAILABLE, _) => format!(
            "no answer within {} s; try again shortly",
            state.request_timeout.as_secs()
        ),
        (_, Some(detail)) => detail,
        (_, None) => error::describe(status, state.max_body),
    };
    let mut answer = ApiError::new(status, message);
    answer.retry_after = retry_after
        .and_then(|v| v.to_str().ok().and_then(|s| s.parse().ok()))
        .or((status == StatusCode::SERVICE_UNAVAILABLE).then_some(5));
    answer.into_response()
}

/// Refuses requests a web page elsewhere made the browser send: a state-changing request whose
/// `Origin` is not this server, and (when bound to loopback) a `Host` that is not a loopback
/// name, which is how DNS rebinding reaches a local server.
async fn guard(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if state.loopback
        && let Some(host) = host
        && !is_loopback_host(host)
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("host {host:?} refused: this server answers loopback names only"),
        )
        .into_response();
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe && let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        let same = origin
            .split_once("://")
            .is_some_and(|(_, authority)| Some(authority) == host);
        if !same {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("cross-origin request from {origin:?} refused"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// `localhost`, `*.localhost`, or a loopback address, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn page() -> Response {
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

async fn script() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        SCRIPT,
    )
        .into_response()
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<Shared>) -> ApiResult<Response> {
    let models = state.models()?;
    Ok(axum::Json(json!({
        "status": "ready",
        "workers": models.pool.workers(),
        "classes": models.classes,
        "models": models.fingerprint.get(..12).unwrap_or(&models.fingerprint),
    }))
    .into_response())
}

/// The classification answer: the seed's `{"COVID-19": p, "NO FINDING": q}` at the top level,
/// the service's typed answer beside it, and links to the explanations.
#[derive(Serialize)]
struct ClassificationReply<'a> {
    #[serde(flatten)]
    seed: BTreeMap<String, f32>,
    id: &'a str,
    #[serde(flatten)]
    answer: answer::Classification<'a>,
    links: Links,
}

#[derive(Serialize)]
struct Links {
    #[serde(rename = "self")]
    this: String,
    explainers: BTreeMap<&'static str, String>,
}

impl<'a> ClassificationReply<'a> {
    fn new(id: &'a str, classified: &'a Classified) -> Self {
        Self {
            seed: seed::probabilities(&classified.report.probabilities),
            id,
            answer: classified.into(),
            links: Links {
                this: format!("/v1/classifier/{id}"),
                explainers: registry::all()
                    .unwrap_or_default()
                    .iter()
                    .map(|e| (e.name, format!("/v1/explainer/{}/{id}", e.name)))
                    .collect(),
            },
        }
    }
}

/// Types an upload may be sent as.
fn accepted_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("image/")
        || essence == "application/dicom"
        || essence == "application/octet-stream"
}

const ACCEPTED: &str = "image/png, image/jpeg, application/dicom or application/octet-stream";

/// `POST /v1/classifier`: a radiograph as a multipart file field (`file` or `image`) or as the
/// raw body; classifies it, stores it under its id and answers the classification.
async fn classify_upload(State(state): State<Shared>, request: Request) -> ApiResult<Response> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = if content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        upload_field(
            Multipart::from_request(request, &())
                .await
                .map_err(|e| ApiError::new(e.status(), e.body_text()))?,
        )
        .await?
    } else if content_type.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("no Content-Type: send multipart/form-data with a file field, or {ACCEPTED}"),
        ));
    } else if accepted_type(&content_type) {
        read_body(request, state.max_body).await?
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {content_type:?} refused: expected multipart/form-data or {ACCEPTED}"
            ),
        ));
    };
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the upload is empty"));
    }
    let shared = Arc::clone(&state);
    let (id, classified) = state
        .compute(move |service| {
            // Decoded through the input gate; the name in errors is "upload", never a path.
            let image = without_padding(bytes)?;
            let classified = service.classify(&image)?;
            let id = image.sha256()[..cxr_core::queue::ID_LEN].to_owned();
            shared.uploads.store(&id, image.bytes())?;
            Ok((id, classified))
        })
        .await?;
    let reply = ClassificationReply::new(&id, &classified);
    Ok((StatusCode::OK, axum::Json(reply)).into_response())
}

/// A raw upload's body, read into one buffer of its announced length (axum's `Bytes` extractor
/// gathers the pieces and then copies them: twice the body at its peak, and the body budget
/// counts it once). Over the size limit: 413; cut short or too slow: 400 (the body layer
/// answers 408 for the latter).
async fn read_body(request: Request, max_body: usize) -> ApiResult<Vec<u8>> {
    use http_body_util::BodyExt;
    let announced = limits::content_length(request.headers()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(announced.min(max_body));
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(error) = source {
                if error.is::<http_body_util::LengthLimitError>() {
                    return ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        error::describe(StatusCode::PAYLOAD_TOO_LARGE, max_body),
                    );
                }
                source = error.source();
            }
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// The upload as it is analysed and stored: the bytes as sent, or, when at least a MiB of them
/// is padding (PNG ancillary chunks, JPEG comments and application segments: see
/// [`compact`]), the same image without it. A PNG's pixels depend only on the chunks kept, so
/// the padded original is never decoded (its text chunks would be parsed into memory, twice);
/// a JPEG without its segments must decode to the same pixels as the original, else the
/// original is kept. The id is the stored image's hash either way, as the queue names its
/// entries.
fn without_padding(bytes: Vec<u8>) -> ApiResult<Image> {
    let name = Path::new("upload");
    let Some(slim) = compact::without_padding(&bytes) else {
        return Ok(Image::from_bytes(bytes, name, Gate::UNTRUSTED));
    };
    if compact::is_png(&bytes) {
        drop(bytes);
        return Ok(Image::from_bytes(slim, name, Gate::UNTRUSTED));
    }
    // What was sent must decode (its errors are the answer), and to what the slim one does.
    let sent = Image::from_bytes(bytes, name, Gate::UNTRUSTED);
    let pixels = sent.decode()?;
    match Gate::UNTRUSTED.decode(&slim, name) {
        Ok(xray) if xray.original == pixels.original => {
            drop((sent, pixels));
            Ok(Image::with_decoded(slim, xray, Gate::UNTRUSTED))
        }
        _ => Ok(sent),
    }
}

/// The upload's bytes from a multipart form: the field `file` or `image`, else the first field
/// that carries a file name.
async fn upload_field(mut form: Multipart) -> ApiResult<Vec<u8>> {
    let failed =
        |e: axum::extract::multipart::MultipartError| ApiError::new(e.status(), e.body_text());
    while let Some(field) = form.next_field().await.map_err(failed)? {
        let named = matches!(field.name(), Some("file" | "image"));
        if !(named || field.file_name().is_some()) {
            continue;
        }
        if let Some(kind) = field.content_type()
            && !accepted_type(kind)
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("the file was sent as {kind:?}: expected {ACCEPTED}"),
            ));
        }
        return Ok(field.bytes().await.map_err(failed)?.into());
    }
    Err(ApiError::bad_request(
        "no file in the form: send the radiograph in a field named file",
    ))
}

/// `GET /v1/classifier/{id}`: the classification of an uploaded image (from the cache when
/// there).
async fn classify_stored(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Response> {
    let id = known_upload(&state, &id)?;
    let shared = Arc::clone(&state);
    let (id, classified) = state
        .compute(move |service| {
            let (_, bytes) = shared.uploads.read(&id)?;
            let image = Image::from_bytes(bytes, Path::new(&id), Gate::UNTRUSTED);
            let classified = service.classify(&image)?;
            Ok((id, classified))
        })
        .await?;
    Ok(axum::Json(ClassificationReply::new(&id, &classified)).into_response())
}

/// A well-formed id with a stored upload: 400 for a malformed one, 404 for an unknown one.
fn known_upload(state: &AppState, id: &str) -> ApiResult<String> {
    let id = parse_id(id)?;
    if state.uploads.find(&id).is_none() {
        return Err(ApiError::not_found(format!(
            "no image {id} (upload it with POST /v1/classifier)"
        )));
    }
    Ok(id)
}

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

async fn explainers() -> ApiResult<Response> {
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
struct ExplainQuery {
    /// `png` (the overlay) or `json` (the report).
    format: Option<String>,
    /// `predicted` (default) or a class name.
    target: Option<String>,
}

/// `GET /v1/explainer/{method}/{id}`: the overlay PNG, or the report as JSON with
/// `?format=json` or `Accept: application/json`.
async fn explain(
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

/// One queue entry as listed: its `state.json` and its review uncertainty.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    state: &'a EntryState,
    uncertainty: Option<f32>,
}

fn listed(item: &QueueItem) -> Value {
    serde_json::to_value(Listed {
        state: &item.state,
        uncertainty: item.uncertainty(),
    })
    .unwrap_or(Value::Null)
}

#[derive(Debug, Deserialize)]
struct QueueQuery {
    /// `uncertainty` (default: most uncertain first) or `time` (oldest first).
    order: Option<String>,
    /// Only entries waiting for review.
    pending: Option<bool>,
}

/// `GET /v1/training/queue`: the watch folder's queue, as `cxr queue list --json` sees it.
async fn queue_list(
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
    let answer = blocking(move || {
        if !dir.is_dir() {
            return Ok(json!({ "count": 0, "reviewed": 0, "pending": 0, "entries": [] }));
        }
        let (items, problems) = Queue::open(&dir)?.list_checked(order)?;
        for problem in problems {
            tracing::warn!("{problem}");
        }
        let reviewed = items.iter().filter(|i| i.is_reviewed()).count();
        let entries: Vec<Value> = items
            .iter()
            .filter(|i| !pending_only || i.state.state == ReviewState::PendingReview)
            .map(listed)
            .collect();
        Ok(json!({
            "count": items.len(),
            "reviewed": reviewed,
            "pending": items.len() - reviewed,
            "entries": entries,
        }))
    })
    .await?;
    Ok(axum::Json(answer).into_response())
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

/// A label request, as JSON, a urlencoded form or a multipart form.
#[derive(Debug, Default, Deserialize)]
struct LabelRequest {
    id: String,
    label: String,
    reviewer: Option<String>,
}

/// Header naming the reviewer when the body does not.
const REVIEWER_HEADER: &str = "x-reviewer";

/// `POST /v1/training/queue`: labels an uploaded image (it becomes a reviewed entry of the watch
/// folder's queue, as the viewer's labels do) or an entry already in the queue.
async fn queue_label(State(state): State<Shared>, request: Request) -> ApiResult<Response> {
    let header_reviewer = request
        .headers()
        .get(REVIEWER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = label_request(request).await?;
    let id = parse_id(body.id.trim())?;
    let models = state.models()?;
    let label: Label = seed::label(&body.label)
        .parse()
        .map_err(|e: cxr_core::CoreError| ApiError::unprocessable(e.to_string()))?;
    label
        .check(&models.classes)
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let reviewer = body
        .reviewer
        .or(header_reviewer)
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "anonymous".into());
    // The queue's one rule for names (length, one line, no spreadsheet formula): 400 before
    // anything is written.
    let reviewer = cxr_core::queue::check_reviewer(&reviewer)?;
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
                Ok(queue.label_file(&path, label, &reviewer, Some(predicted))?)
            })
            .await?
    } else {
        blocking(move || {
            let missing =
                || ApiError::not_found(format!("no image {id}: neither uploaded nor in the queue"));
            let queue = Queue::open(&watch_dir).map_err(|_| missing())?;
            if !queue.entry_dir(&id).is_dir() {
                return Err(missing());
            }
            Ok(queue.label(&id, label, &reviewer)?)
        })
        .await?
    };
    Ok(axum::Json(listed(&item)).into_response())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:3005",
            "127.0.0.1:80",
            "[::1]:3005",
            "app.localhost:1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "evil.com:3005",
            "10.0.0.1:3005",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn upload_types() {
        for ok in [
            "image/png",
            "image/jpeg; q=1",
            "application/dicom",
            "Application/Octet-Stream",
        ] {
            assert!(accepted_type(ok), "{ok}");
        }
        for bad in ["text/plain", "application/json", "application/pdf", ""] {
            assert!(!accepted_type(bad), "{bad}");
        }
    }

    #[test]
    fn explainer_names_and_aliases() {
        cxr_explainers_linked();
        assert_eq!(find_explainer("gradcam").unwrap().name, "grad-cam");
        assert_eq!(find_explainer("GRAD_CAM").unwrap().name, "grad-cam");
        assert_eq!(find_explainer("lime").unwrap().name, "lime");
        assert_eq!(
            find_explainer("nope").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }

    fn cxr_explainers_linked() {
        cxr_explainers::link();
    }
}
