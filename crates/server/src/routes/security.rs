//! The layers every request passes: JSON error bodies for every failure, and the same-origin
//! guard (cross-origin writes and DNS rebinding refused).

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Shared;
use crate::error::{self, ApiError};

/// Every error answer carries `{"error": ...}`, also those made by layers and by axum itself
/// (no route, method not allowed, body over the limit, malformed path or query).
pub(super) async fn json_errors(State(state): State<Shared>, response: Response) -> Response {
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
pub(super) async fn guard(State(state): State<Shared>, request: Request, next: Next) -> Response {
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
}
