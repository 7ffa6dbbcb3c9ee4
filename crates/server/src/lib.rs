//! `cxr serve`: the seed system's HTTP API and a web page, over the one analysis service
//! ([`cxr_core::service`]) and the model pool ([`cxr_core::pool`]).
//!
//! The async side (axum on a two-thread tokio runtime) only moves bytes: every decode, model
//! run and overlay happens on the pool's worker threads, each with its own loaded models;
//! requests beyond the pool's bounded queue are answered 503 with `Retry-After` at once.
//! Uploads are capped before they are read ([`Config::max_body`]), share one byte budget while
//! in flight and must arrive at a minimum rate ([`limits`]), are decoded through the input
//! gate, and stored by content hash in a private folder of bounded size. Connections come
//! through this crate's own accept loop ([`serve_on`]): HTTP/1 with a header read timeout and
//! a cap on open connections. The routes are documented in `docs/http-api.md`, the limits in
//! `docs/limits.md`.

pub mod compact;
pub mod error;
pub mod limits;
mod routes;
pub mod seed;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::pool::ModelPool;
use cxr_core::service::Service;

pub use error::ApiError;
pub use limits::Limits;
pub use routes::router;
pub use state::{AppState, Models};

/// Largest request body by default: 32 MiB (radiographs are a few MB; DICOM rarely 30).
pub const DEFAULT_MAX_BODY: usize = 32 << 20;
/// How long a request waits for its result by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors that stop the server.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything `cxr serve` is started with.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// Folder holding the segmenter and the classifier.
    pub models: PathBuf,
    /// Device, backend and threads of one worker (the cores are shared between `jobs`).
    pub compute: Compute,
    /// Model workers (each loads its own models).
    pub jobs: usize,
    /// Requests that may wait for a worker; more are answered 503.
    pub pending: usize,
    pub cache: Cache,
    /// Uploads are kept in `data_dir/uploads` (mode 700).
    pub data_dir: PathBuf,
    /// The watch folder whose queue `POST /v1/training/queue` writes to.
    pub watch_dir: PathBuf,
    pub request_timeout: Duration,
    pub max_body: usize,
    /// Connections, bodies in flight, body pace, the uploads folder's size.
    pub limits: Limits,
}

/// Starts `jobs` model workers, each with its own service over `cache`.
pub fn start_pool(
    models: PathBuf,
    compute: Compute,
    jobs: usize,
    pending: usize,
    cache: Cache,
) -> cxr_core::Result<ModelPool<Service>> {
    let compute = compute.for_workers(jobs);
    ModelPool::start(jobs, pending, "cxr-serve", move |_| {
        Service::load(&models, &compute, cache.clone())
    })
}

/// Binds, calls `announce` with the bound address, loads the models (meanwhile `/readyz` and
/// the model routes answer 503), calls `ready` with the number of workers, and serves until
/// SIGINT or SIGTERM. Models that fail to load stop the server with their error.
pub fn run(
    config: Config,
    announce: impl FnOnce(SocketAddr),
    ready: impl FnOnce(usize),
) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_name("cxr-serve-io")
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(serve(config, announce, ready));
    // A model load still running after a signal is not waited for long.
    runtime.shutdown_timeout(Duration::from_secs(10));
    outcome
}

async fn serve(
    config: Config,
    announce: impl FnOnce(SocketAddr),
    ready: impl FnOnce(usize),
) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("--addr {}: {e}", config.addr))?;
    let local = listener.local_addr()?;
    let mut state = AppState::with_limits(
        &config.data_dir,
        config.watch_dir.clone(),
        config.request_timeout,
        config.max_body,
        config.limits.clone(),
    )
    .map_err(|e| format!("uploads folder in {}: {e}", config.data_dir.display()))?;
    state.loopback = local.ip().is_loopback();
    let state = Arc::new(state);
    announce(local);
    let loading = {
        let state = Arc::clone(&state);
        let Config {
            models,
            compute,
            jobs,
            pending,
            cache,
            ..
        } = config;
        tokio::task::spawn_blocking(move || -> Result<usize, String> {
            let pool =
                start_pool(models, compute, jobs, pending, cache).map_err(|e| e.to_string())?;
            let models = Models::new(pool).map_err(|e| e.message)?;
            let workers = models.pool.workers();
            state.set_models(models);
            Ok(workers)
        })
    };
    let server = serve_on(listener, Arc::clone(&state), shutdown_signal());
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served?,
        loaded = loading => {
            let workers = loaded.map_err(|e| e.to_string())??;
            ready(workers);
            server.await?;
        }
    }
    Ok(())
}

/// Serves [`router`] over `state` on `listener` until `shutdown` completes, then waits for the
/// requests in progress (at most the request timeout and 30 s more) and returns.
///
/// HTTP/1 only, through hyper with a header read timeout ([`Limits::header_timeout`], which
/// axum's `serve` does not set): a connection that does not finish sending a request's header
/// in time, or that sends nothing more on a kept-alive connection, is closed. At most
/// [`Limits::max_connections`] connections are served at once; the next ones wait in the
/// kernel's listen backlog until one closes.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let limits = state.limits.clone();
    let app = router(Arc::clone(&state));
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&connections).acquire_owned() => permit?,
        };
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait for connections to close.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    let patience = state.request_timeout + Duration::from_secs(30);
    if tokio::time::timeout(patience, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in progress after {} s: stopping anyway",
            patience.as_secs()
        );
    }
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing the requests in progress");
}
