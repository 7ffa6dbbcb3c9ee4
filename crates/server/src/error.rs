//! Every error the API answers: a status code and `{"error": "..."}`, with `Retry-After` when
//! trying again later helps.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cxr_core::{CoreError, InputError};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds, for `Retry-After` (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    #[must_use]
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    #[must_use]
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    #[must_use]
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    #[must_use]
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 503 with `Retry-After: seconds`.
    #[must_use]
    pub fn unavailable(message: impl Into<String>, seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    /// The status a core error deserves: the input's fault (cannot be decoded, refused by the
    /// input gate or the memory budget, no chest radiograph) or an explainer this model cannot
    /// run is 422, an unknown explainer 404, a bad parameter 400, anything else 500.
    #[must_use]
    pub fn from_core(error: &CoreError) -> Self {
        let status = match error {
            CoreError::Input(
                InputError::Decode { .. }
                | InputError::TooLarge { .. }
                | InputError::Refused { .. }
                | InputError::MemoryBudget { .. },
            )
            | CoreError::Refused { .. }
            | CoreError::NotARadiograph { .. }
            | CoreError::Unsupported { .. }
            | CoreError::Data { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            CoreError::UnknownExplainer { .. } => StatusCode::NOT_FOUND,
            CoreError::Input(InputError::Invalid(_))
            | CoreError::Invalid(_)
            | CoreError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            CoreError::Input(InputError::Io { .. })
            | CoreError::Io { .. }
            | CoreError::ModelLoad { .. }
            | CoreError::DuplicateExplainer { .. }
            | CoreError::Torch(_)
            | CoreError::Backend { .. }
            | CoreError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            // The server stops no request on its own; a cancelled one was cut off by shutdown.
            CoreError::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, error.to_string())
    }
}

impl From<CoreError> for ApiError {
    fn from(error: CoreError) -> Self {
        Self::from_core(&error)
    }
}

impl From<InputError> for ApiError {
    fn from(error: InputError) -> Self {
        Self::from_core(&CoreError::from(error))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, "{}", self.message);
        }
        let body = serde_json::json!({ "error": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The words for a status whose answer came without a JSON body (a route that does not exist,
/// a method not allowed, a body over the limit, a timeout in a layer).
#[must_use]
pub fn describe(status: StatusCode, max_body: usize) -> String {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "request body larger than the {} MiB this server accepts",
            max_body >> 20
        ),
        StatusCode::NOT_FOUND => "no such route (see /v1/explainers, docs/http-api.md)".into(),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".into(),
        StatusCode::REQUEST_TIMEOUT => "the request took too long to arrive".into(),
        other => other
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
    }
}
