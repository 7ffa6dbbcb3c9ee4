//! Load test of the watch folder: N radiographs (copies of the samples, each with distinct
//! bytes) dropped into a running watcher's inbox at once; measures files per minute until all
//! are queued, and the peak resident memory of the process (`VmHWM`, reset just before the
//! watcher starts), for classification only and with Grad-CAM.
//!
//! Run with `cargo bench -p cxr-benches --bench watch`; `CXR_WATCH_BENCH_FILES` (default 500)
//! and `CXR_WATCH_BENCH_JOBS` (default: the watcher's, one per core) change the load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cxr_benches::{cpu, repo, with_text};
use cxr_core::watch::{self, MethodSpec, WatchEvent, WatchOptions};

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Measured {
    files: usize,
    seconds: f64,
    peak_mib: Option<f64>,
    mean_ms: f64,
}

fn load(name: &str, methods: &[String], files: usize, jobs: usize, root: &Path) -> Measured {
    let dir = root.join(name);
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    let staged = root.join(format!("{name}-staged"));
    std::fs::create_dir_all(&staged).expect("staged");
    let mut samples: Vec<PathBuf> = std::fs::read_dir(repo().join("samples"))
        .expect("samples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    samples.sort();
    let pictures: Vec<Vec<u8>> = samples
        .iter()
        .map(|p| std::fs::read(p).expect("sample"))
        .collect();
    // Written beside the inbox first, so that the drop itself is only renames.
    for i in 0..files {
        let bytes = with_text(&pictures[i % pictures.len()], &format!("{name} {i}"));
        std::fs::write(staged.join(format!("x{i:04}.png")), bytes).expect("write");
    }

    let mut options = WatchOptions::new(&dir, repo().join("models"), cpu());
    options.methods = MethodSpec::parse(methods, &[]).expect("methods");
    options.jobs = jobs;
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    // Peak memory from here on: what the watcher itself needs.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            watch::run(&options, &stop, &mut |event: &WatchEvent| {
                let _ = tx.send(event.clone());
            })
        });
        loop {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(WatchEvent::Watching { .. }) => break,
                Ok(_) => {}
                Err(e) => panic!("watcher did not start: {e}"),
            }
        }
        let start = Instant::now();
        for i in 0..files {
            let name = format!("x{i:04}.png");
            std::fs::rename(staged.join(&name), inbox.join(&name)).expect("drop");
        }
        let (mut queued, mut total_ms) = (0, 0.0);
        while queued < files {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(WatchEvent::Queued { ms, .. }) => {
                    queued += 1;
                    total_ms += ms;
                }
                Ok(WatchEvent::Rejected { file, reason, .. }) => {
                    panic!("{} rejected: {reason}", file.display())
                }
                Ok(_) => {}
                Err(e) => panic!("stalled after {queued} files: {e}"),
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        watcher.join().expect("watcher thread").expect("watcher");
        Measured {
            files,
            seconds,
            peak_mib: reset
                .then(|| status_kib("VmHWM:"))
                .flatten()
                .map(|kib| kib as f64 / 1024.0),
            mean_ms: total_ms / files as f64,
        }
    })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    cxr_explainers::link();
    let files = std::env::var("CXR_WATCH_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let jobs = std::env::var("CXR_WATCH_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(watch::default_jobs);
    let root = std::env::temp_dir().join(format!("cxr-watch-bench-{}", std::process::id()));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!(
        "watch load: {files} radiographs (512 px PNG) dropped at once, {jobs} worker(s), \
         {cores} cores, CPU"
    );
    for (name, methods) in [
        ("classification only", vec!["none".to_owned()]),
        ("with Grad-CAM", vec!["grad-cam".to_owned()]),
    ] {
        let slug = name.replace(' ', "-");
        let m = load(&slug, &methods, files, jobs, &root);
        println!(
            "{name:<22} {:>7.1} files/min  ({} files in {:.1} s; {:.0} ms per file in a worker; \
             peak RSS {})",
            m.files as f64 / m.seconds * 60.0,
            m.files,
            m.seconds,
            m.mean_ms,
            m.peak_mib
                .map_or_else(|| "n/a".to_owned(), |mib| format!("{mib:.0} MiB"))
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
