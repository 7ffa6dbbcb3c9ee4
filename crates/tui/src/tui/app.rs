//! The viewer's state and its update function: pure, no I/O. `update` turns an event into
//! state changes and a list of actions for the runner to carry out.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use cxr_core::explain::registry::Param;
use cxr_core::explain::report::MethodReport;
use cxr_core::models::Prediction;
use cxr_core::pipeline::Timings;
use image::DynamicImage;
use ratatui::layout::Size;
use ratatui_image::protocol::Protocol;

use super::background::Job;
use super::event::{AppEvent, Encoded, ExplainProgress, Pane, Stage, WorkerEvent};
use super::view::CENTRE;

/// Where an image stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemState {
    Pending,
    Processing,
    Predicted { label: String, probability: f32 },
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub path: PathBuf,
    /// What the list calls it: the file's name, or a queue entry's original file name (every
    /// entry's image is `image.png`).
    pub name: String,
    pub state: ItemState,
    /// The label a reviewer gave (covid / normal / skip).
    pub reviewed: Option<String>,
}

impl Item {
    #[must_use]
    pub fn new(path: PathBuf) -> Self {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Self {
            path,
            name,
            state: ItemState::Pending,
            reviewed: None,
        }
    }
}

/// What the selected image shows once the worker has answered.
pub struct Shown {
    pub prediction: Prediction,
    pub timings: Timings,
    pub report: Option<MethodReport>,
    /// The lungs' centre as shares of the radiograph's width and height: where zoom looks.
    pub lungs: Option<(f32, f32)>,
}

/// What a prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    /// Parameters for the current explainer, `name=value,...`.
    Params,
    /// A file or folder to open.
    Open,
}

/// A line being typed at the bottom of the screen, with a cursor (a char index) for editing:
/// Left/Right, Home/End (Ctrl-A/E), Backspace/Delete, Ctrl-U (delete before the cursor: the
/// whole line when it is at the end) and Ctrl-W (delete the word before the cursor; `,`, `=`
/// and spaces separate words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub kind: PromptKind,
    pub text: String,
    pub cursor: usize,
}

impl Prompt {
    #[must_use]
    pub fn new(kind: PromptKind, text: String) -> Self {
        let cursor = text.chars().count();
        Self { kind, text, cursor }
    }

    /// The text before and after the cursor.
    #[must_use]
    pub fn split(&self) -> (&str, &str) {
        self.text.split_at(self.byte(self.cursor))
    }

    fn byte(&self, char_index: usize) -> usize {
        self.text
            .char_indices()
            .nth(char_index)
            .map_or(self.text.len(), |(i, _)| i)
    }

    fn len(&self) -> usize {
        self.text.chars().count()
    }

    /// Deletes the chars in `from..to` (char indices) and leaves the cursor at `from`.
    fn delete(&mut self, from: usize, to: usize) {
        let (a, b) = (self.byte(from), self.byte(to));
        self.text.replace_range(a..b, "");
        self.cursor = from;
    }

    /// Applies an editing key; false if the key is not an editing key.
    fn edit(&mut self, key: KeyEvent) -> bool {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('u') if ctrl => self.delete(0, self.cursor),
            KeyCode::Char('w') if ctrl => {
                let chars: Vec<char> = self.text.chars().collect();
                let separator = |c: char| c == ',' || c == '=' || c.is_whitespace();
                let mut start = self.cursor;
                while start > 0 && separator(chars[start - 1]) {
                    start -= 1;
                }
                while start > 0 && !separator(chars[start - 1]) {
                    start -= 1;
                }
                self.delete(start, self.cursor);
            }
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = self.len(),
            KeyCode::Char(_) if ctrl => {}
            KeyCode::Char(c) => {
                let at = self.byte(self.cursor);
                self.text.insert(at, c);
                self.cursor += 1;
            }
            KeyCode::Backspace if self.cursor > 0 => self.delete(self.cursor - 1, self.cursor),
            KeyCode::Delete if self.cursor < self.len() => {
                self.delete(self.cursor, self.cursor + 1);
            }
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.len()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.len(),
            KeyCode::Backspace | KeyCode::Delete => {}
            _ => return false,
        }
        true
    }
}

/// Things the runner must do (everything with side effects).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Analyse and explain (replaces any job still waiting).
    Run(Job),
    /// Encode a picture for a pane at a size.
    Encode {
        pane: Pane,
        size: Size,
    },
    /// Record a reviewer's label for an image (with the prediction shown, if any).
    Label {
        path: PathBuf,
        label: String,
        predicted: Option<Prediction>,
        /// The review mark shown before, put back if the label is refused.
        previous: Option<String>,
        /// The explanations on screen (recorded with the review).
        shown: Vec<String>,
    },
    /// Take back the last review of queue entry `entry` (labelled from `path`).
    Undo {
        path: PathBuf,
        entry: String,
    },
    /// Replace the image list with this file or folder.
    Open(PathBuf),
    Quit,
}

#[allow(clippy::struct_excessive_bools)] // independent view toggles, not a state machine
pub struct App {
    pub items: Vec<Item>,
    pub selected: usize,
    /// Registered explainer names, from the registry (the viewer names none itself).
    pub explainers: Vec<String>,
    pub explainer: usize,
    /// Parameters typed for each explainer.
    pub params: std::collections::HashMap<String, String>,
    /// The parameters each explainer accepts (from the registry), listed by the `p` prompt.
    pub param_specs: std::collections::HashMap<String, &'static [Param]>,
    /// Why the current explanation failed; shown in the panel until a run succeeds or the
    /// image or explainer changes.
    pub explain_error: Option<String>,
    pub outline: bool,
    pub opacity: f32,
    /// Original and overlay side by side (else the overlay alone).
    pub side_by_side: bool,
    pub help: bool,
    pub prompt: Option<Prompt>,
    /// Tag of the newest job; answers to older ones are dropped.
    pub generation: u64,
    pub shown: Option<Shown>,
    /// Decoded pictures of the selection, and their encodings with the size they fit.
    pub pictures: [Option<DynamicImage>; 2],
    pub protocols: [Option<(Size, Protocol)>; 2],
    /// Pane sizes from the last layout, and the encodes asked for (generation, size).
    pub pane_sizes: [Option<Size>; 2],
    pub requested: [Option<(u64, Size)>; 2],
    /// What the background is doing, since when.
    pub busy: Option<(String, Instant)>,
    /// How far the running explanation has got (for the panel), while one reports it.
    pub progress: Option<ExplainProgress>,
    /// The last message for the status bar (errors included).
    pub status: String,
    /// The labels given in this session, oldest first: (image, queue entry), for `u`.
    pub labelled: Vec<(PathBuf, String)>,
    /// Key presses waiting for a redraw, and measured input-to-redraw latencies.
    pub pending_keys: Vec<Instant>,
    pub latencies: Vec<Duration>,
    pub quit: bool,
    /// Pixels per terminal cell (width, height), from the image picker; 10x20 for half blocks.
    pub font: (u16, u16),
    /// Zoom (both pictures) and window/level (the radiograph).
    pub view: super::view::View,
    /// The classifier's model card in one line (test measures, known limits), for the panel.
    pub card: Option<String>,
}

fn pane_index(pane: Pane) -> usize {
    match pane {
        Pane::Original => 0,
        Pane::Overlay => 1,
    }
}

pub const LABELS: [(char, &str); 3] = [('c', "covid"), ('n', "normal"), ('s', "skip")];

impl App {
    #[must_use]
    pub fn new(items: Vec<Item>, explainers: Vec<String>) -> Self {
        Self {
            items,
            selected: 0,
            explainers,
            explainer: 0,
            params: std::collections::HashMap::new(),
            param_specs: std::collections::HashMap::new(),
            explain_error: None,
            outline: true,
            opacity: 0.6,
            side_by_side: true,
            view: super::view::View::default(),
            card: None,
            help: false,
            prompt: None,
            generation: 0,
            shown: None,
            pictures: [None, None],
            protocols: [None, None],
            pane_sizes: [None, None],
            requested: [None, None],
            busy: None,
            progress: None,
            status: String::new(),
            labelled: Vec::new(),
            pending_keys: Vec::new(),
            latencies: Vec::new(),
            quit: false,
            font: (10, 20),
        }
    }

    #[must_use]
    pub fn method(&self) -> &str {
        self.explainers
            .get(self.explainer)
            .map_or("", String::as_str)
    }

    /// A new job for the selection with the current settings; older answers become stale.
    pub fn request(&mut self) -> Vec<Action> {
        let method = self.method().to_owned();
        let Some(item) = self.items.get_mut(self.selected) else {
            return Vec::new();
        };
        self.generation += 1;
        // Until the worker picks this job up it may still be busy with an older one.
        self.busy = Some((format!("waiting to run {method}"), Instant::now()));
        self.progress = None;
        if matches!(item.state, ItemState::Pending | ItemState::Failed(_)) {
            item.state = ItemState::Processing;
        }
        let job = Job {
            generation: self.generation,
            path: item.path.clone(),
            method: self.method().to_owned(),
            params: self.params.get(self.method()).cloned().unwrap_or_default(),
            outline: self.outline,
            opacity: self.opacity,
        };
        vec![Action::Run(job)]
    }

    /// Selection changed: forget what was shown and ask for the new one.
    fn select(&mut self, index: usize) -> Vec<Action> {
        if self.items.is_empty() || index == self.selected && self.shown.is_some() {
            return Vec::new();
        }
        // A job replaced before it ran leaves its image pending, not "processing" for ever.
        if let Some(item) = self.items.get_mut(self.selected)
            && item.state == ItemState::Processing
        {
            item.state = ItemState::Pending;
        }
        self.selected = index.min(self.items.len() - 1);
        self.shown = None;
        self.explain_error = None;
        self.pictures = [None, None];
        self.protocols = [None, None];
        self.request()
    }

    /// Encodings whose pane changed size (or that are missing) must be redone; each is asked
    /// for once per picture and size.
    pub fn encodes_needed(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        for pane in [Pane::Original, Pane::Overlay] {
            let i = pane_index(pane);
            let (Some(size), Some(_)) = (self.pane_sizes[i], &self.pictures[i]) else {
                continue;
            };
            let current = self.protocols[i].as_ref().map(|(s, _)| *s);
            if current != Some(size) && self.requested[i] != Some((self.generation, size)) {
                self.requested[i] = Some((self.generation, size));
                actions.push(Action::Encode { pane, size });
            }
        }
        actions
    }

    pub fn update(&mut self, event: AppEvent) -> Vec<Action> {
        match event {
            AppEvent::Key(key, at) => {
                self.pending_keys.push(at);
                self.on_key(key)
            }
            AppEvent::Resize => {
                // Encodings fit the old layout: drop them so the panes re-encode.
                self.protocols = [None, None];
                self.requested = [None, None];
                Vec::new()
            }
            AppEvent::Tick => Vec::new(),
            AppEvent::Worker(event) => self.on_worker(event),
            AppEvent::Encoded(encoded) => {
                self.on_encoded(encoded);
                Vec::new()
            }
        }
    }

    fn on_worker(&mut self, event: WorkerEvent) -> Vec<Action> {
        match event {
            WorkerEvent::Started { generation, what } => {
                if generation == self.generation {
                    self.busy = Some((what, Instant::now()));
                    self.progress = None;
                }
                Vec::new()
            }
            WorkerEvent::Progress {
                generation,
                progress,
            } => {
                if generation == self.generation {
                    self.progress = Some(progress);
                }
                Vec::new()
            }
            WorkerEvent::Analysed {
                generation,
                path,
                prediction,
                timings,
                original,
                lungs,
            } => {
                // The list shows every answer, even a stale one: it is still true of that file.
                if let Some(item) = self.items.iter_mut().find(|i| i.path == path) {
                    let probability = prediction
                        .probabilities
                        .get(&prediction.label)
                        .copied()
                        .unwrap_or(0.0);
                    item.state = ItemState::Predicted {
                        label: prediction.label.clone(),
                        probability,
                    };
                }
                if generation != self.generation {
                    return Vec::new();
                }
                let report = self.shown.take().and_then(|s| s.report);
                self.shown = Some(Shown {
                    prediction,
                    timings,
                    report,
                    lungs: lungs.map(|b| b.centre(original.width(), original.height())),
                });
                self.pictures[0] = Some(original);
                self.protocols[0] = None;
                self.requested[0] = None;
                self.encodes_needed()
            }
            WorkerEvent::Explained {
                generation,
                overlay,
                report,
            } => {
                if generation != self.generation {
                    return Vec::new();
                }
                self.busy = None;
                self.progress = None;
                // A good run clears the error it answers, in the panel and the status bar.
                if let Some(error) = self.explain_error.take()
                    && self.status == format!("error: {error}")
                {
                    self.status.clear();
                }
                if let Some(shown) = &mut self.shown {
                    shown.report = Some(report);
                }
                self.pictures[1] = Some(overlay);
                self.protocols[1] = None;
                self.requested[1] = None;
                self.encodes_needed()
            }
            WorkerEvent::Known { path, prediction } => {
                self.on_known(&path, prediction);
                Vec::new()
            }
            WorkerEvent::Reviewed { path, label } => {
                // A label given in this session is newer than the queue's.
                if let Some(item) = self
                    .items
                    .iter_mut()
                    .find(|i| i.path == path && i.reviewed.is_none())
                {
                    item.reviewed = Some(label);
                }
                Vec::new()
            }
            WorkerEvent::Failed {
                generation,
                path,
                stage,
                message,
            } => {
                self.on_failed(generation, &path, stage, message);
                Vec::new()
            }
        }
    }

    /// A classification found in the cache fills in a file the list has no answer for yet.
    fn on_known(&mut self, path: &std::path::Path, prediction: Prediction) {
        if let Some(item) = self
            .items
            .iter_mut()
            .find(|i| i.path == path && i.state == ItemState::Pending)
        {
            let probability = prediction
                .probabilities
                .get(&prediction.label)
                .copied()
                .unwrap_or(0.0);
            item.state = ItemState::Predicted {
                label: prediction.label,
                probability,
            };
        }
    }

    fn on_failed(
        &mut self,
        generation: u64,
        path: &std::path::Path,
        stage: Stage,
        message: String,
    ) {
        // An explanation that failed leaves the image's prediction standing.
        if stage == Stage::Analysis
            && let Some(item) = self.items.iter_mut().find(|i| i.path == path)
        {
            item.state = ItemState::Failed(message.clone());
        }
        if generation != self.generation {
            return;
        }
        self.busy = None;
        self.progress = None;
        if stage == Stage::Explanation {
            // A result left from other parameters would pass for this run's.
            if let Some(shown) = &mut self.shown {
                shown.report = None;
            }
            self.pictures[1] = None;
            self.protocols[1] = None;
            self.requested[1] = None;
            self.status = format!("error: {message}");
            self.explain_error = Some(message);
        } else {
            self.status = format!("error: {message}");
        }
    }

    fn on_encoded(&mut self, encoded: Encoded) {
        if encoded.generation != self.generation {
            return;
        }
        let i = pane_index(encoded.pane);
        match encoded.protocol {
            Ok(protocol) => self.protocols[i] = Some((encoded.size, protocol)),
            Err(e) => self.status = format!("error: cannot draw the image: {e}"),
        }
    }

    fn on_key(&mut self, key: KeyEvent) -> Vec<Action> {
        if let Some(prompt) = self.prompt.take() {
            return self.on_prompt_key(prompt, key);
        }
        if self.help {
            self.help = false;
            return Vec::new();
        }
        let last = self.items.len().saturating_sub(1);
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => {
                self.quit = true;
                vec![Action::Quit]
            }
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                self.quit = true;
                vec![Action::Quit]
            }
            KeyCode::Char('?') => {
                self.help = true;
                Vec::new()
            }
            // Zoomed in, hjkl and the arrows move the picture (PgUp/PgDn still move the list).
            KeyCode::Left
            | KeyCode::Right
            | KeyCode::Up
            | KeyCode::Down
            | KeyCode::Char('h' | 'j' | 'k' | 'l')
                if self.view.zoom > 1 =>
            {
                let (dx, dy) = match key.code {
                    KeyCode::Left | KeyCode::Char('h') => (-1, 0),
                    KeyCode::Right | KeyCode::Char('l') => (1, 0),
                    KeyCode::Up | KeyCode::Char('k') => (0, -1),
                    _ => (0, 1),
                };
                self.view = self.view.panned(dx, dy);
                self.redraw_pictures(&[0, 1])
            }
            KeyCode::Down | KeyCode::Char('j') => self.select((self.selected + 1).min(last)),
            KeyCode::Up | KeyCode::Char('k') => self.select(self.selected.saturating_sub(1)),
            KeyCode::PageDown => self.select((self.selected + 10).min(last)),
            KeyCode::PageUp => self.select(self.selected.saturating_sub(10)),
            KeyCode::Home | KeyCode::Char('g') => self.select(0),
            KeyCode::End | KeyCode::Char('G') => self.select(last),
            KeyCode::Tab | KeyCode::Char('e') => self.cycle_explainer(1),
            KeyCode::BackTab | KeyCode::Char('E') => {
                self.cycle_explainer(self.explainers.len().saturating_sub(1))
            }
            KeyCode::Char('m') => {
                self.outline = !self.outline;
                self.request()
            }
            KeyCode::Char('+' | '=') => self.change_opacity(0.1),
            KeyCode::Char('-') => self.change_opacity(-0.1),
            KeyCode::Char('o') => {
                self.side_by_side = !self.side_by_side;
                self.protocols = [None, None];
                self.requested = [None, None];
                Vec::new()
            }
            KeyCode::Char('p') => {
                self.prompt = Some(Prompt::new(
                    PromptKind::Params,
                    self.params.get(self.method()).cloned().unwrap_or_default(),
                ));
                Vec::new()
            }
            KeyCode::Char('O') => {
                self.prompt = Some(Prompt::new(PromptKind::Open, String::new()));
                Vec::new()
            }
            KeyCode::Char('r') => self.request(),
            KeyCode::Char('z') => {
                self.view = self.view.next_zoom();
                self.redraw_pictures(&[0, 1])
            }
            KeyCode::Char('w') => {
                self.view.window = self.view.window.next();
                self.redraw_pictures(&[0])
            }
            KeyCode::Char('u') => self.undo(),
            KeyCode::Char(c) => match LABELS.iter().find(|(k, _)| *k == c) {
                Some((_, label)) => self.label(label),
                None => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// Encodes `panes` again (the view changed), without running anything.
    fn redraw_pictures(&mut self, panes: &[usize]) -> Vec<Action> {
        for &i in panes {
            self.protocols[i] = None;
            self.requested[i] = None;
        }
        self.encodes_needed()
    }

    /// The picture of pane `i` as it is to be drawn: the view's zoom on both (around the lungs
    /// when the segmenter found them), its window on the radiograph.
    #[must_use]
    pub fn picture_for(&self, i: usize) -> Option<DynamicImage> {
        let picture = self.pictures.get(i)?.as_ref()?;
        let focus = self.shown.as_ref().and_then(|s| s.lungs).unwrap_or(CENTRE);
        Some(if i == 0 {
            self.view.radiograph(picture, focus)
        } else {
            self.view.zoomed(picture, focus)
        })
    }

    fn cycle_explainer(&mut self, step: usize) -> Vec<Action> {
        if self.explainers.is_empty() {
            return Vec::new();
        }
        self.explainer = (self.explainer + step) % self.explainers.len();
        self.explain_error = None;
        if let Some(shown) = &mut self.shown {
            shown.report = None;
        }
        self.pictures[1] = None;
        self.protocols[1] = None;
        self.request()
    }

    fn change_opacity(&mut self, delta: f32) -> Vec<Action> {
        self.opacity = ((self.opacity + delta) * 10.0).round().clamp(0.0, 10.0) / 10.0;
        self.request()
    }

    fn label(&mut self, label: &str) -> Vec<Action> {
        let Some(item) = self.items.get_mut(self.selected) else {
            return Vec::new();
        };
        let previous = item.reviewed.replace(label.to_owned());
        let predicted = self.shown.as_ref().map(|s| s.prediction.clone());
        let explained = self.shown.as_ref().and_then(|s| s.report.as_ref());
        let action = Action::Label {
            path: item.path.clone(),
            label: label.to_owned(),
            predicted,
            previous,
            shown: explained
                .map(|r| vec![r.method.clone()])
                .unwrap_or_default(),
        };
        // Labelling moves on to the next image, as reviewers expect.
        let next = (self.selected + 1).min(self.items.len() - 1);
        let mut actions = vec![action];
        actions.extend(self.select(next));
        actions
    }

    /// Takes back this session's last label: back on its image, whose mark the queue's answer
    /// then sets (the review before, or none).
    fn undo(&mut self) -> Vec<Action> {
        let Some((path, entry)) = self.labelled.pop() else {
            self.status = "nothing to undo: no label given in this session".into();
            return Vec::new();
        };
        let mut actions = Vec::new();
        if let Some(i) = self.items.iter().position(|item| item.path == path) {
            actions.extend(self.select(i));
        }
        actions.insert(0, Action::Undo { path, entry });
        actions
    }

    fn on_prompt_key(&mut self, mut prompt: Prompt, key: KeyEvent) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Esc => Vec::new(),
            KeyCode::Char('c') if ctrl => Vec::new(),
            KeyCode::Enter => match prompt.kind {
                PromptKind::Params => {
                    self.params
                        .insert(self.method().to_owned(), prompt.text.trim().to_owned());
                    if let Some(shown) = &mut self.shown {
                        shown.report = None;
                    }
                    self.request()
                }
                PromptKind::Open => vec![Action::Open(PathBuf::from(prompt.text.trim()))],
            },
            _ => {
                prompt.edit(key);
                self.prompt = Some(prompt);
                Vec::new()
            }
        }
    }

    /// Replaces the list (after `Action::Open` succeeded).
    pub fn open(&mut self, items: Vec<Item>) -> Vec<Action> {
        self.items = items;
        self.selected = 0;
        self.shown = None;
        self.explain_error = None;
        self.pictures = [None, None];
        self.protocols = [None, None];
        self.request()
    }

    /// Called after each draw: the keys read before it have now been answered on screen.
    pub fn drawn(&mut self, now: Instant) {
        for at in self.pending_keys.drain(..) {
            self.latencies.push(now.duration_since(at));
        }
    }
}
