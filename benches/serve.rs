//! Load test of `cxr serve`'s classify route: the real router and model pool on 127.0.0.1, a
//! few client threads posting radiographs as fast as they are answered. Measures requests per
//! second and latency percentiles with a warm cache (the same six samples, classified once
//! before) and a cold one (every upload new bytes: decode, segment, classify, store).
//!
//! Run with `cargo bench -p cxr-benches --bench serve`. `CXR_SERVE_BENCH_CLIENTS` (default 4),
//! `CXR_SERVE_BENCH_JOBS` (model workers, default 2), `CXR_SERVE_BENCH_WARM` (requests, default
//! 600) and `CXR_SERVE_BENCH_COLD` (default 60) change the load. Without `--bench` (as
//! `cargo test --benches` runs it) it makes a few requests only, as a smoke test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cxr_benches::{cpu, repo, sample, with_text};
use cxr_core::cache::Cache;

const SAMPLES: [&str; 6] = [
    "hannover_2c35005f.png",
    "hannover_b343e657.png",
    "hannover_e1446fe8.png",
    "nih_00001299_000.png",
    "nih_00001385_000.png",
    "nih_00002013_002.png",
];

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Posts every body in `bodies` with `clients` threads; returns each request's latency and the
/// wall time. Every answer must be 200.
fn load(url: &str, bodies: Vec<Vec<u8>>, clients: usize) -> (Vec<Duration>, Duration) {
    let bodies = Arc::new(std::sync::Mutex::new(bodies));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (bodies, url) = (Arc::clone(&bodies), url.to_owned());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut latencies = Vec::new();
                loop {
                    let Some(body) = bodies.lock().ok().and_then(|mut b| b.pop()) else {
                        return latencies;
                    };
                    let sent = Instant::now();
                    let response = client
                        .post(format!("{url}/v1/classifier"))
                        .header("content-type", "image/png")
                        .body(body)
                        .send()
                        .unwrap_or_else(|e| panic!("{e}"));
                    let status = response.status();
                    let text = response.text().unwrap_or_default();
                    assert_eq!(status, 200, "{text}");
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_else(|_| panic!("a client failed")))
        .collect();
    let wall = start.elapsed();
    latencies.sort();
    (latencies, wall)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn report(name: &str, latencies: &[Duration], wall: Duration) {
    println!(
        "classify {name:<5} {:>5} requests in {:>6.2} s: {:>7.1} req/s, p50 {:>7.1} ms, p95 {:>7.1} ms, max {:>7.1} ms",
        latencies.len(),
        wall.as_secs_f64(),
        latencies.len() as f64 / wall.as_secs_f64(),
        percentile(latencies, 0.50),
        percentile(latencies, 0.95),
        percentile(latencies, 1.0),
    );
}

fn main() {
    cxr_explainers::link();
    let full = std::env::args().any(|a| a == "--bench");
    let clients = env_or("CXR_SERVE_BENCH_CLIENTS", 4);
    let jobs = env_or("CXR_SERVE_BENCH_JOBS", 2);
    let (warm_n, cold_n) = if full {
        (
            env_or("CXR_SERVE_BENCH_WARM", 600),
            env_or("CXR_SERVE_BENCH_COLD", 60),
        )
    } else {
        (12, 4)
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let state = cxr_server::AppState::new(
        &dir.path().join("data"),
        dir.path().join("watch"),
        Duration::from_secs(600),
        cxr_server::DEFAULT_MAX_BODY,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pool = cxr_server::start_pool(
        repo().join("models"),
        cpu(),
        jobs,
        64,
        Cache::new(dir.path().join("cache")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    state.set_models(cxr_server::Models::new(pool).unwrap_or_else(|e| panic!("{e}")));
    let state = Arc::new(state);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    runtime.spawn(axum::serve(listener, cxr_server::router(Arc::clone(&state))).into_future());
    println!(
        "cxr serve load: {jobs} model workers, {clients} clients, {} cores",
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );

    let samples: Vec<Vec<u8>> = SAMPLES
        .iter()
        .map(|name| std::fs::read(sample(name)).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    // Cold: every body is new content.
    let cold: Vec<Vec<u8>> = (0..cold_n)
        .map(|i| with_text(&samples[i % samples.len()], &format!("cold-{i}")))
        .collect();
    let (latencies, wall) = load(&url, cold, clients);
    report("cold", &latencies, wall);
    // Warm: the samples once, then again and again from the cache.
    let (_, _) = load(&url, samples.clone(), clients);
    let warm: Vec<Vec<u8>> = (0..warm_n)
        .map(|i| samples[i % samples.len()].clone())
        .collect();
    let (latencies, wall) = load(&url, warm, clients);
    report("warm", &latencies, wall);
}
