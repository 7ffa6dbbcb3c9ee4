//! `/v1/classifier`: uploads (multipart or raw, padding dropped), stored classifications.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cxr_core::answer;
use cxr_core::explain::registry;
use cxr_core::input::Gate;
use cxr_core::service::{Classified, Image};
use serde::Serialize;

use super::{ApiResult, Shared};
use crate::error::{self, ApiError};
use crate::state::{AppState, parse_id};
use crate::{compact, limits, seed};

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
pub(super) async fn upload(State(state): State<Shared>, request: Request) -> ApiResult<Response> {
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
pub(super) async fn stored(
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

/// `GET /v1/image/{id}`: the radiograph of an upload or a queue entry as an 8-bit grey PNG,
/// as decoded (a DICOM's pixels too), for a browser to show beside the overlay.
pub(super) async fn radiograph(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Response> {
    let id = known_upload(&state, &id)?;
    let shared = Arc::clone(&state);
    let png = super::blocking(move || {
        let (path, bytes) = shared.uploads.read(&id)?;
        let xray = Gate::UNTRUSTED.decode(&bytes, &path)?;
        let grey = xray.original.to_rgb8();
        cxr_core::render::encode_png(&grey).map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        png,
    )
        .into_response())
}

/// A well-formed id with a stored upload: 400 for a malformed one, 404 for an unknown one.
pub(super) fn known_upload(state: &AppState, id: &str) -> ApiResult<String> {
    let id = parse_id(id)?;
    if state.uploads.find(&id).is_none() {
        return Err(ApiError::not_found(format!(
            "no image {id} (upload it with POST /v1/classifier)"
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
