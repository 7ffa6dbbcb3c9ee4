//! The terminal viewer (`cxr` or `cxr tui [PATH]`). This module owns the terminal and the
//! threads; `app` holds the state and its pure update, `ui` draws, `worker` does the heavy work.

pub mod app;
pub mod background;
pub mod event;
pub mod labels;
pub mod query;
#[cfg(test)]
mod tests;
pub mod ui;
pub mod view;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use color_eyre::eyre::{Result, WrapErr};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use crossterm::event::{Event, KeyEventKind};
use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::explain::registry;
use cxr_core::service::Service;
use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::layout::Rect;
use ratatui_image::picker::{Picker, ProtocolType};

use app::{Action, App, Item};
use background::{EncodeJob, Job, Latest, Workers};
use event::{AppEvent, Pane};

/// How the viewer was asked to start.
pub struct Options {
    /// A folder of radiographs, one file, or a watch queue.
    pub path: PathBuf,
    /// `auto` (ask the terminal), `halfblocks`, `sixel`, `kitty` or `iterm2`.
    pub image_protocol: String,
    /// Where labels go: the watch folder whose queue feeds retraining.
    pub watch_dir: PathBuf,
    /// Where results are cached (a disabled cache for `--no-cache`).
    pub cache: Cache,
    /// Who labels (checked by `cxr_core::queue::check_reviewer`).
    pub reviewer: String,
}

/// The side-effecting half of the viewer: worker slots and label storage.
pub struct Effects {
    pub jobs: Arc<Latest<Job>>,
    pub encoders: [Arc<Latest<EncodeJob>>; 2],
    pub watch_dir: PathBuf,
    /// Who labels.
    pub reviewer: String,
    /// The models' fingerprint, recorded with a label beside their prediction.
    pub fingerprint: String,
    /// The classifier's positive class, recorded with each label's prediction.
    pub positive: String,
    /// The classifier's classes: the only labels recorded (besides `skip`), as for
    /// `cxr queue label`.
    pub classes: Vec<String>,
    /// Cache, model fingerprint and event channel, to label opened files from the cache.
    pub scan: Option<(Cache, String, Sender<AppEvent>)>,
    /// The background threads (cache scans of opened folders join them).
    pub workers: Arc<Workers>,
}

impl Effects {
    fn apply(&self, app: &mut App, actions: Vec<Action>) {
        let mut queue = actions;
        while let Some(action) = (!queue.is_empty()).then(|| queue.remove(0)) {
            match action {
                Action::Run(job) => self.jobs.put(job),
                Action::Encode { pane, size } => {
                    let i = usize::from(pane == Pane::Overlay);
                    if let Some(image) = app.picture_for(i) {
                        self.encoders[i].put(EncodeJob {
                            generation: app.generation,
                            pane,
                            size,
                            image,
                        });
                    }
                }
                Action::Label {
                    path,
                    label,
                    predicted,
                    previous,
                    shown,
                } => {
                    let seen = crate::tui::labels::Seen {
                        reviewer: &self.reviewer,
                        predicted: predicted.as_ref().map(|p| (p, self.positive.as_str())),
                        classes: &self.classes,
                        model: predicted.as_ref().map(|_| self.fingerprint.as_str()),
                        shown: &shown,
                    };
                    let recorded =
                        crate::tui::labels::record(&self.watch_dir, &path, &label, &seen);
                    app.status = match recorded {
                        Ok(recorded) => {
                            app.labelled.push((path, recorded.entry));
                            recorded.message
                        }
                        Err(e) => {
                            // Nothing was recorded: the list shows what the queue holds.
                            if let Some(item) = app.items.iter_mut().find(|i| i.path == path) {
                                item.reviewed = previous;
                            }
                            format!("error: labelling {}: {e}", path.display())
                        }
                    };
                }
                Action::Undo { path, entry } => {
                    let undone =
                        crate::tui::labels::undo(&self.watch_dir, &entry, &path, &self.reviewer);
                    app.status = match undone {
                        Ok((message, now)) => {
                            if let Some(item) = app.items.iter_mut().find(|i| i.path == path) {
                                item.reviewed = now;
                            }
                            message
                        }
                        Err(e) => {
                            let status =
                                format!("error: undoing the label of queue entry {entry}: {e}");
                            app.labelled.push((path, entry));
                            status
                        }
                    };
                }
                Action::Open(path) => match open_items(&path) {
                    Ok(items) => {
                        if let Some((cache, fingerprint, events)) = &self.scan {
                            let files = items.iter().map(|i| i.path.clone()).collect();
                            let (cache, fingerprint) = (cache.clone(), fingerprint.clone());
                            background::spawn_cache_scan(
                                &self.workers,
                                files,
                                cache,
                                fingerprint,
                                Some(self.watch_dir.clone()),
                                events.clone(),
                            );
                        }
                        queue.extend(app.open(items));
                    }
                    Err(e) => app.status = format!("error: opening {}: {e}", path.display()),
                },
                Action::Quit => {}
            }
        }
    }
}

/// The images at `path`: a watch folder's queue (most uncertain first, with predictions and
/// reviews), or the radiographs of a folder, or one file.
fn open_items(path: &Path) -> Result<Vec<Item>> {
    if let Some(root) = crate::tui::labels::watch_root(path) {
        return Ok(crate::tui::labels::queue_items(&root)?);
    }
    let files =
        background::list_images(path).wrap_err_with(|| format!("opening {}", path.display()))?;
    Ok(files.into_iter().map(Item::new).collect())
}

/// The main loop, generic over the backend so tests can drive it with `TestBackend`: draw,
/// then handle every queued event, then draw once more; ticks keep the busy timer moving.
pub fn main_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    events: &Receiver<AppEvent>,
    effects: &Effects,
) -> Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let first = app.request();
    effects.apply(app, first);
    loop {
        terminal.draw(|frame| ui::view(frame, app, Instant::now()))?;
        app.drawn(Instant::now());
        if app.quit {
            break;
        }
        let size = terminal.size()?;
        let areas = ui::areas(Rect::new(0, 0, size.width, size.height), app);
        app.pane_sizes = areas.panes.map(|p| p.map(ui::picture_size));
        let encodes = app.encodes_needed();
        effects.apply(app, encodes);

        let tick = if app.busy.is_some() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        let first = match events.recv_timeout(tick) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => AppEvent::Tick,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        for event in std::iter::once(first).chain(events.try_iter()) {
            let actions = app.update(event);
            effects.apply(app, actions);
        }
    }
    Ok(())
}

/// Reads terminal input on its own thread; only key presses are forwarded. It polls, so it
/// sees the stop flag and ends (and is joined) when the viewer closes. When the graphics query
/// went unanswered, a late kitty answer is not taken for keys.
fn spawn_input(workers: &Workers, events: Sender<AppEvent>, query_complete: bool) {
    let stop = workers.stop_flag();
    workers.spawn("input", move || {
        let mut late = query::LateAnswers::default();
        while !stop.load(Ordering::Acquire) {
            match crossterm::event::poll(Duration::from_millis(50)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) => break,
            }
            let Ok(event) = crossterm::event::read() else {
                break;
            };
            let forwarded = match event {
                Event::Key(key)
                    if key.kind == KeyEventKind::Press && (query_complete || late.keep(&key)) =>
                {
                    AppEvent::Key(key, Instant::now())
                }
                Event::Resize(..) => AppEvent::Resize,
                _ => continue,
            };
            if events.send(forwarded).is_err() {
                break;
            }
        }
    });
}

/// How long the terminal has to answer the graphics query.
const QUERY_TIMEOUT: Duration = Duration::from_millis(400);

/// Whether asking the terminal about graphics makes sense: not on the Linux console or a dumb
/// terminal, which draw no pictures and may never answer.
fn may_answer_graphics_query() -> bool {
    let term = std::env::var("TERM").unwrap_or_default();
    !(term.is_empty() || term == "dumb" || term == "linux")
}

/// The image protocol, and the keys typed while the terminal was asked.
struct Protocols {
    picker: Picker,
    /// Keys read while waiting for the terminal's answers: the viewer's first input.
    keys: Vec<crossterm::event::KeyEvent>,
    /// Whether the terminal answered completely (else late answers may follow).
    complete: bool,
}

/// Picks the image protocol: asked of the terminal once (after entering the alternate screen,
/// before the input thread starts), halfblocks when it does not answer, or as overridden.
fn picker(choice: &str) -> Result<Protocols> {
    let forced = match choice {
        "auto" => None,
        "halfblocks" => Some(ProtocolType::Halfblocks),
        "sixel" => Some(ProtocolType::Sixel),
        "kitty" => Some(ProtocolType::Kitty),
        "iterm2" => Some(ProtocolType::Iterm2),
        other => color_eyre::eyre::bail!(
            "--image-protocol {other}: expected auto, halfblocks, sixel, kitty or iterm2"
        ),
    };
    if forced == Some(ProtocolType::Halfblocks) || !may_answer_graphics_query() {
        return Ok(Protocols {
            picker: Picker::halfblocks(),
            keys: Vec::new(),
            complete: true,
        });
    }
    // Terminals answer within a few milliseconds; one that does not is not waited for long.
    // The query is read here, not through ratatui-image's `from_query_stdio`, whose reader
    // thread stays blocked on stdin after a timeout and takes the first key typed (see `query`).
    let mut protocols = match query::ask(QUERY_TIMEOUT) {
        Ok(answer) => Protocols {
            picker: answer.picker,
            keys: answer.keys,
            complete: answer.complete,
        },
        Err(e) => {
            tracing::warn!("cannot ask the terminal about graphics ({e}); using halfblocks");
            Protocols {
                picker: Picker::halfblocks(),
                keys: Vec::new(),
                complete: true,
            }
        }
    };
    if !protocols.complete {
        tracing::warn!("the terminal did not answer the graphics query in time");
    }
    if let Some(protocol) = forced {
        protocols.picker.set_protocol_type(protocol);
    }
    let picker = &protocols.picker;
    tracing::info!(
        protocol = ?picker.protocol_type(),
        tmux = picker.tmux_detected(),
        answered = protocols.complete,
        keys_kept = protocols.keys.len(),
        "image protocol"
    );
    Ok(protocols)
}

/// Runs the viewer until the user quits. The models load before the terminal is taken over,
/// so a missing model is a plain error message.
pub fn run(options: &Options, models: &Path, compute: Compute) -> Result<()> {
    let service = Service::load(models, &compute, options.cache.clone())?;
    let items = open_items(&options.path)?;
    let entries = registry::all()?;
    let explainers = entries.iter().map(|e| e.name.to_owned()).collect();
    let mut app = App::new(items, explainers);
    app.param_specs = entries
        .iter()
        .map(|e| (e.name.to_owned(), e.params))
        .collect();
    if let Some(i) = app.explainers.iter().position(|n| n == "grad-cam") {
        app.explainer = i;
    }
    let card = cxr_core::models::ModelFiles::new(models, cxr_core::pipeline::CLASSIFIER_NAME).card;
    app.card = std::fs::read_to_string(&card)
        .ok()
        .and_then(|text| cxr_core::card::headline(&text));

    // Declared before the terminal: on any way out (quit, error, panic) the threads are stopped
    // and joined, the models dropped on their own thread, before `main` returns.
    let workers = Workers::new();
    let mut terminal = ratatui::init();
    let outcome = (|| {
        // A first frame before the terminal is asked about graphics: never a blank screen.
        app.status = "asking the terminal how to draw pictures…".into();
        terminal.draw(|frame| ui::view(frame, &app, Instant::now()))?;
        let Protocols {
            picker,
            keys,
            complete,
        } = picker(&options.image_protocol)?;
        app.status.clear();
        let font = picker.font_size();
        app.font = (font.width, font.height);
        let (tx, rx) = crossbeam_channel::unbounded();
        // Keys typed while the terminal was asked come first, then the input thread's.
        let now = Instant::now();
        for key in keys {
            // The receiver is `rx`, alive until the end of this function.
            let _ = tx.send(AppEvent::Key(key, now));
        }
        spawn_input(&workers, tx.clone(), complete);
        // Labels of a queue being reviewed go to that queue.
        let watch_dir = crate::tui::labels::watch_root(&options.path)
            .unwrap_or_else(|| options.watch_dir.clone());
        let effects = Effects {
            jobs: Latest::new(),
            encoders: [Latest::new(), Latest::new()],
            watch_dir,
            reviewer: options.reviewer.clone(),
            fingerprint: service.fingerprint().to_owned(),
            positive: service.pipeline().classifier.classes()[0].clone(),
            classes: service.pipeline().classifier.classes().to_vec(),
            scan: Some((
                options.cache.clone(),
                service.fingerprint().to_owned(),
                tx.clone(),
            )),
            workers: workers.clone(),
        };
        let paths = app.items.iter().map(|i| i.path.clone()).collect();
        background::spawn_cache_scan(
            &workers,
            paths,
            options.cache.clone(),
            service.fingerprint().to_owned(),
            Some(effects.watch_dir.clone()),
            tx.clone(),
        );
        background::spawn_inference(&workers, service, effects.jobs.clone(), tx.clone());
        for slot in &effects.encoders {
            background::spawn_encoder(&workers, picker.clone(), slot.clone(), tx.clone());
        }
        main_loop(&mut terminal, &mut app, &rx, &effects)
    })();
    // The last frame says "closing"; a running explainer stops at its next batch.
    let started = Instant::now();
    workers.shutdown();
    tracing::info!(
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "background threads stopped"
    );
    // Blank the viewer's screen before leaving it: tmux carries rows of an alternate screen
    // that grew (80x24 -> 160x48) onto the shell's screen when the program leaves it.
    let _ = terminal.clear();
    ratatui::restore();
    log_latencies(&app.latencies);
    outcome
}

/// Input-to-redraw latency, written to the log when the viewer closes.
fn log_latencies(latencies: &[Duration]) {
    if latencies.is_empty() {
        return;
    }
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    let p95 = ms[(ms.len() * 95 / 100).min(ms.len() - 1)];
    tracing::info!(
        keys = ms.len(),
        median_ms = median,
        p95_ms = p95,
        max_ms = ms[ms.len() - 1],
        "input-to-redraw latency"
    );
}
