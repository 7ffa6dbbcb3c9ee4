//! The viewer without a terminal: update logic as pure functions over events, and rendering
//! snapshots with `TestBackend` (halfblocks) at 80x24 and 160x48.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use cxr_core::explain::HeatmapSummary;
use cxr_core::explain::quality::Quality;
use cxr_core::explain::report::MethodReport;
use cxr_core::models::Prediction;
use cxr_core::pipeline::Timings;
use image::DynamicImage;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::layout::Rect;
use ratatui_image::picker::{Picker, ProtocolType};

use super::app::{Action, App, Item, ItemState};
use super::event::{AppEvent, Encoded, Pane, WorkerEvent};
use super::ui;

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples")
        .join(name)
}

fn key(c: char) -> AppEvent {
    AppEvent::Key(
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE),
        Instant::now(),
    )
}

fn app() -> App {
    let items = [
        "hannover_e1446fe8.png",
        "nih_00001299_000.png",
        "nih_00002013_002.png",
    ]
    .iter()
    .map(|n| Item::new(sample(n)))
    .collect();
    App::new(items, vec!["grad-cam".into(), "lime".into()])
}

fn prediction(covid: f32) -> Prediction {
    let probabilities = BTreeMap::from([
        ("covid".to_owned(), covid),
        ("normal".to_owned(), 1.0 - covid),
    ]);
    let label = if covid >= 0.69 { "covid" } else { "normal" };
    Prediction {
        probabilities,
        label: label.into(),
        threshold: 0.69,
        trust: cxr_core::trust::Assessment::default(),
    }
}

fn method_report() -> MethodReport {
    let quality = Quality {
        deletion_auc: Some(0.265),
        insertion_auc: Some(0.698),
        lung_mass_share: Some(0.47),
        randomisation_correlation: None,
    };
    MethodReport {
        method: "grad-cam".into(),
        params: String::new(),
        target: "covid".into(),
        heatmap: HeatmapSummary {
            mean: 0.2,
            max: 1.0,
            above_half: 0.1,
        },
        quality,
        details: serde_json::Map::new(),
        explain_ms: 4.0,
        quality_ms: 60.0,
    }
}

fn job_of(actions: &[Action]) -> super::background::Job {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Run(job) => Some(job.clone()),
            _ => None,
        })
        .expect("a job was requested")
}

#[test]
fn moving_requests_the_new_selection_and_drops_stale_answers() {
    let mut app = app();
    let first = job_of(&app.request());
    let second = job_of(&app.update(key('j')));
    assert_eq!(second.path, sample("nih_00001299_000.png"));
    assert!(second.generation > first.generation);
    // The answer to the first request arrives late: the list learns from it, the screen does not.
    let original = DynamicImage::new_luma8(8, 8);
    let late = WorkerEvent::Analysed {
        generation: first.generation,
        path: first.path.clone(),
        prediction: prediction(0.99),
        timings: Timings::default(),
        original: original.clone(),
        lungs: None,
    };
    app.update(AppEvent::Worker(late));
    assert!(
        app.shown.is_none(),
        "a stale result must not replace the newer selection"
    );
    assert!(matches!(app.items[0].state, ItemState::Predicted { .. }));
    let late_overlay = WorkerEvent::Explained {
        generation: first.generation,
        overlay: original.clone(),
        report: method_report(),
    };
    app.update(AppEvent::Worker(late_overlay));
    assert!(app.pictures[1].is_none());
    // The current answer is shown.
    let current = WorkerEvent::Analysed {
        generation: second.generation,
        path: second.path,
        prediction: prediction(0.1),
        timings: Timings::default(),
        original,
        lungs: None,
    };
    app.update(AppEvent::Worker(current));
    assert_eq!(app.shown.as_ref().unwrap().prediction.label, "normal");
}

#[test]
fn fast_scrolling_keeps_one_pending_job() {
    let mut app = app();
    let slot = super::background::Latest::new();
    for _ in 0..50 {
        for action in app.update(key('j')).into_iter().chain(app.update(key('k'))) {
            if let Action::Run(job) = action {
                slot.put(job);
            }
        }
    }
    // Only the newest request is waiting: a worker that wakes up runs one job, not a hundred.
    let waiting = slot.try_take().unwrap();
    assert_eq!(waiting.generation, app.generation);
    assert!(slot.try_take().is_none());
}

#[test]
fn labelling_records_and_moves_on() {
    let mut app = app();
    app.request();
    let actions = app.update(key('n'));
    assert_eq!(
        actions[0],
        Action::Label {
            path: sample("hannover_e1446fe8.png"),
            label: "normal".into(),
            predicted: None,
            previous: None,
            shown: Vec::new(),
        }
    );
    assert_eq!(app.items[0].reviewed.as_deref(), Some("normal"));
    assert_eq!(app.selected, 1);
    assert!(matches!(actions[1], Action::Run(_)));
    let actions = app.update(key('c'));
    assert!(matches!(&actions[0], Action::Label { path, label, .. }
        if *path == sample("nih_00001299_000.png") && label == "covid"));
}

/// What the viewer's labels go through: reviewer `dr-lee`, a model with `classes`, the queue
/// of `watch`.
fn labelling_effects(watch: &Path, classes: &[&str]) -> super::Effects {
    super::Effects {
        jobs: super::background::Latest::new(),
        encoders: [
            super::background::Latest::new(),
            super::background::Latest::new(),
        ],
        watch_dir: watch.to_path_buf(),
        reviewer: "dr-lee".into(),
        fingerprint: "f1".into(),
        positive: "covid".into(),
        classes: classes.iter().map(|c| (*c).to_owned()).collect(),
        scan: None,
        workers: super::background::Workers::new(),
    }
}

/// `u` takes back this session's labels, newest first, back on each image: the queue keeps the
/// undone review in its history, and the list's mark shows what the queue holds now.
#[test]
fn undo_takes_back_the_last_label_on_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let watch = dir.path().join("watch");
    let effects = labelling_effects(&watch, &["covid", "normal"]);
    let mut app = app();
    let press = |app: &mut App, c| {
        let actions = app.update(key(c));
        effects.apply(app, actions);
    };
    press(&mut app, 'u');
    assert!(app.status.starts_with("nothing to undo"), "{}", app.status);
    // The first label is given with a Grad-CAM explanation on screen: it is recorded.
    app.shown = Some(super::app::Shown {
        prediction: prediction(0.9),
        timings: Timings::default(),
        report: Some(method_report()),
        lungs: None,
    });
    // Label the first image normal, then covid (back on it), then the second skip.
    press(&mut app, 'n');
    app.selected = 0;
    press(&mut app, 'c');
    press(&mut app, 's');
    assert_eq!(app.selected, 2);
    let marks = |app: &App| -> Vec<Option<String>> {
        app.items.iter().map(|i| i.reviewed.clone()).collect()
    };
    assert_eq!(
        marks(&app)[..2],
        [Some("covid".into()), Some("skip".into())]
    );

    // Undo the skip: back on the second image, unreviewed again.
    press(&mut app, 'u');
    assert_eq!(app.selected, 1);
    assert!(app.status.starts_with("undid skip on "), "{}", app.status);
    assert_eq!(marks(&app)[..2], [Some("covid".into()), None]);
    // Undo the covid: the first image's normal is current again.
    press(&mut app, 'u');
    assert_eq!(app.selected, 0);
    assert!(app.status.ends_with("(now normal)"), "{}", app.status);
    assert_eq!(marks(&app)[0].as_deref(), Some("normal"));
    let queue = cxr_core::queue::Queue::open(&watch).unwrap();
    let entries = queue.list(cxr_core::queue::Order::Time).unwrap();
    let first = entries
        .iter()
        .find(|e| e.state.source_name == "hannover_e1446fe8.png")
        .unwrap();
    assert_eq!(first.label().unwrap().as_str(), "normal");
    assert_eq!(first.state.review.as_ref().unwrap().shown, ["grad-cam"]);
    let undone = &first.state.history[0];
    assert_eq!(undone.label.as_str(), "covid");
    assert_eq!(undone.undone.as_ref().unwrap().reviewer, "dr-lee");
}

/// The viewer's labels are checked against the model's classes like `cxr queue label`'s: a key
/// whose label the model does not have records nothing, says why, and the mark goes back.
#[test]
fn the_viewer_records_only_the_models_classes() {
    let dir = tempfile::tempdir().unwrap();
    let watch = dir.path().join("watch");
    // A model trained on "covid" and "no_finding": the viewer's `n` key means "normal".
    let effects = labelling_effects(&watch, &["covid", "no_finding"]);
    let mut app = app();
    app.items[0].reviewed = Some("covid".into());
    let actions = app.update(key('n'));
    effects.apply(&mut app, actions);
    assert!(
        app.status
            .contains("label \"normal\" is not one of the model's classes")
            && app
                .status
                .contains("expected one of: covid, no_finding, skip"),
        "{}",
        app.status
    );
    assert_eq!(
        app.items[0].reviewed.as_deref(),
        Some("covid"),
        "mark put back"
    );
    assert!(
        !watch.join("queue").exists()
            || std::fs::read_dir(watch.join("queue")).unwrap().count() == 0,
        "nothing recorded"
    );
    // A class of the model, and skip, are recorded.
    app.selected = 0;
    let actions = app.update(key('c'));
    effects.apply(&mut app, actions);
    assert!(app.status.starts_with("labelled "), "{}", app.status);
    let actions = app.update(key('s'));
    effects.apply(&mut app, actions);
    assert!(app.status.starts_with("labelled "), "{}", app.status);
    let queue = cxr_core::queue::Queue::open(&watch).unwrap();
    let labels: Vec<String> = queue
        .list(cxr_core::queue::Order::Uncertainty)
        .unwrap()
        .iter()
        .filter_map(|e| e.label().map(|l| l.as_str().to_owned()))
        .collect();
    assert_eq!(labels.len(), 2, "{labels:?}");
    let reviewers: Vec<String> = queue
        .list(cxr_core::queue::Order::Uncertainty)
        .unwrap()
        .iter()
        .filter_map(|e| e.state.review.as_ref().map(|r| r.reviewer.clone()))
        .collect();
    assert_eq!(reviewers, ["dr-lee", "dr-lee"], "the viewer's --reviewer");
    assert!(labels.contains(&"covid".to_owned()) && labels.contains(&"skip".to_owned()));
    // Misspelt labels are refused by the same check.
    let seen = crate::tui::labels::Seen {
        reviewer: "dr-lee",
        predicted: None,
        classes: &effects.classes,
        model: None,
        shown: &[],
    };
    let e = crate::tui::labels::record(&watch, &sample("nih_00001299_000.png"), "nromal", &seen)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"nromal\" is not one of the model's classes"),
        "{e}"
    );
}

#[test]
fn explainer_switch_and_parameters_rerun() {
    let mut app = app();
    app.request();
    let job = job_of(&app.update(key('e')));
    assert_eq!(job.method, "lime");
    app.update(key('p'));
    for c in "samples=200".chars() {
        app.update(key(c));
    }
    let job = job_of(&app.update(AppEvent::Key(
        KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE),
        Instant::now(),
    )));
    assert_eq!(
        (job.method.as_str(), job.params.as_str()),
        ("lime", "samples=200")
    );
    let job = job_of(&app.update(key('-')));
    assert!((job.opacity - 0.5).abs() < 1e-6);
    let job = job_of(&app.update(key('m')));
    assert!(!job.outline);
    assert!(app.update(key('q')).contains(&Action::Quit) && app.quit);
}

#[test]
fn failures_show_in_the_status_bar_and_the_app_goes_on() {
    let mut app = app();
    let job = job_of(&app.request());
    let failed = WorkerEvent::Failed {
        generation: job.generation,
        path: job.path,
        stage: super::event::Stage::Analysis,
        message: "corrupt image".into(),
    };
    app.update(AppEvent::Worker(failed));
    assert!(app.status.contains("corrupt image"));
    assert!(matches!(app.items[0].state, ItemState::Failed(_)));
    assert!(!app.quit);
    assert!(!app.update(key('j')).is_empty(), "still responds");
}

#[test]
fn the_explainer_list_comes_from_the_registry() {
    cxr_explainers::link();
    let names: Vec<String> = cxr_core::explain::registry::all()
        .unwrap()
        .iter()
        .map(|e| e.name.to_owned())
        .collect();
    assert!(names.contains(&"grad-cam".to_owned()) && names.contains(&"lime".to_owned()));
    let mut app = App::new(
        vec![Item::new(sample("nih_00001299_000.png"))],
        names.clone(),
    );
    app.request();
    let mut seen = Vec::new();
    for _ in 0..names.len() {
        seen.push(job_of(&app.update(key('e'))).method);
    }
    seen.sort();
    let mut expected = names;
    expected.sort();
    assert_eq!(seen, expected, "cycling visits every registered explainer");
}

/// A fully answered screen: prediction, explanation, both pictures encoded with halfblocks.
fn answered(width: u16, height: u16) -> (App, Terminal<TestBackend>) {
    answered_with(width, height, prediction(0.999))
}

fn answered_with(width: u16, height: u16, prediction: Prediction) -> (App, Terminal<TestBackend>) {
    let mut app = app();
    let job = job_of(&app.request());
    let original = image::open(sample("hannover_e1446fe8.png")).unwrap();
    let overlay = DynamicImage::ImageRgb8(original.to_rgb8());
    app.update(AppEvent::Worker(WorkerEvent::Analysed {
        generation: job.generation,
        path: job.path,
        prediction,
        timings: Timings {
            decode_ms: 1.0,
            segment_ms: 50.0,
            preprocess_ms: 2.0,
            classify_ms: 4.0,
            total_ms: 57.0,
        },
        original,
        lungs: None,
    }));
    app.update(AppEvent::Worker(WorkerEvent::Explained {
        generation: job.generation,
        overlay,
        report: method_report(),
    }));
    let areas = ui::areas(Rect::new(0, 0, width, height), &app);
    let picker = Picker::halfblocks();
    for (i, pane) in [Pane::Original, Pane::Overlay].into_iter().enumerate() {
        if let (Some(rect), Some(picture)) = (areas.panes[i], app.picture_for(i)) {
            let size = ui::picture_size(rect);
            let protocol = super::background::encode(&picker, picture, size);
            app.update(AppEvent::Encoded(Encoded {
                generation: app.generation,
                pane,
                size,
                protocol,
            }));
        }
    }
    (app, Terminal::new(TestBackend::new(width, height)).unwrap())
}

#[test]
fn trust_flags_and_familiarity_show_in_the_panel() {
    let mut flagged = prediction(0.999);
    flagged.trust = cxr_core::trust::Assessment {
        familiarity: Some(41.2),
        flags: vec![cxr_core::trust::Flag::Unfamiliar],
        reasons: vec!["familiarity distance 41.2 above the 99th percentile 30.0".into()],
    };
    let (app, mut terminal) = answered_with(160, 48, flagged);
    terminal
        .draw(|f| ui::view(f, &app, Instant::now()))
        .unwrap();
    let screen = terminal.backend().to_string();
    assert!(screen.contains("familiarity 41.2"), "{screen}");
    assert!(
        screen.contains("unfamiliar") && screen.contains('⚠'),
        "{screen}"
    );
    assert!(screen.contains("percentile 30.0"), "{screen}");
    // A familiar prediction says so.
    let mut fine = prediction(0.999);
    fine.trust.familiarity = Some(9.5);
    let (app, mut terminal) = answered_with(160, 48, fine);
    terminal
        .draw(|f| ui::view(f, &app, Instant::now()))
        .unwrap();
    let screen = terminal.backend().to_string();
    assert!(
        screen.contains("no trust flags") && !screen.contains('⚠'),
        "{screen}"
    );
}

#[test]
fn snapshot_80x24() {
    let (app, mut terminal) = answered(80, 24);
    terminal
        .draw(|f| ui::view(f, &app, Instant::now()))
        .unwrap();
    insta::assert_snapshot!(terminal.backend());
}

#[test]
fn snapshot_160x48() {
    let (app, mut terminal) = answered(160, 48);
    terminal
        .draw(|f| ui::view(f, &app, Instant::now()))
        .unwrap();
    insta::assert_snapshot!(terminal.backend());
}

/// A flagged prediction at each terminal size reviewers use: the prediction, its flag, every
/// explanation metric and the review state are on screen at all three.
#[test]
fn snapshot_flagged_at_80x24_120x40_160x48() {
    for (width, height) in [(80, 24), (120, 40), (160, 48)] {
        let mut flagged = prediction(0.999);
        flagged.trust = cxr_core::trust::Assessment {
            familiarity: Some(41.2),
            flags: vec![cxr_core::trust::Flag::Unfamiliar],
            reasons: vec!["familiarity distance 41.2 above the 99th percentile 30.0".into()],
        };
        let (app, mut terminal) = answered_with(width, height, flagged);
        terminal
            .draw(|f| ui::view(f, &app, Instant::now()))
            .unwrap();
        let screen = terminal.backend().to_string();
        for shown in [
            "label covid",
            "unfamiliar",
            "deletion AUC",
            "insertion AUC",
            "in lungs",
            "review: not reviewed",
        ] {
            assert!(
                screen.contains(shown),
                "{width}x{height}: {shown}\n{screen}"
            );
        }
        insta::assert_snapshot!(format!("flagged_{width}x{height}"), terminal.backend());
    }
}

/// Zoom 2x and the lung window, the model card's headline in the panel, re-encoded as the
/// effects would after `z` and `w`.
fn zoomed_and_windowed(width: u16, height: u16) -> (App, Terminal<TestBackend>) {
    let (mut app, terminal) = answered(width, height);
    app.card = Some("test AUC 0.998, accuracy 0.985, 130 images; known source bias".into());
    let areas = ui::areas(Rect::new(0, 0, width, height), &app);
    app.pane_sizes = areas.panes.map(|p| p.map(ui::picture_size));
    let mut encodes = app.update(key('z'));
    encodes.extend(app.update(key('w')));
    encodes.extend(app.update(key('w')));
    assert_eq!(app.view.zoom, 2);
    assert_eq!(app.view.window, super::view::Window::Lung);
    let picker = Picker::halfblocks();
    for action in encodes {
        let Action::Encode { pane, size } = action else {
            continue;
        };
        let i = usize::from(pane == Pane::Overlay);
        let protocol = super::background::encode(&picker, app.picture_for(i).unwrap(), size);
        app.update(AppEvent::Encoded(Encoded {
            generation: app.generation,
            pane,
            size,
            protocol,
        }));
    }
    for (i, pane) in areas.panes.iter().enumerate() {
        assert_eq!(pane.is_some(), app.protocols[i].is_some(), "pane {i}");
    }
    (app, terminal)
}

#[test]
fn zoom_and_window_change_only_the_pictures() {
    let (mut app, _) = answered(160, 48);
    let areas = ui::areas(Rect::new(0, 0, 160, 48), &app);
    app.pane_sizes = areas.panes.map(|p| p.map(ui::picture_size));
    let generation = app.generation;
    let actions = app.update(key('z'));
    // Both panes are encoded again, nothing is rerun.
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(actions.iter().all(|a| matches!(a, Action::Encode { .. })));
    assert_eq!(app.generation, generation);
    let full = app.pictures[0].clone().unwrap();
    let zoomed = app.picture_for(0).unwrap();
    assert_eq!(zoomed.width(), full.width() / 2);
    // The window changes the radiograph only.
    let actions = app.update(key('w'));
    assert!(matches!(
        actions.as_slice(),
        [Action::Encode {
            pane: Pane::Original,
            ..
        }]
    ));
    assert_ne!(app.picture_for(0).unwrap().to_luma8(), zoomed.to_luma8());
    assert_eq!(
        app.picture_for(1).unwrap().to_rgb8(),
        super::view::View {
            zoom: 2,
            ..Default::default()
        }
        .zoomed(app.pictures[1].as_ref().unwrap(), super::view::CENTRE)
        .to_rgb8()
    );
    // Zoomed in, l and j move both pictures (not the list), and redraw them.
    let (selected, centred) = (app.selected, app.picture_for(1).unwrap().to_rgb8());
    let actions = app.update(key('l'));
    assert_eq!(actions.len(), 2, "both panes re-encoded");
    app.update(key('j'));
    assert_eq!((app.view.pan, app.selected), ((1, 1), selected));
    assert_ne!(app.picture_for(1).unwrap().to_rgb8(), centred);
    // z cycles back to the whole picture, centred; then j moves through the list again.
    app.update(key('z'));
    app.update(key('z'));
    assert_eq!((app.view.zoom, app.view.pan), (1, (0, 0)));
    app.update(key('j'));
    assert_eq!(app.selected, selected + 1);
}

/// On a terminal that draws pictures (sixel, kitty, iTerm2), a pane gets the radiograph at the
/// terminal's own pixels: a 60x30-cell pane with 10x20-pixel cells is a 600x600-pixel box, and
/// the 512x471 sample fills its width: 600x552 pixels, padded to whole cells (28 rows, 560
/// pixels), where half blocks would give it 60x56.
#[test]
fn graphics_terminals_get_the_picture_at_their_full_resolution() {
    let radiograph = image::open(sample("hannover_e1446fe8.png")).unwrap();
    assert_eq!((radiograph.width(), radiograph.height()), (512, 471));
    let cells = ratatui::layout::Size::new(60, 30);
    for (protocol, pixels) in [
        (ProtocolType::Sixel, "\"1;1;600;560"),
        (ProtocolType::Kitty, "s=600,v=560"),
        (ProtocolType::Iterm2, "width=600px;height=560px"),
    ] {
        #[allow(deprecated)] // the documented way to build a picker for a known cell size
        let mut picker = Picker::from_fontsize(ratatui_image::FontSize::new(10, 20));
        picker.set_protocol_type(protocol);
        let encoded = super::background::encode(&picker, radiograph.clone(), cells).unwrap();
        let area = Rect::new(0, 0, cells.width, cells.height);
        let mut buffer = ratatui::buffer::Buffer::empty(area);
        ratatui::widgets::Widget::render(ratatui_image::Image::new(&encoded), area, &mut buffer);
        let written: String = buffer
            .content()
            .iter()
            .map(ratatui::buffer::Cell::symbol)
            .collect();
        assert!(
            written.contains(pixels),
            "{protocol:?}: no {pixels:?} in {:?}",
            written.chars().take(300).collect::<String>()
        );
    }
}

/// Zoom looks at the lungs the segmenter found, not at the middle of the film.
#[test]
fn zoom_looks_at_the_lungs() {
    let mut app = app();
    let job = job_of(&app.request());
    let original = image::open(sample("hannover_e1446fe8.png")).unwrap();
    let (w, h) = (original.width(), original.height());
    // Lungs in the top left quarter: 2x shows exactly that quarter.
    let lungs = cxr_core::pipeline::LungBox {
        x: 0,
        y: 0,
        width: w / 2,
        height: h / 2,
    };
    app.update(AppEvent::Worker(WorkerEvent::Analysed {
        generation: job.generation,
        path: job.path,
        prediction: prediction(0.9),
        timings: Timings::default(),
        original: original.clone(),
        lungs: Some(lungs),
    }));
    app.update(key('z'));
    assert_eq!(
        app.picture_for(0).unwrap().to_luma8(),
        original.crop_imm(0, 0, w / 2, h / 2).to_luma8()
    );
}

#[test]
fn snapshot_zoom_window_card_80x24() {
    let (app, mut terminal) = zoomed_and_windowed(80, 24);
    terminal
        .draw(|f| ui::view(f, &app, Instant::now()))
        .unwrap();
    insta::assert_snapshot!(terminal.backend());
}

#[test]
fn snapshot_zoom_window_card_160x48() {
    let (app, mut terminal) = zoomed_and_windowed(160, 48);
    terminal
        .draw(|f| ui::view(f, &app, Instant::now()))
        .unwrap();
    let screen = terminal.backend().to_string();
    assert!(screen.contains("radiograph · 2x · lung window"), "{screen}");
    assert!(screen.contains("model: test AUC 0.998"), "{screen}");
    insta::assert_snapshot!(terminal.backend());
}

#[test]
fn snapshot_help_80x24() {
    let (mut app, mut terminal) = answered(80, 24);
    app.update(key('?'));
    terminal
        .draw(|f| ui::view(f, &app, Instant::now()))
        .unwrap();
    insta::assert_snapshot!(terminal.backend());
}

#[test]
fn resize_drops_encodings_and_asks_for_new_ones() {
    let (mut app, _) = answered(160, 48);
    assert!(app.protocols.iter().all(Option::is_some));
    app.update(AppEvent::Resize);
    assert!(app.protocols.iter().all(Option::is_none));
    let areas = ui::areas(Rect::new(0, 0, 100, 30), &app);
    app.pane_sizes = areas.panes.map(|p| p.map(ui::picture_size));
    let encodes = app.encodes_needed();
    assert!(!encodes.is_empty() && encodes.iter().all(|a| matches!(a, Action::Encode { .. })));
    assert!(
        app.encodes_needed().is_empty(),
        "an encode in flight is not asked for twice"
    );
}

#[test]
fn main_loop_runs_on_a_test_backend_and_quits() {
    let mut app = app();
    let (tx, rx) = crossbeam_channel::unbounded();
    let effects = super::Effects {
        jobs: super::background::Latest::new(),
        encoders: [
            super::background::Latest::new(),
            super::background::Latest::new(),
        ],
        watch_dir: std::env::temp_dir().join("cxr-test-unused"),
        reviewer: "unused".into(),
        fingerprint: "unused".into(),
        positive: "covid".into(),
        classes: vec!["covid".into(), "normal".into()],
        scan: None,
        workers: super::background::Workers::new(),
    };
    tx.send(key('j')).unwrap();
    tx.send(key('q')).unwrap();
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    super::main_loop(&mut terminal, &mut app, &rx, &effects).unwrap();
    assert!(app.quit);
    assert_eq!(app.selected, 1);
    assert_eq!(
        app.latencies.len(),
        2,
        "both keys were answered by a redraw"
    );
    assert_eq!(
        effects.jobs.try_take().unwrap().path,
        sample("nih_00001299_000.png")
    );
}

#[test]
fn shutdown_wakes_waiting_threads_refuses_new_jobs_and_joins() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let workers = super::background::Workers::new();
    let slot = super::background::Latest::<u32>::new();
    workers.closes(&slot);
    let ran = std::sync::Arc::new(AtomicUsize::new(0));
    let (thread_slot, thread_ran) = (slot.clone(), ran.clone());
    workers.spawn("test", move || {
        while thread_slot.take().is_some() {
            thread_ran.fetch_add(1, Ordering::SeqCst);
        }
    });
    slot.put(1);
    let start = Instant::now();
    while ran.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed().as_secs() < 10, "the job never ran");
        std::thread::yield_now();
    }
    // The thread now waits on an empty slot: shutdown must wake it and join it.
    workers.shutdown();
    assert!(workers.stopping());
    slot.put(2);
    assert!(slot.take().is_none(), "a closed slot hands out nothing");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    // Nothing starts once shut down.
    let late = std::sync::Arc::new(AtomicUsize::new(0));
    let late_thread = late.clone();
    workers.spawn("late", move || {
        late_thread.fetch_add(1, Ordering::SeqCst);
    });
    workers.shutdown();
    assert_eq!(late.load(Ordering::SeqCst), 0);
}

/// Every drawn picture fills its pane along one side, the aspect ratio kept, whether the
/// picture is larger than the pane (shrunk) or smaller (enlarged).
#[test]
fn pictures_fill_their_pane_scaled_up_or_down() {
    let picker = Picker::halfblocks();
    for (width, height) in [(80, 24), (160, 48), (120, 40)] {
        let (app, _) = answered(width, height);
        let areas = ui::areas(Rect::new(0, 0, width, height), &app);
        for (i, pane) in areas.panes.iter().enumerate() {
            let Some(pane) = pane else { continue };
            let inner = ui::picture_size(*pane);
            let drawn = app.protocols[i].as_ref().unwrap().1.size();
            assert!(
                drawn.width <= inner.width && drawn.height <= inner.height,
                "{width}x{height}: {drawn:?} overflows {inner:?}"
            );
            assert!(
                drawn.width == inner.width || drawn.height == inner.height,
                "{width}x{height}: {drawn:?} does not fill {inner:?} along either side"
            );
        }
    }
    // A picture far smaller than the pane (64 px; 7x4 cells at its natural size) is enlarged.
    let small = DynamicImage::new_luma8(64, 64);
    let inner = ratatui::layout::Size::new(61, 45);
    let drawn = super::background::encode(&picker, small, inner)
        .unwrap()
        .size();
    assert_eq!((drawn.width, drawn.height), (61, 31));
    // One much larger than the pane is shrunk to the same size.
    let large = DynamicImage::new_luma8(2048, 2048);
    let drawn = super::background::encode(&picker, large, inner)
        .unwrap()
        .size();
    assert_eq!((drawn.width, drawn.height), (61, 31));
}

/// The layout gives the pictures the larger share: at 80x24 and 160x48 the list sits above the
/// panel, and a square radiograph gets at least 40 columns at 80x24 and 60 at 160x48.
#[test]
fn layout_gives_the_pictures_the_room() {
    for (width, height, min_columns) in [(80, 24, 40), (160, 48, 60)] {
        let (app, _) = answered(width, height);
        let areas = ui::areas(Rect::new(0, 0, width, height), &app);
        assert_eq!(areas.list.x, areas.panel.x, "{width}x{height}: one column");
        assert!(areas.list.y < areas.panel.y);
        let drawn: Vec<u16> = app
            .protocols
            .iter()
            .flatten()
            .map(|(_, p)| p.size().width)
            .collect();
        assert!(
            !drawn.is_empty() && drawn.iter().all(|w| *w >= min_columns),
            "{width}x{height}: pictures {drawn:?} columns wide"
        );
    }
}

fn press(code: KeyCode, modifiers: KeyModifiers) -> AppEvent {
    AppEvent::Key(KeyEvent::new(code, modifiers), Instant::now())
}

fn ctrl(c: char) -> AppEvent {
    press(KeyCode::Char(c), KeyModifiers::CONTROL)
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        app.update(key(c));
    }
}

/// The screen as text, drawn at `width`x`height`.
fn screen(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| ui::view(f, app, Instant::now())).unwrap();
    terminal.backend().to_string()
}

fn analysed(app: &mut App, job: &super::background::Job) {
    app.update(AppEvent::Worker(WorkerEvent::Analysed {
        generation: job.generation,
        path: job.path.clone(),
        prediction: prediction(0.9),
        timings: Timings::default(),
        original: DynamicImage::new_luma8(8, 8),
        lungs: None,
    }));
}

fn explanation_failed(job: &super::background::Job, message: &str) -> AppEvent {
    AppEvent::Worker(WorkerEvent::Failed {
        generation: job.generation,
        path: job.path.clone(),
        stage: super::event::Stage::Explanation,
        message: message.into(),
    })
}

fn explained(job: &super::background::Job) -> AppEvent {
    AppEvent::Worker(WorkerEvent::Explained {
        generation: job.generation,
        overlay: DynamicImage::new_rgb8(8, 8),
        report: method_report(),
    })
}

fn prompt_text(app: &App) -> (String, usize) {
    let prompt = app.prompt.as_ref().expect("the prompt is open");
    (prompt.text.clone(), prompt.cursor)
}

#[test]
fn a_failed_explanation_shows_in_the_panel_and_r_retries() {
    let mut app = app();
    let job = job_of(&app.request());
    analysed(&mut app, &job);
    app.update(explanation_failed(
        &job,
        "lime: needs samples >= 2, batch >= 1",
    ));
    assert_eq!(
        app.explain_error.as_deref(),
        Some("lime: needs samples >= 2, batch >= 1")
    );
    assert!(app.busy.is_none());
    assert!(
        matches!(app.items[0].state, ItemState::Predicted { .. }),
        "a failed explanation leaves the prediction standing: {:?}",
        app.items[0].state
    );
    let text = screen(&app, 80, 24);
    assert!(text.contains("grad-cam failed:"), "{text}");
    assert!(text.contains("needs samples"), "{text}");
    assert!(!text.contains("working…"), "no endless 'working…':\n{text}");
    assert!(text.contains("r retry"), "{text}");

    // r runs the same job again; the error stays visible while it runs.
    let retry = job_of(&app.update(key('r')));
    assert_eq!(
        (&retry.method, &retry.params, &retry.path),
        (&job.method, &job.params, &job.path)
    );
    assert!(retry.generation > job.generation);
    assert!(screen(&app, 80, 24).contains("retrying…"));

    // A good run clears the error, in the panel and the status bar.
    analysed(&mut app, &retry);
    app.update(explained(&retry));
    assert!(app.explain_error.is_none());
    assert!(app.status.is_empty(), "status: {}", app.status);
    let text = screen(&app, 80, 24);
    assert!(!text.contains("failed"), "{text}");
    assert!(text.contains("deletion AUC"), "{text}");
}

#[test]
fn bad_parameters_fail_visibly_and_fixing_them_clears_the_error() {
    let mut app = app();
    app.request();
    let job = job_of(&app.update(key('e')));
    assert_eq!(job.method, "lime");
    analysed(&mut app, &job);
    app.update(explained(&job));
    assert!(app.pictures[1].is_some());
    app.update(key('p'));
    type_text(&mut app, "samples=1");
    let bad = job_of(&app.update(press(KeyCode::Enter, KeyModifiers::NONE)));
    assert_eq!(bad.params, "samples=1");
    analysed(&mut app, &bad);
    app.update(explanation_failed(&bad, "lime: needs samples >= 2"));
    let text = screen(&app, 160, 48);
    assert!(text.contains("lime failed:"), "{text}");
    // The overlay of the earlier parameters is not left standing beside the error.
    assert!(app.pictures[1].is_none());
    assert!(text.contains("no explanation: it failed"), "{text}");

    // The prompt reopens with the bad text; Ctrl-U clears it.
    app.update(key('p'));
    assert_eq!(prompt_text(&app), ("samples=1".to_owned(), 9));
    app.update(ctrl('u'));
    assert_eq!(prompt_text(&app), (String::new(), 0));
    type_text(&mut app, "samples=200");
    let good = job_of(&app.update(press(KeyCode::Enter, KeyModifiers::NONE)));
    assert_eq!(good.params, "samples=200");
    analysed(&mut app, &good);
    app.update(explained(&good));
    assert!(app.explain_error.is_none());
    assert!(!screen(&app, 160, 48).contains("failed"));
}

#[test]
fn stale_or_unrelated_failures_do_not_stick() {
    let mut app = app();
    let first = job_of(&app.request());
    let second = job_of(&app.update(key('j')));
    // The first image's explanation fails after the selection moved on: not shown.
    app.update(explanation_failed(&first, "old failure"));
    assert!(app.explain_error.is_none());
    assert!(app.status.is_empty());
    assert_ne!(
        app.items[0].state,
        ItemState::Failed("old failure".into()),
        "an explanation failure never marks the image as failed"
    );
    // A current failure, then moving to another explainer: the error belonged to the old one.
    analysed(&mut app, &second);
    app.update(explanation_failed(&second, "grad-cam broke"));
    assert!(app.explain_error.is_some());
    app.update(key('e'));
    assert!(app.explain_error.is_none());
    // And moving to another image clears it too.
    let job = job_of(&app.update(key('r')));
    app.update(explanation_failed(&job, "lime broke"));
    assert!(app.explain_error.is_some());
    app.update(key('k'));
    assert!(app.explain_error.is_none());
}

#[test]
fn the_parameter_prompt_edits_like_a_shell_line() {
    let mut app = app();
    app.request();
    app.update(key('p'));
    type_text(&mut app, "samples=200,batch=10");
    app.update(ctrl('w'));
    assert_eq!(prompt_text(&app), ("samples=200,batch=".to_owned(), 18));
    app.update(ctrl('w'));
    assert_eq!(prompt_text(&app), ("samples=200,".to_owned(), 12));
    // Left, then insert in the middle.
    app.update(press(KeyCode::Left, KeyModifiers::NONE));
    app.update(key('0'));
    assert_eq!(prompt_text(&app), ("samples=2000,".to_owned(), 12));
    // Home, Delete, retype; Right moves on; End goes back to the end.
    app.update(press(KeyCode::Home, KeyModifiers::NONE));
    app.update(press(KeyCode::Delete, KeyModifiers::NONE));
    assert_eq!(prompt_text(&app), ("amples=2000,".to_owned(), 0));
    app.update(key('S'));
    app.update(press(KeyCode::Right, KeyModifiers::NONE));
    app.update(press(KeyCode::Backspace, KeyModifiers::NONE));
    assert_eq!(prompt_text(&app), ("Smples=2000,".to_owned(), 1));
    app.update(press(KeyCode::End, KeyModifiers::NONE));
    type_text(&mut app, "seed=3");
    assert_eq!(prompt_text(&app), ("Smples=2000,seed=3".to_owned(), 18));
    // Right at the end and Left at the start stay put; Ctrl-U deletes before the cursor.
    app.update(press(KeyCode::Right, KeyModifiers::NONE));
    assert_eq!(prompt_text(&app).1, 18);
    for _ in 0..5 {
        app.update(press(KeyCode::Left, KeyModifiers::NONE));
    }
    app.update(ctrl('u'));
    assert_eq!(prompt_text(&app), ("eed=3".to_owned(), 0));
    app.update(press(KeyCode::Left, KeyModifiers::NONE));
    app.update(press(KeyCode::Backspace, KeyModifiers::NONE));
    app.update(ctrl('w'));
    assert_eq!(prompt_text(&app), ("eed=3".to_owned(), 0));
    // Control keys never type letters; the cursor shows where typing goes.
    app.update(ctrl('e'));
    assert_eq!(prompt_text(&app), ("eed=3".to_owned(), 5));
    app.update(ctrl('a'));
    app.update(key('s'));
    assert!(screen(&app, 80, 24).contains("s▏eed=3"));
    // Esc cancels without running anything; the parameters stay as they were.
    assert!(
        app.update(press(KeyCode::Esc, KeyModifiers::NONE))
            .is_empty()
    );
    assert!(app.prompt.is_none());
    assert!(app.params.is_empty());
}

#[test]
fn the_parameter_prompt_lists_names_types_and_defaults() {
    cxr_explainers::link();
    let entries = cxr_core::explain::registry::all().unwrap();
    let mut app = app();
    app.param_specs = entries
        .iter()
        .map(|e| (e.name.to_owned(), e.params))
        .collect();
    app.request();
    app.update(key('p'));
    let text = screen(&app, 80, 24);
    assert!(text.contains("grad-cam parameters"), "{text}");
    assert!(text.contains("gradients    text    auto"), "{text}");
    app.update(press(KeyCode::Esc, KeyModifiers::NONE));
    app.update(key('e'));
    app.update(key('p'));
    for size in [(80, 24), (160, 48)] {
        let text = screen(&app, size.0, size.1);
        for row in [
            "samples      integer 1000",
            "kernel_width number  0.25",
            "seed         integer 0",
            "Ctrl-U clear",
        ] {
            assert!(text.contains(row), "{size:?}: no {row:?} in\n{text}");
        }
    }
}

/// Each image's mark is its predicted label with that label's own probability. With this
/// model's threshold (0.69 on covid) an image at covid 0.53 is labelled normal, at normal 0.47:
/// the list says "n 47%", the panel's bars say the same.
#[test]
fn the_list_shows_each_label_with_its_own_probability() {
    let mut app = app();
    let job = job_of(&app.request());
    app.update(AppEvent::Worker(WorkerEvent::Analysed {
        generation: job.generation,
        path: job.path,
        prediction: prediction(0.53),
        timings: Timings::default(),
        original: DynamicImage::new_luma8(8, 8),
        lungs: None,
    }));
    for (item, covid) in [(1, 0.2), (2, 0.9)] {
        app.update(AppEvent::Worker(WorkerEvent::Known {
            path: app.items[item].path.clone(),
            prediction: prediction(covid),
        }));
    }
    let text = screen(&app, 160, 48);
    let rows: Vec<&str> = text.lines().skip(1).take(3).collect();
    assert!(
        rows[0].contains("hannover_e1446fe8.png    n  47%"),
        "{rows:?}"
    );
    assert!(
        rows[1].contains("nih_00001299_000.png     n  80%"),
        "{rows:?}"
    );
    assert!(
        rows[2].contains("nih_00002013_002.png     c  90%"),
        "{rows:?}"
    );
    assert!(text.contains("label normal"));
}

/// Labels given in the viewer go to the queue; reopening the folder later shows them again
/// (matched by content), without overriding a label given in this session.
#[test]
fn reviews_are_restored_when_a_labelled_folder_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("images");
    std::fs::create_dir(&folder).unwrap();
    let names = [
        "hannover_e1446fe8.png",
        "nih_00001299_000.png",
        "nih_00002013_002.png",
    ];
    for name in names {
        std::fs::copy(sample(name), folder.join(name)).unwrap();
    }
    let files: Vec<PathBuf> = names.iter().map(|n| folder.join(n)).collect();
    let watch = dir.path().join("watch");
    // A first session labels two of them, as the viewer does.
    let classes = ["covid".to_owned(), "normal".to_owned()];
    let seen = crate::tui::labels::Seen {
        reviewer: "dr-lee",
        predicted: Some((&prediction(0.3), "covid")),
        classes: &classes,
        model: Some("f1"),
        shown: &[],
    };
    crate::tui::labels::record(&watch, &files[0], "normal", &seen).unwrap();
    let unpredicted = crate::tui::labels::Seen {
        predicted: None,
        model: None,
        ..seen
    };
    crate::tui::labels::record(&watch, &files[2], "skip", &unpredicted).unwrap();

    // The folder is reopened: nothing reviewed until the scan has looked in the queue.
    let mut app = App::new(
        files.iter().cloned().map(Item::new).collect(),
        vec!["grad-cam".into()],
    );
    app.items[2].reviewed = Some("covid".into()); // labelled again in this session
    let workers = super::background::Workers::new();
    let (tx, rx) = crossbeam_channel::unbounded();
    super::background::spawn_cache_scan(
        &workers,
        files.clone(),
        cxr_core::cache::Cache::disabled(),
        "fingerprint".into(),
        Some(watch),
        tx,
    );
    // The scan ends when it has seen every file; its sender goes with it.
    for event in &rx {
        app.update(event);
    }
    let reviewed: Vec<Option<&str>> = app.items.iter().map(|i| i.reviewed.as_deref()).collect();
    assert_eq!(reviewed, [Some("normal"), None, Some("covid")]);
    let text = screen(&app, 160, 48);
    let first = text.lines().nth(1).unwrap();
    assert!(
        first.contains("hannover_e1446fe8.p… ") && first.contains("✔normal"),
        "{first}"
    );
}

fn progress(job: &super::background::Job, done: usize, total: usize, elapsed_ms: u64) -> AppEvent {
    AppEvent::Worker(WorkerEvent::Progress {
        generation: job.generation,
        progress: super::event::ExplainProgress {
            done,
            total,
            elapsed: std::time::Duration::from_millis(elapsed_ms),
        },
    })
}

/// LIME on the second explainer slot, analysed, its explanation started.
fn explaining_with_lime() -> (App, super::background::Job) {
    let mut app = app();
    app.request();
    let job = job_of(&app.update(key('e')));
    assert_eq!(job.method, "lime");
    analysed(&mut app, &job);
    app.update(AppEvent::Worker(WorkerEvent::Started {
        generation: job.generation,
        what: "explaining with lime".into(),
    }));
    (app, job)
}

#[test]
fn explanation_progress_shows_in_the_panel_with_an_honest_eta() {
    let (mut app, job) = explaining_with_lime();
    assert!(screen(&app, 80, 24).contains("lime: working…"));
    // Two of a thousand in half a second: too little for an estimate.
    app.update(progress(&job, 2, 1000, 500));
    let text = screen(&app, 80, 24);
    assert!(text.contains("lime 2/1000"), "{text}");
    assert!(!text.contains("left"), "no estimate yet:\n{text}");
    assert!(!text.contains("working…"), "{text}");
    // 300 of 1000 in 3 s: 10 ms each, 700 to go.
    app.update(progress(&job, 300, 1000, 3000));
    let text = screen(&app, 160, 48);
    assert!(text.contains("lime 300/1000 · ~7 s left"), "{text}");
    // The narrow panel wraps the same line.
    let text = screen(&app, 80, 24);
    assert!(
        text.contains("lime 300/1000 · ~7 s") && text.contains("left"),
        "{text}"
    );
    // A report from a job since replaced changes nothing.
    let stale = super::background::Job {
        generation: job.generation - 1,
        ..job.clone()
    };
    app.update(progress(&stale, 900, 1000, 3000));
    assert!(screen(&app, 160, 48).contains("lime 300/1000"));
    // All evaluations done; the quality checks run before the explanation arrives.
    app.update(progress(&job, 1000, 1000, 10_000));
    assert!(screen(&app, 160, 48).contains("lime 1000/1000 · finishing"));
    // The explanation arrives: the counter goes, the report is shown.
    app.update(explained(&job));
    assert!(app.progress.is_none());
    let text = screen(&app, 80, 24);
    assert!(!text.contains("/1000"), "{text}");
    assert!(text.contains("deletion AUC"), "{text}");
}

#[test]
fn explanation_progress_clears_on_failure_and_on_a_new_request() {
    let (mut app, job) = explaining_with_lime();
    app.update(progress(&job, 500, 1000, 2000));
    app.update(explanation_failed(&job, "lime: stopped"));
    assert!(app.progress.is_none());
    let text = screen(&app, 80, 24);
    assert!(
        text.contains("lime failed:") && !text.contains("/1000"),
        "{text}"
    );
    // r retries; the new run's counter shows under the error, then a new selection clears it.
    let retry = job_of(&app.update(key('r')));
    app.update(progress(&retry, 100, 1000, 1000));
    let text = screen(&app, 160, 48);
    assert!(
        text.contains("lime failed:") && text.contains("lime 100/1000 · ~9 s left"),
        "{text}"
    );
    assert!(!text.contains("retrying…"), "the counter says it: {text}");
    app.update(key('j'));
    assert!(app.progress.is_none());
}

#[test]
fn snapshot_explanation_progress_80x24() {
    let (mut app, job) = explaining_with_lime();
    app.update(progress(&job, 300, 1000, 3000));
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    // Drawn at the moment the explanation started: the status bar's timer reads 0.0s.
    let since = app.busy.as_ref().unwrap().1;
    terminal.draw(|f| ui::view(f, &app, since)).unwrap();
    insta::assert_snapshot!(terminal.backend());
}

#[test]
fn progress_reports_are_at_most_ten_a_second_and_the_last_always_passes() {
    use super::background::{PROGRESS_INTERVAL, Throttle};
    use std::time::Duration;
    let throttle = Throttle::new(PROGRESS_INTERVAL);
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    // An explainer reporting every 10 ms for a second: reports at 0, 100, 200, … 900 ms.
    let passed: Vec<u64> = (0..100_u64)
        .filter(|i| throttle.admit(*i as usize, 1000, at(i * 10)))
        .map(|i| i * 10)
        .collect();
    assert_eq!(passed, (0..10).map(|i| i * 100).collect::<Vec<u64>>());
    // The end is reported even right after another report, so the panel reads 1000/1000.
    assert!(throttle.admit(999, 1000, at(1000)));
    assert!(!throttle.admit(999, 1000, at(1001)));
    assert!(throttle.admit(1000, 1000, at(1002)));
}
