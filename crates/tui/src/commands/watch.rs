//! `cxr watch [DIR]`: the drop folder. Events are JSON lines on stdout (for scripts and the
//! viewer), with a short sentence on stderr for the notable ones (for people).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use color_eyre::eyre::{Result, bail};
use cxr_core::compute::Compute;
use cxr_core::render::{Colormap, OverlayStyle};
use cxr_core::watch::{self, MethodSpec, WatchEvent, WatchMode, WatchOptions};

use crate::cli::WatchArgs;

pub fn run(args: &WatchArgs, models: &Path, compute: Compute) -> Result<ExitCode> {
    let colormap = Colormap::from(args.render.colormap);
    let dir = args.dir.as_ref().unwrap_or(&args.watch.watch_dir);
    let mut options = WatchOptions::new(dir, models, compute);
    options.methods = MethodSpec::parse(&args.method, &args.params)?;
    options.style = OverlayStyle {
        colormap,
        opacity: args.render.opacity.clamp(0.0, 1.0),
        legend: true,
    };
    options.outline = !args.render.no_outline;
    options.checks.faithfulness = args.faithfulness;
    if let Some(jobs) = args.jobs {
        if jobs == 0 {
            bail!("--jobs 0: at least one worker is needed");
        }
        options.jobs = jobs;
    }
    if args.poll {
        options.mode = WatchMode::Poll;
    }
    options.recursive = args.recursive;
    options.debounce = Duration::from_millis(args.debounce_ms);
    options.once = args.once;
    if let Some(addr) = args.dicom_listen {
        let ae_title = args.ae_title.trim();
        if ae_title.is_empty() || ae_title.len() > 16 || !ae_title.is_ascii() {
            bail!("--ae-title {ae_title:?}: an AE title is 1 to 16 ASCII characters");
        }
        let mut dicom = watch::dicom_listen::DicomListen::new(addr, ae_title);
        if let Some(max) = args.dicom_max_bytes {
            dicom.max_bytes = max.min(dicom.max_bytes);
        }
        options.dicom = Some(dicom);
        // Received files are renamed into the inbox; with a relative folder the inotify
        // watcher missed those renames (seen only at the 30 s rescan), so name it absolutely.
        options.dir = std::path::absolute(&options.dir)?;
    }
    if let Some(target) = &args.send_to {
        options.send_to = Some(watch::dicom_send::SendTo::parse(
            target,
            args.ae_title.trim(),
        )?);
    }
    // Nothing to stop: the watcher is built to be killed at any moment (Ctrl-C included).
    let stop = AtomicBool::new(false);
    let summary = watch::run(&options, &stop, &mut |event| {
        if let Some(line) = describe(event) {
            // Errors and rejections are worth telling even under --quiet.
            if matches!(
                event,
                WatchEvent::Error { .. }
                    | WatchEvent::Rejected { .. }
                    | WatchEvent::DicomRefused { .. }
                    | WatchEvent::DicomSendFailed { .. }
            ) {
                let _ = writeln!(std::io::stderr().lock(), "cxr: {line}");
            } else {
                super::note(&line);
            }
        }
        // A closed stdout (`cxr watch | head`) must not stop the watcher.
        if let Ok(json) = serde_json::to_string(event) {
            let _ = writeln!(std::io::stdout().lock(), "{json}");
        }
    })?;
    Ok(if summary.rejected + summary.stuck + summary.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// One sentence for stderr, for the events a person watching wants to see.
fn describe(event: &WatchEvent) -> Option<String> {
    Some(match event {
        WatchEvent::Watching {
            dir,
            watcher,
            jobs,
            methods,
            waiting,
            cleaned,
            ..
        } => {
            let mut line = format!(
                "watching {} ({watcher}, {jobs} worker{}, {}): drop radiographs there",
                dir.join(cxr_core::queue::INBOX).display(),
                if *jobs == 1 { "" } else { "s" },
                if methods.is_empty() {
                    "classification only".to_owned()
                } else {
                    methods.join(", ")
                }
            );
            if *waiting > 0 {
                let _ = write!(line, "; {waiting} already waiting");
            }
            if *cleaned > 0 {
                let _ = write!(
                    line,
                    "; removed {cleaned} unfinished entries of an earlier run"
                );
            }
            line
        }
        WatchEvent::Notice { message } => message.clone(),
        WatchEvent::Queued {
            file,
            id,
            label,
            confidence,
            ..
        } => format!("{} -> queue/{id}: {label} ({confidence:.2})", name(file)),
        WatchEvent::Duplicate { file, id, of, .. } => format!(
            "{}: same content as queue/{id} (from {of}); removed from the inbox",
            name(file)
        ),
        WatchEvent::AlreadyQueued { file, id, .. } => {
            format!(
                "{}: already queued as {id}; removed from the inbox",
                name(file)
            )
        }
        WatchEvent::Rejected { file, to, reason } => format!(
            "rejected {}: {} (see {})",
            name(file),
            reason.lines().next().unwrap_or_default(),
            cxr_core::watch::reason_path(to).display()
        ),
        WatchEvent::Ignored { file, reason } => format!("ignoring {}: {reason}", name(file)),
        WatchEvent::Error { file, error } => match file {
            Some(file) => format!("{}: {error}", file.display()),
            None => error.clone(),
        },
        WatchEvent::Finished(summary) => format!(
            "done: {} queued, {} duplicates, {} rejected, {} errors",
            summary.queued, summary.duplicates, summary.rejected, summary.errors
        ),
        WatchEvent::DicomListening { addr, ae_title } => {
            format!("receiving DICOM (C-STORE) at {addr} as AE title {ae_title}")
        }
        WatchEvent::DicomReceived {
            file, calling_ae, ..
        } => format!("received {} from {calling_ae}", name(file)),
        WatchEvent::DicomRefused { peer, reason } => format!("DICOM from {peer} refused: {reason}"),
        WatchEvent::DicomSent {
            file,
            to,
            sop_instance_uid,
        } => format!("sent {} to {to} ({sop_instance_uid})", file.display()),
        WatchEvent::DicomSendFailed { file, to, error } => {
            format!("sending {} to {to} failed: {error}", file.display())
        }
        WatchEvent::Retrying { .. } => return None,
    })
}
