//! `cxr serve`: the seed system's HTTP API and a web page, over the one analysis service
//! ([`cxr_core::service`]) and the model pool ([`cxr_core::pool`]).
//!
//! The async side (axum on a two-thread tokio runtime) only moves bytes: every decode, model
//! run and overlay happens on the pool's worker threads, each with its own loaded models;
//! requests beyond the pool's bounded queue are answered 503 with `Retry-After` at once.
//! Uploads are capped before they are read ([`Config::max_body`]), decoded through the input
//! gate, and stored by content hash in a private folder. The routes are documented in
//! `docs/http-api.md`.

pub mod error;
mod routes;
pub mod seed;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::pipeline::Pipeline;
use cxr_core::pool::ModelPool;
use cxr_core::service::Service;

pub use error::ApiError;
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
        Ok(Service::new(
            Pipeline::load_with(&models, &compute)?,
            cache.clone(),
        ))
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
    let mut state = AppState::new(
        &config.data_dir,
        config.watch_dir.clone(),
        config.request_timeout,
        config.max_body,
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
    let server = axum::serve(listener, router(Arc::clone(&state)))
        .with_graceful_shutdown(shutdown_signal())
        .into_future();
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
