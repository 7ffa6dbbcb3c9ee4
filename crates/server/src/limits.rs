//! What bounds the server's connections and the request bodies they carry: a header read
//! timeout and a connection cap (in the accept loop, [`crate::serve_on`]), one byte budget for
//! every body in flight (a semaphore of bytes), and a minimum rate at which a body must arrive.
//! The values and their answers are listed in `docs/limits.md`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::state::AppState;

/// Bytes of request bodies in flight at once, by default: 256 MiB (eight 30 MB uploads).
pub const DEFAULT_BODY_BUDGET: usize = 256 << 20;
/// How long a request waits for its bytes of the budget before 503, by default.
pub const DEFAULT_BODY_WAIT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's header, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A body must bring at least this many bytes...
pub const DEFAULT_BODY_MIN_BYTES: usize = 16 << 10;
/// ...in every window of this long, by default (else 408).
pub const DEFAULT_BODY_WINDOW: Duration = Duration::from_secs(10);
/// Connections served at once, by default; more wait in the kernel's listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Bytes the uploads folder may hold, by default: 1 GiB.
pub const DEFAULT_UPLOADS_MAX: u64 = 1 << 30;

/// Seconds a client is told to wait when the body budget stays full.
pub const BUDGET_RETRY_SECONDS: u64 = 2;

/// The server's bounds on connections, bodies and stored uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of request bodies being read or held at once (raised to the largest body if
    /// smaller). A body declared by `Content-Length` takes its length; a chunked one takes the
    /// largest body, since its length is unknown until it ends.
    pub body_budget: usize,
    /// How long a request waits for its share of the budget before 503 with `Retry-After`.
    pub body_wait: Duration,
    /// How long the request line and headers may take to arrive (hyper's
    /// `header_read_timeout`, also for the next request on a kept-alive connection); the
    /// connection is closed after it.
    pub header_timeout: Duration,
    /// A body that brings fewer than `body_min_bytes` in any `body_window` is answered 408.
    pub body_min_bytes: usize,
    pub body_window: Duration,
    /// Connections served at once; the accept loop waits while this many are open.
    pub max_connections: usize,
    /// Bytes the uploads folder may hold: older uploads are removed first, never one that is
    /// in the watch folder's review queue.
    pub uploads_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_budget: DEFAULT_BODY_BUDGET,
            body_wait: DEFAULT_BODY_WAIT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_min_bytes: DEFAULT_BODY_MIN_BYTES,
            body_window: DEFAULT_BODY_WINDOW,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            uploads_max: DEFAULT_UPLOADS_MAX,
        }
    }
}

/// The byte budget of bodies in flight: a semaphore whose permits are KiB.
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    bytes: usize,
}

/// Budget permits are KiB, so that a `u32` of them covers any body.
const UNIT: usize = 1 << 10;

fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

impl BodyBudget {
    /// A budget of `bytes`, at least `largest` (one body of the largest size always fits).
    #[must_use]
    pub fn new(bytes: usize, largest: usize) -> Self {
        let bytes = bytes.max(largest).max(UNIT);
        Self {
            permits: Arc::new(Semaphore::new(units(bytes) as usize)),
            bytes,
        }
    }

    /// The whole budget, in bytes.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes of the budget not taken now.
    #[must_use]
    pub fn available(&self) -> usize {
        self.permits.available_permits() * UNIT
    }

    /// Takes `bytes` of the budget, waiting at most `wait`; `None` when they did not come.
    pub async fn take(
        &self,
        bytes: usize,
        wait: Duration,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let units = units(bytes.min(self.bytes));
        tokio::time::timeout(wait, Arc::clone(&self.permits).acquire_many_owned(units))
            .await
            .ok()?
            .ok()
    }
}

/// The request's `Content-Length`, if it has a readable one (saturated to `usize`).
pub(crate) fn content_length(headers: &HeaderMap) -> Option<usize> {
    let length = headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(usize::try_from(length).unwrap_or(usize::MAX))
}

/// The bytes a request's body will take: its `Content-Length`, or the largest body when it is
/// chunked; none without a body.
fn body_bytes(headers: &HeaderMap, largest: usize) -> usize {
    if let Some(length) = content_length(headers) {
        return length.min(largest);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        largest
    } else {
        0
    }
}

/// The layer under the body size limit: a request with a body takes its bytes of the budget
/// (waiting up to [`Limits::body_wait`], else 503), keeps them until its answer is made, and
/// reads its body through [`PacedBody`]; a body that came too slowly is answered 408 and the
/// connection closed.
pub async fn bodies(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let need = body_bytes(request.headers(), state.max_body);
    if need == 0 {
        return next.run(request).await;
    }
    let limits = &state.limits;
    let Some(permit) = state.budget.take(need, limits.body_wait).await else {
        return ApiError::unavailable(
            format!(
                "the server is receiving as many uploads as it holds at once ({} MiB of request \
                 bodies); try again shortly",
                state.budget.bytes() >> 20
            ),
            BUDGET_RETRY_SECONDS,
        )
        .into_response();
    };
    let slow = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = Body::new(PacedBody::new(
        body,
        limits.body_min_bytes,
        limits.body_window,
        Arc::clone(&slow),
    ));
    let response = next.run(Request::from_parts(parts, body)).await;
    drop(permit);
    if slow.load(Ordering::Acquire) {
        let mut answer =
            ApiError::new(StatusCode::REQUEST_TIMEOUT, too_slow(limits)).into_response();
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return answer;
    }
    response
}

/// The 408 message.
#[must_use]
pub fn too_slow(limits: &Limits) -> String {
    format!(
        "the request body arrived too slowly: less than {} KiB in {} s",
        limits.body_min_bytes >> 10,
        limits.body_window.as_secs_f64()
    )
}

/// The error a body too slow ends with (the answer is 408 whatever the reader made of it).
#[derive(Debug)]
pub struct SlowBody;

impl std::fmt::Display for SlowBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body too slow")
    }
}

impl std::error::Error for SlowBody {}

/// A request body that must bring `min_bytes` in every `window` from its first read on: a
/// window that ends with fewer fails the body with [`SlowBody`] and sets `slow`.
pub struct PacedBody {
    inner: Body,
    min_bytes: usize,
    window: Duration,
    /// Bytes in the current window.
    got: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
    started: bool,
    slow: Arc<AtomicBool>,
}

impl PacedBody {
    #[must_use]
    pub fn new(inner: Body, min_bytes: usize, window: Duration, slow: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            min_bytes: min_bytes.max(1),
            window,
            got: 0,
            deadline: Box::pin(tokio::time::sleep(window)),
            started: false,
            slow,
        }
    }

    fn next_window(&mut self) {
        self.got = 0;
        let next = tokio::time::Instant::now() + self.window;
        self.deadline.as_mut().reset(next);
    }
}

impl http_body::Body for PacedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if !this.started {
            this.started = true;
            this.next_window();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.got += data.len();
                    if this.got >= this.min_bytes {
                        this.next_window();
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(other) => return Poll::Ready(other),
            Poll::Pending => {}
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.slow.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(axum::Error::new(SlowBody))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_take_their_length_or_the_largest() {
        let mut headers = HeaderMap::new();
        assert_eq!(body_bytes(&headers, 100), 0);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
        assert_eq!(body_bytes(&headers, 100), 42);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("4200"));
        assert_eq!(body_bytes(&headers, 100), 100);
        let mut chunked = HeaderMap::new();
        chunked.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(body_bytes(&chunked, 100), 100);
    }

    #[tokio::test]
    async fn the_budget_is_shared_and_waits_are_bounded() {
        let budget = BodyBudget::new(3 << 20, 1 << 20);
        assert_eq!(budget.bytes(), 3 << 20);
        let wait = Duration::from_millis(50);
        let a = budget.take(2 << 20, wait).await.unwrap();
        let b = budget.take(1 << 20, wait).await.unwrap();
        assert!(budget.take(1, wait).await.is_none(), "the budget is spent");
        drop(a);
        assert_eq!(budget.available(), 2 << 20);
        assert!(budget.take(2 << 20, wait).await.is_some());
        drop(b);
        // A budget below the largest body is raised to it.
        assert_eq!(BodyBudget::new(10, 1 << 20).bytes(), 1 << 20);
    }

    /// A body fed through a channel, a frame at a time.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for Fed {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn a_body_too_slow_fails_and_says_so() {
        let slow = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = PacedBody::new(
            Body::new(Fed(rx)),
            4,
            Duration::from_millis(200),
            Arc::clone(&slow),
        );
        let reader = tokio::spawn(axum::body::to_bytes(Body::new(body), 1 << 20));
        // Enough for the first window, then too little in the second.
        tx.send(Bytes::from_static(b"abcd")).await.unwrap();
        tx.send(Bytes::from_static(b"e")).await.unwrap();
        let outcome = reader.await.unwrap();
        assert!(outcome.is_err());
        assert!(slow.load(Ordering::Acquire));
        drop(tx);

        // A body that keeps its pace and ends is read whole.
        let slow = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = PacedBody::new(
            Body::new(Fed(rx)),
            4,
            Duration::from_millis(300),
            Arc::clone(&slow),
        );
        let reader = tokio::spawn(axum::body::to_bytes(Body::new(body), 1 << 20));
        for _ in 0..3 {
            tx.send(Bytes::from_static(b"abcd")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(tx);
        assert_eq!(reader.await.unwrap().unwrap().len(), 12);
        assert!(!slow.load(Ordering::Acquire));
    }
}
